// Elementwise helpers the model needs between ops.
//
//   axpy:  y [n] += alpha * x [n]      (residual stream, gradient sums)
//   fill:  x [n] = value               (zeroing gradients)
//   group_pool_forward:  p [N, in/L] = c * mean of each group of L consecutive
//                        columns of x [N, in]        (QA-LoRA's adapter input)
//   group_pool_backward: dx [N, in] (+)= c/L * dp [N, in/L] broadcast over its
//                        group (written, or accumulated when accumulate)
#include "args.h"
#include "cuda/elementwise.h"
#include "kernels/elementwise_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {

static void axpy(int64_t n, float alpha, const float* x, float* y) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) y[i] += alpha * x[i];
  }, 1 << 15);
}

static void fill(int64_t n, float value, float* x) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) x[i] = value;
  }, 1 << 15);
}

// x [N, in] -> p [N, G], G = in / L: p[n, g] = scale/L * sum_{j<L} x[n, g*L + j]
static void group_pool_forward(int64_t N, int64_t G, int64_t L, float scale, const float* x, float* p) {
  const float c = scale / static_cast<float>(L);
  parallel_chunks(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; n++) {
      const float* xr = x + n * G * L;
      float* pr = p + n * G;
      for (int64_t g = 0; g < G; g++) {
        float s = 0.0f;
        for (int64_t j = 0; j < L; j++) s += xr[g * L + j];
        pr[g] = c * s;
      }
    }
  }, 16);
}

// dp [N, G] -> dx [N, G*L]: dx[n, g*L + j] (+)= scale/L * dp[n, g]
static void group_pool_backward(int64_t N, int64_t G, int64_t L, float scale, const float* dp, float* dx, bool accumulate) {
  const float c = scale / static_cast<float>(L);
  parallel_chunks(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; n++) {
      const float* dr = dp + n * G;
      float* xr = dx + n * G * L;
      for (int64_t g = 0; g < G; g++) {
        const float v = c * dr[g];
        if (accumulate) for (int64_t j = 0; j < L; j++) xr[g * L + j] += v;
        else for (int64_t j = 0; j < L; j++) xr[g * L + j] = v;
      }
    }
  }, 16);
}

// group_pool_forward(x, p, N, in, L, scale)
static Napi::Value GroupPoolForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "group_pool_forward";
  int64_t N = int_arg(info, 2, fn, "N"), in = int_arg(info, 3, fn, "in", 1), L = int_arg(info, 4, fn, "L", 1);
  if (in % L != 0) throw arg_error(info, fn, "'in' must be a multiple of 'L'");
  float scale = static_cast<float>(num_arg(info, 5, fn, "scale"));
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", static_cast<size_t>(N * in), DType::F32);
  TensorArg p = d.tensor(1, "p", static_cast<size_t>(N * (in / L)), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::group_pool_forward(N, in / L, L, scale, x.f32(), p.f32()));
    else group_pool_forward(N, in / L, L, scale, x.f32(), p.f32());
    return info.Env().Undefined();
  });
}

// group_pool_backward(dp, dx, N, in, L, scale, accumulate)
static Napi::Value GroupPoolBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "group_pool_backward";
  int64_t N = int_arg(info, 2, fn, "N"), in = int_arg(info, 3, fn, "in", 1), L = int_arg(info, 4, fn, "L", 1);
  if (in % L != 0) throw arg_error(info, fn, "'in' must be a multiple of 'L'");
  float scale = static_cast<float>(num_arg(info, 5, fn, "scale"));
  bool acc = bool_arg(info, 6, fn, "accumulate");
  Dispatch d(info, fn);
  TensorArg dp = d.tensor(0, "dp", static_cast<size_t>(N * (in / L)), DType::F32);
  TensorArg dx = d.tensor(1, "dx", static_cast<size_t>(N * in), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::group_pool_backward(N, in / L, L, scale, dp.f32(), dx.f32(), acc));
    else group_pool_backward(N, in / L, L, scale, dp.f32(), dx.f32(), acc);
    return info.Env().Undefined();
  });
}

