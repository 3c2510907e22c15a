// Causal multi-head attention with grouped-query heads, CPU, FlashAttention-2
// style: query tiles x key tiles with an online softmax, so memory is linear
// in T (no T x T buffer per head, not in forward and not kept for backward).
//
//   q: [B, T, Hq, D]   k, v: [B, T, Hkv, D]   (f32, row-major; Hq % Hkv == 0)
//   query head h reads kv head h / (Hq / Hkv)  (consecutive query heads share
//   a kv head, as HF repeat_kv does); query t attends keys 0..t.
//   out: [B, T, Hq, D]  lse: [B, Hq, T] = logsumexp_j(scale * q_t . k_j)
//
// Segments (padding-free packed batches; the convention a device kernel
// shares): an optional seg [B, T] i32 holds a segment id per token. Within a
// row, segments are contiguous and ids non-decreasing (0 0 0 1 1 2 2 2 ...);
// padding positions carry a segment id of their own. Query t attends key s
// iff s <= t and seg[b, s] == seg[b, t]. Because segments are contiguous,
// that is s in [start(t), t], with start(t) the first position of t's segment;
// the kernels work from start(t) and end(t) (one past the last position of
// the segment), so a key tile wholly before every query's segment start (or,
// in backward, a query tile wholly past every key's segment end) is never
// visited: a packed row costs the sum of its segments' causal costs at tile
// granularity, not a full causal row. Without seg every row is one segment.
//
// Sliding window (window > 0, Mistral): query t also needs t - s < window.
// The bindings fold it into the same bounds (math::window_bounds): start(t)
// = max(start(t), t - window + 1), end(t) = min(end(t), t + window); both
// stay non-decreasing, so the kernels below run unchanged and skip the key
// tiles wholly before a query tile's window as they skip other segments.
//
// CUDA: cuda/attention.cu implements the same ops (same layouts, masks, lse,
// written outputs; D <= 256), its per-element math in kernels/attention_math.h
// (tested on the CPU through hostmath_attention). One binding per op
// dispatches on the tensors' device.
//
// Tile matmuls use one register-tiled kernel written with GCC vector
// extensions (16-float vectors when the compiler targets AVX-512, as
// -march=native does here; 8-float ones otherwise). Its left operand is read
// through two strides, so transposed tiles (P^T, dS^T) cost no copy; q, k,
// v, dout and dq rows are used in place when D is a whole number of vectors
// (else through zero-padded 64-row copies, row stride Dp); K^T, V^T and the
// forward's Q^T are transposed once per tile.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "args.h"
#include "cuda/attention.h"
#include "fast_exp.h"
#include "kernels/attention_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {
namespace {

constexpr int64_t BT = 64;  // query tile rows == key tile columns (the diagonal logic needs them equal)
#if defined(__GNUC__) && !defined(__clang__)
// Vectors wider than the target's registers are passed in memory between
// these internal inline helpers; GCC notes the ABI difference, harmless here.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#if defined(__AVX512F__)
// 32 zmm registers: a 6 x 64 accumulator block (24 registers) + 4 B vectors.
constexpr int VW = 16, kNV = 4, kRB = 6;
#else
// 16 registers (AVX2 ymm): a 4 x 16 block (8 registers) + 2 B vectors.
constexpr int VW = 8, kNV = 2, kRB = 4;
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vsplat(float s) { return vf{} + s; }
inline vf lane_index() {  // {0, 1, ..., VW - 1}
  vf v;
  for (int i = 0; i < VW; i++) v[i] = static_cast<float>(i);
  return v;
}
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// exp(x) lane-wise (fast_exp.h); exactly 0 below kExpLo (so a masked -inf
// score gives P = 0), NaN stays NaN.
inline vf vexp(vf x) {
  const vi under = x < kExpLo;
  x = x < kExpLo ? vsplat(kExpLo) : x;
  x = x > kExpHi ? vsplat(kExpHi) : x;
  vf n;
  const vf p = exp_reduced(x, n);
  vi bits = (vi)p + (__builtin_convertvector(n, vi) << 23);  // p * 2^n
  vf res = (vf)bits;
  return under ? vf{} : res;
}

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < VW; i++) m = v[i] > m ? v[i] : m;
  return m;
}
inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < VW; i++) s += v[i];
  return s;
}

// C[r][0:VW*NV] (+)= sum_k A(r, k) * Bm[k*ldb + 0:VW*NV] for r < RB, where
// A(r, k) = A[r*ars + k*aks] (so a transposed A costs nothing: it is only
// ever broadcast one element at a time).
template <int RB, int NV>
inline void mm_block(int64_t K, const float* __restrict A, int64_t ars, int64_t aks, const float* __restrict Bm,
                     int64_t ldb, float* __restrict C, int64_t ldc, bool acc) {
  vf c[RB][NV];
#pragma GCC unroll 6
  for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) c[r][v] = acc ? vload(C + r * ldc + v * VW) : vf{};
  for (int64_t k = 0; k < K; k++) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = vload(Bm + k * ldb + v * VW);
    const float* a = A + k * aks;
