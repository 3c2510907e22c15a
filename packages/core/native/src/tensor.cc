#include "tensor.h"
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>
#include <sys/mman.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "device.h"
#include "parallel.h"

namespace tb {

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I8: return 1;
    case DType::I64: return 8;
  }
  return 0;
}
const char* dtype_name(DType d) {
  static const char* names[] = {"f32", "bf16", "f16", "u8", "i32", "i8", "i64"};
  int i = static_cast<int>(d);
  return (i >= 0 && i < kNumDTypes) ? names[i] : "?";
}
const char* category_name(Category c) {
  static const char* names[] = {"frozen", "trainable", "grad", "optimizer", "optimizer_host", "activation", "workspace"};
  int i = static_cast<int>(c);
  return (i >= 0 && i < kNumCategories) ? names[i] : "?";
}
const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

namespace {
std::mutex g_mu;
MemoryCounters g_mem{};
// Test hook: refuse allocations above this many bytes (0 = no limit), so the
// out-of-memory path can be exercised without exhausting the machine.
size_t g_alloc_limit = 0;
}  // namespace

void set_alloc_limit(size_t bytes) { g_alloc_limit = bytes; }

bool fake_cuda() {
  static const bool on = [] {
    const char* e = std::getenv("TUNEBENCH_FAKE_CUDA");
    return e && e[0] == '1';
  }();
  return on;
}

size_t fake_cuda_total_bytes() {
  static const size_t total = [] {
    const char* e = std::getenv("TUNEBENCH_FAKE_CUDA_TOTAL_MB");
    long mb = e ? std::atol(e) : 0;
    if (mb > 0) return static_cast<size_t>(mb) << 20;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : size_t(1) << 34;
  }();
  return total;
}

const device::AllocatorChoice& fake_cuda_allocator() {
  static const device::AllocatorChoice choice = [] {
    const char* off = std::getenv("TUNEBENCH_CUDA_NO_MEMPOOL");
    const char* pools = std::getenv("TUNEBENCH_FAKE_CUDA_MEMPOOLS");
    return device::choose_allocator(off && off[0] == '1', "", pools && pools[0] ? std::atoi(pools) : 1, "");
  }();
  return choice;
}

namespace {
// The fake device's "cudaMalloc": host memory, refused beyond the fake
// device's size. Called by the BlockCache under its own lock.
struct FakeCudaRaw final : device::RawAllocator {
  size_t held = 0;
  std::unordered_map<void*, size_t> sizes;
  void* alloc(size_t bytes) override {
    if (held + bytes > fake_cuda_total_bytes()) return nullptr;
    void* p = std::aligned_alloc(64, (bytes + 63) & ~size_t(63));
    if (!p) return nullptr;
    held += bytes;
    sizes[p] = bytes;
    return p;
  }
  void free(void* p) override {
    auto it = sizes.find(p);
    if (it == sizes.end()) return;
    held -= it->second;
    sizes.erase(it);
    std::free(p);
  }
  void sync() override {}  // the fake device's kernels ran already (CPU kernels, synchronous)
};
}  // namespace

device::BlockCache& fake_cuda_cache() {
  static FakeCudaRaw raw;
  static device::BlockCache cache(raw);
  return cache;
}

static void count(size_t bytes, Category cat, Device dev, int sign) {
  std::lock_guard<std::mutex> lock(g_mu);
  int d = static_cast<int>(dev), c = static_cast<int>(cat);
  int64_t b = static_cast<int64_t>(bytes) * sign;
  g_mem.live[d][c] += b;
  g_mem.live_total[d] += b;
  if (sign > 0) {
    g_mem.allocations[d] += 1;
    if (g_mem.live[d][c] > g_mem.peak[d][c]) g_mem.peak[d][c] = g_mem.live[d][c];
    if (g_mem.live_total[d] > g_mem.peak_total[d]) g_mem.peak_total[d] = g_mem.live_total[d];
  }
}

