// share.h: a caller that never waits for helpers to arrive.
#include "share.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace tb {
namespace share_detail {
namespace {

struct Job {
  uint64_t gen = 0;
  int64_t n = 0, chunk = 0, chunks = 0;
  ChunkFn fn = nullptr;
  void* ctx = nullptr;
  int helpers = 0;  // how many helpers this job wants
};

struct Pool {
  std::mutex mu;              // guards job, helper start
  std::condition_variable cv;
  Job job;
  // (gen << 32) | next chunk index: a claim succeeds only for the current job
  std::atomic<uint64_t> state{0};
  std::atomic<int64_t> done{0};
  std::vector<std::thread> threads;
  std::mutex run_mu;          // one job at a time

  void helper(int index) {
    uint64_t seen = 0;
    for (;;) {
      Job j;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return job.gen != seen && index < job.helpers; });
        j = job;
        seen = j.gen;
      }
      work(j);
    }
  }

  // claims and runs chunks of job j while it is current
  void work(const Job& j) {
    for (;;) {
      uint64_t s = state.load(std::memory_order_acquire);
      if ((s >> 32) != (j.gen & 0xffffffffu)) return;
      const int64_t i = static_cast<int64_t>(s & 0xffffffffu);
      if (i >= j.chunks) return;
      if (!state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
      const int64_t b = i * j.chunk, e = b + j.chunk < j.n ? b + j.chunk : j.n;
      j.fn(j.ctx, b, e);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: helpers sleep until the process exits
  return *p;
}

}  // namespace

void run(int64_t n, int64_t chunk, int threads, ChunkFn fn, void* ctx) {
  Pool& p = pool();
  std::lock_guard<std::mutex> one(p.run_mu);
  Job j;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    while (static_cast<int>(p.threads.size()) < threads - 1) {
      const int index = static_cast<int>(p.threads.size());
      p.threads.emplace_back([&p, index] { p.helper(index); });
      p.threads.back().detach();
    }
    j.gen = p.job.gen + 1;
    j.n = n;
    j.chunk = chunk;
    j.chunks = (n + chunk - 1) / chunk;
    j.fn = fn;
    j.ctx = ctx;
    j.helpers = threads - 1;
    p.done.store(0, std::memory_order_relaxed);
    p.state.store((j.gen & 0xffffffffu) << 32, std::memory_order_release);
    p.job = j;
  }
  p.cv.notify_all();
  p.work(j);
  // only chunks a helper claimed and has not finished remain
  while (p.done.load(std::memory_order_acquire) < j.chunks) std::this_thread::yield();
}

}  // namespace share_detail
}  // namespace tb
