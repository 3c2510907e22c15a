// Attention per-element math (CUDA kernels in cuda/attention.cu and the
// hostmath_attention test binding), the semantics of cpu/attention.cc.
//
// Online softmax over key chunks, per query row, with running max m (-inf
// before any visible key) and running sum l:
//   ref   = softmax_new_max(m, chunk_max, m_new)   (0 while m_new is -inf, so a
//                                                   masked -inf score gives 0, not NaN)
//   p_j   = softmax_prob(s_j, ref)                 (0 for a masked score)
//   alpha = softmax_rescale(m, ref)                (0 on the first chunk)
//   l     = l * alpha + sum_j p_j;  O = O * alpha + sum_j p_j v_j;  m = m_new
//   finally out = O / l, lse = m + log(l).
// Two partial states over disjoint key sets combine with softmax_merge
// (attention_decode splits the keys over warps).
//
// Backward, recomputing P from the saved lse:
//   p  = attn_prob(q.k, scale, lse) = exp(scale * q.k - lse)
//   ds = attn_dscore(p, dO.v, Dt, scale) = scale * p * (dO.v - Dt),  Dt = rowsum(dO * O)
//   dQ += ds k,  dK += ds q,  dV += p dO.
//
// Masks: query t sees key j iff start(t) <= j <= t, start(t) the first
// position of t's segment (0 without segments); segment bounds come from the
// sorted (non-decreasing) segment ids of a row by binary search. A sliding
// window W (> 0) narrows the bounds (window_bounds): start(t) >= t - W + 1
// and end(t) <= t + W (end: one past the last query that sees key t); both
// stay non-decreasing in t, so every tile skip keyed on them still holds.
#pragma once
#include <cmath>
#include <cstdint>

#include "../hd.h"

namespace tb::math {

TB_HD float neg_inf() { return -INFINITY; }

// Running max after a chunk whose largest score is chunk_max; returns the
// reference to subtract from scores (m_new, or 0 while m_new is -inf).
TB_HD float softmax_new_max(float m, float chunk_max, float& m_new) {
  m_new = m > chunk_max ? m : chunk_max;
  return m_new == -INFINITY ? 0.0f : m_new;
}

// exp(s - ref); exactly 0 for a masked score (-inf).
TB_HD float softmax_prob(float s, float ref) { return s == -INFINITY ? 0.0f : expf(s - ref); }

// Factor for the state accumulated so far (0 when it saw no key: m = -inf).
TB_HD float softmax_rescale(float m_old, float ref) { return m_old == -INFINITY ? 0.0f : expf(m_old - ref); }

TB_HD void softmax_accumulate(float& l, float alpha, float chunk_sum) { l = l * alpha + chunk_sum; }

TB_HD float softmax_lse(float m, float l) { return m + logf(l); }

// Combining two partial states (m1, l1, O1) and (m2, l2, O2) over disjoint
// keys: m = max(m1, m2), l = l1 * a1 + l2 * a2, O = O1 * a1 + O2 * a2.
TB_HD void softmax_merge_factors(float m1, float m2, float& m, float& a1, float& a2) {
  float ref = softmax_new_max(m1, m2, m);
  a1 = softmax_rescale(m1, ref);
  a2 = softmax_rescale(m2, ref);
}

// Key j is visible to query t (start = first position of t's segment).
TB_HD bool attn_visible(int64_t j, int64_t t, int64_t start) { return j <= t && j >= start; }

// Backward: the probability from the raw dot q.k and the saved logsumexp.
TB_HD float attn_prob(float qk, float scale, float lse) { return expf(qk * scale - lse); }

// Backward: the score gradient (scaled, so dQ += ds k and dK += ds q).
TB_HD float attn_dscore(float p, float dov, float delta, float scale) { return (p * scale) * (dov - delta); }

// First index in row[0, T) whose id is >= id (row non-decreasing).
TB_HD int64_t segment_lower(const int32_t* row, int64_t T, int32_t id) {
  int64_t lo = 0, hi = T;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row[mid] < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// First index in row[0, T) whose id is > id (row non-decreasing).
TB_HD int64_t segment_upper(const int32_t* row, int64_t T, int32_t id) {
  int64_t lo = 0, hi = T;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row[mid] <= id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// start(t) and end(t) for token t of a row; clamped to [0, t] and [t + 1, T]
// so an unsorted row (rejected before the kernels run) can never index out
// of bounds.
TB_HD void segment_bounds_of(const int32_t* row, int64_t T, int64_t t, int32_t& start, int32_t& end) {
  int64_t s = segment_lower(row, T, row[t]), e = segment_upper(row, T, row[t]);
  s = s > t ? t : s;
  e = e <= t ? t + 1 : e;
  start = static_cast<int32_t>(s);
  end = static_cast<int32_t>(e);
}

// Narrows token t's bounds to a sliding window of W positions (W <= 0: none):
// the earliest key t sees is t - W + 1, the last query that sees key t is t + W - 1.
TB_HD void window_bounds(int64_t t, int64_t W, int32_t& start, int32_t& end) {
  if (W <= 0) return;
  const int64_t s = t - W + 1, e = t + W;
  if (s > start) start = static_cast<int32_t>(s);
  if (e < end) end = static_cast<int32_t>(e);
}

// First key of a decode step over L cached keys with window W (W <= 0: 0).
TB_HD int64_t decode_first_key(int64_t L, int64_t W) { return W > 0 && L > W ? L - W : 0; }

}  // namespace tb::math
