// cuBLASLt as an optional reference for the own GEMM kernel (benchmarks and
// cross-checks): libcublasLt is loaded with dlopen on first use, trying
// .so.13, .so.12, then .so, and called through the few entry points declared
// here (its C API with opaque handles; the enum values are those of
// cublasLt.h / library_types.h). It is never a build or link requirement;
// without it, gemm(..., reference) on CUDA tensors fails with "cuBLASLt not
// found".
//
// Product: bf16 A and B, fp32 compute, scale and output (cuBLASLt's
// CUBLAS_COMPUTE_32F with CUDA_R_16BF inputs, CUDA_R_32F C/D). Row-major
// C [M, N] is the column-major N x M matrix op(B)^T op(A)^T, so op(B) is
// cuBLASLt's A and op(A) its B.
//
// Status: compiled, not yet run on a GPU.
#include <dlfcn.h>

#include <memory>
#include <mutex>
#include <string>

#include "common.cuh"
#include "gemm.h"

namespace tb::cuda {
namespace {

using Status = int;  // cublasStatus_t, 0 = success
using LtHandle = void*;
using LtDesc = void*;
using LtLayout = void*;
using LtPref = void*;
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristic {
  LtAlgo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};

constexpr int kComputeF32 = 68;  // CUBLAS_COMPUTE_32F
constexpr int kR32F = 0;         // CUDA_R_32F
constexpr int kR16BF = 14;       // CUDA_R_16BF
constexpr int kDescTransA = 3;   // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kDescTransB = 4;   // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int kPrefMaxWorkspace = 1;  // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kPrefMinAlignA = 5;     // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES (B, C, D: 6, 7, 8)
constexpr int kOpN = 0, kOpT = 1;
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct Api {
  std::string error;  // empty when loaded
  LtHandle handle = nullptr;
  Status (*create)(LtHandle*) = nullptr;
  Status (*desc_create)(LtDesc*, int, int) = nullptr;
  Status (*desc_set)(LtDesc, int, const void*, size_t) = nullptr;
  Status (*desc_destroy)(LtDesc) = nullptr;
  Status (*layout_create)(LtLayout*, int, uint64_t, uint64_t, int64_t) = nullptr;
  Status (*layout_destroy)(LtLayout) = nullptr;
  Status (*pref_create)(LtPref*) = nullptr;
  Status (*pref_set)(LtPref, int, const void*, size_t) = nullptr;
  Status (*pref_destroy)(LtPref) = nullptr;
  Status (*heuristic)(LtHandle, LtDesc, LtLayout, LtLayout, LtLayout, LtLayout, LtPref, int, LtHeuristic*, int*) = nullptr;
  Status (*matmul)(LtHandle, LtDesc, const void*, const void*, LtLayout, const void*, LtLayout, const void*,
                   const void*, LtLayout, void*, LtLayout, const LtAlgo*, void*, size_t, cudaStream_t) = nullptr;
};

template <typename F>
bool sym(void* lib, const char* name, F& f, std::string& error) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (!f) error = std::string("libcublasLt has no ") + name;
  return f != nullptr;
}

Api load() {
  Api a;
  void* lib = nullptr;
  std::string tried;
  for (const char* name : {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char* e = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name);
  }
  if (!lib) { a.error = "cuBLASLt not found (" + tried + ")"; return a; }
  std::string& err = a.error;
  if (!sym(lib, "cublasLtCreate", a.create, err) || !sym(lib, "cublasLtMatmulDescCreate", a.desc_create, err) ||
      !sym(lib, "cublasLtMatmulDescSetAttribute", a.desc_set, err) ||
      !sym(lib, "cublasLtMatmulDescDestroy", a.desc_destroy, err) ||
      !sym(lib, "cublasLtMatrixLayoutCreate", a.layout_create, err) ||
      !sym(lib, "cublasLtMatrixLayoutDestroy", a.layout_destroy, err) ||
      !sym(lib, "cublasLtMatmulPreferenceCreate", a.pref_create, err) ||
      !sym(lib, "cublasLtMatmulPreferenceSetAttribute", a.pref_set, err) ||
      !sym(lib, "cublasLtMatmulPreferenceDestroy", a.pref_destroy, err) ||
      !sym(lib, "cublasLtMatmulAlgoGetHeuristic", a.heuristic, err) || !sym(lib, "cublasLtMatmul", a.matmul, err)) {
    err = "cuBLASLt not found (" + err + ")";
    return a;  // the library stays loaded; it is not used
  }
  const Status s = a.create(&a.handle);
  if (s != 0) a.error = "cuBLASLt not usable: cublasLtCreate returned status " + std::to_string(s);
  return a;
}

Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] { a = load(); });
  return a;
}

void lt_check(Status s, const char* what) {
  if (s != 0) throw DeviceError(std::string("cuBLASLt: ") + what + " returned status " + std::to_string(s));
}

