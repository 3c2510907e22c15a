// Attention of one new query per sequence over a KV cache (generation).
//
//   q   [B, Hq, D]         the new token's query (rotated)
//   kc  [B, Tmax, Hkv, D]  cached keys (rotated), positions 0..L-1 valid
//   vc  [B, Tmax, Hkv, D]  cached values
//   out [B, Hq, D]         softmax(scale * q . k_j) weighted sum of v_j, j < L
// The new token's own key and value must already be in the cache (at L-1),
// so this equals the causal attention row of the full sequence. With a
// sliding window W > 0 only keys max(0, L - W) .. L-1 are attended (the
// forward's window for the query at position L - 1).
// CUDA: cuda/attention.cu (attention_decode_kernel), one binding for both.
#include <cmath>
#include <string>
#include <vector>

#include "args.h"
#include "cuda/attention.h"
#include "kernels/attention_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {

static void attention_decode(int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t Tmax, int64_t L, float scale,
                             const float* q, const float* kc, const float* vc, float* out, int64_t window) {
  const int64_t group = Hq / Hkv, j0 = math::decode_first_key(L, window);
  parallel_for_dynamic(B * Hq, [&](int64_t bh) {
    const int64_t b = bh / Hq, h = bh % Hq, kvh = h / group;
    const float* qv = q + (b * Hq + h) * D;
    std::vector<float> s(static_cast<size_t>(L));
    float m = -INFINITY;
    for (int64_t j = j0; j < L; j++) {
      const float* k = kc + ((b * Tmax + j) * Hkv + kvh) * D;
      float dot = 0;
      for (int64_t d = 0; d < D; d++) dot += qv[d] * k[d];
      s[j] = dot * scale;
      m = s[j] > m ? s[j] : m;
    }
    double sum = 0;
    for (int64_t j = j0; j < L; j++) { s[j] = std::exp(s[j] - m); sum += s[j]; }
    float* o = out + (b * Hq + h) * D;
    for (int64_t d = 0; d < D; d++) o[d] = 0;
    for (int64_t j = j0; j < L; j++) {
      const float p = static_cast<float>(s[j] / sum);
      const float* v = vc + ((b * Tmax + j) * Hkv + kvh) * D;
      for (int64_t d = 0; d < D; d++) o[d] += p * v[d];
    }
  });
}

// The optional sliding window argument at i (absent or undefined: 0, none).
static int64_t decode_window_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  const int64_t w = int_arg(info, i, fn, "window");
  if (w >= (int64_t{1} << 30)) throw arg_error(info, fn, "'window' must be below 2^30");
  return w;
}

// attention_decode(q, kc, vc, out, B, Hq, Hkv, D, Tmax, L, scale, window?); on the device of its tensors
static Napi::Value AttentionDecodeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "attention_decode";
  int64_t B = int_arg(info, 4, fn, "B", 1), Hq = int_arg(info, 5, fn, "Hq", 1), Hkv = int_arg(info, 6, fn, "Hkv", 1);
  int64_t D = int_arg(info, 7, fn, "D", 1), Tmax = int_arg(info, 8, fn, "Tmax", 1), L = int_arg(info, 9, fn, "L", 1);
  float scale = static_cast<float>(num_arg(info, 10, fn, "scale"));
  const int64_t window = decode_window_arg(info, 11, fn);
  if (Hq % Hkv != 0) throw arg_error(info, fn, "Hq must be a multiple of Hkv");
  if (L > Tmax) throw arg_error(info, fn, "L exceeds the cache length");
  Dispatch d(info, fn);
  TensorArg q = d.tensor(0, "q", B * Hq * D, DType::F32);
  TensorArg kc = d.tensor(1, "kc", B * Tmax * Hkv * D, DType::F32);
  TensorArg vc = d.tensor(2, "vc", B * Tmax * Hkv * D, DType::F32);
  TensorArg out = d.tensor(3, "out", B * Hq * D, DType::F32);
  if (d.cuda() && D > cuda::kAttentionMaxHeadDim)
    throw arg_error(info, fn, "head dim D = " + std::to_string(D) + " exceeds " +
                    std::to_string(cuda::kAttentionMaxHeadDim) + ", the largest the CUDA kernels support");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::attention_decode(B, Hq, Hkv, D, Tmax, L, scale, q.f32(), kc.f32(), vc.f32(), out.f32(), window));
    else attention_decode(B, Hq, Hkv, D, Tmax, L, scale, q.f32(), kc.f32(), vc.f32(), out.f32(), window);
    return info.Env().Undefined();
  });
}

