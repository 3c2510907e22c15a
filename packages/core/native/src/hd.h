// Per-element math shared by the CPU and CUDA kernels.
//
// A function marked TB_HD compiles as an ordinary inline function in the C++
// build and as __host__ __device__ under nvcc. Each CUDA kernel keeps its
// per-element math (a block's dequantization, an online-softmax update, a RoPE
// rotation, an AdamW update) in such functions in src/kernels/*_math.h; the
// CPU build exposes them through the hostmath_* test bindings and the core's
// tests compare them with the CPU reference ops, so that part of every kernel
// is verified on machines without a GPU.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TB_HD __host__ __device__ __forceinline__
#else
#define TB_HD inline
#endif

namespace tb {

TB_HD float bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

TB_HD uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}

// bf16 <-> f32 (round to nearest even; NaN stays NaN)
TB_HD float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }
TB_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace tb
