// AdamW with decoupled weight decay, as torch.optim.AdamW computes it
// (amsgrad off):
//   p *= 1 - lr*wd
//   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
#include <cmath>

#include "args.h"
#include "parallel.h"
#include "registry.h"

namespace tb {

// p, m, v: [n] f32 (updated in place); g: [n] f32
static void adamw_step(int64_t n, float* p, const float* g, float* m, float* v, float lr, float b1, float b2,
                       float eps, float wd, int64_t step) {
  const float decay = 1.0f - lr * wd;
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(static_cast<double>(b1), static_cast<double>(step))));
  const float inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(b2), static_cast<double>(step))));
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      float gi = g[i];
      float mi = b1 * m[i] + (1.0f - b1) * gi;
      float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_bc2_sqrt + eps);
    }
  }, 1 << 14);
}

// adamw_step(p, g, m, v, lr, beta1, beta2, eps, weightDecay, step)
static Napi::Value AdamwStepBinding(const Napi::CallbackInfo& info) {
  const char* fn = "adamw_step";
  TensorArg p = tensor_arg(info, 0, fn, "param", 0, DType::F32);
  TensorArg g = tensor_arg(info, 1, fn, "grad", p.numel, DType::F32);
  TensorArg m = tensor_arg(info, 2, fn, "m", p.numel, DType::F32);
  TensorArg v = tensor_arg(info, 3, fn, "v", p.numel, DType::F32);
  float lr = static_cast<float>(num_arg(info, 4, fn, "lr"));
  float b1 = static_cast<float>(num_arg(info, 5, fn, "beta1"));
  float b2 = static_cast<float>(num_arg(info, 6, fn, "beta2"));
  float eps = static_cast<float>(num_arg(info, 7, fn, "eps"));
  float wd = static_cast<float>(num_arg(info, 8, fn, "weightDecay"));
  int64_t step = int_arg(info, 9, fn, "step", 1);
  return guarded(info, [&]() -> Napi::Value {
    adamw_step(static_cast<int64_t>(p.numel), p.f32(), g.f32(), m.f32(), v.f32(), lr, b1, b2, eps, wd, step);
    return info.Env().Undefined();
  });
}

static void register_adamw(Napi::Env env, Napi::Object exports) {
  exports.Set("adamw_step", Napi::Function::New(env, AdamwStepBinding));
}
TB_REGISTER_OPS(adamw, register_adamw);

}  // namespace tb