// ---- CPU block cache ----
// Large blocks are kept on per-size free lists when freed and handed out
// again for the same rounded size, as PyTorch's caching allocators do. A
// training step allocates the same activation shapes every time; returning
// them to malloc made the process's resident memory grow by ~130 MiB per
// step under Node (freed blocks not reused) and cost page faults on every
// step. The cache holds at most TUNEBENCH_ALLOC_CACHE_MB (default 4096) MiB;
// memory_empty_cache() returns it all. Live/peak figures count the bytes
// asked for; cached bytes are reported apart.
//
// glibc: by default malloc raises its mmap threshold to the size of every
// mmapped block freed (up to 32 MiB); from then on blocks of up to that size
// come from the brk heap, where small allocations of V8 and the addon sit
// between them, so freed space is seldom whole again and the heap only
// grows. Measured: evaluating a LoRA r=64 model of the tiny preset on the
// Brown validation set (591 batches) took the process from 166 to 3,044 MiB
// resident with 1 MiB of tensors live. Pinning the threshold at glibc's own
// default (128 KiB) keeps large blocks in their own mappings, returned to
// the system when freed (or kept in the cache above); measured on the same
// evaluation: 175 instead of 241 MiB after 10 batches, 208 MiB well into
// it (a shared 2-core machine, resident sizes only).
namespace {
#if defined(__GLIBC__)
[[maybe_unused]] const bool g_mmap_threshold_pinned = mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1;
#endif
constexpr size_t kCacheMin = 256 * 1024;  // smaller blocks go straight to malloc
constexpr size_t kCacheGranule = 64 * 1024;
std::unordered_map<size_t, std::vector<void*>> g_free_blocks;
size_t g_cached_bytes = 0;
size_t g_cache_limit = 0;

size_t cache_limit() {
  if (g_cache_limit == 0) {
    const char* env = std::getenv("TUNEBENCH_ALLOC_CACHE_MB");
    long mb = env ? std::atol(env) : 4096;
    g_cache_limit = mb > 0 ? static_cast<size_t>(mb) << 20 : 1;
  }
  return g_cache_limit;
}

// ---- huge-page blocks ----
// CPU blocks of at least kSlabMin bytes live in memory the kernel is asked to
// back with transparent huge pages (madvise MADV_HUGEPAGE; THP's "madvise"
// mode, the common default, gives them only to regions that ask). Streaming
// a weight through 4 KiB pages costs a TLB miss every 4 KiB, dearer still
// in a virtual machine: bench:decode's one-thread streaming read measured
// 17.9 GB/s on 4 KiB pages and 28.9-31.1 GB/s on huge pages on the 2-core
// EPYC VM (docs/benchmarks/2026-12-06-decode-roof.md).
// Blocks of kHugeMin and more get their own 2 MiB-aligned mapping; smaller
// ones are cut (first fit, freed ranges merged) from 32 MiB slabs, each
// unmapped when its last block is freed. Where mmap fails, malloc serves.
// TUNEBENCH_HUGE_PAGES=0 turns it off. Called under g_mu.
constexpr size_t kSlabMin = 64 * 1024;
constexpr size_t kHugeMin = 2 * 1024 * 1024;
constexpr size_t kHugeAlign = 2 * 1024 * 1024;
constexpr size_t kSlabBytes = 32 * 1024 * 1024;

bool huge_pages_on() {
  static const bool on = [] {
    const char* e = std::getenv("TUNEBENCH_HUGE_PAGES");
    return !(e && e[0] == '0');
  }();
  return on;
}

// an anonymous mapping of n bytes (a multiple of kHugeAlign) aligned to
// kHugeAlign, asked for huge pages; null when mmap fails
char* map_huge(size_t n) {
  void* raw = mmap(nullptr, n + kHugeAlign, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  char* r = static_cast<char*>(raw);
  char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(r) + kHugeAlign - 1) & ~uintptr_t(kHugeAlign - 1));
  if (a > r) munmap(r, static_cast<size_t>(a - r));
  const size_t tail = static_cast<size_t>((r + n + kHugeAlign) - (a + n));
  if (tail) munmap(a + n, tail);
#ifdef MADV_HUGEPAGE
  madvise(a, n, MADV_HUGEPAGE);
#endif
  return a;
}

struct Slab {
  char* base;
  std::map<size_t, size_t> free;  // offset -> length, disjoint, merged
  size_t used = 0;
};
std::map<char*, Slab> g_slabs;           // by base
std::map<char*, size_t> g_huge_blocks;   // own mappings: pointer -> mapped length

