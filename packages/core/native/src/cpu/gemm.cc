// GEMM: C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, row-major.
//
// Blocked in the BLIS manner: B is packed in KC x NC blocks (kept in L3), A in
// MC x KC blocks (L2), and an MR x NR register-tiled micro-kernel multiplies
// one A micro-panel by one B micro-panel (L1). bf16 operands are widened to
// f32 while packing, so a bf16 weight is never materialised whole in f32.
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "args.h"
#include "cuda/gemm.h"
#include "decode.h"
#include "kernels/gemm_math.h"
#include "operand.h"
#include "parallel.h"
#include "registry.h"
#include "share.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace tb {
namespace {

#if defined(__AVX512F__)
// 12 x 32 tile: 24 zmm accumulators + 2 B vectors + 1 broadcast. 8x48, 14x32
// and 6x64 measured the same within noise (dev/gemm_microkernel.cc).
constexpr int MR = 12, NR = 32;
constexpr int NV = NR / 16;
#else
constexpr int MR = 6, NR = 16;
#endif
// KC x NR of B (32 KiB) stays in L1, MC x KC of A (384 KiB) in L2, KC x NC
// of B (4 MiB) in L3.
constexpr int64_t KC = 256, MC = 384, NC = 4096;

// Operand kinds are switched on explicitly everywhere: a kind a function does
// not handle stops the process rather than being read as another (the
// bindings refuse such operands first, so this is unreachable).
[[noreturn]] void bad_operand(const char* where) {
  std::fprintf(stderr, "tunebench: %s: unsupported GEMM operand kind (a binding let it through)\n", where);
  std::abort();
}

inline float load_elem(const MatRef& m, int64_t idx) {
  switch (m.dtype) {
    case DType::F32: return static_cast<const float*>(m.p)[idx];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(m.p)[idx]);
    case DType::U8: {
      float v;
      switch (m.quant) {
        case QuantKind::Q4: quant4_dequant_segment(*m.q4, idx, 1, &v); return v;
        case QuantKind::IntN: intn_dequant_segment(*m.intn, idx, 1, &v); return v;
        default: bad_operand("load_elem");
      }
    }
    default: bad_operand("load_elem");
  }
}

// op(A)(i, k) for i in [i0, i0+mr), k in [k0, k0+kc) -> ap[k*MR + i], rows >= mr zero.
template <typename T>
void pack_a_panel(const T* a, int64_t lda, bool trans, int64_t i0, int64_t mr, int64_t k0, int64_t kc, float* ap) {
  auto cvt = [](T v) -> float {
    if constexpr (std::is_same<T, float>::value) return v; else return bf16_to_f32(v);
  };
  if (mr < MR) std::memset(ap, 0, sizeof(float) * MR * kc);
  if (trans) {  // stored K x M: row k holds op(A)(., k)
    for (int64_t k = 0; k < kc; k++) {
      const T* src = a + (k0 + k) * lda + i0;
      float* dst = ap + k * MR;
      for (int64_t i = 0; i < mr; i++) dst[i] = cvt(src[i]);
    }
  } else {
    for (int64_t i = 0; i < mr; i++) {
      const T* src = a + (i0 + i) * lda + k0;
      for (int64_t k = 0; k < kc; k++) ap[k * MR + i] = cvt(src[k]);
    }
  }
}

// op(B)(k, j) for k in [k0, k0+kc), j in [j0, j0+nr) -> bp[k*NR + j], cols >= nr zero.
template <typename T>
void pack_b_panel(const T* b, int64_t ldb, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nr, float* bp) {
  auto cvt = [](T v) -> float {
    if constexpr (std::is_same<T, float>::value) return v; else return bf16_to_f32(v);
  };
  if (nr < NR) std::memset(bp, 0, sizeof(float) * NR * kc);
  if (trans) {  // stored N x K: row j holds op(B)(., j)
    for (int64_t j = 0; j < nr; j++) {
      const T* src = b + (j0 + j) * ldb + k0;
      for (int64_t k = 0; k < kc; k++) bp[k * NR + j] = cvt(src[k]);
    }
  } else {
    for (int64_t k = 0; k < kc; k++) {
      const T* src = b + (k0 + k) * ldb + j0;
      float* dst = bp + k * NR;
      for (int64_t j = 0; j < nr; j++) dst[j] = cvt(src[j]);
    }
  }
}

