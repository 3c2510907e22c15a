// AdamW with decoupled weight decay, as torch.optim.AdamW computes it
// (amsgrad off):
//   p *= 1 - lr*wd
//   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
//
// adamw_step dispatches on the tensors' device (cuda/adamw.cu on CUDA);
// adamw_step_multi updates a list of tensors in one call (on CUDA one launch
// for all of them, on the CPU this loop over adamw_step).
#include <cmath>
#include <string>
#include <vector>

#include "args.h"
#include "cuda/adamw.h"
#include "kernels/adamw_math.h"
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
//   p, m, v [n] f32 updated in place; g [n] f32; all on one device
static Napi::Value AdamwStepBinding(const Napi::CallbackInfo& info) {
  const char* fn = "adamw_step";
  Dispatch d(info, fn);
  TensorArg p = d.tensor(0, "param", 0, DType::F32);
  TensorArg g = d.tensor(1, "grad", p.numel, DType::F32);
  TensorArg m = d.tensor(2, "m", p.numel, DType::F32);
  TensorArg v = d.tensor(3, "v", p.numel, DType::F32);
  float lr = static_cast<float>(num_arg(info, 4, fn, "lr"));
  float b1 = static_cast<float>(num_arg(info, 5, fn, "beta1"));
  float b2 = static_cast<float>(num_arg(info, 6, fn, "beta2"));
  float eps = static_cast<float>(num_arg(info, 7, fn, "eps"));
  float wd = static_cast<float>(num_arg(info, 8, fn, "weightDecay"));
  int64_t step = int_arg(info, 9, fn, "step", 1);
  const int64_t n = static_cast<int64_t>(p.numel);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::adamw_step(n, p.f32(), g.f32(), m.f32(), v.f32(), math::adamw_scalars(lr, b1, b2, eps, wd, step)));
    else adamw_step(n, p.f32(), g.f32(), m.f32(), v.f32(), lr, b1, b2, eps, wd, step);
    return info.Env().Undefined();
  });
}

// The k-th element of the JS array at argument i, as a tensor argument
// (checked as tensor_arg_any_device does); `dev` is set from the first one
// and every later one must agree.
static TensorArg array_tensor(const Napi::CallbackInfo& info, const char* fn, size_t i, uint32_t k, const char* name,
                              size_t min_numel, Device* dev) {
  Napi::Array arr = info[i].As<Napi::Array>();
  const std::string what = std::string(name) + "[" + std::to_string(k) + "]";
  NativeTensor* nt = NativeTensor::From(arr.Get(k));
  if (!nt) throw arg_error(info, fn, std::string("'") + what + "' is not a native tensor");
  Storage* s = nt->storage();
  if (s->freed) throw arg_error(info, fn, std::string("tensor '") + what + "' was disposed");
  if (s->dtype != DType::F32) throw arg_error(info, fn, std::string("tensor '") + what + "' has dtype " + dtype_name(s->dtype) + ", expected f32");
  if (s->numel < min_numel)
    throw arg_error(info, fn, std::string("tensor '") + what + "' has " + std::to_string(s->numel) + " elements, the op needs at least " +
                    std::to_string(min_numel));
  if (k == 0 && i == 0) *dev = s->kernel_dev();
  else if (s->kernel_dev() != *dev)
    throw arg_error(info, fn, std::string("tensor '") + what + "' is on " + device_name(s->kernel_dev()) + " but 'params[0]' is on " +
                    device_name(*dev) + ": all tensors of one step must be on one device");
  TensorArg t;
  t.data = s->data;
  t.numel = s->numel;
  t.dtype = s->dtype;
  t.cat = s->cat;
  t.dev = s->kernel_dev();
  return t;
}

