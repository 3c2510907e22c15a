// Global gradient-norm clipping, in two native pieces the TS side combines
// over any number of tensors: the sum of squares of one tensor (accumulated
// in double, threaded), and an in-place scale. Both bindings dispatch on the
// tensor's device (cuda/grad_clip.cu on CUDA; grad_sumsq returns the sum to
// the host either way).
#include <cmath>
#include <vector>

#include "args.h"
#include "cuda/grad_clip.h"
#include "kernels/grad_clip_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {

// x: [n] f32 -> sum(x^2) in double (NaN/inf propagate)
static double sum_squares(int64_t n, const float* x) {
  int nt = num_threads();
  std::vector<double> partial(static_cast<size_t>(nt) + 1, 0.0);
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = b;
    for (; i + 4 <= e; i += 4) {
      s0 += static_cast<double>(x[i]) * x[i];
      s1 += static_cast<double>(x[i + 1]) * x[i + 1];
      s2 += static_cast<double>(x[i + 2]) * x[i + 2];
      s3 += static_cast<double>(x[i + 3]) * x[i + 3];
    }
    for (; i < e; i++) s0 += static_cast<double>(x[i]) * x[i];
    partial[static_cast<size_t>(omp_get_thread_num())] += (s0 + s1) + (s2 + s3);
  }, 1 << 15);
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

// x: [n] f32, x *= s in place
static void scale_inplace(int64_t n, float* x, float s) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) x[i] *= s;
  }, 1 << 15);
}

// grad_sumsq(x) -> sum(x^2) (a number, accumulated in double); x f32 on any device
static Napi::Value SumSquaresBinding(const Napi::CallbackInfo& info) {
  Dispatch d(info, "grad_sumsq");
  TensorArg x = d.tensor(0, "x", 0, DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    double s = 0;
    if (d.cuda()) TB_ON_CUDA(s = cuda::grad_sumsq(static_cast<int64_t>(x.numel), x.f32()));
    else s = sum_squares(static_cast<int64_t>(x.numel), x.f32());
    return Napi::Number::New(info.Env(), s);
  });
}

// grad_scale(x, scale): x *= scale in place; x f32 on any device
static Napi::Value ScaleBinding(const Napi::CallbackInfo& info) {
  Dispatch d(info, "grad_scale");
  TensorArg x = d.tensor(0, "x", 0, DType::F32);
  float s = static_cast<float>(num_arg(info, 1, "grad_scale", "scale"));
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::grad_scale(static_cast<int64_t>(x.numel), x.f32(), s));
    else scale_inplace(static_cast<int64_t>(x.numel), x.f32(), s);
    return info.Env().Undefined();
  });
}

// hostmath_grad_sumsq(x, lanes) -> number and hostmath_grad_scale(x, s): the
// CUDA kernels' math (kernels/grad_clip_math.h) on the CPU, with the lane
// split of the CUDA reduction (lanes partial sums, then their sum), for tests.
static Napi::Value HostmathGradSumsqBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_grad_sumsq";
  TensorArg x = tensor_arg(info, 0, fn, "x", 0, DType::F32);
  const int64_t lanes = int_arg(info, 1, fn, "lanes", 1);
  double s = 0;
  for (int64_t l = 0; l < lanes; l++) s += math::sumsq_lane(x.f32(), static_cast<int64_t>(x.numel), l, lanes);
  return Napi::Number::New(info.Env(), s);
}

static Napi::Value HostmathGradScaleBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_grad_scale";
  TensorArg x = tensor_arg(info, 0, fn, "x", 0, DType::F32);
  const float s = static_cast<float>(num_arg(info, 1, fn, "scale"));
  for (size_t i = 0; i < x.numel; i++) x.f32()[i] = math::grad_scaled(x.f32()[i], s);
  return info.Env().Undefined();
}

static void register_grad_clip(Napi::Env env, Napi::Object exports) {
  exports.Set("grad_sumsq", Napi::Function::New(env, SumSquaresBinding));
  exports.Set("grad_scale", Napi::Function::New(env, ScaleBinding));
  exports.Set("hostmath_grad_sumsq", Napi::Function::New(env, HostmathGradSumsqBinding));
  exports.Set("hostmath_grad_scale", Napi::Function::New(env, HostmathGradScaleBinding));
}
TB_REGISTER_OPS(grad_clip, register_grad_clip);

}  // namespace tb
