// RMSNorm on the GPU (cuda/rmsnorm.cu): device pointers, the core's stream.
// Same layouts and semantics as cpu/rmsnorm.cc; the weight is f32 or bf16
// (`w_bf16`), read and widened per element.
#pragma once
#include <cstdint>

namespace tb::cuda {
// x [N, C] f32, w [C] -> y [N, C] f32 (written; may be x), rstd [N] f32 (written)
void rmsnorm_forward(int64_t N, int64_t C, const float* x, const void* w, bool w_bf16, float eps, float* y, float* rstd);
// dy, x [N, C] f32, w [C], rstd [N] -> dx [N, C] f32 (written; may be dy or x),
// dw [C] f32 (accumulated +=; nullptr skips it)
void rmsnorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const void* w, bool w_bf16,
                      const float* rstd, float* dx, float* dw);
}  // namespace tb::cuda
