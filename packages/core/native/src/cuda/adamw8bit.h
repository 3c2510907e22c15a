// Blockwise 8-bit AdamW on the GPU (cuda/adamw8bit.cu): device pointers, the
// core's stream; same semantics as cpu/adamw8bit.cc. Compiled, not yet run on a GPU.
#pragma once
#include <cstdint>

#include "../kernels/adamw_math.h"

namespace tb::cuda {

// The largest block size the kernel takes (its block's new m and v are kept
// in shared memory: 8 bytes per element).
constexpr int64_t kAdamw8bitMaxBlock = 4096;

// p [n] f32 (in place), g [n] f32, mc, vc [n] u8 (in place), ma, va [ceil(n/bs)] f32 (in place)
void adamw8bit_step(int64_t n, int64_t bs, float* p, const float* g, uint8_t* mc, float* ma, uint8_t* vc, float* va,
                    const math::AdamwScalars& s);

}  // namespace tb::cuda