#pragma GCC unroll 6
    for (int r = 0; r < RB; r++) {
      const vf ar = vsplat(a[r * ars]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) c[r][v] += ar * b[v];
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) vstore(C + r * ldc + v * VW, c[r][v]);
}

template <int RB>
inline void mm_cols(int nv, int64_t K, const float* A, int64_t ars, int64_t aks, const float* Bm, int64_t ldb,
                    float* C, int64_t ldc, bool acc) {
  switch (nv) {
    case 4: mm_block<RB, 4>(K, A, ars, aks, Bm, ldb, C, ldc, acc); break;
    case 3: mm_block<RB, 3>(K, A, ars, aks, Bm, ldb, C, ldc, acc); break;
    case 2: mm_block<RB, 2>(K, A, ars, aks, Bm, ldb, C, ldc, acc); break;
    default: mm_block<RB, 1>(K, A, ars, aks, Bm, ldb, C, ldc, acc); break;
  }
}

// C (M x N, row stride ldc) (+)= A (M x K, A(r, k) = A[r*ars + k*aks])
//                                * Bm (K x N, row stride ldb).
// N is a multiple of VW; C and Bm rows hold at least N floats.
// (Measured at T = 2048, D = 64, one thread: ~1.4x faster than calling
// tb::gemm per tile, which packs both operands on every call.)
void mm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* Bm, int64_t ldb,
        float* C, int64_t ldc, bool acc) {
  for (int64_t j = 0; j < N; j += kNV * VW) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, (N - j) / VW));
    int64_t i = 0;
    for (; i + kRB <= M; i += kRB)
      mm_cols<kRB>(nv, K, A + i * ars, ars, aks, Bm + j, ldb, C + i * ldc + j, ldc, acc);
    for (; i + 4 <= M; i += 4) mm_cols<4>(nv, K, A + i * ars, ars, aks, Bm + j, ldb, C + i * ldc + j, ldc, acc);
    for (; i < M; i++) mm_cols<1>(nv, K, A + i * ars, ars, aks, Bm + j, ldb, C + i * ldc + j, ldc, acc);
  }
}

// dst[i][0:Dp] = src[i*stride + 0:D] (zero past D), i < rows.
void load_rows(float* dst, int64_t Dp, const float* src, int64_t stride, int64_t rows, int64_t D) {
  for (int64_t i = 0; i < rows; i++) {
    const float* s = src + i * stride;
    float* d = dst + i * Dp;
    for (int64_t c = 0; c < D; c++) d[c] = s[c];
    for (int64_t c = D; c < Dp; c++) d[c] = 0.0f;
  }
}

// Rows of a [*, D] operand that the kernel reads as whole vectors: in place
// when D is a whole number of vectors, else a zero-padded copy in `pad`.
struct RowOperand { const float* p; int64_t ld; };
inline RowOperand rows_of(const float* src, int64_t stride, int64_t rows, int64_t D, int64_t Dp, float* pad) {
  if (D == Dp) return {src, stride};
  load_rows(pad, Dp, src, stride, rows, D);
  return {pad, Dp};
}

// dst[c][0:BT] = src[j*stride + c] for j < rows (zero past rows), c < D.
void load_transposed(float* dst, const float* src, int64_t stride, int64_t rows, int64_t D) {
  for (int64_t j = 0; j < rows; j++) {
    const float* s = src + j * stride;
    for (int64_t c = 0; c < D; c++) dst[c * BT + j] = s[c];
  }
  if (rows < BT)
    for (int64_t c = 0; c < D; c++) std::memset(dst + c * BT + rows, 0, sizeof(float) * (BT - rows));
}

// start[b*T + t] = first position of t's segment, end[b*T + t] = one past its
// last position (seg [B, T]). Returns the flat index bt of the first token
// whose id is below its predecessor's (seg must be non-decreasing in a row),
// or -1 when seg is valid.
int64_t segment_bounds(const int32_t* seg, int64_t B, int64_t T, int32_t* start, int32_t* end) {
  for (int64_t b = 0; b < B; b++) {
    const int32_t* s = seg + b * T;
    int32_t* st = start + b * T;
    int32_t* en = end + b * T;
    for (int64_t t = 0; t < T; t++) {
      if (t > 0 && s[t] < s[t - 1]) return b * T + t;
      st[t] = (t > 0 && s[t] == s[t - 1]) ? st[t - 1] : static_cast<int32_t>(t);
    }
    for (int64_t t = T - 1; t >= 0; t--)
      en[t] = (t + 1 < T && s[t] == s[t + 1]) ? en[t + 1] : static_cast<int32_t>(t + 1);
  }
  return -1;
}

