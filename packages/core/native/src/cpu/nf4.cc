// 4-bit blockwise quantization (NF4, FP4) and the blockwise 8-bit dynamic
// quantization that double-quantizes their absmax, as bitsandbytes defines
// them (quant4.h, quant_maps.h). The GEMM consumes the result directly
// (gemm.cc dequantizes while packing); these kernels build it and expand it.
// Every binding dispatches on its tensors' device (cuda/nf4.cu on CUDA, the
// code tables copied to a CUDA `out`).
#include <cmath>
#include <cstring>
#include <vector>

#include "args.h"
#include "cuda/nf4.h"
#include "device.h"
#include "kernels/quant_math.h"
#include "kernels/quantize_math.h"
#include "operand.h"
#include "parallel.h"
#include "quant4.h"
#include "registry.h"

namespace tb {

// x [numel] f32|bf16 -> packed [ceil(numel/2)] u8, absmax [ceil(numel/block)] f32.
// Returns the number of non-finite inputs (the caller refuses such weights).
template <typename T>
static int64_t quant4_quantize(const T* x, int64_t numel, int64_t block, Quant4Format fmt, uint8_t* packed, float* absmax) {
  auto cvt = [](T v) -> float {
    if constexpr (std::is_same<T, float>::value) return v; else return bf16_to_f32(v);
  };
  const int64_t nblocks = (numel + block - 1) / block;
  int64_t bad_total = 0;
  // blocks hold an even count of values (block >= 32), so threads never share a byte
  std::vector<int64_t> bad(static_cast<size_t>(num_threads()) + 1, 0);
  parallel_chunks(nblocks, [&](int64_t b0, int64_t b1) {
    int64_t nonfinite = 0;
    for (int64_t b = b0; b < b1; b++) {
      const int64_t s = b * block, e = std::min(numel, s + block);
      float amax = 0.0f;
      for (int64_t i = s; i < e; i++) {
        const float v = cvt(x[i]);
        if (!std::isfinite(v)) nonfinite++;
        amax = std::max(amax, std::fabs(v));
      }
      absmax[b] = amax;
      // multiply by the reciprocal, as bitsandbytes' kernel does (a zero
      // block maps every value to the zero code)
      const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
      for (int64_t i = s; i < e; i++) {
        const float v = cvt(x[i]) * inv;
        const uint8_t c = fmt == Quant4Format::NF4 ? nf4_code(v) : fp4_code(v);
        uint8_t& byte = packed[i >> 1];
        byte = (i & 1) ? static_cast<uint8_t>((byte & 0xF0) | c) : static_cast<uint8_t>((byte & 0x0F) | (c << 4));
      }
    }
    bad[static_cast<size_t>(omp_get_thread_num())] += nonfinite;
  }, 16);
  for (int64_t v : bad) bad_total += v;
  return bad_total;
}

// quant4_quantize(x, numel, blockSize, format, packed, absmax) -> non-finite count
static Napi::Value Quant4QuantizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "quant4_quantize";
  const int64_t numel = int_arg(info, 1, fn, "numel"), block = int_arg(info, 2, fn, "blockSize", 1);
  const int64_t format = int_arg(info, 3, fn, "format");
  const int shift = block_shift_of(block);
  if (shift < 5 || shift > 12) throw arg_error(info, fn, "blockSize must be a power of two in 32..4096");
  if (format > 1) throw arg_error(info, fn, "format must be 0 (nf4) or 1 (fp4)");
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", static_cast<size_t>(numel), DType::F32, true);
  TensorArg packed = d.tensor(4, "packed", static_cast<size_t>((numel + 1) / 2), DType::U8);
  TensorArg absmax = d.tensor(5, "absmax", static_cast<size_t>((numel + block - 1) / block), DType::F32);
  if (x.dtype != DType::F32 && x.dtype != DType::BF16) throw arg_error(info, fn, "x must be f32 or bf16");
  const Quant4Format fmt = static_cast<Quant4Format>(format);
  return guarded(info, [&]() -> Napi::Value {
    int64_t bad = 0;
    if (d.cuda()) {
      TB_ON_CUDA(bad = cuda::quant4_quantize(x.data, x.dtype == DType::BF16, numel, block, static_cast<int>(format),
                                             packed.as<uint8_t>(), absmax.f32()));
    } else if (x.dtype == DType::F32) {
      bad = quant4_quantize(x.f32(), numel, block, fmt, packed.as<uint8_t>(), absmax.f32());
    } else {
      bad = quant4_quantize(x.as<uint16_t>(), numel, block, fmt, packed.as<uint8_t>(), absmax.f32());
    }
    return Napi::Number::New(info.Env(), static_cast<double>(bad));
  });
}

