// 4-bit blockwise weights (NF4 / FP4, bitsandbytes layout), napi-free so the
// GEMM's packing and, later, device code can include it.
//
//   W [rows, cols] flattened row-major into numel values, cut into blocks of
//   `block` consecutive values; absmax[b] = max |W| over block b;
//   code = nearest table entry to W / absmax (midpoint thresholds);
//   packed[i/2] holds two codes, the even element in the high nibble;
//   dequantize: table[code] * absmax[block].
#pragma once
#include <cstdint>

#include "quant_maps.h"

namespace tb {

enum class Quant4Format : int { NF4 = 0, FP4 = 1 };

inline const float* quant4_table(Quant4Format f) { return f == Quant4Format::NF4 ? kNf4Table : fp4_table(); }

// A read-only view of a quantized weight with fp32 absmax (a double-quantized
// absmax is expanded to fp32 before a kernel sees the view: numel/block floats).
struct Quant4View {
  const uint8_t* packed;
  const float* absmax;
  const float* table;  // 16 values
  int64_t rows, cols;
  int block_shift;  // block size = 1 << block_shift
  // Set only by weight_arg(..., keep_double_quant = true) for a
  // double-quantized absmax, which is then not expanded (absmax is null):
  //   absmax[b] = dq_map[dq_codes[b]] * dq_scales[b / dq_block] + dq_offset
  // Only the decode GEMV (decode.h) reads a view in this form.
  const uint8_t* dq_codes = nullptr;
  const float* dq_scales = nullptr;
  const float* dq_map = nullptr;
  float dq_offset = 0.0f;
  int64_t dq_block = 0;
};

// out[0, n) = dequantized values at flat indices [idx, idx + n)
inline void quant4_dequant_segment(const Quant4View& q, int64_t idx, int64_t n, float* out) {
  const float* t = q.table;
  int64_t e = idx, end = idx + n;
  float* o = out;
  while (e < end) {
    const int64_t b = e >> q.block_shift;
    const int64_t run_end = std::min<int64_t>(end, (b + 1) << q.block_shift);
    const float s = q.absmax[b];
    if (e & 1) { *o++ = t[q.packed[e >> 1] & 15] * s; e++; }
    for (; e + 1 < run_end; e += 2) {
      const uint8_t byte = q.packed[e >> 1];
      o[0] = t[byte >> 4] * s;
      o[1] = t[byte & 15] * s;
      o += 2;
    }
    if (e < run_end) { *o++ = t[q.packed[e >> 1] >> 4] * s; e++; }
  }
}

// Code of x (already divided by the block's absmax): the number of midpoints
// between consecutive table values that x exceeds, which is bitsandbytes'
// NF4 decision tree (its thresholds are these midpoints, "x > t" goes up).
inline uint8_t nf4_code(float x) {
  // midpoints (kNf4Table[i] + kNf4Table[i+1]) / 2, i = 0..14, in float
  static const struct Mid {
    float m[15];
    Mid() { for (int i = 0; i < 15; i++) m[i] = (kNf4Table[i] + kNf4Table[i + 1]) / 2.0f; }
  } mid;
  uint8_t c = 0;
  for (int i = 0; i < 15; i++) c += x > mid.m[i];
  return c;
}

// FP4: sign bit 8 for x < 0, then the nearest magnitude (ties to the smaller).
inline uint8_t fp4_code(float x) {
  const float a = x < 0 ? -x : x;
  int best = 0;
  float bd = a;
  for (int i = 1; i < 8; i++) {
    const float d = a > kFp4Magnitudes[i] ? a - kFp4Magnitudes[i] : kFp4Magnitudes[i] - a;
    if (d < bd || (d == bd && kFp4Magnitudes[i] < kFp4Magnitudes[best])) { bd = d; best = i; }
  }
  return static_cast<uint8_t>((x < 0 && best != 0 ? 8 : 0) | best);
}

}  // namespace tb
