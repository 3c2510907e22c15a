// Attention of one new query per sequence over a KV cache (generation).
//
//   q   [B, Hq, D]         the new token's query (rotated)
//   kc  [B, Tmax, Hkv, D]  cached keys (rotated), positions 0..L-1 valid
//   vc  [B, Tmax, Hkv, D]  cached values
//   out [B, Hq, D]         softmax(scale * q . k_j) weighted sum of v_j, j < L
// The new token's own key and value must already be in the cache (at L-1),
// so this equals the causal attention row of the full sequence.
#include <cmath>
#include <vector>

#include "args.h"
#include "parallel.h"
#include "registry.h"

namespace tb {

static void attention_decode(int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t Tmax, int64_t L, float scale,
                             const float* q, const float* kc, const float* vc, float* out) {
  const int64_t group = Hq / Hkv;
  parallel_for_dynamic(B * Hq, [&](int64_t bh) {
    const int64_t b = bh / Hq, h = bh % Hq, kvh = h / group;
    const float* qv = q + (b * Hq + h) * D;
    std::vector<float> s(static_cast<size_t>(L));
    float m = -INFINITY;
    for (int64_t j = 0; j < L; j++) {
      const float* k = kc + ((b * Tmax + j) * Hkv + kvh) * D;
      float dot = 0;
      for (int64_t d = 0; d < D; d++) dot += qv[d] * k[d];
      s[j] = dot * scale;
      m = s[j] > m ? s[j] : m;
    }
    double sum = 0;
    for (int64_t j = 0; j < L; j++) { s[j] = std::exp(s[j] - m); sum += s[j]; }
    float* o = out + (b * Hq + h) * D;
    for (int64_t d = 0; d < D; d++) o[d] = 0;
    for (int64_t j = 0; j < L; j++) {
      const float p = static_cast<float>(s[j] / sum);
      const float* v = vc + ((b * Tmax + j) * Hkv + kvh) * D;
      for (int64_t d = 0; d < D; d++) o[d] += p * v[d];
    }
  });
}

// attention_decode(q, kc, vc, out, B, Hq, Hkv, D, Tmax, L, scale)
static Napi::Value AttentionDecodeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "attention_decode";
  int64_t B = int_arg(info, 4, fn, "B", 1), Hq = int_arg(info, 5, fn, "Hq", 1), Hkv = int_arg(info, 6, fn, "Hkv", 1);
  int64_t D = int_arg(info, 7, fn, "D", 1), Tmax = int_arg(info, 8, fn, "Tmax", 1), L = int_arg(info, 9, fn, "L", 1);
  float scale = static_cast<float>(num_arg(info, 10, fn, "scale"));
  if (Hq % Hkv != 0) throw arg_error(info, fn, "Hq must be a multiple of Hkv");
  if (L > Tmax) throw arg_error(info, fn, "L exceeds the cache length");
  TensorArg q = tensor_arg(info, 0, fn, "q", B * Hq * D, DType::F32);
  TensorArg kc = tensor_arg(info, 1, fn, "kc", B * Tmax * Hkv * D, DType::F32);
  TensorArg vc = tensor_arg(info, 2, fn, "vc", B * Tmax * Hkv * D, DType::F32);
  TensorArg out = tensor_arg(info, 3, fn, "out", B * Hq * D, DType::F32);
  attention_decode(B, Hq, Hkv, D, Tmax, L, scale, q.f32(), kc.f32(), vc.f32(), out.f32());
  return info.Env().Undefined();
}

static void register_attention_decode(Napi::Env env, Napi::Object exports) {
  exports.Set("attention_decode", Napi::Function::New(env, AttentionDecodeBinding));
}
TB_REGISTER_OPS(attention_decode, register_attention_decode);

}  // namespace tb