// quant4_dequantize(W, rows, cols, out): out [rows*cols] f32 = the dequantized weight (W's tensors and out on one device)
static Napi::Value Quant4DequantizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "quant4_dequantize";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  Dispatch d(info, fn);
  return guarded(info, [&]() -> Napi::Value {
    WeightOperand w = weight_arg(info, 0, fn, "W", rows, cols, -1, &d);
    if (w.kind != QuantKind::Q4) throw arg_error(info, fn, "W must be a 4-bit quantized weight");
    TensorArg out = d.tensor(3, "out", static_cast<size_t>(rows * cols), DType::F32);
    const Quant4View q = w.q4;
    if (d.cuda()) {
      // the format from the table the view carries
      TB_ON_CUDA(cuda::quant4_dequantize(q.packed, q.absmax, q.table == quant4_table(Quant4Format::NF4) ? 0 : 1, q.block_shift,
                                         rows * cols, out.f32()));
      return info.Env().Undefined();
    }
    parallel_chunks(rows * cols, [&](int64_t b, int64_t e) {
      // chunk edges on even indices keep each byte in one thread's hands (reads only here, but cheap)
      quant4_dequant_segment(q, b, e - b, out.f32() + b);
    }, 1 << 15);
    return info.Env().Undefined();
  });
}

static void blockwise_quantize8(const float* x, int64_t n, int64_t block, bool is_signed, uint8_t* codes, float* scales) {
  const float* map = dynamic_map(is_signed);
  const int64_t nb = (n + block - 1) / block;
  parallel_chunks(nb, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t s = b * block, e = std::min(n, s + block);
      float amax = 0.0f;
      for (int64_t i = s; i < e; i++) amax = std::max(amax, std::fabs(x[i]));
      scales[b] = amax;
      const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
      for (int64_t i = s; i < e; i++) codes[i] = nearest_code(map, x[i] * inv);
    }
  }, 4);
}

// blockwise_quantize8(x, n, block, signed, codes, scales): per block of
// `block` values, scale = max |x|, code = nearest entry of the dynamic map
// to x / scale (bitsandbytes' quantize_blockwise with its default map).
static Napi::Value BlockwiseQuantize8Binding(const Napi::CallbackInfo& info) {
  const char* fn = "blockwise_quantize8";
  const int64_t n = int_arg(info, 1, fn, "n"), block = int_arg(info, 2, fn, "block", 1);
  const bool is_signed = bool_arg(info, 3, fn, "signed");
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", static_cast<size_t>(n), DType::F32);
  TensorArg codes = d.tensor(4, "codes", static_cast<size_t>(n), DType::U8);
  TensorArg scales = d.tensor(5, "scales", static_cast<size_t>((n + block - 1) / block), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::blockwise_quantize8(x.f32(), n, block, is_signed, codes.as<uint8_t>(), scales.f32()));
    else blockwise_quantize8(x.f32(), n, block, is_signed, codes.as<uint8_t>(), scales.f32());
    return info.Env().Undefined();
  });
}

