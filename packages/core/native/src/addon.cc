// Registration only: the tensor class, memory accounting, then every op
// family that registered itself (see registry.h).
#include <napi.h>
#include <cstdlib>
#include <thread>
#include "parallel.h"
#include "registry.h"
#include "tensor.h"

namespace tb {

void set_alloc_limit(size_t bytes);

std::vector<std::pair<const char*, Registrar>>& op_registry() {
  static std::vector<std::pair<const char*, Registrar>> r;
  return r;
}

static int g_threads = 0;
int num_threads() {
  if (g_threads <= 0) {
    const char* env = std::getenv("TUNEBENCH_THREADS");
    int n = env ? std::atoi(env) : 0;
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    g_threads = n > 0 ? n : 1;
  }
  return g_threads;
}
void set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

static Napi::Value MemorySnapshot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MemoryCounters m = memory_counters();
  Napi::Object out = Napi::Object::New(env);
  for (int d = 0; d < kNumDevices; d++) {
    Napi::Object dev = Napi::Object::New(env);
    Napi::Object live = Napi::Object::New(env), peak = Napi::Object::New(env);
    for (int c = 0; c < kNumCategories; c++) {
      const char* name = category_name(static_cast<Category>(c));
      live.Set(name, Napi::Number::New(env, static_cast<double>(m.live[d][c])));
      peak.Set(name, Napi::Number::New(env, static_cast<double>(m.peak[d][c])));
    }
    dev.Set("live", live);
    dev.Set("peak", peak);
    dev.Set("liveTotal", Napi::Number::New(env, static_cast<double>(m.live_total[d])));
    dev.Set("peakTotal", Napi::Number::New(env, static_cast<double>(m.peak_total[d])));
    dev.Set("allocations", Napi::Number::New(env, static_cast<double>(m.allocations[d])));
    if (d == static_cast<int>(Device::CPU)) dev.Set("cachedBytes", Napi::Number::New(env, static_cast<double>(memory_cached_bytes())));
    else dev.Set("cachedBytes", Napi::Number::New(env, 0));
    out.Set(device_name(static_cast<Device>(d)), dev);
  }
  return out;
}

static Napi::Value MemoryResetPeak(const Napi::CallbackInfo& info) {
  memory_reset_peak();
  return info.Env().Undefined();
}

static Napi::Value MemoryEmptyCache(const Napi::CallbackInfo& info) {
  memory_empty_cache();
  return info.Env().Undefined();
}

static Napi::Value SetAllocLimit(const Napi::CallbackInfo& info) {
  double v = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  set_alloc_limit(v > 0 ? static_cast<size_t>(v) : 0);
  return info.Env().Undefined();
}

static Napi::Value GetThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), num_threads());
}

static Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "setThreads(n): n must be a number");
  set_num_threads(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  NativeTensor::Init(env, exports);
  exports.Set("memorySnapshot", Napi::Function::New(env, MemorySnapshot));
  exports.Set("memoryResetPeak", Napi::Function::New(env, MemoryResetPeak));
  exports.Set("setAllocLimit", Napi::Function::New(env, SetAllocLimit));
  exports.Set("memoryEmptyCache", Napi::Function::New(env, MemoryEmptyCache));
  exports.Set("getThreads", Napi::Function::New(env, GetThreads));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
#ifdef TUNEBENCH_CUDA
  exports.Set("cudaCompiled", Napi::Boolean::New(env, true));
#else
  exports.Set("cudaCompiled", Napi::Boolean::New(env, false));
#endif
  Napi::Array families = Napi::Array::New(env);
  uint32_t i = 0;
  for (auto& [name, fn] : op_registry()) {
    fn(env, exports);
    families.Set(i++, Napi::String::New(env, name));
  }
  exports.Set("opFamilies", families);
  return exports;
}

}  // namespace tb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tb::Init(env, exports); }
NODE_API_MODULE(tunebench, InitAddon)
