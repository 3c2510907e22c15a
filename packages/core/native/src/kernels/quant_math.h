// Per-element dequantization of the frozen-base formats, shared by the CUDA
// kernels (fused dequantize-GEMM loaders, decode kernels, dequantize ops) and
// the hostmath test bindings. Same layouts as quant4.h and intn.h:
//   4-bit (NF4/FP4): packed[e/2], the even element in the high nibble;
//     value = table[code] * absmax[e >> block_shift]
//   INT-N: one LSB-first bit stream, code e at bits [e*N, e*N + N);
//     value = scale[g] * code + offset[g], g = e >> group_shift
// Tables are passed by pointer (a kernel keeps them in shared or constant
// memory; the host passes kNf4Table / fp4_table()).
#pragma once
#include <cmath>
#include <cstdint>

#include "../hd.h"

namespace tb::math {

// One double-quantized value (the 8-bit absmax of QLoRA's double
// quantization): map[code] * scale + offset as one fused multiply-add, a
// single rounding on every device and whatever the compiler's contraction
// setting, so training's dequantization and every decode path read the same
// absmax (the AVX-512 expansion in cpu/decode_gemv.cc is _mm512_fmadd_ps).
TB_HD float dq8_value(float mapped, float scale, float offset) { return fmaf(mapped, scale, offset); }

TB_HD uint32_t quant4_code(const uint8_t* packed, int64_t e) {
  const uint32_t b = packed[e >> 1];
  return (e & 1) ? (b & 15u) : (b >> 4);
}

TB_HD float quant4_value(const float* table, const uint8_t* packed, const float* absmax, int block_shift, int64_t e) {
  return table[quant4_code(packed, e)] * absmax[e >> block_shift];
}

// Two neighbouring values from one byte (e even): hi = element e, lo = e + 1.
TB_HD void quant4_pair(const float* table, uint8_t byte, float scale, float& first, float& second) {
  first = table[byte >> 4] * scale;
  second = table[byte & 15] * scale;
}

TB_HD uint32_t intn_code(const uint8_t* codes, int bits, int64_t e) {
  const int64_t p = e * bits;
  const int64_t byte = p >> 3;
  const int sh = static_cast<int>(p & 7);
  uint32_t v = static_cast<uint32_t>(codes[byte]) >> sh;
  if (sh + bits > 8) v |= static_cast<uint32_t>(codes[byte + 1]) << (8 - sh);
  return v & ((1u << bits) - 1u);
}

TB_HD float intn_value(const uint8_t* codes, const float* scales, const float* offsets, int bits, int group_shift, int64_t e) {
  const int64_t g = e >> group_shift;
  return scales[g] * static_cast<float>(intn_code(codes, bits, e)) + offsets[g];
}

// Eight codes from the N bytes starting at p (element index a multiple of 8),
// assembled byte by byte (no unaligned loads, any endianness).
template <int N>
TB_HD void intn_unpack8(const uint8_t* p, uint32_t* c) {
  uint64_t w = 0;
  for (int k = 0; k < N; k++) w |= static_cast<uint64_t>(p[k]) << (8 * k);
  constexpr uint64_t mask = (uint64_t(1) << N) - 1;
  for (int k = 0; k < 8; k++) c[k] = static_cast<uint32_t>((w >> (N * k)) & mask);
}

}  // namespace tb::math
