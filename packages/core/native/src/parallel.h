// Threading over the CPU cores (OpenMP). Thread count: TUNEBENCH_THREADS, else
// every core.
#pragma once
#include <omp.h>
#include <cstdint>

namespace tb {
int num_threads();
void set_num_threads(int n);

// fn(begin, end) on contiguous chunks of [0, n), one chunk per thread.
template <typename F>
void parallel_chunks(int64_t n, F&& fn, int64_t min_per_thread = 1) {
  int nt = num_threads();
  if (min_per_thread < 1) min_per_thread = 1;
  int64_t max_t = (n + min_per_thread - 1) / min_per_thread;
  if (max_t < nt) nt = static_cast<int>(max_t < 1 ? 1 : max_t);
  if (nt <= 1) { if (n > 0) fn(int64_t(0), n); return; }
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t b = n * t / T, e = n * (t + 1) / T;
    if (b < e) fn(b, e);
  }
}

// fn(i) for each i in [0, n), dynamically scheduled (uneven work such as
// causal attention rows).
template <typename F>
void parallel_for_dynamic(int64_t n, F&& fn) {
  int nt = num_threads();
  if (nt <= 1 || n <= 1) { for (int64_t i = 0; i < n; i++) fn(i); return; }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t i = 0; i < n; i++) fn(i);
}
}  // namespace tb
