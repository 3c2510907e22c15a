// Code tables of the quantized formats, shared by the 4-bit weights (NF4,
// FP4, double-quantized absmax) and the 8-bit optimizer state. Every value
// traces to bitsandbytes (functional.py, csrc/kernels.cu); test/quant.test.ts
// pins them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tb {

// NF4 (QLoRA paper, appendix E; bitsandbytes functional.py get_4bit_type('nf4')
// and csrc/kernels.cu nf4_dequantization_lut): code index 0..15.
constexpr float kNf4Table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// FP4 (E2M1 as bitsandbytes has it, csrc/kernels.cu fp4_dequantization_lut /
// dDequantizeFP4Tree; functional.py get_4bit_type('fp4') gives the same
// float32 values as [0, 0.0625, 8, 12, 4, 6, 2, 3] / 12): bit 3 is the sign,
// bits 0..2 index these magnitudes.
constexpr float kFp4Magnitudes[8] = {0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f};

// The 16 FP4 values by code (codes 8..15 negative).
inline const float* fp4_table() {
  static const float t[16] = {
      kFp4Magnitudes[0], kFp4Magnitudes[1], kFp4Magnitudes[2], kFp4Magnitudes[3],
      kFp4Magnitudes[4], kFp4Magnitudes[5], kFp4Magnitudes[6], kFp4Magnitudes[7],
      -kFp4Magnitudes[0], -kFp4Magnitudes[1], -kFp4Magnitudes[2], -kFp4Magnitudes[3],
      -kFp4Magnitudes[4], -kFp4Magnitudes[5], -kFp4Magnitudes[6], -kFp4Magnitudes[7]};
  return t;
}

// The dynamic 8-bit map of bitsandbytes' create_dynamic_map(signed,
// max_exponent_bits = 7, total_bits = 8), sorted ascending, 256 values.
//   signed:   for i = 0..6: 2^i + 1 points evenly spaced over [0.1, 1], their
//             2^i midpoints scaled by 10^(i-6), with both signs; then 0 and 1.
//   unsigned: for i = 0..6: 2^(i+1) + 1 points, their 2^(i+1) midpoints scaled
//             by 10^(i-6); then 0 and 1.
// torch builds the points in float32 (linspace) and scales in float32; we do
// the same arithmetic in float so the table matches value for value.
inline void build_dynamic_map(bool is_signed, float* out256) {
  int n = 0;
  for (int i = 0; i < 7; i++) {
    const int items = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    // torch.linspace(0.1, 1, items) in float32: start + k*step for the first
    // half, end - (items-1-k)*step for the second
    const float start = 0.1f, end = 1.0f, step = (end - start) / static_cast<float>(items - 1);
    float pts[129];
    const int half = items / 2;
    for (int k = 0; k < items; k++)
      pts[k] = k < half ? start + step * static_cast<float>(k) : end - step * static_cast<float>(items - 1 - k);
    for (int k = 0; k + 1 < items; k++) {
      const float mean = (pts[k] + pts[k + 1]) / 2.0f;
      out256[n++] = scale * mean;
      if (is_signed) out256[n++] = -scale * mean;
    }
  }
  out256[n++] = 0.0f;
  out256[n++] = 1.0f;
  // n == 256 for both kinds
  std::sort(out256, out256 + 256);
}

inline const float* dynamic_map(bool is_signed) {
  struct Maps {
    float s[256], u[256];
    Maps() { build_dynamic_map(true, s); build_dynamic_map(false, u); }
  };
  static const Maps maps;
  return is_signed ? maps.s : maps.u;
}

// Index of the value of a sorted 256-entry map nearest to x (ties go to the
// lower index), as bitsandbytes' blockwise quantizer picks codes.
inline uint8_t nearest_code(const float* map256, float x) {
  const float* hi = std::lower_bound(map256, map256 + 256, x);
  if (hi == map256) return 0;
  if (hi == map256 + 256) return 255;
  const float* lo = hi - 1;
  return static_cast<uint8_t>((x - *lo) <= (*hi - x) ? lo - map256 : hi - map256);
}

}  // namespace tb
