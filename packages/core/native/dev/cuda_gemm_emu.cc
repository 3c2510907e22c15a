// Host emulation of the index mapping of cuda/gemm.cu (compiled, not yet run
// on a GPU): the tile kernel's loaders, run_of/stash into the shared tiles, the
// WMMA fragment reads (matrix_a row_major and matrix_b col_major, ldm LDS, as
// the CUDA documentation defines them) and the epilogue, and the decode
// kernel's lanes, all run sequentially on the CPU for ragged shapes, every
// trans combination, padded leading dimensions, misaligned bases, beta 0 with
// a NaN C, and the NF4/FP4 and INT-N loaders, against a double-precision
// product of the bf16-rounded operands. The loader code is cut out of gemm.cu
// by cuda_gemm_emu.sh (so it is the kernel's own code); the tiles start as
// bf16 NaN, so an element a fetch misses shows up as NaN. It checks index
// arithmetic only: not the barriers, WMMA itself, or anything timing-related.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
#include "gemm.h"
#include "kernels/gemm_math.h"
#include "kernels/quant_math.h"
struct float4 { float x, y, z, w; };
struct uint4 { uint32_t x, y, z, w; };
struct uint2 { uint32_t x, y; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
template <class T> T __ldg(const T* p) { return *p; }
// the NF4 tile loader's 64-bit loads: counted (they must be used where the
// run is aligned) and checked for 8-byte alignment, as the device requires
long g_ldg64 = 0, g_misaligned = 0;
inline uint2 __ldg(const uint2* p) {
  g_ldg64++;
  if (reinterpret_cast<uintptr_t>(p) & 7) g_misaligned++;
  uint2 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float __uint_as_float(uint32_t u) { return tb::bits_to_f32(u); }
struct __nv_bfloat162 { uint16_t x, y; };
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {tb::f32_to_bf16(a), tb::f32_to_bf16(b)}; }
namespace tb::cuda {
constexpr int64_t kQuantDecodeMaxRows = 16;
namespace {
#include "gemm_cu_loaders.inc"
}  // namespace
}  // namespace tb::cuda
using namespace tb;
using namespace tb::cuda;

static float bfr(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// the tile kernel, one block at a time, stages in order
template <class LA, class LB>
void emu_gemm(int64_t M, int64_t N, int64_t K, float alpha, float beta, LA la, LB lb, Table16 table, float* C,
              int64_t ldc, int gridy) {
  std::vector<uint16_t> tiles(2 * 2 * BM * LDS, 0xFFFF);  // junk
  float s_table[16];
  for (int i = 0; i < 16; i++) s_table[i] = table.v[i];
  set_table(lb, s_table);
  const int64_t ntiles = (N + BN - 1) / BN, mtiles = (M + BM - 1) / BM, ktiles = (K + BK - 1) / BK;
  for (int64_t bx = 0; bx < ntiles; bx++)
    for (int by = 0; by < gridy; by++) {
      const int64_t n0 = bx * BN;
      for (int64_t mt = by; mt < mtiles; mt += gridy) {
        const int64_t m0 = mt * BM;
        std::vector<float> acc(BM * BN, 0.0f);
        auto T = [&](int st, int ab) { return tiles.data() + (st * 2 + ab) * BM * LDS; };
        for (int64_t t = 0; t < ktiles; t++) {
          const int cur = t & 1;
          for (int tid = 0; tid < 256; tid++) {
            uint32_t ra[8], rb[8];
            la.fetch(m0, t * BK, tid, ra);
            lb.fetch(n0, t * BK, tid, rb);
            stash(la.kmajor, tid, ra, T(cur, 0));
            stash(lb.kmajor, tid, rb, T(cur, 1));
          }
          for (int warp = 0; warp < 8; warp++) {
            const int wm = warp >> 2, wn = warp & 3;
            for (int kk = 0; kk < BK; kk += 16)
              for (int i = 0; i < 4; i++)
                for (int j = 0; j < 2; j++) {
                  const uint16_t* pa = T(cur, 0) + (wm * 64 + i * 16) * LDS + kk;  // row_major ldm LDS
                  const uint16_t* pb = T(cur, 1) + (wn * 32 + j * 16) * LDS + kk;  // col_major ldm LDS
                  for (int r = 0; r < 16; r++)
                    for (int c = 0; c < 16; c++) {
                      float s = 0;
                      for (int k = 0; k < 16; k++) s += bf16_to_f32(pa[r * LDS + k]) * bf16_to_f32(pb[c * LDS + k]);
                      acc[(wm * 64 + i * 16 + r) * BN + wn * 32 + j * 16 + c] += s;
                    }
                }
          }
        }
        for (int warp = 0; warp < 8; warp++) {
          const int wm = warp >> 2, wn = warp & 3;
          for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++) {
              float scratch[256];
              for (int r = 0; r < 16; r++)
                for (int c = 0; c < 16; c++) scratch[r * 16 + c] = acc[(wm * 64 + i * 16 + r) * BN + wn * 32 + j * 16 + c];
              for (int e = 0; e < 256; e++) {
                const int64_t m = m0 + wm * 64 + i * 16 + (e >> 4), n = n0 + wn * 32 + j * 16 + (e & 15);
                if (m < M && n < N) {
                  float* c = C + m * ldc + n;
                  const float s = alpha * scratch[e];
                  *c = beta == 0.0f ? s : s + beta * *c;
                }
              }
            }
        }
      }
    }
}

template <class W>
void emu_decode(int m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, W w, Table16 table, float beta,
                float* y, int64_t ldy) {
  float s_table[16];
  for (int i = 0; i < 16; i++) s_table[i] = table.v[i];
  w.table = s_table;
  for (int64_t n = 0; n < ((N + 7) / 8) * 8; n++) {
    float acc[32][16] = {};
    std::vector<float> xs(16 * kDecodeChunk);
    for (int64_t k0 = 0; k0 < K; k0 += kDecodeChunk) {
      for (int i = 0; i < m * kDecodeChunk; i++) {
        const int r = i / kDecodeChunk, c = i % kDecodeChunk;
        xs[r * kDecodeChunk + c] = k0 + c < K ? x[r * ldx + k0 + c] : 0.0f;
      }
      for (int lane = 0; lane < 32; lane++) {
        const int64_t k = k0 + lane * 8;
        if (n < N && k < K) {
          float wv[8];
          w.fetch8(n, k, wv);
          for (int r = 0; r < m; r++)
            for (int q = 0; q < 8; q++) acc[lane][r] += xs[r * kDecodeChunk + lane * 8 + q] * wv[q];
        }
      }
    }
    for (int r = 0; r < m; r++) {
      float s = 0;
      for (int lane = 0; lane < 32; lane++) s += acc[lane][r];
      if (n < N) { float* c = y + r * ldy + n; *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c; }
    }
  }
}

std::mt19937 rng(1234);
float urand() { return std::uniform_real_distribution<float>(-1, 1)(rng); }

int fails = 0;
void check(const char* what, const std::vector<double>& ref, const float* got, int64_t M, int64_t N, int64_t ldc, double tol) {
  double maxerr = 0, maxref = 1e-30;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double g = got[i * ldc + j];
      if (!std::isfinite(g)) { maxerr = INFINITY; break; }
      maxerr = std::max(maxerr, std::fabs(g - ref[i * N + j]));
      maxref = std::max(maxref, std::fabs(ref[i * N + j]));
    }
  const bool ok = maxerr / maxref < tol;
  if (!ok) fails++;
  std::printf("%s %s M=%lld N=%lld err %.3g\n", ok ? "ok  " : "FAIL", what, (long long)M, (long long)N, maxerr / maxref);
}

