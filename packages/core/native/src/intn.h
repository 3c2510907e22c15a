// Group-wise INT-N weights (N in {2, 3, 4, 8}), QA-LoRA's frozen base;
// napi-free so the GEMM's packing and, later, device code can include it.
//
//   W [rows, cols]; each row is cut into groups of L consecutive columns
//   (L in {16, 32, 64, 128}, cols % L == 0); per (row, group):
//     W[o, i] = scale[o, g] * q[o, i] + offset[o, g],   q in [0, 2^N - 1]
//   scales, offsets: f32 [rows, cols / L]. Because cols % L == 0 the group of
//   flat element e is simply e / L, the same indexing as the NF4 blocks.
//
//   Codes: one row-major bit stream, LSB first. Code e occupies stream bits
//   [e*N, e*N + N); stream bit b is bit (b % 8) of byte b / 8; the code's
//   least significant bit comes first. Eight consecutive codes starting at a
//   multiple of 8 therefore fill exactly N bytes, read as a little-endian
//   integer: sum_k code[k] << (N*k). 3-bit codes cross byte boundaries
//   (code 2 is bits 6..7 of byte 0 and bit 0 of byte 1). L >= 16 makes every
//   row and every group start on a byte boundary.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tb {

// A read-only view of an INT-N weight.
struct IntNView {
  const uint8_t* codes;
  const float* scales;   // [rows * cols / L]
  const float* offsets;  // [rows * cols / L]
  int64_t rows, cols;
  int bits;          // 2, 3, 4 or 8
  int group_shift;   // L = 1 << group_shift
  // Optional fp16 copies of the group constants, read by the CPU decode
  // GEMV in place of the f32 ones (same values: set only where every one
  // converts exactly; see intn_constants16): scales16 [rows * cols / L];
  // offsets16 the same, or null when every offset is -zero16 * scale.
  const uint16_t* scales16 = nullptr;
  const uint16_t* offsets16 = nullptr;
  float zero16 = 0.0f;
};

inline bool intn_bits_ok(int64_t bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }
inline bool intn_group_ok(int64_t group) { return group == 16 || group == 32 || group == 64 || group == 128; }

// Bytes of the packed codes of numel values.
inline int64_t intn_code_bytes(int64_t numel, int bits) { return (numel * bits + 7) / 8; }

// Code of flat element e (any e; reads the second byte only when the code crosses into it).
inline uint32_t intn_code_at(const uint8_t* codes, int bits, int64_t e) {
  const int64_t p = e * bits;
  const int64_t byte = p >> 3;
  const int sh = static_cast<int>(p & 7);
  uint32_t v = static_cast<uint32_t>(codes[byte]) >> sh;
  if (sh + bits > 8) v |= static_cast<uint32_t>(codes[byte + 1]) << (8 - sh);
  return v & ((1u << bits) - 1u);
}

// ORs code c of flat element e into the stream (the bytes must start zeroed).
inline void intn_put_code(uint8_t* codes, int bits, int64_t e, uint32_t c) {
  const int64_t p = e * bits;
  const int64_t byte = p >> 3;
  const int sh = static_cast<int>(p & 7);
  codes[byte] = static_cast<uint8_t>(codes[byte] | (c << sh));
  if (sh + bits > 8) codes[byte + 1] = static_cast<uint8_t>(codes[byte + 1] | (c >> (8 - sh)));
}

// Eight codes from the N bytes at p (p = codes + e*N/8 with e % 8 == 0).
template <int N>
inline void intn_unpack8(const uint8_t* p, uint32_t* c) {
  uint64_t w = 0;
  std::memcpy(&w, p, N);  // little-endian hosts (x86, arm64): byte 0 is the low byte
  constexpr uint64_t mask = (uint64_t(1) << N) - 1;
  for (int k = 0; k < 8; k++) c[k] = static_cast<uint32_t>((w >> (N * k)) & mask);
}

template <int N>
inline void intn_dequant_segment_n(const IntNView& q, int64_t idx, int64_t n, float* out) {
  int64_t e = idx;
  const int64_t end = idx + n;
  float* o = out;
  while (e < end) {
    const int64_t g = e >> q.group_shift;
    const int64_t run_end = std::min<int64_t>(end, (g + 1) << q.group_shift);
    const float s = q.scales[g], off = q.offsets[g];
    for (; e < run_end && (e & 7); e++) *o++ = s * static_cast<float>(intn_code_at(q.codes, N, e)) + off;
    for (; e + 8 <= run_end; e += 8) {
      uint32_t c[8];
      intn_unpack8<N>(q.codes + (e >> 3) * N, c);
      for (int k = 0; k < 8; k++) o[k] = s * static_cast<float>(c[k]) + off;
      o += 8;
    }
    for (; e < run_end; e++) *o++ = s * static_cast<float>(intn_code_at(q.codes, N, e)) + off;
  }
}

// out[0, n) = dequantized values at flat indices [idx, idx + n): scale * q + offset.
// Every consumer (the GEMM's packing, the decode kernel, dequantize) goes
// through here, so all of them see the same floats.
inline void intn_dequant_segment(const IntNView& q, int64_t idx, int64_t n, float* out) {
  switch (q.bits) {
    case 2: intn_dequant_segment_n<2>(q, idx, n, out); return;
    case 3: intn_dequant_segment_n<3>(q, idx, n, out); return;
    case 4: intn_dequant_segment_n<4>(q, idx, n, out); return;
    case 8: intn_dequant_segment_n<8>(q, idx, n, out); return;
    default: std::abort();  // bindings accept only 2, 3, 4, 8
  }
}

// Asymmetric min-max (RTN) parameters of one group w[0, L):
//   offset = min w, scale = (max w - min w) / (2^N - 1)
// so code 0 is the minimum and code 2^N - 1 the maximum. A constant group
// gets scale 0 and is stored exactly (every code 0, offset = the value).
inline void intn_group_params(const float* w, int64_t L, int bits, float* scale, float* offset) {
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < L; i++) { lo = std::min(lo, w[i]); hi = std::max(hi, w[i]); }
  *offset = lo;
  *scale = (hi - lo) / static_cast<float>((1 << bits) - 1);
}

// The code of w under (scale, offset): round((w - offset) / scale) to nearest
// (ties to even, the default rounding mode), clamped to [0, 2^N - 1]. Clamping
// matters for GPTQ, whose error updates can move a weight out of its group's
// range after the range was fixed.
inline uint32_t intn_code(float w, float scale, float offset, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float maxq = static_cast<float>((1 << bits) - 1);
  const float q = std::nearbyint((w - offset) / scale);
  return static_cast<uint32_t>(std::min(std::max(q, 0.0f), maxq));
}

}  // namespace tb