void* slab_alloc(size_t size) {
  size = (size + 63) & ~size_t(63);
  for (auto& [base, sl] : g_slabs) {
    for (auto it = sl.free.begin(); it != sl.free.end(); ++it) {
      if (it->second < size) continue;
      const size_t off = it->first, len = it->second;
      sl.free.erase(it);
      if (len > size) sl.free.emplace(off + size, len - size);
      sl.used += size;
      return base + off;
    }
  }
  char* base = map_huge(kSlabBytes);
  if (!base) return nullptr;
  Slab& sl = g_slabs[base];
  sl.base = base;
  sl.free.emplace(size, kSlabBytes - size);
  sl.used = size;
  return base;
}

// true when p was a slab block (now freed)
bool slab_free(void* p, size_t size) {
  if (g_slabs.empty()) return false;
  char* c = static_cast<char*>(p);
  auto it = g_slabs.upper_bound(c);
  if (it == g_slabs.begin()) return false;
  --it;
  Slab& sl = it->second;
  if (c >= sl.base + kSlabBytes) return false;
  size = (size + 63) & ~size_t(63);
  size_t off = static_cast<size_t>(c - sl.base), len = size;
  auto next = sl.free.lower_bound(off);
  if (next != sl.free.end() && next->first == off + len) { len += next->second; next = sl.free.erase(next); }
  if (next != sl.free.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) { off = prev->first; len += prev->second; sl.free.erase(prev); }
  }
  sl.free.emplace(off, len);
  sl.used -= size;
  if (sl.used == 0) {
    munmap(sl.base, kSlabBytes);
    g_slabs.erase(it);
  }
  return true;
}

void* cpu_block_alloc(size_t size) {
  if (huge_pages_on() && size >= kSlabMin) {
    if (size >= kHugeMin) {
      const size_t n = (size + kHugeAlign - 1) & ~(kHugeAlign - 1);
      if (char* a = map_huge(n)) { g_huge_blocks.emplace(a, n); return a; }
    } else if (void* q = slab_alloc(size)) {
      return q;
    }
  }
  return std::aligned_alloc(64, size);
}

void cpu_block_free(void* p, size_t size) {
  auto h = g_huge_blocks.find(static_cast<char*>(p));
  if (h != g_huge_blocks.end()) { munmap(h->first, h->second); g_huge_blocks.erase(h); return; }
  if (slab_free(p, size)) return;
  std::free(p);
}

size_t block_size(size_t bytes) {
  if (bytes < kCacheMin) return (bytes + 63) & ~size_t(63);
  return (bytes + kCacheGranule - 1) / kCacheGranule * kCacheGranule;
}

void release_cache_locked() {
  for (auto& [size, blocks] : g_free_blocks) {
    for (void* p : blocks) cpu_block_free(p, size);
  }
  g_free_blocks.clear();
  g_cached_bytes = 0;
}
}  // namespace

void* tracked_alloc(size_t bytes, Category cat, Device dev) {
  if (bytes == 0) return nullptr;
  if (g_alloc_limit && bytes > g_alloc_limit) throw OutOfMemory(bytes, cat, dev);
  if (dev == Device::CUDA && !fake_cuda()) {
    // the caching pool lives in cuda/runtime.cu; without a CUDA build or a
    // device this throws NoBackend, which is not an out-of-memory error
    void* d = nullptr;
    try {
      // paged optimizer state lives in managed memory (cuda/managed.cu)
      d = cat == Category::OptimizerHost ? device::cuda_alloc_managed(bytes) : device::cuda_alloc(bytes);
    } catch (const OutOfMemory&) {
      throw OutOfMemory(bytes, cat, dev);
    }
    count(bytes, cat, dev, +1);
    return d;
  }
  if (dev == Device::CUDA) {  // the fake device
    if (!fake_cuda_allocator().pool) {
      void* d = fake_cuda_cache().alloc(bytes);
      if (!d) throw OutOfMemory(bytes, cat, dev);
      count(bytes, cat, dev, +1);
      return d;
    }
    // with the pool: host blocks from the CPU cache below, up to the fake device's size
    int64_t live = 0;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      live = g_mem.live_total[static_cast<int>(Device::CUDA)];
    }
    if (static_cast<size_t>(live) + bytes > fake_cuda_total_bytes()) throw OutOfMemory(bytes, cat, dev);
  }
  const size_t size = block_size(bytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (size >= kCacheMin) {
      auto it = g_free_blocks.find(size);
      if (it != g_free_blocks.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        g_cached_bytes -= size;
      }
    }
  }
  if (!p) {
    std::lock_guard<std::mutex> lock(g_mu);
    p = cpu_block_alloc(size);
  }
  if (!p) {  // give the cache back to the system and try once more
    std::lock_guard<std::mutex> lock(g_mu);
    release_cache_locked();
    p = cpu_block_alloc(size);
  }
  if (!p) throw OutOfMemory(bytes, cat, dev);
  count(bytes, cat, dev, +1);
  return p;
}

