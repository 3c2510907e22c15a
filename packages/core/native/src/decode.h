// Decode GEMV: y [m, N] = alpha * x [m, K] * W^T + beta * y for a few rows
// (m <= 16) and a weight W [N, K] stored row-major: f32, bf16, INT-N or
// 4-bit blockwise (NF4 / FP4). Each output row streams its row of W once,
// expanding the stored codes to floats in registers (a vector of 16 with
// AVX-512, 8 with AVX2 or the portable path) and dotting them with the m rows
// of x: no packed or dequantized copy of W, not even of one group.
//
//   INT-N: w = scale_g * q + offset_g, formed per vector with one FMA.
//   4-bit: w = table[code] * absmax_b, the table a register permute.
//
// Values equal the reference dequantization (intn.h / quant4.h) up to the
// FMA's single rounding; sums run in a different order than gemm_reference.
#pragma once
#include <cstdint>

#include "gemm.h"

namespace tb {

// Which instruction set a call uses. Best picks the widest compiled in; the
// others exist for tests and benchmarks (a build has Avx512 only when
// compiled for it, Avx2 when compiled for AVX2+FMA, Portable always).
enum class DecodeIsa : int { Best = 0, Avx512 = 1, Avx2 = 2, Portable = 3 };

// What x is multiplied in. F32: x as given (f32 products). I16: each row of
// x quantized per block of the weight to int16 (x ~ d_b q, |q| <= 32767,
// round to nearest), integer dot products with the codes; INT-N and 4-bit
// weights on AVX-512 with VBMI only (decode_i16_available), anything else
// (dense weights, other paths, x not finite, K not a multiple of 32) takes
// the F32 path. Relative to F32 the result differs by the rounding of x
// (half a step of 1/32767 of its block's largest |x|) and, for 4-bit, of the
// table to 1/16383 of absmax.
//
// I8: for INT-N weights (2, 3, 4 and 8 bits, groups of 16 to 128) and, where
// the build has AVX-512 BITALG, 4-bit blockwise ones (blocks of 32 to 128),
// with 1 to 16 rows of x (AVX-512 with VNNI): x quantized to int8 per group or
// block (x ~ d_g q, |q| <= 127, round to nearest) and u8 x s8 dot products
// (vpdpbusd), as llama.cpp's Q8 activations; the result differs from F32 by
// the rounding of x (half a step of 1/127 of its group's largest |x|) and,
// for 4-bit, of the table's magnitudes to 1/255 of its largest. Everything
// else under I8 takes the I16 path.
enum class DecodeAct : int { F32 = 0, I16 = 1, I8 = 2 };

constexpr int64_t kDecodeMaxRows = 16;

// Whether decode_gemv computes op(A) * op(B) for these operands: A f32 not
// transposed, M <= 16, B stored [N, K] (trans) and f32, bf16, INT-N or 4-bit.
bool decode_gemv_handles(int64_t M, const MatRef& A, const MatRef& B);

// W.trans must be set (W stored [N, K], row stride W.ld; quantized: ld == K).
// Threads over output rows unless called inside a parallel region.
void decode_gemv(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W, float beta,
                 float* y, int64_t ldy, DecodeIsa isa = DecodeIsa::Best, DecodeAct act = DecodeAct::F32);

// Whether this build has the I16 path; the I8 path (INT2, INT3, INT4 and INT8);
// the I8 path for 4-bit blockwise weights (NF4/FP4; also AVX-512 BITALG).
bool decode_i16_available();
bool decode_i8_available();
bool decode_i8_q4_available();

// Whether this build has the path, and its name ("avx512", "avx2", "portable").
bool decode_isa_available(DecodeIsa isa);
const char* decode_isa_name(DecodeIsa isa);

}  // namespace tb