// Forward. Work items: (b, query head, query tile), heaviest tiles first.
// Scores are computed transposed, S^T = scale * K Q^T (keys x queries), so
// the online softmax runs down columns with whole vectors across queries, K
// is read in place and Q is transposed once per work item. The raw dot
// products are bitwise those the backward recomputes (same FMA order), and
// scale is applied after them on both sides, so P = exp(S - lse) there
// matches this pass.
// seg_start (segment starts from segment_bounds, [B, T]) is null without
// segments. A query tile visits key tiles from the one holding its first
// query's segment start; a query whose segment starts later is masked per key
// (s < start(t)), and a column wholly masked in a tile keeps l = 0, O = 0.
void attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int64_t B, int64_t T,
                       int64_t Hq, int64_t Hkv, int64_t D, float scale, const int32_t* seg_start) {
  if (B == 0 || T == 0) return;
  const int64_t G = Hq / Hkv, Dp = round_up(D, VW), nT = (T + BT - 1) / BT;
  const int64_t qs = Hq * D, ks = Hkv * D;  // token strides
  const int nt = num_threads();
  const int64_t per = 3 * BT * Dp + BT * BT + 4 * BT;
  Workspace<float> ws(static_cast<size_t>(per * nt));
  parallel_for_dynamic(B * Hq * nT, [&](int64_t item) {
    const int64_t qt = nT - 1 - item / (B * Hq), bh = item % (B * Hq), b = bh / Hq, h = bh % Hq, g = h / G;
    float* w = ws.data() + per * omp_get_thread_num();
    float *Qt = w, *Vpad = Qt + Dp * BT, *Ob = Vpad + BT * Dp, *ST = Ob + BT * Dp;
    float *m = ST + BT * BT, *l = m + BT, *alpha = l + BT, *qstart = alpha + BT;
    const float* qb = q + (b * T * Hq + h) * D;  // token t at + t * qs
    const float* kb = k + (b * T * Hkv + g) * D;
    const float* vb = v + (b * T * Hkv + g) * D;
    const int64_t i0 = qt * BT, mr = std::min(BT, T - i0);
    // Segment starts of the tile's queries (as floats: exact below 2^24
    // positions); padding columns (>= mr) start at 0, so they are never
    // wholly masked. Starts are non-decreasing, so the last query's start
    // bounds them all: key tiles below that need no segment mask.
    int64_t kt0 = 0, last_start = 0;
    if (seg_start) {
      const int32_t* st = seg_start + b * T + i0;
      for (int64_t i = 0; i < BT; i++) qstart[i] = i < mr ? static_cast<float>(st[i]) : 0.0f;
      kt0 = st[0] / BT;
      last_start = st[mr - 1];
    }
    load_transposed(Qt, qb + i0 * qs, qs, mr, D);  // padding queries are zero: finite, never written
    std::memset(Ob, 0, sizeof(float) * mr * Dp);
    for (int64_t i = 0; i < BT; i++) { m[i] = kNegInf; l[i] = 0.0f; }
    // key tiles past the diagonal are fully masked, and with segments so are
    // those before the first query's segment: both skipped
    for (int64_t kt = kt0; kt <= qt; kt++) {
      const int64_t j0 = kt * BT, kc = std::min(BT, T - j0);
      const bool seg_mask = seg_start && j0 < last_start;
      mm(kc, BT, D, kb + j0 * ks, ks, 1, Qt, BT, ST, BT, false);  // K Q^T, rows j < kc
      const vf vscale = vsplat(scale);
      for (int64_t j = 0; j < kc; j++) {  // S^T = scale * K Q^T; diagonal tile: hide key j > query i
        float* row = ST + j * BT;          // (padding keys >= T are the rows not computed)
        if (kt == qt) {
          const vf vj = vsplat(static_cast<float>(j));
          for (int c = 0; c < BT; c += VW) {
            const vf x = vload(row + c) * vscale;
            vstore(row + c, lane_index() + static_cast<float>(c) < vj ? vsplat(kNegInf) : x);
          }
        } else {
          for (int c = 0; c < BT; c += VW) vstore(row + c, vload(row + c) * vscale);
        }
        if (seg_mask) {  // hide key j0 + j from queries whose segment starts after it
          const vf key = vsplat(static_cast<float>(j0 + j));
          for (int c = 0; c < BT; c += VW) {
            const vf x = vload(row + c);
            vstore(row + c, key < vload(qstart + c) ? vsplat(kNegInf) : x);
          }
        }
      }
      for (int c = 0; c < BT; c += VW) {  // online softmax down the columns, VW queries at a time
        vf mx = vload(ST + c);             // without segments row 0 (key j0) is never masked
        for (int64_t j = 1; j < kc; j++) { vf x = vload(ST + j * BT + c); mx = x > mx ? x : mx; }
        const vf mold = vload(m + c);
        vf mnew = mold > mx ? mold : mx;
        // a query that has seen no key of its segment yet keeps m = -inf;
        // subtracting 0 instead keeps exp(-inf - m) = 0 rather than NaN
        const vf msafe = mnew == vsplat(kNegInf) ? vf{} : mnew;
        vf sum = vf{};
        for (int64_t j = 0; j < kc; j++) {
          vf p = vexp(vload(ST + j * BT + c) - msafe);
          vstore(ST + j * BT + c, p);
          sum += p;
        }
        const vf a = vexp(mold - msafe);  // 0 on the first tile (mold = -inf)
        vstore(alpha + c, a);
        vstore(l + c, vload(l + c) * a + sum);
        vstore(m + c, mnew);
      }
      for (int64_t i = 0; i < mr; i++) {
        float* o = Ob + i * Dp;
        const float a = alpha[i];
        for (int64_t c = 0; c < Dp; c++) o[c] *= a;
      }
      const RowOperand V = rows_of(vb + j0 * ks, ks, kc, D, Dp, Vpad);
      mm(mr, Dp, kc, ST, 1, BT, V.p, V.ld, Ob, Dp, true);  // O += P V   (P read through S^T)
    }
    float* lrow = lse + (b * Hq + h) * T + i0;
    for (int64_t i = 0; i < mr; i++) {
      const float inv = 1.0f / l[i];
      float* o = out + (b * T + i0 + i) * qs + h * D;
      const float* src = Ob + i * Dp;
      for (int64_t c = 0; c < D; c++) o[c] = src[c] * inv;
      lrow[i] = m[i] + std::log(l[i]);
    }
  });
}

