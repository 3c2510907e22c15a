// A host emulation of the CUDA execution model, for machines without a GPU:
// a kernel's own source compiles with g++ and runs block by block, every CUDA
// thread of a block as a fiber (its own stack; switched cooperatively on one
// OS thread), so __syncthreads and the warp collectives (__shfl*_sync,
// __syncwarp, __ballot/__any/__all_sync) block a fiber until every thread that
// must take part has arrived, exactly as the hardware requires.
//
// Generic, not tied to one kernel. What a kernel source needs:
//   - `kernel<<<grid, block, smem, stream>>>(args)` rewritten (by sed, one
//     line) to `::tbemu::launch_kernel(kernel, grid, block, smem, stream)(args)`;
//   - `extern __shared__ T name[];` rewritten to
//     `T* const name = ::tbemu::dynamic_shared<T>();`
//   (cuda_attention_emu.sh does both and checks that nothing was missed);
//   - this directory first on the include path (cuda_runtime.h and
//     cuda_bf16.h here stand in for the toolkit's), and g++ with
//     -fsanitize-sections=tbemu_shared so static __shared__ arrays get ASan
//     redzones.
// What it checks, beyond what AddressSanitizer sees in global memory:
//   - dynamic shared memory is a buffer of exactly the launch's size, static
//     __shared__ variables live in their own section; both are filled with
//     0xFF bytes (float NaN, int -1) before every block, so a read of an
//     element nobody wrote shows. Exception: GCC (12) ignores the section
//     attribute on a static local of a function template, so a static
//     __shared__ array in a template kernel is an ordinary static (ASan
//     redzones, but zero at first and then the previous block's values);
//   - __syncthreads must be reached by every thread of the block, at the same
//     call site; a thread that exits while others wait is reported;
//   - a warp collective must be entered by every lane of its mask with the
//     same operation and mask; lanes absent from a partial warp or a source
//     lane outside the mask are reported;
//   - launch configuration: block size, grid size, dynamic shared memory over
//     48 KiB without cudaFuncSetAttribute, and over kSharedLimit in all (the
//     smallest opt-in limit of sm_80, sm_89 and sm_90a: 99 KiB on sm_89);
//     the launch then fails the way CUDA does (cudaGetLastError);
//   - deadlock (no fiber can advance) is reported with each waiter's place.
// The order in which the threads of a block run between two sync points, and
// the order of the blocks, follow a schedule (rounds forward, reverse or
// seeded random, or one warp running ahead of the others as far as the sync
// points allow); running a kernel under several schedules exposes a missing
// barrier or an inter-block dependence as a changed result.
// Not modelled: timing, memory ordering between blocks (blocks run one after
// another), the precision of the device math functions (host libm is used),
// tensor cores, async copies, cooperative groups, textures.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TBEMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "cuda_emu.h: the fiber switch is written for x86-64"
#endif

// ---- CUDA keywords and built-in types ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__ static
#define __shared__ static __attribute__((section("tbemu_shared")))
#define __align__(n) alignas(n)

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };
typedef enum cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace tbemu {

constexpr size_t kStack = 256 * 1024;           // per CUDA thread (ASan frames are large)
constexpr size_t kSharedLimit = 99 * 1024;      // sm_89's opt-in maximum per block
constexpr size_t kSharedDefault = 48 * 1024;    // without cudaFuncSetAttribute

// kForward, kReverse, kRandom: rounds in which every thread that can advance
// runs once, in that order; kRunAhead, kRunAheadReverse: always the first
// (last) thread that can advance, so one warp runs as far as it can before the
// others start (the harshest test of a missing barrier).
enum Schedule { kForward = 0, kReverse = 1, kRandom = 2, kRunAhead = 3, kRunAheadReverse = 4 };
enum WaitKind { kRunning = 0, kBarrier = 1, kWarp = 2 };
enum Collective { kShfl = 1, kShflXor, kShflUp, kShflDown, kSyncwarp, kBallot, kAny, kAll };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;
  void* fake = nullptr;  // ASan's fake stack while switched out
  uint3 idx{};
  int linear = 0, warp = 0, lane = 0;
  bool done = false;
  int wait = kRunning, wait_line = 0;
  unsigned wait_gen = 0;  // the barrier's or warp's generation it waits to end
};

