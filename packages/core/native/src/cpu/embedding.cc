// Embedding lookup, forward and backward.
//
//   ids     [N]    i32       token ids, each in [0, V)
//   weight  [V, C] f32|bf16  embedding table (bf16 rows are widened on copy)
//   out     [N, C] f32       out[i, :] = weight[ids[i], :]            (forward, written)
//   dout    [N, C] f32       gradient of out
//   dweight [V, C] f32       dweight[ids[i], :] += dout[i, :]         (backward, ACCUMULATED)
//
// Backward threads over column blocks: each thread owns a contiguous range
// of columns (whole 64-byte lines) of every dweight row and walks the tokens
// in order, so repeated ids add up without atomics, in a fixed order
// (deterministic), and whatever the id distribution the work is even.
// On CUDA (cuda/embedding.cu) the binding checks the ids and groups them by
// value on the host; each id's rows are then added in token order too, so
// dweight is the CPU's, again without atomics.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "cuda/embedding.h"
#include "device.h"
#include "kernels/embedding_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {

void embedding_forward(const int32_t* ids, const void* weight, DType wdt, int64_t N, int64_t C, float* out) {
  parallel_chunks(N, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      float* dst = out + i * C;
      const int64_t row = static_cast<int64_t>(ids[i]) * C;
      switch (wdt) {  // the binding accepts f32 and bf16 only
        case DType::F32: std::memcpy(dst, static_cast<const float*>(weight) + row, sizeof(float) * C); break;
        case DType::BF16: {
          const uint16_t* src = static_cast<const uint16_t*>(weight) + row;
          for (int64_t c = 0; c < C; c++) dst[c] = bf16_to_f32(src[c]);
          break;
        }
        default: std::abort();
      }
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)));
}

void embedding_backward(const float* dout, const int32_t* ids, int64_t N, int64_t C, float* dweight) {
  constexpr int64_t kLine = 16;  // floats per 64-byte cache line
  const int64_t blocks = (C + kLine - 1) / kLine;
  // enough tokens per thread to be worth waking it: ~4K floats of work
  const int64_t min_blocks = std::max<int64_t>(1, 4096 / std::max<int64_t>(N * kLine, 1));
  parallel_chunks(blocks, [&](int64_t b, int64_t e) {
    const int64_t c0 = b * kLine, c1 = std::min(C, e * kLine);
    for (int64_t i = 0; i < N; i++) {
      float* dst = dweight + static_cast<int64_t>(ids[i]) * C;
      const float* src = dout + i * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
    }
  }, min_blocks);
}

// ---- bindings ----

namespace {

constexpr int64_t kMaxNumel = int64_t(1) << 52;

// Throws a JS error naming the first id outside [0, V).
void check_ids(const Napi::CallbackInfo& info, const char* fn, const int32_t* ids, int64_t N, int64_t V) {
  for (int64_t i = 0; i < N; i++) {
    if (ids[i] < 0 || ids[i] >= V)
      throw Napi::RangeError::New(info.Env(), std::string(fn) + ": id " + std::to_string(ids[i]) + " at position " +
                                                  std::to_string(i) + " is outside [0, " + std::to_string(V) + ")");
  }
}

void check_sizes(const Napi::CallbackInfo& info, const char* fn, int64_t N, int64_t V, int64_t C) {
  if (C > 0 && (N > kMaxNumel / C || V > kMaxNumel / C)) throw arg_error(info, fn, "tensor sizes are too large");
}

// The ids of a CUDA call, copied to the host (to be checked and grouped there).
std::vector<int32_t> ids_on_host(const TensorArg& ids, int64_t N) {
  std::vector<int32_t> h(static_cast<size_t>(N));
  device::copy(h.data(), Device::CPU, ids.data, ids.dev, sizeof(int32_t) * static_cast<size_t>(N));
  return h;
}

// The ids grouped by value, packed as [rows U | offsets U + 1 | pos N]: rows the
// distinct ids (ascending), pos[offsets[u] .. offsets[u + 1]) the token
// positions holding rows[u], ascending. Sets *U.
std::vector<int32_t> group_ids(const int32_t* ids, int64_t N, int64_t* U) {
  std::vector<int32_t> order(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; i++) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  std::vector<int32_t> rows, offsets;
  for (int64_t k = 0; k < N; k++) {
    if (k == 0 || ids[order[k]] != ids[order[k - 1]]) {
      rows.push_back(ids[order[k]]);
      offsets.push_back(static_cast<int32_t>(k));
    }
  }
  offsets.push_back(static_cast<int32_t>(N));
  *U = static_cast<int64_t>(rows.size());
  std::vector<int32_t> packed;
  packed.reserve(rows.size() + offsets.size() + order.size());
  packed.insert(packed.end(), rows.begin(), rows.end());
  packed.insert(packed.end(), offsets.begin(), offsets.end());
  packed.insert(packed.end(), order.begin(), order.end());
  return packed;
}

// embedding_forward(ids, weight, N, V, C, out)   out written (=)
Napi::Value EmbeddingForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "embedding_forward";
  const int64_t N = int_arg(info, 2, fn, "N"), V = int_arg(info, 3, fn, "V"), C = int_arg(info, 4, fn, "C");
  check_sizes(info, fn, N, V, C);
  Dispatch d(info, fn);
  TensorArg ids = d.tensor(0, "ids", static_cast<size_t>(N), DType::I32);
  TensorArg w = d.tensor(1, "weight", static_cast<size_t>(V * C), DType::F32, true);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16)
    throw arg_error(info, fn, std::string("tensor 'weight' has dtype ") + dtype_name(w.dtype) + ", expected f32 or bf16");
  TensorArg out = d.tensor(5, "out", static_cast<size_t>(N * C), DType::F32);
  if (N > 0 && C > 0 && (out.data == w.data || out.data == ids.data))
    throw arg_error(info, fn, "'out' must not share memory with an input");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      check_ids(info, fn, ids_on_host(ids, N).data(), N, V);
      TB_ON_CUDA(cuda::embedding_forward(ids.as<int32_t>(), w.data, w.dtype == DType::BF16, N, C, out.f32()));
    } else {
      check_ids(info, fn, ids.as<int32_t>(), N, V);
      embedding_forward(ids.as<int32_t>(), w.data, w.dtype, N, C, out.f32());
    }
    return info.Env().Undefined();
  });
}