// Backward (activation gradients: dq, dk, dv are written, not accumulated).
// Work items: (b, kv head); each owns the dk/dv rows of its kv head and the
// dq rows of the query heads in its group, so no two threads write the same
// row. Outer loop over key tiles (dK, dV accumulate in a tile), inner over
// the group's query heads and the query tiles at or below the diagonal; P is
// recomputed from lse, never stored whole. P^T and dS^T are read through
// strides, and Q, dO, dq are used in place when D is a whole number of vectors.
// With segments (seg_start, seg_end from segment_bounds, else both null) a
// key tile visits query tiles up to the one holding its last key's segment
// end, and P is zeroed where a key precedes its query's segment start.
void attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                        const float* lse, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, const int32_t* seg_start, const int32_t* seg_end) {
  if (B == 0 || T == 0) return;
  const int64_t G = Hq / Hkv, Dp = round_up(D, VW), nT = (T + BT - 1) / BT;
  const int64_t qs = Hq * D, ks = Hkv * D;
  const bool direct = D == Dp;

  // Dq[b, h, t] = rowsum(dO * O)
  Workspace<float> Dq(static_cast<size_t>(B * Hq * T));
  parallel_chunks(B * T, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; bt++) {
      const int64_t b = bt / T, t = bt % T;
      for (int64_t h = 0; h < Hq; h++) {
        const float* o = out + bt * qs + h * D;
        const float* d = dout + bt * qs + h * D;
        float s = 0.0f;
        for (int64_t c = 0; c < D; c++) s += o[c] * d[c];
        Dq[(b * Hq + h) * T + t] = s;
      }
    }
  }, 256);

  const int nt = num_threads();
  const int64_t per = 8 * BT * Dp + 2 * BT * BT;
  Workspace<float> ws(static_cast<size_t>(per * nt));
  parallel_for_dynamic(B * Hkv, [&](int64_t item) {
    const int64_t b = item / Hkv, g = item % Hkv, h0 = g * G;
    float* w = ws.data() + per * omp_get_thread_num();
    float *Kpad = w, *Kt = Kpad + BT * Dp, *Vt = Kt + Dp * BT, *dKa = Vt + Dp * BT, *dVa = dKa + BT * Dp;
    float *Qpad = dVa + BT * Dp, *dOpad = Qpad + BT * Dp, *dQt = dOpad + BT * Dp;  // the *pad and dQt: D != Dp only
    float *P = dQt + BT * Dp, *dP = P + BT * BT;
    const float* kb = k + (b * T * Hkv + g) * D;
    const float* vb = v + (b * T * Hkv + g) * D;
    for (int64_t t = 0; t < T; t++) std::memset(dq + (b * T + t) * qs + h0 * D, 0, sizeof(float) * G * D);
    for (int64_t jt = 0; jt < nT; jt++) {
      const int64_t j0 = jt * BT, kc = std::min(BT, T - j0);
      // query tiles past the last key's segment end see none of these keys
      const int64_t qt_end = seg_end ? (seg_end[b * T + j0 + kc - 1] + BT - 1) / BT : nT;
      const RowOperand K = rows_of(kb + j0 * ks, ks, kc, D, Dp, Kpad);
      load_transposed(Kt, kb + j0 * ks, ks, kc, D);
      load_transposed(Vt, vb + j0 * ks, ks, kc, D);
      std::memset(dKa, 0, sizeof(float) * BT * Dp);
      std::memset(dVa, 0, sizeof(float) * BT * Dp);
      for (int64_t h = h0; h < h0 + G; h++) {
        const float* qb = q + (b * T * Hq + h) * D;
        const float* db = dout + (b * T * Hq + h) * D;
        const float* lrow = lse + (b * Hq + h) * T;
        const float* Drow = Dq.data() + (b * Hq + h) * T;
        for (int64_t qt = jt; qt < qt_end; qt++) {  // query tiles above the diagonal see none of these keys
          const int64_t i0 = qt * BT, mr = std::min(BT, T - i0);
          const float* qrows = qb + i0 * qs;
          const float* drows = db + i0 * qs;
          mm(mr, BT, D, qrows, qs, 1, Kt, BT, P, BT, false);  // Q K^T
          const vf vscale = vsplat(scale);
          for (int64_t i = 0; i < mr; i++) {  // P = exp(scale * Q K^T - lse)
            float* s = P + i * BT;
            const vf lv = vsplat(lrow[i0 + i]);
            for (int c = 0; c < BT; c += VW) vstore(s + c, vexp(vload(s + c) * vscale - lv));
            if (qt == jt)  // diagonal tile: hide key j > query i (also the padding keys >= T)
              for (int64_t j = i + 1; j < BT; j++) s[j] = 0.0f;
            if (seg_start) {  // hide keys before query i's segment (another example)
              const int64_t before = std::min<int64_t>(BT, seg_start[b * T + i0 + i] - j0);
              for (int64_t j = 0; j < before; j++) s[j] = 0.0f;
            }
          }
          const RowOperand dO = rows_of(drows, qs, mr, D, Dp, dOpad);
          mm(kc, Dp, mr, P, 1, BT, dO.p, dO.ld, dVa, Dp, true);  // dV += P^T dO
          mm(mr, BT, D, drows, qs, 1, Vt, BT, dP, BT, false);     // dP = dO V^T
          for (int64_t i = 0; i < mr; i++) {  // dS' = scale * P * (dP - Dq)   (into P)
            float* p = P + i * BT;
            const float* dp = dP + i * BT;
            const vf di = vsplat(Drow[i0 + i]);
            for (int c = 0; c < BT; c += VW) vstore(p + c, (vload(p + c) * scale) * (vload(dp + c) - di));
          }
          if (direct) {
            mm(mr, Dp, kc, P, BT, 1, K.p, K.ld, dq + (b * T + i0) * qs + h * D, qs, true);  // dQ += dS' K
          } else {
            mm(mr, Dp, kc, P, BT, 1, K.p, K.ld, dQt, Dp, false);  // dS' K
            for (int64_t i = 0; i < mr; i++) {
              float* o = dq + (b * T + i0 + i) * qs + h * D;
              const float* src = dQt + i * Dp;
              for (int64_t c = 0; c < D; c++) o[c] += src[c];
            }
          }
          const RowOperand Q = rows_of(qrows, qs, mr, D, Dp, Qpad);
          mm(kc, Dp, mr, P, 1, BT, Q.p, Q.ld, dKa, Dp, true);  // dK += dS'^T Q
        }
      }
      for (int64_t j = 0; j < kc; j++) {
        std::memcpy(dk + (b * T + j0 + j) * ks + g * D, dKa + j * Dp, sizeof(float) * D);
        std::memcpy(dv + (b * T + j0 + j) * ks + g * D, dVa + j * Dp, sizeof(float) * D);
      }
    }
  });
}

