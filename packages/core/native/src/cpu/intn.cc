// Group-wise INT-N weights (intn.h): round-to-nearest and GPTQ quantization,
// dequantization, and the explicit decode binding. The GEMM consumes the
// result directly (gemm.cc dequantizes while packing, or decodes a few rows
// group by group); these kernels build it. intn_quantize (RTN) and
// intn_dequantize dispatch on their tensors' device (cuda/intn.cu on CUDA);
// intn_gptq runs on the CPU only.
#include <omp.h>

#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstring>
#include <vector>

#include "args.h"
#include "cuda/intn.h"
#include "gemm.h"
#include "intn.h"
#include "storage.h"
#include "kernels/quant_math.h"
#include "kernels/quantize_math.h"
#include "operand.h"
#include "parallel.h"
#include "registry.h"

namespace tb {
namespace {

template <typename T>
inline float to_f32(T v) {
  if constexpr (std::is_same<T, float>::value) return v; else return bf16_to_f32(v);
}

// Quantizes one row w[0, cols) whose groups' parameters are already known
// or computed here (RTN): writes the row's codes (byte-aligned, zeroed first),
// scales and offsets. Returns the number of groups of finite values whose
// range (max - min) overflows f32 (groups holding NaN/inf are counted by the caller).
// f16: each group's scale and offset rounded to fp16 values first (where
// fp16 holds them: not to zero, not to infinity), the codes then rounded
// against those, so that fp16 storage of the constants is exact.
int64_t intn_rtn_row(const float* w, int64_t cols, int bits, int64_t L, uint8_t* row_codes, float* scales, float* offsets, bool f16 = false) {
  std::memset(row_codes, 0, static_cast<size_t>(cols * bits / 8));
  int64_t bad = 0;
  for (int64_t g = 0; g < cols / L; g++) {
    const float* wg = w + g * L;
    float s, o;
    intn_group_params(wg, L, bits, &s, &o);
    if (!std::isfinite(s) && std::all_of(wg, wg + L, [](float v) { return std::isfinite(v); })) bad++;
    if (f16 && std::isfinite(s) && std::isfinite(o)) {
      const float hs = f16_to_f32(f32_to_f16(s)), ho = f16_to_f32(f32_to_f16(o));
      if (std::isfinite(hs) && (hs != 0.0f || s == 0.0f)) s = hs;
      if (std::isfinite(ho) && (ho != 0.0f || o == 0.0f)) o = ho;
    }
    scales[g] = s;
    offsets[g] = o;
    for (int64_t i = 0; i < L; i++) intn_put_code(row_codes, bits, g * L + i, intn_code(wg[i], s, o, bits));
  }
  return bad;
}

// W [rows, cols] f32|bf16 -> codes, scales, offsets (RTN, every row
// independent; rows start on byte boundaries so threads never share a byte).
// Returns the count of non-finite weights plus groups whose range overflows.
template <typename T>
int64_t intn_quantize_rtn(const T* W, int64_t rows, int64_t cols, int bits, int64_t L, uint8_t* codes, float* scales, float* offsets,
                          bool f16 = false) {
  std::vector<int64_t> bad(static_cast<size_t>(num_threads()) + 1, 0);
  parallel_chunks(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    int64_t nb = 0;
    for (int64_t r = r0; r < r1; r++) {
      for (int64_t i = 0; i < cols; i++) {
        row[i] = to_f32(W[r * cols + i]);
        if (!std::isfinite(row[i])) nb++;
      }
      nb += intn_rtn_row(row.data(), cols, bits, L, codes + r * cols * bits / 8, scales + r * (cols / L), offsets + r * (cols / L), f16);
    }
    bad[static_cast<size_t>(omp_get_thread_num())] += nb;
  }, 4);
  int64_t total = 0;
  for (int64_t v : bad) total += v;
  return total;
}

// sum a[k] b[k], k < n, in double with 8 lanes (vectorisable without
// reassociation flags)
inline double dot_d(const double* __restrict a, const double* __restrict b, int64_t n) {
  double lane[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; l++) lane[l] += a[k + l] * b[k + l];
  double s = 0;
  for (int l = 0; l < 8; l++) s += lane[l];
  for (; k < n; k++) s += a[k] * b[k];
  return s;
}

// In-place lower Cholesky A = M M^T of A [n, n] (row-major, double; reads and
// writes the lower triangle only). Returns false when a pivot is not above
// `tol` (A is singular or not positive definite to working precision).
bool cholesky_lower(double* A, int64_t n, double tol) {
  for (int64_t j = 0; j < n; j++) {
    double* Aj = A + j * n;
    const double d = Aj[j] - dot_d(Aj, Aj, j);
    if (!(d > tol) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    Aj[j] = ljj;
    const double inv = 1.0 / ljj;
    // M[i][j] = (A[i][j] - sum_k<j M[i][k] M[j][k]) / M[j][j] for every i > j
    auto below = [&](int64_t b, int64_t e) {
      for (int64_t i = j + 1 + b; i < j + 1 + e; i++) {
        double* Ai = A + i * n;
        Ai[j] = (Ai[j] - dot_d(Ai, Aj, j)) * inv;
      }
    };
    if (static_cast<double>(n - j - 1) * j < 32768.0) below(0, n - j - 1);
    else parallel_chunks(n - j - 1, below, 16);
  }
  return true;
}

// The upper Cholesky factor U of H^-1 (H^-1 = U^T U), from H + lambda I.
//
// With J the order-reversing permutation: take the lower Cholesky factor M of
// J H J (M M^T = J H J). Then H = (J M J)(J M J)^T with J M J upper, so
// H^-1 = (J M J)^-T (J M J)^-1 and U = (J M J)^-1 = J M^-1 J: upper, positive
// diagonal, hence the Cholesky factor. One factorisation and one triangular
// inversion (n^3/6 each) instead of invert-then-factor.
//
// H [n, n] f32 (the upper triangle of H is read), U [n, n] f32 out.
// A [n, n] double scratch. Returns false when H + lambda I is not PD.
bool gptq_inverse_factor(const float* H, int64_t n, double lambda, double* A, float* U, double* col_scratch, int nthreads) {
  double maxdiag = 0;
  for (int64_t i = 0; i < n; i++) {
    const float* Hr = H + (n - 1 - i) * n;
    double* Ar = A + i * n;
    for (int64_t j = 0; j <= i; j++) Ar[j] = Hr[n - 1 - j];  // (J H J)[i][j] = H[n-1-i][n-1-j], j <= i
    Ar[i] += lambda;
    maxdiag = std::max(maxdiag, Ar[i]);
  }
  if (!(maxdiag > 0) || !std::isfinite(maxdiag)) return false;
  // H comes from an f32 GEMM, so its entries carry relative noise of about
  // 2^-24: a pivot below 2^-20 of the largest diagonal is indistinguishable
  // from zero (a rank-deficient X) and is treated as singular. GPTQ's default
  // damping keeps every pivot above 0.01 * mean diag H, far above this.
  if (!cholesky_lower(A, n, 0x1p-20 * maxdiag)) return false;
  std::memset(U, 0, sizeof(float) * static_cast<size_t>(n * n));
  // column j of X = M^-1 by forward substitution: X[j][j] = 1/M[j][j],
  // X[i][j] = -(sum_{k=j}^{i-1} M[i][k] X[k][j]) / M[i][i]; stored reversed:
  // U[n-1-i][n-1-j] = X[i][j].
  auto column = [&](int64_t j) {
    double* col = col_scratch + static_cast<int64_t>(omp_get_thread_num()) * n;  // col[i - j] = X[i][j]
    col[0] = 1.0 / A[j * n + j];
    for (int64_t i = j + 1; i < n; i++) col[i - j] = -dot_d(A + i * n + j, col, i - j) / A[i * n + i];
    for (int64_t i = j; i < n; i++) U[(n - 1 - i) * n + (n - 1 - j)] = static_cast<float>(col[i - j]);
  };
  if (nthreads <= 1) { for (int64_t j = 0; j < n; j++) column(j); }
  else parallel_for_dynamic(n, column);
  return true;
}

constexpr int64_t kGptqBlock = 128;  // columns per block (GPTQ's default blocksize)

// GPTQ (Frantar et al. 2022, without act-order), over Wf [rows, cols] f32 in
// place (destroyed), given U = chol_upper(H^-1):
//   for each block of 128 columns, for each column i in it:
//     at a group's first column: scale/offset from the group's current
//       (already error-updated) weights, min-max as RTN;
//     q = code(w[:, i]);  e = (w[:, i] - deq(q)) / U[i][i]
//     w[:, j] -= e * U[i][j] for the block's later columns j
//   then, lazily, w[:, later blocks] -= E_block U[block, later blocks] (one GEMM).
// Rows are independent given U, so threads split them. Groups never straddle
// blocks (L divides 128).
void gptq_run(float* Wf, int64_t rows, int64_t cols, const float* U, int bits, int64_t L, uint8_t* codes, float* scales,
              float* offsets, float* Err) {
  const int64_t G = cols / L;
  std::memset(codes, 0, static_cast<size_t>(rows * cols * bits / 8));
  for (int64_t b0 = 0; b0 < cols; b0 += kGptqBlock) {
    const int64_t b1 = std::min(cols, b0 + kGptqBlock), nb = b1 - b0;
    parallel_chunks(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        float* w = Wf + r * cols;
        uint8_t* rc = codes + r * cols * bits / 8;
        float* err = Err + r * kGptqBlock;
        float s = 0, o = 0;
        for (int64_t i = b0; i < b1; i++) {
          if (i % L == 0) {
            intn_group_params(w + i, L, bits, &s, &o);
            scales[r * G + i / L] = s;
            offsets[r * G + i / L] = o;
          }
          const uint32_t q = intn_code(w[i], s, o, bits);
          intn_put_code(rc, bits, i, q);
          const float e = (w[i] - (s * static_cast<float>(q) + o)) / U[i * cols + i];
          err[i - b0] = e;
          const float* Ui = U + i * cols;
          for (int64_t j = i + 1; j < b1; j++) w[j] -= e * Ui[j];
        }
      }
    }, 8);
    if (b1 < cols) {
      // W[:, b1:] -= Err[:, 0:nb] * U[b0:b1, b1:]
      gemm(rows, cols - b1, nb, -1.0f, MatRef{Err, DType::F32, kGptqBlock, false},
           MatRef{U + b0 * cols + b1, DType::F32, cols, false}, 1.0f, Wf + b1, cols);
    }
  }
}

}  // namespace

