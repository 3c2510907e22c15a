// GEMM on the GPU (cuda/gemm.cu): napi-free launcher declaration, device
// pointers, the core's stream.
#pragma once
#include <cstdint>

#include "../gemm.h"

namespace tb::cuda {

// C (M x N, f32, row stride ldc) = alpha * op(A) * op(B) + beta * C, the
// semantics of tb::gemm (gemm.h); every pointer is device memory.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc);

}  // namespace tb::cuda
