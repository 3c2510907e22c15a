// Work sharing that never waits for a thread to arrive (decode GEMVs).
//
// An OpenMP parallel region ends at a barrier every thread must reach: when
// another process holds the core a team thread needs, the region waits for
// the scheduler to give that thread a turn, and two threads on two busy
// cores decode slower than one. share_chunks instead posts the job, wakes
// the helpers and starts on the chunks itself; each chunk is claimed by one
// atomic step, so a helper that wakes late finds nothing left and goes back
// to sleep, and the caller waits only for chunks a helper has claimed and
// not finished. With every helper descheduled the caller does the whole job,
// at one thread's speed.
#pragma once
#include <cstdint>
#include <type_traits>

namespace tb {

namespace share_detail {
using ChunkFn = void (*)(void* ctx, int64_t begin, int64_t end);
void run(int64_t n, int64_t chunk, int threads, ChunkFn fn, void* ctx);
}  // namespace share_detail

// fn(begin, end) over [0, n) in chunks of `chunk` items (the last shorter),
// on the caller and up to threads - 1 helper threads (helpers started on
// first use, sleeping between jobs). Runs on the caller alone when threads
// <= 1 or there is one chunk. Not reentrant from inside fn.
template <typename F>
void share_chunks(int64_t n, int64_t chunk, int threads, F&& fn) {
  if (n <= 0) return;
  if (chunk < 1) chunk = 1;
  if (threads <= 1 || n <= chunk) { fn(int64_t(0), n); return; }
  using Fn = std::remove_reference_t<F>;
  share_detail::run(n, chunk, threads, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); },
                    const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace tb