struct Warp {
  int arrived = 0, kind = 0;
  unsigned gen = 0, mask = 0, present = 0;
  uint64_t slot[32] = {}, snap[32] = {};
};

struct Barrier {
  int arrived = 0, line = 0, nthreads = 0, exited = 0;
  unsigned gen = 0;
};

struct State {
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier bar;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::function<void()>* body = nullptr;
  dim3 grid, block;
  uint3 block_idx{};
  char* dyn = nullptr;
  cudaError_t last_error = cudaSuccess;
  std::map<const void*, int> max_dyn_smem;
  int schedule = kForward;
  std::mt19937 rng{1};
  long errors = 0, launches = 0;
  bool block_failed = false;
};
inline State S;

inline void report(const char* fmt, ...) {
  S.errors++;
  if (S.errors > 20) return;
  std::fprintf(stderr, "cuda-emu: ");
  if (S.cur)
    std::fprintf(stderr, "block (%u,%u,%u) thread (%u,%u,%u): ", S.block_idx.x, S.block_idx.y, S.block_idx.z,
                 S.cur->idx.x, S.cur->idx.y, S.cur->idx.z);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
}

// Errors reported since the last call (a test case checks it is 0).
inline long take_errors() { long e = S.errors; S.errors = 0; return e; }
inline void set_schedule(int mode, unsigned seed = 1) { S.schedule = mode; S.rng.seed(seed); }

}  // namespace tbemu

// Saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores its pointer in *save, switches to `to` and restores
// the same from there (a fresh fiber's stack is laid out by init_fiber).
extern "C" void tbemu_switch(void** save, void* to);
asm(R"(
  .text
  .weak tbemu_switch
  .type tbemu_switch, @function
tbemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tbemu_switch, .-tbemu_switch
)");

// Static __shared__ variables, all kernels together (the linker's section bounds).
extern "C" char __start_tbemu_shared[] __attribute__((weak));
extern "C" char __stop_tbemu_shared[] __attribute__((weak));

namespace tbemu {

// From a fiber back to the scheduler; `dying` when the fiber has finished.
inline void to_scheduler(bool dying) {
  Fiber* f = S.cur;
#ifdef TBEMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake, S.sched_bottom, S.sched_size);
#else
  (void)dying;
#endif
  tbemu_switch(&f->sp, S.sched_sp);
#ifdef TBEMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake, &S.sched_bottom, &S.sched_size);
#endif
}

inline void fiber_main() {
#ifdef TBEMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &S.sched_bottom, &S.sched_size);
#endif
  (*S.body)();
  S.cur->done = true;
  S.bar.exited++;
  to_scheduler(true);
  std::abort();  // a finished fiber is never resumed
}

inline void resume(Fiber* f) {
  S.cur = f;
  void* fake = nullptr;
#ifdef TBEMU_ASAN
  __sanitizer_start_switch_fiber(&fake, f->stack, kStack);
#endif
  tbemu_switch(&S.sched_sp, f->sp);
#ifdef TBEMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  S.cur = nullptr;
}

inline void init_fiber(Fiber& f) {
#ifdef TBEMU_ASAN
  __asan_unpoison_memory_region(f.stack, kStack);
#endif
  uint64_t* sp = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(f.stack) + kStack) & ~uintptr_t(15));
  *--sp = 0;                                             // fiber_main's (absent) return address
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);       // tbemu_switch returns into fiber_main
  for (int i = 0; i < 6; i++) *--sp = 0;                 // rbp rbx r12 r13 r14 r15
  *--sp = 0x1F80u | (static_cast<uint64_t>(0x037Fu) << 32);  // default MXCSR, x87 control word
  f.sp = sp;
  f.done = false;
  f.wait = kRunning;
  f.fake = nullptr;
}

