// LoRA linear layer, fused: the frozen base projection and the low-rank
// adapter in one call, forward and backward. The CUDA backend (cuda/lora.cu)
// runs the same GEMM sequence, kernels/lora_math.h, on tb::cuda::gemm.
//
//   x  [N, in]  layer input          xa [N, in]  adapter input (x, or dropout(x))
//   W  [out, in] frozen: f32, bf16 or a quantized weight (operand.h)    A  [r, in] f32    B [out, r] f32    s = scale
//   forward:  u = xa A^T [N, r]  (kept for backward)
//             y = x W^T + s * u B^T [N, out]
//   backward: dB += s * dy^T u              (parameter gradient, accumulated)
//             du  = s * dy B      [N, r]    (workspace)
//             dA += du^T xa                 (parameter gradient, accumulated)
//             dx  = dy W  (written, or accumulated when accumulate_dx)
//             adapter input gradient du A: added into dx, or written into
//             dxa when given (the caller then applies its dropout mask)
#include "args.h"
#include "cuda/lora.h"
#include "gemm.h"
#include "kernels/lora_math.h"
#include "operand.h"
#include "registry.h"

namespace tb {

namespace {
MatRef mat(const TensorArg& t, int64_t ld, bool trans) { return MatRef{t.data, t.dtype, ld, trans}; }

// The frozen weight W [rows, cols] at argument i: a dense tensor read through
// the Dispatch (on its device), or a quantized weight (CPU only here).
WeightOperand lora_weight(const Napi::CallbackInfo& info, size_t i, const char* fn, Dispatch& d, int64_t rows,
                          int64_t cols) {
  if (i < info.Length() && NativeTensor::IsTensor(info[i])) {
    WeightOperand w;
    w.dense = d.tensor(i, "W", static_cast<size_t>(rows * cols), DType::F32, true);
    if (w.dense.dtype != DType::F32 && w.dense.dtype != DType::BF16)
      throw arg_error(info, fn, "'W' must be f32, bf16 or a quantized weight");
    return w;
  }
  if (d.cuda())
    throw arg_error(info, fn, "a quantized 'W' with CUDA activations is not supported yet (pass a dense f32 or bf16 W)");
  return weight_arg(info, i, fn, "W", rows, cols);
}

// The CPU tb::gemm as a callable for kernels/lora_math.h
struct HostGemm {
  void operator()(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C,
                  int64_t ldc) const {
    gemm(M, N, K, alpha, A, B, beta, C, ldc);
  }
};
}  // namespace

// lora_forward(x, xa, W, A, B, scale, y, u, N, in, out, r)
static Napi::Value LoraForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "lora_forward";
  int64_t N = int_arg(info, 8, fn, "N"), in = int_arg(info, 9, fn, "in", 1), out = int_arg(info, 10, fn, "out", 1), r = int_arg(info, 11, fn, "r", 1);
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", N * in, DType::F32);
  TensorArg xa = d.tensor(1, "xa", N * in, DType::F32);
  WeightOperand W = lora_weight(info, 2, fn, d, out, in);
  TensorArg A = d.tensor(3, "A", r * in, DType::F32);
  TensorArg B = d.tensor(4, "B", out * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 5, fn, "scale"));
  TensorArg y = d.tensor(6, "y", N * out, DType::F32);
  TensorArg u = d.tensor(7, "u", N * r, DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::lora_forward(N, in, out, r, x.f32(), xa.f32(), W.mat(in, true), A.f32(), B.f32(), s, y.f32(), u.f32()));
      return info.Env().Undefined();
    }
    gemm(N, out, in, 1.0f, mat(x, in, false), W.mat(in, true), 0.0f, y.f32(), out);      // y = x W^T
    gemm(N, r, in, 1.0f, mat(xa, in, false), mat(A, in, true), 0.0f, u.f32(), r);         // u = xa A^T
    gemm(N, out, r, s, MatRef{u.data, DType::F32, r, false}, mat(B, r, true), 1.0f, y.f32(), out);  // y += s u B^T
    return info.Env().Undefined();
  });
}

