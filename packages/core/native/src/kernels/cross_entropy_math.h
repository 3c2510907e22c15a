// Cross-entropy per-element math (CUDA kernels and hostmath test binding):
// the log-sum-exp of a logits row as a running (max, sum of exp(x - max))
// pair that merges across threads, the loss, and the logits gradient. The
// same quantities as cpu/cross_entropy.cc:
//   lse     = max + log(sum_j exp(x_j - max))
//   loss    = lse - x[target]
//   dlogits = exp(x_j - lse) * scale, minus scale at the target
#pragma once
#include <cmath>

#include "../hd.h"

namespace tb::math {

// (m, s) += (m2, s2): both are partial (max, sum of exp(x - max)) pairs; an
// empty pair is (-inf, 0). A NaN logit (m2 NaN) makes s NaN, which every
// later merge keeps, so a NaN row gives a NaN lse as on the CPU (where
// exp(NaN - max) enters the sum) instead of being skipped.
TB_HD void lse_merge(float& m, float& s, float m2, float s2) {
  if (m2 > m) {
    s = s * expf(m - m2) + s2;  // m = -inf gives s * 0 = 0 (s is 0 then, or NaN after a NaN)
    m = m2;
  } else if (m2 != -INFINITY) {  // m2 <= m, or m2 NaN
    s += s2 * expf(m2 - m);
  }
}

TB_HD void lse_update(float& m, float& s, float x) { lse_merge(m, s, x, 1.0f); }

TB_HD float lse_finish(float m, float s) { return m + logf(s); }

TB_HD float ce_loss(float lse, float target_logit) { return lse - target_logit; }

TB_HD float ce_dlogit(float x, float lse, float scale, bool is_target) {
  const float g = expf(x - lse) * scale;
  return is_target ? g - scale : g;
}

}  // namespace tb::math
