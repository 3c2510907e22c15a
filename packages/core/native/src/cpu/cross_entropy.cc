// Cross-entropy fused with the LM-head logits, forward and backward.
//
//   h       [N, C] f32      final hidden states, one row per token
//   w       [V, C] f32|bf16 LM head (or tied embedding), row-major: logits = h · w^T
//   targets [N]    i32      class per token; == ignore_index -> token skipped
//   loss    [N]    f32      lse - logit[target]; 0 for ignored tokens      (forward, written)
//   lse     [N]    f32      log-sum-exp of the logits row; 0 for ignored   (forward, written)
//   dh      [N, C] f32      activation gradient, WRITTEN (=); 0 rows for ignored tokens
//   dw      [V, C] f32      parameter gradient, ACCUMULATED (+=); optional
//
// The N x V logits are never materialised: non-ignored tokens are taken in
// chunks of `chunk` tokens, and one chunk x V block of logits lives in a
// workspace at a time. Ignored tokens cost nothing (their h rows are never
// multiplied); when a chunk's tokens are not contiguous in h, their rows are
// gathered into a chunk x C workspace first.
//
// Backward recomputes each chunk's logits, turns them in place into
//   dlogits = (softmax - onehot(target)) * scale,   softmax = exp(logits - lse)
// and then  dh_chunk = dlogits · w   and   dw += dlogits^T · h_chunk.
// `scale` is dLoss/dSum (1/count for a mean); the kernel does not normalise.
// Chunks run one after another and each GEMM threads itself, so dw is never
// written by two threads at once and no per-thread V x C partial is needed.
// On CUDA (cuda/cross_entropy.cu) the same chunks and GEMMs run on the GPU;
// the binding checks the targets and lists the active tokens on the host.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include <memory>
#include <vector>

#include "args.h"
#include "cuda/cross_entropy.h"
#include "device.h"
#include "fast_exp.h"
#include "gemm.h"
#include "kernels/cross_entropy_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {
namespace {

// log-sum-exp of one logits row.
inline float row_lse(const float* row, int64_t V) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; j++) m = row[j] > m ? row[j] : m;  // (std::max does not vectorise here)
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < V; j++) s += fast_expf(row[j] - m);
  return m + std::log(s);
}

// Indices of the non-ignored tokens, in order; returns their count.
int64_t active_tokens(const int32_t* tgt, int64_t N, int32_t ignore, int64_t* idx) {
  int64_t n = 0;
  for (int64_t i = 0; i < N; i++)
    if (tgt[i] != ignore) idx[n++] = i;
  return n;
}

// One chunk of active tokens: rows idx[0..m) of h. Returns a pointer to an
// m x C row-major block: h itself when the rows are contiguous, else the
// gathered copy in `buf`.
const float* chunk_rows(const float* h, int64_t C, const int64_t* idx, int64_t m, float* buf, bool* contiguous) {
  *contiguous = idx[m - 1] - idx[0] == m - 1;
  if (*contiguous) return h + idx[0] * C;
  parallel_chunks(m, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) std::memcpy(buf + r * C, h + idx[r] * C, sizeof(float) * C);
  }, 16);
  return buf;
}

// Chunk size actually used: at most the active token count, and small enough
// that chunk x V elements cannot overflow.
inline int64_t clamp_chunk(int64_t chunk, int64_t n_active, int64_t V) {
  return std::max<int64_t>(1, std::min({chunk, n_active, (int64_t(1) << 52) / V}));
}

// Rows per thread for the per-row softmax work (V exps a row).
inline int64_t rows_per_thread(int64_t V) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(V, 1)); }

}  // namespace