// lora_backward(dy, xa, W, A, B, u, scale, dx, accumulate_dx, dA, dB, dxa|null, N, in, out, r)
static Napi::Value LoraBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "lora_backward";
  int64_t N = int_arg(info, 12, fn, "N"), in = int_arg(info, 13, fn, "in", 1), out = int_arg(info, 14, fn, "out", 1), r = int_arg(info, 15, fn, "r", 1);
  Dispatch d(info, fn);
  TensorArg dy = d.tensor(0, "dy", N * out, DType::F32);
  TensorArg xa = d.tensor(1, "xa", N * in, DType::F32);
  WeightOperand W = lora_weight(info, 2, fn, d, out, in);
  TensorArg A = d.tensor(3, "A", r * in, DType::F32);
  TensorArg B = d.tensor(4, "B", out * r, DType::F32);
  TensorArg u = d.tensor(5, "u", N * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 6, fn, "scale"));
  TensorArg dx = d.tensor(7, "dx", N * in, DType::F32);
  bool acc = bool_arg(info, 8, fn, "accumulate_dx");
  TensorArg dA = d.tensor(9, "dA", r * in, DType::F32, false, true);
  TensorArg dB = d.tensor(10, "dB", out * r, DType::F32, false, true);
  TensorArg dxa = d.tensor(11, "dxa", N * in, DType::F32, false, true);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::lora_backward(N, in, out, r, dy.f32(), xa.f32(), W.mat(in, false), A.f32(), B.f32(), u.f32(), s,
                                     dx.f32(), acc, dA.data ? dA.f32() : nullptr, dB.data ? dB.f32() : nullptr,
                                     dxa.data ? dxa.f32() : nullptr));
      return info.Env().Undefined();
    }
    MatRef dyM{dy.data, DType::F32, out, false};
    if (dB.data) gemm(out, r, N, s, MatRef{dy.data, DType::F32, out, true}, MatRef{u.data, DType::F32, r, false}, 1.0f, dB.f32(), r);
    Workspace<float> du(static_cast<size_t>(N * r));
    gemm(N, r, out, s, dyM, mat(B, r, false), 0.0f, du.data(), r);                         // du = s dy B
    MatRef duM{du.data(), DType::F32, r, false};
    if (dA.data) gemm(r, in, N, 1.0f, MatRef{du.data(), DType::F32, r, true}, mat(xa, in, false), 1.0f, dA.f32(), in);
    gemm(N, in, out, 1.0f, dyM, W.mat(in, false), acc ? 1.0f : 0.0f, dx.f32(), in);      // dx (+)= dy W
    if (dxa.data) gemm(N, in, r, 1.0f, duM, mat(A, in, false), 0.0f, dxa.f32(), in);      // dxa = du A
    else gemm(N, in, r, 1.0f, duM, mat(A, in, false), 1.0f, dx.f32(), in);                // dx += du A
    return info.Env().Undefined();
  });
}

// lora_delta_rows(x, A, B, scale, y, row_begin, rows, in, out, r):
//   y[row_begin : row_begin + rows] += scale * (x[rows] A^T) B^T
// One adapter applied to a block of rows in place: a mixed batch calls it once
// per run of rows sharing an adapter, after one pass over the base weights.
static Napi::Value LoraDeltaRowsBinding(const Napi::CallbackInfo& info) {
  const char* fn = "lora_delta_rows";
  int64_t rb = int_arg(info, 5, fn, "row_begin"), n = int_arg(info, 6, fn, "rows");
  int64_t in = int_arg(info, 7, fn, "in", 1), out = int_arg(info, 8, fn, "out", 1), r = int_arg(info, 9, fn, "r", 1);
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", (rb + n) * in, DType::F32);
  TensorArg A = d.tensor(1, "A", r * in, DType::F32);
  TensorArg B = d.tensor(2, "B", out * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 3, fn, "scale"));
  TensorArg y = d.tensor(4, "y", (rb + n) * out, DType::F32);
  if (n == 0) return info.Env().Undefined();
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::lora_delta_rows(rb, n, in, out, r, x.f32(), A.f32(), B.f32(), s, y.f32()));
      return info.Env().Undefined();
    }
    Workspace<float> u(static_cast<size_t>(n * r));
    gemm(n, r, in, 1.0f, MatRef{x.f32() + rb * in, DType::F32, in, false}, mat(A, in, true), 0.0f, u.data(), r);
    gemm(n, out, r, s, MatRef{u.data(), DType::F32, r, false}, mat(B, r, true), 1.0f, y.f32() + rb * out, out);
    return info.Env().Undefined();
  });
}

