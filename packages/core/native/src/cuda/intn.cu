// Group-wise INT-N round-to-nearest quantization and dequantization on the
// GPU, with the semantics of cpu/intn.cc: one thread per (row, group) computes
// the group's min-max parameters and writes its codes, which fill whole bytes
// (L >= 16), so no two threads share a byte. Encoding math in
// kernels/quantize_math.h, decoding in kernels/quant_math.h.
// Compiled, not yet run on a GPU.
#include <cuda_runtime.h>

#include "../kernels/quant_math.h"
#include "../kernels/quantize_math.h"
#include "common.cuh"
#include "intn.h"

namespace tb::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxGroup = 128;

__device__ __forceinline__ float load_f32(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load_f32(const uint16_t* x, int64_t i) { return bf16_to_f32(x[i]); }

template <typename T>
__global__ void intn_quantize_kernel(const T* __restrict__ W, int64_t ngroups, int bits, int L, uint8_t* __restrict__ codes,
                                     float* __restrict__ scales, float* __restrict__ offsets, unsigned long long* __restrict__ bad) {
  unsigned long long nb = 0;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < ngroups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float w[kMaxGroup];
    bool finite = true;
    for (int i = 0; i < L; i++) {
      w[i] = load_f32(W, g * L + i);
      if (!isfinite(w[i])) { nb++; finite = false; }
    }
    float s, o;
    math::intn_rtn_params(w, L, bits, s, o);
    if (!isfinite(s) && finite) nb++;
    scales[g] = s;
    offsets[g] = o;
    // the group's bytes, assembled here then stored (L * bits is a multiple of 8)
    uint8_t bytes[kMaxGroup];
    const int nbytes = L * bits / 8;
    for (int k = 0; k < nbytes; k++) bytes[k] = 0;
    for (int i = 0; i < L; i++) math::intn_put(bytes, bits, i, math::intn_rtn_code(w[i], s, o, bits));
    uint8_t* dst = codes + g * nbytes;
    for (int k = 0; k < nbytes; k++) dst[k] = bytes[k];
  }
  if (nb) atomicAdd(bad, nb);
}

__global__ void intn_dequantize_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                       const float* __restrict__ offsets, int bits, int group_shift, int64_t numel,
                                       float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = math::intn_value(codes, scales, offsets, bits, group_shift, i);
}

unsigned grid_of(int64_t n, int threads) {
  unsigned b = blocks_for(n, threads);
  return b > 65535u * 8 ? 65535u * 8 : b;
}

}  // namespace

int64_t intn_quantize(const void* W, bool w_bf16, int64_t rows, int64_t cols, int bits, int64_t L, uint8_t* codes, float* scales,
                      float* offsets) {
  const int64_t ngroups = rows * cols / L;
  if (ngroups <= 0) return 0;
  if (L > kMaxGroup || (L * bits) % 8 != 0) throw DeviceError("intn_quantize: group size must be 16..128");
  Workspace<unsigned long long> bad(1, Device::CUDA);
  TB_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, sizeof(unsigned long long), stream()));
  if (w_bf16)
    intn_quantize_kernel<<<grid_of(ngroups, kThreads), kThreads, 0, stream()>>>(static_cast<const uint16_t*>(W), ngroups, bits,
                                                                               static_cast<int>(L), codes, scales, offsets, bad.data());
  else
    intn_quantize_kernel<<<grid_of(ngroups, kThreads), kThreads, 0, stream()>>>(static_cast<const float*>(W), ngroups, bits,
                                                                               static_cast<int>(L), codes, scales, offsets, bad.data());
  TB_LAUNCH_CHECK();
  unsigned long long host = 0;
  TB_CUDA_CHECK(cudaMemcpyAsync(&host, bad.data(), sizeof(host), cudaMemcpyDeviceToHost, stream()));
  TB_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return static_cast<int64_t>(host);
}

void intn_dequantize(const uint8_t* codes, const float* scales, const float* offsets, int bits, int group_shift, int64_t numel,
                     float* out) {
  if (numel <= 0) return;
  intn_dequantize_kernel<<<grid_of(numel, 256), 256, 0, stream()>>>(codes, scales, offsets, bits, group_shift, numel, out);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