// Forward. Returns the sum of the losses of non-ignored tokens (double) and
// their count via *count. Targets must already be validated.
double cross_entropy_forward(const float* h, const void* w, DType wdt, const int32_t* tgt, int64_t N, int64_t C,
                             int64_t V, int32_t ignore, int64_t chunk, float* loss, float* lse, int64_t* count) {
  std::memset(loss, 0, sizeof(float) * N);
  std::memset(lse, 0, sizeof(float) * N);
  Workspace<int64_t> idx(static_cast<size_t>(N));
  const int64_t n_active = active_tokens(tgt, N, ignore, idx.data());
  *count = n_active;
  if (n_active == 0) return 0.0;
  chunk = clamp_chunk(chunk, n_active, V);
  Workspace<float> logits(static_cast<size_t>(chunk * V));
  Workspace<float> hbuf(n_active < N ? static_cast<size_t>(chunk * C) : 0);
  const MatRef W{w, wdt, C, true};
  for (int64_t c0 = 0; c0 < n_active; c0 += chunk) {
    const int64_t m = std::min(chunk, n_active - c0);
    const int64_t* ix = idx.data() + c0;
    bool contiguous;
    const float* hc = chunk_rows(h, C, ix, m, hbuf.data(), &contiguous);
    gemm(m, V, C, 1.0f, MatRef{hc, DType::F32, C, false}, W, 0.0f, logits.data(), V);
    parallel_chunks(m, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) {
        const float* row = logits.data() + r * V;
        const int64_t i = ix[r];
        const float l = row_lse(row, V);
        lse[i] = l;
        loss[i] = l - row[tgt[i]];
      }
    }, rows_per_thread(V));
  }
  double sum = 0.0;
  for (int64_t k = 0; k < n_active; k++) sum += static_cast<double>(loss[idx[k]]);
  return sum;
}

// Backward: dh written (=), dw accumulated (+=) when non-null.
void cross_entropy_backward(const float* h, const void* w, DType wdt, const int32_t* tgt, const float* lse, int64_t N,
                            int64_t C, int64_t V, int32_t ignore, int64_t chunk, float scale, float* dh, float* dw) {
  Workspace<int64_t> idx(static_cast<size_t>(N));
  const int64_t n_active = active_tokens(tgt, N, ignore, idx.data());
  if (n_active < N) {
    for (int64_t i = 0; i < N; i++)
      if (tgt[i] == ignore) std::memset(dh + i * C, 0, sizeof(float) * C);
  }
  if (n_active == 0) return;
  chunk = clamp_chunk(chunk, n_active, V);
  Workspace<float> logits(static_cast<size_t>(chunk * V));
  Workspace<float> hbuf(n_active < N ? static_cast<size_t>(chunk * C) : 0);
  Workspace<float> dhbuf(n_active < N ? static_cast<size_t>(chunk * C) : 0);
  for (int64_t c0 = 0; c0 < n_active; c0 += chunk) {
    const int64_t m = std::min(chunk, n_active - c0);
    const int64_t* ix = idx.data() + c0;
    bool contiguous;
    const float* hc = chunk_rows(h, C, ix, m, hbuf.data(), &contiguous);
    float* lg = logits.data();
    gemm(m, V, C, 1.0f, MatRef{hc, DType::F32, C, false}, MatRef{w, wdt, C, true}, 0.0f, lg, V);
    parallel_chunks(m, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) {
        float* row = lg + r * V;
        const int64_t i = ix[r];
        const float l = lse[i];
#pragma omp simd
        for (int64_t j = 0; j < V; j++) row[j] = fast_expf(row[j] - l) * scale;
        row[tgt[i]] -= scale;
      }
    }, rows_per_thread(V));
    // dh_chunk [m, C] = dlogits [m, V] · w [V, C]
    float* dhc = contiguous ? dh + ix[0] * C : dhbuf.data();
    gemm(m, C, V, 1.0f, MatRef{lg, DType::F32, V, false}, MatRef{w, wdt, C, false}, 0.0f, dhc, C);
    if (!contiguous) {
      parallel_chunks(m, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; r++) std::memcpy(dh + ix[r] * C, dhc + r * C, sizeof(float) * C);
      }, 16);
    }
    // dw [V, C] += dlogits^T [V, m] · h_chunk [m, C]
    if (dw) gemm(V, C, m, 1.0f, MatRef{lg, DType::F32, V, true}, MatRef{hc, DType::F32, C, false}, 1.0f, dw, C);
  }
}

// ---- bindings ----

