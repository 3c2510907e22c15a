// SwiGLU per-element math (CUDA kernel and hostmath test binding).
//   forward:  out = g * sigmoid(g) * u
//   backward: dgate = d * u * s * (1 + g * (1 - s)),  dup = d * g * s
// sigmoid from e = exp(-|g|) <= 1, so it never overflows.
#pragma once
#include <cmath>

#include "../hd.h"

namespace tb::math {

TB_HD void sigmoid_pair(float g, float& s, float& sc) {
  const float e = expf(-fabsf(g));
  const float a = 1.0f / (1.0f + e), b = e * a;
  const bool pos = g >= 0.0f;
  s = pos ? a : b;
  sc = pos ? b : a;
}

TB_HD float swiglu_forward(float g, float u) {
  float s, sc;
  sigmoid_pair(g, s, sc);
  return g * s * u;
}

TB_HD void swiglu_backward(float d, float g, float u, float& dgate, float& dup) {
  float s, sc;
  sigmoid_pair(g, s, sc);
  dgate = d * u * (s * (1.0f + g * sc));
  dup = d * (g * s);
}

}  // namespace tb::math