void tracked_free(void* p, size_t bytes, Category cat, Device dev) {
  if (!p) return;
  if (dev == Device::CUDA && !fake_cuda()) {
    if (cat == Category::OptimizerHost) device::cuda_free_managed(p);
    else device::cuda_free(p, bytes);
    count(bytes, cat, dev, -1);
    return;
  }
  if (dev == Device::CUDA && !fake_cuda_allocator().pool) {
    fake_cuda_cache().free(p);
    count(bytes, cat, dev, -1);
    return;
  }
  const size_t size = block_size(bytes);
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (size >= kCacheMin && g_cached_bytes + size <= cache_limit()) {
      g_free_blocks[size].push_back(p);
      g_cached_bytes += size;
      cached = true;
    }
  }
  if (!cached) {
    std::lock_guard<std::mutex> lock(g_mu);
    cpu_block_free(p, size);
  }
  count(bytes, cat, dev, -1);
}

size_t memory_cached_bytes() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_cached_bytes;
}

void memory_empty_cache() {
  std::lock_guard<std::mutex> lock(g_mu);
  release_cache_locked();
#if defined(__GLIBC__)
  // free pages inside malloc's heaps go back to the system too (free() only
  // returns the top of the heap)
  malloc_trim(0);
#endif
}

// Zero a fresh block, threaded when it is large.
void zero_bytes(void* p, size_t bytes, Device dev) {
  if (dev == Device::CUDA && !fake_cuda()) { device::cuda_zero(p, bytes); return; }
  if (bytes < (size_t(4) << 20)) { std::memset(p, 0, bytes); return; }
  char* c = static_cast<char*>(p);
  parallel_chunks(static_cast<int64_t>(bytes), [&](int64_t b, int64_t e) { std::memset(c + b, 0, static_cast<size_t>(e - b)); }, int64_t(1) << 20);
}

MemoryCounters memory_counters() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_mem;
}

void memory_reset_peak() {
  std::lock_guard<std::mutex> lock(g_mu);
  for (int d = 0; d < kNumDevices; d++) {
    for (int c = 0; c < kNumCategories; c++) g_mem.peak[d][c] = g_mem.live[d][c];
    g_mem.peak_total[d] = g_mem.live_total[d];
  }
}

void Storage::free_bytes() {
  if (freed) return;
  tracked_free(data, bytes, cat, dev);
  data = nullptr;
  freed = true;
}

void Storage::release() {
  if (--refs == 0) {
    free_bytes();
    delete this;
  }
}

// ---- f16 conversion (IEEE half, round to nearest even) ----
float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal
      int e = -1;
      do { e++; mant <<= 1; } while ((mant & 0x400) == 0);
      u = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (a < 0x38800000u) {  // subnormal or zero in half
    if (a < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14 + (113 - e) ... shift so that result is in units of 2^-24
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((a - 0x38000000u) >> 13);
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
  return static_cast<uint16_t>(sign | r);
}

// ---- NativeTensor: new NativeTensor(numel, dtype, category, device) ----
Napi::FunctionReference* NativeTensor::constructor_ = nullptr;

Napi::Object NativeTensor::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function fn = DefineClass(env, "NativeTensor", {
    InstanceMethod<&NativeTensor::Dispose>("dispose"),
    InstanceMethod<&NativeTensor::View>("view"),
    InstanceAccessor<&NativeTensor::GetDisposed>("disposed"),
    InstanceAccessor<&NativeTensor::GetBytes>("bytes"),
  });
  constructor_ = new Napi::FunctionReference(Napi::Persistent(fn));
  exports.Set("NativeTensor", fn);
  return exports;
}

bool NativeTensor::IsTensor(Napi::Value v) {
  return v.IsObject() && constructor_ && v.As<Napi::Object>().InstanceOf(constructor_->Value());
}