namespace {

constexpr int64_t kIntLo = -2147483648LL;
constexpr int64_t kMaxNumel = int64_t(1) << 52;

// Throws a JS error naming the first target outside [0, V) that is not ignored.
void check_targets(const Napi::CallbackInfo& info, const char* fn, const int32_t* tgt, int64_t N, int64_t V,
                   int32_t ignore) {
  for (int64_t i = 0; i < N; i++) {
    const int32_t t = tgt[i];
    if (t != ignore && (t < 0 || t >= V))
      throw Napi::RangeError::New(info.Env(), std::string(fn) + ": target " + std::to_string(t) + " at position " +
                                                  std::to_string(i) + " is outside [0, " + std::to_string(V) +
                                                  ") and is not the ignore index " + std::to_string(ignore));
  }
}

struct CeArgs {
  int64_t N, C, V, chunk;
  int32_t ignore;
  TensorArg h, w, tgt;
};

// (h, w, targets, N, C, V, ignoreIndex, chunkTokens, ...), read through `d`
CeArgs ce_args(const Napi::CallbackInfo& info, const char* fn, Dispatch& d) {
  CeArgs a;
  a.N = int_arg(info, 3, fn, "N");
  a.C = int_arg(info, 4, fn, "C", 1);
  a.V = int_arg(info, 5, fn, "V", 1);
  const int64_t ignore = int_arg(info, 6, fn, "ignoreIndex", kIntLo);
  if (ignore > 2147483647LL) throw arg_error(info, fn, "'ignoreIndex' must fit in int32");
  a.ignore = static_cast<int32_t>(ignore);
  if (a.N > 0 && a.C > kMaxNumel / a.N) throw arg_error(info, fn, "N x C is too large");
  if (a.V > kMaxNumel / a.C) throw arg_error(info, fn, "V x C is too large");
  a.chunk = int_arg(info, 7, fn, "chunkTokens", 1);
  a.h = d.tensor(0, "h", static_cast<size_t>(a.N * a.C), DType::F32);
  a.w = d.tensor(1, "w", static_cast<size_t>(a.V * a.C), DType::F32, true);
  if (a.w.dtype != DType::F32 && a.w.dtype != DType::BF16)
    throw arg_error(info, fn, std::string("tensor 'w' has dtype ") + dtype_name(a.w.dtype) + ", expected f32 or bf16");
  a.tgt = d.tensor(2, "targets", static_cast<size_t>(a.N), DType::I32);
  if (d.cuda() && a.N > 2147483647LL) throw arg_error(info, fn, "more than 2^31 - 1 tokens");
  return a;
}

// The targets of a CUDA call on the host, checked, and the positions of the
// non-ignored tokens (ascending) on the host and in a device workspace.
struct ActiveTokens {
  std::vector<int32_t> host;
  std::unique_ptr<Workspace<int32_t>> dev;
};
ActiveTokens cuda_active_tokens(const Napi::CallbackInfo& info, const char* fn, const CeArgs& a) {
  std::vector<int32_t> t(static_cast<size_t>(a.N));
  device::copy(t.data(), Device::CPU, a.tgt.data, Device::CUDA, sizeof(int32_t) * t.size());
  check_targets(info, fn, t.data(), a.N, a.V, a.ignore);
  ActiveTokens act;
  for (int64_t i = 0; i < a.N; i++)
    if (t[i] != a.ignore) act.host.push_back(static_cast<int32_t>(i));
  act.dev = std::make_unique<Workspace<int32_t>>(act.host.size(), Device::CUDA);
  device::copy(act.dev->data(), Device::CUDA, act.host.data(), Device::CPU, sizeof(int32_t) * act.host.size());
  return act;
}

// cross_entropy_forward(h, w, targets, N, C, V, ignoreIndex, chunkTokens, loss, lse) -> { sum, count }
Napi::Value CrossEntropyForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "cross_entropy_forward";
  Dispatch d(info, fn);
  CeArgs a = ce_args(info, fn, d);
  TensorArg loss = d.tensor(8, "loss", static_cast<size_t>(a.N), DType::F32);
  TensorArg lse = d.tensor(9, "lse", static_cast<size_t>(a.N), DType::F32);
  if (a.N > 0 && (loss.data == lse.data || loss.data == a.h.data || lse.data == a.h.data ||
                  loss.data == a.tgt.data || lse.data == a.tgt.data || loss.data == a.w.data || lse.data == a.w.data))
    throw arg_error(info, fn, "'loss' and 'lse' must be separate tensors, not shared with an input");
  if (!d.cuda()) check_targets(info, fn, a.tgt.as<int32_t>(), a.N, a.V, a.ignore);
  return guarded(info, [&]() -> Napi::Value {
    int64_t count = 0;
    double sum = 0.0;
    if (d.cuda()) {
      const ActiveTokens act = cuda_active_tokens(info, fn, a);
      count = static_cast<int64_t>(act.host.size());
      TB_ON_CUDA(cuda::cross_entropy_forward(a.h.f32(), a.w.data, a.w.dtype, a.tgt.as<int32_t>(), a.N, a.C, a.V,
                                             act.dev->data(), act.host.data(), count, a.chunk, loss.f32(), lse.f32()));
      // the total as on the CPU: the losses summed in double, in token order
      std::vector<float> l(static_cast<size_t>(a.N));
      device::copy(l.data(), Device::CPU, loss.data, Device::CUDA, sizeof(float) * l.size());
      for (int32_t i : act.host) sum += static_cast<double>(l[i]);
    } else {
      sum = cross_entropy_forward(a.h.f32(), a.w.data, a.w.dtype, a.tgt.as<int32_t>(), a.N, a.C, a.V, a.ignore,
                                  a.chunk, loss.f32(), lse.f32(), &count);
    }
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("sum", Napi::Number::New(info.Env(), sum));
    out.Set("count", Napi::Number::New(info.Env(), static_cast<double>(count)));
    return out;
  });
}