__attribute__((no_sanitize_address)) inline void fill_static_shared() {
  for (volatile char* p = __start_tbemu_shared; p < __stop_tbemu_shared; p++) *p = static_cast<char>(0xFF);
}
inline size_t static_shared_bytes() {
  return __start_tbemu_shared ? static_cast<size_t>(__stop_tbemu_shared - __start_tbemu_shared) : 0;
}

inline void describe_deadlock() {
  int at_bar = 0, at_warp = 0;
  for (auto& f : S.fibers) at_bar += f.wait == kBarrier, at_warp += f.wait == kWarp;
  report("deadlock in block (%u,%u,%u): %d threads at __syncthreads (line %d), %d in warp collectives, %d exited",
         S.block_idx.x, S.block_idx.y, S.block_idx.z, at_bar, S.bar.line, at_warp, S.bar.exited);
  for (auto& w : S.warps)
    if (w.arrived) report("  warp %d: %d lanes arrived (mask %08x, op %d)", static_cast<int>(&w - S.warps.data()),
                          w.arrived, w.mask, w.kind);
}

inline void run_block(uint3 bidx) {
  const int n = static_cast<int>(S.block.x * S.block.y * S.block.z);
  while (static_cast<int>(S.stacks.size()) < n) S.stacks.emplace_back(new char[kStack]);
  S.fibers.assign(n, Fiber{});
  S.warps.assign((n + 31) / 32, Warp{});
  S.bar = Barrier{};
  S.bar.nthreads = n;
  S.block_idx = bidx;
  for (int i = 0; i < n; i++) {
    Fiber& f = S.fibers[i];
    f.stack = S.stacks[i].get();
    f.linear = i;
    f.idx = {i % S.block.x, (i / S.block.x) % S.block.y, i / (S.block.x * S.block.y)};
    f.warp = i / 32;
    f.lane = i % 32;
    S.warps[f.warp].present |= 1u << f.lane;
    init_fiber(f);
  }
  const bool backwards = S.schedule == kReverse || S.schedule == kRunAheadReverse;
  const bool ahead = S.schedule == kRunAhead || S.schedule == kRunAheadReverse;
  std::vector<int> order(n);
  for (int i = 0; i < n; i++) order[i] = backwards ? n - 1 - i : i;
  auto runnable = [](const Fiber& f) {
    if (f.done) return false;
    if (f.wait == kBarrier) return S.bar.gen != f.wait_gen;
    if (f.wait == kWarp) return S.warps[f.warp].gen != f.wait_gen;
    return true;
  };
  for (;;) {
    if (S.schedule == kRandom) std::shuffle(order.begin(), order.end(), S.rng);
    bool ran = false;
    for (int i : order) {
      if (!runnable(S.fibers[i])) continue;
      resume(&S.fibers[i]);
      ran = true;
      if (ahead) break;  // start again from the first
    }
    if (ran) continue;
    bool all_done = true;
    for (auto& f : S.fibers) all_done = all_done && f.done;
    if (all_done) return;
    describe_deadlock();  // nobody can advance
    S.block_failed = true;
    return;  // the stuck fibers are abandoned (their stacks are reset on reuse)
  }
}

