// The CUDA runtime as the core sees it, napi-free. Defined in cuda/runtime.cu
// in a CUDA build and in cpu/no_cuda.cc otherwise, where every query answers
// "no device" and every allocation throws tb::NoBackend.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "block_cache.h"
#include "storage.h"

namespace tb::device {

// Whether this build contains the CUDA backend.
bool cuda_compiled();
// Number of usable CUDA devices (0 without a driver or a device; never throws).
int cuda_device_count();
// Why cuda_device_count() is 0, for error messages ("" when a device is there).
std::string cuda_unavailable_reason();

struct CudaInfo {
  std::string name;
  int major = 0, minor = 0, sms = 0;
  size_t total_bytes = 0;
  int driver_version = 0, runtime_version = 0;
};
CudaInfo cuda_info();  // device 0; throws NoBackend without one

// Which allocator device memory comes from: the stream-ordered pool, or
// cudaMalloc behind a BlockCache where the device has no memory pools (and
// why). Throws NoBackend without a device.
AllocatorChoice cuda_allocator();

// Raw device memory from the caching pool (or the fallback); bytes are
// counted by tracked_alloc.
void* cuda_alloc(size_t bytes);  // throws OutOfMemory (Category::Workspace placeholder; the caller rethrows)
void cuda_free(void* p, size_t bytes);
void cuda_zero(void* p, size_t bytes);

// Managed (unified) memory for paged optimizer state (cuda/managed.cu):
// tracked_alloc routes Category::OptimizerHost on Device::CUDA here. The
// allocation is refused with OutOfMemory when it exceeds the device's free
// memory (cudaMemGetInfo); freeing waits for the core's stream.
void* cuda_alloc_managed(size_t bytes);
void cuda_free_managed(void* p);
// Migrate managed bytes to `to` (Device::CUDA: device 0; Device::CPU: the
// host), queued on the core's stream.
void cuda_prefetch(const void* p, size_t bytes, Device to);

struct CudaMemory {
  size_t free_bytes = 0, total_bytes = 0;        // cudaMemGetInfo
  size_t reserved_bytes = 0, reserved_peak = 0;  // held by the pool (and its high-water mark)
};
CudaMemory cuda_memory();
void cuda_empty_cache();  // give the pool's unused blocks back to the driver
void cuda_reset_peak();

// Copies between any two devices (host memory is ordinary pageable memory).
// Returns once the bytes are at dst.
void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
// Host -> device bytes queued on the core's stream, without waiting for
// them: cudaMemcpyAsync from pageable host memory copies the source to a
// staging buffer before it returns, so src may be freed right after, and
// every kernel queued later sees the bytes.
void upload(void* dst, const void* src, size_t bytes);
// Wait for every kernel queued on the core's stream.
void synchronize();

}  // namespace tb::device
