// Rotary position embedding, Hugging Face "rotate-half" convention
// (LlamaRotaryEmbedding + apply_rotary_pos_emb), fp32 compute.
//
//   x, out [B, T, H, D] f32 (D even, h = D/2), positions [B*T] i32
//   inv_freq[i] = 1 / theta^(float(2i) / D)            i in [0, h), float32 as HF
//     or a table of h entries given by the caller (the scaled variants:
//     linear, dynamic NTK, llama3, YaRN; computed in nn/rope_scaling.ts)
//   a_i = float(pos) * inv_freq[i]  (float32);  c_i = cos(a_i) * m, s_i = sin(a_i) * m
//   m: the attention scale (YaRN's attention factor; 1 otherwise, exact)
//   forward:  out[i]   = x[i]   * c_i - x[i+h] * s_i
//             out[i+h] = x[i+h] * c_i + x[i]   * s_i
//   backward: the transposed rotation (dx written)
//             dx[i]    = dout[i]   * c_i + dout[i+h] * s_i
//             dx[i+h]  = dout[i+h] * c_i - dout[i]   * s_i
//
// In place is supported: out may be the very same buffer as x (each step
// reads the pair (i, i+h) before writing it), so q and k can be rotated right
// after projection without a copy.
//
// cos/sin: when the positions span a range no longer than the number of tokens
// (prefill, training, batches sharing positions) a table is built once per call
// in a workspace, one entry per distinct position used, and shared by every
// token and head at that position; otherwise (a few tokens at scattered
// positions, e.g. batched decode) each token computes its own row into a
// per-thread buffer. Measured on one thread (median ms, table / per token):
// B1 T2048 H32 D128 3.1 / 3.3 (distinct positions: same trig count, the table
// costs nothing extra); B4 T512 H32 D128 1.8 / 3.1; B8 T256 H8 D64 0.17 / 0.75;
// decode B16 T1 H32 D128 at positions 997 apart 0.024 / 0.017 (the table would
// span the whole range). cos/sin is about half the time of a B1 prefill.
// cos and sin are taken in double of the float32 angle and rounded once,
// i.e. the correctly rounded float32 values (what tfjs's cpu backend gives).
// positions may be any int32 (negative too).
// CUDA: cuda/rope.cu, the rotation math in kernels/rope_math.h; one binding
// per op dispatches on the tensors' device (mode is CPU-only, results agree).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include <string>
#include <vector>

#include "args.h"
#include "cuda/rope.h"
#include "kernels/rope_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {
namespace {

enum class RopeMode : int { Auto = 0, Table = 1, PerToken = 2 };

void rope_inv_freq(int64_t D, float theta, float* f) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; i++) {
    const float ex = static_cast<float>(2 * i) / static_cast<float>(D);
    f[i] = 1.0f / std::pow(theta, ex);  // float overload: powf, as torch computes it in float32
  }
}

// cs[0, h) = cos, cs[h, 2h) = sin, for one position, each times scale
inline void rope_row(int32_t pos, const float* inv_freq, float scale, int64_t h, float* cs) {
  const float p = static_cast<float>(pos);
  for (int64_t i = 0; i < h; i++) {
    const double a = static_cast<double>(p * inv_freq[i]);
    cs[i] = static_cast<float>(std::cos(a)) * scale;
    cs[h + i] = static_cast<float>(std::sin(a)) * scale;
  }
}

// One token: H heads of D. x and o may be the same buffer.
template <bool kInverse>
inline void rope_token(const float* x, float* o, const float* cs, int64_t H, int64_t h) {
  const float* c = cs;
  const float* s = cs + h;
  for (int64_t hd = 0; hd < H; hd++) {
    const float* xr = x + hd * 2 * h;
    float* orow = o + hd * 2 * h;
    // omp simd: the only overlap allowed is o == x, where iteration i touches
    // only elements i and i+h, so there is no loop-carried dependence.
#pragma omp simd
    for (int64_t i = 0; i < h; i++) {
      const float a = xr[i], b = xr[i + h];
      if (kInverse) {
        orow[i] = a * c[i] + b * s[i];
        orow[i + h] = b * c[i] - a * s[i];
      } else {
        orow[i] = a * c[i] - b * s[i];
        orow[i + h] = b * c[i] + a * s[i];
      }
    }
  }
}

