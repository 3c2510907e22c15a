// Fused LoRA linear (same semantics as cpu/lora.cc): the GEMM sequence of
// kernels/lora_math.h on tb::cuda::gemm, its scratch in device workspace
// (freed in stream order). Compiled, not yet run on a GPU.
#include "../kernels/lora_math.h"
#include "common.cuh"
#include "gemm.h"
#include "lora.h"

namespace tb::cuda {
namespace {
struct DeviceGemm {
  void operator()(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C,
                  int64_t ldc) const {
    cuda::gemm(M, N, K, alpha, A, B, beta, C, ldc);
  }
};
}  // namespace

void lora_forward(int64_t N, int64_t in, int64_t out, int64_t r, const float* x, const float* xa, const MatRef& W_t,
                  const float* A, const float* B, float s, float* y, float* u) {
  if (N <= 0) return;
  math::lora_forward_steps(DeviceGemm{}, N, in, out, r, x, xa, W_t, A, B, s, y, u);
}

void lora_backward(int64_t N, int64_t in, int64_t out, int64_t r, const float* dy, const float* xa, const MatRef& W_n,
                   const float* A, const float* B, const float* u, float s, float* dx, bool accumulate_dx, float* dA,
                   float* dB, float* dxa) {
  if (N <= 0) return;
  Workspace<float> du(static_cast<size_t>(N * r), Device::CUDA);
  math::lora_backward_steps(DeviceGemm{}, N, in, out, r, dy, xa, W_n, A, B, u, s, dx, accumulate_dx, dA, dB, dxa,
                            du.data());
}

void lora_delta_rows(int64_t row_begin, int64_t rows, int64_t in, int64_t out, int64_t r, const float* x,
                     const float* A, const float* B, float s, float* y) {
  if (rows <= 0) return;
  Workspace<float> u(static_cast<size_t>(rows * r), Device::CUDA);
  math::lora_delta_rows_steps(DeviceGemm{}, rows, in, out, r, x + row_begin * in, A, B, s, y + row_begin * out,
                              u.data());
}

}  // namespace tb::cuda
