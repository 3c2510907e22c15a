// Checks the CUDA emulator itself (cuda_emu.h): warp collective semantics,
// barriers under every schedule, NaN-filled shared memory, and that the
// mistakes it promises to report are reported. Run by cuda_attention_emu.sh
// before the attention cases. Kernels here call ::tbemu::launch_kernel
// directly (what the scripts rewrite `<<<...>>>` into).
#include "cuda_emu.h"

#include <cstdio>

namespace {

int fails = 0;
void expect(bool ok, const char* what) {
  if (!ok) fails++;
  std::printf("%s emu selftest: %s\n", ok ? "ok  " : "FAIL", what);
}

__global__ void shuffles(int* out, int width) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int* o = out + (w * 32 + lane) * 7;
  const int v = 1000 * w + lane;
  o[0] = __shfl_sync(0xffffffffu, v, 5, width);
  o[1] = __shfl_xor_sync(0xffffffffu, v, 3, width);
  o[2] = __shfl_up_sync(0xffffffffu, v, 2, width);
  o[3] = __shfl_down_sync(0xffffffffu, v, 2, width);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __any_sync(0xffffffffu, lane == 7);
  o[6] = __all_sync(0xffffffffu, lane < 31);
}

void check_shuffles() {
  for (int width : {32, 8}) {
    std::vector<int> out(64 * 7);
    ::tbemu::launch_kernel(shuffles, 1, 64)(out.data(), width);
    bool ok = cudaGetLastError() == cudaSuccess;
    unsigned ballot = 0;
    for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
    for (int w = 0; w < 2; w++)
      for (int lane = 0; lane < 32; lane++) {
        const int* o = &out[(w * 32 + lane) * 7];
        const int base = lane & ~(width - 1), off = lane & (width - 1), v0 = 1000 * w;
        ok = ok && o[0] == v0 + base + (5 & (width - 1));
        ok = ok && o[1] == v0 + (lane ^ 3);
        ok = ok && o[2] == v0 + (off >= 2 ? lane - 2 : lane);
        ok = ok && o[3] == v0 + (off + 2 < width ? lane + 2 : lane);
        ok = ok && static_cast<unsigned>(o[4]) == ballot && o[5] == 1 && o[6] == 0;
      }
    expect(ok && tbemu::take_errors() == 0, width == 32 ? "shfl/xor/up/down/ballot/any/all, width 32" : "shuffles, width 8");
  }
}

// block sum through shared memory: correct under every schedule
__global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float part[8];
  float s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[blockIdx.x * n + i];
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0;
    for (unsigned w = 0; w < blockDim.x / 32; w++) t += part[w];
    out[blockIdx.x] = t;
  }
}

void check_block_sum() {
  for (int sched = 0; sched <= tbemu::kRunAheadReverse; sched++) {
    tbemu::set_schedule(sched, 7);
    std::vector<float> x(3 * 1000), out(3, NAN);
    for (size_t i = 0; i < x.size(); i++) x[i] = static_cast<float>(i % 17);
    ::tbemu::launch_kernel(block_sum, 3, 256)(x.data(), out.data(), 1000);
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int b = 0; b < 3; b++) {
      double ref = 0;
      for (int i = 0; i < 1000; i++) ref += x[b * 1000 + i];
      ok = ok && out[b] == static_cast<float>(ref);
    }
    char what[80];
    std::snprintf(what, sizeof what, "block sum with __syncthreads, schedule %d", sched);
    expect(ok && tbemu::take_errors() == 0, what);
  }
  tbemu::set_schedule(tbemu::kForward);
}

// a missing barrier: thread 0 reads what warp 1 writes
__global__ void missing_barrier(float* out) {
  float* buf = ::tbemu::dynamic_shared<float>();
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (threadIdx.x == 0) out[0] = buf[63];
}

__global__ void unwritten_shared(float* out) {
  __shared__ float s[4];
  float* d = ::tbemu::dynamic_shared<float>();
  if (threadIdx.x == 0) s[0] = d[0] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x] + d[threadIdx.x];
}

__global__ void divergent_barrier() {
  if (threadIdx.x < 64) __syncthreads();
}

__global__ void two_barriers() {
  if (threadIdx.x < 64) __syncthreads();
  else __syncthreads();
}

__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0);
}

__global__ void shuffle_partial_warp(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }

__global__ void big_shared(float* out) { out[0] = ::tbemu::dynamic_shared<float>()[0]; }

void check_reports() {
  std::vector<float> out(64, 0.0f);
  tbemu::set_schedule(tbemu::kRunAheadReverse);  // warp 1 runs first: buf[63] is written
  ::tbemu::launch_kernel(missing_barrier, 1, 64, 64 * 4)(out.data());
  const float behind = out[0];
  tbemu::set_schedule(tbemu::kRunAhead);  // warp 0 first: buf[63] is still NaN
  ::tbemu::launch_kernel(missing_barrier, 1, 64, 64 * 4)(out.data());
  expect(behind == 63.0f && std::isnan(out[0]), "a missing barrier changes the result between schedules");
  tbemu::set_schedule(tbemu::kForward);

  ::tbemu::launch_kernel(unwritten_shared, 1, 4, 16)(out.data());
  expect(out[0] == 2.0f && std::isnan(out[1]) && std::isnan(out[3]) && tbemu::take_errors() == 0,
         "unwritten static and dynamic shared memory reads NaN");

  ::tbemu::launch_kernel(divergent_barrier, 1, 128)();
  expect(tbemu::take_errors() > 0 && cudaGetLastError() == cudaErrorLaunchFailure, "__syncthreads not reached by all threads is reported");
  ::tbemu::launch_kernel(two_barriers, 1, 128)();
  expect(tbemu::take_errors() > 0, "threads at two different __syncthreads are reported");
  cudaGetLastError();
  ::tbemu::launch_kernel(shuffle_after_exit, 1, 64)(out.data());
  expect(tbemu::take_errors() > 0 && cudaGetLastError() == cudaErrorLaunchFailure, "a full-mask shuffle after a lane exited is reported");
  ::tbemu::launch_kernel(shuffle_partial_warp, 1, 48)(out.data());
  expect(tbemu::take_errors() > 0, "a full-mask shuffle in a partial warp is reported");
  cudaGetLastError();

  ::tbemu::launch_kernel(big_shared, 1, 32, 64 * 1024)(out.data());
  expect(cudaGetLastError() == cudaErrorInvalidValue && tbemu::take_errors() > 0, "64 KiB of dynamic shared memory without the attribute fails");
  cudaFuncSetAttribute(big_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  ::tbemu::launch_kernel(big_shared, 1, 32, 64 * 1024)(out.data());
  expect(cudaGetLastError() == cudaSuccess && tbemu::take_errors() == 0, "... and launches with it");
  ::tbemu::launch_kernel(big_shared, 1, 2048)(out.data());
  expect(cudaGetLastError() == cudaErrorInvalidConfiguration && tbemu::take_errors() > 0, "2048 threads per block fail");
}

}  // namespace

int main() {
  check_shuffles();
  check_block_sum();
  check_reports();
  std::printf("emu selftest: %d failed\n", fails);
  return fails != 0;
}
