// Storage, dtypes, devices and the accounting allocator.
//
// Every byte the core allocates goes through tracked_alloc with a category and
// a device, so the memory report is read from the allocator, not estimated.
#pragma once
#include <napi.h>
#include <cstddef>
#include <cstdint>
#include <vector>

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

// Allocate `bytes` (64-byte aligned on the CPU) and count them under
// (device, category). Throws std::bad_alloc-derived tb::OutOfMemory on failure.
void* tracked_alloc(size_t bytes, Category cat, Device dev);
void tracked_free(void* p, size_t bytes, Category cat, Device dev);

struct OutOfMemory : std::bad_alloc {
  size_t bytes; Category cat; Device dev;
  OutOfMemory(size_t b, Category c, Device d) : bytes(b), cat(c), dev(d) {}
  const char* what() const noexcept override { return "tunebench: out of memory"; }
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
void zero_bytes(void* p, size_t bytes);

// Scratch memory for one op, counted as `workspace`, freed on scope exit.
template <typename T>
struct Workspace {
  T* ptr = nullptr;
  size_t n = 0;
  explicit Workspace(size_t count) : n(count) {
    if (n) ptr = static_cast<T*>(tracked_alloc(n * sizeof(T), Category::Workspace, Device::CPU));
  }
  ~Workspace() { if (ptr) tracked_free(ptr, n * sizeof(T), Category::Workspace, Device::CPU); }
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
  void free_bytes();
  void release();  // drop one reference
};

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  static bool IsTensor(Napi::Value v);
  static NativeTensor* From(Napi::Value v);  // nullptr if not a tensor
  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;
  Storage* storage() { return storage_; }

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value GetBytes(const Napi::CallbackInfo& info);
  Storage* storage_ = nullptr;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> views_;
  static Napi::FunctionReference* constructor_;
};

// bf16 <-> f32 (round to nearest even; NaN stays NaN)
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace tb