static void intn_shape_args(const Napi::CallbackInfo& info, const char* fn, int64_t rows, int64_t cols, int64_t bits, int64_t group) {
  if (!intn_bits_ok(bits)) throw arg_error(info, fn, "bits must be 2, 3, 4 or 8");
  if (!intn_group_ok(group)) throw arg_error(info, fn, "groupSize must be 16, 32, 64 or 128");
  if (cols % group != 0) throw arg_error(info, fn, "cols must be a multiple of groupSize");
  (void)rows;
}

// intn_constants16(scales, offsets, out) -> { exact, symmetric, zero }
//   scales, offsets f32 [n]; out u8 [4 n]. When every scale converts to
//   fp16 and back unchanged, writes them (fp16) to out's first 2 n bytes;
//   then, when one z has offset = -z * scale (f32) in every group, reports
//   symmetric with zero z (the offsets need no copy), else, when every
//   offset converts exactly, writes them after the scales. exact false:
//   out is not usable. The values the decode GEMV reads are the same.
static bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// h[0, n) = fp16 of v[0, n); false as soon as some v is not finite or not an
// fp16 value (h is then partly written). 16 at a time where F16C and
// AVX-512 are built in: a value that converts back to the same bits is one.
static bool to_f16_exact(const float* v, size_t n, uint16_t* h) {
  size_t g = 0;
#if defined(__AVX512F__) && defined(__F16C__)
  for (; g + 16 <= n; g += 16) {
    const __m512 x = _mm512_loadu_ps(v + g);
    const __m256i hv = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 back = _mm512_cvtph_ps(hv);
    // bitwise equal (so -0 is not +0) and finite (an infinity converts back to itself)
    const __mmask16 same = _mm512_cmpeq_epi32_mask(_mm512_castps_si512(back), _mm512_castps_si512(x));
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(65504.0f), _CMP_LE_OQ);
    if ((same & finite) != 0xFFFF) return false;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + g), hv);
  }
