// LoRA linear layer, fused: the frozen base projection and the low-rank
// adapter in one call, forward and backward. The CUDA backend implements the
// same names and signatures.
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
#include "gemm.h"
#include "operand.h"
#include "registry.h"

namespace tb {

namespace {
MatRef mat(const TensorArg& t, int64_t ld, bool trans) { return MatRef{t.data, t.dtype, ld, trans}; }
}  // namespace

// lora_forward(x, xa, W, A, B, scale, y, u, N, in, out, r)
static Napi::Value LoraForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "lora_forward";
  int64_t N = int_arg(info, 8, fn, "N"), in = int_arg(info, 9, fn, "in", 1), out = int_arg(info, 10, fn, "out", 1), r = int_arg(info, 11, fn, "r", 1);
  TensorArg x = tensor_arg(info, 0, fn, "x", N * in, DType::F32);
  TensorArg xa = tensor_arg(info, 1, fn, "xa", N * in, DType::F32);
  WeightOperand W = weight_arg(info, 2, fn, "W", out, in);
  TensorArg A = tensor_arg(info, 3, fn, "A", r * in, DType::F32);
  TensorArg B = tensor_arg(info, 4, fn, "B", out * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 5, fn, "scale"));
  TensorArg y = tensor_arg(info, 6, fn, "y", N * out, DType::F32);
  TensorArg u = tensor_arg(info, 7, fn, "u", N * r, DType::F32);
  return guarded(info, [&]() -> Napi::Value {
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
  TensorArg dy = tensor_arg(info, 0, fn, "dy", N * out, DType::F32);
  TensorArg xa = tensor_arg(info, 1, fn, "xa", N * in, DType::F32);
  WeightOperand W = weight_arg(info, 2, fn, "W", out, in);
  TensorArg A = tensor_arg(info, 3, fn, "A", r * in, DType::F32);
  TensorArg B = tensor_arg(info, 4, fn, "B", out * r, DType::F32);
  TensorArg u = tensor_arg(info, 5, fn, "u", N * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 6, fn, "scale"));
  TensorArg dx = tensor_arg(info, 7, fn, "dx", N * in, DType::F32);
  bool acc = bool_arg(info, 8, fn, "accumulate_dx");
  TensorArg dA = tensor_arg(info, 9, fn, "dA", r * in, DType::F32, false, true);
  TensorArg dB = tensor_arg(info, 10, fn, "dB", out * r, DType::F32, false, true);
  TensorArg dxa = tensor_arg(info, 11, fn, "dxa", N * in, DType::F32, false, true);
  return guarded(info, [&]() -> Napi::Value {
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
  TensorArg x = tensor_arg(info, 0, fn, "x", (rb + n) * in, DType::F32);
  TensorArg A = tensor_arg(info, 1, fn, "A", r * in, DType::F32);
  TensorArg B = tensor_arg(info, 2, fn, "B", out * r, DType::F32);
  float s = static_cast<float>(num_arg(info, 3, fn, "scale"));
  TensorArg y = tensor_arg(info, 4, fn, "y", (rb + n) * out, DType::F32);
  if (n == 0) return info.Env().Undefined();
  return guarded(info, [&]() -> Napi::Value {
    Workspace<float> u(static_cast<size_t>(n * r));
    gemm(n, r, in, 1.0f, MatRef{x.f32() + rb * in, DType::F32, in, false}, mat(A, in, true), 0.0f, u.data(), r);
    gemm(n, out, r, s, MatRef{u.data(), DType::F32, r, false}, mat(B, r, true), 1.0f, y.f32() + rb * out, out);
    return info.Env().Undefined();
  });
}

static void register_lora(Napi::Env env, Napi::Object exports) {
  exports.Set("lora_delta_rows", Napi::Function::New(env, LoraDeltaRowsBinding));
  exports.Set("lora_forward", Napi::Function::New(env, LoraForwardBinding));
  exports.Set("lora_backward", Napi::Function::New(env, LoraBackwardBinding));
}
TB_REGISTER_OPS(lora, register_lora);

}  // namespace tb