// ---- bindings ----

struct Dims { int64_t B, T, Hq, Hkv, D; };

Dims dims_args(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Dims d{int_arg(info, i, fn, "B"), int_arg(info, i + 1, fn, "T"), int_arg(info, i + 2, fn, "Hq", 1),
         int_arg(info, i + 3, fn, "Hkv", 1), int_arg(info, i + 4, fn, "D", 1)};
  if (d.Hq % d.Hkv != 0)
    throw arg_error(info, fn, "Hq = " + std::to_string(d.Hq) + " is not a multiple of Hkv = " + std::to_string(d.Hkv));
  const double total = static_cast<double>(d.B) * d.T * d.Hq * d.D;
  if (total > 9.0e15) throw arg_error(info, fn, "shape too large");
  return d;
}

float scale_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  const double s = num_arg(info, i, fn, "scale");
  if (!std::isfinite(s)) throw arg_error(info, fn, "'scale' must be finite");
  return static_cast<float>(s);
}

// Segment bounds on the CPU from the segment ids (seg, [B, T] i32, or absent)
// and the sliding window (0: none): fills bounds with starts then ends
// (2 * B * T); false when there is neither (every row one causal segment).
bool cpu_segment_bounds(const Napi::CallbackInfo& info, const char* fn, const TensorArg& seg, const Dims& d,
                        int64_t window, Workspace<int32_t>& bounds) {
  if (seg.data == nullptr && window <= 0) return false;
  int32_t* start = bounds.data();
  int32_t* end = start + d.B * d.T;
  if (seg.data != nullptr) {
    const int64_t bad = segment_bounds(seg.as<int32_t>(), d.B, d.T, start, end);
    if (bad >= 0)
      throw arg_error(info, fn, "'segments' must be non-decreasing within each row; row " + std::to_string(bad / d.T) +
                      " position " + std::to_string(bad % d.T) + " has a smaller id than position " + std::to_string(bad % d.T - 1));
  } else {
    for (int64_t i = 0; i < d.B * d.T; i++) { start[i] = 0; end[i] = static_cast<int32_t>(d.T); }
  }
  for (int64_t i = 0; i < d.B * d.T; i++) math::window_bounds(i % d.T, window, start[i], end[i]);
  return true;
}

