// Fused LoRA linear on the GPU (cuda/lora.cu): device pointers, the core's
// stream. Same layouts and semantics as cpu/lora.cc (kernels/lora_math.h).
#pragma once
#include <cstdint>

#include "../gemm.h"

namespace tb::cuda {
// x, xa [N, in], W_t = op(W) = W^T of the [out, in] weight, A [r, in], B [out, r]
// -> y [N, out] = x W^T + s (xa A^T) B^T, u [N, r] = xa A^T (both written)
void lora_forward(int64_t N, int64_t in, int64_t out, int64_t r, const float* x, const float* xa, const MatRef& W_t,
                  const float* A, const float* B, float s, float* y, float* u);
// dy [N, out], W_n = op(W) = W -> dB, dA accumulated (when non-null); dx
// written or accumulated; the adapter input gradient into dx, or into dxa
void lora_backward(int64_t N, int64_t in, int64_t out, int64_t r, const float* dy, const float* xa, const MatRef& W_n,
                   const float* A, const float* B, const float* u, float s, float* dx, bool accumulate_dx, float* dA,
                   float* dB, float* dxa);
// y[row_begin, row_begin + rows) += s (x[rows] A^T) B^T  (x [*, in], y [*, out])
void lora_delta_rows(int64_t row_begin, int64_t rows, int64_t in, int64_t out, int64_t r, const float* x,
                     const float* A, const float* B, float s, float* y);
}  // namespace tb::cuda
