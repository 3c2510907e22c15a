// RoPE per-element math (CUDA kernel in cuda/rope.cu and the hostmath_rope
// test binding), the semantics of cpu/rope.cc: Hugging Face rotate-half,
// pairs (i, i + D/2), fp32.
//   inv_freq[i] = 1 / theta^(float(2i) / D)      (float32 powf, as HF)
//   a = float(pos) * inv_freq[i] (float32); c, s = cos(a), sin(a) taken in
//   double and rounded once (the correctly rounded float32 values), then
//   times the attention scale (float32; 1 for plain RoPE, exact)
//   inv_freq may also come as a table (scaled RoPE variants, nn/rope_scaling.ts)
//   forward:  (x_i, x_{i+h}) -> (x_i c - x_{i+h} s, x_{i+h} c + x_i s)
//   backward: the transposed rotation
//             (d_i, d_{i+h}) -> (d_i c + d_{i+h} s, d_{i+h} c - d_i s)
#pragma once
#include <cmath>
#include <cstdint>

#include "../hd.h"

namespace tb::math {

// Host only in practice (the CUDA launcher computes the table on the host, so
// it is bitwise the CPU's powf); TB_HD so the hostmath binding shares it.
TB_HD float rope_inv_freq(int64_t i, int64_t D, float theta) {
  const float ex = static_cast<float>(2 * i) / static_cast<float>(D);
  return 1.0f / powf(theta, ex);
}

// scale: the attention factor multiplied into cos and sin (so q.k scales by
// its square); x * 1.0f is exact, so plain RoPE is unchanged by it
TB_HD void rope_cos_sin(int32_t pos, float inv_freq, float& c, float& s, float scale = 1.0f) {
  const double a = static_cast<double>(static_cast<float>(pos) * inv_freq);
  c = static_cast<float>(cos(a)) * scale;
  s = static_cast<float>(sin(a)) * scale;
}

// One pair; out may alias the inputs (both are read before either is written).
TB_HD void rope_rotate(float a, float b, float c, float s, float& oa, float& ob) {
  const float ra = a * c - b * s, rb = b * c + a * s;
  oa = ra;
  ob = rb;
}

TB_HD void rope_rotate_inverse(float a, float b, float c, float s, float& oa, float& ob) {
  const float ra = a * c + b * s, rb = b * c - a * s;
  oa = ra;
  ob = rb;
}

}  // namespace tb::math
