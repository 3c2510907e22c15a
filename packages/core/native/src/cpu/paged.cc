// Paged optimizer state (cuda/managed.cu): tensors of category
// optimizer_host on device cuda live in CUDA managed memory, and the
// optimizer moves them with prefetch: to the GPU before its step, back to the
// host after it.
#include <string>

#include "args.h"
#include "device.h"
#include "registry.h"

namespace tb {

// prefetch(tensor, device) -> whether anything was queued: 'cuda' migrates a
// managed tensor's pages to the GPU, 'cpu' to the host (queued on the core's
// stream, so kernels launched after it find the pages there). Tensors that
// are not managed (CPU tensors, ordinary CUDA memory) are left alone.
static Napi::Value PrefetchBinding(const Napi::CallbackInfo& info) {
  const char* fn = "prefetch";
  TensorArg t = tensor_arg_any_device(info, 0, fn, "tensor", 0, DType::F32, true);
  if (info.Length() < 2 || !info[1].IsString()) throw arg_error(info, fn, "'device' must be 'cpu' or 'cuda'");
  const std::string to = info[1].As<Napi::String>().Utf8Value();
  if (to != "cpu" && to != "cuda") throw arg_error(info, fn, "'device' must be 'cpu' or 'cuda', got '" + to + "'");
  if (t.dev != Device::CUDA || t.cat != Category::OptimizerHost || !t.data) return Napi::Boolean::New(info.Env(), false);
  return guarded(info, [&]() -> Napi::Value {
    device::cuda_prefetch(t.data, t.numel * dtype_size(t.dtype), to == "cuda" ? Device::CUDA : Device::CPU);
    return Napi::Boolean::New(info.Env(), true);
  });
}

static void register_paged(Napi::Env env, Napi::Object exports) {
  exports.Set("prefetch", Napi::Function::New(env, PrefetchBinding));
}
TB_REGISTER_OPS(paged, register_paged);

}  // namespace tb
