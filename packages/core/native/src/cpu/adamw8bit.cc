// Blockwise 8-bit AdamW (the scheme of bitsandbytes' AdamW8bit, own code).
// State per parameter of n elements, in blocks of `bs` consecutive elements
// (nb = ceil(n / bs), the last block may be short):
//   m_codes [n] u8, m_absmax [nb] f32   first moment  = signed dynamic map[code] * absmax
//   v_codes [n] u8, v_absmax [nb] f32   second moment = unsigned dynamic map[code] * absmax
// Per block and step: dequantize m and v, do exactly the fp32 update of
// cpu/adamw.cc with the dequantized values, write the parameter from the
// unquantized new m and v, then requantize them against the block's new
// absmax (max |value| in the block).
// adamw8bit_step dispatches on the tensors' device (cuda/adamw8bit.cu on
// CUDA, block sizes up to 4096 there).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "args.h"
#include "cuda/adamw8bit.h"
#include "kernels/adamw8bit_math.h"
#include "parallel.h"
#include "quant_maps.h"
#include "registry.h"

namespace tb {

// index of the exact 0 in a sorted map: the code an all-zero block gets
static uint8_t zero_code(const float* map256) {
  return static_cast<uint8_t>(std::lower_bound(map256, map256 + 256, 0.0f) - map256);
}

// p: [n] f32 (in place); g: [n] f32; mc, vc: [n] u8 (in place);
// ma, va: [ceil(n/bs)] f32 (in place)
static void adamw8bit_step(int64_t n, int64_t bs, float* p, const float* g, uint8_t* mc, float* ma, uint8_t* vc,
                           float* va, float lr, float b1, float b2, float eps, float wd, int64_t step) {
  // the scalars exactly as adamw.cc computes them, so the update math is the same
  const float decay = 1.0f - lr * wd;
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(static_cast<double>(b1), static_cast<double>(step))));
  const float inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(b2), static_cast<double>(step))));
  const float* smap = dynamic_map(true);
  const float* umap = dynamic_map(false);
  const uint8_t szero = zero_code(smap), uzero = zero_code(umap);
  const int64_t nb = (n + bs - 1) / bs;
  // ~16K elements per thread at least, as adamw.cc: below that threads cost more than they save
  const int64_t min_blocks = std::max<int64_t>(1, (int64_t(1) << 14) / bs);
  parallel_chunks(nb, [&](int64_t blk0, int64_t blk1) {
    // the block's new m and v stay in fp32 until its absmax is known
    std::vector<float> mbuf(static_cast<size_t>(bs)), vbuf(static_cast<size_t>(bs));
    for (int64_t blk = blk0; blk < blk1; blk++) {
      const int64_t i0 = blk * bs, i1 = std::min(n, i0 + bs);
      const float m_scale = ma[blk], v_scale = va[blk];
      float m_max = 0.0f, v_max = 0.0f;
      for (int64_t i = i0; i < i1; i++) {
        float gi = g[i];
        float mi = b1 * (smap[mc[i]] * m_scale) + (1.0f - b1) * gi;
        float vi = b2 * (umap[vc[i]] * v_scale) + (1.0f - b2) * gi * gi;
        p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_bc2_sqrt + eps);
        mbuf[i - i0] = mi;
        vbuf[i - i0] = vi;
        // written so a NaN becomes the absmax: the whole block then turns NaN
        // and training stops visibly, instead of the NaN quantizing to a code
        const float am = std::fabs(mi), av = std::fabs(vi);
        if (!(am <= m_max)) m_max = am;
        if (!(av <= v_max)) v_max = av;
      }
      ma[blk] = m_max;
      va[blk] = v_max;
      for (int64_t i = i0; i < i1; i++) {
        mc[i] = m_max > 0.0f ? nearest_code(smap, mbuf[i - i0] / m_max) : szero;
        vc[i] = v_max > 0.0f ? nearest_code(umap, vbuf[i - i0] / v_max) : uzero;
      }
    }
  }, min_blocks);
}

// adamw8bit_step(p, g, m_codes, m_absmax, v_codes, v_absmax, lr, beta1, beta2, eps, weightDecay, step, blockSize)
static Napi::Value Adamw8bitStepBinding(const Napi::CallbackInfo& info) {
  const char* fn = "adamw8bit_step";
  Dispatch d(info, fn);
  TensorArg p = d.tensor(0, "param", 0, DType::F32);
  int64_t bs = int_arg(info, 12, fn, "blockSize", 1);
  const size_t nb = (p.numel + static_cast<size_t>(bs) - 1) / static_cast<size_t>(bs);
  TensorArg g = d.tensor(1, "grad", p.numel, DType::F32);
  TensorArg mc = d.tensor(2, "mCodes", p.numel, DType::U8);
  TensorArg ma = d.tensor(3, "mAbsmax", nb, DType::F32);
  TensorArg vc = d.tensor(4, "vCodes", p.numel, DType::U8);
  TensorArg va = d.tensor(5, "vAbsmax", nb, DType::F32);
  float lr = static_cast<float>(num_arg(info, 6, fn, "lr"));
  float b1 = static_cast<float>(num_arg(info, 7, fn, "beta1"));
  float b2 = static_cast<float>(num_arg(info, 8, fn, "beta2"));
  float eps = static_cast<float>(num_arg(info, 9, fn, "eps"));
  float wd = static_cast<float>(num_arg(info, 10, fn, "weightDecay"));
  int64_t step = int_arg(info, 11, fn, "step", 1);
  if (d.cuda() && bs > 4096) throw arg_error(info, fn, "blockSize must be at most 4096 on CUDA");
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::adamw8bit_step(static_cast<int64_t>(p.numel), bs, p.f32(), g.f32(), mc.as<uint8_t>(), ma.f32(),
                                      vc.as<uint8_t>(), va.f32(), math::adamw_scalars(lr, b1, b2, eps, wd, step)));
    } else {
      adamw8bit_step(static_cast<int64_t>(p.numel), bs, p.f32(), g.f32(), mc.as<uint8_t>(), ma.f32(), vc.as<uint8_t>(),
                     va.f32(), lr, b1, b2, eps, wd, step);
    }
    return info.Env().Undefined();
  });
}

