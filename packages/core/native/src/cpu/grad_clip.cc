// Global gradient-norm clipping, in two native pieces the TS side combines
// over any number of tensors: the sum of squares of one tensor (accumulated
// in double, threaded), and an in-place scale.
#include <cmath>
#include <vector>

#include "args.h"
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

static Napi::Value SumSquaresBinding(const Napi::CallbackInfo& info) {
  TensorArg x = tensor_arg(info, 0, "grad_sumsq", "x", 0, DType::F32);
  return Napi::Number::New(info.Env(), sum_squares(static_cast<int64_t>(x.numel), x.f32()));
}

static Napi::Value ScaleBinding(const Napi::CallbackInfo& info) {
  TensorArg x = tensor_arg(info, 0, "grad_scale", "x", 0, DType::F32);
  float s = static_cast<float>(num_arg(info, 1, "grad_scale", "scale"));
  scale_inplace(static_cast<int64_t>(x.numel), x.f32(), s);
  return info.Env().Undefined();
}

static void register_grad_clip(Napi::Env env, Napi::Object exports) {
  exports.Set("grad_sumsq", Napi::Function::New(env, SumSquaresBinding));
  exports.Set("grad_scale", Napi::Function::New(env, ScaleBinding));
}
TB_REGISTER_OPS(grad_clip, register_grad_clip);

}  // namespace tb