// A quantized B panel, dequantized while packing: the dense weight never
// exists whole, only this KC x NR panel does.
void pack_b_panel_q4(const Quant4View& q, int64_t ldb, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nr, float* bp) {
  if (nr < NR) std::memset(bp, 0, sizeof(float) * NR * kc);
  if (trans) {  // stored N x K (a weight [out, in] in x W^T): row j is contiguous along k
    float row[KC];
    for (int64_t j = 0; j < nr; j++) {
      quant4_dequant_segment(q, (j0 + j) * ldb + k0, kc, row);
      for (int64_t k = 0; k < kc; k++) bp[k * NR + j] = row[k];
    }
  } else {  // stored K x N (the weight in dy W): each packed row is a stored segment
    for (int64_t k = 0; k < kc; k++) quant4_dequant_segment(q, (k0 + k) * ldb + j0, nr, bp + k * NR);
  }
}

// The same for an INT-N B: rows of the stored weight are contiguous groups,
// dequantized a segment at a time into the panel.
void pack_b_panel_intn(const IntNView& q, int64_t ldb, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nr, float* bp) {
  if (nr < NR) std::memset(bp, 0, sizeof(float) * NR * kc);
  if (trans) {  // stored N x K (a weight [out, in] in x W^T)
    float row[KC];
    for (int64_t j = 0; j < nr; j++) {
      intn_dequant_segment(q, (j0 + j) * ldb + k0, kc, row);
      for (int64_t k = 0; k < kc; k++) bp[k * NR + j] = row[k];
    }
  } else {  // stored K x N (the weight in dy W)
    for (int64_t k = 0; k < kc; k++) intn_dequant_segment(q, (k0 + k) * ldb + j0, nr, bp + k * NR);
  }
}

void pack_a(const MatRef& A, int64_t i0, int64_t mr, int64_t k0, int64_t kc, float* ap) {
  switch (A.dtype) {
    case DType::F32: pack_a_panel(static_cast<const float*>(A.p), A.ld, A.trans, i0, mr, k0, kc, ap); return;
    case DType::BF16: pack_a_panel(static_cast<const uint16_t*>(A.p), A.ld, A.trans, i0, mr, k0, kc, ap); return;
    default: bad_operand("pack_a");
  }
}
void pack_b(const MatRef& B, int64_t k0, int64_t kc, int64_t j0, int64_t nr, float* bp) {
  switch (B.dtype) {
    case DType::F32: pack_b_panel(static_cast<const float*>(B.p), B.ld, B.trans, k0, kc, j0, nr, bp); return;
    case DType::BF16: pack_b_panel(static_cast<const uint16_t*>(B.p), B.ld, B.trans, k0, kc, j0, nr, bp); return;
    case DType::U8:
      switch (B.quant) {
        case QuantKind::Q4: pack_b_panel_q4(*B.q4, B.ld, B.trans, k0, kc, j0, nr, bp); return;
        case QuantKind::IntN: pack_b_panel_intn(*B.intn, B.ld, B.trans, k0, kc, j0, nr, bp); return;
        default: bad_operand("pack_b");
      }
    default: bad_operand("pack_b");
  }
}