inline void run_grid(const void* key, dim3 grid, dim3 block, size_t smem, std::function<void()>& body) {
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  const auto attr = S.max_dyn_smem.find(key);
  const size_t dyn_limit = attr == S.max_dyn_smem.end() ? kSharedDefault : static_cast<size_t>(attr->second);
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    report("invalid launch configuration: grid (%u,%u,%u) block (%u,%u,%u)", grid.x, grid.y, grid.z, block.x, block.y,
           block.z);
    S.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem > dyn_limit || smem + static_shared_bytes() > kSharedLimit) {
    report("launch needs %zu bytes of dynamic shared memory (+%zu static), limit %zu (attribute) / %zu (device)", smem,
           static_shared_bytes(), dyn_limit, kSharedLimit);
    S.last_error = cudaErrorInvalidValue;
    return;
  }
  S.launches++;
  std::unique_ptr<char[]> dyn(new char[smem]);  // exactly the launch's size: ASan sees an overrun
  S.dyn = dyn.get();
  S.grid = grid;
  S.block = block;
  S.body = &body;
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) blocks.push_back({x, y, z});
  if (S.schedule == kReverse || S.schedule == kRunAheadReverse) std::reverse(blocks.begin(), blocks.end());
  if (S.schedule == kRandom) std::shuffle(blocks.begin(), blocks.end(), S.rng);
  S.block_failed = false;
  for (const uint3& b : blocks) {
    std::memset(S.dyn, 0xFF, smem);
    fill_static_shared();
    run_block(b);
    if (S.block_failed) { S.last_error = cudaErrorLaunchFailure; break; }
  }
  S.dyn = nullptr;
  S.body = nullptr;
}

template <class F>
struct Launcher {
  F f;
  dim3 grid, block;
  size_t smem;
  template <class... A>
  void operator()(A... a) const {
    std::function<void()> body = [&] { f(a...); };
    run_grid(reinterpret_cast<const void*>(f), grid, block, smem, body);
  }
};

template <class F>
Launcher<F> launch_kernel(F f, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Launcher<F>{f, grid, block, smem};
}

template <class T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(S.dyn);
}

// ---- sync points ----

inline void syncthreads(int line) {
  Fiber* f = S.cur;
  Barrier& b = S.bar;
  if (b.arrived == 0) b.line = line;
  else if (b.line != line) report("__syncthreads at line %d while other threads wait at line %d", line, b.line);
  b.arrived++;
  if (b.arrived == b.nthreads) {
    b.arrived = 0;
    b.gen++;
    return;
  }
  const unsigned gen = b.gen;
  f->wait = kBarrier;
  f->wait_line = line;
  f->wait_gen = gen;
  while (b.gen == gen) to_scheduler(false);
  f->wait = kRunning;
}

// Every lane of `mask` deposits v; returns the 32 deposits once all have.
inline const uint64_t* warp_collective(int kind, unsigned mask, uint64_t v) {
  Fiber* f = S.cur;
  Warp& w = S.warps[f->warp];
  if (mask & ~w.present) report("warp collective %d: mask %08x names lanes that do not exist (%08x)", kind, mask, w.present);
  if (!(mask >> f->lane & 1u)) report("warp collective %d: lane %d is not in its mask %08x", kind, f->lane, mask);
  if (w.arrived == 0) {
    w.kind = kind;
    w.mask = mask;
  } else if (w.kind != kind || w.mask != mask) {
    report("divergent warp collectives: op %d mask %08x while lanes wait in op %d mask %08x", kind, mask, w.kind, w.mask);
  }
  w.slot[f->lane] = v;
  w.arrived++;
  if (w.arrived == __builtin_popcount(w.mask & w.present)) {
    std::memcpy(w.snap, w.slot, sizeof w.snap);
    w.arrived = 0;
    w.gen++;
    return w.snap;
  }
  const unsigned gen = w.gen;
  f->wait = kWarp;
  f->wait_gen = gen;
  while (w.gen == gen) to_scheduler(false);
  f->wait = kRunning;
  return w.snap;  // not overwritten before this lane arrives again
}

template <class T>
uint64_t bits_of(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}

