// Shared by every CUDA source: the core's stream, checked calls and launches,
// launch-size helpers. Device code never includes napi.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cstdint>
#include <string>

#include "../storage.h"

namespace tb::cuda {

// The one stream every kernel, copy and stream-ordered allocation of the core
// runs on (created on first use on device 0).
cudaStream_t stream();

// Throws tb::DeviceError naming the call, the CUDA error and the place.
void check_failed(cudaError_t err, const char* what, const char* file, int line);
inline void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) check_failed(err, what, file, line);
}

inline unsigned blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 0x7fffffff ? 0x7fffffff : b));
}

}  // namespace tb::cuda

#define TB_CUDA_CHECK(call) ::tb::cuda::check((call), #call, __FILE__, __LINE__)
// After every kernel launch: reports a bad configuration at the launch site.
#define TB_LAUNCH_CHECK() ::tb::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
