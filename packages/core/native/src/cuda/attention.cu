// Causal attention with grouped-query heads on the GPU, fp32, flash style:
// query tiles x key tiles with an online softmax, no T x T buffer anywhere.
// Semantics of cpu/attention.cc (layouts, segments, written outputs) and
// cpu/attention_decode.cc; the per-element math is kernels/attention_math.h.
// Compiled, not yet run on a GPU.
//
//   q, out [B, T, Hq, D]   k, v [B, T, Hkv, D]   lse [B, Hq, T]   seg [B, T] i32 or null
//   query head h reads kv head h / (Hq / Hkv); query t sees key j iff
//   start(t) <= j <= t (start(t) = first position of t's segment, else 0).
//
// Segments: segment_bounds_kernel turns the ids into start/end per token
// (binary search in the row, which is sorted). A query tile visits key tiles
// from the one holding its first query's start (starts are non-decreasing);
// a key tile visits query tiles up to its last key's end. Whole tiles outside
// a segment are skipped, as on the CPU. A sliding window (window > 0) is
// folded into the same bounds (math::window_bounds), computed by the same
// kernel with or without segment ids; the attention kernels do not change.
// Decode starts at key math::decode_first_key(L, window).
//
// Kernels (D <= 256; lanes own the head dims c = lane + 32 i, i < DPL):
//   forward:    block = (b, h, 16 queries), 4 warps x 4 query rows. Per key
//               tile of 32 (K, V in shared memory, K rows padded to D + 1 so
//               lane j reads key j without bank conflicts) lane j scores key j
//               for the warp's rows, then the online-softmax update and
//               O += P V with p_j broadcast by shuffle.
//   backward:   D_t = rowsum(dO * O) (delta_kernel), then two passes, each
//               writing its outputs once (no atomics, deterministic):
//               dq:     block = (b, h, 16 queries), the forward's layout;
//                       dq_t = sum_j ds_tj k_j.
//               dk, dv: block = (b, kv head, 16 keys), 8 warps x 2 keys; lane
//                       i holds query i of a 32-query tile; loops over the
//                       group's query heads and the query tiles that see the
//                       keys; dk_j = sum ds_tj q_t, dv_j = sum p_tj dO_t.
//   decode:     block = (b, h), 4 warps split the cached keys in 32-key
//               chunks, each an online softmax; the 4 partial states merge.
// fp32 on the CUDA cores (no tensor cores), written for clarity and
// correctness first; not tuned or measured yet.
#include <algorithm>
#include <string>

#include "../kernels/attention_math.h"
#include "attention.h"
#include "common.cuh"

namespace tb::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarps = 4, kRows = 4, kBQ = kWarps * kRows, kBK = 32;   // forward, dq
constexpr int kBWarps = 8, kKPW = 2, kBKB = kBWarps * kKPW, kBQB = 32;  // dk, dv
constexpr int kDecodeWarps = 4;

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, off));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFull, x, off);
  return x;
}

// dst[r * ld + c] = src[r * stride + c] for r < rows, 0 for rows <= r < nrows; c < D.
__device__ __forceinline__ void load_tile(float* dst, int ld, const float* __restrict__ src, int64_t stride,
                                          int rows, int nrows, int D) {
  for (int idx = threadIdx.x; idx < nrows * D; idx += blockDim.x) {
    const int r = idx / D, c = idx - r * D;
    dst[r * ld + c] = r < rows ? src[r * stride + c] : 0.0f;
  }
}

// start/end per token from the segment ids (seg may be null: one segment per
// row), narrowed to the sliding window (window <= 0: none).
__global__ void segment_bounds_kernel(const int32_t* __restrict__ seg, int64_t B, int64_t T, int64_t window,
                                      int32_t* __restrict__ start, int32_t* __restrict__ end) {
  const int64_t n = B * T;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / T, t = i - b * T;
    int32_t s = 0, e = static_cast<int32_t>(T);
    if (seg) math::segment_bounds_of(seg + b * T, T, t, s, e);
    math::window_bounds(t, window, s, e);
    start[i] = s;
    end[i] = e;
  }
}