// hostmath_adamw8bit(p, g, m_codes, m_absmax, v_codes, v_absmax, lr, beta1,
// beta2, eps, weightDecay, step, blockSize, threads): the CUDA kernel's math
// (kernels/adamw8bit_math.h) on the CPU, each block split into `threads`
// contiguous runs whose absmax folds are combined by the kernel's ordered
// tree, for tests against adamw8bit_step.
static Napi::Value HostmathAdamw8bitBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_adamw8bit";
  TensorArg p = tensor_arg(info, 0, fn, "param", 0, DType::F32);
  const int64_t bs = int_arg(info, 12, fn, "blockSize", 1);
  const int64_t T = int_arg(info, 13, fn, "threads", 1);
  if (T & (T - 1)) throw arg_error(info, fn, "threads must be a power of two");
  const int64_t n = static_cast<int64_t>(p.numel), nb = (n + bs - 1) / bs;
  TensorArg g = tensor_arg(info, 1, fn, "grad", p.numel, DType::F32);
  TensorArg mc = tensor_arg(info, 2, fn, "mCodes", p.numel, DType::U8);
  TensorArg ma = tensor_arg(info, 3, fn, "mAbsmax", static_cast<size_t>(nb), DType::F32);
  TensorArg vc = tensor_arg(info, 4, fn, "vCodes", p.numel, DType::U8);
  TensorArg va = tensor_arg(info, 5, fn, "vAbsmax", static_cast<size_t>(nb), DType::F32);
  const math::AdamwScalars s = math::adamw_scalars(
      static_cast<float>(num_arg(info, 6, fn, "lr")), static_cast<float>(num_arg(info, 7, fn, "beta1")),
      static_cast<float>(num_arg(info, 8, fn, "beta2")), static_cast<float>(num_arg(info, 9, fn, "eps")),
      static_cast<float>(num_arg(info, 10, fn, "weightDecay")), int_arg(info, 11, fn, "step", 1));
  const float* smap = dynamic_map(true);
  const float* umap = dynamic_map(false);
  const uint8_t szero = math::map_zero_code(smap), uzero = math::map_zero_code(umap);
  std::vector<float> mbuf(static_cast<size_t>(bs)), vbuf(static_cast<size_t>(bs));
  std::vector<math::AbsmaxFold> fm(static_cast<size_t>(T)), fv(static_cast<size_t>(T));
  uint8_t* mc_ = mc.as<uint8_t>();
  uint8_t* vc_ = vc.as<uint8_t>();
  for (int64_t blk = 0; blk < nb; blk++) {
    const int64_t i0 = blk * bs, len = std::min(bs, n - i0), chunk = (len + T - 1) / T;
    for (int64_t t = 0; t < T; t++) {
      const int64_t a = t * chunk, b = std::min(a + chunk, len);
      math::AbsmaxFold fmt = math::fold_empty(), fvt = math::fold_empty();
      for (int64_t i = a; i < b; i++) {
        const int64_t e = i0 + i;
        math::adamw8bit_element(s, smap, umap, ma.f32()[blk], va.f32()[blk], g.f32()[e], mc_[e], vc_[e], p.f32()[e], mbuf[i], vbuf[i]);
        fmt = math::fold_push(fmt, mbuf[i]);
        fvt = math::fold_push(fvt, vbuf[i]);
      }
      fm[t] = fmt;
      fv[t] = fvt;
    }
    for (int64_t w = 1; w < T; w <<= 1)
      for (int64_t t = 0; t < T; t += 2 * w) {
        fm[t] = math::fold_combine(fm[t], fm[t + w]);
        fv[t] = math::fold_combine(fv[t], fv[t + w]);
      }
    const float m_max = math::fold_result(fm[0]), v_max = math::fold_result(fv[0]);
    ma.f32()[blk] = m_max;
    va.f32()[blk] = v_max;
    for (int64_t i = 0; i < len; i++) {
      mc_[i0 + i] = math::adamw8bit_code(smap, mbuf[i], m_max, szero);
      vc_[i0 + i] = math::adamw8bit_code(umap, vbuf[i], v_max, uzero);
    }
  }
  return info.Env().Undefined();
}

// dynamic_map(signed) -> Float32Array [256], a copy of the table the kernel uses
static Napi::Value DynamicMapBinding(const Napi::CallbackInfo& info) {
  bool is_signed = bool_arg(info, 0, "dynamic_map", "signed");
  Napi::Float32Array out = Napi::Float32Array::New(info.Env(), 256);
  std::memcpy(out.Data(), dynamic_map(is_signed), 256 * sizeof(float));
  return out;
}

static void register_adamw8bit(Napi::Env env, Napi::Object exports) {
  exports.Set("adamw8bit_step", Napi::Function::New(env, Adamw8bitStepBinding));
  exports.Set("dynamic_map", Napi::Function::New(env, DynamicMapBinding));
  exports.Set("hostmath_adamw8bit", Napi::Function::New(env, HostmathAdamw8bitBinding));
}
TB_REGISTER_OPS(adamw8bit, register_adamw8bit);

}  // namespace tb
