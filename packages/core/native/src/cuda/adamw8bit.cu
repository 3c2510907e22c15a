// Blockwise 8-bit AdamW, as cpu/adamw8bit.cc: one thread block per state
// block of bs elements. Thread t takes a contiguous run of the block,
// dequantizes m and v, updates the parameter, keeps the new m and v in shared
// memory and folds their |values|; the folds are combined in order (the
// NaN-aware absmax of kernels/adamw8bit_math.h, equal to the CPU's sequential
// loop), then every element is requantized against the new absmax.
// Compiled, not yet run on a GPU.
#include "../kernels/adamw8bit_math.h"
#include "../quant_maps.h"
#include "adamw8bit.h"
#include "common.cuh"

namespace tb::cuda {
namespace {

constexpr int kThreads = 256;

struct Maps {
  float s[256], u[256];
  uint8_t szero, uzero;
};

// the folds of threads [0, kThreads) combined in order into f[0]
__device__ void ordered_fold(math::AbsmaxFold* f) {
  for (int w = 1; w < kThreads; w <<= 1) {
    __syncthreads();
    if ((threadIdx.x & (2 * w - 1)) == 0) f[threadIdx.x] = math::fold_combine(f[threadIdx.x], f[threadIdx.x + w]);
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) adamw8bit_kernel(int64_t n, int64_t bs, int64_t nblocks, float* __restrict__ p,
                                                             const float* __restrict__ g, uint8_t* __restrict__ mc,
                                                             float* __restrict__ ma, uint8_t* __restrict__ vc,
                                                             float* __restrict__ va, math::AdamwScalars s, Maps maps) {
  extern __shared__ float buf[];  // [bs] new m, then [bs] new v
  __shared__ float smap[256], umap[256];
  __shared__ math::AbsmaxFold fm[kThreads], fv[kThreads];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    smap[i] = maps.s[i];
    umap[i] = maps.u[i];
  }
  __syncthreads();
  float* mbuf = buf;
  float* vbuf = buf + bs;
  for (int64_t blk = blockIdx.x; blk < nblocks; blk += gridDim.x) {
    const int64_t i0 = blk * bs;
    const int64_t len = n - i0 < bs ? n - i0 : bs;
    const int64_t chunk = (len + kThreads - 1) / kThreads;
    const int64_t a = threadIdx.x * chunk, b = a + chunk < len ? a + chunk : len;
    const float m_scale = ma[blk], v_scale = va[blk];
    math::AbsmaxFold fmt = math::fold_empty(), fvt = math::fold_empty();
    for (int64_t i = a; i < b; i++) {
      const int64_t e = i0 + i;
      float pe = p[e], mi, vi;
      math::adamw8bit_element(s, smap, umap, m_scale, v_scale, g[e], mc[e], vc[e], pe, mi, vi);
      p[e] = pe;
      mbuf[i] = mi;
      vbuf[i] = vi;
      fmt = math::fold_push(fmt, mi);
      fvt = math::fold_push(fvt, vi);
    }
    fm[threadIdx.x] = fmt;
    fv[threadIdx.x] = fvt;
    ordered_fold(fm);
    ordered_fold(fv);
    const float m_max = math::fold_result(fm[0]), v_max = math::fold_result(fv[0]);
    if (threadIdx.x == 0) {
      ma[blk] = m_max;
      va[blk] = v_max;
    }
    for (int64_t i = a; i < b; i++) {
      mc[i0 + i] = math::adamw8bit_code(smap, mbuf[i], m_max, maps.szero);
      vc[i0 + i] = math::adamw8bit_code(umap, vbuf[i], v_max, maps.uzero);
    }
    __syncthreads();  // fm/fv and the buffers are reused by the next block
  }
}

}  // namespace

void adamw8bit_step(int64_t n, int64_t bs, float* p, const float* g, uint8_t* mc, float* ma, uint8_t* vc, float* va,
                    const math::AdamwScalars& s) {
  if (n <= 0) return;
  if (bs < 1 || bs > kAdamw8bitMaxBlock) throw DeviceError("adamw8bit_step: the CUDA kernel takes block sizes 1..4096");
  Maps maps;
  const float* sm = dynamic_map(true);
  const float* um = dynamic_map(false);
  for (int i = 0; i < 256; i++) {
    maps.s[i] = sm[i];
    maps.u[i] = um[i];
  }
  maps.szero = math::map_zero_code(sm);
  maps.uzero = math::map_zero_code(um);
  const int64_t nblocks = (n + bs - 1) / bs;
  const unsigned grid = static_cast<unsigned>(nblocks > 65535 * 32 ? 65535 * 32 : nblocks);
  const size_t shmem = static_cast<size_t>(2 * bs) * sizeof(float);  // at most 32 KiB
  adamw8bit_kernel<<<grid, kThreads, shmem, stream()>>>(n, bs, nblocks, p, g, mc, ma, vc, va, s, maps);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
