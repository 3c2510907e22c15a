// Embedding lookup, forward and backward (same semantics as cpu/embedding.cc).
// Compiled, not yet run on a GPU.
//
// forward: one thread per output element (coalesced along C).
// backward: deterministic and without atomics: blocks over the distinct ids
// (grouped on the host), threads over columns; each thread adds its column of
// the id's dout rows to dweight in token order, as the CPU does.
#include "../kernels/embedding_math.h"
#include "common.cuh"
#include "embedding.h"

namespace tb::cuda {
namespace {

template <typename W>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ ids, const W* __restrict__ weight, int64_t N,
                                         int64_t C, float* __restrict__ out) {
  const int64_t total = N * C;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / C, c = k - i * C;
    out[k] = math::embedding_value(weight, static_cast<int64_t>(ids[i]) * C + c);
  }
}

// block u (grid-stride) owns dweight row rows[u]; column tiles along blockIdx.y
__global__ void embedding_backward_kernel(const float* __restrict__ dout, int64_t U, const int32_t* __restrict__ rows,
                                          const int32_t* __restrict__ offsets, const int32_t* __restrict__ pos,
                                          int64_t C, float* __restrict__ dweight) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    const int32_t b = offsets[u], e = offsets[u + 1];
    float* dst = dweight + static_cast<int64_t>(rows[u]) * C + c;
    *dst = math::embedding_grad(*dst, dout, pos + b, e - b, C, c);
  }
}

constexpr int kThreads = 256;

}  // namespace

void embedding_forward(const int32_t* ids, const void* weight, bool w_bf16, int64_t N, int64_t C, float* out) {
  const int64_t total = N * C;
  if (total <= 0) return;
  unsigned grid = blocks_for(total, kThreads);
  if (grid > 65535u * 8) grid = 65535u * 8;
  if (w_bf16)
    embedding_forward_kernel<uint16_t><<<grid, kThreads, 0, stream()>>>(ids, static_cast<const uint16_t*>(weight), N, C, out);
  else
    embedding_forward_kernel<float><<<grid, kThreads, 0, stream()>>>(ids, static_cast<const float*>(weight), N, C, out);
  TB_LAUNCH_CHECK();
}

void embedding_backward(const float* dout, int64_t U, const int32_t* rows, const int32_t* offsets, const int32_t* pos,
                        int64_t C, float* dweight) {
  if (U <= 0 || C <= 0) return;
  const int threads = C >= kThreads ? kThreads : static_cast<int>((C + 31) / 32 * 32);
  const int64_t tiles = (C + threads - 1) / threads;
  if (tiles > 65535) throw DeviceError("embedding_backward: C is too large for the column tiling");
  const dim3 grid(static_cast<unsigned>(U < 65535 * 16 ? U : 65535 * 16), static_cast<unsigned>(tiles));
  embedding_backward_kernel<<<grid, threads, 0, stream()>>>(dout, U, rows, offsets, pos, C, dweight);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
