// RMSNorm, fp32 compute (same semantics as cpu/rmsnorm.cc). Compiled, not yet
// run on a GPU.
//
// forward and dx: one block per row (grid-stride over rows), the row sums by
// warp shuffles then across warps. dw: columns across the x threads of a
// block, a fixed slice of rows per block along y; each slice writes a partial
// sum of C floats, and a second kernel adds the partials into dw in slice
// order, so dw is deterministic and there are no atomics. dw is computed
// before dx because dx may overwrite dy or x.
#include "../kernels/rmsnorm_math.h"
#include "../storage.h"
#include "common.cuh"
#include "reduce.cuh"
#include "rmsnorm.h"

namespace tb::cuda {
namespace {

// x [N, C], w [C] -> y [N, C], rstd [N]
template <typename W>
__global__ void rmsnorm_forward_kernel(int64_t N, int64_t C, const float* x, const W* __restrict__ w, float eps, float* y,
                                       float* __restrict__ rstd) {
  __shared__ float scratch[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float* xr = x + n * C;
    float* yr = y + n * C;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, scratch);
    const float r = math::rmsnorm_rstd(ss, C, eps);
    if (threadIdx.x == 0) rstd[n] = r;
    // each thread rereads x[c] before writing y[c] (y may be x)
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = math::rmsnorm_y(xr[c], r, math::weight_at(w, c));
  }
}

// dy, x [N, C], w [C], rstd [N] -> dx [N, C]
template <typename W>
__global__ void rmsnorm_dx_kernel(int64_t N, int64_t C, const float* dy, const float* x, const W* __restrict__ w,
                                  const float* __restrict__ rstd, float* dx) {
  __shared__ float scratch[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float* gr = dy + n * C;
    const float* xr = x + n * C;
    float* dxr = dx + n * C;
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += gr[c] * math::weight_at(w, c) * xr[c];
    dot = block_sum(dot, scratch);
    const float r = rstd[n];
    const float k = math::rmsnorm_k(r, dot, C);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      dxr[c] = math::rmsnorm_dx(gr[c], xr[c], math::weight_at(w, c), r, k);
  }
}

constexpr int kColThreads = 32, kRowThreads = 8;

// Slice p = blockIdx.y of P holds rows [N p / P, N (p + 1) / P). Writes
// part[p, c] = sum over the slice of dy * x * rstd, or, when P == 1, adds it
// into dw[c] directly.
__global__ void rmsnorm_dw_partial_kernel(int64_t N, int64_t C, const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ rstd, float* __restrict__ part, float* __restrict__ dw) {
  __shared__ float acc[kRowThreads][kColThreads + 1];
  const int64_t P = gridDim.y, p = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x;
  const int64_t rb = N * p / P, re = N * (p + 1) / P;
  float s = 0.0f;
  if (c < C)
    for (int64_t n = rb + threadIdx.y; n < re; n += kRowThreads) s += math::rmsnorm_dw_term(dy[n * C + c], x[n * C + c], rstd[n]);
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = acc[0][threadIdx.x];
    for (int j = 1; j < kRowThreads; j++) t += acc[j][threadIdx.x];
    if (P == 1) dw[c] += t;
    else part[p * C + c] = t;
  }
}

// dw[c] += sum_p part[p, c], p in order
__global__ void rmsnorm_dw_reduce_kernel(int64_t P, int64_t C, const float* __restrict__ part, float* __restrict__ dw) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = part[c];
    for (int64_t p = 1; p < P; p++) s += part[p * C + c];
    dw[c] += s;
  }
}

// threads per row: about four elements each, a whole number of warps, 32..512
int row_threads(int64_t C) {
  int64_t t = ((C + 3) / 4 + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 512 ? 512 : t));
}

unsigned row_grid(int64_t N) { return static_cast<unsigned>(N < 65535 * 16 ? N : 65535 * 16); }

template <typename W>
void launch_forward(int64_t N, int64_t C, const float* x, const W* w, float eps, float* y, float* rstd) {
  rmsnorm_forward_kernel<W><<<row_grid(N), row_threads(C), 0, stream()>>>(N, C, x, w, eps, y, rstd);
  TB_LAUNCH_CHECK();
}

template <typename W>
void launch_dx(int64_t N, int64_t C, const float* dy, const float* x, const W* w, const float* rstd, float* dx) {
  rmsnorm_dx_kernel<W><<<row_grid(N), row_threads(C), 0, stream()>>>(N, C, dy, x, w, rstd, dx);
  TB_LAUNCH_CHECK();
}

}  // namespace

void rmsnorm_forward(int64_t N, int64_t C, const float* x, const void* w, bool w_bf16, float eps, float* y, float* rstd) {
  if (N <= 0 || C <= 0) return;
  if (w_bf16) launch_forward(N, C, x, static_cast<const uint16_t*>(w), eps, y, rstd);
  else launch_forward(N, C, x, static_cast<const float*>(w), eps, y, rstd);
}

void rmsnorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const void* w, bool w_bf16,
                      const float* rstd, float* dx, float* dw) {
  if (N <= 0 || C <= 0) return;
  if (dw) {
    const int64_t gx = (C + kColThreads - 1) / kColThreads;
    // enough slices to fill the GPU when C is small, at least 16 rows each
    int64_t P = (1024 + gx - 1) / gx;
    const int64_t max_p = (N + 15) / 16;
    if (P > max_p) P = max_p;
    if (P > 65535) P = 65535;
    if (P < 1) P = 1;
    Workspace<float> part(P > 1 ? static_cast<size_t>(P * C) : 0, Device::CUDA);
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(P)), block(kColThreads, kRowThreads);
    rmsnorm_dw_partial_kernel<<<grid, block, 0, stream()>>>(N, C, dy, x, rstd, part.data(), dw);
    TB_LAUNCH_CHECK();
    if (P > 1) {
      rmsnorm_dw_reduce_kernel<<<blocks_for(C, 256), 256, 0, stream()>>>(P, C, part.data(), dw);
      TB_LAUNCH_CHECK();
    }
  }
  if (w_bf16) launch_dx(N, C, dy, x, static_cast<const uint16_t*>(w), rstd, dx);
  else launch_dx(N, C, dy, x, static_cast<const float*>(w), rstd, dx);
}

}  // namespace tb::cuda