#endif
  for (; g < n; g++) {
    h[g] = f32_to_f16(v[g]);
    if (!same_bits(f16_to_f32(h[g]), v[g]) || !std::isfinite(v[g])) return false;
  }
  return true;
}

static Napi::Value IntNConstants16Binding(const Napi::CallbackInfo& info) {
  const char* fn = "intn_constants16";
  TensorArg sc = tensor_arg(info, 0, fn, "scales", 1, DType::F32);
  const size_t n = sc.numel;
  TensorArg of = tensor_arg(info, 1, fn, "offsets", n, DType::F32);
  TensorArg out = tensor_arg(info, 2, fn, "out", 4 * n, DType::U8);
  if (sc.dev != Device::CPU || of.dev != Device::CPU || out.dev != Device::CPU) throw arg_error(info, fn, "all tensors must be on the CPU");
  Napi::Object r = Napi::Object::New(info.Env());
  const float* s = sc.f32();
  const float* o = of.f32();
  uint16_t* h = out.as<uint16_t>();
  bool exact = to_f16_exact(s, n, h);
  bool sym = false;
  float z = 0.0f;
  if (exact) {
    size_t g0 = 0;
    while (g0 < n && s[g0] == 0.0f) g0++;
    if (g0 < n) {
      z = -o[g0] / s[g0];
      sym = std::isfinite(z);
      for (size_t g = 0; g < n && sym; g++) sym = same_bits(-(z * s[g]), o[g]);
    }
    if (!sym) exact = to_f16_exact(o, n, h + n);
  }
  r.Set("exact", Napi::Boolean::New(info.Env(), exact));
  r.Set("symmetric", Napi::Boolean::New(info.Env(), exact && sym));
  r.Set("zero", Napi::Number::New(info.Env(), exact && sym ? static_cast<double>(z) : 0.0));
  return r;
}

