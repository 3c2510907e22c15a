// Elementwise helpers on the GPU (cuda/elementwise.cu): device pointers, the
// core's stream. Same semantics as cpu/elementwise.cc.
#pragma once
#include <cstdint>

namespace tb::cuda {
// y [n] += alpha * x [n]
void axpy(int64_t n, float alpha, const float* x, float* y);
// x [n] = value
void fill(int64_t n, float value, float* x);
// x [N, G*L] -> p [N, G] = scale/L * (sum of each group of L columns) (written)
void group_pool_forward(int64_t N, int64_t G, int64_t L, float scale, const float* x, float* p);
// dp [N, G] -> dx [N, G*L] = scale/L * dp broadcast over its group (written, or accumulated)
void group_pool_backward(int64_t N, int64_t G, int64_t L, float scale, const float* dp, float* dx, bool accumulate);
}  // namespace tb::cuda
