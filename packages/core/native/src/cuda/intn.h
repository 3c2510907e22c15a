// Group-wise INT-N quantization (RTN) and dequantization on the GPU
// (cuda/intn.cu): device pointers, the core's stream; same layout and
// decisions as cpu/intn.cc (intn.h). GPTQ stays on the CPU. Compiled, not yet run on a GPU.
#pragma once
#include <cstdint>

namespace tb::cuda {

// W [rows, cols] f32 (bf16 when w_bf16) -> codes [ceil(rows*cols*bits/8)] u8
// (written whole), scales, offsets [rows * cols / L] f32. Returns the count of
// non-finite weights plus finite groups whose range overflows (waits for the kernel).
int64_t intn_quantize(const void* W, bool w_bf16, int64_t rows, int64_t cols, int bits, int64_t L, uint8_t* codes, float* scales,
                      float* offsets);

// out [numel] f32 = scale[g] * code + offset[g], g = e >> group_shift
void intn_dequantize(const uint8_t* codes, const float* scales, const float* offsets, int bits, int group_shift, int64_t numel,
                     float* out);

}  // namespace tb::cuda
