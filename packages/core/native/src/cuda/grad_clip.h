// Gradient clipping on the GPU (cuda/grad_clip.cu): device pointers, the
// core's stream. Same semantics as cpu/grad_clip.cc. Compiled, not yet run on a GPU.
#pragma once
#include <cstdint>

namespace tb::cuda {
// sum(x^2) over x [n] f32, accumulated in double; waits for the result and
// returns it on the host (NaN/inf propagate).
double grad_sumsq(int64_t n, const float* x);
// x [n] f32 *= s, in place
void grad_scale(int64_t n, float* x, float s);
}  // namespace tb::cuda