// axpy(y, x, alpha, n)
static Napi::Value AxpyBinding(const Napi::CallbackInfo& info) {
  const char* fn = "axpy";
  int64_t n = int_arg(info, 3, fn, "n");
  Dispatch d(info, fn);
  TensorArg y = d.tensor(0, "y", static_cast<size_t>(n), DType::F32);
  TensorArg x = d.tensor(1, "x", static_cast<size_t>(n), DType::F32);
  float alpha = static_cast<float>(num_arg(info, 2, fn, "alpha"));
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::axpy(n, alpha, x.f32(), y.f32()));
    else axpy(n, alpha, x.f32(), y.f32());
    return info.Env().Undefined();
  });
}

// fill(x, value)
static Napi::Value FillBinding(const Napi::CallbackInfo& info) {
  const char* fn = "fill";
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", 0, DType::F32);
  float v = static_cast<float>(num_arg(info, 1, fn, "value"));
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::fill(static_cast<int64_t>(x.numel), v, x.f32()));
    else fill(static_cast<int64_t>(x.numel), v, x.f32());
    return info.Env().Undefined();
  });
}

// hostmath_elementwise_axpy(y, x, alpha, n): the CUDA kernel's per-element
// function (kernels/elementwise_math.h) in a plain loop, for tests.
static Napi::Value HostmathAxpyBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_elementwise_axpy";
  int64_t n = int_arg(info, 3, fn, "n");
  TensorArg y = tensor_arg(info, 0, fn, "y", static_cast<size_t>(n), DType::F32);
  TensorArg x = tensor_arg(info, 1, fn, "x", static_cast<size_t>(n), DType::F32);
  float alpha = static_cast<float>(num_arg(info, 2, fn, "alpha"));
  for (int64_t i = 0; i < n; i++) y.f32()[i] = math::axpy(y.f32()[i], alpha, x.f32()[i]);
  return info.Env().Undefined();
}

// hostmath_elementwise_group_pool(x, p, dp, dx, N, in, L, scale, accumulate):
// the group pool kernels' per-element functions in plain loops, for tests.
// p written; dx written or accumulated.
static Napi::Value HostmathGroupPoolBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_elementwise_group_pool";
  int64_t N = int_arg(info, 4, fn, "N"), in = int_arg(info, 5, fn, "in", 1), L = int_arg(info, 6, fn, "L", 1);
  if (in % L != 0) throw arg_error(info, fn, "'in' must be a multiple of 'L'");
  float scale = static_cast<float>(num_arg(info, 7, fn, "scale"));
  bool acc = bool_arg(info, 8, fn, "accumulate");
  const int64_t G = in / L;
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(N * in), DType::F32);
  TensorArg p = tensor_arg(info, 1, fn, "p", static_cast<size_t>(N * G), DType::F32);
  TensorArg dp = tensor_arg(info, 2, fn, "dp", static_cast<size_t>(N * G), DType::F32);
  TensorArg dx = tensor_arg(info, 3, fn, "dx", static_cast<size_t>(N * in), DType::F32);
  const float coef = math::group_pool_coef(scale, L);
  for (int64_t i = 0; i < N * G; i++) p.f32()[i] = math::group_pool_value(x.f32() + i * L, L, coef);
  for (int64_t i = 0; i < N * in; i++) {
    const float v = math::group_pool_grad(dp.f32()[i / L], coef);
    dx.f32()[i] = acc ? dx.f32()[i] + v : v;
  }
  return info.Env().Undefined();
}

static void register_elementwise(Napi::Env env, Napi::Object exports) {
  exports.Set("axpy", Napi::Function::New(env, AxpyBinding));
  exports.Set("fill", Napi::Function::New(env, FillBinding));
  exports.Set("group_pool_forward", Napi::Function::New(env, GroupPoolForwardBinding));
  exports.Set("group_pool_backward", Napi::Function::New(env, GroupPoolBackwardBinding));
  exports.Set("hostmath_elementwise_axpy", Napi::Function::New(env, HostmathAxpyBinding));
  exports.Set("hostmath_elementwise_group_pool", Napi::Function::New(env, HostmathGroupPoolBinding));
}
TB_REGISTER_OPS(elementwise, register_elementwise);

}  // namespace tb