NativeTensor* NativeTensor::From(Napi::Value v) {
  if (!IsTensor(v)) return nullptr;
  return Napi::ObjectWrap<NativeTensor>::Unwrap(v.As<Napi::Object>());
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber())
    throw Napi::TypeError::New(env, "NativeTensor(numel, dtype, category, device): expected four numbers");
  double numel = info[0].As<Napi::Number>().DoubleValue();
  int dt = info[1].As<Napi::Number>().Int32Value();
  int cat = info[2].As<Napi::Number>().Int32Value();
  int dev = info[3].As<Napi::Number>().Int32Value();
  if (!(numel >= 0) || numel != static_cast<double>(static_cast<uint64_t>(numel)) || numel > 9.0e15)
    throw Napi::RangeError::New(env, "NativeTensor: numel must be a non-negative integer");
  if (dt < 0 || dt >= kNumDTypes) throw Napi::RangeError::New(env, "NativeTensor: unknown dtype code " + std::to_string(dt));
  if (cat < 0 || cat >= kNumCategories) throw Napi::RangeError::New(env, "NativeTensor: unknown category code " + std::to_string(cat));
  if (dev < 0 || dev >= kNumDevices) throw Napi::RangeError::New(env, "NativeTensor: unknown device code " + std::to_string(dev));
  auto* s = new Storage();
  s->numel = static_cast<size_t>(numel);
  s->dtype = static_cast<DType>(dt);
  s->cat = static_cast<Category>(cat);
  s->dev = static_cast<Device>(dev);
  s->bytes = s->numel * dtype_size(s->dtype);
  try {
    s->data = tracked_alloc(s->bytes, s->cat, s->dev);
  } catch (const NoBackend& e) {
    delete s;
    Napi::Error err = Napi::Error::New(env, std::string("no CUDA backend: ") + e.what());
    err.Set("code", Napi::String::New(env, "TB_NO_CUDA"));
    err.Set("device", Napi::String::New(env, device_name(static_cast<Device>(dev))));
    throw err;
  } catch (const DeviceError& e) {
    delete s;
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, "TB_CUDA"));
    throw err;
  } catch (const OutOfMemory& e) {
    delete s;
    Napi::Error err = Napi::Error::New(env,
        std::string("out of memory: could not allocate ") + std::to_string(e.bytes) + " bytes of " +
        category_name(e.cat) + " on " + device_name(e.dev));
    err.Set("code", Napi::String::New(env, "TB_OOM"));
    err.Set("bytes", Napi::Number::New(env, static_cast<double>(e.bytes)));
    err.Set("category", Napi::String::New(env, category_name(e.cat)));
    err.Set("device", Napi::String::New(env, device_name(e.dev)));
    throw err;
  }
  // Fresh memory is zeroed: a kernel bug then shows as zeros, not as old data.
  try {
    if (s->bytes) zero_bytes(s->data, s->bytes, s->dev);
  } catch (const DeviceError& e) {
    s->free_bytes();
    delete s;
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, "TB_CUDA"));
    throw err;
  }
  storage_ = s;
}

NativeTensor::~NativeTensor() {
  if (storage_) storage_->release();
}

Napi::Value NativeTensor::Dispose(const Napi::CallbackInfo& info) {
  // Detach every live view first so no typed array can reach freed memory.
  for (auto& ref : views_) {
    if (ref.IsEmpty()) continue;
    Napi::ArrayBuffer ab = ref.Value();
    if (!ab.IsEmpty() && !ab.IsDetached()) ab.Detach();
  }
  views_.clear();
  if (storage_) storage_->free_bytes();
  return info.Env().Undefined();
}

Napi::Value NativeTensor::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (storage_->freed) throw Napi::Error::New(env, "tensor was disposed");
  if (storage_->dev != Device::CPU) throw Napi::Error::New(env, "view(): only CPU tensors can be viewed as typed arrays");
  if (storage_->bytes == 0) return Napi::ArrayBuffer::New(env, 0);
  storage_->refs++;
  Storage* s = storage_;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, s->data, s->bytes,
      [](Napi::Env, void*, Storage* hint) { hint->release(); }, s);
  // prune collected views, keep a weak reference to this one
  std::vector<Napi::Reference<Napi::ArrayBuffer>> kept;
  for (auto& ref : views_) {
    if (!ref.IsEmpty() && !ref.Value().IsEmpty()) kept.push_back(std::move(ref));
  }
  views_ = std::move(kept);
  views_.push_back(Napi::Weak(ab));
  return ab;
}

Napi::Value NativeTensor::GetDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), storage_->freed);
}

Napi::Value NativeTensor::GetBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(storage_->bytes));
}

}  // namespace tb