// hostmath_lora(x, xa, W, A, B, scale, dy, y, u, dx, accumulate_dx, dA, dB, dxa|null, N, in, out, r, yd, row_begin, rows):
// the CUDA launcher's GEMM sequence (kernels/lora_math.h) run with the CPU
// gemm, for tests against the ops above: the forward (y, u written), the
// backward (dx, dA, dB, dxa as lora_backward), and a delta on rows of yd.
static Napi::Value HostmathLoraBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_lora";
  int64_t N = int_arg(info, 14, fn, "N"), in = int_arg(info, 15, fn, "in", 1), out = int_arg(info, 16, fn, "out", 1), r = int_arg(info, 17, fn, "r", 1);
  int64_t rb = int_arg(info, 19, fn, "row_begin"), n = int_arg(info, 20, fn, "rows");
  if (rb + n > N) throw arg_error(info, fn, "rows outside [0, N)");
  TensorArg x = tensor_arg(info, 0, fn, "x", N * in, DType::F32);
  TensorArg xa = tensor_arg(info, 1, fn, "xa", N * in, DType::F32);
  WeightOperand W = weight_arg(info, 2, fn, "W", out, in);
  TensorArg A = tensor_arg(info, 3, fn, "A", r * in, DType::F32);
  TensorArg B = tensor_arg(info, 4, fn, "B", out * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 5, fn, "scale"));
  TensorArg dy = tensor_arg(info, 6, fn, "dy", N * out, DType::F32);
  TensorArg y = tensor_arg(info, 7, fn, "y", N * out, DType::F32);
  TensorArg u = tensor_arg(info, 8, fn, "u", N * r, DType::F32);
  TensorArg dx = tensor_arg(info, 9, fn, "dx", N * in, DType::F32);
  bool acc = bool_arg(info, 10, fn, "accumulate_dx");
  TensorArg dA = tensor_arg(info, 11, fn, "dA", r * in, DType::F32);
  TensorArg dB = tensor_arg(info, 12, fn, "dB", out * r, DType::F32);
  TensorArg dxa = tensor_arg(info, 13, fn, "dxa", N * in, DType::F32, false, true);
  TensorArg yd = tensor_arg(info, 18, fn, "yd", N * out, DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    math::lora_forward_steps(HostGemm{}, N, in, out, r, x.f32(), xa.f32(), W.mat(in, true), A.f32(), B.f32(), s, y.f32(), u.f32());
    Workspace<float> du(static_cast<size_t>(N * r));
    math::lora_backward_steps(HostGemm{}, N, in, out, r, dy.f32(), xa.f32(), W.mat(in, false), A.f32(), B.f32(), u.f32(), s,
                              dx.f32(), acc, dA.f32(), dB.f32(), dxa.data ? dxa.f32() : nullptr, du.data());
    Workspace<float> ud(static_cast<size_t>(n * r));
    if (n > 0)
      math::lora_delta_rows_steps(HostGemm{}, n, in, out, r, x.f32() + rb * in, A.f32(), B.f32(), s, yd.f32() + rb * out,
                                  ud.data());
    return info.Env().Undefined();
  });
}

static void register_lora(Napi::Env env, Napi::Object exports) {
  exports.Set("lora_delta_rows", Napi::Function::New(env, LoraDeltaRowsBinding));
  exports.Set("lora_forward", Napi::Function::New(env, LoraForwardBinding));
  exports.Set("lora_backward", Napi::Function::New(env, LoraBackwardBinding));
  exports.Set("hostmath_lora", Napi::Function::New(env, HostmathLoraBinding));
}
TB_REGISTER_OPS(lora, register_lora);

}  // namespace tb
