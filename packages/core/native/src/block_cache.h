// The device allocator's fallback when the stream-ordered memory pool cannot
// be used (cuda/runtime.cu): a caching allocator over plain allocations
// (cudaMalloc/cudaFree on a GPU, host memory under the fake device), with the
// accounting the pool gives: "reserved" is every byte held from the raw
// allocator (blocks handed out plus blocks kept for reuse), its high-water
// mark restarts from the current reservation on reset_peak, and
// release_cached gives the kept blocks back. Freed blocks are kept on
// per-size free lists and handed out again for the same rounded size, as
// PyTorch's caching allocator does. Every kernel runs on the core's one
// stream, so a block freed while kernels that use it are still queued can be
// handed out again at once: whatever uses it next is queued behind them.
//
// Host C++ only (no CUDA, no napi), so the same code runs under the fake
// device (tensor.cc) and is compiled into runtime.cu.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace tb::device {

// The raw allocator under a BlockCache.
struct RawAllocator {
  virtual ~RawAllocator() = default;
  // nullptr when out of memory; anything else is the allocator's to throw
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  // wait until no queued work can still use a block (before giving one back)
  virtual void sync() = 0;
};

class BlockCache {
 public:
  explicit BlockCache(RawAllocator& raw) : raw_(raw) {}
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // Blocks under 1 MiB are rounded up to 512 bytes, larger ones to 2 MiB (the
  // pool's own granularity for large allocations).
  static size_t block_size(size_t bytes) {
    constexpr size_t kSmall = size_t(1) << 20, kSmallGranule = 512, kLargeGranule = size_t(2) << 20;
    if (bytes < kSmall) return (bytes + kSmallGranule - 1) / kSmallGranule * kSmallGranule;
    return (bytes + kLargeGranule - 1) / kLargeGranule * kLargeGranule;
  }

  // A block of at least `bytes`; nullptr when the raw allocator refuses it
  // even after every kept block was given back.
  void* alloc(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t size = block_size(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cached_ -= size;
      live_[p] = size;
      reuses_++;
      return p;
    }
    void* p = raw_.alloc(size);
    if (!p && cached_ > 0) {  // give the kept blocks back and try once more
      release_cached_locked();
      p = raw_.alloc(size);
    }
    if (!p) return nullptr;
    live_[p] = size;
    reserved_ += size;
    if (reserved_ > peak_) peak_ = reserved_;
    return p;
  }

  // Keeps the block for reuse. Returns false (and does nothing) for a pointer
  // this cache did not hand out.
  bool free(void* p) {
    if (!p) return true;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return false;
    free_[it->second].push_back(p);
    cached_ += it->second;
    live_.erase(it);
    return true;
  }

  // Gives every kept block back to the raw allocator.
  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  size_t reserved() const { std::lock_guard<std::mutex> lock(mu_); return reserved_; }
  size_t reserved_peak() const { std::lock_guard<std::mutex> lock(mu_); return peak_; }
  size_t cached() const { std::lock_guard<std::mutex> lock(mu_); return cached_; }
  // blocks handed out again from the free lists (not from the raw allocator)
  uint64_t reuses() const { std::lock_guard<std::mutex> lock(mu_); return reuses_; }
  // as the pool's cudaMemPoolAttrReservedMemHigh set to 0: restart from now
  void reset_peak() { std::lock_guard<std::mutex> lock(mu_); peak_ = reserved_; }

 private:
  void release_cached_locked() {
    if (cached_ == 0) return;
    raw_.sync();
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) raw_.free(p);
      reserved_ -= size * blocks.size();
    }
    free_.clear();
    cached_ = 0;
  }

  RawAllocator& raw_;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t reserved_ = 0, peak_ = 0, cached_ = 0;
  uint64_t reuses_ = 0;
};

// Which allocator the device gets, and why. The stream-ordered pool is used
// when the device supports memory pools (cudaDevAttrMemoryPoolsSupported) and
// the pool could be set up; otherwise plain allocations through a BlockCache.
struct AllocatorChoice {
  bool pool = true;
  std::string reason;  // why not the pool ("" when the pool is used)
};

// forced_off: TUNEBENCH_CUDA_NO_MEMPOOL=1; attribute_error: the error reading
// cudaDevAttrMemoryPoolsSupported ("" when read); pools_supported: its value;
// pool_setup_error: the error setting up the default pool ("" when it worked,
// or when it was not tried).
inline AllocatorChoice choose_allocator(bool forced_off, const std::string& attribute_error, int pools_supported,
                                        const std::string& pool_setup_error) {
  AllocatorChoice c;
  if (forced_off) c.reason = "TUNEBENCH_CUDA_NO_MEMPOOL=1";
  else if (!attribute_error.empty()) c.reason = "cudaDevAttrMemoryPoolsSupported could not be read: " + attribute_error;
  else if (pools_supported == 0) c.reason = "the device reports cudaDevAttrMemoryPoolsSupported = 0";
  else if (!pool_setup_error.empty()) c.reason = "the stream-ordered memory pool could not be set up: " + pool_setup_error;
  c.pool = c.reason.empty();
  return c;
}

// What cudaInfo() reports as the allocator.
inline std::string allocator_name(const AllocatorChoice& c) {
  return c.pool ? "stream-ordered memory pool (cudaMallocAsync)" : "cudaMalloc with a block cache (no memory pool: " + c.reason + ")";
}

}  // namespace tb::device