// ---- forward ----

template <int DPL>
__global__ void __launch_bounds__(kWarps * 32)
    attention_forward_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                             float* __restrict__ out, float* __restrict__ lse, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, int D, float scale, const int32_t* __restrict__ seg_start) {
  extern __shared__ float smem[];
  const int Dk = D + 1;
  float* Ks = smem;             // [kBK][D + 1]
  float* Vs = Ks + kBK * Dk;    // [kBK][D]
  float* Qs = Vs + kBK * D;     // [kBQ][D]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // heaviest query tiles (the last ones) first
  const int64_t nQT = (T + kBQ - 1) / kBQ, item = blockIdx.x;
  const int64_t bh = item % (B * Hq), b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
  const int64_t i0 = (nQT - 1 - item / (B * Hq)) * kBQ;
  const int mr = static_cast<int>(min64(kBQ, T - i0));
  const int64_t qs = Hq * D, ks = Hkv * D;
  const float* qb = q + (b * T * Hq + h) * D;  // token t at + t * qs
  const float* kb = k + (b * T * Hkv + g) * D;
  const float* vb = v + (b * T * Hkv + g) * D;

  load_tile(Qs, D, qb + i0 * qs, qs, mr, kBQ, D);
  float m[kRows], l[kRows], o[kRows][DPL];
  int64_t st[kRows];
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t t = i0 + warp * kRows + r;
    st[r] = (seg_start && t < T) ? seg_start[b * T + t] : 0;
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; i++) o[r][i] = 0.0f;
  }
  const int64_t kbegin = seg_start ? seg_start[b * T + i0] : 0;  // the tile's earliest visible key
  const int64_t kend = i0 + mr;                                   // causal: one past its last query
  const float* qrow = Qs + warp * kRows * D;
  for (int64_t j0 = kbegin / kBK * kBK; j0 < kend; j0 += kBK) {
    const int kc = static_cast<int>(min64(kBK, T - j0));
    __syncthreads();  // the previous tile is no longer read (and Qs is loaded)
    load_tile(Ks, Dk, kb + j0 * ks, ks, kc, kBK, D);
    load_tile(Vs, D, vb + j0 * ks, ks, kc, kBK, D);
    __syncthreads();
    float dot[kRows];
#pragma unroll
    for (int r = 0; r < kRows; r++) dot[r] = 0.0f;
    const float* krow = Ks + lane * Dk;
    for (int c = 0; c < D; c++) {
      const float kv = krow[c];
#pragma unroll
      for (int r = 0; r < kRows; r++) dot[r] += qrow[r * D + c] * kv;
    }
    const int64_t j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; r++) {
      const int64_t t = i0 + warp * kRows + r;  // t >= T: padding row, never written
      const float s = (j < T && math::attn_visible(j, t, st[r])) ? dot[r] * scale : -INFINITY;
      float mnew;
      const float ref = math::softmax_new_max(m[r], warp_max(s), mnew);
      const float p = math::softmax_prob(s, ref);
      const float alpha = math::softmax_rescale(m[r], ref);
      math::softmax_accumulate(l[r], alpha, warp_sum(p));
      m[r] = mnew;
#pragma unroll
      for (int i = 0; i < DPL; i++) o[r][i] *= alpha;
#pragma unroll 4
      for (int jj = 0; jj < kBK; jj++) {  // padding keys have p = 0 and zero V rows
        const float pj = __shfl_sync(kFull, p, jj);
#pragma unroll
        for (int i = 0; i < DPL; i++) {
          const int c = lane + 32 * i;
          if (c < D) o[r][i] += pj * Vs[jj * D + c];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t t = i0 + warp * kRows + r;
    if (t >= T) continue;
    const float inv = 1.0f / l[r];
    float* orow = out + (b * T + t) * qs + h * D;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
      const int c = lane + 32 * i;
      if (c < D) orow[c] = o[r][i] * inv;
    }
    if (lane == 0) lse[(b * Hq + h) * T + t] = math::softmax_lse(m[r], l[r]);
  }
}

