// Rotary position embedding on the GPU (cuda/rope.cu): device pointers, the
// core's stream; the semantics of cpu/rope.cc.
//   x, out [BT, H, D] f32 (D even, out may be x), positions [BT] i32.
//   rope_forward rotates, rope_backward applies the transposed rotation;
//   out is written. D <= kRopeMaxHeadDim.
//   inv_freq: HOST pointer to D/2 inverse frequencies (copied into the launch
//   by value); scale multiplies cos and sin (1 for plain RoPE).
#pragma once
#include <cstdint>

namespace tb::cuda {

constexpr int64_t kRopeMaxHeadDim = 1024;

void rope_forward(int64_t BT, int64_t H, int64_t D, const int32_t* pos, const float* inv_freq, float scale, const float* x,
                  float* out);
void rope_backward(int64_t BT, int64_t H, int64_t D, const int32_t* pos, const float* inv_freq, float scale, const float* dout,
                   float* dx);

}  // namespace tb::cuda
