// Per-element quantization (the encoding side; kernels/quant_math.h decodes),
// shared by the CUDA quantize kernels and the hostmath test bindings, with the
// decisions of the CPU ops:
//   NF4: the number of midpoints between neighbouring table values that x
//     exceeds (quant4.h nf4_code; the host builds the midpoints as it does);
//   FP4: sign bit 8 for x < 0, then the nearest magnitude, ties to the
//     smaller (quant4.h fp4_code);
//   8-bit dynamic map: the nearest of 256 sorted values, ties to the lower
//     index (quant_maps.h nearest_code);
//   INT-N RTN: min-max per group, round((w - offset) / scale) to nearest even,
//     clamped (intn.h intn_group_params / intn_code);
//   absmax: a running max of |x| from 0 in which a NaN never replaces the
//     maximum (std::max(amax, |x|) of cpu/nf4.cc).
#pragma once
#include <cmath>
#include <cstdint>

#include "../hd.h"

namespace tb::math {

// The midpoints of a 16-entry table, as quant4.h computes them (host side).
inline void nf4_midpoints(const float* table16, float* mid15) {
  for (int i = 0; i < 15; i++) mid15[i] = (table16[i] + table16[i + 1]) / 2.0f;
}

TB_HD uint32_t nf4_encode(const float* mid15, float x) {
  uint32_t c = 0;
  for (int i = 0; i < 15; i++) c += x > mid15[i] ? 1u : 0u;
  return c;
}

TB_HD uint32_t fp4_encode(const float* mag8, float x) {
  const float a = x < 0 ? -x : x;
  int best = 0;
  float bd = a;
  for (int i = 1; i < 8; i++) {
    const float d = a > mag8[i] ? a - mag8[i] : mag8[i] - a;
    if (d < bd || (d == bd && mag8[i] < mag8[best])) { bd = d; best = i; }
  }
  return static_cast<uint32_t>((x < 0 && best != 0 ? 8 : 0) | best);
}

// std::lower_bound over map[0, 256) then the nearer neighbour (ties low).
TB_HD uint32_t nearest_code256(const float* map, float x) {
  int lo = 0, hi = 256;  // first index with map[i] >= x (for a NaN x: 0, as std::lower_bound)
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (map[mid] < x) lo = mid + 1; else hi = mid;
  }
  if (lo == 0) return 0;
  if (lo == 256) return 255;
  return (x - map[lo - 1]) <= (map[lo] - x) ? static_cast<uint32_t>(lo - 1) : static_cast<uint32_t>(lo);
}

// One step of the absmax fold: std::max(amax, |v|) (a NaN |v| is skipped).
TB_HD float absmax_step(float amax, float v) {
  const float a = fabsf(v);
  return amax < a ? a : amax;
}

// The block's reciprocal scale, as the CPU multiplies by it (0 for an all-zero block).
TB_HD float inv_scale(float amax) { return amax > 0.0f ? 1.0f / amax : 0.0f; }

// The two codes of one byte into it: the even element in the high nibble.
TB_HD uint8_t pack_pair(uint32_t hi, uint32_t lo) { return static_cast<uint8_t>((hi << 4) | (lo & 15u)); }

// INT-N min-max group parameters over w[0, L) (std::min / std::max order).
TB_HD void intn_rtn_params(const float* w, int64_t L, int bits, float& scale, float& offset) {
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < L; i++) {
    lo = w[i] < lo ? w[i] : lo;
    hi = hi < w[i] ? w[i] : hi;
  }
  offset = lo;
  scale = (hi - lo) / static_cast<float>((1 << bits) - 1);
}

TB_HD uint32_t intn_rtn_code(float w, float scale, float offset, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float maxq = static_cast<float>((1 << bits) - 1);
  const float q = rintf((w - offset) / scale);
  const float c = q < 0.0f ? 0.0f : (q > maxq ? maxq : q);
  return static_cast<uint32_t>(c);
}

// OR code c of flat element e into an LSB-first bit stream (bytes zeroed first).
TB_HD void intn_put(uint8_t* codes, int bits, int64_t e, uint32_t c) {
  const int64_t p = e * bits;
  const int64_t byte = p >> 3;
  const int sh = static_cast<int>(p & 7);
  codes[byte] = static_cast<uint8_t>(codes[byte] | (c << sh));
  if (sh + bits > 8) codes[byte + 1] = static_cast<uint8_t>(codes[byte + 1] | (c >> (8 - sh)));
}

}  // namespace tb::math
