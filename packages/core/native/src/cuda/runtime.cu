// The CUDA runtime of the core: device discovery, the caching allocator (a
// stream-ordered memory pool that keeps freed blocks for reuse, as PyTorch's
// caching allocator does), copies and synchronisation. Bytes asked for are
// counted per device and category by tracked_alloc (tensor.cc); the bytes the
// pool holds from the driver ("reserved") and its high-water mark come from
// the pool itself, and cudaMemGetInfo gives the device's own view, so the
// three can be cross-checked.
//
// A device without memory pools (cudaDevAttrMemoryPoolsSupported = 0), or one
// whose default pool cannot be set up, still works: allocations then go
// through cudaMalloc/cudaFree behind a BlockCache (block_cache.h), which keeps
// freed blocks for reuse and reports reserved bytes and their high-water mark
// the same way. TUNEBENCH_CUDA_NO_MEMPOOL=1 chooses that path on any device.
// cudaInfo() says which allocator is in use and why. Compiled, not yet run on
// a GPU.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

#include "../block_cache.h"
#include "../device.h"
#include "common.cuh"

namespace tb::cuda {

namespace {
std::once_flag g_init_once;
cudaError_t g_init_error = cudaSuccess;
int g_count = 0;
cudaStream_t g_stream = nullptr;
cudaMemPool_t g_pool = nullptr;  // null when the fallback is in use
device::AllocatorChoice g_choice;

// The fallback's raw allocator: cudaMalloc / cudaFree on device 0.
struct CudaMallocRaw final : device::RawAllocator {
  void* alloc(size_t bytes) override {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) { cudaGetLastError(); return nullptr; }
    TB_CUDA_CHECK(err);
    return p;
  }
  void free(void* p) override {
    if (cudaFree(p) != cudaSuccess) cudaGetLastError();  // called while freeing: never throws
  }
  void sync() override {
    if (cudaStreamSynchronize(g_stream) != cudaSuccess) cudaGetLastError();
  }
};
CudaMallocRaw g_raw;
device::BlockCache g_cache(g_raw);

std::string error_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")"; }

void init() {
  std::call_once(g_init_once, [] {
    g_init_error = cudaGetDeviceCount(&g_count);
    if (g_init_error != cudaSuccess || g_count == 0) { g_count = 0; return; }
    if ((g_init_error = cudaSetDevice(0)) != cudaSuccess) { g_count = 0; return; }
    if ((g_init_error = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking)) != cudaSuccess) { g_count = 0; return; }
    // the allocator: the stream-ordered pool where the device has one, else
    // cudaMalloc behind the block cache (never "no usable device")
    const char* off = std::getenv("TUNEBENCH_CUDA_NO_MEMPOOL");
    const bool forced_off = off && off[0] == '1';
    int pools = 0;
    std::string attr_error, setup_error;
    if (!forced_off) {
      cudaError_t e = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, 0);
      if (e != cudaSuccess) { cudaGetLastError(); attr_error = error_text(e); }
    }
    if (!forced_off && attr_error.empty() && pools != 0) {
      cudaError_t e = cudaDeviceGetDefaultMemPool(&g_pool, 0);
      if (e == cudaSuccess) {
        // keep every freed block in the pool (never trimmed at synchronisation)
        uint64_t keep = UINT64_MAX;
        e = cudaMemPoolSetAttribute(g_pool, cudaMemPoolAttrReleaseThreshold, &keep);
        if (e != cudaSuccess) setup_error = "cudaMemPoolSetAttribute(cudaMemPoolAttrReleaseThreshold): " + error_text(e);
      } else {
        setup_error = "cudaDeviceGetDefaultMemPool: " + error_text(e);
      }
      if (e != cudaSuccess) cudaGetLastError();
    }
    g_choice = device::choose_allocator(forced_off, attr_error, pools, setup_error);
    if (!g_choice.pool) g_pool = nullptr;
  });
}

void require_device() {
  init();
  if (g_count == 0) throw NoBackend(device::cuda_unavailable_reason());
}
}  // namespace

cudaStream_t stream() {
  require_device();
  return g_stream;
}

void check_failed(cudaError_t err, const char* what, const char* file, int line) {
  cudaGetLastError();  // clear a sticky launch error so the next call reports its own
  std::string f(file);
  size_t slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  throw DeviceError(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") in " + what +
                    " at " + f + ":" + std::to_string(line));
}

}  // namespace tb::cuda

