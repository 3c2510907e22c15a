// AdamW (fp32 parameters and state), same semantics as cpu/adamw.cc, the
// per-element math in kernels/adamw_math.h. Compiled, not yet run on a GPU.
//   adamw_step:       one tensor, a grid-stride loop.
//   adamw_step_multi: every tensor of the model in one launch. The host builds
//     a table of descriptors {p, g, m, v, n, decay, first chunk}; block b
//     finds its tensor by binary search over the first-chunk column and
//     updates elements [c * kChunk, (c + 1) * kChunk) of it.
#include <vector>

#include "../device.h"
#include "adamw.h"
#include "common.cuh"

namespace tb::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per block in the multi-tensor kernel

__global__ void adamw_kernel(int64_t n, float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, math::AdamwScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    math::adamw_update(s, s.decay, g[i], pi, mi, vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

struct Desc {
  AdamwTensor t;
  int64_t first_chunk;  // chunks of the tensors before this one
};

__global__ void adamw_multi_kernel(const Desc* __restrict__ d, int count, math::AdamwScalars s) {
  const int64_t b = blockIdx.x;
  int lo = 0, hi = count - 1;  // the last descriptor whose first chunk is <= b
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (d[mid].first_chunk <= b) lo = mid; else hi = mid - 1;
  }
  const AdamwTensor t = d[lo].t;
  const int64_t begin = (b - d[lo].first_chunk) * kChunk;
  const int64_t end = begin + kChunk < t.n ? begin + kChunk : t.n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float pi = t.p[i], mi = t.m[i], vi = t.v[i];
    math::adamw_update(s, t.decay, t.g[i], pi, mi, vi);
    t.p[i] = pi;
    t.m[i] = mi;
    t.v[i] = vi;
  }
}

unsigned grid(int64_t n) {
  unsigned b = blocks_for(n, kThreads);
  return b > 65535u * 8 ? 65535u * 8 : b;
}

}  // namespace

void adamw_step(int64_t n, float* p, const float* g, float* m, float* v, const math::AdamwScalars& s) {
  if (n <= 0) return;
  adamw_kernel<<<grid(n), kThreads, 0, stream()>>>(n, p, g, m, v, s);
  TB_LAUNCH_CHECK();
}

void adamw_step_multi(const AdamwTensor* tensors, int64_t count, const math::AdamwScalars& s) {
  std::vector<Desc> host;
  host.reserve(static_cast<size_t>(count));
  int64_t chunks = 0;
  for (int64_t i = 0; i < count; i++) {
    if (tensors[i].n <= 0) continue;
    host.push_back(Desc{tensors[i], chunks});
    chunks += (tensors[i].n + kChunk - 1) / kChunk;
  }
  if (host.empty()) return;
  if (chunks > 0x7fffffff) throw DeviceError("adamw_step_multi: more than 2^31 - 1 chunks of 4096 elements");
  Workspace<Desc> dev(host.size(), Device::CUDA);
  // queued without waiting: the pageable host table is staged before upload
  // returns, so it may go out of scope right after
  device::upload(dev.data(), host.data(), host.size() * sizeof(Desc));
  adamw_multi_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream()>>>(dev.data(), static_cast<int>(host.size()), s);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