// intn_quantize(W, rows, cols, bits, groupSize, codes, scales, offsets, f16Constants?) -> bad count (RTN)
//   W [rows, cols] f32|bf16; codes u8 [rows*cols*bits/8]; scales, offsets f32 [rows, cols/groupSize];
//   f16Constants (CPU only): scales and offsets rounded to fp16 values before the codes (intn_rtn_row)
static Napi::Value IntNQuantizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "intn_quantize";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  const int64_t bits = int_arg(info, 3, fn, "bits"), group = int_arg(info, 4, fn, "groupSize", 1);
  intn_shape_args(info, fn, rows, cols, bits, group);
  Dispatch d(info, fn);
  TensorArg W = d.tensor(0, "W", static_cast<size_t>(rows * cols), DType::F32, true);
  TensorArg codes = d.tensor(5, "codes", static_cast<size_t>(intn_code_bytes(rows * cols, static_cast<int>(bits))), DType::U8);
  TensorArg scales = d.tensor(6, "scales", static_cast<size_t>(rows * cols / group), DType::F32);
  TensorArg offsets = d.tensor(7, "offsets", static_cast<size_t>(rows * cols / group), DType::F32);
  if (W.dtype != DType::F32 && W.dtype != DType::BF16) throw arg_error(info, fn, "W must be f32 or bf16");
  const bool f16 = info.Length() > 8 && info[8].IsBoolean() && info[8].As<Napi::Boolean>().Value();
  if (f16 && d.cuda()) throw arg_error(info, fn, "fp16 constants are quantized on the CPU only: move the weight to the CPU first");
  const int b = static_cast<int>(bits);
  return guarded(info, [&]() -> Napi::Value {
    int64_t bad = 0;
    if (d.cuda()) {
      TB_ON_CUDA(bad = cuda::intn_quantize(W.data, W.dtype == DType::BF16, rows, cols, b, group, codes.as<uint8_t>(), scales.f32(),
                                           offsets.f32()));
    } else if (W.dtype == DType::F32) {
      bad = intn_quantize_rtn(W.f32(), rows, cols, b, group, codes.as<uint8_t>(), scales.f32(), offsets.f32(), f16);
    } else {
      bad = intn_quantize_rtn(W.as<uint16_t>(), rows, cols, b, group, codes.as<uint8_t>(), scales.f32(), offsets.f32(), f16);
    }
    return Napi::Number::New(info.Env(), static_cast<double>(bad));
  });
}