// ---- backward ----

// delta[b, h, t] = rowsum(dout * out) over D; one warp per (b, t, h) row.
__global__ void delta_kernel(const float* __restrict__ dout, const float* __restrict__ out, float* __restrict__ delta,
                             int64_t B, int64_t T, int64_t Hq, int D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= B * T * Hq) return;  // whole warps leave together
  const float* o = out + row * D;
  const float* d = dout + row * D;
  float s = 0.0f;
  for (int c = lane; c < D; c += 32) s += o[c] * d[c];
  s = warp_sum(s);
  const int64_t bt = row / Hq, h = row - bt * Hq, b = bt / T, t = bt - b * T;
  if (lane == 0) delta[(b * Hq + h) * T + t] = s;
}

// dq: the forward's layout; dq_t = sum_j ds_tj k_j, written.
template <int DPL>
__global__ void __launch_bounds__(kWarps * 32)
    attention_dq_kernel(const float* __restrict__ dout, const float* __restrict__ q, const float* __restrict__ k,
                        const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
                        float* __restrict__ dq, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int D, float scale,
                        const int32_t* __restrict__ seg_start) {
  extern __shared__ float smem[];
  const int Dk = D + 1;
  float* Ks = smem;             // [kBK][D + 1]
  float* Vs = Ks + kBK * Dk;    // [kBK][D + 1]
  float* Qs = Vs + kBK * Dk;    // [kBQ][D]
  float* dOs = Qs + kBQ * D;    // [kBQ][D]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t nQT = (T + kBQ - 1) / kBQ, item = blockIdx.x;
  const int64_t bh = item % (B * Hq), b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
  const int64_t i0 = (nQT - 1 - item / (B * Hq)) * kBQ;
  const int mr = static_cast<int>(min64(kBQ, T - i0));
  const int64_t qs = Hq * D, ks = Hkv * D;
  const float* kb = k + (b * T * Hkv + g) * D;
  const float* vb = v + (b * T * Hkv + g) * D;

  load_tile(Qs, D, q + (b * T * Hq + h) * D + i0 * qs, qs, mr, kBQ, D);
  load_tile(dOs, D, dout + (b * T * Hq + h) * D + i0 * qs, qs, mr, kBQ, D);
  float lr[kRows], dr[kRows], acc[kRows][DPL];
  int64_t st[kRows];
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t t = i0 + warp * kRows + r;
    const bool in = t < T;
    st[r] = (seg_start && in) ? seg_start[b * T + t] : 0;
    lr[r] = in ? lse[(b * Hq + h) * T + t] : 0.0f;
    dr[r] = in ? delta[(b * Hq + h) * T + t] : 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
  }
  const int64_t kbegin = seg_start ? seg_start[b * T + i0] : 0;
  const int64_t kend = i0 + mr;
  const float* qrow = Qs + warp * kRows * D;
  const float* drow = dOs + warp * kRows * D;
  for (int64_t j0 = kbegin / kBK * kBK; j0 < kend; j0 += kBK) {
    const int kc = static_cast<int>(min64(kBK, T - j0));
    __syncthreads();
    load_tile(Ks, Dk, kb + j0 * ks, ks, kc, kBK, D);
    load_tile(Vs, Dk, vb + j0 * ks, ks, kc, kBK, D);
    __syncthreads();
    float sdot[kRows], pdot[kRows];
#pragma unroll
    for (int r = 0; r < kRows; r++) sdot[r] = pdot[r] = 0.0f;
    const float* krow = Ks + lane * Dk;
    const float* vrow = Vs + lane * Dk;
    for (int c = 0; c < D; c++) {
      const float kv = krow[c], vv = vrow[c];
#pragma unroll
      for (int r = 0; r < kRows; r++) {
        sdot[r] += qrow[r * D + c] * kv;
        pdot[r] += drow[r * D + c] * vv;
      }
    }
    const int64_t j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; r++) {
      const int64_t t = i0 + warp * kRows + r;
      const bool vis = t < T && j < T && math::attn_visible(j, t, st[r]);
      const float p = vis ? math::attn_prob(sdot[r], scale, lr[r]) : 0.0f;
      const float ds = vis ? math::attn_dscore(p, pdot[r], dr[r], scale) : 0.0f;
#pragma unroll 4
      for (int jj = 0; jj < kBK; jj++) {
        const float dsj = __shfl_sync(kFull, ds, jj);
#pragma unroll
        for (int i = 0; i < DPL; i++) {
          const int c = lane + 32 * i;
          if (c < D) acc[r][i] += dsj * Ks[jj * Dk + c];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t t = i0 + warp * kRows + r;
    if (t >= T) continue;
    float* o = dq + (b * T + t) * qs + h * D;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
      const int c = lane + 32 * i;
      if (c < D) o[c] = acc[r][i];
    }
  }
}

