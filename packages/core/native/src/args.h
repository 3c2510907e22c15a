// Argument unpacking for bindings. TypeScript validates shapes and dtypes
// first; these checks are the last line of defence before raw pointers.
#pragma once
#include <napi.h>
#include <cmath>
#include <string>
#include "tensor.h"

namespace tb {

struct TensorArg {
  void* data = nullptr;
  size_t numel = 0;
  DType dtype = DType::F32;
  Category cat = Category::Workspace;
  Device dev = Device::CPU;
  template <typename T> T* as() const { return static_cast<T*>(data); }
  float* f32() const { return static_cast<float*>(data); }
  bool present() const { return data != nullptr || numel == 0; }
};

inline Napi::Error arg_error(const Napi::CallbackInfo& info, const char* fn, const std::string& msg) {
  return Napi::TypeError::New(info.Env(), std::string(fn) + ": " + msg);
}

// A tensor argument on any device with at least `min_numel` elements of
// dtype `want` (pass want_any=true to accept any dtype and check it yourself).
// Bindings use tensor_arg (CPU only) or a Dispatch (one device for all).
// The same for a value that is not itself an argument (an element of an array
// argument); `v` empty, null or undefined counts as missing.
inline TensorArg tensor_value_any_device(const Napi::CallbackInfo& info, Napi::Value v, const char* fn, const char* name,
                                         size_t min_numel, DType want, bool want_any = false, bool nullable = false) {
  TensorArg t;
  if (v.IsEmpty() || v.IsNull() || v.IsUndefined()) {
    if (nullable) { t.numel = 0; t.data = nullptr; return t; }
    throw arg_error(info, fn, std::string("missing tensor argument '") + name + "'");
  }
  NativeTensor* nt = NativeTensor::From(v);
  if (!nt) throw arg_error(info, fn, std::string("argument '") + name + "' is not a native tensor");
  Storage* s = nt->storage();
  if (s->freed) throw arg_error(info, fn, std::string("tensor '") + name + "' was disposed");
  if (!want_any && s->dtype != want)
    throw arg_error(info, fn, std::string("tensor '") + name + "' has dtype " + dtype_name(s->dtype) + ", expected " + dtype_name(want));
  if (s->numel < min_numel)
    throw arg_error(info, fn, std::string("tensor '") + name + "' has " + std::to_string(s->numel) +
                    " elements, the op needs at least " + std::to_string(min_numel));
  t.data = s->data;
  t.numel = s->numel;
  t.dtype = s->dtype;
  t.cat = s->cat;
  t.dev = s->kernel_dev();  // the CPU under fake CUDA (host memory, CPU kernels)
  return t;
}

inline TensorArg tensor_arg_any_device(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name,
                                       size_t min_numel, DType want, bool want_any = false, bool nullable = false) {
  return tensor_value_any_device(info, i < info.Length() ? info[i] : Napi::Value(), fn, name, min_numel, want, want_any, nullable);
}

// A CPU tensor argument: for bindings whose op has no CUDA kernel.
inline TensorArg tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name,
                            size_t min_numel, DType want, bool want_any = false, bool nullable = false) {
  TensorArg t = tensor_arg_any_device(info, i, fn, name, min_numel, want, want_any, nullable);
  if (t.dev != Device::CPU && t.data)
    throw arg_error(info, fn, std::string("tensor '") + name + "' is on " + device_name(t.dev) +
                    "; this op has no " + device_name(t.dev) + " kernel (copy it to the CPU)");
  return t;
}

// One binding per op, dispatching on the device of its tensors: every tensor
// argument read through the Dispatch must be on the device of the first one
// (absent nullable tensors excepted), else a TypeError naming both.
//
//   Dispatch d(info, "swiglu_forward");
//   TensorArg gate = d.tensor(0, "gate", n, DType::F32);
//   ...
//   if (d.cuda()) TB_ON_CUDA(cuda::swiglu_forward(...)); else swiglu_forward(...);
struct Dispatch {
  const Napi::CallbackInfo& info;
  const char* fn;
  Device dev = Device::CPU;
  const char* first = nullptr;
  Dispatch(const Napi::CallbackInfo& i, const char* f) : info(i), fn(f) {}
  TensorArg tensor(size_t i, const char* name, size_t min_numel, DType want, bool want_any = false, bool nullable = false) {
    TensorArg t = tensor_arg_any_device(info, i, fn, name, min_numel, want, want_any, nullable);
    if (!t.data && t.numel == 0) return t;  // absent (or empty): no device to agree on
    if (!first) { first = name; dev = t.dev; }
    else if (t.dev != dev)
      throw arg_error(info, fn, std::string("tensor '") + name + "' is on " + device_name(t.dev) + " but '" + first +
                      "' is on " + device_name(dev) + ": all operands of one op must be on one device (Tensor.to)");
    return t;
  }
  bool cuda() const { return dev == Device::CUDA; }
};

// Calls into the CUDA backend: compiled only in a CUDA build, elsewhere a
// NoBackend error (unreachable in practice: a CPU-only build cannot allocate
// a CUDA tensor).
#ifdef TUNEBENCH_CUDA
#define TB_ON_CUDA(...) do { __VA_ARGS__; } while (0)
#else
#define TB_ON_CUDA(...) throw ::tb::NoBackend("this build has no CUDA backend (built without nvcc or with TUNEBENCH_NO_CUDA)")
#endif

inline int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t lo = 0) {
  if (i >= info.Length() || !info[i].IsNumber()) throw arg_error(info, fn, std::string("'") + name + "' must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || v != std::floor(v) || v < static_cast<double>(lo) || v > 9.0e15)
    throw arg_error(info, fn, std::string("'") + name + "' must be an integer >= " + std::to_string(lo));
  return static_cast<int64_t>(v);
}

inline double num_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) throw arg_error(info, fn, std::string("'") + name + "' must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

inline bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean()) throw arg_error(info, fn, std::string("'") + name + "' must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

// Converts a tb::OutOfMemory thrown by a kernel's workspace into a JS error.
inline Napi::Error oom_error(const Napi::CallbackInfo& info, const OutOfMemory& e) {
  Napi::Error err = Napi::Error::New(info.Env(), std::string("out of memory: could not allocate ") +
                                     std::to_string(e.bytes) + " bytes of " + category_name(e.cat) + " on " + device_name(e.dev));
  err.Set("code", Napi::String::New(info.Env(), "TB_OOM"));
  err.Set("bytes", Napi::Number::New(info.Env(), static_cast<double>(e.bytes)));
  err.Set("category", Napi::String::New(info.Env(), category_name(e.cat)));
  err.Set("device", Napi::String::New(info.Env(), device_name(e.dev)));
  return err;
}

// Runs a binding's body, turning the core's C++ errors into JS errors with a
// code: TB_OOM (bytes, category, device), TB_NO_CUDA, TB_CUDA.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& body) {
  try {
    return body();
  } catch (const OutOfMemory& e) {
    throw oom_error(info, e);
  } catch (const NoBackend& e) {
    Napi::Error err = Napi::Error::New(info.Env(), std::string("no CUDA backend: ") + e.what());
    err.Set("code", Napi::String::New(info.Env(), "TB_NO_CUDA"));
    throw err;
  } catch (const DeviceError& e) {
    Napi::Error err = Napi::Error::New(info.Env(), e.what());
    err.Set("code", Napi::String::New(info.Env(), "TB_CUDA"));
    throw err;
  }
}

}  // namespace tb