template <bool kInverse>
void rope_apply(int64_t BT, int64_t H, int64_t D, const int32_t* pos, const float* f, float scale, const float* x,
                float* out, RopeMode mode) {
  if (BT <= 0 || H <= 0 || D <= 0) return;
  const int64_t h = D / 2;
  const int64_t min_tokens = std::max<int64_t>(1, 16384 / (H * D));

  int64_t pmin = pos[0], pmax = pos[0];
  for (int64_t t = 1; t < BT; t++) {
    pmin = std::min<int64_t>(pmin, pos[t]);
    pmax = std::max<int64_t>(pmax, pos[t]);
  }
  const int64_t range = pmax - pmin + 1;
  if (mode == RopeMode::Auto) mode = range <= BT ? RopeMode::Table : RopeMode::PerToken;

  if (mode == RopeMode::Table) {
    Workspace<uint8_t> used(static_cast<size_t>(range));
    std::fill(used.data(), used.data() + range, uint8_t(0));
    for (int64_t t = 0; t < BT; t++) used[pos[t] - pmin] = 1;
    Workspace<float> table(static_cast<size_t>(range * D));
    float* tab = table.data();
    const uint8_t* u = used.data();
    parallel_chunks(range, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++)
        if (u[r]) rope_row(static_cast<int32_t>(pmin + r), f, scale, h, tab + r * D);
    }, std::max<int64_t>(1, 4096 / D));
    parallel_chunks(BT, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++)
        rope_token<kInverse>(x + t * H * D, out + t * H * D, tab + (pos[t] - pmin) * D, H, h);
    }, min_tokens);
  } else {
    // one cos/sin row buffer per token chunk, allocated before the threads start
    const int64_t P = std::max<int64_t>(1, std::min<int64_t>(num_threads(), (BT + min_tokens - 1) / min_tokens));
    Workspace<float> rows(static_cast<size_t>(P * D));
    parallel_chunks(P, [&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; p++) {
        float* cs = rows.data() + p * D;
        for (int64_t t = BT * p / P, te = BT * (p + 1) / P; t < te; t++) {
          rope_row(pos[t], f, scale, h, cs);
          rope_token<kInverse>(x + t * H * D, out + t * H * D, cs, H, h);
        }
      }
    });
  }
}

// The inverse frequencies of a call: the caller's table (argument `at`, a
// Float32Array of exactly D/2 finite entries) or, when absent, 1/theta^(2i/D).
// (a plain vector: D/2 floats, read before the op's guarded body)
struct InvFreqArg {
  std::vector<float> own;
  const float* f = nullptr;
  explicit InvFreqArg(int64_t h) : own(static_cast<size_t>(h)) {}
};