// cross_entropy_backward(h, w, targets, N, C, V, ignoreIndex, chunkTokens, lse, scale, dh, dw|null)
//   dh written (=), dw accumulated (+=) when given.
Napi::Value CrossEntropyBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "cross_entropy_backward";
  Dispatch d(info, fn);
  CeArgs a = ce_args(info, fn, d);
  TensorArg lse = d.tensor(8, "lse", static_cast<size_t>(a.N), DType::F32);
  const double scale = num_arg(info, 9, fn, "scale");
  if (!std::isfinite(scale)) throw arg_error(info, fn, "'scale' must be finite");
  TensorArg dh = d.tensor(10, "dh", static_cast<size_t>(a.N * a.C), DType::F32);
  TensorArg dw = d.tensor(11, "dw", static_cast<size_t>(a.V * a.C), DType::F32, false, true);
  // dh is written and dw accumulated chunk by chunk while h and w are still read
  if (a.N > 0 && (dh.data == a.h.data || dh.data == a.w.data || dh.data == lse.data || dh.data == a.tgt.data))
    throw arg_error(info, fn, "'dh' must not share memory with an input");
  if (dw.data && (dw.data == a.h.data || dw.data == a.w.data || dw.data == dh.data || dw.data == lse.data))
    throw arg_error(info, fn, "'dw' must not share memory with an input or with 'dh'");
  if (!d.cuda()) check_targets(info, fn, a.tgt.as<int32_t>(), a.N, a.V, a.ignore);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      const ActiveTokens act = cuda_active_tokens(info, fn, a);
      TB_ON_CUDA(cuda::cross_entropy_backward(a.h.f32(), a.w.data, a.w.dtype, a.tgt.as<int32_t>(), lse.f32(), a.N, a.C,
                                              a.V, act.dev->data(), act.host.data(),
                                              static_cast<int64_t>(act.host.size()), a.chunk,
                                              static_cast<float>(scale), dh.f32(), dw.data ? dw.f32() : nullptr));
      return info.Env().Undefined();
    }
    cross_entropy_backward(a.h.f32(), a.w.data, a.w.dtype, a.tgt.as<int32_t>(), lse.f32(), a.N, a.C, a.V, a.ignore,
                           a.chunk, static_cast<float>(scale), dh.f32(), dw.data ? dw.f32() : nullptr);
    return info.Env().Undefined();
  });
}

