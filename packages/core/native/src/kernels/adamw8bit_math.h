// Blockwise 8-bit AdamW per-element math (CUDA kernel and the hostmath test
// binding), the arithmetic of cpu/adamw8bit.cc:
//   dequantize: m = smap[m_code] * m_absmax, v = umap[v_code] * v_absmax
//   update:     the fp32 AdamW of kernels/adamw_math.h on those
//   requantize: new absmax = the block's fold of |m| (|v|), code = nearest map
//               entry to value / absmax, or the map's zero code when the
//               absmax is not > 0.
//
// The absmax fold is the CPU's sequential `if (!(a <= max)) max = a` from 0,
// NaN included: a NaN becomes the maximum, and the next value after it
// replaces it. To split a block over threads it is written as an ordered
// monoid on segment summaries:
//   Empty             the identity
//   Max(M)            a segment without NaN: s -> (s is NaN ? M : max(s, M))
//   Const(C)          a segment with a NaN: s -> C, where C is the running max
//                     of the values after its last NaN (NaN if none follow)
// combine(A, B) (A before B): B Const -> B; B Max(M2): A Max(M1) -> Max(max),
// A Const(C1) -> Const(C1 is NaN ? M2 : max(C1, M2)). Applied to 0 this
// equals the sequential loop for any split into ordered segments.
#pragma once
#include <cstdint>

#include "../hd.h"
#include "adamw_math.h"
#include "quantize_math.h"

namespace tb::math {

struct AbsmaxFold {
  int kind;  // 0 empty, 1 max, 2 const
  float v;
};

TB_HD AbsmaxFold fold_empty() { return AbsmaxFold{0, 0.0f}; }

TB_HD float fold_max(float s, float a) { return a > s ? a : s; }  // both non-NaN

TB_HD AbsmaxFold fold_combine(AbsmaxFold a, AbsmaxFold b) {
  if (a.kind == 0) return b;
  if (b.kind == 0 || b.kind == 2) return b.kind == 0 ? a : b;
  // b is Max(M2)
  if (a.kind == 1) return AbsmaxFold{1, fold_max(a.v, b.v)};
  return AbsmaxFold{2, a.v != a.v ? b.v : fold_max(a.v, b.v)};
}

// The fold after one more value x (its absolute value is taken here).
TB_HD AbsmaxFold fold_push(AbsmaxFold f, float x) {
  const float a = fabsf(x);
  return fold_combine(f, a != a ? AbsmaxFold{2, a} : AbsmaxFold{1, a});
}

// The fold's result from the CPU's starting value 0.
TB_HD float fold_result(AbsmaxFold f) {
  if (f.kind == 0) return 0.0f;
  if (f.kind == 2) return f.v;
  return fold_max(0.0f, f.v);
}

// One element: dequantize its state, update p, return the new (unquantized) m and v.
TB_HD void adamw8bit_element(const AdamwScalars& s, const float* smap, const float* umap, float m_scale, float v_scale, float g,
                             uint8_t m_code, uint8_t v_code, float& p, float& m, float& v) {
  adamw_moments(s, g, smap[m_code] * m_scale, umap[v_code] * v_scale, m, v);
  p = adamw_param(s, s.decay, p, m, v);
}

// The code of value x of a block whose new absmax is `amax`.
TB_HD uint8_t adamw8bit_code(const float* map, float x, float amax, uint8_t zero_code) {
  return amax > 0.0f ? static_cast<uint8_t>(nearest_code256(map, x / amax)) : zero_code;
}

// Host only: the index of the exact 0 of a sorted map (std::lower_bound).
inline uint8_t map_zero_code(const float* map256) {
  int i = 0;
  while (i < 256 && map256[i] < 0.0f) i++;
  return static_cast<uint8_t>(i);
}

}  // namespace tb::math