// C tile (mr x nr valid) = alpha * ap*bp + beta * C   (beta == 0: C not read)
#if defined(__AVX512F__)
void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, float* c, int64_t ldc,
                  int mr, int nr, float alpha, float beta) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  // The C tile is read-modify-written after the k loop; fetching it now hides
  // the miss behind the FMAs (worth ~20% when C is larger than the caches).
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < NV; v++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16 * v), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; k++) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = _mm512_load_ps(bp + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      __m512 a = _mm512_set1_ps(ap[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
    ap += MR;
    bp += NR;
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  if (nr == NR) {
    // full-width tile: plain loads and stores (masked stores are slow on AMD cores)
    for (int i = 0; i < mr; i++) {
      float* row = c + i * ldc;
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) {
        __m512 r = _mm512_mul_ps(va, acc[i][v]);
        if (beta != 0.0f) r = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row + 16 * v), r);
        _mm512_storeu_ps(row + 16 * v, r);
      }
    }
    return;
  }
  __mmask16 mask[NV];
  for (int v = 0; v < NV; v++) {
    int left = nr - 16 * v;
    mask[v] = left >= 16 ? 0xffff : (left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1));
  }
  for (int i = 0; i < mr; i++) {
    float* row = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      __m512 r = _mm512_mul_ps(va, acc[i][v]);
      if (beta != 0.0f) r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask[v], row + 16 * v), r);
      _mm512_mask_storeu_ps(row + 16 * v, mask[v], r);
    }
  }
}
const char* kKernelName = "avx512-12x32";
#else
// Portable tile with GCC vector extensions (one 16-float vector per tile
// row). target_clones compiles it for AVX-512, AVX2+FMA and the baseline and
// picks one at load time, so a portable build (no -march=native) still uses
// the vector units it finds.
typedef float v16f __attribute__((vector_size(64)));
__attribute__((target_clones("avx512f", "avx2,fma", "default")))
void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, float* c, int64_t ldc,
                  int mr, int nr, float alpha, float beta) {
  static_assert(NR == 16, "one vector per row");
  v16f acc[MR];
  for (int i = 0; i < MR; i++) acc[i] = v16f{};
  for (int64_t k = 0; k < kc; k++) {
    v16f b;
    std::memcpy(&b, bp, sizeof b);
    for (int i = 0; i < MR; i++) acc[i] += ap[i] * b;
    ap += MR;
    bp += NR;
  }
  for (int i = 0; i < mr; i++) {
    float* row = c + i * ldc;
    if (beta == 0.0f) for (int j = 0; j < nr; j++) row[j] = alpha * acc[i][j];
    else for (int j = 0; j < nr; j++) row[j] = alpha * acc[i][j] + beta * row[j];
  }
}
const char* kKernelName = "portable-6x16";
#endif

// Multiply packed A block (mc x kc) by packed B block (kc x nc) into C.
void macro_kernel(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc,
                  float alpha, float beta, int64_t jr_begin, int64_t jr_end) {
  for (int64_t jr = jr_begin; jr < jr_end; jr++) {
    int64_t j = jr * NR;
    int nr = static_cast<int>(std::min<int64_t>(NR, nc - j));
    for (int64_t i = 0; i < mc; i += MR) {
      int mr = static_cast<int>(std::min<int64_t>(MR, mc - i));
      micro_kernel(kc, ap + i * kc, bp + j * kc, c + i * ldc + j, ldc, mr, nr, alpha, beta);
    }
  }
}

void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++) {
    float* row = C + i * ldc;
    if (beta == 0.0f) std::memset(row, 0, sizeof(float) * N);
    else for (int64_t j = 0; j < N; j++) row[j] *= beta;
  }
}

}  // namespace

// x [m, K], W INT-N [N, K] -> y [m, N]; m <= kIntNDecodeMaxRows (see gemm.h):
// the decode GEMV (decode_gemv.cc), codes expanded in registers.
void intn_decode(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const IntNView& w,
                 float beta, float* y, int64_t ldy) {
  MatRef W{w.codes, DType::U8, K, true, nullptr, QuantKind::IntN, &w};
  decode_gemv(m, N, K, alpha, x, ldx, W, beta, y, ldy);
}

const char* gemm_kernel_name() { return kKernelName; }

