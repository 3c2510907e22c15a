// Elementwise per-element math (CUDA kernels and hostmath test bindings), the
// same expressions as cpu/elementwise.cc:
//   axpy:                y + alpha * x
//   group pool forward:  p[n, g] = (scale / L) * sum_{j<L} x[n, g*L + j]
//   group pool backward: dx[n, g*L + j] (+)= (scale / L) * dp[n, g]
#pragma once
#include <cstdint>

#include "../hd.h"

namespace tb::math {

TB_HD float axpy(float y, float alpha, float x) { return y + alpha * x; }

TB_HD float group_pool_coef(float scale, int64_t L) { return scale / static_cast<float>(L); }

// one pooled value from L consecutive inputs, summed in order
TB_HD float group_pool_value(const float* xg, int64_t L, float coef) {
  float s = 0.0f;
  for (int64_t j = 0; j < L; j++) s += xg[j];
  return coef * s;
}

TB_HD float group_pool_grad(float dp, float coef) { return coef * dp; }

}  // namespace tb::math
