// Gradient clipping math (CUDA kernels and the hostmath test bindings), as
// cpu/grad_clip.cc: squares accumulated in double, the scale in f32.
// The CUDA reduction gives thread `lane` of `lanes` the elements
// lane, lane + lanes, lane + 2*lanes, ... (a grid-stride loop); the lanes'
// double partial sums are then added up (blocks, then one final block).
#pragma once
#include <cstdint>

#include "../hd.h"

namespace tb::math {

TB_HD double sq_d(float x) { return static_cast<double>(x) * static_cast<double>(x); }

// sum of x[i]^2 over i = lane, lane + lanes, ... < n, in double
TB_HD double sumsq_lane(const float* x, int64_t n, int64_t lane, int64_t lanes) {
  double s = 0.0;
  for (int64_t i = lane; i < n; i += lanes) s += sq_d(x[i]);
  return s;
}

TB_HD float grad_scaled(float x, float s) { return x * s; }

}  // namespace tb::math