namespace {
// The blocked GEMM, each parallel step a share_chunks job (share.h; inline
// on one thread) instead of an OpenMP team with barriers: a thread another
// process keeps off its core takes no part instead of holding every step up
// (a training step with 2 threads beside a busy process ran at 0.85-0.96x
// of one thread on OpenMP teams, 0.93-1.11x this way: pnpm bench:threads,
// small and SmolLM-135M shapes, 2-core EPYC VM). Same blocking and kernels as the serial
// path; rows (or, with few rows, column panels) in dynamic chunks; each
// chunk packs A into a free slot of per-thread buffers.
void gemm_blocked(int64_t M, int64_t N, int64_t K, float alpha, const MatRef& A, const MatRef& B, float beta, float* C,
                 int64_t ldc, int nt) {
  const int64_t nc_max = std::min(NC, ((N + NR - 1) / NR) * NR);
  const int64_t kc_max = std::min(KC, K);
  const int64_t mc_max = std::min(MC, ((M + MR - 1) / MR) * MR);
  Workspace<float> bbuf(static_cast<size_t>(nc_max * kc_max));
  Workspace<float> abuf(static_cast<size_t>(mc_max * kc_max * nt));
  std::unique_ptr<std::atomic<int>[]> busy(new std::atomic<int>[nt]);
  for (int i = 0; i < nt; i++) busy[i].store(0);
  auto take_slot = [&]() -> int {
    for (;;)
      for (int i = 0; i < nt; i++) {
        int z = 0;
        if (busy[i].compare_exchange_strong(z, 1)) return i;
      }
  };
  const int64_t m_panels_total = (M + MR - 1) / MR;
  const bool split_rows = m_panels_total >= 4 * nt;
  auto grain = [nt](int64_t n) { return std::max<int64_t>(1, (n + 4 * nt - 1) / (4 * nt)); };
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    const int64_t n_panels = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const float beta_k = pc == 0 ? beta : 1.0f;
      share_chunks(n_panels, grain(n_panels), nt, [&](int64_t b, int64_t e) {
        for (int64_t jr = b; jr < e; jr++) {
          const int64_t j = jr * NR;
          pack_b(B, pc, kc, jc + j, std::min<int64_t>(NR, nc - j), bbuf.data() + j * kc);
        }
      });
      if (split_rows) {
        // chunks of row panels; each packs and multiplies its own rows
        share_chunks(m_panels_total, std::max<int64_t>(1, (m_panels_total + 2 * nt - 1) / (2 * nt)), nt, [&](int64_t pb, int64_t pe) {
          const int slot = take_slot();
          float* ap = abuf.data() + static_cast<int64_t>(slot) * mc_max * kc_max;
          const int64_t row_end = std::min(M, pe * MR);
          for (int64_t ic = pb * MR; ic < row_end; ic += MC) {
            const int64_t mc = std::min(MC, row_end - ic);
            for (int64_t i = 0; i < mc; i += MR) pack_a(A, ic + i, std::min<int64_t>(MR, mc - i), pc, kc, ap + i * kc);
            macro_kernel(mc, nc, kc, ap, bbuf.data(), C + ic * ldc + jc, ldc, alpha, beta_k, 0, n_panels);
          }
          busy[slot].store(0);
        });
      } else {
        // few rows: pack each A block once, share its column panels
        float* ap = abuf.data();
        for (int64_t ic = 0; ic < M; ic += MC) {
          const int64_t mc = std::min(MC, M - ic);
          const int64_t m_panels = (mc + MR - 1) / MR;
          share_chunks(m_panels, grain(m_panels), nt, [&](int64_t b, int64_t e) {
            for (int64_t ir = b; ir < e; ir++) pack_a(A, ic + ir * MR, std::min<int64_t>(MR, mc - ir * MR), pc, kc, ap + ir * MR * kc);
          });
          share_chunks(n_panels, grain(n_panels), nt, [&](int64_t jb, int64_t je) {
            macro_kernel(mc, nc, kc, ap, bbuf.data(), C + ic * ldc + jc, ldc, alpha, beta_k, jb, je);
          });
        }
      }
    }
  }
}
}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) { scale_c(M, N, beta, C, ldc); return; }
  // decoding (a few rows times a weight, x W^T): stream W once, its codes
  // expanded in registers, instead of packing the whole weight
  if (decode_gemv_handles(M, A, B)) {
    decode_gemv(M, N, K, alpha, static_cast<const float*>(A.p), A.ld, B, beta, C, ldc);
    return;
  }
  // a short prompt times a quantized weight (17-32 rows): the decode GEMV
  // in blocks of 16 rows still beats dequantizing the weight into panels
  // (SmolLM-135M blocks, 32 rows, 1 thread on the 2-core EPYC VM: 1.36x as
  // fast for INT8 and INT4 g32, 1.38x for NF4; about even at 48 and 64 rows)
  if (M <= 2 * kDecodeMaxRows && B.dtype == DType::U8 && decode_gemv_handles(kDecodeMaxRows, A, B)) {
    const float* a = static_cast<const float*>(A.p);
    for (int64_t r0 = 0; r0 < M; r0 += kDecodeMaxRows)
      decode_gemv(std::min(kDecodeMaxRows, M - r0), N, K, alpha, a + r0 * A.ld, A.ld, B, beta, C + r0 * ldc, ldc);
    return;
  }
  int nt = omp_in_parallel() ? 1 : num_threads();
  // Small problems are not worth waking threads for.
  if (static_cast<double>(M) * N * K < 64.0 * 64 * 64) nt = 1;
  gemm_blocked(M, N, K, alpha, A, B, beta, C, ldc, nt);
}

