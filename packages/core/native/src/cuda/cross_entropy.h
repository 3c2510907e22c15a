// Cross-entropy fused with the LM-head logits on the GPU
// (cuda/cross_entropy.cu): device pointers, the core's stream. Same layouts
// and semantics as cpu/cross_entropy.cc; the binding checks the targets and
// lists the non-ignored tokens on the host.
#pragma once
#include <cstdint>

#include "../storage.h"

namespace tb::cuda {

// h [N, C] f32, w [V, C] f32|bf16, tgt [N] i32, idx [n_active] i32 the
// non-ignored token positions ascending (device; n_active >= 1; contiguous
// runs of idx are found by the caller: idx_host is the same list on the host)
// -> loss [N], lse [N] f32 written (0 for ignored tokens).
void cross_entropy_forward(const float* h, const void* w, DType wdt, const int32_t* tgt, int64_t N, int64_t C,
                           int64_t V, const int32_t* idx, const int32_t* idx_host, int64_t n_active, int64_t chunk,
                           float* loss, float* lse);

// -> dh [N, C] written (= 0 for ignored tokens), dw [V, C] accumulated (+=)
// when non-null. lse from the forward; scale = dLoss/dSum.
void cross_entropy_backward(const float* h, const void* w, DType wdt, const int32_t* tgt, const float* lse, int64_t N,
                            int64_t C, int64_t V, const int32_t* idx, const int32_t* idx_host, int64_t n_active,
                            int64_t chunk, float scale, float* dh, float* dw);

}  // namespace tb::cuda
