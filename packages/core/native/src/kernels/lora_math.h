// LoRA as a sequence of GEMMs, written once for the CUDA launcher
// (cuda/lora.cu, with tb::cuda::gemm) and the hostmath test binding (with the
// CPU tb::gemm), which checks it against the CPU op in cpu/lora.cc. LoRA has
// no per-element math of its own: its semantics are these products, their
// transposes, strides and betas (written vs accumulated).
//
//   x, xa [N, in] f32   W [out, in] (MatRef)   A [r, in] f32   B [out, r] f32   s = scale
//   forward:  u = xa A^T [N, r];  y = x W^T + s u B^T [N, out]           (y, u written)
//   backward: dB += s dy^T u;  du = s dy B [N, r] (scratch);  dA += du^T xa
//             dx = dy W (written, or accumulated when acc);
//             du A added into dx, or written into dxa when given
//   delta rows: y[rows] += s (x[rows] A^T) B^T   (x, y already offset to the first row)
// `gemm` is any callable with tb::gemm's signature.
#pragma once
#include <cstdint>

#include "../gemm.h"

namespace tb::math {

inline MatRef f32_mat(const float* p, int64_t ld, bool trans) { return MatRef{p, DType::F32, ld, trans}; }

// W_t: op(W) = W^T, i.e. the stored [out, in] weight with trans = true
template <typename Gemm>
void lora_forward_steps(Gemm&& gemm, int64_t N, int64_t in, int64_t out, int64_t r, const float* x, const float* xa,
                        const MatRef& W_t, const float* A, const float* B, float s, float* y, float* u) {
  gemm(N, out, in, 1.0f, f32_mat(x, in, false), W_t, 0.0f, y, out);              // y = x W^T
  gemm(N, r, in, 1.0f, f32_mat(xa, in, false), f32_mat(A, in, true), 0.0f, u, r);  // u = xa A^T
  gemm(N, out, r, s, f32_mat(u, r, false), f32_mat(B, r, true), 1.0f, y, out);      // y += s u B^T
}

// W_n: op(W) = W, the stored weight with trans = false; du: N x r scratch.
// dA, dB, dxa may be null.
template <typename Gemm>
void lora_backward_steps(Gemm&& gemm, int64_t N, int64_t in, int64_t out, int64_t r, const float* dy, const float* xa,
                         const MatRef& W_n, const float* A, const float* B, const float* u, float s, float* dx,
                         bool accumulate_dx, float* dA, float* dB, float* dxa, float* du) {
  if (dB) gemm(out, r, N, s, f32_mat(dy, out, true), f32_mat(u, r, false), 1.0f, dB, r);  // dB += s dy^T u
  gemm(N, r, out, s, f32_mat(dy, out, false), f32_mat(B, r, false), 0.0f, du, r);          // du = s dy B
  if (dA) gemm(r, in, N, 1.0f, f32_mat(du, r, true), f32_mat(xa, in, false), 1.0f, dA, in);  // dA += du^T xa
  gemm(N, in, out, 1.0f, f32_mat(dy, out, false), W_n, accumulate_dx ? 1.0f : 0.0f, dx, in);  // dx (+)= dy W
  if (dxa) gemm(N, in, r, 1.0f, f32_mat(du, r, false), f32_mat(A, in, false), 0.0f, dxa, in);  // dxa = du A
  else gemm(N, in, r, 1.0f, f32_mat(du, r, false), f32_mat(A, in, false), 1.0f, dx, in);       // dx += du A
}

// u: n x r scratch
template <typename Gemm>
void lora_delta_rows_steps(Gemm&& gemm, int64_t n, int64_t in, int64_t out, int64_t r, const float* x, const float* A,
                           const float* B, float s, float* y, float* u) {
  gemm(n, r, in, 1.0f, f32_mat(x, in, false), f32_mat(A, in, true), 0.0f, u, r);
  gemm(n, out, r, s, f32_mat(u, r, false), f32_mat(B, r, true), 1.0f, y, out);
}

}  // namespace tb::math