void gemm_reference(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++) {
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) {
        float a = load_elem(A, A.trans ? k * A.ld + i : i * A.ld + k);
        float b = load_elem(B, B.trans ? j * B.ld + k : k * B.ld + j);
        s += static_cast<double>(a) * b;
      }
      float& c = C[i * ldc + j];
      c = beta == 0.0f ? alpha * static_cast<float>(s) : alpha * static_cast<float>(s) + beta * c;
    }
  }
}

// ---- bindings ----
GemmArgs gemm_args(const Napi::CallbackInfo& info, const char* fn, bool allow_bf16, bool allow_quant, Dispatch* d) {
  GemmArgs g;
  g.ta = bool_arg(info, 0, fn, "transA");
  g.tb = bool_arg(info, 1, fn, "transB");
  g.M = int_arg(info, 2, fn, "M");
  g.N = int_arg(info, 3, fn, "N");
  g.K = int_arg(info, 4, fn, "K");
  g.alpha = static_cast<float>(num_arg(info, 5, fn, "alpha"));
  g.lda = int_arg(info, 7, fn, "lda", 1);
  g.ldb = int_arg(info, 9, fn, "ldb", 1);
  g.beta = static_cast<float>(num_arg(info, 10, fn, "beta"));
  g.ldc = int_arg(info, 12, fn, "ldc", 1);
  // stored extents: A is (ta ? K x M : M x K) with row stride lda
  const int64_t a_rows = g.ta ? g.K : g.M, a_cols = g.ta ? g.M : g.K;
  const int64_t b_rows = g.tb ? g.N : g.K, b_cols = g.tb ? g.K : g.N;
  if (g.lda < a_cols || g.ldb < b_cols || g.ldc < g.N) throw arg_error(info, fn, "leading dimension smaller than the row length");
  auto need = [](int64_t rows, int64_t cols, int64_t ld) -> size_t {
    return rows == 0 || cols == 0 ? 0 : static_cast<size_t>((rows - 1) * ld + cols);
  };
  auto tensor = [&](size_t i, const char* name, size_t n, bool any) {
    return d ? d->tensor(i, name, n, DType::F32, any) : tensor_arg(info, i, fn, name, n, DType::F32, any);
  };
  g.a = tensor(6, "A", need(a_rows, a_cols, g.lda), allow_bf16);
  if (allow_quant) {
    g.b = weight_arg(info, 8, fn, "B", b_rows, b_cols, static_cast<int64_t>(need(b_rows, b_cols, g.ldb)), d);
    if (g.b.quantized && g.ldb != b_cols) throw arg_error(info, fn, "a quantized B must be unstrided (ldb equal to its columns)");
  } else {
    g.b.dense = tensor(8, "B", need(b_rows, b_cols, g.ldb), allow_bf16);
  }
  g.c = tensor(11, "C", need(g.M, g.N, g.ldc), false);
  switch (g.a.dtype) {
    case DType::F32: break;
    case DType::BF16: if (allow_bf16) break; [[fallthrough]];
    default: throw arg_error(info, fn, allow_bf16 ? "A must be f32 or bf16" : "A must be f32");
  }
  if (!g.b.quantized) {
    switch (g.b.dense.dtype) {
      case DType::F32: break;
      case DType::BF16: if (allow_bf16) break; [[fallthrough]];
      default: throw arg_error(info, fn, allow_bf16 ? "B must be f32, bf16 or a quantized weight" : "B must be f32");
    }
  }
  return g;
}

// gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, reference?)
//   B may be a quantized weight (operand.h), dequantized while packing.
//   All operands (a quantized B's parts too) on one device: the CPU kernel,
//   or cuda::gemm (bf16 tensor cores). reference: the unblocked CPU kernel on
//   the CPU, cuBLASLt (bf16, loaded at run time) on CUDA.
static Napi::Value GemmBinding(const Napi::CallbackInfo& info) {
  Dispatch d(info, "gemm");
  GemmArgs g = gemm_args(info, "gemm", true, true, &d);
  bool reference = info.Length() > 13 && info[13].IsBoolean() && info[13].As<Napi::Boolean>().Value();
  return guarded(info, [&]() -> Napi::Value {
    MatRef A{g.a.data, g.a.dtype, g.lda, g.ta}, B = g.b.mat(g.ldb, g.tb);
    if (d.cuda()) {
      if (reference) TB_ON_CUDA(cuda::gemm_cublaslt(g.M, g.N, g.K, g.alpha, A, B, g.beta, g.c.f32(), g.ldc));
      else TB_ON_CUDA(cuda::gemm(g.M, g.N, g.K, g.alpha, A, B, g.beta, g.c.f32(), g.ldc));
    } else if (reference) {
      gemm_reference(g.M, g.N, g.K, g.alpha, A, B, g.beta, g.c.f32(), g.ldc);
    } else {
      gemm(g.M, g.N, g.K, g.alpha, A, B, g.beta, g.c.f32(), g.ldc);
    }
    return info.Env().Undefined();
  });
}