// blockwise_dequantize8(codes, scales, n, block, signed, offset, out): out = map[code] * scale + offset
static Napi::Value BlockwiseDequantize8Binding(const Napi::CallbackInfo& info) {
  const char* fn = "blockwise_dequantize8";
  const int64_t n = int_arg(info, 2, fn, "n"), block = int_arg(info, 3, fn, "block", 1);
  const bool is_signed = bool_arg(info, 4, fn, "signed");
  const float offset = static_cast<float>(num_arg(info, 5, fn, "offset"));
  Dispatch d(info, fn);
  TensorArg codes = d.tensor(0, "codes", static_cast<size_t>(n), DType::U8);
  TensorArg scales = d.tensor(1, "scales", static_cast<size_t>((n + block - 1) / block), DType::F32);
  TensorArg out = d.tensor(6, "out", static_cast<size_t>(n), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) {
      TB_ON_CUDA(cuda::blockwise_dequantize8(codes.as<uint8_t>(), scales.f32(), n, block, is_signed, offset, out.f32()));
    } else {
      const float* map = dynamic_map(is_signed);
      for (int64_t i = 0; i < n; i++) out.f32()[i] = math::dq8_value(map[codes.as<uint8_t>()[i]], scales.f32()[i / block], offset);
    }
    return info.Env().Undefined();
  });
}

// Copies `count` floats of a host table into `out` on its device.
static void table_out(const TensorArg& out, const float* t, size_t count) {
  if (out.dev == Device::CPU) std::memcpy(out.f32(), t, count * sizeof(float));
  else device::copy(out.f32(), out.dev, t, Device::CPU, count * sizeof(float));
}

// quant4_table(format, out[16]) and dynamic_map8(signed, out[256]): the code tables, for tests and files (out on any device)
static Napi::Value Quant4TableBinding(const Napi::CallbackInfo& info) {
  const int64_t format = int_arg(info, 0, "quant4_table", "format");
  if (format > 1) throw arg_error(info, "quant4_table", "format must be 0 (nf4) or 1 (fp4)");
  TensorArg out = tensor_arg_any_device(info, 1, "quant4_table", "out", 16, DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    table_out(out, quant4_table(static_cast<Quant4Format>(format)), 16);
    return info.Env().Undefined();
  });
}
static Napi::Value DynamicMap8Binding(const Napi::CallbackInfo& info) {
  const bool is_signed = bool_arg(info, 0, "dynamic_map8", "signed");
  TensorArg out = tensor_arg_any_device(info, 1, "dynamic_map8", "out", 256, DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    table_out(out, dynamic_map(is_signed), 256);
    return info.Env().Undefined();
  });
}

// ---- host math of the CUDA kernels (kernels/quantize_math.h, quant_math.h), for tests ----
// hostmath_quant4(x f32, numel, blockSize, format, packed, absmax, out) -> non-finite count:
// quantizes as cuda/nf4.cu does, block by block, then dequantizes packed/absmax into out.
static Napi::Value HostmathQuant4Binding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_quant4";
  const int64_t numel = int_arg(info, 1, fn, "numel"), block = int_arg(info, 2, fn, "blockSize", 1);
  const int64_t format = int_arg(info, 3, fn, "format");
  const int shift = block_shift_of(block);
  if (shift < 5 || shift > 12 || format > 1) throw arg_error(info, fn, "bad blockSize or format");
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(numel), DType::F32);
  TensorArg packed = tensor_arg(info, 4, fn, "packed", static_cast<size_t>((numel + 1) / 2), DType::U8);
  TensorArg absmax = tensor_arg(info, 5, fn, "absmax", static_cast<size_t>((numel + block - 1) / block), DType::F32);
  TensorArg out = tensor_arg(info, 6, fn, "out", static_cast<size_t>(numel), DType::F32);
  float mid[15];
  math::nf4_midpoints(kNf4Table, mid);
  const float* x_ = x.f32();
  uint8_t* pk = packed.as<uint8_t>();
  int64_t bad = 0;
  for (int64_t s = 0; s < numel; s += block) {
    const int64_t e = std::min(numel, s + block);
    float amax = 0.0f;
    for (int64_t i = s; i < e; i++) {
      if (!std::isfinite(x_[i])) bad++;
      amax = math::absmax_step(amax, x_[i]);
    }
    absmax.f32()[s / block] = amax;
    const float inv = math::inv_scale(amax);
    auto enc = [&](float v) { return format == 0 ? math::nf4_encode(mid, v) : math::fp4_encode(kFp4Magnitudes, v); };
    for (int64_t i = s; i < e; i += 2) {
      const uint32_t c0 = enc(x_[i] * inv);
      pk[i >> 1] = i + 1 < e ? math::pack_pair(c0, enc(x_[i + 1] * inv)) : static_cast<uint8_t>((pk[i >> 1] & 0x0Fu) | (c0 << 4));
    }
  }
  const float* table = quant4_table(static_cast<Quant4Format>(format));
  for (int64_t i = 0; i < numel; i++) out.f32()[i] = math::quant4_value(table, pk, absmax.f32(), shift, i);
  return Napi::Number::New(info.Env(), static_cast<double>(bad));
}