// dense: A (f32|bf16), B (f32|bf16), trans combos, padded lds, offset (misaligned) base
template <class TA, class TB>
void dense_case(int64_t M, int64_t N, int64_t K, bool ta, bool tb, int pad, int off, float beta, int gridy = 65535) {
  const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  const int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
  // exactly the strided extent (as gemm_args requires), so ASan sees a read past it
  const int64_t an = (ar - 1) * lda + ac + off, bn = (br - 1) * ldb + bc + off;
  std::vector<TA> A(an);
  std::vector<TB> B(bn);
  std::vector<float> Af(an), Bf(bn);
  for (size_t i = 0; i < A.size(); i++) { float v = bfr(urand()); Af[i] = v; if constexpr (sizeof(TA) == 4) A[i] = v; else A[i] = f32_to_bf16(v); }
  for (size_t i = 0; i < B.size(); i++) { float v = bfr(urand()); Bf[i] = v; if constexpr (sizeof(TB) == 4) B[i] = v; else B[i] = f32_to_bf16(v); }
  std::vector<float> C((M - 1) * ldc + N);
  for (auto& c : C) c = beta == 0 ? NAN : urand();
  std::vector<double> ref(M * N);
  const float* a = Af.data() + off; const float* b = Bf.data() + off;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) s += (double)a[ta ? k * lda + i : i * lda + k] * b[tb ? j * ldb + k : k * ldb + j];
      ref[i * N + j] = 1.5 * s + (beta == 0 ? 0.0 : beta * (double)C[i * ldc + j]);
    }
  DenseLoader<TA> la{A.data() + off, lda, M, K, !ta};
  DenseLoader<TB> lb{B.data() + off, ldb, N, K, tb};
  const int64_t mtiles = (M + BM - 1) / BM;
  emu_gemm(M, N, K, 1.5f, beta, la, lb, Table16{}, C.data(), ldc, (int)std::min<int64_t>(mtiles, gridy));
  char what[128];
  std::snprintf(what, sizeof what, "dense %s%s ta=%d tb=%d K=%lld pad=%d off=%d beta=%g", sizeof(TA) == 4 ? "f32" : "bf16",
                sizeof(TB) == 4 ? "f32" : "bf16", ta, tb, (long long)K, pad, off, beta);
  check(what, ref, C.data(), M, N, ldc, 1e-5);
}