template <class T>
T shuffle(int kind, unsigned mask, T var, int arg, int width) {
  const uint64_t* s = warp_collective(kind, mask, bits_of(var));
  const int lane = S.cur->lane;
  if (width <= 0 || width > 32 || (width & (width - 1))) report("shuffle width %d is not a power of two <= 32", width);
  const int base = lane & ~(width - 1), off = lane & (width - 1);
  int src = lane;
  switch (kind) {
    case kShfl: src = base + (arg & (width - 1)); break;
    case kShflXor: src = lane ^ arg; if ((src & ~(width - 1)) != base) src = lane; break;
    case kShflUp: src = off >= arg ? lane - arg : lane; break;
    case kShflDown: src = off + arg < width ? lane + arg : lane; break;
  }
  if (src < 0 || src > 31 || !(mask >> src & 1u)) {
    report("shuffle reads lane %d, outside the mask %08x (undefined on the GPU)", src, mask);
    src = lane;
  }
  T r;
  std::memcpy(&r, &s[src], sizeof(T));
  return r;
}

inline unsigned ballot(int kind, unsigned mask, int pred) {
  const uint64_t* s = warp_collective(kind, mask, pred != 0);
  unsigned r = 0;
  for (int l = 0; l < 32; l++)
    if ((mask >> l & 1u) && s[l]) r |= 1u << l;
  return r;
}

// sequential execution makes every atomic trivially atomic
template <class T> T atomic_rmw(T* p, T v, int op) {
  const T old = *p;
  switch (op) {
    case 0: *p = old + v; break;
    case 1: *p = v > old ? v : old; break;
    case 2: *p = v < old ? v : old; break;
    case 3: *p = v; break;
  }
  return old;
}

}  // namespace tbemu

#define threadIdx (static_cast<const uint3&>(::tbemu::S.cur->idx))
#define blockIdx (static_cast<const uint3&>(::tbemu::S.block_idx))
#define blockDim (static_cast<const dim3&>(::tbemu::S.block))
#define gridDim (static_cast<const dim3&>(::tbemu::S.grid))
#define warpSize 32
#define __syncthreads() ::tbemu::syncthreads(__LINE__)

template <class T> T __shfl_sync(unsigned mask, T var, int src, int width = 32) { return tbemu::shuffle(tbemu::kShfl, mask, var, src, width); }
template <class T> T __shfl_xor_sync(unsigned mask, T var, int m, int width = 32) { return tbemu::shuffle(tbemu::kShflXor, mask, var, m, width); }
template <class T> T __shfl_up_sync(unsigned mask, T var, unsigned d, int width = 32) { return tbemu::shuffle(tbemu::kShflUp, mask, var, static_cast<int>(d), width); }
template <class T> T __shfl_down_sync(unsigned mask, T var, unsigned d, int width = 32) { return tbemu::shuffle(tbemu::kShflDown, mask, var, static_cast<int>(d), width); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { tbemu::warp_collective(tbemu::kSyncwarp, mask, 0); }
inline unsigned __ballot_sync(unsigned mask, int pred) { return tbemu::ballot(tbemu::kBallot, mask, pred); }
inline int __any_sync(unsigned mask, int pred) { return tbemu::ballot(tbemu::kAny, mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return tbemu::ballot(tbemu::kAll, mask, pred) == mask; }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T> T atomicAdd(T* p, T v) { return tbemu::atomic_rmw(p, v, 0); }
template <class T> T atomicMax(T* p, T v) { return tbemu::atomic_rmw(p, v, 1); }
template <class T> T atomicMin(T* p, T v) { return tbemu::atomic_rmw(p, v, 2); }
template <class T> T atomicExch(T* p, T v) { return tbemu::atomic_rmw(p, v, 3); }
template <class T> T atomicCAS(T* p, T cmp, T v) { const T old = *p; if (old == cmp) *p = v; return old; }

template <class T> T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }

// ---- the runtime calls kernels' launch code makes ----
template <class T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > tbemu::kSharedLimit) return cudaErrorInvalidValue;
    tbemu::S.max_dyn_smem[reinterpret_cast<const void*>(entry)] = value;
  }
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { cudaError_t e = tbemu::S.last_error; tbemu::S.last_error = cudaSuccess; return e; }
inline cudaError_t cudaPeekAtLastError() { return tbemu::S.last_error; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