// The optional sliding window argument (absent or undefined: 0, none).
int64_t window_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  const int64_t w = int_arg(info, i, fn, "window");
  if (w >= (int64_t{1} << 30)) throw arg_error(info, fn, "'window' must be below 2^30");
  return w;
}

void check_cuda_head_dim(const Napi::CallbackInfo& info, const char* fn, const Dispatch& disp, int64_t D) {
  if (disp.cuda() && D > cuda::kAttentionMaxHeadDim)
    throw arg_error(info, fn, "head dim D = " + std::to_string(D) + " exceeds " +
                    std::to_string(cuda::kAttentionMaxHeadDim) + ", the largest the CUDA kernels support");
}

// attention_forward(q, k, v, out, lse, B, T, Hq, Hkv, D, scale, segments?, window?)
// On CUDA the segment ids are not validated here (the TS op checks them).
Napi::Value AttentionForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "attention_forward";
  const Dims d = dims_args(info, 5, fn);
  const float scale = scale_arg(info, 10, fn);
  const size_t nq = static_cast<size_t>(d.B * d.T * d.Hq * d.D), nkv = static_cast<size_t>(d.B * d.T * d.Hkv * d.D);
  const size_t nl = static_cast<size_t>(d.B * d.Hq * d.T);
  Dispatch disp(info, fn);
  TensorArg q = disp.tensor(0, "q", nq, DType::F32);
  TensorArg k = disp.tensor(1, "k", nkv, DType::F32);
  TensorArg v = disp.tensor(2, "v", nkv, DType::F32);
  TensorArg o = disp.tensor(3, "out", nq, DType::F32);
  TensorArg l = disp.tensor(4, "lse", nl, DType::F32);
  TensorArg seg = disp.tensor(11, "segments", static_cast<size_t>(d.B * d.T), DType::I32, false, true);
  const int64_t window = window_arg(info, 12, fn);
  check_cuda_head_dim(info, fn, disp, d.D);
  return guarded(info, [&]() -> Napi::Value {
    if (disp.cuda()) {
      TB_ON_CUDA(cuda::attention_forward(q.f32(), k.f32(), v.f32(), o.f32(), l.f32(), d.B, d.T, d.Hq, d.Hkv, d.D,
                                         scale, seg.as<int32_t>(), window));
    } else {
      Workspace<int32_t> bounds(seg.data || window > 0 ? static_cast<size_t>(2 * d.B * d.T) : 0);
      const bool has = cpu_segment_bounds(info, fn, seg, d, window, bounds);
      attention_forward(q.f32(), k.f32(), v.f32(), o.f32(), l.f32(), d.B, d.T, d.Hq, d.Hkv, d.D, scale,
                        has ? bounds.data() : nullptr);
    }
    return info.Env().Undefined();
  });
}

