// RMSNorm per-element math (CUDA kernel and hostmath test binding), the same
// expressions as cpu/rmsnorm.cc:
//   rstd = 1 / sqrt(sum_c x^2 / C + eps)
//   y    = (x * rstd) * w
//   k    = rstd^3 * sum_c(dy * w * x) / C
//   dx   = rstd * (dy * w) - k * x
//   dw  += dy * x * rstd   (summed over rows)
#pragma once
#include <cmath>
#include <cstdint>

#include "../hd.h"

namespace tb::math {

TB_HD float rmsnorm_rstd(float sumsq, int64_t C, float eps) {
  return 1.0f / sqrtf(sumsq / static_cast<float>(C) + eps);
}

TB_HD float rmsnorm_y(float x, float rstd, float w) { return (x * rstd) * w; }

// the backward's per-row coefficient from dot = sum_c dy * w * x
TB_HD float rmsnorm_k(float rstd, float dot, int64_t C) {
  return rstd * rstd * rstd * dot * (1.0f / static_cast<float>(C));
}

TB_HD float rmsnorm_dx(float dy, float x, float w, float rstd, float k) { return rstd * (dy * w) - k * x; }

TB_HD float rmsnorm_dw_term(float dy, float x, float rstd) { return dy * x * rstd; }

// a weight element as f32 (f32 or bf16 storage)
TB_HD float weight_at(const float* w, int64_t c) { return w[c]; }
TB_HD float weight_at(const uint16_t* w, int64_t c) { return bf16_to_f32(w[c]); }

}  // namespace tb::math
