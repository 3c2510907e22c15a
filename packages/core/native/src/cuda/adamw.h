// AdamW on the GPU (cuda/adamw.cu): device pointers, the core's stream.
// Same semantics as cpu/adamw.cc. Compiled, not yet run on a GPU.
#pragma once
#include <cstdint>

#include "../kernels/adamw_math.h"

namespace tb::cuda {

// p, m, v [n] f32 updated in place; g [n] f32.
void adamw_step(int64_t n, float* p, const float* g, float* m, float* v, const math::AdamwScalars& s);

// One tensor of a multi-tensor step (device pointers; decay = 1 - lr*wd of its own wd).
struct AdamwTensor {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  float decay;
};

// Every tensor in one launch: the descriptors are copied to the device and
// each thread block updates one chunk of one tensor. The scalars' decay is
// unused (each tensor carries its own).
void adamw_step_multi(const AdamwTensor* tensors, int64_t count, const math::AdamwScalars& s);

}  // namespace tb::cuda