// hostmath_blockwise8(x f32, n, block, signed, codes, scales, offset, out): the 8-bit
// blockwise quantizer as cuda/nf4.cu runs it, then out = map[code] * scale + offset.
static Napi::Value HostmathBlockwise8Binding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_blockwise8";
  const int64_t n = int_arg(info, 1, fn, "n"), block = int_arg(info, 2, fn, "block", 1);
  const bool is_signed = bool_arg(info, 3, fn, "signed");
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(n), DType::F32);
  TensorArg codes = tensor_arg(info, 4, fn, "codes", static_cast<size_t>(n), DType::U8);
  TensorArg scales = tensor_arg(info, 5, fn, "scales", static_cast<size_t>((n + block - 1) / block), DType::F32);
  const float offset = static_cast<float>(num_arg(info, 6, fn, "offset"));
  TensorArg out = tensor_arg(info, 7, fn, "out", static_cast<size_t>(n), DType::F32);
  const float* map = dynamic_map(is_signed);
  for (int64_t s = 0; s < n; s += block) {
    const int64_t e = std::min(n, s + block);
    float amax = 0.0f;
    for (int64_t i = s; i < e; i++) amax = math::absmax_step(amax, x.f32()[i]);
    scales.f32()[s / block] = amax;
    const float inv = math::inv_scale(amax);
    for (int64_t i = s; i < e; i++) codes.as<uint8_t>()[i] = static_cast<uint8_t>(math::nearest_code256(map, x.f32()[i] * inv));
  }
  for (int64_t i = 0; i < n; i++) out.f32()[i] = math::dq8_value(map[codes.as<uint8_t>()[i]], scales.f32()[i / block], offset);
  return info.Env().Undefined();
}

static void register_nf4(Napi::Env env, Napi::Object exports) {
  exports.Set("quant4_quantize", Napi::Function::New(env, Quant4QuantizeBinding));
  exports.Set("quant4_dequantize", Napi::Function::New(env, Quant4DequantizeBinding));
  exports.Set("quant4_table", Napi::Function::New(env, Quant4TableBinding));
  exports.Set("blockwise_quantize8", Napi::Function::New(env, BlockwiseQuantize8Binding));
  exports.Set("blockwise_dequantize8", Napi::Function::New(env, BlockwiseDequantize8Binding));
  exports.Set("dynamic_map8", Napi::Function::New(env, DynamicMap8Binding));
  exports.Set("hostmath_quant4", Napi::Function::New(env, HostmathQuant4Binding));
  exports.Set("hostmath_blockwise8", Napi::Function::New(env, HostmathBlockwise8Binding));
}
TB_REGISTER_OPS(nf4, register_nf4);

}  // namespace tb