// hostmath_cross_entropy(h, w, targets, N, C, V, ignoreIndex, scale, loss, lse, dh, dw):
// the CUDA kernels' per-element math (kernels/cross_entropy_math.h) on the
// CPU, for tests: all logits of the non-ignored tokens at once (CPU gemm),
// each row's log-sum-exp from 32 strided lanes merged as a warp would, then
// dlogits, dh = dlogits w (written; 0 for ignored), dw += dlogits^T h.
Napi::Value HostmathCrossEntropyBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_cross_entropy";
  const int64_t N = int_arg(info, 3, fn, "N"), C = int_arg(info, 4, fn, "C", 1), V = int_arg(info, 5, fn, "V", 1);
  const int32_t ignore = static_cast<int32_t>(int_arg(info, 6, fn, "ignoreIndex", kIntLo));
  const float scale = static_cast<float>(num_arg(info, 7, fn, "scale"));
  TensorArg h = tensor_arg(info, 0, fn, "h", static_cast<size_t>(N * C), DType::F32);
  TensorArg w = tensor_arg(info, 1, fn, "w", static_cast<size_t>(V * C), DType::F32, true);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16) throw arg_error(info, fn, "'w' must be f32 or bf16");
  TensorArg tg = tensor_arg(info, 2, fn, "targets", static_cast<size_t>(N), DType::I32);
  TensorArg loss = tensor_arg(info, 8, fn, "loss", static_cast<size_t>(N), DType::F32);
  TensorArg lse = tensor_arg(info, 9, fn, "lse", static_cast<size_t>(N), DType::F32);
  TensorArg dh = tensor_arg(info, 10, fn, "dh", static_cast<size_t>(N * C), DType::F32);
  TensorArg dw = tensor_arg(info, 11, fn, "dw", static_cast<size_t>(V * C), DType::F32);
  const int32_t* t = tg.as<int32_t>();
  check_targets(info, fn, t, N, V, ignore);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < N; i++)
    if (t[i] != ignore) idx.push_back(i);
  const int64_t n = static_cast<int64_t>(idx.size());
  std::memset(loss.f32(), 0, sizeof(float) * N);
  std::memset(lse.f32(), 0, sizeof(float) * N);
  std::memset(dh.f32(), 0, sizeof(float) * N * C);
  if (n == 0) return info.Env().Undefined();
  std::vector<float> hc(static_cast<size_t>(n * C)), lg(static_cast<size_t>(n * V)), dhc(static_cast<size_t>(n * C));
  for (int64_t r = 0; r < n; r++) std::memcpy(hc.data() + r * C, h.f32() + idx[r] * C, sizeof(float) * C);
  gemm(n, V, C, 1.0f, MatRef{hc.data(), DType::F32, C, false}, MatRef{w.data, w.dtype, C, true}, 0.0f, lg.data(), V);
  for (int64_t r = 0; r < n; r++) {
    float* row = lg.data() + r * V;
    const int64_t i = idx[r];
    float m[32], s[32];
    for (int k = 0; k < 32; k++) { m[k] = -INFINITY; s[k] = 0.0f; }
    for (int64_t j = 0; j < V; j++) math::lse_update(m[j % 32], s[j % 32], row[j]);
    for (int k = 1; k < 32; k++) math::lse_merge(m[0], s[0], m[k], s[k]);
    const float l = math::lse_finish(m[0], s[0]);
    lse.f32()[i] = l;
    loss.f32()[i] = math::ce_loss(l, row[t[i]]);
    for (int64_t j = 0; j < V; j++) row[j] = math::ce_dlogit(row[j], l, scale, j == t[i]);
  }
  gemm(n, C, V, 1.0f, MatRef{lg.data(), DType::F32, V, false}, MatRef{w.data, w.dtype, C, false}, 0.0f, dhc.data(), C);
  for (int64_t r = 0; r < n; r++) std::memcpy(dh.f32() + idx[r] * C, dhc.data() + r * C, sizeof(float) * C);
  gemm(V, C, n, 1.0f, MatRef{lg.data(), DType::F32, V, true}, MatRef{hc.data(), DType::F32, C, false}, 1.0f, dw.f32(), C);
  return info.Env().Undefined();
}

void register_cross_entropy(Napi::Env env, Napi::Object exports) {
  exports.Set("cross_entropy_forward", Napi::Function::New(env, CrossEntropyForwardBinding));
  exports.Set("cross_entropy_backward", Napi::Function::New(env, CrossEntropyBackwardBinding));
  exports.Set("hostmath_cross_entropy", Napi::Function::New(env, HostmathCrossEntropyBinding));
}

}  // namespace

TB_REGISTER_OPS(cross_entropy, register_cross_entropy);

}  // namespace tb
