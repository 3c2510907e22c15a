// Embedding per-element math (CUDA kernels and hostmath test binding), the
// same as cpu/embedding.cc:
//   forward:  out[i, c] = widen(weight[ids[i], c])
//   backward: dweight[v, c] += dout[i, c] for every i with ids[i] == v, in
//             increasing i, one addition at a time (so the sum is the CPU's,
//             bit for bit)
// The backward walks the token positions of one id (`pos`, ascending), found
// on the host by grouping the ids, so no two threads write one element.
#pragma once
#include <cstdint>

#include "../hd.h"

namespace tb::math {

TB_HD float embedding_value(const float* w, int64_t k) { return w[k]; }
TB_HD float embedding_value(const uint16_t* w, int64_t k) { return bf16_to_f32(w[k]); }

// dweight[v, c] after adding column c of the dout rows listed in pos[0..npos)
TB_HD float embedding_grad(float acc, const float* dout, const int32_t* pos, int64_t npos, int64_t C, int64_t c) {
  for (int64_t k = 0; k < npos; k++) acc += dout[static_cast<int64_t>(pos[k]) * C + c];
  return acc;
}

}  // namespace tb::math