// attention_backward(dout, q, k, v, out, lse, dq, dk, dv, B, T, Hq, Hkv, D, scale, segments?, window?)
// dq, dk, dv are written (activation gradients), not accumulated.
Napi::Value AttentionBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "attention_backward";
  const Dims d = dims_args(info, 9, fn);
  const float scale = scale_arg(info, 14, fn);
  const size_t nq = static_cast<size_t>(d.B * d.T * d.Hq * d.D), nkv = static_cast<size_t>(d.B * d.T * d.Hkv * d.D);
  const size_t nl = static_cast<size_t>(d.B * d.Hq * d.T);
  Dispatch disp(info, fn);
  TensorArg dout = disp.tensor(0, "dout", nq, DType::F32);
  TensorArg q = disp.tensor(1, "q", nq, DType::F32);
  TensorArg k = disp.tensor(2, "k", nkv, DType::F32);
  TensorArg v = disp.tensor(3, "v", nkv, DType::F32);
  TensorArg o = disp.tensor(4, "out", nq, DType::F32);
  TensorArg l = disp.tensor(5, "lse", nl, DType::F32);
  TensorArg dq = disp.tensor(6, "dq", nq, DType::F32);
  TensorArg dk = disp.tensor(7, "dk", nkv, DType::F32);
  TensorArg dv = disp.tensor(8, "dv", nkv, DType::F32);
  TensorArg seg = disp.tensor(15, "segments", static_cast<size_t>(d.B * d.T), DType::I32, false, true);
  const int64_t window = window_arg(info, 16, fn);
  check_cuda_head_dim(info, fn, disp, d.D);
  return guarded(info, [&]() -> Napi::Value {
    if (disp.cuda()) {
      TB_ON_CUDA(cuda::attention_backward(dout.f32(), q.f32(), k.f32(), v.f32(), o.f32(), l.f32(), dq.f32(), dk.f32(),
                                          dv.f32(), d.B, d.T, d.Hq, d.Hkv, d.D, scale, seg.as<int32_t>(), window));
    } else {
      Workspace<int32_t> bounds(seg.data || window > 0 ? static_cast<size_t>(2 * d.B * d.T) : 0);
      const bool has = cpu_segment_bounds(info, fn, seg, d, window, bounds);
      const int32_t* start = has ? bounds.data() : nullptr;
      attention_backward(dout.f32(), q.f32(), k.f32(), v.f32(), o.f32(), l.f32(), dq.f32(), dk.f32(), dv.f32(), d.B,
                         d.T, d.Hq, d.Hkv, d.D, scale, start, has ? start + d.B * d.T : nullptr);
    }
    return info.Env().Undefined();
  });
}

