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
  template <typename T> T* as() const { return static_cast<T*>(data); }
  float* f32() const { return static_cast<float*>(data); }
  bool present() const { return data != nullptr || numel == 0; }
};

inline Napi::Error arg_error(const Napi::CallbackInfo& info, const char* fn, const std::string& msg) {
  return Napi::TypeError::New(info.Env(), std::string(fn) + ": " + msg);
}

// A tensor argument with at least `min_numel` elements of dtype `want`
// (pass want_any=true to accept any dtype and check it yourself).
inline TensorArg tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name,
                            size_t min_numel, DType want, bool want_any = false, bool nullable = false) {
  TensorArg t;
  if (i >= info.Length() || info[i].IsNull() || info[i].IsUndefined()) {
    if (nullable) { t.numel = 0; t.data = nullptr; return t; }
    throw arg_error(info, fn, std::string("missing tensor argument '") + name + "'");
  }
  NativeTensor* nt = NativeTensor::From(info[i]);
  if (!nt) throw arg_error(info, fn, std::string("argument '") + name + "' is not a native tensor");
  Storage* s = nt->storage();
  if (s->freed) throw arg_error(info, fn, std::string("tensor '") + name + "' was disposed");
  if (s->dev != Device::CPU) throw arg_error(info, fn, std::string("tensor '") + name + "' is not on the CPU");
  if (!want_any && s->dtype != want)
    throw arg_error(info, fn, std::string("tensor '") + name + "' has dtype " + dtype_name(s->dtype) + ", expected " + dtype_name(want));
  if (s->numel < min_numel)
    throw arg_error(info, fn, std::string("tensor '") + name + "' has " + std::to_string(s->numel) +
                    " elements, the op needs at least " + std::to_string(min_numel));
  t.data = s->data;
  t.numel = s->numel;
  t.dtype = s->dtype;
  t.cat = s->cat;
  return t;
}

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
  return err;
}

template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& body) {
  try {
    return body();
  } catch (const OutOfMemory& e) {
    throw oom_error(info, e);
  }
}

}  // namespace tb
