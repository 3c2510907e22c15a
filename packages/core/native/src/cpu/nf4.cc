// 4-bit blockwise quantization (NF4, FP4) and the blockwise 8-bit dynamic
// quantization that double-quantizes their absmax, as bitsandbytes defines
// them (quant4.h, quant_maps.h). The GEMM consumes the result directly
// (gemm.cc dequantizes while packing); these kernels build it and expand it.
#include <cmath>
#include <vector>

#include "args.h"
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
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(numel), DType::F32, true);
  TensorArg packed = tensor_arg(info, 4, fn, "packed", static_cast<size_t>((numel + 1) / 2), DType::U8);
  TensorArg absmax = tensor_arg(info, 5, fn, "absmax", static_cast<size_t>((numel + block - 1) / block), DType::F32);
  const Quant4Format fmt = static_cast<Quant4Format>(format);
  int64_t bad = 0;
  switch (x.dtype) {
    case DType::F32: bad = quant4_quantize(x.f32(), numel, block, fmt, packed.as<uint8_t>(), absmax.f32()); break;
    case DType::BF16: bad = quant4_quantize(x.as<uint16_t>(), numel, block, fmt, packed.as<uint8_t>(), absmax.f32()); break;
    default: throw arg_error(info, fn, "x must be f32 or bf16");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(bad));
}

// quant4_dequantize(W, rows, cols, out): out [rows*cols] f32 = the dequantized weight
static Napi::Value Quant4DequantizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "quant4_dequantize";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  WeightOperand w = weight_arg(info, 0, fn, "W", rows, cols);
  if (w.kind != QuantKind::Q4) throw arg_error(info, fn, "W must be a 4-bit quantized weight");
  TensorArg out = tensor_arg(info, 3, fn, "out", static_cast<size_t>(rows * cols), DType::F32);
  const Quant4View q = w.q4;
  parallel_chunks(rows * cols, [&](int64_t b, int64_t e) {
    // chunk edges on even indices keep each byte in one thread's hands (reads only here, but cheap)
    quant4_dequant_segment(q, b, e - b, out.f32() + b);
  }, 1 << 15);
  return info.Env().Undefined();
}

// blockwise_quantize8(x, n, block, signed, codes, scales): per block of
// `block` values, scale = max |x|, code = nearest entry of the dynamic map
// to x / scale (bitsandbytes' quantize_blockwise with its default map).
static Napi::Value BlockwiseQuantize8Binding(const Napi::CallbackInfo& info) {
  const char* fn = "blockwise_quantize8";
  const int64_t n = int_arg(info, 1, fn, "n"), block = int_arg(info, 2, fn, "block", 1);
  const bool is_signed = bool_arg(info, 3, fn, "signed");
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(n), DType::F32);
  TensorArg codes = tensor_arg(info, 4, fn, "codes", static_cast<size_t>(n), DType::U8);
  TensorArg scales = tensor_arg(info, 5, fn, "scales", static_cast<size_t>((n + block - 1) / block), DType::F32);
  const float* map = dynamic_map(is_signed);
  const int64_t nb = (n + block - 1) / block;
  parallel_chunks(nb, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t s = b * block, e = std::min(n, s + block);
      float amax = 0.0f;
      for (int64_t i = s; i < e; i++) amax = std::max(amax, std::fabs(x.f32()[i]));
      scales.f32()[b] = amax;
      const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
      for (int64_t i = s; i < e; i++) codes.as<uint8_t>()[i] = nearest_code(map, x.f32()[i] * inv);
    }
  }, 4);
  return info.Env().Undefined();
}

// blockwise_dequantize8(codes, scales, n, block, signed, offset, out): out = map[code] * scale + offset
static Napi::Value BlockwiseDequantize8Binding(const Napi::CallbackInfo& info) {
  const char* fn = "blockwise_dequantize8";
  const int64_t n = int_arg(info, 2, fn, "n"), block = int_arg(info, 3, fn, "block", 1);
  const bool is_signed = bool_arg(info, 4, fn, "signed");
  const float offset = static_cast<float>(num_arg(info, 5, fn, "offset"));
  TensorArg codes = tensor_arg(info, 0, fn, "codes", static_cast<size_t>(n), DType::U8);
  TensorArg scales = tensor_arg(info, 1, fn, "scales", static_cast<size_t>((n + block - 1) / block), DType::F32);
  TensorArg out = tensor_arg(info, 6, fn, "out", static_cast<size_t>(n), DType::F32);
  const float* map = dynamic_map(is_signed);
  for (int64_t i = 0; i < n; i++) out.f32()[i] = map[codes.as<uint8_t>()[i]] * scales.f32()[i / block] + offset;
  return info.Env().Undefined();
}

// quant4_table(format, out[16]) and dynamic_map8(signed, out[256]): the code tables, for tests and files
static Napi::Value Quant4TableBinding(const Napi::CallbackInfo& info) {
  const int64_t format = int_arg(info, 0, "quant4_table", "format");
  if (format > 1) throw arg_error(info, "quant4_table", "format must be 0 (nf4) or 1 (fp4)");
  TensorArg out = tensor_arg(info, 1, "quant4_table", "out", 16, DType::F32);
  const float* t = quant4_table(static_cast<Quant4Format>(format));
  for (int i = 0; i < 16; i++) out.f32()[i] = t[i];
  return info.Env().Undefined();
}
static Napi::Value DynamicMap8Binding(const Napi::CallbackInfo& info) {
  const bool is_signed = bool_arg(info, 0, "dynamic_map8", "signed");
  TensorArg out = tensor_arg(info, 1, "dynamic_map8", "out", 256, DType::F32);
  const float* m = dynamic_map(is_signed);
  for (int i = 0; i < 256; i++) out.f32()[i] = m[i];
  return info.Env().Undefined();
}

static void register_nf4(Napi::Env env, Napi::Object exports) {
  exports.Set("quant4_quantize", Napi::Function::New(env, Quant4QuantizeBinding));
  exports.Set("quant4_dequantize", Napi::Function::New(env, Quant4DequantizeBinding));
  exports.Set("quant4_table", Napi::Function::New(env, Quant4TableBinding));
  exports.Set("blockwise_quantize8", Napi::Function::New(env, BlockwiseQuantize8Binding));
  exports.Set("blockwise_dequantize8", Napi::Function::New(env, BlockwiseDequantize8Binding));
  exports.Set("dynamic_map8", Napi::Function::New(env, DynamicMap8Binding));
}
TB_REGISTER_OPS(nf4, register_nf4);

}  // namespace tb
