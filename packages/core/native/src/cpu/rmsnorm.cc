// RMSNorm (Llama / Hugging Face LlamaRMSNorm), fp32 compute.
//
//   forward:  rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps)
//             y[n,c]  = (x[n,c] * rstd[n]) * w[c]
//   backward: g[c] = dy[n,c] * w[c]
//             dx[n,c] = rstd[n] * g[c] - x[n,c] * rstd[n]^3 * sum_c(g[c] * x[n,c]) / C   (written)
//             dw[c]  += sum_n dy[n,c] * x[n,c] * rstd[n]                                (accumulated)
//
// A bf16 weight (a frozen norm) is widened once per call into a C-float
// workspace, so the row loops are the same contiguous f32 loops either way.
// Rows are split over threads; dw is summed into one C-float partial per row
// chunk (workspace) and the partials are reduced afterwards, so there is no
// race, and for a given thread count the result does not depend on scheduling.
// The CUDA kernels (cuda/rmsnorm.cu) evaluate the same expressions
// (kernels/rmsnorm_math.h); the binding dispatches on the tensors' device.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "args.h"
#include "cuda/rmsnorm.h"
#include "kernels/rmsnorm_math.h"
#include "parallel.h"
#include "registry.h"

namespace tb {
namespace {

// sum_c term(c) in 32 independent lanes (two 16-wide registers), so the loop
// vectorises without reassociation flags. (An `omp simd reduction` here kept
// the accumulator in memory and ran at under half the speed.)
template <typename F>
inline float lane_sum(int64_t C, F&& term) {
  constexpr int L = 32;
  float acc[L] = {};
  int64_t c = 0;
  for (; c + L <= C; c += L)
    for (int j = 0; j < L; j++) acc[j] += term(c + j);
  float tail = 0.0f;
  for (; c < C; c++) tail += term(c);
  for (int w = L / 2; w > 0; w /= 2)
    for (int j = 0; j < w; j++) acc[j] += acc[j + w];
  return acc[0] + tail;
}

// Enough rows per thread that each gets ~16K elements: below that, waking
// threads costs more than the row loop.
int64_t min_rows_per_thread(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }

// x [N, C] f32, w [C] f32 -> y [N, C] f32, rstd [N] f32. y may be x.
void rmsnorm_forward(int64_t N, int64_t C, const float* x, const float* w, float eps, float* y, float* rstd) {
  parallel_chunks(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; n++) {
      const float* xr = x + n * C;
      float* yr = y + n * C;
      const float ss = lane_sum(C, [&](int64_t c) { return xr[c] * xr[c]; });
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
      rstd[n] = r;
      for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] * r) * w[c];
    }
  }, min_rows_per_thread(C));
}

// dy, x [N, C] f32, w [C] f32, rstd [N] f32 -> dx [N, C] f32 (written; may be
// dy or x), dw [C] f32 (accumulated; nullptr skips it).
void rmsnorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const float* w, const float* rstd,
                      float* dx, float* dw) {
  if (N <= 0 || C <= 0) return;
  const int64_t mr = min_rows_per_thread(C);
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(num_threads(), (N + mr - 1) / mr));
  Workspace<float> part(dw ? static_cast<size_t>(P * C) : 0);
  const float inv_c = 1.0f / static_cast<float>(C);
  // one chunk of rows per index p, so partial p always holds the same rows
  parallel_chunks(P, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; p++) {
      float* acc = dw ? part.data() + p * C : nullptr;
      if (acc) std::memset(acc, 0, sizeof(float) * C);
      for (int64_t n = N * p / P, ne = N * (p + 1) / P; n < ne; n++) {
        const float* gr = dy + n * C;
        const float* xr = x + n * C;
        float* dxr = dx + n * C;
        const float r = rstd[n];
        const float dot = lane_sum(C, [&](int64_t c) { return gr[c] * w[c] * xr[c]; });
        const float k = r * r * r * dot * inv_c;
        // each step reads dy[c] and x[c] before writing dx[c] (dx may alias either)
        if (acc) {
          for (int64_t c = 0; c < C; c++) {
            const float g = gr[c], xv = xr[c];
            acc[c] += g * xv * r;
            dxr[c] = r * (g * w[c]) - k * xv;
          }
        } else {
          for (int64_t c = 0; c < C; c++) dxr[c] = r * (gr[c] * w[c]) - k * xr[c];
        }
      }
    }
  });
  if (!dw) return;
  const float* pp = part.data();
  parallel_chunks(C, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; c++) {
      float s = pp[c];
      for (int64_t p = 1; p < P; p++) s += pp[p * C + c];
      dw[c] += s;
    }
  }, 16384);
}