// cublaslt_status(): "" when cuBLASLt is loaded (the CUDA reference GEMM),
// else why not. Loads it on first call; a CPU-only build says it has no CUDA.
static Napi::Value CublasLtStatusBinding(const Napi::CallbackInfo& info) {
#ifdef TUNEBENCH_CUDA
  return Napi::String::New(info.Env(), cuda::cublaslt_status());
#else
  return Napi::String::New(info.Env(), "this build has no CUDA backend");
#endif
}

// hostmath_gemm_dequant(W, rows, cols, run, out): the CUDA loaders' per-run
// dequantization (kernels/gemm_math.h) on the CPU, for tests: W (a quantized
// weight on the CPU, [rows, cols]) -> out [rows * cols] f32, run by run as
// the loaders read it: runs of `run` (16: a GEMM tile thread, 8: a decode
// lane) along each stored row from its first column (a 4-bit row may start
// at an odd element), the row's tail element by element.
static Napi::Value HostmathGemmDequantBinding(const Napi::CallbackInfo& info) {
  const char* fn = "hostmath_gemm_dequant";
  const int64_t rows = int_arg(info, 1, fn, "rows"), cols = int_arg(info, 2, fn, "cols");
  const int64_t run = int_arg(info, 3, fn, "run");
  if (run != 8 && run != 16) throw arg_error(info, fn, "run must be 8 or 16");
  WeightOperand w = weight_arg(info, 0, fn, "W", rows, cols);
  if (!w.quantized) throw arg_error(info, fn, "W must be a quantized weight");
  TensorArg out = tensor_arg(info, 4, fn, "out", static_cast<size_t>(rows * cols), DType::F32);
  float* o = out.f32();
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = 0;
    for (; c + run <= cols; c += run) {
      const int64_t e = r * cols + c;
      if (w.kind == QuantKind::Q4) {
        const Quant4View& q = w.q4;
        if (run == 16) math::quant4_run<16>(q.table, q.packed, q.absmax, q.block_shift, e, o + e);
        else math::quant4_run<8>(q.table, q.packed, q.absmax, q.block_shift, e, o + e);
        continue;
      }
      const IntNView& q = w.intn;
      auto go = [&](auto bits) {
        constexpr int NB = decltype(bits)::value;
        if (run == 16) math::intn_run<NB, 16>(q.codes, q.scales, q.offsets, q.group_shift, e, o + e);
        else math::intn_run<NB, 8>(q.codes, q.scales, q.offsets, q.group_shift, e, o + e);
      };
      switch (q.bits) {
        case 2: go(std::integral_constant<int, 2>()); break;
        case 3: go(std::integral_constant<int, 3>()); break;
        case 4: go(std::integral_constant<int, 4>()); break;
        default: go(std::integral_constant<int, 8>()); break;
      }
    }
    for (; c < cols; c++) {  // INT-N rows are whole runs; only 4-bit rows have tails
      const int64_t e = r * cols + c;
      o[e] = w.kind == QuantKind::Q4
                 ? math::quant4_value(w.q4.table, w.q4.packed, w.q4.absmax, w.q4.block_shift, e)
                 : math::intn_value(w.intn.codes, w.intn.scales, w.intn.offsets, w.intn.bits, w.intn.group_shift, e);
    }
  }
  return info.Env().Undefined();
}

static void register_gemm(Napi::Env env, Napi::Object exports) {
  exports.Set("gemm", Napi::Function::New(env, GemmBinding));
  exports.Set("gemmKernel", Napi::String::New(env, gemm_kernel_name()));
  exports.Set("cublaslt_status", Napi::Function::New(env, CublasLtStatusBinding));
  exports.Set("hostmath_gemm_dequant", Napi::Function::New(env, HostmathGemmDequantBinding));
}
TB_REGISTER_OPS(gemm, register_gemm);

}  // namespace tb
