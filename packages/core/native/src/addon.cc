// Registration only: the tensor class, memory accounting, then every op
// family that registered itself (see registry.h).
#include <napi.h>
#include <cstdlib>
#include <thread>
#include <unistd.h>
#include <algorithm>
#include "args.h"
#include "device.h"
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
    if (d == static_cast<int>(Device::CPU)) {
      dev.Set("cachedBytes", Napi::Number::New(env, static_cast<double>(memory_cached_bytes())));
    } else {
      // the pool's own figures: bytes held from the driver now and at most
      // since the last reset; cached = held but not handed out
      device::CudaMemory cm = device::cuda_memory();
      if (fake_cuda()) {  // host memory: the pool is the live bytes (or the fallback's cache), the "device" fake_cuda_total_bytes()
        cm.total_bytes = fake_cuda_total_bytes();
        if (fake_cuda_allocator().pool) {
          cm.reserved_bytes = static_cast<size_t>(m.live_total[d]);
          cm.reserved_peak = static_cast<size_t>(m.peak_total[d]);
        } else {
          cm.reserved_bytes = fake_cuda_cache().reserved();
          cm.reserved_peak = fake_cuda_cache().reserved_peak();
        }
        cm.free_bytes = cm.total_bytes - std::min(cm.total_bytes, cm.reserved_bytes);
      }
      double live_total = static_cast<double>(m.live_total[d]);
      double reserved = static_cast<double>(cm.reserved_bytes);
      dev.Set("cachedBytes", Napi::Number::New(env, reserved > live_total ? reserved - live_total : 0));
      dev.Set("reservedBytes", Napi::Number::New(env, reserved));
      dev.Set("reservedPeakBytes", Napi::Number::New(env, static_cast<double>(cm.reserved_peak)));
      dev.Set("deviceFreeBytes", Napi::Number::New(env, static_cast<double>(cm.free_bytes)));
      dev.Set("deviceTotalBytes", Napi::Number::New(env, static_cast<double>(cm.total_bytes)));
    }
    out.Set(device_name(static_cast<Device>(d)), dev);
  }
  return out;
}

static Napi::Value MemoryResetPeak(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    memory_reset_peak();
    device::cuda_reset_peak();
    if (fake_cuda()) fake_cuda_cache().reset_peak();
    return info.Env().Undefined();
  });
}

static Napi::Value MemoryEmptyCache(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    memory_empty_cache();
    device::cuda_empty_cache();
    if (fake_cuda()) fake_cuda_cache().release_cached();
    return info.Env().Undefined();
  });
}

// cudaDevices() -> number of usable CUDA devices (0 in a CPU-only build)
static Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  if (fake_cuda()) return Napi::Number::New(info.Env(), 1);
  return Napi::Number::New(info.Env(), device::cuda_device_count());
}

// cudaInfo() -> { available, reason, name, capability, sms, totalBytes, driverVersion, runtimeVersion }
static Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("compiled", Napi::Boolean::New(env, device::cuda_compiled()));
  if (fake_cuda()) {
    o.Set("available", Napi::Boolean::New(env, true));
    o.Set("fake", Napi::Boolean::New(env, true));
    o.Set("name", Napi::String::New(env, "fake CUDA (host memory, TUNEBENCH_FAKE_CUDA=1)"));
    o.Set("capability", Napi::String::New(env, "0.0"));
    o.Set("sms", Napi::Number::New(env, 0));
    o.Set("totalBytes", Napi::Number::New(env, static_cast<double>(fake_cuda_total_bytes())));
    o.Set("memoryPool", Napi::Boolean::New(env, fake_cuda_allocator().pool));
    o.Set("allocator", Napi::String::New(env, device::allocator_name(fake_cuda_allocator())));
    return o;
  }
  bool ok = device::cuda_device_count() > 0;
  o.Set("available", Napi::Boolean::New(env, ok));
  if (!ok) {
    o.Set("reason", Napi::String::New(env, device::cuda_unavailable_reason()));
    return o;
  }
  return guarded(info, [&]() -> Napi::Value {
    device::CudaInfo ci = device::cuda_info();
    o.Set("name", Napi::String::New(env, ci.name));
    o.Set("capability", Napi::String::New(env, std::to_string(ci.major) + "." + std::to_string(ci.minor)));
    o.Set("sms", Napi::Number::New(env, ci.sms));
    o.Set("totalBytes", Napi::Number::New(env, static_cast<double>(ci.total_bytes)));
    o.Set("driverVersion", Napi::Number::New(env, ci.driver_version));
    o.Set("runtimeVersion", Napi::Number::New(env, ci.runtime_version));
    device::AllocatorChoice a = device::cuda_allocator();
    o.Set("memoryPool", Napi::Boolean::New(env, a.pool));
    o.Set("allocator", Napi::String::New(env, device::allocator_name(a)));
    return o;
  });
}

// copy_tensor(src, dst): dst (same byte count, any device) = src. Returns
// once the bytes are in dst.
static Napi::Value CopyTensor(const Napi::CallbackInfo& info) {
  const char* fn = "copy_tensor";
  TensorArg src = tensor_arg_any_device(info, 0, fn, "src", 0, DType::F32, true);
  TensorArg dst = tensor_arg_any_device(info, 1, fn, "dst", 0, DType::F32, true);
  size_t sb = src.numel * dtype_size(src.dtype), db = dst.numel * dtype_size(dst.dtype);
  if (sb != db) throw arg_error(info, fn, "'src' has " + std::to_string(sb) + " bytes, 'dst' " + std::to_string(db));
  return guarded(info, [&]() -> Napi::Value {
    device::copy(dst.data, dst.dev, src.data, src.dev, sb);
    return info.Env().Undefined();
  });
}