// intn_gptq(W, rows, cols, H, bits, groupSize, damp, codes, scales, offsets)
//   -> { bad, damp, lambda, tries, zeroH } | { bad } when W is not finite
//   W [rows, cols] f32|bf16 (not modified); H [cols, cols] f32 = 2 X^T X / n.
//   lambda = damp * mean diag(H) is added to the diagonal; when H + lambda I
//   is not positive definite, damp is multiplied by 10 (0 becomes 0.01) and
//   the factorisation retried, up to 6 tries. An all-zero H (no signal in the
//   calibration) uses lambda = 1: U is then diagonal, no error is pushed, and
//   GPTQ is exactly RTN. Throws when every try fails (e.g. H not finite).
static Napi::Value IntNGptqBinding(const Napi::CallbackInfo& info) {
  const char* fn = "intn_gptq";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  const int64_t bits = int_arg(info, 4, fn, "bits"), group = int_arg(info, 5, fn, "groupSize", 1);
  intn_shape_args(info, fn, rows, cols, bits, group);
  double damp = num_arg(info, 6, fn, "damp");
  if (!(damp >= 0) || !std::isfinite(damp)) throw arg_error(info, fn, "damp must be a finite number >= 0");
  TensorArg W = tensor_arg(info, 0, fn, "W", static_cast<size_t>(rows * cols), DType::F32, true);
  TensorArg H = tensor_arg(info, 3, fn, "H", static_cast<size_t>(cols * cols), DType::F32);
  TensorArg codes = tensor_arg(info, 7, fn, "codes", static_cast<size_t>(intn_code_bytes(rows * cols, static_cast<int>(bits))), DType::U8);
  TensorArg scales = tensor_arg(info, 8, fn, "scales", static_cast<size_t>(rows * cols / group), DType::F32);
  TensorArg offsets = tensor_arg(info, 9, fn, "offsets", static_cast<size_t>(rows * cols / group), DType::F32);
  if (W.dtype != DType::F32 && W.dtype != DType::BF16) throw arg_error(info, fn, "W must be f32 or bf16");
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object res = Napi::Object::New(info.Env());
    Workspace<float> Wf(static_cast<size_t>(rows * cols));
    int64_t bad = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
      const float v = W.dtype == DType::F32 ? W.f32()[i] : bf16_to_f32(W.as<uint16_t>()[i]);
      if (!std::isfinite(v)) bad++;
      Wf[i] = v;
    }
    res.Set("bad", Napi::Number::New(info.Env(), static_cast<double>(bad)));
    if (bad) return res;
    double mean = 0;
    for (int64_t i = 0; i < cols; i++) mean += H.f32()[i * cols + i];
    mean /= static_cast<double>(cols);
    if (!std::isfinite(mean)) throw arg_error(info, fn, "H holds non-finite values (are the calibration inputs finite and not too large?)");
    const bool zeroH = !(mean > 0);
    Workspace<double> A(static_cast<size_t>(cols * cols));
    Workspace<float> U(static_cast<size_t>(cols * cols));
    const int nt = num_threads();
    Workspace<double> colbuf(static_cast<size_t>(cols * (nt + 1)));
    int tries = 0;
    double lambda = 0;
    bool ok = false;
    while (!ok && tries < 6) {
      tries++;
      lambda = zeroH ? 1.0 : damp * mean;
      ok = gptq_inverse_factor(H.f32(), cols, lambda, A.data(), U.data(), colbuf.data(), nt);
      if (!ok) damp = damp > 0 ? damp * 10 : 0.01;
    }
    if (!ok) throw arg_error(info, fn, "H + damping is not positive definite after 6 tries (damp up to " + std::to_string(damp / 10) + " of its mean diagonal)");
    Workspace<float> Err(static_cast<size_t>(rows * kGptqBlock));
    gptq_run(Wf.data(), rows, cols, U.data(), static_cast<int>(bits), group, codes.as<uint8_t>(), scales.f32(), offsets.f32(), Err.data());
    int64_t badRange = 0;
    for (int64_t g = 0; g < rows * cols / group; g++) if (!std::isfinite(scales.f32()[g])) badRange++;
    res.Set("bad", Napi::Number::New(info.Env(), static_cast<double>(badRange)));
    res.Set("damp", Napi::Number::New(info.Env(), damp));
    res.Set("lambda", Napi::Number::New(info.Env(), lambda));
    res.Set("tries", Napi::Number::New(info.Env(), tries));
    res.Set("zeroH", Napi::Boolean::New(info.Env(), zeroH));
    return res;
  });
}

