// Causal attention on the GPU (cuda/attention.cu): device pointers, the
// core's stream; the semantics of cpu/attention.cc and cpu/attention_decode.cc.
//
//   q, out, dout, dq [B, T, Hq, D]   k, v, dk, dv [B, T, Hkv, D]   lse [B, Hq, T]
//   seg [B, T] i32 segment ids (non-decreasing per row, validated by the
//   caller) or null.
//   attention_decode: q, out [B, Hq, D], kc, vc [B, Tmax, Hkv, D], keys 0..L-1.
//   window > 0: sliding window, query t sees keys t - window + 1 .. t (decode:
//   L - window .. L - 1); 0: none.
// out, lse, dq, dk, dv are written, not accumulated. D <= kMaxHeadDim.
#pragma once
#include <cstdint>

namespace tb::cuda {

constexpr int64_t kAttentionMaxHeadDim = 256;

void attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int64_t B, int64_t T,
                       int64_t Hq, int64_t Hkv, int64_t D, float scale, const int32_t* seg, int64_t window = 0);
void attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                        const float* lse, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, const int32_t* seg, int64_t window = 0);
void attention_decode(int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t Tmax, int64_t L, float scale,
                      const float* q, const float* kc, const float* vc, float* out, int64_t window = 0);

}  // namespace tb::cuda