// Descriptors freed on every path.
struct Scope {
  Api& a;
  LtDesc desc = nullptr;
  LtLayout la = nullptr, lb = nullptr, lc = nullptr;
  LtPref pref = nullptr;
  explicit Scope(Api& api) : a(api) {}
  ~Scope() {
    if (pref) a.pref_destroy(pref);
    if (lc) a.layout_destroy(lc);
    if (lb) a.layout_destroy(lb);
    if (la) a.layout_destroy(la);
    if (desc) a.desc_destroy(desc);
  }
};

}  // namespace

std::string cublaslt_status() { return api().error; }

void gemm_cublaslt(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C,
                   int64_t ldc) {
  Api& a = api();
  if (!a.error.empty()) throw DeviceError(a.error);
  if (M <= 0 || N <= 0) return;
  if (K <= 0) { cuda::gemm(M, N, K, alpha, A, B, beta, C, ldc); return; }  // C = beta * C
  // stored extents: A is [K, M] when transposed, else [M, K]; B [N, K] when transposed, else [K, N]
  const int64_t a_rows = A.trans ? K : M, a_cols = A.trans ? M : K;
  const int64_t b_rows = B.trans ? N : K, b_cols = B.trans ? K : N;
  const void* ap = A.p;
  const void* bp = B.p;
  int64_t lda = A.ld, ldb = B.ld;
  std::unique_ptr<Workspace<uint16_t>> a16, b16;
  if (A.dtype != DType::BF16) {
    a16 = std::make_unique<Workspace<uint16_t>>(static_cast<size_t>(a_rows * a_cols), Device::CUDA);
    to_bf16_stored(A, a_rows, a_cols, a16->data());
    ap = a16->data();
    lda = a_cols;
  }
  if (B.dtype != DType::BF16) {
    b16 = std::make_unique<Workspace<uint16_t>>(static_cast<size_t>(b_rows * b_cols), Device::CUDA);
    to_bf16_stored(B, b_rows, b_cols, b16->data());
    bp = b16->data();
    ldb = b_cols;
  }
  Workspace<uint8_t> ws(kWorkspaceBytes, Device::CUDA);
  Scope s(a);
  lt_check(a.desc_create(&s.desc, kComputeF32, kR32F), "cublasLtMatmulDescCreate");
  // cuBLASLt's A = op(B)^T (N x K): stored [N, K] row-major is column-major K x N -> transpose;
  // stored [K, N] is column-major N x K as it is.
  const int32_t opa = B.trans ? kOpT : kOpN, opb = A.trans ? kOpT : kOpN;
  lt_check(a.desc_set(s.desc, kDescTransA, &opa, sizeof opa), "cublasLtMatmulDescSetAttribute(TRANSA)");
  lt_check(a.desc_set(s.desc, kDescTransB, &opb, sizeof opb), "cublasLtMatmulDescSetAttribute(TRANSB)");
  lt_check(a.layout_create(&s.la, kR16BF, static_cast<uint64_t>(b_cols), static_cast<uint64_t>(b_rows), ldb),
           "cublasLtMatrixLayoutCreate(A)");
  // cuBLASLt's B = op(A)^T (K x M): stored [M, K] is column-major K x M; stored [K, M] is M x K -> transpose.
  lt_check(a.layout_create(&s.lb, kR16BF, static_cast<uint64_t>(a_cols), static_cast<uint64_t>(a_rows), lda),
           "cublasLtMatrixLayoutCreate(B)");
  lt_check(a.layout_create(&s.lc, kR32F, static_cast<uint64_t>(N), static_cast<uint64_t>(M), ldc),
           "cublasLtMatrixLayoutCreate(C)");
  lt_check(a.pref_create(&s.pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t wsb = kWorkspaceBytes;
  lt_check(a.pref_set(s.pref, kPrefMaxWorkspace, &wsb, sizeof wsb), "cublasLtMatmulPreferenceSetAttribute");
  // The heuristic assumes 256-byte aligned buffers unless told otherwise; give
  // it the actual alignment of each pointer (cuBLASLt's A is bp, its B is ap)
  // so it never picks an algorithm the buffers cannot run.
  auto align_of = [](const void* p) -> uint32_t {
    const uintptr_t u = reinterpret_cast<uintptr_t>(p);
    uint32_t al = 256;
    while (al > 1 && (u & (al - 1)) != 0) al >>= 1;
    return al;
  };
  const uint32_t aligns[4] = {align_of(bp), align_of(ap), align_of(C), align_of(C)};
  for (int i = 0; i < 4; i++)
    lt_check(a.pref_set(s.pref, kPrefMinAlignA + i, &aligns[i], sizeof aligns[i]),
             "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
  LtHeuristic h{};
  int found = 0;
  lt_check(a.heuristic(a.handle, s.desc, s.la, s.lb, s.lc, s.lc, s.pref, 1, &h, &found), "cublasLtMatmulAlgoGetHeuristic");
  if (found < 1) throw DeviceError("cuBLASLt: no algorithm for this bf16 GEMM");
  lt_check(a.matmul(a.handle, s.desc, &alpha, bp, s.la, ap, s.lb, &beta, C, s.lc, C, s.lc, &h.algo, ws.data(),
                    kWorkspaceBytes, stream()),
           "cublasLtMatmul");
}

}  // namespace tb::cuda
