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
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "args.h"
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

// embedding_forward(ids, weight, N, V, C, out)   out written (=)
Napi::Value EmbeddingForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "embedding_forward";
  const int64_t N = int_arg(info, 2, fn, "N"), V = int_arg(info, 3, fn, "V"), C = int_arg(info, 4, fn, "C");
  check_sizes(info, fn, N, V, C);
  TensorArg ids = tensor_arg(info, 0, fn, "ids", static_cast<size_t>(N), DType::I32);
  TensorArg w = tensor_arg(info, 1, fn, "weight", static_cast<size_t>(V * C), DType::F32, true);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16)
    throw arg_error(info, fn, std::string("tensor 'weight' has dtype ") + dtype_name(w.dtype) + ", expected f32 or bf16");
  TensorArg out = tensor_arg(info, 5, fn, "out", static_cast<size_t>(N * C), DType::F32);
  if (N > 0 && C > 0 && (out.data == w.data || out.data == ids.data))
    throw arg_error(info, fn, "'out' must not share memory with an input");
  check_ids(info, fn, ids.as<int32_t>(), N, V);
  return guarded(info, [&]() -> Napi::Value {
    embedding_forward(ids.as<int32_t>(), w.data, w.dtype, N, C, out.f32());
    return info.Env().Undefined();
  });
}

// embedding_backward(dout, ids, N, V, C, dweight)   dweight accumulated (+=)
Napi::Value EmbeddingBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "embedding_backward";
  const int64_t N = int_arg(info, 2, fn, "N"), V = int_arg(info, 3, fn, "V"), C = int_arg(info, 4, fn, "C");
  check_sizes(info, fn, N, V, C);
  TensorArg dout = tensor_arg(info, 0, fn, "dout", static_cast<size_t>(N * C), DType::F32);
  TensorArg ids = tensor_arg(info, 1, fn, "ids", static_cast<size_t>(N), DType::I32);
  TensorArg dw = tensor_arg(info, 5, fn, "dweight", static_cast<size_t>(V * C), DType::F32);
  if (N > 0 && C > 0 && dw.data == dout.data) throw arg_error(info, fn, "'dweight' must not share memory with 'dout'");
  check_ids(info, fn, ids.as<int32_t>(), N, V);
  return guarded(info, [&]() -> Napi::Value {
    embedding_backward(dout.f32(), ids.as<int32_t>(), N, C, dw.f32());
    return info.Env().Undefined();
  });
}

void register_embedding(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding_forward", Napi::Function::New(env, EmbeddingForwardBinding));
  exports.Set("embedding_backward", Napi::Function::New(env, EmbeddingBackwardBinding));
}

}  // namespace

TB_REGISTER_OPS(embedding, register_embedding);

}  // namespace tb