// copy_rows(src, srcOffset, srcPitch, dst, dstOffset, dstPitch, rowElems, rows):
// for r < rows, dst[dstOffset + r*dstPitch, + rowElems) = src[srcOffset + r*srcPitch, + rowElems),
// in elements of the two tensors' common element size, on any devices (a KV
// cache append, one row of a device tensor). Every range is checked against
// both tensors first. Returns once the bytes are in dst.
static Napi::Value CopyRows(const Napi::CallbackInfo& info) {
  const char* fn = "copy_rows";
  TensorArg src = tensor_arg_any_device(info, 0, fn, "src", 0, DType::F32, true);
  TensorArg dst = tensor_arg_any_device(info, 3, fn, "dst", 0, DType::F32, true);
  const char* names[] = {"srcOffset", "srcPitch", "", "dstOffset", "dstPitch", "rowElems", "rows"};
  double v[7] = {0, 0, 0, 0, 0, 0, 0};
  for (size_t k : {1u, 2u, 4u, 5u, 6u, 7u}) {
    if (k >= info.Length() || !info[k].IsNumber()) throw arg_error(info, fn, std::string("'") + names[k - 1] + "' must be a number");
    v[k - 1] = info[k].As<Napi::Number>().DoubleValue();
    if (!(v[k - 1] >= 0 && v[k - 1] <= 1e15) || v[k - 1] != static_cast<double>(static_cast<int64_t>(v[k - 1])))
      throw arg_error(info, fn, std::string("'") + names[k - 1] + "' must be an integer from 0 to 1e15");
  }
  size_t es = dtype_size(src.dtype);
  if (dtype_size(dst.dtype) != es) throw arg_error(info, fn, "'src' and 'dst' have different element sizes");
  size_t so = static_cast<size_t>(v[0]), sp = static_cast<size_t>(v[1]), dof = static_cast<size_t>(v[3]),
         dp = static_cast<size_t>(v[4]), n = static_cast<size_t>(v[5]), rows = static_cast<size_t>(v[6]);
  if (rows > 0 && n > 0) {
    if (so + (rows - 1) * sp + n > src.numel) throw arg_error(info, fn, "the rows run past the end of 'src'");
    if (dof + (rows - 1) * dp + n > dst.numel) throw arg_error(info, fn, "the rows run past the end of 'dst'");
  }
  return guarded(info, [&]() -> Napi::Value {
    const char* s = static_cast<const char*>(src.data);
    char* d = static_cast<char*>(dst.data);
    for (size_t r = 0; r < rows && n > 0; r++)
      device::copy(d + (dof + r * dp) * es, dst.dev, s + (so + r * sp) * es, src.dev, n * es);
    return info.Env().Undefined();
  });
}

// synchronize(): waits for every kernel queued on the CUDA stream (no-op on the CPU)
static Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    device::synchronize();
    return info.Env().Undefined();
  });
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
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
  exports.Set("copy_tensor", Napi::Function::New(env, CopyTensor));
  exports.Set("copy_rows", Napi::Function::New(env, CopyRows));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
#ifdef TUNEBENCH_CUDA
  exports.Set("cudaCompiled", Napi::Boolean::New(env, true));
#else
  exports.Set("cudaCompiled", Napi::Boolean::New(env, false));
#endif
  // Each family registers into a fresh object; its names are then moved onto
  // the exports, and a name already there (another family's op, a core
  // function, or a family registered twice) fails loading the addon.
  Napi::Array families = Napi::Array::New(env);
  uint32_t i = 0;
  // Test hook: TUNEBENCH_TEST_DUPLICATE_OP=1 adds a family that registers an
  // existing op name again, so a test can see loading fail.
  std::vector<std::pair<const char*, Registrar>> registry = op_registry();
  const char* dup = std::getenv("TUNEBENCH_TEST_DUPLICATE_OP");
  if (dup && dup[0] == '1') {
    registry.emplace_back("duplicate_test", [](Napi::Env e, Napi::Object x) {
      x.Set("swiglu_forward", Napi::Function::New(e, [](const Napi::CallbackInfo& info) { return info.Env().Undefined(); }));
    });
  }
  for (auto& [name, fn] : registry) {
    for (uint32_t k = 0; k < i; k++) {
      if (families.Get(k).As<Napi::String>().Utf8Value() == name)
        throw Napi::Error::New(env, std::string("tunebench addon: op family '") + name + "' is registered twice");
    }
    Napi::Object part = Napi::Object::New(env);
    fn(env, part);
    Napi::Array keys = part.GetPropertyNames();
    for (uint32_t k = 0; k < keys.Length(); k++) {
      Napi::Value key = keys.Get(k);
      if (exports.HasOwnProperty(key))
        throw Napi::Error::New(env, std::string("tunebench addon: '") + key.As<Napi::String>().Utf8Value() +
                               "' of op family '" + name + "' is already registered: one binding per op, dispatching on the device");
      exports.Set(key, part.Get(key));
    }
    families.Set(i++, Napi::String::New(env, name));
  }
  exports.Set("opFamilies", families);
  return exports;
}

}  // namespace tb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tb::Init(env, exports); }
NODE_API_MODULE(tunebench, InitAddon)