// intn_dequantize(W, rows, cols, out): out [rows*cols] f32 = scale * q + offset (W's tensors and out on one device)
static Napi::Value IntNDequantizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "intn_dequantize";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  Dispatch d(info, fn);
  return guarded(info, [&]() -> Napi::Value {
    WeightOperand w = weight_arg(info, 0, fn, "W", rows, cols, -1, &d);
    if (w.kind != QuantKind::IntN) throw arg_error(info, fn, "W must be an INT-N quantized weight");
    TensorArg out = d.tensor(3, "out", static_cast<size_t>(rows * cols), DType::F32);
    const IntNView q = w.intn;
    if (d.cuda()) {
      TB_ON_CUDA(cuda::intn_dequantize(q.codes, q.scales, q.offsets, q.bits, q.group_shift, rows * cols, out.f32()));
      return info.Env().Undefined();
    }
    parallel_chunks(rows, [&](int64_t r0, int64_t r1) {
      intn_dequant_segment(q, r0 * cols, (r1 - r0) * cols, out.f32() + r0 * cols);
    }, 16);
    return info.Env().Undefined();
  });
}

// hostmath_intn(W f32, rows, cols, bits, groupSize, codes, scales, offsets, out) -> bad count:
// RTN as cuda/intn.cu runs it (one group at a time, its bytes assembled then
// stored; kernels/quantize_math.h), then out = the dequantized weight
// (kernels/quant_math.h), for tests against intn_quantize / intn_dequantize.
static Napi::Value HostmathIntNBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_intn";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  const int64_t bits = int_arg(info, 3, fn, "bits"), group = int_arg(info, 4, fn, "groupSize", 1);
  intn_shape_args(info, fn, rows, cols, bits, group);
  const int b = static_cast<int>(bits);
  const int64_t numel = rows * cols, ngroups = numel / group;
  TensorArg W = tensor_arg(info, 0, fn, "W", static_cast<size_t>(numel), DType::F32);
  TensorArg codes = tensor_arg(info, 5, fn, "codes", static_cast<size_t>(intn_code_bytes(numel, b)), DType::U8);
  TensorArg scales = tensor_arg(info, 6, fn, "scales", static_cast<size_t>(ngroups), DType::F32);
  TensorArg offsets = tensor_arg(info, 7, fn, "offsets", static_cast<size_t>(ngroups), DType::F32);
  TensorArg out = tensor_arg(info, 8, fn, "out", static_cast<size_t>(numel), DType::F32);
  int64_t bad = 0;
  const int64_t nbytes = group * b / 8;
  for (int64_t g = 0; g < ngroups; g++) {
    const float* w = W.f32() + g * group;
    bool finite = true;
    for (int64_t i = 0; i < group; i++) if (!std::isfinite(w[i])) { bad++; finite = false; }
    float s, o;
    math::intn_rtn_params(w, group, b, s, o);
    if (!std::isfinite(s) && finite) bad++;
    scales.f32()[g] = s;
    offsets.f32()[g] = o;
    uint8_t bytes[128] = {};
    for (int64_t i = 0; i < group; i++) math::intn_put(bytes, b, i, math::intn_rtn_code(w[i], s, o, b));
    std::memcpy(codes.as<uint8_t>() + g * nbytes, bytes, static_cast<size_t>(nbytes));
  }
  const int gshift = static_cast<int>(std::log2(static_cast<double>(group)));
  for (int64_t e = 0; e < numel; e++)
    out.f32()[e] = math::intn_value(codes.as<uint8_t>(), scales.f32(), offsets.f32(), b, gshift, e);
  return Napi::Number::New(info.Env(), static_cast<double>(bad));
}

