// Embedding on the GPU (cuda/embedding.cu): device pointers, the core's
// stream. Same layouts and semantics as cpu/embedding.cc; ids must already be
// validated (the binding checks them on the host).
#pragma once
#include <cstdint>

namespace tb::cuda {
// ids [N] i32, weight [V, C] f32|bf16 (w_bf16) -> out [N, C] f32 (written)
void embedding_forward(const int32_t* ids, const void* weight, bool w_bf16, int64_t N, int64_t C, float* out);
// dout [N, C] f32 -> dweight [V, C] f32 (ACCUMULATED). The ids grouped by
// value (host-built, on the device): rows [U] the distinct ids, offsets [U + 1],
// pos [N] the token positions of rows[u] at pos[offsets[u] .. offsets[u + 1]),
// ascending.
void embedding_backward(const float* dout, int64_t U, const int32_t* rows, const int32_t* offsets, const int32_t* pos,
                        int64_t C, float* dweight);
}  // namespace tb::cuda
