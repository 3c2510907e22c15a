// Storage, dtypes, devices and the accounting allocator, napi-free so CUDA
// sources and kernel headers can include it (tensor.h adds the JS handle).
//
// Every byte the core allocates goes through tracked_alloc with a category and
// a device, so the memory report is read from the allocator, not estimated.
#pragma once
#include "block_cache.h"
#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#include "hd.h"

namespace tb {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2, U8 = 3, I32 = 4, I8 = 5, I64 = 6 };
constexpr int kNumDTypes = 7;
size_t dtype_size(DType d);
const char* dtype_name(DType d);

enum class Category : int {
  Frozen = 0, Trainable, Grad, Optimizer, OptimizerHost, Activation, Workspace
};
constexpr int kNumCategories = 7;
const char* category_name(Category c);

enum class Device : int { CPU = 0, CUDA = 1 };
constexpr int kNumDevices = 2;
const char* device_name(Device d);

// Allocate `bytes` (64-byte aligned on the CPU, 256 on the GPU) and count them
// under (device, category). Throws tb::OutOfMemory when the memory is not
// there, tb::NoBackend when the device has no backend in this build or no
// device is present.
void* tracked_alloc(size_t bytes, Category cat, Device dev);
void tracked_free(void* p, size_t bytes, Category cat, Device dev);

struct OutOfMemory : std::bad_alloc {
  size_t bytes; Category cat; Device dev;
  OutOfMemory(size_t b, Category c, Device d) : bytes(b), cat(c), dev(d) {}
  const char* what() const noexcept override { return "tunebench: out of memory"; }
};

// A device that this build or this machine cannot drive (not an
// out-of-memory condition: nothing was tried).
struct NoBackend : std::runtime_error {
  explicit NoBackend(const std::string& why) : std::runtime_error(why) {}
};

// A failed CUDA call or kernel launch, with the call and the CUDA error text.
struct DeviceError : std::runtime_error {
  explicit DeviceError(const std::string& why) : std::runtime_error(why) {}
};

struct MemoryCounters {
  int64_t live[kNumDevices][kNumCategories];
  int64_t peak[kNumDevices][kNumCategories];
  int64_t live_total[kNumDevices];
  int64_t peak_total[kNumDevices];
  int64_t allocations[kNumDevices];
};
MemoryCounters memory_counters();
void memory_reset_peak();
// CPU blocks freed and kept for reuse (not live, still held from the system)
size_t memory_cached_bytes();
void memory_empty_cache();
// Zero `bytes` at p on `dev` (CUDA: on the core's stream).
void zero_bytes(void* p, size_t bytes, Device dev = Device::CPU);

// Scratch memory for one op, counted as `workspace`, freed on scope exit.
// On the GPU the block is freed in stream order, so it can be released while
// kernels that use it are still queued.
template <typename T>
struct Workspace {
  T* ptr = nullptr;
  size_t n = 0;
  Device dev = Device::CPU;
  explicit Workspace(size_t count, Device d = Device::CPU) : n(count), dev(d) {
    if (n) ptr = static_cast<T*>(tracked_alloc(n * sizeof(T), Category::Workspace, dev));
  }
  ~Workspace() { if (ptr) tracked_free(ptr, n * sizeof(T), Category::Workspace, dev); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* data() { return ptr; }
  T& operator[](size_t i) { return ptr[i]; }
};

// Shared between a NativeTensor and the typed-array views handed to JS.
// The bytes are freed on dispose() (views are detached first) or, without
// dispose, when the last of {tensor handle, live views} is collected.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  size_t numel = 0;
  DType dtype = DType::F32;
  Category cat = Category::Workspace;
  Device dev = Device::CPU;
  int refs = 1;
  bool freed = false;
  // the device whose kernels run on these bytes (the CPU under fake CUDA)
  Device kernel_dev() const;
  void free_bytes();
  void release();  // drop one reference
};

// Test mode (TUNEBENCH_FAKE_CUDA=1, read once): CUDA tensors live in host
// memory, are counted under device cuda, and every binding runs its CPU
// kernel on them; cudaInfo() reports one "fake" device. It exercises the
// TypeScript device plumbing (models, trainers, the bench's cuda path) on a
// machine without a GPU. It never measures a GPU: records name the device
// "fake CUDA (host memory)".
bool fake_cuda();
inline Device Storage::kernel_dev() const { return fake_cuda() ? Device::CPU : dev; }
// The fake device's memory: TUNEBENCH_FAKE_CUDA_TOTAL_MB, else the machine's
// physical memory. Allocations beyond it are refused as out of memory.
size_t fake_cuda_total_bytes();
// The fake device answers cudaDevAttrMemoryPoolsSupported with
// TUNEBENCH_FAKE_CUDA_MEMPOOLS (default 1) and honours
// TUNEBENCH_CUDA_NO_MEMPOOL=1, and its allocator is chosen by the same
// rule as on a GPU (device::choose_allocator). Without the pool its
// allocations go through a device::BlockCache over host memory, the code the
// GPU's cudaMalloc fallback runs (cuda/runtime.cu), and the reserved bytes
// reported are that cache's.
const device::AllocatorChoice& fake_cuda_allocator();
device::BlockCache& fake_cuda_cache();

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace tb
