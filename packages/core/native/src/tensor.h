// The JS handle on a Storage (the napi half of the tensor; storage.h holds
// the napi-free half that kernels and CUDA sources include).
#pragma once
#include <napi.h>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "storage.h"

namespace tb {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  static bool IsTensor(Napi::Value v);
  static NativeTensor* From(Napi::Value v);  // nullptr if not a tensor
  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;
  Storage* storage() { return storage_; }

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value GetBytes(const Napi::CallbackInfo& info);
  Storage* storage_ = nullptr;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> views_;
  static Napi::FunctionReference* constructor_;
};

}  // namespace tb