float table[16];
// boff: the packed codes start boff bytes into their buffer (not 8-byte aligned unless boff % 8 == 0)
void q4_case(int64_t M, int64_t N, int64_t K, bool tb, int shift, bool decode, int boff = 0) {
  // W stored [rows, cols]: x W^T (tb): [N, K]; dy W: [K, N]
  const int64_t rows = tb ? N : K, cols = tb ? K : N, numel = rows * cols;
  std::vector<uint8_t> buf((numel + 1) / 2 + boff + 8);
  for (auto& p : buf) p = rng() & 255;
  const uint8_t* const pk = reinterpret_cast<const uint8_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 7) & ~uintptr_t(7)) + boff;
  std::vector<float> absmax((numel + (1 << shift) - 1) >> shift);
  for (auto& a : absmax) a = 0.5f + std::fabs(urand());
  std::vector<float> A(M * K), C(M * N, NAN);
  for (auto& a : A) a = decode ? urand() : bfr(urand());
  std::vector<double> ref(M * N);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) {
        const int64_t e = tb ? j * K + k : k * N + j;
        float w = math::quant4_value(table, pk, absmax.data(), shift, e);
        s += (double)A[i * K + k] * (decode ? w : bfr(w));
      }
      ref[i * N + j] = s;
    }
  Table16 t; for (int i = 0; i < 16; i++) t.v[i] = table[i];
  if (decode) {
    emu_decode((int)M, N, K, 1.0f, A.data(), K, Quant4Row{pk, absmax.data(), nullptr, K, shift}, t, 0.0f, C.data(), N);
  } else {
    DenseLoader<float> la{A.data(), K, M, K, true};
    Quant4Loader lb{pk, absmax.data(), nullptr, cols, N, K, shift, tb};
    emu_gemm(M, N, K, 1.0f, 0.0f, la, lb, t, C.data(), N, 65535);
  }
  char what[128];
  std::snprintf(what, sizeof what, "q4 %s tb=%d K=%lld block=%d boff=%d", decode ? "decode" : "tiles", tb, (long long)K, 1 << shift, boff);
  check(what, ref, C.data(), M, N, N, 1e-5);
}

template <int NB>
void intn_case(int64_t M, int64_t N, int64_t K, bool tb, int gshift, bool decode) {
  const int64_t rows = tb ? N : K, cols = tb ? K : N, numel = rows * cols;
  std::vector<uint8_t> codes((numel * NB + 7) / 8);
  for (auto& p : codes) p = rng() & 255;
  std::vector<float> sc(numel >> gshift), of(numel >> gshift);
  for (auto& a : sc) a = 0.1f + std::fabs(urand());
  for (auto& a : of) a = urand();
  std::vector<float> A(M * K), C(M * N, NAN);
  for (auto& a : A) a = decode ? urand() : bfr(urand());
  std::vector<double> ref(M * N);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) {
        const int64_t e = tb ? j * K + k : k * N + j;
        float w = math::intn_value(codes.data(), sc.data(), of.data(), NB, gshift, e);
        s += (double)A[i * K + k] * (decode ? w : bfr(w));
      }
      ref[i * N + j] = s;
    }
  if (decode) {
    emu_decode((int)M, N, K, 1.0f, A.data(), K, IntNRow<NB>{codes.data(), sc.data(), of.data(), nullptr, K, gshift}, Table16{}, 0.0f, C.data(), N);
  } else {
    DenseLoader<float> la{A.data(), K, M, K, true};
    IntNLoader<NB> lb{codes.data(), sc.data(), of.data(), cols, N, K, gshift, tb};
    emu_gemm(M, N, K, 1.0f, 0.0f, la, lb, Table16{}, C.data(), N, 65535);
  }
  char what[128];
  std::snprintf(what, sizeof what, "int%d %s tb=%d K=%lld group=%d", NB, decode ? "decode" : "tiles", tb, (long long)K, 1 << gshift);
  check(what, ref, C.data(), M, N, N, 1e-5);
}