namespace tb::device {

bool cuda_compiled() { return true; }

int cuda_device_count() {
  cuda::init();
  return cuda::g_count;
}

std::string cuda_unavailable_reason() {
  cuda::init();
  if (cuda::g_count > 0) return "";
  if (cuda::g_init_error == cudaSuccess) return "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)";
  return std::string("no usable CUDA device: ") + cudaGetErrorName(cuda::g_init_error) + " (" +
         cudaGetErrorString(cuda::g_init_error) + ")";
}

CudaInfo cuda_info() {
  cuda::require_device();
  cudaDeviceProp p{};
  TB_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  CudaInfo info;
  info.name = p.name;
  info.major = p.major;
  info.minor = p.minor;
  info.sms = p.multiProcessorCount;
  info.total_bytes = p.totalGlobalMem;
  cudaDriverGetVersion(&info.driver_version);
  cudaRuntimeGetVersion(&info.runtime_version);
  return info;
}

AllocatorChoice cuda_allocator() {
  cuda::require_device();
  return cuda::g_choice;
}

void* cuda_alloc(size_t bytes) {
  cudaStream_t s = cuda::stream();
  void* p = nullptr;
  if (!cuda::g_pool) {
    p = cuda::g_cache.alloc(bytes);  // gives its kept blocks back and retries before refusing
    if (!p) throw OutOfMemory(bytes, Category::Workspace, Device::CUDA);
    return p;
  }
  cudaError_t err = cudaMallocAsync(&p, bytes, s);
  if (err == cudaErrorMemoryAllocation) {
    // give the pool's unused blocks back and try once more
    cudaGetLastError();
    TB_CUDA_CHECK(cudaStreamSynchronize(s));
    TB_CUDA_CHECK(cudaMemPoolTrimTo(cuda::g_pool, 0));
    err = cudaMallocAsync(&p, bytes, s);
  }
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw OutOfMemory(bytes, Category::Workspace, Device::CUDA);
  }
  TB_CUDA_CHECK(err);
  return p;
}

void cuda_free(void* p, size_t) {
  if (!p) return;
  if (!cuda::g_pool) {  // kept for reuse; the next user is queued behind the kernels that use it now
    cuda::g_cache.free(p);
    return;
  }
  // stream-ordered: kernels already queued that use p finish first
  cudaError_t err = cudaFreeAsync(p, cuda::stream());
  if (err != cudaSuccess) cudaGetLastError();  // freeing never throws (called from destructors)
}

void cuda_zero(void* p, size_t bytes) {
  if (bytes) TB_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda::stream()));
}

CudaMemory cuda_memory() {
  CudaMemory m;
  if (cuda_device_count() == 0) return m;
  TB_CUDA_CHECK(cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
  if (!cuda::g_pool) {
    m.reserved_bytes = cuda::g_cache.reserved();
    m.reserved_peak = cuda::g_cache.reserved_peak();
    return m;
  }
  uint64_t v = 0;
  TB_CUDA_CHECK(cudaMemPoolGetAttribute(cuda::g_pool, cudaMemPoolAttrReservedMemCurrent, &v));
  m.reserved_bytes = v;
  TB_CUDA_CHECK(cudaMemPoolGetAttribute(cuda::g_pool, cudaMemPoolAttrReservedMemHigh, &v));
  m.reserved_peak = v;
  return m;
}

void cuda_empty_cache() {
  if (cuda_device_count() == 0) return;
  TB_CUDA_CHECK(cudaStreamSynchronize(cuda::g_stream));
  if (!cuda::g_pool) { cuda::g_cache.release_cached(); return; }
  TB_CUDA_CHECK(cudaMemPoolTrimTo(cuda::g_pool, 0));
}

void cuda_reset_peak() {
  if (cuda_device_count() == 0) return;
  if (!cuda::g_pool) { cuda::g_cache.reset_peak(); return; }
  uint64_t zero = 0;  // the high-water mark restarts from the current reservation
  TB_CUDA_CHECK(cudaMemPoolSetAttribute(cuda::g_pool, cudaMemPoolAttrReservedMemHigh, &zero));
}

void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (!bytes) return;
  if (dst_dev == Device::CPU && src_dev == Device::CPU) {
    __builtin_memcpy(dst, src, bytes);
    return;
  }
  cudaMemcpyKind kind = dst_dev == Device::CPU ? cudaMemcpyDeviceToHost
                      : src_dev == Device::CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice;
  cudaStream_t s = cuda::stream();
  TB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
  TB_CUDA_CHECK(cudaStreamSynchronize(s));
}

void upload(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  // pageable source: staged before the call returns (no stream synchronisation)
  TB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda::stream()));
}

void synchronize() {
  if (cuda_device_count() == 0) return;
  TB_CUDA_CHECK(cudaStreamSynchronize(cuda::g_stream));
}

}  // namespace tb::device
