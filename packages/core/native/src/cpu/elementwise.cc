// Elementwise helpers the model needs between ops.
//
//   axpy:  y [n] += alpha * x [n]      (residual stream, gradient sums)
//   fill:  x [n] = value               (zeroing gradients)
#include "args.h"
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

// axpy(y, x, alpha, n)
static Napi::Value AxpyBinding(const Napi::CallbackInfo& info) {
  int64_t n = int_arg(info, 3, "axpy", "n");
  TensorArg y = tensor_arg(info, 0, "axpy", "y", static_cast<size_t>(n), DType::F32);
  TensorArg x = tensor_arg(info, 1, "axpy", "x", static_cast<size_t>(n), DType::F32);
  float alpha = static_cast<float>(num_arg(info, 2, "axpy", "alpha"));
  axpy(n, alpha, x.f32(), y.f32());
  return info.Env().Undefined();
}

// fill(x, value)
static Napi::Value FillBinding(const Napi::CallbackInfo& info) {
  TensorArg x = tensor_arg(info, 0, "fill", "x", 0, DType::F32);
  float v = static_cast<float>(num_arg(info, 1, "fill", "value"));
  fill(static_cast<int64_t>(x.numel), v, x.f32());
  return info.Env().Undefined();
}

static void register_elementwise(Napi::Env env, Napi::Object exports) {
  exports.Set("axpy", Napi::Function::New(env, AxpyBinding));
  exports.Set("fill", Napi::Function::New(env, FillBinding));
}
TB_REGISTER_OPS(elementwise, register_elementwise);

}  // namespace tb