void inv_freq_arg(const Napi::CallbackInfo& info, size_t at, const char* fn, int64_t D, double theta, InvFreqArg& out) {
  const int64_t h = D / 2;
  if (info.Length() > at && !info[at].IsUndefined() && !info[at].IsNull()) {
    if (!info[at].IsTypedArray() || info[at].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw arg_error(info, fn, "'invFreq' must be a Float32Array");
    Napi::Float32Array a = info[at].As<Napi::Float32Array>();
    if (static_cast<int64_t>(a.ElementLength()) != h)
      throw arg_error(info, fn, "'invFreq' has " + std::to_string(a.ElementLength()) + " entries, expected D/2 = " + std::to_string(h));
    const float* src = a.Data();
    for (int64_t i = 0; i < h; i++) {
      if (!std::isfinite(src[i])) throw arg_error(info, fn, "'invFreq' entry " + std::to_string(i) + " is not finite");
      out.own[static_cast<size_t>(i)] = src[i];  // copied: the kernels run after the JS value could move
    }
  } else {
    if (!(theta > 0.0) || !std::isfinite(theta)) throw arg_error(info, fn, "'theta' must be a positive finite number");
    rope_inv_freq(D, static_cast<float>(theta), out.own.data());
  }
  out.f = out.own.data();
}

float scale_arg(const Napi::CallbackInfo& info, size_t at, const char* fn) {
  if (info.Length() <= at || info[at].IsUndefined()) return 1.0f;
  const double m = num_arg(info, at, fn, "attentionScale");
  if (!(m > 0.0) || !std::isfinite(m)) throw arg_error(info, fn, "'attentionScale' must be a positive finite number");
  return static_cast<float>(m);
}

// rope_forward / rope_backward (x|dout, positions, out|dx, B, T, H, D, theta, mode?, invFreq?, attentionScale?)
template <bool kInverse>
Napi::Value rope_binding(const Napi::CallbackInfo& info) {
  const char* fn = kInverse ? "rope_backward" : "rope_forward";
  const int64_t B = int_arg(info, 3, fn, "B"), T = int_arg(info, 4, fn, "T");
  const int64_t H = int_arg(info, 5, fn, "H"), D = int_arg(info, 6, fn, "D", 2);
  if (D % 2 != 0) throw arg_error(info, fn, "head dim D must be even, got " + std::to_string(D));
  const double theta = num_arg(info, 7, fn, "theta");
  if (!(theta > 0.0) || !std::isfinite(theta)) throw arg_error(info, fn, "'theta' must be a positive finite number");
  int64_t mode = 0;
  if (info.Length() > 8 && !info[8].IsUndefined()) mode = int_arg(info, 8, fn, "mode");
  if (mode > 2) throw arg_error(info, fn, "'mode' must be 0 (auto), 1 (table) or 2 (per token)");
  InvFreqArg inv(D / 2);
  inv_freq_arg(info, 9, fn, D, theta, inv);
  const float scale = scale_arg(info, 10, fn);
  const int64_t BT = B * T;
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, kInverse ? "dout" : "x", static_cast<size_t>(BT * H * D), DType::F32);
  TensorArg pos = d.tensor(1, "positions", static_cast<size_t>(BT), DType::I32);
  TensorArg out = d.tensor(2, kInverse ? "dx" : "out", static_cast<size_t>(BT * H * D), DType::F32);
  if (d.cuda() && D > cuda::kRopeMaxHeadDim)
    throw arg_error(info, fn, "head dim D = " + std::to_string(D) + " exceeds " + std::to_string(cuda::kRopeMaxHeadDim) +
                    ", the largest the CUDA kernel supports");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {  // mode only picks the CPU's cos/sin strategy; the results are the same
      if (kInverse) TB_ON_CUDA(cuda::rope_backward(BT, H, D, pos.as<int32_t>(), inv.f, scale, x.f32(), out.f32()));
      else TB_ON_CUDA(cuda::rope_forward(BT, H, D, pos.as<int32_t>(), inv.f, scale, x.f32(), out.f32()));
    } else {
      rope_apply<kInverse>(BT, H, D, pos.as<int32_t>(), inv.f, scale, x.f32(), out.f32(), static_cast<RopeMode>(mode));
    }
    return info.Env().Undefined();
  });
}

