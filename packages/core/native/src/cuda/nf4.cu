// 4-bit blockwise quantization (NF4, FP4) and the blockwise 8-bit dynamic
// quantization on the GPU, with the semantics of cpu/nf4.cc. Encoding math in
// kernels/quantize_math.h, decoding in kernels/quant_math.h. Quantizers run
// one thread block per quantization block: a max-|x| reduction, then each
// thread encodes pairs of values (one packed byte) or single 8-bit codes.
// Compiled, not yet run on a GPU.
#include <cuda_runtime.h>

#include "../kernels/quant_math.h"
#include "../kernels/quantize_math.h"
#include "../quant4.h"
#include "common.cuh"
#include "nf4.h"

namespace tb::cuda {
namespace {

struct Quant4Tables {
  float table[16];  // values by code (decoding)
  float mid[15];    // NF4 midpoints
  float mag[8];     // FP4 magnitudes
};

Quant4Tables tables_of(int format) {
  Quant4Tables t{};
  const float* tab = quant4_table(static_cast<Quant4Format>(format));
  for (int i = 0; i < 16; i++) t.table[i] = tab[i];
  math::nf4_midpoints(kNf4Table, t.mid);
  for (int i = 0; i < 8; i++) t.mag[i] = kFp4Magnitudes[i];
  return t;
}

struct Map256 {
  float v[256];
};

Map256 map_of(bool is_signed) {
  Map256 m;
  const float* src = dynamic_map(is_signed);
  for (int i = 0; i < 256; i++) m.v[i] = src[i];
  return m;
}

__device__ __forceinline__ float load_f32(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load_f32(const uint16_t* x, int64_t i) { return bf16_to_f32(x[i]); }

// max over the block's threads of v (v never NaN: the fold skips NaN); every thread gets it
__device__ float block_max(float v, float* shared32) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = (blockDim.x + 31) >> 5;
  __syncthreads();  // shared32 may still be read from the previous call
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  float m = 0.0f;
  for (int w = 0; w < warps; w++) m = fmaxf(m, shared32[w]);
  return m;
}

template <typename T>
__global__ void quant4_quantize_kernel(const T* __restrict__ x, int64_t numel, int64_t block, int64_t nblocks, int format,
                                       Quant4Tables tabs, uint8_t* __restrict__ packed, float* __restrict__ absmax,
                                       unsigned long long* __restrict__ bad) {
  __shared__ float mid[15], mag[8], red[32];
  if (threadIdx.x < 15) mid[threadIdx.x] = tabs.mid[threadIdx.x];
  if (threadIdx.x < 8) mag[threadIdx.x] = tabs.mag[threadIdx.x];
  unsigned long long nonfinite = 0;
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t s = b * block, e = s + block < numel ? s + block : numel;
    float amax = 0.0f;
    for (int64_t i = s + threadIdx.x; i < e; i += blockDim.x) {
      const float v = load_f32(x, i);
      if (!isfinite(v)) nonfinite++;
      amax = math::absmax_step(amax, v);
    }
    amax = block_max(amax, red);  // also orders the table loads above before their use
    if (threadIdx.x == 0) absmax[b] = amax;
    const float inv = math::inv_scale(amax);
    // s is even (block >= 32), so pair j is the byte (s + 2j) / 2
    for (int64_t i = s + 2 * static_cast<int64_t>(threadIdx.x); i < e; i += 2 * static_cast<int64_t>(blockDim.x)) {
      const float v0 = load_f32(x, i) * inv;
      const uint32_t c0 = format == 0 ? math::nf4_encode(mid, v0) : math::fp4_encode(mag, v0);
      if (i + 1 < e) {
        const float v1 = load_f32(x, i + 1) * inv;
        const uint32_t c1 = format == 0 ? math::nf4_encode(mid, v1) : math::fp4_encode(mag, v1);
        packed[i >> 1] = math::pack_pair(c0, c1);
      } else {  // the last value of an odd count: the low nibble is kept, as the CPU does
        packed[i >> 1] = static_cast<uint8_t>((packed[i >> 1] & 0x0Fu) | (c0 << 4));
      }
    }
  }
  if (nonfinite) atomicAdd(bad, nonfinite);
}

__global__ void quant4_dequantize_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax, Quant4Tables tabs,
                                         int block_shift, int64_t numel, float* __restrict__ out) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = tabs.table[threadIdx.x];
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = math::quant4_value(table, packed, absmax, block_shift, i);
}

