// Global gradient-norm clipping pieces on the GPU, as cpu/grad_clip.cc:
//   grad_sumsq: block partial sums in double (a grid-stride loop per thread,
//     a shared-memory tree per block), a second one-block pass over the
//     partials, and the double copied back to the host.
//   grad_scale: x *= s in place.
// Per-element math in kernels/grad_clip_math.h. Compiled, not yet run on a GPU.
#include "../device.h"
#include "../kernels/grad_clip_math.h"
#include "common.cuh"
#include "grad_clip.h"

namespace tb::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;  // lanes = min(ceil(n / 256), 1024) * 256

// sum of shared[0, kThreads) into shared[0]
__device__ void block_sum(double* shared) {
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
}

__global__ void sumsq_partial_kernel(int64_t n, const float* __restrict__ x, double* __restrict__ partial) {
  __shared__ double s[kThreads];
  const int64_t lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  s[threadIdx.x] = math::sumsq_lane(x, n, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, lanes);
  block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

__global__ void sum_partials_kernel(int count, const double* __restrict__ partial, double* __restrict__ out) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  s[threadIdx.x] = acc;
  block_sum(s);
  if (threadIdx.x == 0) *out = s[0];
}

__global__ void scale_kernel(int64_t n, float* __restrict__ x, float sc) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = math::grad_scaled(x[i], sc);
}

unsigned sumsq_blocks(int64_t n) {
  const unsigned b = blocks_for(n, kThreads);
  return b > static_cast<unsigned>(kMaxBlocks) ? static_cast<unsigned>(kMaxBlocks) : b;
}

}  // namespace

double grad_sumsq(int64_t n, const float* x) {
  if (n <= 0) return 0.0;
  const unsigned blocks = sumsq_blocks(n);
  Workspace<double> ws(blocks + 1, Device::CUDA);  // partials, then the total
  sumsq_partial_kernel<<<blocks, kThreads, 0, stream()>>>(n, x, ws.data());
  TB_LAUNCH_CHECK();
  sum_partials_kernel<<<1, kThreads, 0, stream()>>>(static_cast<int>(blocks), ws.data(), ws.data() + blocks);
  TB_LAUNCH_CHECK();
  double total = 0.0;
  device::copy(&total, Device::CPU, ws.data() + blocks, Device::CUDA, sizeof(double));  // waits for the kernels
  return total;
}

void grad_scale(int64_t n, float* x, float s) {
  if (n <= 0) return;
  unsigned b = blocks_for(n, kThreads);
  if (b > 65535u * 8) b = 65535u * 8;
  scale_kernel<<<b, kThreads, 0, stream()>>>(n, x, s);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
