// Cross-entropy fused with the LM-head logits (same semantics as
// cpu/cross_entropy.cc). Compiled, not yet run on a GPU.
//
// The non-ignored tokens are taken `chunk` at a time; one chunk x V block of
// logits lives in a device workspace, so the N x V logits never exist. Per
// chunk: gather the h rows when they are not contiguous, logits = h_chunk w^T
// (tb::cuda::gemm), then one block per logits row: the log-sum-exp as running
// (max, sum) pairs merged by warp shuffles and across warps. Backward turns
// the recomputed logits into dlogits in place, then dh_chunk = dlogits w and
// dw += dlogits^T h_chunk (gemm with beta 1; chunks run in stream order, so
// dw is never written by two GEMMs at once).
#include <algorithm>

#include "../kernels/cross_entropy_math.h"
#include "common.cuh"
#include "cross_entropy.h"
#include "gemm.h"

namespace tb::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kThreads = 256;

// The (max, sum) pair over the block, returned to every thread.
__device__ __forceinline__ void block_lse(float& m, float& s) {
  __shared__ float sm[32], ss[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    math::lse_merge(m, s, m2, s2);
  }
  if (lane == 0) { sm[warp] = m; ss[warp] = s; }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sm[lane] : -INFINITY;
    s = lane < warps ? ss[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      math::lse_merge(m, s, m2, s2);
    }
    if (lane == 0) { sm[0] = m; ss[0] = s; }
  }
  __syncthreads();
  m = sm[0];
  s = ss[0];
  __syncthreads();
}

// logits [m, V] of the tokens idx[0..m) -> lse[i], loss[i] for i = idx[r]
__global__ void ce_forward_rows_kernel(int64_t m, int64_t V, const float* __restrict__ logits,
                                       const int32_t* __restrict__ idx, const int32_t* __restrict__ tgt,
                                       float* __restrict__ loss, float* __restrict__ lse) {
  for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
    const float* row = logits + r * V;
    float mx = -INFINITY, s = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) math::lse_update(mx, s, row[j]);
    block_lse(mx, s);
    if (threadIdx.x == 0) {
      const int64_t i = idx[r];
      const float l = math::lse_finish(mx, s);
      lse[i] = l;
      loss[i] = math::ce_loss(l, row[tgt[i]]);
    }
  }
}

// logits [m, V] -> dlogits in place
__global__ void ce_dlogits_kernel(int64_t m, int64_t V, float* __restrict__ logits, const int32_t* __restrict__ idx,
                                  const int32_t* __restrict__ tgt, const float* __restrict__ lse, float scale) {
  for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
    float* row = logits + r * V;
    const int64_t i = idx[r];
    const float l = lse[i];
    const int64_t t = tgt[i];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) row[j] = math::ce_dlogit(row[j], l, scale, j == t);
  }
}

// dst [m, C] = h rows idx[0..m)
__global__ void gather_rows_kernel(int64_t m, int64_t C, const float* __restrict__ h, const int32_t* __restrict__ idx,
                                   float* __restrict__ dst) {
  const int64_t total = m * C;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / C, c = k - r * C;
    dst[k] = h[static_cast<int64_t>(idx[r]) * C + c];
  }
}

// dh rows idx[0..m) = src [m, C]
__global__ void scatter_rows_kernel(int64_t m, int64_t C, const float* __restrict__ src, const int32_t* __restrict__ idx,
                                    float* __restrict__ dh) {
  const int64_t total = m * C;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / C, c = k - r * C;
    dh[static_cast<int64_t>(idx[r]) * C + c] = src[k];
  }
}

unsigned grid_for(int64_t n) {
  unsigned b = blocks_for(n, kThreads);
  return b > 65535u * 8 ? 65535u * 8 : b;
}
unsigned row_grid(int64_t m) { return static_cast<unsigned>(m < 65535 * 16 ? m : 65535 * 16); }

// As the CPU: at most the active token count, and chunk x V within 2^52.
int64_t clamp_chunk(int64_t chunk, int64_t n_active, int64_t V) {
  return std::max<int64_t>(1, std::min({chunk, n_active, (int64_t(1) << 52) / V}));
}

