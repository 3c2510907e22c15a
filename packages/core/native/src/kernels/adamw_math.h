// AdamW per-element update (CUDA kernels and the hostmath test binding), the
// arithmetic of cpu/adamw.cc (torch.optim.AdamW, amsgrad off):
//   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
//   p = p*decay - step_size * m / (sqrt(v) * inv_bc2_sqrt + eps)
// with decay = 1 - lr*wd (f32), step_size = lr / (1 - b1^t) and
// inv_bc2_sqrt = 1 / sqrt(1 - b2^t) computed in double on the host and
// rounded to f32, exactly as the CPU kernel computes them.
// fp32 parameters and fp32 state (the CPU op is f32 only).
#pragma once
#include <cmath>
#include <cstdint>

#include "../hd.h"

namespace tb::math {

// The per-step scalars shared by every element (f32, as cpu/adamw.cc).
struct AdamwScalars {
  float b1, b2, eps, decay, step_size, inv_bc2_sqrt;
};

// Host only: the scalars of step `step` (1-based).
inline AdamwScalars adamw_scalars(float lr, float b1, float b2, float eps, float wd, int64_t step) {
  AdamwScalars s;
  s.b1 = b1;
  s.b2 = b2;
  s.eps = eps;
  s.decay = 1.0f - lr * wd;
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(static_cast<double>(b1), static_cast<double>(step))));
  s.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(b2), static_cast<double>(step))));
  return s;
}

// The new moments from the old ones and the gradient.
TB_HD void adamw_moments(const AdamwScalars& s, float g, float m_old, float v_old, float& m, float& v) {
  m = s.b1 * m_old + (1.0f - s.b1) * g;
  v = s.b2 * v_old + (1.0f - s.b2) * g * g;
}

// The new parameter from the new moments (decay is the tensor's own: 1 - lr*wd).
TB_HD float adamw_param(const AdamwScalars& s, float decay, float p, float m, float v) {
  return p * decay - s.step_size * m / (sqrtf(v) * s.inv_bc2_sqrt + s.eps);
}

// One element, in place.
TB_HD void adamw_update(const AdamwScalars& s, float decay, float g, float& p, float& m, float& v) {
  float mi, vi;
  adamw_moments(s, g, m, v, mi, vi);
  m = mi;
  v = vi;
  p = adamw_param(s, decay, p, mi, vi);
}

}  // namespace tb::math