// hostmath_rope(x, dout, positions, out, dx, BT, H, D, theta, invFreq?, attentionScale?):
// the CUDA kernel's math (kernels/rope_math.h) on the CPU, for tests: out =
// the forward rotation of x, dx = the backward rotation of dout.
Napi::Value HostmathRopeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_rope";
  const int64_t BT = int_arg(info, 5, fn, "BT"), H = int_arg(info, 6, fn, "H"), D = int_arg(info, 7, fn, "D", 2);
  if (D % 2 != 0) throw arg_error(info, fn, "head dim D must be even, got " + std::to_string(D));
  const float theta = static_cast<float>(num_arg(info, 8, fn, "theta"));
  const bool table = info.Length() > 9 && !info[9].IsUndefined() && !info[9].IsNull();
  InvFreqArg inv(D / 2);
  if (table) inv_freq_arg(info, 9, fn, D, theta, inv);
  const float scale = scale_arg(info, 10, fn);
  const size_t n = static_cast<size_t>(BT * H * D);
  TensorArg x = tensor_arg(info, 0, fn, "x", n, DType::F32);
  TensorArg dout = tensor_arg(info, 1, fn, "dout", n, DType::F32);
  TensorArg pos = tensor_arg(info, 2, fn, "positions", static_cast<size_t>(BT), DType::I32);
  TensorArg out = tensor_arg(info, 3, fn, "out", n, DType::F32);
  TensorArg dx = tensor_arg(info, 4, fn, "dx", n, DType::F32);
  const int64_t h = D / 2;
  for (int64_t t = 0; t < BT; t++)
    for (int64_t i = 0; i < h; i++) {
      float c, s;
      math::rope_cos_sin(pos.as<int32_t>()[t], table ? inv.f[i] : math::rope_inv_freq(i, D, theta), c, s, scale);
      for (int64_t hd = 0; hd < H; hd++) {
        const int64_t e = (t * H + hd) * D + i;
        math::rope_rotate(x.f32()[e], x.f32()[e + h], c, s, out.f32()[e], out.f32()[e + h]);
        math::rope_rotate_inverse(dout.f32()[e], dout.f32()[e + h], c, s, dx.f32()[e], dx.f32()[e + h]);
      }
    }
  return info.Env().Undefined();
}

// rope_inv_freq(D, theta) -> Float32Array [D/2]: 1/theta^(2i/D) as the kernels
// compute it (float32 powf), the base the scaled variants start from.
Napi::Value RopeInvFreqBinding(const Napi::CallbackInfo& info) {
  const char* fn = "rope_inv_freq";
  const int64_t D = int_arg(info, 0, fn, "D", 2);
  if (D % 2 != 0) throw arg_error(info, fn, "head dim D must be even, got " + std::to_string(D));
  if (D > (1 << 20)) throw arg_error(info, fn, "head dim D = " + std::to_string(D) + " is too large");
  const double theta = num_arg(info, 1, fn, "theta");
  if (!(theta > 0.0) || !std::isfinite(theta)) throw arg_error(info, fn, "'theta' must be a positive finite number");
  Napi::Float32Array out = Napi::Float32Array::New(info.Env(), static_cast<size_t>(D / 2));
  std::vector<float> f(static_cast<size_t>(D / 2));
  rope_inv_freq(D, static_cast<float>(theta), f.data());
  std::copy(f.begin(), f.end(), out.Data());
  return out;
}

}  // namespace

// ---- bindings ----
// rope_forward(x, positions, out, B, T, H, D, theta, mode?, invFreq?, attentionScale?)
//   x [B, T, H, D] f32, positions [B*T] i32 -> out [B, T, H, D] f32 (written; out may be x)
// rope_backward(dout, positions, dx, B, T, H, D, theta, mode?, invFreq?, attentionScale?)
//   dout [B, T, H, D] f32 -> dx [B, T, H, D] f32 (WRITTEN: activation gradient; dx may be dout)
// mode: 0 auto, 1 cos/sin table over the position range, 2 per-token rows (tests, benchmarks)
// invFreq: Float32Array [D/2] replacing 1/theta^(2i/D) (theta is then unused
//   but still checked); attentionScale: multiplies cos and sin (default 1)
// rope_inv_freq(D, theta) -> Float32Array [D/2]
static void register_rope(Napi::Env env, Napi::Object exports) {
  exports.Set("rope_forward", Napi::Function::New(env, rope_binding<false>));
  exports.Set("rope_backward", Napi::Function::New(env, rope_binding<true>));
  exports.Set("hostmath_rope", Napi::Function::New(env, HostmathRopeBinding));
  exports.Set("rope_inv_freq", Napi::Function::New(env, RopeInvFreqBinding));
}
TB_REGISTER_OPS(rope, register_rope);

}  // namespace tb
