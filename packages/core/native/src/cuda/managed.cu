// Paged optimizer state: CUDA managed (unified) memory, the pages of which
// the driver migrates between host and device. The core allocates it for
// tensors of category optimizer_host on device cuda (tracked_alloc counts the
// bytes there) and moves it explicitly with cuda_prefetch: to the GPU before
// the optimizer step, back to the host after it, so between steps the state
// occupies no device memory. Compiled, not yet run on a GPU.
//
// An allocation larger than the device's free memory (cudaMemGetInfo) is
// refused as out of memory: the state must fit on the device for the step.
#include <cuda_runtime.h>

#include "../device.h"
#include "common.cuh"

namespace tb::device {

void* cuda_alloc_managed(size_t bytes) {
  cuda::stream();  // initialises the device; throws NoBackend without one
  size_t free_b = 0, total_b = 0;
  TB_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (bytes > free_b) {
    // the pool's unused blocks count as used: give them back and look again
    cuda_empty_cache();
    TB_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (bytes > free_b) throw OutOfMemory(bytes, Category::OptimizerHost, Device::CUDA);
  }
  void* p = nullptr;
  cudaError_t err = cudaMallocManaged(&p, bytes, cudaMemAttachGlobal);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw OutOfMemory(bytes, Category::OptimizerHost, Device::CUDA);
  }
  TB_CUDA_CHECK(err);
  return p;
}

void cuda_free_managed(void* p) {
  if (!p) return;
  // kernels queued on the core's stream may still use p
  if (cudaStreamSynchronize(cuda::stream()) != cudaSuccess) cudaGetLastError();
  if (cudaFree(p) != cudaSuccess) cudaGetLastError();  // freeing never throws (called from destructors)
}

void cuda_prefetch(const void* p, size_t bytes, Device to) {
  if (!p || !bytes) return;
  cudaStream_t s = cuda::stream();
#if CUDART_VERSION >= 13000
  cudaMemLocation loc{};
  loc.type = to == Device::CUDA ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
  loc.id = 0;  // the core's device (ignored for the host)
  TB_CUDA_CHECK(cudaMemPrefetchAsync(p, bytes, loc, 0, s));
#else
  TB_CUDA_CHECK(cudaMemPrefetchAsync(p, bytes, to == Device::CUDA ? 0 : cudaCpuDeviceId, s));
#endif
}

}  // namespace tb::device