// Shared-memory bank conflicts of the transposed stash (row-major source):
// for every warp and each of a thread's 16 single-element stores, the
// threads' 32-bit words per bank (32 banks of 4 bytes). Threads writing the
// same word do not conflict. Returns the worst number of distinct words one
// bank serves at one store (1: conflict-free).
int stash_t_ways() {
  int worst = 0;
  for (int w = 0; w < kThreads / 32; w++)
    for (int i = 0; i < 16; i++) {
      std::vector<std::vector<int>> words(32);
      for (int lane = 0; lane < 32; lane++) {
        const int tid = w * 32 + lane;
        int r, k;
        run_of(false, tid, r, k);
        const int word = (stash_t_row(tid, r, i) * LDS + k) / 2;
        auto& b = words[word % 32];
        if (std::find(b.begin(), b.end(), word) == b.end()) b.push_back(word);
      }
      for (auto& b : words) worst = std::max(worst, (int)b.size());
    }
  return worst;
}

int main() {
  for (int i = 0; i < 16; i++) table[i] = urand();
  {
    const int ways = stash_t_ways();
    std::printf("%s transposed stash: at most %d-way shared-memory bank conflict\n", ways == 1 ? "ok  " : "FAIL", ways);
    if (ways != 1) fails++;
  }
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      dense_case<float, float>(130, 133, 37, ta, tb, 0, 0, 0.0f);
      dense_case<float, float>(129, 257, 64, ta, tb, 3, 1, 0.5f);
      dense_case<uint16_t, uint16_t>(130, 133, 37, ta, tb, 0, 0, 0.0f);
      dense_case<uint16_t, float>(17, 140, 70, ta, tb, 5, 3, 1.0f);
      dense_case<float, uint16_t>(300, 20, 33, ta, tb, 8, 0, 0.0f, 1);  // gridDim.y 1: M tiles strided
      dense_case<float, float>(5, 7, 3, ta, tb, 0, 0, 0.0f);
      dense_case<uint16_t, uint16_t>(29, 45, 45, ta, tb, 0, 0, 0.0f);  // tails of 13
      // the rank-1 GEMMs of projection biases (nn/llama.ts): ones [N, 1] x bias [1, out]
      // accumulated into y (K = 1), and the bias gradient ones^T [1, N] x dy (M = 1)
      dense_case<float, float>(130, 133, 1, ta, tb, 0, 0, 1.0f);
      dense_case<float, uint16_t>(70, 96, 1, ta, tb, 0, 0, 1.0f);
      dense_case<float, float>(1, 133, 130, ta, tb, 0, 0, 1.0f);
    }
  for (int tb = 0; tb < 2; tb++) {
    q4_case(130, 140, 67, tb, 5, false);
    q4_case(33, 131, 96, tb, 6, false);
    q4_case(20, 29, 75, tb, 5, false);  // a K tail of 11: a run of 16 would read past K
    q4_case(40, 128, 64, tb, 4, false);  // blocks of 16: each 64-bit run exactly one block
    q4_case(40, 128, 64, tb, 6, false, 3);  // codes not 8-byte aligned: byte by byte
    intn_case<2>(130, 144, 64, tb, 4, false);
    intn_case<3>(20, 160, 96, tb, 5, false);
    intn_case<4>(131, 128, 128, tb, 6, false);
    intn_case<8>(7, 144, 256, tb, 4, false);
  }
  for (int m : {1, 5, 16}) {
    q4_case(m, 37, 67, true, 5, true);
    q4_case(m, 19, 600, true, 6, true);
    intn_case<3>(m, 21, 544, true, 5, true);
    intn_case<2>(m, 9, 16, true, 4, true);
    intn_case<8>(m, 9, 128, true, 7, true);
  }
  // the 64-bit NF4 loads ran (aligned runs exist above), never misaligned
  std::printf("%s NF4 tile loader: %ld 64-bit loads, %ld misaligned\n", g_ldg64 > 0 && g_misaligned == 0 ? "ok  " : "FAIL", g_ldg64, g_misaligned);
  if (g_ldg64 == 0 || g_misaligned != 0) fails++;
  std::printf("%d failures\n", fails);
  return fails != 0;
}
