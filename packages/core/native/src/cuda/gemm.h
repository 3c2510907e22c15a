// GEMM on the GPU (cuda/gemm.cu, cuda/cublaslt.cu): napi-free launcher
// declarations, device pointers, the core's stream.
#pragma once
#include <cstdint>
#include <string>

#include "../gemm.h"

namespace tb::cuda {

// C (M x N, f32, row stride ldc) = alpha * op(A) * op(B) + beta * C, the
// semantics of tb::gemm (gemm.h): A f32 or bf16, B f32, bf16 or a quantized
// weight (Q4: NF4/FP4, IntN); beta == 0 never reads C. Every pointer is device
// memory (A.p, B.p, C, and the views' packed/absmax/codes/scales/offsets)
// except Quant4View::table, the 16 host floats, which travel in the kernel's
// parameters. Operands are rounded to bf16 and multiplied on the tensor cores
// with fp32 accumulation. Quantized B with trans (x W^T), A f32 unstrided-
// transposed (not trans) and M <= kQuantDecodeMaxRows goes to quant_decode.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

// Decode path: y [m, N] = alpha * x [m, K] (row stride ldx, f32) * deq(W)^T
// + beta * y (row stride ldy), W a quantized weight [N, K] (Q4 or IntN),
// 1 <= m <= kQuantDecodeMaxRows. One warp per output column: W is dequantized
// in registers, 8 values per lane at a time, never stored; x is staged in
// shared memory a K-chunk at a time. Sums in fp32 with f32 x (no bf16 rounding).
constexpr int64_t kQuantDecodeMaxRows = 16;
void quant_decode(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W,
                  float beta, float* y, int64_t ldy);

// A double-quantized 4-bit absmax expanded on the device:
// out[b] = map[codes[b]] * scales[b / dq_block] + offset, map the 256 host
// floats of the signed dynamic map (passed by value to the kernel).
void expand_absmax(const uint8_t* codes, const float* scales, int64_t nblocks, int64_t dq_block, float offset,
                   const float* map256, float* out);

// cuBLASLt (cuda/cublaslt.cu), loaded with dlopen on first use (never a build
// or link requirement): "" when it is loaded, else why not.
std::string cublaslt_status();
// The same product through cuBLASLt with bf16 operands and fp32 accumulation
// and output (the reference the benchmarks compare the own kernel with).
// Dense bf16 operands are used in place; f32 and quantized ones are first
// converted to a bf16 copy of their stored matrix. Throws DeviceError
// "cuBLASLt not found ..." when the library is absent.
void gemm_cublaslt(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C,
                   int64_t ldc);
// Converts an operand's stored matrix [rows, cols] (row stride X.ld; a
// quantized one is unstrided) to a compact bf16 copy (row stride cols).
void to_bf16_stored(const MatRef& X, int64_t rows, int64_t cols, uint16_t* out);

}  // namespace tb::cuda