// adamw_step_multi(params[], grads[], ms[], vs[], weightDecays[], lr, beta1, beta2, eps, step)
//   the step of adamw_step over every tensor k (params[k], grads[k], ms[k],
//   vs[k] f32 of one size, weightDecays[k] a number); all tensors on one
//   device. On CUDA a single launch; on the CPU adamw_step per tensor.
static Napi::Value AdamwStepMultiBinding(const Napi::CallbackInfo& info) {
  const char* fn = "adamw_step_multi";
  const char* names[5] = {"params", "grads", "ms", "vs", "weightDecays"};
  for (size_t i = 0; i < 5; i++)
    if (i >= info.Length() || !info[i].IsArray()) throw arg_error(info, fn, std::string("'") + names[i] + "' must be an array");
  const uint32_t count = info[0].As<Napi::Array>().Length();
  for (size_t i = 1; i < 5; i++)
    if (info[i].As<Napi::Array>().Length() != count)
      throw arg_error(info, fn, std::string("'") + names[i] + "' has " + std::to_string(info[i].As<Napi::Array>().Length()) +
                      " entries, 'params' has " + std::to_string(count));
  float lr = static_cast<float>(num_arg(info, 5, fn, "lr"));
  float b1 = static_cast<float>(num_arg(info, 6, fn, "beta1"));
  float b2 = static_cast<float>(num_arg(info, 7, fn, "beta2"));
  float eps = static_cast<float>(num_arg(info, 8, fn, "eps"));
  int64_t step = int_arg(info, 9, fn, "step", 1);
  Device dev = Device::CPU;
  struct One { TensorArg p, g, m, v; float wd; };
  std::vector<One> ts(count);
  Napi::Array wds = info[4].As<Napi::Array>();
  for (uint32_t k = 0; k < count; k++) {
    One& o = ts[k];
    o.p = array_tensor(info, fn, 0, k, "params", 0, &dev);
    o.g = array_tensor(info, fn, 1, k, "grads", o.p.numel, &dev);
    o.m = array_tensor(info, fn, 2, k, "ms", o.p.numel, &dev);
    o.v = array_tensor(info, fn, 3, k, "vs", o.p.numel, &dev);
    Napi::Value w = wds.Get(k);
    if (!w.IsNumber()) throw arg_error(info, fn, "'weightDecays[" + std::to_string(k) + "]' must be a number");
    o.wd = static_cast<float>(w.As<Napi::Number>().DoubleValue());
  }
  return guarded(info, [&]() -> Napi::Value {
    if (dev == Device::CUDA) {
      std::vector<cuda::AdamwTensor> descs(count);
      for (uint32_t k = 0; k < count; k++) {
        const One& o = ts[k];
        descs[k] = cuda::AdamwTensor{o.p.f32(), o.g.f32(), o.m.f32(), o.v.f32(), static_cast<int64_t>(o.p.numel), 1.0f - lr * o.wd};
      }
      TB_ON_CUDA(cuda::adamw_step_multi(descs.data(), count, math::adamw_scalars(lr, b1, b2, eps, 0.0f, step)));
    } else {
      for (const One& o : ts)
        adamw_step(static_cast<int64_t>(o.p.numel), o.p.f32(), o.g.f32(), o.m.f32(), o.v.f32(), lr, b1, b2, eps, o.wd, step);
    }
    return info.Env().Undefined();
  });
}

// hostmath_adamw(p, g, m, v, lr, beta1, beta2, eps, weightDecay, step): the
// CUDA kernel's per-element math (kernels/adamw_math.h) in a plain CPU loop,
// for tests against adamw_step.
static Napi::Value HostmathAdamwBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_adamw";
  TensorArg p = tensor_arg(info, 0, fn, "param", 0, DType::F32);
  TensorArg g = tensor_arg(info, 1, fn, "grad", p.numel, DType::F32);
  TensorArg m = tensor_arg(info, 2, fn, "m", p.numel, DType::F32);
  TensorArg v = tensor_arg(info, 3, fn, "v", p.numel, DType::F32);
  const math::AdamwScalars s = math::adamw_scalars(
      static_cast<float>(num_arg(info, 4, fn, "lr")), static_cast<float>(num_arg(info, 5, fn, "beta1")),
      static_cast<float>(num_arg(info, 6, fn, "beta2")), static_cast<float>(num_arg(info, 7, fn, "eps")),
      static_cast<float>(num_arg(info, 8, fn, "weightDecay")), int_arg(info, 9, fn, "step", 1));
  for (size_t i = 0; i < p.numel; i++) math::adamw_update(s, s.decay, g.f32()[i], p.f32()[i], m.f32()[i], v.f32()[i]);
  return info.Env().Undefined();
}

static void register_adamw(Napi::Env env, Napi::Object exports) {
  exports.Set("adamw_step", Napi::Function::New(env, AdamwStepBinding));
  exports.Set("adamw_step_multi", Napi::Function::New(env, AdamwStepMultiBinding));
  exports.Set("hostmath_adamw", Napi::Function::New(env, HostmathAdamwBinding));
}
TB_REGISTER_OPS(adamw, register_adamw);

}  // namespace tb
