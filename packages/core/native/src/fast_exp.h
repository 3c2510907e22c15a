// exp(x) in float32 that GCC vectorises (libm's expf does not without
// -ffast-math). Range reduction x = n*ln2 + r (ln2 split in two, Cody-Waite)
// and a degree-6 polynomial for e^r on |r| <= ln2/2: the coefficients are
// those of the Cephes Math Library's expf.c (S. L. Moshier), about 1 ulp.
// Works on float and on GCC vector-extension types alike.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tb {

constexpr float kExpLo = -87.3365447505531f;  // below: e^x is under the smallest normal float
constexpr float kExpHi = 88.3762626647949f;   // above: e^x overflows

// e^x for x already clamped to [kExpLo, kExpHi]; returns the polynomial
// value p in [~0.7, ~1.4] and sets n so that e^x = p * 2^n.
template <typename V>
inline V exp_reduced(V x, V& n) {
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: add then subtract rounds to nearest
  n = (x * 1.44269504088896341f + round_magic) - round_magic;
  V r = x - n * 0.693359375f;  // ln2, high part (exact in float)
  r = r + n * 2.12194440e-4f;  // ln2, low part (-(-2.12194440e-4))
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// Scalar e^x: 0 below kExpLo, +inf above kExpHi, NaN stays NaN.
inline float fast_expf(float x) {
  const float xc = x < kExpLo ? kExpLo : (x > kExpHi ? kExpHi : x);
  float n;
  const float p = exp_reduced(xc, n);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < kExpLo ? 0.0f : (x > kExpHi ? INFINITY : p * scale);
}

}  // namespace tb
