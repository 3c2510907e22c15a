// Rotary position embedding on the GPU, fp32 (semantics of cpu/rope.cc; the
// per-element math is kernels/rope_math.h). Compiled, not yet run on a GPU.
//
//   x, out [BT, H, D] (D even, h = D / 2; out may be x), positions [BT] i32
//
// One thread per (token, i < h): it takes cos/sin of its angle once and
// rotates the pair (i, i + h) of every head; consecutive threads take
// consecutive i, so loads and stores are coalesced. inv_freq comes from the
// host (the binding's table: the CPU's powf for plain RoPE, or the scaled
// variant's table) and is passed by value (no copy, no allocation); scale
// (the attention factor of YaRN, else 1) multiplies cos and sin.
#include <string>

#include "../kernels/rope_math.h"
#include "common.cuh"
#include "rope.h"

namespace tb::cuda {
namespace {

struct InvFreq { float f[kRopeMaxHeadDim / 2]; };

template <bool kInverse>
__global__ void rope_kernel(int64_t BT, int64_t H, int64_t h, const int32_t* __restrict__ pos, InvFreq inv, float scale,
                            const float* x, float* out) {  // x may be out: no __restrict__
  const int64_t n = BT * h;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / h, i = idx - t * h;
    float c, s;
    math::rope_cos_sin(pos[t], inv.f[i], c, s, scale);
    const int64_t base = t * H * 2 * h + i;
    for (int64_t hd = 0; hd < H; hd++) {
      const int64_t e = base + hd * 2 * h;
      const float a = x[e], b = x[e + h];
      float oa, ob;
      if (kInverse) math::rope_rotate_inverse(a, b, c, s, oa, ob);
      else math::rope_rotate(a, b, c, s, oa, ob);
      out[e] = oa;
      out[e + h] = ob;
    }
  }
}

template <bool kInverse>
void rope_apply(int64_t BT, int64_t H, int64_t D, const int32_t* pos, const float* inv_freq, float scale, const float* x,
                float* out) {
  if (BT <= 0 || H <= 0 || D <= 0) return;
  if (D > kRopeMaxHeadDim || D % 2 != 0)
    throw DeviceError("rope on CUDA needs an even head dim up to " + std::to_string(kRopeMaxHeadDim) + ", got D = " +
                      std::to_string(D));
  const int64_t h = D / 2;
  InvFreq inv{};
  for (int64_t i = 0; i < h; i++) inv.f[i] = inv_freq[i];
  constexpr int kThreads = 256;
  unsigned grid = blocks_for(BT * h, kThreads);
  if (grid > 65535u * 8) grid = 65535u * 8;
  rope_kernel<kInverse><<<grid, kThreads, 0, stream()>>>(BT, H, h, pos, inv, scale, x, out);
  TB_LAUNCH_CHECK();
}

}  // namespace

void rope_forward(int64_t BT, int64_t H, int64_t D, const int32_t* pos, const float* inv_freq, float scale, const float* x,
                  float* out) {
  rope_apply<false>(BT, H, D, pos, inv_freq, scale, x, out);
}

void rope_backward(int64_t BT, int64_t H, int64_t D, const int32_t* pos, const float* inv_freq, float scale, const float* dout,
                   float* dx) {
  rope_apply<true>(BT, H, D, pos, inv_freq, scale, dout, dx);
}

}  // namespace tb::cuda
