// 4-bit (NF4/FP4) and blockwise 8-bit quantization on the GPU (cuda/nf4.cu):
// device pointers, the core's stream; same layouts and decisions as
// cpu/nf4.cc (quant4.h, quant_maps.h). Compiled, not yet run on a GPU.
#pragma once
#include <cstdint>

namespace tb::cuda {

// x [numel] f32 (bf16 when x_bf16) -> packed [ceil(numel/2)] u8, absmax
// [ceil(numel/block)] f32; format 0 nf4, 1 fp4. Returns the count of
// non-finite inputs (waits for the kernel).
int64_t quant4_quantize(const void* x, bool x_bf16, int64_t numel, int64_t block, int format, uint8_t* packed, float* absmax);

// out [numel] f32 = table[code] * absmax[e >> block_shift]
void quant4_dequantize(const uint8_t* packed, const float* absmax, int format, int block_shift, int64_t numel, float* out);

// per block of `block` values: scales[b] = max |x|, codes = nearest dynamic-map entry to x / scale
void blockwise_quantize8(const float* x, int64_t n, int64_t block, bool is_signed, uint8_t* codes, float* scales);

// out [n] = map[code] * scales[i / block] + offset
void blockwise_dequantize8(const uint8_t* codes, const float* scales, int64_t n, int64_t block, bool is_signed, float offset,
                           float* out);

}  // namespace tb::cuda
