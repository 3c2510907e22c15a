// A weight operand of a binding: a dense tensor (f32 or bf16) or a quantized
// weight passed as a plain object (see src/quant/quant4.ts, nativeOperand):
//   { kind: 'q4', format: 0 nf4 | 1 fp4, rows, cols, blockSize,
//     packed: u8 tensor, absmax: f32 tensor | null,
//     dqCodes: u8 tensor | null, dqScales: f32 tensor | null, dqOffset, dqBlock }
//   { kind: 'intn', rows, cols, bits: 2|3|4|8, groupSize: 16|32|64|128,
//     codes: u8 tensor [ceil(rows*cols*bits/8)],
//     scales: f32 tensor [rows*cols/groupSize], offsets: f32 tensor (same) }
// A double-quantized absmax is expanded to fp32 into a workspace here, once
// per call (numel / blockSize floats), as bitsandbytes does before its kernels
// (on the GPU by a kernel, cuda::expand_absmax, into device workspace).
//
// Devices: without a Dispatch every part must be on the CPU (ops with only a
// CPU kernel); with one (weight_arg(..., &d)) every part must be on the
// Dispatch's device, and a weight read first sets it.
#pragma once
#include <memory>
#include <string>

#include "args.h"
#include "cuda/gemm.h"
#include "gemm.h"
#include "intn.h"
#include "quant4.h"

