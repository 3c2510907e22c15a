// The device API of a build without the CUDA backend: no device, and every
// CUDA allocation is refused as "no CUDA backend" (never as out of memory).
#ifndef TUNEBENCH_CUDA
#include <cstring>

#include "../device.h"

namespace tb::device {

namespace {
const char* kWhy = "this build has no CUDA backend (nvcc was not found when it was built, or TUNEBENCH_NO_CUDA was set)";
}

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_unavailable_reason() { return kWhy; }
CudaInfo cuda_info() { throw NoBackend(kWhy); }
AllocatorChoice cuda_allocator() { throw NoBackend(kWhy); }
void* cuda_alloc(size_t) { throw NoBackend(kWhy); }
void cuda_free(void*, size_t) {}
void cuda_zero(void*, size_t) { throw NoBackend(kWhy); }
void* cuda_alloc_managed(size_t) { throw NoBackend(kWhy); }
void cuda_free_managed(void*) {}
void cuda_prefetch(const void*, size_t, Device) { throw NoBackend(kWhy); }
CudaMemory cuda_memory() { return {}; }
void cuda_empty_cache() {}
void cuda_reset_peak() {}
void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (dst_dev != Device::CPU || src_dev != Device::CPU) throw NoBackend(kWhy);
  if (bytes) std::memcpy(dst, src, bytes);
}
void upload(void*, const void*, size_t) { throw NoBackend(kWhy); }
void synchronize() {}

}  // namespace tb::device
#endif