// dk, dv: block = (b, kv head, kBKB keys); written.
template <int DPL>
__global__ void __launch_bounds__(kBWarps * 32)
    attention_dkdv_kernel(const float* __restrict__ dout, const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
                          float* __restrict__ dk, float* __restrict__ dv, int64_t B, int64_t T, int64_t Hq,
                          int64_t Hkv, int D, float scale, const int32_t* __restrict__ seg_start,
                          const int32_t* __restrict__ seg_end) {
  extern __shared__ float smem[];
  const int Dk = D + 1;
  float* Ks = smem;              // [kBKB][D]
  float* Vs = Ks + kBKB * D;     // [kBKB][D]
  float* Qs = Vs + kBKB * D;     // [kBQB][D + 1]
  float* dOs = Qs + kBQB * Dk;   // [kBQB][D + 1]
  float* Ls = dOs + kBQB * Dk;   // [kBQB] lse
  float* Ds = Ls + kBQB;         // [kBQB] delta
  int32_t* Ss = reinterpret_cast<int32_t*>(Ds + kBQB);  // [kBQB] segment starts
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t G = Hq / Hkv, item = blockIdx.x;
  // the first key tiles see the most queries: they go first
  const int64_t bg = item % (B * Hkv), b = bg / Hkv, g = bg % Hkv;
  const int64_t j0 = (item / (B * Hkv)) * kBKB;
  const int kc = static_cast<int>(min64(kBKB, T - j0));
  const int64_t qs = Hq * D, ks = Hkv * D;
  load_tile(Ks, D, k + (b * T * Hkv + g) * D + j0 * ks, ks, kc, kBKB, D);
  load_tile(Vs, D, v + (b * T * Hkv + g) * D + j0 * ks, ks, kc, kBKB, D);
  // query tiles past the last key's segment end see none of these keys (ends are non-decreasing)
  const int64_t qend = seg_end ? seg_end[b * T + j0 + kc - 1] : T;
  float adk[kKPW][DPL], adv[kKPW][DPL];
#pragma unroll
  for (int kk = 0; kk < kKPW; kk++)
#pragma unroll
    for (int i = 0; i < DPL; i++) adk[kk][i] = adv[kk][i] = 0.0f;
  const float* qrow = Qs + lane * Dk;
  const float* drow = dOs + lane * Dk;
  for (int64_t h = g * G; h < (g + 1) * G; h++) {
    const float* qb = q + (b * T * Hq + h) * D;
    const float* db = dout + (b * T * Hq + h) * D;
    for (int64_t i0 = j0 / kBQB * kBQB; i0 < qend; i0 += kBQB) {  // queries before j0 see none of the keys
      const int mr = static_cast<int>(min64(kBQB, T - i0));
      __syncthreads();  // the previous query tile is no longer read (and K, V are loaded)
      load_tile(Qs, Dk, qb + i0 * qs, qs, mr, kBQB, D);
      load_tile(dOs, Dk, db + i0 * qs, qs, mr, kBQB, D);
      if (threadIdx.x < kBQB) {
        const int i = threadIdx.x;
        const bool in = i < mr;
        Ls[i] = in ? lse[(b * Hq + h) * T + i0 + i] : 0.0f;
        Ds[i] = in ? delta[(b * Hq + h) * T + i0 + i] : 0.0f;
        Ss[i] = (in && seg_start) ? seg_start[b * T + i0 + i] : 0;
      }
      __syncthreads();
      const int64_t t = i0 + lane;
#pragma unroll
      for (int kk = 0; kk < kKPW; kk++) {
        const int jl = warp * kKPW + kk;
        const int64_t j = j0 + jl;
        const float* krow = Ks + jl * D;
        const float* vrow = Vs + jl * D;
        float sdot = 0.0f, pdot = 0.0f;
        for (int c = 0; c < D; c++) {
          sdot += qrow[c] * krow[c];
          pdot += drow[c] * vrow[c];
        }
        const bool vis = t < T && j < T && math::attn_visible(j, t, Ss[lane]);
        const float p = vis ? math::attn_prob(sdot, scale, Ls[lane]) : 0.0f;
        const float ds = vis ? math::attn_dscore(p, pdot, Ds[lane], scale) : 0.0f;
#pragma unroll 4
        for (int ii = 0; ii < kBQB; ii++) {
          const float pi = __shfl_sync(kFull, p, ii), dsi = __shfl_sync(kFull, ds, ii);
#pragma unroll
          for (int i = 0; i < DPL; i++) {
            const int c = lane + 32 * i;
            if (c < D) {
              adv[kk][i] += pi * dOs[ii * Dk + c];
              adk[kk][i] += dsi * Qs[ii * Dk + c];
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int kk = 0; kk < kKPW; kk++) {
    const int64_t j = j0 + warp * kKPW + kk;
    if (j >= T) continue;
    float* okr = dk + (b * T + j) * ks + g * D;
    float* ovr = dv + (b * T + j) * ks + g * D;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
      const int c = lane + 32 * i;
      if (c < D) {
        okr[c] = adk[kk][i];
        ovr[c] = adv[kk][i];
      }
    }
  }
}

// ---- decode ----

template <int DPL>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_kernel(int64_t Hq, int64_t Hkv, int D, int64_t Tmax, int64_t L, int64_t first, float scale,
                            const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
                            float* __restrict__ out) {
  __shared__ float ms[kDecodeWarps], ls[kDecodeWarps];
  extern __shared__ float os[];  // [kDecodeWarps][D]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.x, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
  const float* qv = q + bh * D;
  float qr[DPL], o[DPL];
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    const int c = lane + 32 * i;
    qr[i] = c < D ? qv[c] : 0.0f;
    o[i] = 0.0f;
  }
  const int64_t ks = Hkv * D;
  const float* kb = kc + (b * Tmax * Hkv + g) * D;  // key j at + j * ks
  const float* vb = vc + (b * Tmax * Hkv + g) * D;
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = first + warp * 32; j0 < L; j0 += kDecodeWarps * 32) {
    const int n = static_cast<int>(min64(32, L - j0));
    float s = -INFINITY;  // lane jj holds key j0 + jj's score
    for (int jj = 0; jj < n; jj++) {
      const float* kr = kb + (j0 + jj) * ks;
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        const int c = lane + 32 * i;
        if (c < D) part += qr[i] * kr[c];
      }
      part = warp_sum(part);
      if (lane == jj) s = part * scale;
    }
    float mnew;
    const float ref = math::softmax_new_max(m, warp_max(s), mnew);
    const float p = math::softmax_prob(s, ref);
    const float alpha = math::softmax_rescale(m, ref);
    math::softmax_accumulate(l, alpha, warp_sum(p));
    m = mnew;
#pragma unroll
    for (int i = 0; i < DPL; i++) o[i] *= alpha;
    for (int jj = 0; jj < n; jj++) {
      const float pj = __shfl_sync(kFull, p, jj);
      const float* vr = vb + (j0 + jj) * ks;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        const int c = lane + 32 * i;
        if (c < D) o[i] += pj * vr[c];
      }
    }
  }
  if (lane == 0) { ms[warp] = m; ls[warp] = l; }
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    const int c = lane + 32 * i;
    if (c < D) os[warp * D + c] = o[i];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float mm = ms[0], ll = ls[0], oo = os[c];  // warp 0 holds key `first` (L > first)
    for (int w = 1; w < kDecodeWarps; w++) {
      float mn, a1, a2;
      math::softmax_merge_factors(mm, ms[w], mn, a1, a2);
      ll = ll * a1 + ls[w] * a2;
      oo = oo * a1 + os[w * D + c] * a2;
      mm = mn;
    }
    out[bh * D + c] = oo * (1.0f / ll);
  }
}

