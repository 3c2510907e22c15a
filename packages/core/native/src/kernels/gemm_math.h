// Per-run dequantization of a quantized GEMM operand, shared by the CUDA
// GEMM's B-tile loaders and decode kernels (cuda/gemm.cu) and the
// hostmath_gemm_dequant test binding (cpu/gemm.cc). Built on the per-element
// functions of quant_math.h; the layouts are those of quant4.h and intn.h.
//
// A loader thread dequantizes a run of consecutive flat elements of the
// stored weight (16 for a GEMM tile, 8 for a decode lane):
//   4-bit: from any element e (odd e: the first value alone, then whole
//     bytes; absmax looked up per pair, a pair never straddles a block since
//     blocks are even);
//   INT-N: e a multiple of 8 and the run inside one group (a run of 16 from
//     e % 16 == 0 is, since every group is >= 16 and rows start on groups).
#pragma once
#include <cstdint>

#include "../hd.h"
#include "quant_math.h"

#ifndef TB_UNROLL
#if defined(__CUDACC__)
#define TB_UNROLL _Pragma("unroll")
#else
#define TB_UNROLL
#endif
#endif

namespace tb::math {

template <int n>
TB_HD void quant4_run(const float* table, const uint8_t* packed, const float* absmax, int block_shift, int64_t e,
                      float* out) {
  static_assert(n % 2 == 0, "even runs");
  if ((e & 1) == 0) {
    TB_UNROLL
    for (int i = 0; i < n; i += 2) {
      const int64_t x = e + i;
      quant4_pair(table, packed[x >> 1], absmax[x >> block_shift], out[i], out[i + 1]);
    }
  } else {
    out[0] = quant4_value(table, packed, absmax, block_shift, e);
    TB_UNROLL
    for (int i = 1; i + 1 < n; i += 2) {
      const int64_t x = e + i;
      quant4_pair(table, packed[x >> 1], absmax[x >> block_shift], out[i], out[i + 1]);
    }
    out[n - 1] = quant4_value(table, packed, absmax, block_shift, e + n - 1);
  }
}

// n (a multiple of 8) INT-N values from e (e % 8 == 0), all in group e >> group_shift.
template <int N, int n>
TB_HD void intn_run(const uint8_t* codes, const float* scales, const float* offsets, int group_shift, int64_t e,
                    float* out) {
  static_assert(n % 8 == 0, "whole bytes");
  const int64_t g = e >> group_shift;
  const float s = scales[g], off = offsets[g];
  TB_UNROLL
  for (int h = 0; h < n; h += 8) {
    uint32_t c[8];
    intn_unpack8<N>(codes + ((e + h) >> 3) * N, c);
    TB_UNROLL
    for (int k = 0; k < 8; k++) out[h + k] = s * static_cast<float>(c[k]) + off;
  }
}

}  // namespace tb::math
