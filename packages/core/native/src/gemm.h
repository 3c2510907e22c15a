// General matrix multiply used by every linear layer and by fused ops.
#pragma once
#include <cstdint>
#include "quant4.h"
#include "tensor.h"

namespace tb {

// A read-only matrix operand in row-major storage: f32, bf16, or (B only) a
// 4-bit quantized weight (dtype U8 with q4 set; ld must equal its columns).
// Logical shape of op(X) is given by the gemm call; `trans` means the stored
// matrix is the transpose of op(X). `ld` is the stored row stride.
struct MatRef {
  const void* p;
  DType dtype;  // F32, BF16, or U8 for a quantized operand
  int64_t ld;
  bool trans;
  const Quant4View* q4 = nullptr;
};

// C (M x N, row stride ldc, f32) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
// beta == 0 never reads C. Threads over the CPU cores unless called from
// inside a parallel region.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

// Which micro-kernel this build uses ("avx512-12x32", "portable-6x16").
const char* gemm_kernel_name();

// Unblocked reference: C = alpha*op(A)op(B) + beta*C, one thread, for tests.
void gemm_reference(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

}  // namespace tb