__global__ void blockwise_quantize8_kernel(const float* __restrict__ x, int64_t n, int64_t block, int64_t nblocks, Map256 m,
                                           uint8_t* __restrict__ codes, float* __restrict__ scales) {
  __shared__ float map[256], red[32];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) map[i] = m.v[i];
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t s = b * block, e = s + block < n ? s + block : n;
    float amax = 0.0f;
    for (int64_t i = s + threadIdx.x; i < e; i += blockDim.x) amax = math::absmax_step(amax, x[i]);
    amax = block_max(amax, red);
    if (threadIdx.x == 0) scales[b] = amax;
    const float inv = math::inv_scale(amax);
    for (int64_t i = s + threadIdx.x; i < e; i += blockDim.x) codes[i] = static_cast<uint8_t>(math::nearest_code256(map, x[i] * inv));
  }
}

__global__ void blockwise_dequantize8_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales, int64_t n,
                                             int64_t block, Map256 m, float offset, float* __restrict__ out) {
  __shared__ float map[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) map[i] = m.v[i];
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = math::dq8_value(map[codes[i]], scales[i / block], offset);
}

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 65535 * 32;

unsigned grid_of(int64_t units) { return static_cast<unsigned>(units < 1 ? 1 : (units > kMaxGrid ? kMaxGrid : units)); }

unsigned elementwise_grid(int64_t n) {
  unsigned b = blocks_for(n, kThreads);
  return b > 65535u * 8 ? 65535u * 8 : b;
}

}  // namespace

int64_t quant4_quantize(const void* x, bool x_bf16, int64_t numel, int64_t block, int format, uint8_t* packed, float* absmax) {
  if (numel <= 0) return 0;
  const int64_t nblocks = (numel + block - 1) / block;
  const int threads = block / 2 >= kThreads ? kThreads : (block / 2 < 32 ? 32 : static_cast<int>(block / 2));
  Workspace<unsigned long long> bad(1, Device::CUDA);
  TB_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, sizeof(unsigned long long), stream()));
  const Quant4Tables tabs = tables_of(format);
  if (x_bf16)
    quant4_quantize_kernel<<<grid_of(nblocks), threads, 0, stream()>>>(static_cast<const uint16_t*>(x), numel, block, nblocks,
                                                                       format, tabs, packed, absmax, bad.data());
  else
    quant4_quantize_kernel<<<grid_of(nblocks), threads, 0, stream()>>>(static_cast<const float*>(x), numel, block, nblocks,
                                                                       format, tabs, packed, absmax, bad.data());
  TB_LAUNCH_CHECK();
  unsigned long long host = 0;
  TB_CUDA_CHECK(cudaMemcpyAsync(&host, bad.data(), sizeof(host), cudaMemcpyDeviceToHost, stream()));
  TB_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return static_cast<int64_t>(host);
}

void quant4_dequantize(const uint8_t* packed, const float* absmax, int format, int block_shift, int64_t numel, float* out) {
  if (numel <= 0) return;
  quant4_dequantize_kernel<<<elementwise_grid(numel), kThreads, 0, stream()>>>(packed, absmax, tables_of(format), block_shift, numel, out);
  TB_LAUNCH_CHECK();
}

void blockwise_quantize8(const float* x, int64_t n, int64_t block, bool is_signed, uint8_t* codes, float* scales) {
  if (n <= 0) return;
  const int64_t nblocks = (n + block - 1) / block;
  const int threads = block >= kThreads ? kThreads : (block < 32 ? 32 : static_cast<int>((block + 31) / 32 * 32));
  blockwise_quantize8_kernel<<<grid_of(nblocks), threads, 0, stream()>>>(x, n, block, nblocks, map_of(is_signed), codes, scales);
  TB_LAUNCH_CHECK();
}

void blockwise_dequantize8(const uint8_t* codes, const float* scales, int64_t n, int64_t block, bool is_signed, float offset,
                           float* out) {
  if (n <= 0) return;
  blockwise_dequantize8_kernel<<<elementwise_grid(n), kThreads, 0, stream()>>>(codes, scales, n, block, map_of(is_signed), offset, out);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
