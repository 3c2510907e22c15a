// General matrix multiply used by every linear layer and by fused ops.
#pragma once
#include <cstdint>
#include "intn.h"
#include "quant4.h"
#include "storage.h"

namespace tb {

// Which quantized format a U8 operand holds (None for f32 / bf16).
enum class QuantKind : int { None = 0, Q4 = 1, IntN = 2 };

// A read-only matrix operand in row-major storage: f32, bf16, or (B only) a
// quantized weight (dtype U8, `quant` says which, with q4 or intn set; ld
// must equal its columns). Logical shape of op(X) is given by the gemm call;
// `trans` means the stored matrix is the transpose of op(X). `ld` is the
// stored row stride.
struct MatRef {
  const void* p;
  DType dtype;  // F32, BF16, or U8 for a quantized operand
  int64_t ld;
  bool trans;
  const Quant4View* q4 = nullptr;
  QuantKind quant = QuantKind::None;
  const IntNView* intn = nullptr;
};

// C (M x N, row stride ldc, f32) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
// beta == 0 never reads C. Threads over the CPU cores unless called from
// inside a parallel region.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

// y [m, N] = alpha * x [m, K] (row stride ldx) * deq(W)^T + beta * y (row
// stride ldy), W an INT-N weight [N, K], m <= 16: the decode path, the
// decode GEMV of decode.h (codes expanded in registers, W streamed once;
// threads split the output rows). No packed or dequantized copy of W is made.
void intn_decode(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const IntNView& w,
                 float beta, float* y, int64_t ldy);
constexpr int64_t kIntNDecodeMaxRows = 16;

// Which micro-kernel this build uses ("avx512-12x32", "portable-6x16").
const char* gemm_kernel_name();

// Unblocked reference: C = alpha*op(A)op(B) + beta*C, one thread, for tests.
void gemm_reference(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

}  // namespace tb
