// SwiGLU on the GPU (cuda/swiglu.cu): device pointers, the core's stream.
#pragma once
#include <cstdint>

namespace tb::cuda {
void swiglu_forward(int64_t n, const float* gate, const float* up, float* out);
void swiglu_backward(int64_t n, const float* dout, const float* gate, const float* up, float* dgate, float* dup);
}  // namespace tb::cuda