// A [C] weight as f32: the tensor itself, or a widened copy in `tmp`.
// (the bindings accept only these two kinds; the switch keeps any other from
// being read as bf16)
const float* weight_f32(const TensorArg& w, int64_t C, Workspace<float>& tmp) {
  switch (w.dtype) {
    case DType::F32: return w.f32();
    case DType::BF16: {
      const uint16_t* src = w.as<uint16_t>();
      float* dst = tmp.data();
      for (int64_t c = 0; c < C; c++) dst[c] = bf16_to_f32(src[c]);
      return dst;
    }
    default: std::abort();
  }
}

}  // namespace

// ---- bindings ----
// rmsnorm_forward(x, weight, y, rstd, N, C, eps)
//   x [N, C] f32, weight [C] f32|bf16 -> y [N, C] f32 (written), rstd [N] f32 (written)
static Napi::Value RmsNormForwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "rmsnorm_forward";
  int64_t N = int_arg(info, 4, fn, "N"), C = int_arg(info, 5, fn, "C", 1);
  double eps = num_arg(info, 6, fn, "eps");
  if (!(eps > 0.0) || !std::isfinite(eps)) throw arg_error(info, fn, "'eps' must be a positive finite number");
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", static_cast<size_t>(N * C), DType::F32);
  TensorArg w = d.tensor(1, "weight", static_cast<size_t>(C), DType::F32, true);
  TensorArg y = d.tensor(2, "y", static_cast<size_t>(N * C), DType::F32);
  TensorArg rstd = d.tensor(3, "rstd", static_cast<size_t>(N), DType::F32);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16) throw arg_error(info, fn, "weight must be f32 or bf16");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::rmsnorm_forward(N, C, x.f32(), w.data, w.dtype == DType::BF16, static_cast<float>(eps), y.f32(),
                                       rstd.f32()));
    } else {
      Workspace<float> wtmp(w.dtype == DType::F32 ? 0 : static_cast<size_t>(C));
      rmsnorm_forward(N, C, x.f32(), weight_f32(w, C, wtmp), static_cast<float>(eps), y.f32(), rstd.f32());
    }
    return info.Env().Undefined();
  });
}

// rmsnorm_backward(dy, x, weight, rstd, dx, dweight | null, N, C)
//   dy, x [N, C] f32, weight [C] f32|bf16, rstd [N] f32 (from forward)
//   -> dx [N, C] f32 WRITTEN, dweight [C] f32 ACCUMULATED (+=) when given
static Napi::Value RmsNormBackwardBinding(const Napi::CallbackInfo& info) {
  const char* fn = "rmsnorm_backward";
  int64_t N = int_arg(info, 6, fn, "N"), C = int_arg(info, 7, fn, "C", 1);
  Dispatch d(info, fn);
  TensorArg dy = d.tensor(0, "dy", static_cast<size_t>(N * C), DType::F32);
  TensorArg x = d.tensor(1, "x", static_cast<size_t>(N * C), DType::F32);
  TensorArg w = d.tensor(2, "weight", static_cast<size_t>(C), DType::F32, true);
  TensorArg rstd = d.tensor(3, "rstd", static_cast<size_t>(N), DType::F32);
  TensorArg dx = d.tensor(4, "dx", static_cast<size_t>(N * C), DType::F32);
  TensorArg dw = d.tensor(5, "dweight", static_cast<size_t>(C), DType::F32, false, true);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16) throw arg_error(info, fn, "weight must be f32 or bf16");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::rmsnorm_backward(N, C, dy.f32(), x.f32(), w.data, w.dtype == DType::BF16, rstd.f32(), dx.f32(),
                                        dw.data ? dw.f32() : nullptr));
    } else {
      Workspace<float> wtmp(w.dtype == DType::F32 ? 0 : static_cast<size_t>(C));
      rmsnorm_backward(N, C, dy.f32(), x.f32(), weight_f32(w, C, wtmp), rstd.f32(), dx.f32(),
                       dw.data ? dw.f32() : nullptr);
    }
    return info.Env().Undefined();
  });
}