// One chunk's h rows [m, C]: h itself when idx_host[0..m) is a contiguous
// run, else gathered into buf.
const float* chunk_rows(const float* h, int64_t C, const int32_t* idx, const int32_t* idx_host, int64_t m, float* buf,
                        bool* contiguous) {
  *contiguous = static_cast<int64_t>(idx_host[m - 1]) - idx_host[0] == m - 1;
  if (*contiguous) return h + static_cast<int64_t>(idx_host[0]) * C;
  gather_rows_kernel<<<grid_for(m * C), kThreads, 0, stream()>>>(m, C, h, idx, buf);
  TB_LAUNCH_CHECK();
  return buf;
}

}  // namespace

void cross_entropy_forward(const float* h, const void* w, DType wdt, const int32_t* tgt, int64_t N, int64_t C,
                           int64_t V, const int32_t* idx, const int32_t* idx_host, int64_t n_active, int64_t chunk,
                           float* loss, float* lse) {
  if (N > 0) {
    TB_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float) * N, stream()));
    TB_CUDA_CHECK(cudaMemsetAsync(lse, 0, sizeof(float) * N, stream()));
  }
  if (n_active == 0) return;
  chunk = clamp_chunk(chunk, n_active, V);
  Workspace<float> logits(static_cast<size_t>(chunk * V), Device::CUDA);
  Workspace<float> hbuf(n_active < N ? static_cast<size_t>(chunk * C) : 0, Device::CUDA);
  const MatRef W{w, wdt, C, true};
  for (int64_t c0 = 0; c0 < n_active; c0 += chunk) {
    const int64_t m = std::min(chunk, n_active - c0);
    bool contiguous;
    const float* hc = chunk_rows(h, C, idx + c0, idx_host + c0, m, hbuf.data(), &contiguous);
    cuda::gemm(m, V, C, 1.0f, MatRef{hc, DType::F32, C, false}, W, 0.0f, logits.data(), V);
    ce_forward_rows_kernel<<<row_grid(m), kRowThreads, 0, stream()>>>(m, V, logits.data(), idx + c0, tgt, loss, lse);
    TB_LAUNCH_CHECK();
  }
}

void cross_entropy_backward(const float* h, const void* w, DType wdt, const int32_t* tgt, const float* lse, int64_t N,
                            int64_t C, int64_t V, const int32_t* idx, const int32_t* idx_host, int64_t n_active,
                            int64_t chunk, float scale, float* dh, float* dw) {
  // ignored tokens get zero rows (active rows are all overwritten below)
  if (n_active < N) TB_CUDA_CHECK(cudaMemsetAsync(dh, 0, sizeof(float) * N * C, stream()));
  if (n_active == 0) return;
  chunk = clamp_chunk(chunk, n_active, V);
  Workspace<float> logits(static_cast<size_t>(chunk * V), Device::CUDA);
  Workspace<float> hbuf(n_active < N ? static_cast<size_t>(chunk * C) : 0, Device::CUDA);
  Workspace<float> dhbuf(n_active < N ? static_cast<size_t>(chunk * C) : 0, Device::CUDA);
  for (int64_t c0 = 0; c0 < n_active; c0 += chunk) {
    const int64_t m = std::min(chunk, n_active - c0);
    bool contiguous;
    const float* hc = chunk_rows(h, C, idx + c0, idx_host + c0, m, hbuf.data(), &contiguous);
    float* lg = logits.data();
    cuda::gemm(m, V, C, 1.0f, MatRef{hc, DType::F32, C, false}, MatRef{w, wdt, C, true}, 0.0f, lg, V);
    ce_dlogits_kernel<<<row_grid(m), kRowThreads, 0, stream()>>>(m, V, lg, idx + c0, tgt, lse, scale);
    TB_LAUNCH_CHECK();
    // dh_chunk [m, C] = dlogits [m, V] · w [V, C]
    float* dhc = contiguous ? dh + static_cast<int64_t>(idx_host[c0]) * C : dhbuf.data();
    cuda::gemm(m, C, V, 1.0f, MatRef{lg, DType::F32, V, false}, MatRef{w, wdt, C, false}, 0.0f, dhc, C);
    if (!contiguous) {
      scatter_rows_kernel<<<grid_for(m * C), kThreads, 0, stream()>>>(m, C, dhc, idx + c0, dh);
      TB_LAUNCH_CHECK();
    }
    // dw [V, C] += dlogits^T [V, m] · h_chunk [m, C]
    if (dw) cuda::gemm(V, C, m, 1.0f, MatRef{lg, DType::F32, V, true}, MatRef{hc, DType::F32, C, false}, 1.0f, dw, C);
  }
}

}  // namespace tb::cuda