// intn_decode(x, W, y, m, out, in): y [m, out] = x [m, in] deq(W)^T, W INT-N [out, in], m <= 16
//   all on one device: the CPU decode kernel, or cuda::quant_decode
static Napi::Value IntNDecodeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "intn_decode";
  const int64_t m = int_arg(info, 3, fn, "m"), out = int_arg(info, 4, fn, "out", 1), in = int_arg(info, 5, fn, "in", 1);
  if (m > kIntNDecodeMaxRows) throw arg_error(info, fn, "m must be at most 16");
  Dispatch d(info, fn);
  TensorArg x = d.tensor(0, "x", static_cast<size_t>(m * in), DType::F32);
  WeightOperand w = weight_arg(info, 1, fn, "W", out, in, -1, &d);
  if (w.kind != QuantKind::IntN) throw arg_error(info, fn, "W must be an INT-N quantized weight");
  TensorArg y = d.tensor(2, "y", static_cast<size_t>(m * out), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    if (d.cuda()) TB_ON_CUDA(cuda::quant_decode(m, out, in, 1.0f, x.f32(), in, w.mat(in, true), 0.0f, y.f32(), out));
    else intn_decode(m, out, in, 1.0f, x.f32(), in, w.intn, 0.0f, y.f32(), out);
    return info.Env().Undefined();
  });
}

static void register_intn(Napi::Env env, Napi::Object exports) {
  exports.Set("intn_quantize", Napi::Function::New(env, IntNQuantizeBinding));
  exports.Set("intn_constants16", Napi::Function::New(env, IntNConstants16Binding));
  exports.Set("intn_gptq", Napi::Function::New(env, IntNGptqBinding));
  exports.Set("intn_dequantize", Napi::Function::New(env, IntNDequantizeBinding));
  exports.Set("hostmath_intn", Napi::Function::New(env, HostmathIntNBinding));
  exports.Set("intn_decode", Napi::Function::New(env, IntNDecodeBinding));
}
TB_REGISTER_OPS(intn, register_intn);

}  // namespace tb