// hostmath_attention_decode(q, kc, vc, out, B, Hq, Hkv, D, Tmax, L, scale, chunk, splits, window?): the
// CUDA decode kernel's math (kernels/attention_math.h) on the CPU, for tests:
// the keys from math::decode_first_key in chunks of `chunk` dealt round-robin
// to `splits` partial online softmax states (the kernel's warps), which then merge.
static Napi::Value HostmathAttentionDecodeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_attention_decode";
  int64_t B = int_arg(info, 4, fn, "B", 1), Hq = int_arg(info, 5, fn, "Hq", 1), Hkv = int_arg(info, 6, fn, "Hkv", 1);
  int64_t D = int_arg(info, 7, fn, "D", 1), Tmax = int_arg(info, 8, fn, "Tmax", 1), L = int_arg(info, 9, fn, "L", 1);
  float scale = static_cast<float>(num_arg(info, 10, fn, "scale"));
  const int64_t chunk = int_arg(info, 11, fn, "chunk", 1), splits = int_arg(info, 12, fn, "splits", 1);
  const int64_t first = math::decode_first_key(L, decode_window_arg(info, 13, fn));
  if (Hq % Hkv != 0) throw arg_error(info, fn, "Hq must be a multiple of Hkv");
  if (L > Tmax) throw arg_error(info, fn, "L exceeds the cache length");
  TensorArg q = tensor_arg(info, 0, fn, "q", B * Hq * D, DType::F32);
  TensorArg kc = tensor_arg(info, 1, fn, "kc", B * Tmax * Hkv * D, DType::F32);
  TensorArg vc = tensor_arg(info, 2, fn, "vc", B * Tmax * Hkv * D, DType::F32);
  TensorArg out = tensor_arg(info, 3, fn, "out", B * Hq * D, DType::F32);
  const int64_t G = Hq / Hkv;
  std::vector<float> ms(static_cast<size_t>(splits)), ls(static_cast<size_t>(splits)),
      os(static_cast<size_t>(splits * D)), sc(static_cast<size_t>(chunk));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++) {
      const float* qv = q.f32() + (b * Hq + h) * D;
      const int64_t g = h / G;
      for (int64_t w = 0; w < splits; w++) {
        float m = -INFINITY, l = 0.0f;
        float* o = os.data() + w * D;
        for (int64_t c = 0; c < D; c++) o[c] = 0.0f;
        for (int64_t j0 = first + w * chunk; j0 < L; j0 += splits * chunk) {
          float cmax = -INFINITY;
          for (int64_t jj = 0; jj < chunk; jj++) {
            float s = -INFINITY;
            if (j0 + jj < L) {
              const float* kr = kc.f32() + ((b * Tmax + j0 + jj) * Hkv + g) * D;
              float dot = 0.0f;
              for (int64_t c = 0; c < D; c++) dot += qv[c] * kr[c];
              s = dot * scale;
            }
            sc[jj] = s;
            cmax = s > cmax ? s : cmax;
          }
          float mnew;
          const float ref = math::softmax_new_max(m, cmax, mnew);
          const float alpha = math::softmax_rescale(m, ref);
          float csum = 0.0f;
          for (int64_t c = 0; c < D; c++) o[c] *= alpha;
          for (int64_t jj = 0; jj < chunk && j0 + jj < L; jj++) {
            const float p = math::softmax_prob(sc[jj], ref);
            csum += p;
            const float* vr = vc.f32() + ((b * Tmax + j0 + jj) * Hkv + g) * D;
            for (int64_t c = 0; c < D; c++) o[c] += p * vr[c];
          }
          math::softmax_accumulate(l, alpha, csum);
          m = mnew;
        }
        ms[w] = m;
        ls[w] = l;
      }
      float* orow = out.f32() + (b * Hq + h) * D;
      for (int64_t c = 0; c < D; c++) {
        float mm = ms[0], ll = ls[0], oo = os[c];
        for (int64_t w = 1; w < splits; w++) {
          float mn, a1, a2;
          math::softmax_merge_factors(mm, ms[w], mn, a1, a2);
          ll = ll * a1 + ls[w] * a2;
          oo = oo * a1 + os[w * D + c] * a2;
          mm = mn;
        }
        orow[c] = oo * (1.0f / ll);
      }
    }
  return info.Env().Undefined();
}

static void register_attention_decode(Napi::Env env, Napi::Object exports) {
  exports.Set("attention_decode", Napi::Function::New(env, AttentionDecodeBinding));
  exports.Set("hostmath_attention_decode", Napi::Function::New(env, HostmathAttentionDecodeBinding));
}
TB_REGISTER_OPS(attention_decode, register_attention_decode);

}  // namespace tb