// hostmath_rmsnorm(x, weight, dy, y, rstd, dx, dweight, N, C, eps): the CUDA
// kernels' per-element functions (kernels/rmsnorm_math.h) in plain loops on
// the CPU, for tests. y, rstd, dx written; dweight accumulated.
static Napi::Value HostmathRmsNormBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_rmsnorm";
  int64_t N = int_arg(info, 7, fn, "N"), C = int_arg(info, 8, fn, "C", 1);
  const float eps = static_cast<float>(num_arg(info, 9, fn, "eps"));
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(N * C), DType::F32);
  TensorArg w = tensor_arg(info, 1, fn, "weight", static_cast<size_t>(C), DType::F32, true);
  TensorArg dy = tensor_arg(info, 2, fn, "dy", static_cast<size_t>(N * C), DType::F32);
  TensorArg y = tensor_arg(info, 3, fn, "y", static_cast<size_t>(N * C), DType::F32);
  TensorArg rstd = tensor_arg(info, 4, fn, "rstd", static_cast<size_t>(N), DType::F32);
  TensorArg dx = tensor_arg(info, 5, fn, "dx", static_cast<size_t>(N * C), DType::F32);
  TensorArg dw = tensor_arg(info, 6, fn, "dweight", static_cast<size_t>(C), DType::F32);
  if (w.dtype != DType::F32 && w.dtype != DType::BF16) throw arg_error(info, fn, "weight must be f32 or bf16");
  auto run = [&](auto* wp) {
    const float* xs = x.f32();
    const float* g = dy.f32();
    for (int64_t n = 0; n < N; n++) {
      float ss = 0.0f, dot = 0.0f;
      for (int64_t c = 0; c < C; c++) {
        const float xv = xs[n * C + c];
        ss += xv * xv;
        dot += g[n * C + c] * math::weight_at(wp, c) * xv;
      }
      const float r = math::rmsnorm_rstd(ss, C, eps);
      const float k = math::rmsnorm_k(r, dot, C);
      rstd.f32()[n] = r;
      for (int64_t c = 0; c < C; c++) {
        const float xv = xs[n * C + c], wv = math::weight_at(wp, c);
        y.f32()[n * C + c] = math::rmsnorm_y(xv, r, wv);
        dx.f32()[n * C + c] = math::rmsnorm_dx(g[n * C + c], xv, wv, r, k);
        dw.f32()[c] += math::rmsnorm_dw_term(g[n * C + c], xv, r);
      }
    }
  };
  if (w.dtype == DType::BF16) run(w.as<uint16_t>());
  else run(w.f32());
  return info.Env().Undefined();
}

static void register_rmsnorm(Napi::Env env, Napi::Object exports) {
  exports.Set("rmsnorm_forward", Napi::Function::New(env, RmsNormForwardBinding));
  exports.Set("rmsnorm_backward", Napi::Function::New(env, RmsNormBackwardBinding));
  exports.Set("hostmath_rmsnorm", Napi::Function::New(env, HostmathRmsNormBinding));
}
TB_REGISTER_OPS(rmsnorm, register_rmsnorm);

}  // namespace tb