// embedding_backward(dout, ids, N, V, C, dweight)   dweight accumulated (+=)
Napi::Value EmbeddingBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "embedding_backward";
  const int64_t N = int_arg(info, 2, fn, "N"), V = int_arg(info, 3, fn, "V"), C = int_arg(info, 4, fn, "C");
  check_sizes(info, fn, N, V, C);
  Dispatch d(info, fn);
  TensorArg dout = d.tensor(0, "dout", static_cast<size_t>(N * C), DType::F32);
  TensorArg ids = d.tensor(1, "ids", static_cast<size_t>(N), DType::I32);
  TensorArg dw = d.tensor(5, "dweight", static_cast<size_t>(V * C), DType::F32);
  if (N > 0 && C > 0 && dw.data == dout.data) throw arg_error(info, fn, "'dweight' must not share memory with 'dout'");
  if (d.cuda() && N > 2147483647LL) throw arg_error(info, fn, "more than 2^31 - 1 tokens");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      const std::vector<int32_t> h = ids_on_host(ids, N);
      check_ids(info, fn, h.data(), N, V);
      if (N == 0 || C == 0) return info.Env().Undefined();
      int64_t U = 0;
      const std::vector<int32_t> groups = group_ids(h.data(), N, &U);
      Workspace<int32_t> g(groups.size(), Device::CUDA);
      device::copy(g.data(), Device::CUDA, groups.data(), Device::CPU, sizeof(int32_t) * groups.size());
      TB_ON_CUDA(cuda::embedding_backward(dout.f32(), U, g.data(), g.data() + U, g.data() + 2 * U + 1, C, dw.f32()));
    } else {
      check_ids(info, fn, ids.as<int32_t>(), N, V);
      embedding_backward(dout.f32(), ids.as<int32_t>(), N, C, dw.f32());
    }
    return info.Env().Undefined();
  });
}

// hostmath_embedding(ids, weight, dout, out, dweight, N, V, C): the CUDA
// kernels' per-element functions (kernels/embedding_math.h) and the host id
// grouping in plain loops, for tests. out written, dweight accumulated.
Napi::Value HostmathEmbeddingBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_embedding";
  const int64_t N = int_arg(info, 5, fn, "N"), V = int_arg(info, 6, fn, "V"), C = int_arg(info, 7, fn, "C");
  check_sizes(info, fn, N, V, C);
  TensorArg ids = tensor_arg(info, 0, fn, "ids", static_cast<size_t>(N), DType::I32);
  TensorArg w = tensor_arg(info, 1, fn, "weight", static_cast<size_t>(V * C), DType::F32, true);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16) throw arg_error(info, fn, "weight must be f32 or bf16");
  TensorArg dout = tensor_arg(info, 2, fn, "dout", static_cast<size_t>(N * C), DType::F32);
  TensorArg out = tensor_arg(info, 3, fn, "out", static_cast<size_t>(N * C), DType::F32);
  TensorArg dw = tensor_arg(info, 4, fn, "dweight", static_cast<size_t>(V * C), DType::F32);
  const int32_t* id = ids.as<int32_t>();
  check_ids(info, fn, id, N, V);
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t k = static_cast<int64_t>(id[i]) * C + c;
      out.f32()[i * C + c] = w.dtype == DType::BF16 ? math::embedding_value(w.as<uint16_t>(), k)
                                                    : math::embedding_value(w.f32(), k);
    }
  int64_t U = 0;
  const std::vector<int32_t> g = group_ids(id, N, &U);
  for (int64_t u = 0; u < U; u++) {
    const int32_t b = g[U + u], e = g[U + u + 1];
    for (int64_t c = 0; c < C; c++) {
      float* dst = dw.f32() + static_cast<int64_t>(g[u]) * C + c;
      *dst = math::embedding_grad(*dst, dout.f32(), g.data() + 2 * U + 1 + b, e - b, C, c);
    }
  }
  return info.Env().Undefined();
}

void register_embedding(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding_forward", Napi::Function::New(env, EmbeddingForwardBinding));
  exports.Set("embedding_backward", Napi::Function::New(env, EmbeddingBackwardBinding));
  exports.Set("hostmath_embedding", Napi::Function::New(env, HostmathEmbeddingBinding));
}

}  // namespace

TB_REGISTER_OPS(embedding, register_embedding);

}  // namespace tb