// hostmath_attention(q, k, v, dout, out, lse, dq, dk, dv, B, T, Hq, Hkv, D, scale, chunk, segments?, tile?, window?):
// the CUDA kernels' per-element math (kernels/attention_math.h) in plain CPU
// loops, for tests. Forward: per query row, an online softmax over the keys
// in chunks of `chunk` (segment bounds by the kernels' binary search), into
// out and lse. Without `tile` (or 0) a row's chunks run from the one holding
// its own segment start to the one holding the row; with `tile`, they run as
// the forward kernel visits them for the row's query tile [i0, i0 + tile):
// from the chunk holding start(i0) to the one holding the tile's last query,
// so a row also meets chunks wholly masked for it (before its segment, with
// no key seen yet, and past its own position). A window narrows the bounds
// (math::window_bounds) as the kernels do. Backward from that out and lse: D = rowsum(dout * out),
// p = attn_prob, ds = attn_dscore, dq/dk/dv written.
Napi::Value HostmathAttentionBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_attention";
  const Dims d = dims_args(info, 9, fn);
  const float scale = scale_arg(info, 14, fn);
  const int64_t chunk = int_arg(info, 15, fn, "chunk", 1);
  const size_t nq = static_cast<size_t>(d.B * d.T * d.Hq * d.D), nkv = static_cast<size_t>(d.B * d.T * d.Hkv * d.D);
  const size_t nl = static_cast<size_t>(d.B * d.Hq * d.T);
  TensorArg q = tensor_arg(info, 0, fn, "q", nq, DType::F32);
  TensorArg k = tensor_arg(info, 1, fn, "k", nkv, DType::F32);
  TensorArg v = tensor_arg(info, 2, fn, "v", nkv, DType::F32);
  TensorArg dout = tensor_arg(info, 3, fn, "dout", nq, DType::F32);
  TensorArg o = tensor_arg(info, 4, fn, "out", nq, DType::F32);
  TensorArg l = tensor_arg(info, 5, fn, "lse", nl, DType::F32);
  TensorArg dq = tensor_arg(info, 6, fn, "dq", nq, DType::F32);
  TensorArg dk = tensor_arg(info, 7, fn, "dk", nkv, DType::F32);
  TensorArg dv = tensor_arg(info, 8, fn, "dv", nkv, DType::F32);
  TensorArg seg = tensor_arg(info, 16, fn, "segments", static_cast<size_t>(d.B * d.T), DType::I32, false, true);
  const int64_t tile = info.Length() > 17 && !info[17].IsUndefined() ? int_arg(info, 17, fn, "tile") : 0;
  const int64_t window = window_arg(info, 18, fn);
  const int64_t B = d.B, T = d.T, Hq = d.Hq, Hkv = d.Hkv, D = d.D, G = Hq / Hkv;
  const int64_t qs = Hq * D, ks = Hkv * D;
  auto qp = [&](int64_t b, int64_t t, int64_t h) { return q.f32() + (b * T + t) * qs + h * D; };
  auto kp = [&](const TensorArg& a, int64_t b, int64_t t, int64_t g) { return a.f32() + (b * T + t) * ks + g * D; };
  auto dot = [&](const float* a, const float* b) {
    float s = 0.0f;
    for (int64_t c = 0; c < D; c++) s += a[c] * b[c];
    return s;
  };
  std::vector<int32_t> start(static_cast<size_t>(B * T), 0);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) {
      int32_t s = 0, e = static_cast<int32_t>(T);
      if (seg.data) math::segment_bounds_of(seg.as<int32_t>() + b * T, T, t, s, e);
      math::window_bounds(t, window, s, e);
      start[b * T + t] = s;
    }
  std::vector<float> sc(static_cast<size_t>(chunk)), acc(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < T; t++) {
        const int64_t g = h / G, st = start[b * T + t];
        float m = -INFINITY, lsum = 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        // keys [kb, ke): the row's own range, or its query tile's (as the kernel)
        const int64_t i0 = tile > 0 ? t / tile * tile : t;
        const int64_t kb = tile > 0 ? start[b * T + i0] : st, ke = tile > 0 ? std::min(i0 + tile, T) : t + 1;
        for (int64_t j0 = kb / chunk * chunk; j0 < ke; j0 += chunk) {
          float cmax = -INFINITY;
          for (int64_t jj = 0; jj < chunk; jj++) {
            const int64_t j = j0 + jj;
            sc[jj] = (j < T && math::attn_visible(j, t, st)) ? dot(qp(b, t, h), kp(k, b, j, g)) * scale : -INFINITY;
            cmax = sc[jj] > cmax ? sc[jj] : cmax;
          }
          float mnew;
          const float ref = math::softmax_new_max(m, cmax, mnew);
          const float alpha = math::softmax_rescale(m, ref);
          float csum = 0.0f;
          for (int64_t c = 0; c < D; c++) acc[c] *= alpha;
          for (int64_t jj = 0; jj < chunk; jj++) {
            const float p = math::softmax_prob(sc[jj], ref);
            csum += p;
            if (p != 0.0f) {
              const float* vr = kp(v, b, j0 + jj, g);
              for (int64_t c = 0; c < D; c++) acc[c] += p * vr[c];
            }
          }
          math::softmax_accumulate(lsum, alpha, csum);
          m = mnew;
        }
        float* orow = o.f32() + (b * T + t) * qs + h * D;
        for (int64_t c = 0; c < D; c++) orow[c] = acc[c] * (1.0f / lsum);
        l.f32()[(b * Hq + h) * T + t] = math::softmax_lse(m, lsum);
      }
  std::fill(dq.f32(), dq.f32() + nq, 0.0f);
  std::fill(dk.f32(), dk.f32() + nkv, 0.0f);
  std::fill(dv.f32(), dv.f32() + nkv, 0.0f);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < T; t++) {
        const int64_t g = h / G, st = start[b * T + t];
        const float* qr = qp(b, t, h);
        const float* dr = dout.f32() + (b * T + t) * qs + h * D;
        const float delta = dot(dr, o.f32() + (b * T + t) * qs + h * D);
        const float lse_t = l.f32()[(b * Hq + h) * T + t];
        float* dqr = dq.f32() + (b * T + t) * qs + h * D;
        for (int64_t j = st; j <= t; j++) {
          if (!math::attn_visible(j, t, st)) continue;
          const float* kr = kp(k, b, j, g);
          const float p = math::attn_prob(dot(qr, kr), scale, lse_t);
          const float ds = math::attn_dscore(p, dot(dr, kp(v, b, j, g)), delta, scale);
          float* dkr = dk.f32() + (b * T + j) * ks + g * D;
          float* dvr = dv.f32() + (b * T + j) * ks + g * D;
          for (int64_t c = 0; c < D; c++) {
            dqr[c] += ds * kr[c];
            dkr[c] += ds * qr[c];
            dvr[c] += p * dr[c];
          }
        }
      }
  return info.Env().Undefined();
}

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("attention_forward", Napi::Function::New(env, AttentionForwardBinding));
  exports.Set("attention_backward", Napi::Function::New(env, AttentionBackwardBinding));
  exports.Set("hostmath_attention", Napi::Function::New(env, HostmathAttentionBinding));
}

}  // namespace
TB_REGISTER_OPS(attention, register_attention);

}  // namespace tb