namespace tb {

struct WeightOperand {
  TensorArg dense;                                  // when !quantized
  bool quantized = false;
  QuantKind kind = QuantKind::None;                 // which of q4 / intn is set
  Quant4View q4{};
  IntNView intn{};
  std::unique_ptr<Workspace<float>> absmax_ws;      // expanded double-quantized absmax
  // op(W) as a GEMM operand; `ld` is the stored row length
  MatRef mat(int64_t ld, bool trans) const {
    switch (kind) {
      case QuantKind::None: return MatRef{dense.data, dense.dtype, ld, trans};
      case QuantKind::Q4: return MatRef{q4.packed, DType::U8, ld, trans, &q4, QuantKind::Q4};
      case QuantKind::IntN: return MatRef{intn.codes, DType::U8, ld, trans, nullptr, QuantKind::IntN, &intn};
    }
    return MatRef{dense.data, dense.dtype, ld, trans};  // unreachable
  }
};

inline int block_shift_of(int64_t block) {
  int s = 0;
  while ((int64_t(1) << s) < block) s++;
  return (int64_t(1) << s) == block ? s : -1;
}

// The weight operand at argument i: W must be [rows, cols] (a dense tensor of
// at least rows*cols elements, or a quantized weight of exactly that shape).
// keep_double_quant (CPU only): a double-quantized absmax is left as its
// codes in the view's dq_* fields instead of expanded (for the decode GEMV,
// which expands it per output row on the fly; no per-call workspace).
// weight_value parses value `v` (argument i of the call when i < info.Length(),
// which a Dispatch needs; else an element of an array argument, CPU only).
inline WeightOperand weight_value(const Napi::CallbackInfo& info, Napi::Value v, size_t i, const char* fn, const char* name,
                                  int64_t rows, int64_t cols, int64_t dense_min_numel = -1, Dispatch* d = nullptr,
                                  bool keep_double_quant = false) {
  WeightOperand w;
  if (!v.IsEmpty() && v.IsObject() && !NativeTensor::IsTensor(v)) {
    Napi::Object o = v.As<Napi::Object>();
    auto field = [&](const char* k) { return o.Get(k); };
    auto num = [&](const char* k) -> double {
      Napi::Value v = field(k);
      if (!v.IsNumber()) throw arg_error(info, fn, std::string("quantized '") + name + "': field '" + k + "' must be a number");
      return v.As<Napi::Number>().DoubleValue();
    };
    Napi::Value kind = field("kind");
    const std::string kind_s = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : std::string();
    if (kind_s != "q4" && kind_s != "intn")
      throw arg_error(info, fn, std::string("'") + name + "' must be a tensor or a quantized weight (kind 'q4' or 'intn')");
    const int64_t qr = static_cast<int64_t>(num("rows")), qc = static_cast<int64_t>(num("cols"));
    if (qr != rows || qc != cols)
      throw arg_error(info, fn, std::string("quantized '") + name + "' is [" + std::to_string(qr) + ", " + std::to_string(qc) +
                      "], the op needs [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
    // tensor_arg reads info[j]; wrap the object's fields in a tiny argument list
    auto field_tensor = [&](const char* k, size_t min_numel, DType dt, bool nullable) -> TensorArg {
      Napi::Value v = field(k);
      TensorArg t;
      if (v.IsNull() || v.IsUndefined()) {
        if (nullable) return t;
        throw arg_error(info, fn, std::string("quantized '") + name + "': field '" + k + "' is missing");
      }
      NativeTensor* nt = NativeTensor::From(v);
      if (!nt) throw arg_error(info, fn, std::string("quantized '") + name + "': field '" + k + "' is not a native tensor");
      Storage* s = nt->storage();
      if (s->freed) throw arg_error(info, fn, std::string("quantized '") + name + "': '" + k + "' was disposed");
      if (!d) {
        if (s->kernel_dev() != Device::CPU) throw arg_error(info, fn, std::string("quantized '") + name + "': '" + k + "' is not on the CPU");
      } else if (!d->first) {
        d->first = name;
        d->dev = s->kernel_dev();
      } else if (s->kernel_dev() != d->dev) {
        throw arg_error(info, fn, std::string("quantized '") + name + "': '" + k + "' is on " + device_name(s->kernel_dev()) + " but '" +
                        d->first + "' is on " + device_name(d->dev) + ": all operands of one op must be on one device (Tensor.to)");
      }
      if (s->dtype != dt) throw arg_error(info, fn, std::string("quantized '") + name + "': '" + k + "' has dtype " + dtype_name(s->dtype) + ", expected " + dtype_name(dt));
      if (s->numel < min_numel)
        throw arg_error(info, fn, std::string("quantized '") + name + "': '" + k + "' has " + std::to_string(s->numel) + " elements, needs " + std::to_string(min_numel));
      t.data = s->data; t.numel = s->numel; t.dtype = s->dtype; t.cat = s->cat; t.dev = s->kernel_dev();
      return t;
    };
    if (kind_s == "intn") {
      const int64_t bits = static_cast<int64_t>(num("bits")), group = static_cast<int64_t>(num("groupSize"));
      if (!intn_bits_ok(bits)) throw arg_error(info, fn, std::string("quantized '") + name + "': bits must be 2, 3, 4 or 8");
      if (!intn_group_ok(group)) throw arg_error(info, fn, std::string("quantized '") + name + "': groupSize must be 16, 32, 64 or 128");
      if (cols % group != 0) throw arg_error(info, fn, std::string("quantized '") + name + "': its columns are not a multiple of groupSize");
      const int64_t numel = rows * cols, ngroups = numel / group;
      TensorArg codes = field_tensor("codes", static_cast<size_t>(intn_code_bytes(numel, static_cast<int>(bits))), DType::U8, false);
      TensorArg scales = field_tensor("scales", static_cast<size_t>(ngroups), DType::F32, false);
      TensorArg offsets = field_tensor("offsets", static_cast<size_t>(ngroups), DType::F32, false);
      w.quantized = true;
      w.kind = QuantKind::IntN;
      w.intn = IntNView{codes.as<uint8_t>(), scales.f32(), offsets.f32(), rows, cols, static_cast<int>(bits), block_shift_of(group)};
      // optional fp16 constants (CPU decode only): u8 tensor, scales then offsets; zero16 a number when offsets are -zero16 * scale
      Napi::Value c16 = field("constants16");
      if (!c16.IsNull() && !c16.IsUndefined()) {
        Napi::Value zv = field("zero16");
        const bool sym = zv.IsNumber();
        TensorArg c = field_tensor("constants16", static_cast<size_t>(ngroups * (sym ? 2 : 4)), DType::U8, false);
        if (c.dev != Device::CPU) throw arg_error(info, fn, std::string("quantized '") + name + "': 'constants16' is not on the CPU");
        w.intn.scales16 = c.as<uint16_t>();
        if (sym) w.intn.zero16 = static_cast<float>(zv.As<Napi::Number>().DoubleValue());
        else w.intn.offsets16 = c.as<uint16_t>() + ngroups;
      }
      return w;
    }
    const int64_t block = static_cast<int64_t>(num("blockSize"));
    const int shift = block_shift_of(block);
    if (shift < 5 || shift > 12) throw arg_error(info, fn, std::string("quantized '") + name + "': blockSize must be a power of two in 32..4096");
    const int format = static_cast<int>(num("format"));
    if (format != 0 && format != 1) throw arg_error(info, fn, std::string("quantized '") + name + "': unknown 4-bit format");
    const int64_t numel = rows * cols, nblocks = (numel + block - 1) / block;
    TensorArg packed = field_tensor("packed", static_cast<size_t>((numel + 1) / 2), DType::U8, false);
    TensorArg absmax = field_tensor("absmax", static_cast<size_t>(nblocks), DType::F32, true);
    w.quantized = true;
    w.kind = QuantKind::Q4;
    w.q4.packed = packed.as<uint8_t>();
    w.q4.table = quant4_table(static_cast<Quant4Format>(format));
    w.q4.rows = rows;
    w.q4.cols = cols;
    w.q4.block_shift = shift;
    if (absmax.data) {
      w.q4.absmax = absmax.f32();
    } else {
      const int64_t dq_block = static_cast<int64_t>(num("dqBlock"));
      if (dq_block < 1) throw arg_error(info, fn, std::string("quantized '") + name + "': dqBlock must be >= 1");
      TensorArg codes = field_tensor("dqCodes", static_cast<size_t>(nblocks), DType::U8, false);
      TensorArg scales = field_tensor("dqScales", static_cast<size_t>((nblocks + dq_block - 1) / dq_block), DType::F32, false);
      const float offset = static_cast<float>(num("dqOffset"));
      const Device dev = codes.dev;
      if (keep_double_quant && dev == Device::CPU) {
        w.q4.absmax = nullptr;
        w.q4.dq_codes = codes.as<uint8_t>();
        w.q4.dq_scales = scales.f32();
        w.q4.dq_map = dynamic_map(true);
        w.q4.dq_offset = offset;
        w.q4.dq_block = dq_block;
        return w;
      }
      // expanded here, before the op's own guarded body: map the core's errors the same way
      guarded(info, [&]() -> Napi::Value {
        w.absmax_ws = std::make_unique<Workspace<float>>(static_cast<size_t>(nblocks), dev);
        const float* map = dynamic_map(true);
        const uint8_t* c = codes.as<uint8_t>();
        const float* sc = scales.f32();
        float* a = w.absmax_ws->data();
        if (dev == Device::CUDA) TB_ON_CUDA(cuda::expand_absmax(c, sc, nblocks, dq_block, offset, map, a));
        else for (int64_t b = 0; b < nblocks; b++) a[b] = map[c[b]] * sc[b / dq_block] + offset;
        return info.Env().Undefined();
      });
      w.q4.absmax = w.absmax_ws->data();
    }
    return w;
  }
  const size_t dense_numel = static_cast<size_t>(dense_min_numel >= 0 ? dense_min_numel : rows * cols);
  TensorArg t;
  if (d) {
    t = d->tensor(i, name, dense_numel, DType::F32, true);
  } else {
    t = tensor_value_any_device(info, v, fn, name, dense_numel, DType::F32, true);
    if (t.dev != Device::CPU && t.data)
      throw arg_error(info, fn, std::string("tensor '") + name + "' is on " + device_name(t.dev) +
                      "; this op has no " + device_name(t.dev) + " kernel (copy it to the CPU)");
  }
  if (t.dtype != DType::F32 && t.dtype != DType::BF16)
    throw arg_error(info, fn, std::string("'") + name + "' must be f32, bf16 or a quantized weight");
  w.dense = t;
  return w;
}

inline WeightOperand weight_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name,
                                int64_t rows, int64_t cols, int64_t dense_min_numel = -1, Dispatch* d = nullptr,
                                bool keep_double_quant = false) {
  return weight_value(info, i < info.Length() ? info[i] : Napi::Value(), i, fn, name, rows, cols, dense_min_numel, d, keep_double_quant);
}

// The 13 arguments of a GEMM binding, checked: (transA, transB, M, N, K,
// alpha, A, lda, B, ldb, beta, C, ldc). A is f32 or, when allow_bf16, bf16;
// B also, or (allow_quant) a quantized weight; each buffer must hold its
// strided extent. With a Dispatch, A, B (every part) and C must share one
// device (else all must be on the CPU).
struct GemmArgs {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float alpha, beta;
  TensorArg a, c;
  WeightOperand b;
};
GemmArgs gemm_args(const Napi::CallbackInfo& info, const char* fn, bool allow_bf16, bool allow_quant = false,
                   Dispatch* d = nullptr);

}  // namespace tb