// ---- launch helpers ----

int dpl_for(int64_t D) {
  if (D > kAttentionMaxHeadDim)
    throw DeviceError("attention on CUDA supports head dims up to " + std::to_string(kAttentionMaxHeadDim) +
                      ", got D = " + std::to_string(D));
  return D <= 32 ? 1 : D <= 64 ? 2 : D <= 128 ? 4 : 8;
}

// Launches kernel<<<grid, threads, smem>>> after raising its dynamic shared
// memory limit when it needs more than the default 48 KiB.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned grid, int threads, size_t smem, Args... args) {
  if (smem > 48 * 1024)
    TB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, threads, smem, stream()>>>(args...);
  TB_LAUNCH_CHECK();
}

unsigned grid_of(int64_t n) {
  if (n > 0x7fffffff) throw DeviceError("attention on CUDA: too many blocks (" + std::to_string(n) + ")");
  return static_cast<unsigned>(n);
}

// Segment starts then ends ([2, B, T] i32) from the ids (or null) and the window, in `bounds`.
void segment_bounds(const int32_t* seg, int64_t B, int64_t T, int64_t window, int32_t* bounds) {
  segment_bounds_kernel<<<std::min(blocks_for(B * T, 256), 65535u * 8), 256, 0, stream()>>>(seg, B, T, window, bounds,
                                                                                           bounds + B * T);
  TB_LAUNCH_CHECK();
}

