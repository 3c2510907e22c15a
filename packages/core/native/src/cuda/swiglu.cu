// SwiGLU, elementwise, fp32 (same semantics as cpu/swiglu.cc).
#include "../kernels/swiglu_math.h"
#include "common.cuh"
#include "swiglu.h"

namespace tb::cuda {
namespace {

// No __restrict__: out may be gate or up (the op's in-place form), and the
// backward's outputs may overwrite its inputs as on the CPU; each element is
// read before it is written, by the same thread.
__global__ void swiglu_forward_kernel(int64_t n, const float* gate, const float* up, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = math::swiglu_forward(gate[i], up[i]);
}

__global__ void swiglu_backward_kernel(int64_t n, const float* dout, const float* gate, const float* up, float* dgate,
                                       float* dup) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float dg, du;
    math::swiglu_backward(dout[i], gate[i], up[i], dg, du);
    dgate[i] = dg;
    dup[i] = du;
  }
}

constexpr int kThreads = 256;
unsigned grid(int64_t n) {
  unsigned b = blocks_for(n, kThreads);
  return b > 65535u * 8 ? 65535u * 8 : b;
}

}  // namespace

void swiglu_forward(int64_t n, const float* gate, const float* up, float* out) {
  if (n <= 0) return;
  swiglu_forward_kernel<<<grid(n), kThreads, 0, stream()>>>(n, gate, up, out);
  TB_LAUNCH_CHECK();
}

void swiglu_backward(int64_t n, const float* dout, const float* gate, const float* up, float* dgate, float* dup) {
  if (n <= 0) return;
  swiglu_backward_kernel<<<grid(n), kThreads, 0, stream()>>>(n, dout, gate, up, dgate, dup);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
