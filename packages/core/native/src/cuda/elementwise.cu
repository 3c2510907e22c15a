// Elementwise helpers (same semantics as cpu/elementwise.cc): one thread per
// output element, grid-stride. Compiled, not yet run on a GPU.
#include "../kernels/elementwise_math.h"
#include "common.cuh"
#include "elementwise.h"

namespace tb::cuda {
namespace {

#define TB_GRID_STRIDE(i, n)                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void axpy_kernel(int64_t n, float alpha, const float* x, float* y) {
  TB_GRID_STRIDE(i, n) y[i] = math::axpy(y[i], alpha, x[i]);
}

__global__ void fill_kernel(int64_t n, float value, float* __restrict__ x) {
  TB_GRID_STRIDE(i, n) x[i] = value;
}

// one thread per pooled value p[n, g] (i = n * G + g): its group starts at x[i * L]
__global__ void group_pool_forward_kernel(int64_t total, int64_t L, float coef, const float* __restrict__ x,
                                          float* __restrict__ p) {
  TB_GRID_STRIDE(i, total) p[i] = math::group_pool_value(x + i * L, L, coef);
}

// one thread per dx element: its pooled gradient is dp[i / L]
__global__ void group_pool_backward_kernel(int64_t total, int64_t L, float coef, const float* __restrict__ dp,
                                           float* __restrict__ dx, bool accumulate) {
  TB_GRID_STRIDE(i, total) {
    const float v = math::group_pool_grad(dp[i / L], coef);
    dx[i] = accumulate ? dx[i] + v : v;
  }
}

#undef TB_GRID_STRIDE

constexpr int kThreads = 256;
unsigned grid(int64_t n) {
  unsigned b = blocks_for(n, kThreads);
  return b > 65535u * 8 ? 65535u * 8 : b;
}

}  // namespace

void axpy(int64_t n, float alpha, const float* x, float* y) {
  if (n <= 0) return;
  axpy_kernel<<<grid(n), kThreads, 0, stream()>>>(n, alpha, x, y);
  TB_LAUNCH_CHECK();
}

void fill(int64_t n, float value, float* x) {
  if (n <= 0) return;
  fill_kernel<<<grid(n), kThreads, 0, stream()>>>(n, value, x);
  TB_LAUNCH_CHECK();
}

void group_pool_forward(int64_t N, int64_t G, int64_t L, float scale, const float* x, float* p) {
  const int64_t total = N * G;
  if (total <= 0) return;
  group_pool_forward_kernel<<<grid(total), kThreads, 0, stream()>>>(total, L, math::group_pool_coef(scale, L), x, p);
  TB_LAUNCH_CHECK();
}

void group_pool_backward(int64_t N, int64_t G, int64_t L, float scale, const float* dp, float* dx, bool accumulate) {
  const int64_t total = N * G * L;
  if (total <= 0) return;
  group_pool_backward_kernel<<<grid(total), kThreads, 0, stream()>>>(total, L, math::group_pool_coef(scale, L), dp, dx,
                                                                     accumulate);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
