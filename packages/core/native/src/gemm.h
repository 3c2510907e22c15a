// General matrix multiply used by every linear layer and by fused ops.
#pragma once
#include <cstdint>
#include "args.h"
#include "tensor.h"

namespace tb {

// A read-only matrix operand in row-major storage, f32 or bf16.
// Logical shape of op(X) is given by the gemm call; `trans` means the stored
// matrix is the transpose of op(X). `ld` is the stored row stride.
struct MatRef {
  const void* p;
  DType dtype;  // F32 or BF16
  int64_t ld;
  bool trans;
};

// C (M x N, row stride ldc, f32) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
// beta == 0 never reads C. Threads over the CPU cores unless called from
// inside a parallel region.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

// Which micro-kernel this build uses ("avx512-12x32", "portable-6x16").
const char* gemm_kernel_name();

// Unblocked reference: C = alpha*op(A)op(B) + beta*C, one thread, for tests.
void gemm_reference(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

// The 13 arguments of a GEMM binding, checked: (transA, transB, M, N, K,
// alpha, A, lda, B, ldb, beta, C, ldc). A and B may be f32 or, when
// allow_bf16, bf16; each buffer must hold its strided extent.
struct GemmArgs {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float alpha, beta;
  TensorArg a, b, c;
};
GemmArgs gemm_args(const Napi::CallbackInfo& info, const char* fn, bool allow_bf16);

}  // namespace tb