template <int DPL>
void forward_impl(const float* q, const float* k, const float* v, float* out, float* lse, int64_t B, int64_t T,
                  int64_t Hq, int64_t Hkv, int D, float scale, const int32_t* start) {
  const size_t smem = sizeof(float) * (kBK * (D + 1) + kBK * D + kBQ * D);
  const int64_t nQT = (T + kBQ - 1) / kBQ;
  launch(attention_forward_kernel<DPL>, grid_of(B * Hq * nQT), kWarps * 32, smem, q, k, v, out, lse, B, T, Hq, Hkv, D,
         scale, start);
}

template <int DPL>
void backward_impl(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                   const float* delta, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                   int D, float scale, const int32_t* start, const int32_t* end) {
  const size_t smem_dq = sizeof(float) * (2 * kBK * (D + 1) + 2 * kBQ * D);
  const int64_t nQT = (T + kBQ - 1) / kBQ;
  launch(attention_dq_kernel<DPL>, grid_of(B * Hq * nQT), kWarps * 32, smem_dq, dout, q, k, v, lse, delta, dq, B, T,
         Hq, Hkv, D, scale, start);
  const size_t smem_kv = sizeof(float) * (2 * kBKB * D + 2 * kBQB * (D + 1) + 3 * kBQB);
  const int64_t nKT = (T + kBKB - 1) / kBKB;
  launch(attention_dkdv_kernel<DPL>, grid_of(B * Hkv * nKT), kBWarps * 32, smem_kv, dout, q, k, v, lse, delta, dk,
         dv, B, T, Hq, Hkv, D, scale, start, end);
}

}  // namespace

void attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int64_t B, int64_t T,
                       int64_t Hq, int64_t Hkv, int64_t D, float scale, const int32_t* seg, int64_t window) {
  if (B == 0 || T == 0) return;
  const int dpl = dpl_for(D);
  const bool masked = seg != nullptr || (window > 0 && window < T);
  Workspace<int32_t> bounds(masked ? static_cast<size_t>(2 * B * T) : 0, Device::CUDA);
  if (masked) segment_bounds(seg, B, T, window, bounds.data());
  const int32_t* start = masked ? bounds.data() : nullptr;
  const int d = static_cast<int>(D);
  switch (dpl) {
    case 1: forward_impl<1>(q, k, v, out, lse, B, T, Hq, Hkv, d, scale, start); break;
    case 2: forward_impl<2>(q, k, v, out, lse, B, T, Hq, Hkv, d, scale, start); break;
    case 4: forward_impl<4>(q, k, v, out, lse, B, T, Hq, Hkv, d, scale, start); break;
    default: forward_impl<8>(q, k, v, out, lse, B, T, Hq, Hkv, d, scale, start); break;
  }
}

void attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                        const float* lse, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, const int32_t* seg, int64_t window) {
  if (B == 0 || T == 0) return;
  const int dpl = dpl_for(D);
  const bool masked = seg != nullptr || (window > 0 && window < T);
  Workspace<int32_t> bounds(masked ? static_cast<size_t>(2 * B * T) : 0, Device::CUDA);
  if (masked) segment_bounds(seg, B, T, window, bounds.data());
  const int32_t* start = masked ? bounds.data() : nullptr;
  const int32_t* end = masked ? bounds.data() + B * T : nullptr;
  Workspace<float> delta(static_cast<size_t>(B * Hq * T), Device::CUDA);
  const int d = static_cast<int>(D);
  const int64_t rows = B * T * Hq;
  delta_kernel<<<grid_of((rows + 7) / 8), 256, 0, stream()>>>(dout, out, delta.data(), B, T, Hq, d);
  TB_LAUNCH_CHECK();
  switch (dpl) {
    case 1: backward_impl<1>(dout, q, k, v, lse, delta.data(), dq, dk, dv, B, T, Hq, Hkv, d, scale, start, end); break;
    case 2: backward_impl<2>(dout, q, k, v, lse, delta.data(), dq, dk, dv, B, T, Hq, Hkv, d, scale, start, end); break;
    case 4: backward_impl<4>(dout, q, k, v, lse, delta.data(), dq, dk, dv, B, T, Hq, Hkv, d, scale, start, end); break;
    default: backward_impl<8>(dout, q, k, v, lse, delta.data(), dq, dk, dv, B, T, Hq, Hkv, d, scale, start, end); break;
  }
}

void attention_decode(int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t Tmax, int64_t L, float scale,
                      const float* q, const float* kc, const float* vc, float* out, int64_t window) {
  if (B == 0 || L == 0) return;
  const int dpl = dpl_for(D);
  const int64_t first = math::decode_first_key(L, window);
  const int d = static_cast<int>(D);
  const size_t smem = sizeof(float) * kDecodeWarps * D;
  const unsigned grid = grid_of(B * Hq);
  switch (dpl) {
    case 1: launch(attention_decode_kernel<1>, grid, kDecodeWarps * 32, smem, Hq, Hkv, d, Tmax, L, first, scale, q, kc, vc, out); break;
    case 2: launch(attention_decode_kernel<2>, grid, kDecodeWarps * 32, smem, Hq, Hkv, d, Tmax, L, first, scale, q, kc, vc, out); break;
    case 4: launch(attention_decode_kernel<4>, grid, kDecodeWarps * 32, smem, Hq, Hkv, d, Tmax, L, first, scale, q, kc, vc, out); break;
    default: launch(attention_decode_kernel<8>, grid, kDecodeWarps * 32, smem, Hq, Hkv, d, Tmax, L, first, scale, q, kc, vc, out); break;
  }
}

}  // namespace tb::cuda
