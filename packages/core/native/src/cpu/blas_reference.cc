// OpenBLAS sgemm, loaded at run time when the library is installed, so the
// kernel benchmark can time our GEMM against it side by side. Never used by
// training; the build does not link it.
#include <dlfcn.h>

#include <string>

#include "args.h"
#include "gemm.h"
#include "operand.h"
#include "registry.h"

namespace tb {
namespace {

enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using StrFn = char* (*)();
using SetThreadsFn = void (*)(int);

struct Blas {
  bool tried = false;
  void* lib = nullptr;
  SgemmFn sgemm = nullptr;
  std::string path, config, core, error;
};

Blas& blas() {
  static Blas b;
  if (b.tried) return b;
  b.tried = true;
  const char* candidates[] = {"libopenblas.so.0", "libopenblas.so", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"};
  for (const char* c : candidates) {
    b.lib = dlopen(c, RTLD_NOW | RTLD_LOCAL);
    if (b.lib) { b.path = c; break; }
  }
  if (!b.lib) { b.error = "libopenblas not found (Debian: apt-get install libopenblas-dev)"; return b; }
  b.sgemm = reinterpret_cast<SgemmFn>(dlsym(b.lib, "cblas_sgemm"));
  if (!b.sgemm) { b.error = "cblas_sgemm missing from " + b.path; return b; }
  if (auto f = reinterpret_cast<StrFn>(dlsym(b.lib, "openblas_get_config"))) b.config = f();
  if (auto f = reinterpret_cast<StrFn>(dlsym(b.lib, "openblas_get_corename"))) b.core = f();
  return b;
}

}  // namespace

// openblasInfo() -> { available, path, config, core, error }
static Napi::Value OpenblasInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Blas& b = blas();
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", Napi::Boolean::New(env, b.sgemm != nullptr));
  o.Set("path", Napi::String::New(env, b.path));
  o.Set("config", Napi::String::New(env, b.config));
  o.Set("core", Napi::String::New(env, b.core));
  o.Set("error", Napi::String::New(env, b.error));
  return o;
}

// openblasSetThreads(n)
static Napi::Value OpenblasSetThreads(const Napi::CallbackInfo& info) {
  Blas& b = blas();
  if (b.lib) {
    if (auto f = reinterpret_cast<SetThreadsFn>(dlsym(b.lib, "openblas_set_num_threads")))
      f(static_cast<int>(int_arg(info, 0, "openblas_set_threads", "n", 1)));
  }
  return info.Env().Undefined();
}

// openblas_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc): row-major, f32 only
static Napi::Value OpenblasSgemm(const Napi::CallbackInfo& info) {
  const char* fn = "openblas_sgemm";
  Blas& b = blas();
  if (!b.sgemm) throw Napi::Error::New(info.Env(), std::string(fn) + ": " + b.error);
  GemmArgs g = gemm_args(info, fn, false);
  b.sgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans, g.tb ? CblasTrans : CblasNoTrans, static_cast<int>(g.M),
          static_cast<int>(g.N), static_cast<int>(g.K), g.alpha, g.a.f32(), static_cast<int>(g.lda), g.b.dense.f32(),
          static_cast<int>(g.ldb), g.beta, g.c.f32(), static_cast<int>(g.ldc));
  return info.Env().Undefined();
}

static void register_blas_reference(Napi::Env env, Napi::Object exports) {
  exports.Set("openblas_info", Napi::Function::New(env, OpenblasInfo));
  exports.Set("openblas_set_threads", Napi::Function::New(env, OpenblasSetThreads));
  exports.Set("openblas_sgemm", Napi::Function::New(env, OpenblasSgemm));
}
TB_REGISTER_OPS(blas_reference, register_blas_reference);

}  // namespace tb
