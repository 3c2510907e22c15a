// SwiGLU (the Llama MLP gate), fp32 compute, elementwise.
//
//   forward:  out = silu(gate) * up,   silu(g) = g * sigmoid(g)
//   backward: s = sigmoid(g)
//             dgate = dout * up * s * (1 + g * (1 - s))   (written)
//             dup   = dout * g * s                         (written)
//
// sigmoid is evaluated from e = exp(-|g|) <= 1, so it never overflows:
//   g >= 0: s = 1 / (1 + e), 1 - s = e / (1 + e);  g < 0: the two swap.
// exp is fast_exp.h (Cephes polynomial) so
// the loops vectorise; glibc's expf does not without -ffast-math.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "args.h"
#include "cuda/swiglu.h"
#include "fast_exp.h"
#include "kernels/swiglu_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {
namespace {

constexpr int64_t kMinPerThread = 32768;

// s = sigmoid(g) and sc = 1 - s, both without cancellation.
inline void sigmoid2(float g, float& s, float& sc) {
  const float e = fast_expf(-std::fabs(g));
  const float a = 1.0f / (1.0f + e), b = e * a;
  const bool pos = g >= 0.0f;
  s = pos ? a : b;
  sc = pos ? b : a;
}

// gate, up [n] f32 -> out [n] f32
void swiglu_forward(int64_t n, const float* gate, const float* up, float* out) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      float s, sc;
      sigmoid2(gate[i], s, sc);
      out[i] = gate[i] * s * up[i];
    }
  }, kMinPerThread);
}

// dout, gate, up [n] f32 -> dgate, dup [n] f32 (both written)
void swiglu_backward(int64_t n, const float* dout, const float* gate, const float* up, float* dgate, float* dup) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      const float g = gate[i], u = up[i], d = dout[i];
      float s, sc;
      sigmoid2(g, s, sc);
      dgate[i] = d * u * (s * (1.0f + g * sc));
      dup[i] = d * (g * s);
    }
  }, kMinPerThread);
}

}  // namespace

// ---- bindings ----
// swiglu_forward(gate, up, out, n)
//   gate, up [N, F] f32 (n = N*F elements) -> out [N, F] f32 (written)
static Napi::Value SwigluForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "swiglu_forward";
  const int64_t n = int_arg(info, 3, fn, "n");
  Dispatch d(info, fn);
  TensorArg gate = d.tensor(0, "gate", static_cast<size_t>(n), DType::F32);
  TensorArg up = d.tensor(1, "up", static_cast<size_t>(n), DType::F32);
  TensorArg out = d.tensor(2, "out", static_cast<size_t>(n), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::swiglu_forward(n, gate.f32(), up.f32(), out.f32()));
    else swiglu_forward(n, gate.f32(), up.f32(), out.f32());
    return info.Env().Undefined();
  });
}

// swiglu_backward(dout, gate, up, dgate, dup, n)
//   dout, gate, up [N, F] f32 -> dgate, dup [N, F] f32 (both WRITTEN: activation gradients)
static Napi::Value SwigluBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "swiglu_backward";
  const int64_t n = int_arg(info, 5, fn, "n");
  Dispatch d(info, fn);
  TensorArg dout = d.tensor(0, "dout", static_cast<size_t>(n), DType::F32);
  TensorArg gate = d.tensor(1, "gate", static_cast<size_t>(n), DType::F32);
  TensorArg up = d.tensor(2, "up", static_cast<size_t>(n), DType::F32);
  TensorArg dgate = d.tensor(3, "dgate", static_cast<size_t>(n), DType::F32);
  TensorArg dup = d.tensor(4, "dup", static_cast<size_t>(n), DType::F32);
  if (dgate.data == dup.data && n > 0) throw arg_error(info, fn, "'dgate' and 'dup' must be different tensors");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::swiglu_backward(n, dout.f32(), gate.f32(), up.f32(), dgate.f32(), dup.f32()));
    else swiglu_backward(n, dout.f32(), gate.f32(), up.f32(), dgate.f32(), dup.f32());
    return info.Env().Undefined();
  });
}

// hostmath_swiglu(gate, up, dout, out, dgate, dup, n): the CUDA kernel's
// per-element functions (kernels/swiglu_math.h) run on the CPU, for tests.
static Napi::Value HostmathSwigluBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_swiglu";
  const int64_t n = int_arg(info, 6, fn, "n");
  TensorArg gate = tensor_arg(info, 0, fn, "gate", static_cast<size_t>(n), DType::F32);
  TensorArg up = tensor_arg(info, 1, fn, "up", static_cast<size_t>(n), DType::F32);
  TensorArg dout = tensor_arg(info, 2, fn, "dout", static_cast<size_t>(n), DType::F32);
  TensorArg out = tensor_arg(info, 3, fn, "out", static_cast<size_t>(n), DType::F32);
  TensorArg dgate = tensor_arg(info, 4, fn, "dgate", static_cast<size_t>(n), DType::F32);
  TensorArg dup = tensor_arg(info, 5, fn, "dup", static_cast<size_t>(n), DType::F32);
  for (int64_t i = 0; i < n; i++) {
    out.f32()[i] = math::swiglu_forward(gate.f32()[i], up.f32()[i]);
    math::swiglu_backward(dout.f32()[i], gate.f32()[i], up.f32()[i], dgate.f32()[i], dup.f32()[i]);
  }
  return info.Env().Undefined();
}

static void register_swiglu(Napi::Env env, Napi::Object exports) {
  exports.Set("swiglu_forward", Napi::Function::New(env, SwigluForwardBinding));
  exports.Set("swiglu_backward", Napi::Function::New(env, SwigluBackwardBinding));
  exports.Set("hostmath_swiglu", Napi::Function::New(env, HostmathSwigluBinding));
}
TB_REGISTER_OPS(swiglu, register_swiglu);

}  // namespace tb
