// Decode GEMV (decode.h): a few rows of activations times a weight streamed
// once, codes expanded in registers.
//
// One template, dot_tile, walks one output row of W for up to 8 rows of x;
// the weight format is a "source" that yields W's values a vector at a time
// (chunk) or one at a time (elem, for unaligned heads and tails), and the
// instruction set is a policy (Avx512, Avx2, Portable) giving the vector type
// and the code expansion. Rows of x beyond 8 take a second pass over the same
// row of W, which is then in L1.
#include "decode.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "args.h"
#include "kernels/quant_math.h"
#include "operand.h"
#include "parallel.h"
#include "registry.h"
#include "share.h"
#include "storage.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// GCC 12's intrinsic headers build some results from _mm*_undefined_*()
// (the reductions, the widening loads) and then warn that it is uninitialised.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tb {
namespace {

// BYTES little-endian bytes at p as an integer, with loads no wider than the
// bytes (a memcpy of 3 or 6 bytes into a zeroed word goes through the stack on
// GCC and stalls on store forwarding: 8x slower 3-bit decode).
template <int BYTES>
inline uint64_t load_le(const uint8_t* p) {
  static_assert(BYTES == 1 || BYTES == 2 || BYTES == 3 || BYTES == 4 || BYTES == 6 || BYTES == 8, "byte count");
  if constexpr (BYTES == 1) {
    return p[0];
  } else if constexpr (BYTES == 2) {
    uint16_t v; std::memcpy(&v, p, 2); return v;
  } else if constexpr (BYTES == 3) {
    uint16_t v; std::memcpy(&v, p, 2); return v | (uint64_t(p[2]) << 16);
  } else if constexpr (BYTES == 4) {
    uint32_t v; std::memcpy(&v, p, 4); return v;
  } else if constexpr (BYTES == 6) {
    uint32_t a; uint16_t b; std::memcpy(&a, p, 4); std::memcpy(&b, p + 4, 2); return a | (uint64_t(b) << 32);
  } else {
    uint64_t v; std::memcpy(&v, p, 8); return v;
  }
}

#if defined(__AVX2__)
// The low 8 bytes of b as 16 bytes, one 4-bit code each in element order:
// the low nibble of each byte first (INT-N's LSB-first stream) or the high
// nibble first (the 4-bit blockwise layout). Vector-only: no code passes
// through a general register (broadcasting from one was the INT4 bottleneck).
inline __m128i nibble_bytes(__m128i b, bool high_first) {
  const __m128i m = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  return high_first ? _mm_unpacklo_epi8(hi, lo) : _mm_unpacklo_epi8(lo, hi);
}
#endif

// ---- instruction-set policies ----
// Each gives: W (lanes), F (float vector), I (int vector), zero, load, set1,
// fma, add, hsum, bf16 (W bf16 values -> F), bits<N>(p) (W codes of an INT-N
// stream from W*N/8 bytes, LSB first), nib(p) (W 4-bit codes from W/2 bytes,
// high nibble first), Lut + lut (a 16-entry table lookup).

#if defined(__AVX512F__)
struct Avx512 {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static F cvt(I c) { return _mm512_cvtepi32_ps(c); }
  static F bf16(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  // Two 32-bit words, each holding 8 codes of `step` bits, in lanes 0..7 and
  // 8..15; lane i shifted right by sh[i] and masked.
  static I split(uint32_t lo, uint32_t hi, I sh, I mask) {
    const I v = _mm512_mask_set1_epi32(_mm512_set1_epi32(static_cast<int>(lo)), 0xFF00, static_cast<int>(hi));
    return _mm512_and_si512(_mm512_srlv_epi32(v, sh), mask);
  }
  template <int N>
  static I bits(const uint8_t* p) {
    if constexpr (N == 8) {
      return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else if constexpr (N == 4) {
      return _mm512_cvtepu8_epi32(nibble_bytes(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), false));
    } else {
      // 16 codes in 2N bytes: the first 8 in the low 8N bits, the next 8 above
      const uint64_t w = load_le<2 * N>(p);
      const uint32_t lo = static_cast<uint32_t>(w & ((uint64_t(1) << (8 * N)) - 1)), hi = static_cast<uint32_t>(w >> (8 * N));
      const I sh = _mm512_setr_epi32(0, N, 2 * N, 3 * N, 4 * N, 5 * N, 6 * N, 7 * N, 0, N, 2 * N, 3 * N, 4 * N, 5 * N, 6 * N, 7 * N);
      return split(lo, hi, sh, _mm512_set1_epi32((1 << N) - 1));
    }
  }
  static I nib(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(nibble_bytes(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), true));
  }
  // 2W codes: 4-bit ones from one 16-byte load, others as two bits<N>
  template <int N>
  static void bits2(const uint8_t* p, I& a, I& b) {
    if constexpr (N == 4) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i m = _mm_set1_epi8(15);
      const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
      a = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
      b = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
    } else {
      a = bits<N>(p);
      b = bits<N>(p + 2 * N);
    }
  }
  static void nib2(const uint8_t* p, I& a, I& b) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    a = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
    b = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo));
  }
  struct Lut { F t; };
  static Lut make_lut(const float* table) { return Lut{_mm512_loadu_ps(table)}; }
  static F lut(I c, const Lut& t) { return _mm512_permutexvar_ps(c, t.t); }
};
#endif

#if defined(__AVX2__) && defined(__FMA__)
struct Avx2 {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  static F zero() { return _mm256_setzero_ps(); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static F cvt(I c) { return _mm256_cvtepi32_ps(c); }
  static F bf16(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  template <int N>
  static I bits(const uint8_t* p) {
    if constexpr (N == 8) {
      return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    } else if constexpr (N == 4) {
      return _mm256_cvtepu8_epi32(nibble_bytes(_mm_loadu_si32(p), false));
    } else {
      const uint32_t w = static_cast<uint32_t>(load_le<N>(p));
      const I sh = _mm256_setr_epi32(0, N, 2 * N, 3 * N, 4 * N, 5 * N, 6 * N, 7 * N);
      return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), sh), _mm256_set1_epi32((1 << N) - 1));
    }
  }
  static I nib(const uint8_t* p) { return _mm256_cvtepu8_epi32(nibble_bytes(_mm_loadu_si32(p), true)); }
  template <int N>
  static void bits2(const uint8_t* p, I& a, I& b) {
    if constexpr (N == 4) {
      const __m128i c = nibble_bytes(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), false);
      a = _mm256_cvtepu8_epi32(c);
      b = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(c, c));
    } else {
      a = bits<N>(p);
      b = bits<N>(p + N);
    }
  }
  static void nib2(const uint8_t* p, I& a, I& b) {
    const __m128i c = nibble_bytes(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), true);
    a = _mm256_cvtepu8_epi32(c);
    b = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(c, c));
  }
  // 16 entries as two 8-lane permutes, bit 3 of the code choosing between them
  struct Lut { F lo, hi; };
  static Lut make_lut(const float* table) { return Lut{_mm256_loadu_ps(table), _mm256_loadu_ps(table + 8)}; }
  static F lut(I c, const Lut& t) {
    const F a = _mm256_permutevar8x32_ps(t.lo, c), b = _mm256_permutevar8x32_ps(t.hi, c);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
  }
};
#endif

// Portable: GCC vector extensions, 8 lanes; codes expanded with the scalar
// unpacking of intn.h. The compiler maps it to whatever vector unit it targets.
struct Portable {
  static constexpr int W = 8;
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static F zero() { return F{}; }
  static F load(const float* p) { F v; std::memcpy(&v, p, sizeof v); return v; }
  static F set1(float v) { return F{} + v; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F mul(F a, F b) { return a * b; }
  static F add(F a, F b) { return a + b; }
  static float hsum(F v) { float s = 0.0f; for (int i = 0; i < W; i++) s += v[i]; return s; }
  static F cvt(I c) { return __builtin_convertvector(c, F); }
  static F bf16(const uint16_t* p) {
    F v;
    for (int i = 0; i < W; i++) v[i] = bf16_to_f32(p[i]);
    return v;
  }
  template <int N>
  static I bits(const uint8_t* p) {
    const uint64_t w = load_le<N>(p);
    I v;
    for (int i = 0; i < W; i++) v[i] = static_cast<int32_t>((w >> (N * i)) & ((1u << N) - 1));
    return v;
  }
  static I nib(const uint8_t* p) {
    I v;
    for (int i = 0; i < 4; i++) { v[2 * i] = p[i] >> 4; v[2 * i + 1] = p[i] & 15; }
    return v;
  }
  template <int N>
  static void bits2(const uint8_t* p, I& a, I& b) { a = bits<N>(p); b = bits<N>(p + N); }
  static void nib2(const uint8_t* p, I& a, I& b) { a = nib(p); b = nib(p + W / 2); }
  struct Lut { const float* t; };
  static Lut make_lut(const float* table) { return Lut{table}; }
  static F lut(I c, const Lut& t) {
    F v;
    for (int i = 0; i < W; i++) v[i] = t.t[c[i]];
    return v;
  }
};

// ---- weight sources: one output row of W ----

template <class V>
struct DenseF32 {
  const float* w;  // the row
  int64_t head() const { return 0; }
  typename V::F chunk(int64_t k) const { return V::load(w + k); }
  void pair(int64_t k, typename V::F& a, typename V::F& b) const { a = chunk(k); b = chunk(k + V::W); }
  float elem(int64_t k) const { return w[k]; }
};

template <class V>
struct DenseBf16 {
  const uint16_t* w;
  int64_t head() const { return 0; }
  typename V::F chunk(int64_t k) const { return V::bf16(w + k); }
  void pair(int64_t k, typename V::F& a, typename V::F& b) const { a = chunk(k); b = chunk(k + V::W); }
  float elem(int64_t k) const { return bf16_to_f32(w[k]); }
};

// INT-N row: K % L == 0 and L >= 16, so every chunk of W <= 16 codes starts
// on a byte and lies in one group; no head or tail.
template <class V, int N>
struct IntNRow {
  const uint8_t* codes;   // the row's first byte
  const float* scales;    // the row's groups
  const float* offsets;
  int group_shift;
  int64_t head() const { return 0; }
  typename V::F chunk(int64_t k) const {
    const int64_t g = k >> group_shift;
    return V::fma(V::cvt(V::template bits<N>(codes + (k * N) / 8)), V::set1(scales[g]), V::set1(offsets[g]));
  }
  // chunks k and k + W: their codes unpacked together where the policy can
  // (bits2), the group's scale and offset broadcast once when they share it
  void pair(int64_t k, typename V::F& a, typename V::F& b) const {
    const int64_t g0 = k >> group_shift, g1 = (k + V::W) >> group_shift;
    typename V::I c0, c1;
    V::template bits2<N>(codes + (k * N) / 8, c0, c1);
    const typename V::F s0 = V::set1(scales[g0]), o0 = V::set1(offsets[g0]);
    a = V::fma(V::cvt(c0), s0, o0);
    b = g1 == g0 ? V::fma(V::cvt(c1), s0, o0) : V::fma(V::cvt(c1), V::set1(scales[g1]), V::set1(offsets[g1]));
  }
  float elem(int64_t k) const {
    const int64_t g = k >> group_shift;
    return scales[g] * static_cast<float>(intn_code_at(codes, N, k)) + offsets[g];
  }
};

// 4-bit row: blocks run over the flattened weight, so a row may start in the
// middle of a block or of a byte; chunks start at flat indices that are
// multiples of W (within one block, since blocks are >= 32 long).
template <class V>
struct Q4Row {
  const uint8_t* packed;  // the whole weight
  const float* absmax;    // absmax[b - b0] is block b's
  int64_t b0;
  const float* table;
  typename V::Lut lutv;
  int64_t e0;  // flat index of the row's first element
  int block_shift;
  int64_t head() const { return (V::W - (e0 % V::W)) % V::W; }
  typename V::F chunk(int64_t k) const {
    const int64_t e = e0 + k;
    return V::mul(V::lut(V::nib(packed + (e >> 1)), lutv), V::set1(absmax[(e >> block_shift) - b0]));
  }
  // chunks k and k + W: codes from one load where the policy can (nib2), the
  // absmax broadcast once when both lie in one block
  void pair(int64_t k, typename V::F& a, typename V::F& b) const {
    const int64_t e = e0 + k, bl0 = e >> block_shift, bl1 = (e + V::W) >> block_shift;
    typename V::I c0, c1;
    V::nib2(packed + (e >> 1), c0, c1);
    const typename V::F s0 = V::set1(absmax[bl0 - b0]);
    a = V::mul(V::lut(c0, lutv), s0);
    b = V::mul(V::lut(c1, lutv), bl1 == bl0 ? s0 : V::set1(absmax[bl1 - b0]));
  }
  float elem(int64_t k) const {
    const int64_t e = e0 + k;
    const uint8_t b = packed[e >> 1];
    return table[(e & 1) ? (b & 15) : (b >> 4)] * absmax[(e >> block_shift) - b0];
  }
};

// sums[r] = sum_k W[k] * x[r, k] for r < MB, W one row from `src`.
// Two accumulator sets (even and odd chunks) keep two FMA chains in flight
// per row; beyond 4 rows (AVX-512: 8) the rows themselves do.
template <class V, int MB, class Src>
inline void dot_tile(const Src& src, int64_t K, const float* __restrict x, int64_t ldx, float* sums) {
  using F = typename V::F;
  constexpr int W = V::W;
  F a0[MB], a1[MB];
  float tail[MB];
  for (int r = 0; r < MB; r++) { a0[r] = V::zero(); a1[r] = V::zero(); tail[r] = 0.0f; }
  int64_t k = 0;
  const int64_t head = std::min<int64_t>(src.head(), K);
  for (; k < head; k++) {
    const float w = src.elem(k);
    for (int r = 0; r < MB; r++) tail[r] += w * x[r * ldx + k];
  }
  for (; k + 2 * W <= K; k += 2 * W) {
    F w0, w1;
    src.pair(k, w0, w1);
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) {
      a0[r] = V::fma(w0, V::load(x + r * ldx + k), a0[r]);
      a1[r] = V::fma(w1, V::load(x + r * ldx + k + W), a1[r]);
    }
  }
  for (; k + W <= K; k += W) {
    const F w0 = src.chunk(k);
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) a0[r] = V::fma(w0, V::load(x + r * ldx + k), a0[r]);
  }
  for (; k < K; k++) {
    const float w = src.elem(k);
    for (int r = 0; r < MB; r++) tail[r] += w * x[r * ldx + k];
  }
  for (int r = 0; r < MB; r++) sums[r] = V::hsum(V::add(a0[r], a1[r])) + tail[r];
}

template <class V>
constexpr int max_tile_rows() { return V::W == 16 ? 8 : 4; }

// All rows of x against one row of W: tiles of up to max_tile_rows rows.
template <class V, class Src>
inline void dot_rows(const Src& src, int64_t m, int64_t K, const float* x, int64_t ldx, float* sums) {
  constexpr int T = max_tile_rows<V>();
  for (int64_t r0 = 0; r0 < m; r0 += T) {
    const int64_t mb = std::min<int64_t>(T, m - r0);
    const float* xr = x + r0 * ldx;
    float* s = sums + r0;
    switch (mb) {
      case 1: dot_tile<V, 1>(src, K, xr, ldx, s); break;
      case 2: dot_tile<V, 2>(src, K, xr, ldx, s); break;
      case 3: dot_tile<V, 3>(src, K, xr, ldx, s); break;
      case 4: dot_tile<V, 4>(src, K, xr, ldx, s); break;
      default:
        if constexpr (T == 8) {
          switch (mb) {
            case 5: dot_tile<V, 5>(src, K, xr, ldx, s); break;
            case 6: dot_tile<V, 6>(src, K, xr, ldx, s); break;
            case 7: dot_tile<V, 7>(src, K, xr, ldx, s); break;
            default: dot_tile<V, 8>(src, K, xr, ldx, s); break;
          }
        }
        break;
    }
  }
}

// Output rows over the kernel threads (share.h: a thread another process
// keeps waiting never holds the call up): about 4 chunks per thread, at
// least 16 rows each.
// Below this many weights a GEMV runs on the calling thread: waking a
// helper costs microseconds, about what a weight of 256 Ki quantized values
// takes on one thread; with another process busy on the other core, the
// small preset (projections of 180 Ki weights) decoded at 0.71x of one
// thread when they were shared from 64 Ki, 1.10x at this threshold
// (pnpm bench:threads, 2-core EPYC VM).
constexpr int64_t kShareMin = 256 * 1024;

template <class Rows>
void share_rows(int64_t N, Rows& rows) {
  const int nt = num_threads();
  const int64_t chunk = std::max<int64_t>(16, (N + 4 * nt - 1) / (4 * nt));
  share_chunks(N, chunk, nt, rows);
}

[[noreturn]] void bad_weight(const char* what) {
  std::fprintf(stderr, "tunebench: decode_gemv: %s (a binding let it through)\n", what);
  std::abort();
}

template <class V, class Make>
void run_rows(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, float beta, float* y, int64_t ldy,
              Make make) {
  auto rows = [&](int64_t o0, int64_t o1) {
    float sums[kDecodeMaxRows];
    for (int64_t o = o0; o < o1; o++) {
      const auto src = make(o);
      dot_rows<V>(src, m, K, x, ldx, sums);
      for (int64_t r = 0; r < m; r++) {
        float& c = y[r * ldy + o];
        c = beta == 0.0f ? alpha * sums[r] : alpha * sums[r] + beta * c;
      }
    }
  };
  // small weights are not worth waking threads for; nested calls run on one thread
  if (omp_in_parallel() || N * K < kShareMin) rows(0, N);
  else share_rows(N, rows);
}

template <class V, int N>
void run_intn(int64_t m, int64_t Nout, int64_t K, float alpha, const float* x, int64_t ldx, const IntNView& w, float beta,
              float* y, int64_t ldy) {
  const int64_t gpr = K >> w.group_shift;  // groups per row
  run_rows<V>(m, Nout, K, alpha, x, ldx, beta, y, ldy, [&](int64_t o) {
    return IntNRow<V, N>{w.codes + (o * K * N) / 8, w.scales + o * gpr, w.offsets + o * gpr, w.group_shift};
  });
}

#if defined(__AVX512F__)
// bf16 weights on AVX-512: 32 values per 64-byte load, widened in place (the
// even elements by a shift, the odd ones by a mask: a bf16 value is the high
// half of its f32), so x is taken permuted per 32-chunk (its even elements,
// then its odd ones; built once per call). Sums are f32 as on the other
// paths, in another order.
// Eight horizontal sums at once: halves added, then pairwise hadd.
__attribute__((always_inline)) inline __m256 hsum8(const __m512 (&acc)[8]) {
  __m256 h[8];
  for (int o = 0; o < 8; o++) h[o] = _mm256_add_ps(_mm512_castps512_ps256(acc[o]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[o]), 1)));  // AVX512F only
  const __m256 h01 = _mm256_hadd_ps(h[0], h[1]), h23 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 h45 = _mm256_hadd_ps(h[4], h[5]), h67 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  // q0 = [r0 r1 r2 r3 | r0 r1 r2 r3] partial sums of the low and high 128-bit halves, q1 likewise for r4..r7
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

template <int MB>
void bf16_row_avx512(const uint16_t* w, int64_t K, const float* xp, int64_t K32, const float* x, int64_t ldx, float* sums) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 ae[MB], ao[MB];
  for (int r = 0; r < MB; r++) ae[r] = ao[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K32; k += 32) {
    const __m512i v = _mm512_loadu_si512(w + k);
    const __m512 ev = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), od = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) {
      ae[r] = _mm512_fmadd_ps(ev, _mm512_loadu_ps(xp + r * K32 + k), ae[r]);
      ao[r] = _mm512_fmadd_ps(od, _mm512_loadu_ps(xp + r * K32 + k + 16), ao[r]);
    }
  }
  for (int r = 0; r < MB; r++) {
    float t = 0.0f;
    for (int64_t k = K32; k < K; k++) t += bf16_to_f32(w[k]) * x[r * ldx + k];
    sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(ae[r], ao[r])) + t;
  }
}

// One row of x against eight bf16 rows (read one after the other), two
// accumulator pairs per row, the eight sums reduced together.
void bf16_rows8_avx512(const uint16_t* w, int64_t ldw, int64_t K, const float* xp, int64_t K32, const float* x, float* sums) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc[8];
#pragma GCC unroll 8
  for (int o = 0; o < 8; o++) {
    const uint16_t* wr = w + o * ldw;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K32; k += 64) {
      const __m512i v = _mm512_loadu_si512(wr + k), u = _mm512_loadu_si512(wr + k + 32);
      a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(xp + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi_mask)), _mm512_loadu_ps(xp + k + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(u, 16)), _mm512_loadu_ps(xp + k + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(u, hi_mask)), _mm512_loadu_ps(xp + k + 48), a3);
    }
    if (k < K32) {
      const __m512i v = _mm512_loadu_si512(wr + k);
      a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(xp + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi_mask)), _mm512_loadu_ps(xp + k + 16), a1);
    }
    acc[o] = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
  }
  _mm256_storeu_ps(sums, hsum8(acc));
  if (K32 < K)
    for (int o = 0; o < 8; o++) {
      float t = 0.0f;
      for (int64_t k = K32; k < K; k++) t += bf16_to_f32(w[o * ldw + k]) * x[k];
      sums[o] += t;
    }
}

void bf16_avx512(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const uint16_t* w, int64_t ldw,
                 float beta, float* y, int64_t ldy) {
  const int64_t K32 = K & ~int64_t(31);
  thread_local std::vector<float> xbuf;
  xbuf.resize(static_cast<size_t>(m * K32));
  float* xp = xbuf.data();
  for (int64_t r = 0; r < m; r++)
    for (int64_t c = 0; c < K32; c += 32)
      for (int j = 0; j < 16; j++) {
        xp[r * K32 + c + j] = x[r * ldx + c + 2 * j];
        xp[r * K32 + c + 16 + j] = x[r * ldx + c + 2 * j + 1];
      }
  auto rows = [&](int64_t o0, int64_t o1) {
    float sums[kDecodeMaxRows];
    int64_t o = o0;
    if (m == 1)
      for (; o + 8 <= o1; o += 8) {
        bf16_rows8_avx512(w + o * ldw, ldw, K, xp, K32, x, sums);
        for (int j = 0; j < 8; j++) {
          float& c = y[o + j];
          c = beta == 0.0f ? alpha * sums[j] : alpha * sums[j] + beta * c;
        }
      }
    for (; o < o1; o++) {
      const uint16_t* wr = w + o * ldw;
      for (int64_t r0 = 0; r0 < m; r0 += 8) {
        const int64_t mb = std::min<int64_t>(8, m - r0);
        const float* xr = xp + r0 * K32;
        const float* xo = x + r0 * ldx;
        float* sr = sums + r0;
        switch (mb) {
          case 1: bf16_row_avx512<1>(wr, K, xr, K32, xo, ldx, sr); break;
          case 2: bf16_row_avx512<2>(wr, K, xr, K32, xo, ldx, sr); break;
          case 3: bf16_row_avx512<3>(wr, K, xr, K32, xo, ldx, sr); break;
          case 4: bf16_row_avx512<4>(wr, K, xr, K32, xo, ldx, sr); break;
          case 5: bf16_row_avx512<5>(wr, K, xr, K32, xo, ldx, sr); break;
          case 6: bf16_row_avx512<6>(wr, K, xr, K32, xo, ldx, sr); break;
          case 7: bf16_row_avx512<7>(wr, K, xr, K32, xo, ldx, sr); break;
          default: bf16_row_avx512<8>(wr, K, xr, K32, xo, ldx, sr); break;
        }
      }
      for (int64_t r = 0; r < m; r++) {
        float& c = y[r * ldy + o];
        c = beta == 0.0f ? alpha * sums[r] : alpha * sums[r] + beta * c;
      }
    }
  };
  if (omp_in_parallel() || N * K < kShareMin) rows(0, N);
  else share_rows(N, rows);
}
#endif

template <class V>
void run(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W, float beta, float* y,
         int64_t ldy) {
  switch (W.dtype) {
    case DType::F32: {
      const float* w = static_cast<const float*>(W.p);
      run_rows<V>(m, N, K, alpha, x, ldx, beta, y, ldy, [&](int64_t o) { return DenseF32<V>{w + o * W.ld}; });
      return;
    }
    case DType::BF16: {
      const uint16_t* w = static_cast<const uint16_t*>(W.p);
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<V, Avx512>) {
        bf16_avx512(m, N, K, alpha, x, ldx, w, W.ld, beta, y, ldy);
        return;
      }
#endif
      run_rows<V>(m, N, K, alpha, x, ldx, beta, y, ldy, [&](int64_t o) { return DenseBf16<V>{w + o * W.ld}; });
      return;
    }
    case DType::U8:
      switch (W.quant) {
        case QuantKind::IntN: {
          const IntNView& q = *W.intn;
          switch (q.bits) {
            case 2: run_intn<V, 2>(m, N, K, alpha, x, ldx, q, beta, y, ldy); return;
            case 3: run_intn<V, 3>(m, N, K, alpha, x, ldx, q, beta, y, ldy); return;
            case 4: run_intn<V, 4>(m, N, K, alpha, x, ldx, q, beta, y, ldy); return;
            case 8: run_intn<V, 8>(m, N, K, alpha, x, ldx, q, beta, y, ldy); return;
            default: bad_weight("INT-N bits not 2, 3, 4 or 8");
          }
        }
        case QuantKind::Q4: {
          const Quant4View& q = *W.q4;
          const typename V::Lut lutv = V::make_lut(q.table);
          if (q.absmax) {
            run_rows<V>(m, N, K, alpha, x, ldx, beta, y, ldy, [&](int64_t o) {
              return Q4Row<V>{q.packed, q.absmax, 0, q.table, lutv, o * K, q.block_shift};
            });
            return;
          }
          if (!q.dq_codes || !q.dq_scales || !q.dq_map || q.dq_block < 1) bad_weight("a 4-bit weight with neither absmax nor its double quantization");
          // double-quantized absmax: the blocks of one output row expanded on
          // the fly into a per-thread buffer (a few floats), as
          // map[code] * scale[b / dq_block] + offset
          run_rows<V>(m, N, K, alpha, x, ldx, beta, y, ldy, [&](int64_t o) {
            thread_local std::vector<float> buf;
            const int64_t e0 = o * K, b0 = e0 >> q.block_shift, b1 = (e0 + K - 1) >> q.block_shift;
            buf.resize(static_cast<size_t>(b1 - b0 + 1));
            for (int64_t b = b0; b <= b1; b++)
              buf[static_cast<size_t>(b - b0)] = math::dq8_value(q.dq_map[q.dq_codes[b]], q.dq_scales[b / q.dq_block], q.dq_offset);
            return Q4Row<V>{q.packed, buf.data(), b0, q.table, lutv, e0, q.block_shift};
          });
          return;
        }
        default: bad_weight("a U8 weight that is not INT-N or 4-bit");
      }
    default: bad_weight("weight dtype not f32, bf16 or quantized");
  }
}

// ---- 16-bit integer activations (DecodeAct::I16) ----
// Each row of x is quantized once per call to int16 per block (the weight's
// group or 4-bit block): x ~ d_b * q, |q| <= 32767. A unit of 32 weights is
// expanded from its packed codes straight into 32 int16 lanes (one byte
// permute, one variable shift, one mask: no float copy of any weight) and
// multiplied with q by vpdpwssd (or madd + add without VNNI); the int32 sums
// of at most 64 weights are converted once and scaled by the block's
// combined scale: INT-N s_g * d_g (the offsets then add o_g * sum_g(x) with
// the float sums of x), 4-bit absmax_b * d_b / T with the table held as
// round(T * table), T = 16383. Sums stay inside int32: at most 4 products of
// |code| <= 255 or |T * table| <= 16383 with |q| <= 32767 per lane.
// Rounding: x to 1/65534 of its block's largest |x|, the 4-bit table to
// 1/32766 of absmax; everything after is exact integer or f32 arithmetic.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VBMI__) && defined(__F16C__)
#define TB_DECODE_I16 1

constexpr float kI16XMax = 32767.0f;
constexpr float kI16Table = 16383.0f;

// Lane l's group within a span whose lanes hold 1 << lshift elements each,
// for blocks of 1 << bshift (bshift >= 4): (l << lshift) >> bshift, as a
// permute index (0 for every lane where the span lies in one block). A
// table built once: building it per call of eight rows had cost INT3's 'i8'
// kernel a fifth of its time in cache.
inline __m512i lane_groups(int lshift, int bshift) {
  struct Table {
    alignas(64) int32_t idx[5][5][16];
    Table() {
      for (int ls = 0; ls <= 4; ls++)
        for (int b = 4; b <= 8; b++)
          for (int l = 0; l < 16; l++) idx[ls][b - 4][l] = (l << ls) >> b;
    }
  };
  static const Table t;
  return _mm512_load_si512(t.idx[lshift][std::min(bshift, 8) - 4]);
}

// The m rows of x quantized per block of 1 << bshift (>= 16) elements.
struct QuantX {
  const int16_t* q;   // [m, K]
  const float* d;     // [m, K >> bshift]
  const float* sum;   // [m, K >> bshift] f32 sums of x per block
  int64_t K, nb;
  const int16_t* q64 = nullptr;  // [m, K] q permuted per 64: even elements, then odd ones (INT4 spans of 64)
  const int16_t* q128 = nullptr; // [m, K] q permuted per 128 by position mod 4 (INT2 spans of 128, NF4/FP4 one-row spans of 128; the last K % 128 unset)
  const float* d64 = nullptr;    // [m, K / 64, 16] d per lane of each span of 64 (lane l: block (64 s + 4 l) >> bshift)
  const float* d128 = nullptr;   // [m, K / 128, 16] the same per span of 128 (lane l: block (128 s + 8 l) >> bshift), with q128
};

// qx.d64 from qx.d (K % 64 == 0)
void lanes_d64(int64_t m, int64_t K, int bshift, std::vector<float>& buf, QuantX& qx) {
  const int64_t S = K >> 6, nb = K >> bshift;
  buf.resize(static_cast<size_t>(m * S * 16));
  for (int64_t r = 0; r < m; r++)
    for (int64_t sp = 0; sp < S; sp++)
      for (int l = 0; l < 16; l++) buf[static_cast<size_t>((r * S + sp) * 16 + l)] = qx.d[r * nb + ((64 * sp + (bshift >= 6 ? 0 : 4 * l)) >> bshift)];
  qx.d64 = buf.data();
}

// qx.d128 from qx.d (K >= 128)
void lanes_d128(int64_t m, int64_t K, int bshift, std::vector<float>& buf, QuantX& qx) {
  const int64_t S = K >> 7, nb = K >> bshift;
  buf.resize(static_cast<size_t>(m * S * 16));
  for (int64_t r = 0; r < m; r++)
    for (int64_t sp = 0; sp < S; sp++)
      for (int l = 0; l < 16; l++) buf[static_cast<size_t>((r * S + sp) * 16 + l)] = qx.d[r * nb + ((128 * sp + 8 * l) >> bshift)];
  qx.d128 = buf.data();
}

// qx.q128 from qx.q: in each whole 128-chunk, elements 4j + s at 32 s + j
void permute_x128(int64_t m, int64_t K, std::vector<int16_t>& buf, QuantX& qx) {
  buf.resize(static_cast<size_t>(m * K));
  const int64_t K128 = K & ~int64_t(127);
  for (int64_t r = 0; r < m; r++) {
    const int16_t* a = qx.q + r * K;
    int16_t* b = buf.data() + r * K;
    for (int64_t c = 0; c < K128; c += 128)
      for (int st = 0; st < 4; st++)
        for (int j = 0; j < 32; j++) b[c + 32 * st + j] = a[c + 4 * j + st];
  }
  qx.q128 = buf.data();
}

// qx.q64 from qx.q (K % 64 == 0)
void permute_x64(int64_t m, int64_t K, std::vector<int16_t>& buf, QuantX& qx) {
  buf.resize(static_cast<size_t>(m * K));
  for (int64_t r = 0; r < m; r++) {
    const int16_t* a = qx.q + r * K;
    int16_t* b = buf.data() + r * K;
    for (int64_t c = 0; c < K; c += 64)
      for (int j = 0; j < 32; j++) { b[c + j] = a[c + 2 * j]; b[c + 32 + j] = a[c + 2 * j + 1]; }
  }
  qx.q64 = buf.data();
}

// The largest |x| and the sum of the B floats at xb (B a multiple of 16);
// bad gains a NaN where some x is infinite or NaN (x * 0).
inline void block_stats(const float* xb, int64_t B, float& amax, float& sum, __m512& bad) {
  const __m512 sign = _mm512_set1_ps(-0.0f), zero = _mm512_setzero_ps();
  __m512 mx = zero, sm = zero;
  for (int64_t k = 0; k < B; k += 16) {
    const __m512 v = _mm512_loadu_ps(xb + k);
    mx = _mm512_max_ps(mx, _mm512_andnot_ps(sign, v));
    sm = _mm512_add_ps(sm, v);
    bad = _mm512_add_ps(bad, _mm512_mul_ps(v, zero));
  }
  amax = _mm512_reduce_max_ps(mx);
  sum = _mm512_reduce_add_ps(sm);
}

// false when some x is not finite (the caller then takes the f32 path)
bool quantize_x(int64_t m, int64_t K, const float* x, int64_t ldx, int bshift, std::vector<int16_t>& qbuf,
                std::vector<float>& dbuf, std::vector<float>& sbuf, QuantX& out) {
  const int64_t B = int64_t(1) << bshift, nb = K >> bshift;
  qbuf.resize(static_cast<size_t>(m * K));
  dbuf.resize(static_cast<size_t>(m * nb));
  sbuf.resize(static_cast<size_t>(m * nb));
  const __m512 zero = _mm512_setzero_ps();
  __m512 bad = zero;  // stays 0 unless some x is inf or NaN (x * 0)
  for (int64_t r = 0; r < m; r++) {
    const float* xr = x + r * ldx;
    int16_t* qr = qbuf.data() + r * K;
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = xr + b * B;
      float amax, sum;
      block_stats(xb, B, amax, sum, bad);
      const float d = amax > 0.0f ? amax / kI16XMax : 0.0f;
      const __m512 inv = _mm512_set1_ps(amax > 0.0f ? kI16XMax / amax : 0.0f);
      __m512i qsum = _mm512_setzero_si512();
      for (int64_t k = 0; k < B; k += 16) {
        const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + k), inv));  // to nearest, ties even
        qsum = _mm512_add_epi32(qsum, qi);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + b * B + k), _mm512_cvtsepi32_epi16(qi));
      }
      (void)sum;
      dbuf[static_cast<size_t>(r * nb + b)] = d;
      // the sum of the rounded x (exact in f32 for blocks up to 512),
      // for the INT-N offsets, so that the result is exactly w . x^ (see
      // quantize_x8 below)
      sbuf[static_cast<size_t>(r * nb + b)] = d * static_cast<float>(_mm512_reduce_add_epi32(qsum));
    }
  }
  if (_mm512_reduce_add_ps(bad) != 0.0f || _mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q)) return false;
  out = QuantX{qbuf.data(), dbuf.data(), sbuf.data(), K, nb};
  return true;
}

inline __m512i dp16(__m512i acc, __m512i a, __m512i b) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, a, b);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

// How 32 codes become 32 int16 lanes: lane i takes the bytes idx[2i],
// idx[2i + 1] of the unit's first 16 bytes, shifts right by sh[i], masks.
struct Unpack16 {
  __m512i idx, sh, mask;
};

// INT-N, LSB first: code i at bit N * i.
template <int N>
Unpack16 intn_unpack() {
  alignas(64) uint8_t idx[64];
  alignas(64) uint16_t sh[32];
  for (int i = 0; i < 32; i++) {
    const int bit = N * i, p = bit / 8;
    idx[2 * i] = static_cast<uint8_t>(p);
    idx[2 * i + 1] = static_cast<uint8_t>(std::min(p + 1, 15));
    sh[i] = static_cast<uint16_t>(bit % 8);
  }
  return Unpack16{_mm512_load_si512(idx), _mm512_load_si512(sh), _mm512_set1_epi16(static_cast<int16_t>((1 << N) - 1))};
}

// 4-bit blockwise, high nibble first: element i in byte i / 2, shifted by 4
// when i is even. No mask: the table below repeats its 16 entries, so the
// stray bit 4 of the shifted word does not matter to the 5-bit permute.
Unpack16 q4_unpack() {
  alignas(64) uint8_t idx[64];
  alignas(64) uint16_t sh[32];
  for (int i = 0; i < 32; i++) {
    idx[2 * i] = static_cast<uint8_t>(i / 2);
    idx[2 * i + 1] = 0;
    sh[i] = (i & 1) ? 0 : 4;
  }
  return Unpack16{_mm512_load_si512(idx), _mm512_load_si512(sh), _mm512_setzero_si512()};
}

template <int N>
inline __m512i intn_codes32(const uint8_t* p, const Unpack16& u) {
  if constexpr (N == 8) {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    // 4N bytes (8, 12 or 16); the masked load reads none beyond them
    const __m128i v = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << (4 * N)) - 1), p);
    const __m512i z = _mm512_permutexvar_epi8(u.idx, _mm512_castsi128_si512(v));
    return _mm512_and_si512(_mm512_srlv_epi16(z, u.sh), u.mask);
  }
}

inline __m512i q4_codes32(const uint8_t* p, const Unpack16& u, __m512i table) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m512i z = _mm512_permutexvar_epi8(u.idx, _mm512_castsi128_si512(v));
  return _mm512_permutexvar_epi16(_mm512_srlv_epi16(z, u.sh), table);
}

// c[r][g] = scale[g] * d[r][g] for the blocks of one output row: the
// combined scale each span broadcasts (G <= kI16MaxBlocks).
constexpr int64_t kI16MaxBlocks = 1024;

template <int MB>
inline void combined_scales(const float* scales, const float* const* d, int64_t G, float (*c)[kI16MaxBlocks + 16]) {
  for (int r = 0; r < MB; r++) {
    int64_t g = 0;
    for (; g + 16 <= G; g += 16) _mm512_storeu_ps(c[r] + g, _mm512_mul_ps(_mm512_loadu_ps(scales + g), _mm512_loadu_ps(d[r] + g)));
    for (; g < G; g++) c[r][g] = scales[g] * d[r][g];
  }
}

// Weight sources for the i16 path: one output row's codes as 32 int16 lanes
// at a time, its per-block scales (and INT-N offsets).
template <int N>
struct IntNSrc16 {
  static constexpr int bits = N;
  const uint8_t* codes;  // the row's first byte
  const Unpack16* u;
  const float* scales;   // the row's groups
  const float* offsets;
  const uint16_t* scales16 = nullptr;   // fp16 copies of the same values (IntNView::scales16), or null
  const uint16_t* offsets16 = nullptr;  // null with scales16: offsets are -zero16 * scale
  float zero16 = 0.0f;
  __m512i codes32(int64_t k) const { return intn_codes32<N>(codes + ((k * N) >> 3), *u); }
};

struct Q4Src16 {
  const uint8_t* packed;  // the row's first byte
  const Unpack16* u;
  const __m512i* table;
  const float* scales;    // absmax of the row's blocks
  const float* offsets;   // null
  __m512i codes32(int64_t k) const { return q4_codes32(packed + (k >> 1), *u, *table); }
};

// R output rows (sources src[0..R)) against MB rows of quantized x (rows
// r0.. of qx): sums[o * kDecodeMaxRows + r] = sum_k w_o[k] x[r, k] * post.
// Spans of 32 * U weights (U = 2 for blocks >= 64, else 1) lie in one block:
// their int32 sums are converted and scaled once by c = scale * d. One
// output row alternates between two f32 accumulators per x row; two output
// rows (R = 2, for m = 1) are the two chains. Blocks of 16 (INT-N groups of
// 16): each unit spans two, lanes 0-7 and 8-15.
template <int MB, int U, class Src>
__attribute__((always_inline)) inline void i16_span(const Src& src, int64_t k, int bshift, const int16_t* const* xq,
                                                    const float (*c)[kI16MaxBlocks + 16], __m512 (&acc)[MB]) {
  const int64_t g = k >> bshift;
  __m512i I[MB];
  {
    const __m512i z = src.codes32(k);
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) I[r] = dp16(_mm512_setzero_si512(), z, _mm512_loadu_si512(xq[r] + k));
  }
  if constexpr (U == 2) {
    const __m512i z = src.codes32(k + 32);
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) I[r] = dp16(I[r], z, _mm512_loadu_si512(xq[r] + k + 32));
  }
  if (U == 1 && bshift == 4) {
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) {
      const __m512 cv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(c[r][g]), _mm512_set1_ps(c[r][g + 1]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[r]), cv, acc[r]);
    }
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[r]), _mm512_set1_ps(c[r][g]), acc[r]);
  }
}

// The weight's scales per lane of a span of 64 whose first block is g:
// exact loads of its 1, 2 or 4 blocks (a row's last span reads nothing past
// its scales), lane l taking block (4l) >> shift of the span (gidx).
__attribute__((always_inline)) inline __m512 span64_scales(const float* sc, int64_t g, int shift, __m512i gidx) {
  if (shift >= 6) return _mm512_set1_ps(sc[g]);
  if (shift == 5) return _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sc + g)))));
  return _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(_mm_loadu_ps(sc + g)));
}

// The same from fp16 copies of the scales (exact loads of 2, 4 or 8 bytes).
__attribute__((always_inline)) inline __m512 span64_scales16(const uint16_t* sc, int64_t g, int shift, __m512i gidx) {
  if (shift >= 6) return _mm512_set1_ps(_cvtsh_ss(sc[g]));
  __m128i h;
  if (shift == 5) { uint32_t v; std::memcpy(&v, sc + g, 4); h = _mm_cvtsi32_si128(static_cast<int>(v)); }
  else h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + g));
  return _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(_mm_cvtph_ps(h)));
}

// The dot products of one span of 64 (its even elements in `ev`, its odd
// ones in `od`, as 16-bit lanes) with x permuted per 64 (q64), converted and
// scaled per lane (group or block (4l) >> shift of the span) into acc.
template <int MB>
__attribute__((always_inline)) inline void span64_acc(__m512i ev, __m512i od, int64_t k, int shift, const int16_t* const* xp,
                                                      const float* sc, const float* const* dl, __m512i gidx, __m512 (&acc)[MB]) {
  const __m512 ws = span64_scales(sc, k >> shift, shift, gidx);
#pragma GCC unroll 8
  for (int r = 0; r < MB; r++) {
    const __m512i I = dp16(dp16(_mm512_setzero_si512(), ev, _mm512_loadu_si512(xp[r] + k)), od, _mm512_loadu_si512(xp[r] + k + 32));
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(ws, _mm512_loadu_ps(dl[r] + (k >> 2))), acc[r]);
  }
}

// INT4 in spans of 64 (U == 4 below; K % 64 == 0): the span's 32 bytes
// widened to 32 words, their low nibbles (the even elements) and high
// nibbles (the odd ones) two vectors of 32 lanes, dotted with x permuted the
// same way (QuantX::q64): one load, one widening and two bit operations for
// 64 codes. Lane l holds elements 4l, 4l + 2 (and 4l + 1, 4l + 3) of the
// span: group (4l) >> gshift of it, so groups of 32 and 16 take a per-lane
// combined scale (gidx), larger ones a broadcast.
// INT8 likewise: 64 bytes, the even bytes masked and the odd ones shifted
// down, in the same lanes.
template <int N>
__attribute__((always_inline)) inline void i4_codes64(const uint8_t* codes, int64_t k, __m512i& lo, __m512i& hi) {
  static_assert(N == 4 || N == 8, "spans of 64: INT4 and INT8");
  if constexpr (N == 4) {
    const __m512i z = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (k >> 1))));
    lo = _mm512_and_si512(z, _mm512_set1_epi16(15));
    hi = _mm512_srli_epi16(z, 4);
  } else {
    const __m512i v = _mm512_loadu_si512(codes + k);
    lo = _mm512_and_si512(v, _mm512_set1_epi16(255));
    hi = _mm512_srli_epi16(v, 8);
  }
}

template <int N, int MB>
__attribute__((always_inline)) inline void i4_span64(const uint8_t* codes, int64_t k, int gshift, const int16_t* const* xp,
                                                     const float* sc, const float* const* dl, __m512i gidx, __m512 (&acc)[MB]) {
  __m512i lo, hi;
  i4_codes64<N>(codes, k, lo, hi);
  span64_acc<MB>(lo, hi, k, gshift, xp, sc, dl, gidx, acc);
}

// 4-bit blockwise (NF4/FP4) in spans of 64 likewise: the high nibble of
// each byte is the even element, the low one the odd element; both go
// through the 16-bit code book (q4_unpack's table) before the dot products.
__attribute__((always_inline)) inline void q4_codes64(const uint8_t* packed, __m512i table, int64_t k, __m512i& ev, __m512i& od) {
  const __m512i z = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + (k >> 1))));
  ev = _mm512_permutexvar_epi16(_mm512_srli_epi16(z, 4), table);
  od = _mm512_permutexvar_epi16(_mm512_and_si512(z, _mm512_set1_epi16(15)), table);
}

template <int MB>
__attribute__((always_inline)) inline void q4_span64(const uint8_t* packed, __m512i table, int64_t k, int bshift,
                                                     const int16_t* const* xp, const float* sc, const float* const* dl, __m512i gidx,
                                                     __m512 (&acc)[MB]) {
  __m512i ev, od;
  q4_codes64(packed, table, k, ev, od);
  span64_acc<MB>(ev, od, k, bshift, xp, sc, dl, gidx, acc);
}

// INT2 in spans of 128 (U == 8 below): 32 bytes widened to 32 words, each
// holding 4 codes; the 4 fields (shift 0, 2, 4, 6) are 4 vectors whose lane
// l holds elements 8l .. 8l + 7 of the span, all in one group for groups of
// 16 and more, so the 4 dot products share one int32 sum, one conversion and
// one scale (per lane: group (8l) >> gshift). x permuted to match (q128).
template <int MB>
__attribute__((always_inline)) inline void i2_span128(const uint8_t* codes, int64_t k, int gshift, const int16_t* const* xp,
                                                      const float (*c)[kI16MaxBlocks + 16], __m512i gidx, __m512 (&acc)[MB]) {
  const __m512i z = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (k >> 2))));
  const __m512i m3 = _mm512_set1_epi16(3);
  const __m512i f0 = _mm512_and_si512(z, m3), f1 = _mm512_and_si512(_mm512_srli_epi16(z, 2), m3);
  const __m512i f2 = _mm512_and_si512(_mm512_srli_epi16(z, 4), m3), f3 = _mm512_srli_epi16(z, 6);
  const int64_t g = k >> gshift;
#pragma GCC unroll 8
  for (int r = 0; r < MB; r++) {
    const int16_t* x = xp[r] + k;
    __m512i I = dp16(_mm512_setzero_si512(), f0, _mm512_loadu_si512(x));
    I = dp16(I, f1, _mm512_loadu_si512(x + 32));
    I = dp16(I, f2, _mm512_loadu_si512(x + 64));
    I = dp16(I, f3, _mm512_loadu_si512(x + 96));
    const __m512 cv = gshift >= 7 ? _mm512_set1_ps(c[r][g]) : _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(&c[r][g]));
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), cv, acc[r]);
  }
}

// One output row's sum from its accumulators: INT-N adds its offsets,
// sum_g o_g * (sum of x over group g), in f32.
template <class Src>
inline float i16_finish(const Src& src, __m512 v, const float* xs, int64_t G, float post) {
  if (src.offsets) {
    const float* of = src.offsets;
    int64_t g = 0;
    for (; g + 16 <= G; g += 16) v = _mm512_fmadd_ps(_mm512_loadu_ps(of + g), _mm512_loadu_ps(xs + g), v);
    if (g < G) {
      const __mmask16 mk = static_cast<__mmask16>((1u << (G - g)) - 1);
      v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, of + g), _mm512_maskz_loadu_ps(mk, xs + g), v);
    }
  }
  return _mm512_reduce_add_ps(v) * post;
}

template <int MB, int R, int U, class Src>
void i16_rows(const Src* src, int64_t K, int bshift, const QuantX& qx, int64_t r0, float post, float* sums) {
  static_assert(R == 1 || (R == 2 && MB == 1), "two output rows only for one row of x");
  const int64_t G = K >> bshift;
  const int16_t* xq[MB];
  const float* d[MB];
  for (int r = 0; r < MB; r++) {
    xq[r] = qx.q + (r0 + r) * K;
    d[r] = qx.d + (r0 + r) * G;
  }
  // accumulator sets: R == 1 alternates spans between them, R == 2 has one per output row
  __m512 acc0[MB], acc1[MB];
  for (int r = 0; r < MB; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
  float c[U == 4 ? 1 : R][MB][kI16MaxBlocks + 16];
  if constexpr (U != 4) for (int o = 0; o < R; o++) combined_scales<MB>(src[o].scales, d, G, c[o]);
  if constexpr (U == 4) {  // INT4, INT8, NF4/FP4 in spans of 64 (i4_span64, q4_span64)
    const int16_t* xp[MB];
    for (int r = 0; r < MB; r++) xp[r] = qx.q64 + (r0 + r) * K;
    const __m512i gidx = lane_groups(2, bshift);
    const float* dl[MB];
    for (int r = 0; r < MB; r++) dl[r] = qx.d64 + (r0 + r) * K / 4;
    auto span64 = [&](const Src& sr, int64_t k, __m512 (&a)[MB]) __attribute__((always_inline)) {
      if constexpr (std::is_same_v<Src, Q4Src16>) q4_span64<MB>(sr.packed, *sr.table, k, bshift, xp, sr.scales, dl, gidx, a);
      else i4_span64<Src::bits, MB>(sr.codes, k, bshift, xp, sr.scales, dl, gidx, a);
    };
    if constexpr (R == 1) {
      int64_t k = 0;
      for (; k + 128 <= K; k += 128) {
        span64(src[0], k, acc0);
        span64(src[0], k + 64, acc1);
      }
      if (k < K) span64(src[0], k, acc0);
      for (int r = 0; r < MB; r++) sums[r] = i16_finish(src[0], _mm512_add_ps(acc0[r], acc1[r]), qx.sum + (r0 + r) * G, G, post);
    } else {
      for (int64_t k = 0; k < K; k += 64) {
        span64(src[0], k, acc0);
        span64(src[1], k, acc1);
      }
      sums[0] = i16_finish(src[0], acc0[0], qx.sum + r0 * G, G, post);
      sums[kDecodeMaxRows] = i16_finish(src[1], acc1[0], qx.sum + r0 * G, G, post);
    }
    return;
  }
  if constexpr (U == 8) {  // INT2 spans of 128 (i2_span128), the rest in spans of 32
    const int16_t* xp[MB];
    for (int r = 0; r < MB; r++) xp[r] = qx.q128 + (r0 + r) * K;
    const __m512i gidx = lane_groups(3, bshift);
    const int64_t K128 = K & ~int64_t(127);
    if constexpr (R == 1) {
      int64_t k = 0;
      for (; k + 256 <= K128; k += 256) {
        i2_span128<MB>(src[0].codes, k, bshift, xp, c[0], gidx, acc0);
        i2_span128<MB>(src[0].codes, k + 128, bshift, xp, c[0], gidx, acc1);
      }
      if (k < K128) i2_span128<MB>(src[0].codes, k, bshift, xp, c[0], gidx, acc0);
      for (k = K128; k < K; k += 32) i16_span<MB, 1>(src[0], k, bshift, xq, c[0], acc1);
      for (int r = 0; r < MB; r++) sums[r] = i16_finish(src[0], _mm512_add_ps(acc0[r], acc1[r]), qx.sum + (r0 + r) * G, G, post);
    } else {
      for (int64_t k = 0; k < K128; k += 128) {
        i2_span128<MB>(src[0].codes, k, bshift, xp, c[0], gidx, acc0);
        i2_span128<MB>(src[1].codes, k, bshift, xp, c[1], gidx, acc1);
      }
      for (int64_t k = K128; k < K; k += 32) {
        i16_span<MB, 1>(src[0], k, bshift, xq, c[0], acc0);
        i16_span<MB, 1>(src[1], k, bshift, xq, c[1], acc1);
      }
      sums[0] = i16_finish(src[0], acc0[0], qx.sum + r0 * G, G, post);
      sums[kDecodeMaxRows] = i16_finish(src[1], acc1[0], qx.sum + r0 * G, G, post);
    }
    return;
  }
  constexpr int64_t S = 32 * U;
  if constexpr (R == 1) {
    int64_t k = 0;
    for (; k + 2 * S <= K; k += 2 * S) {
      i16_span<MB, U>(src[0], k, bshift, xq, c[0], acc0);
      i16_span<MB, U>(src[0], k + S, bshift, xq, c[0], acc1);
    }
    if (k < K) i16_span<MB, U>(src[0], k, bshift, xq, c[0], acc0);
    for (int r = 0; r < MB; r++) sums[r] = i16_finish(src[0], _mm512_add_ps(acc0[r], acc1[r]), qx.sum + (r0 + r) * G, G, post);
  } else {
    for (int64_t k = 0; k < K; k += S) {
      i16_span<MB, U>(src[0], k, bshift, xq, c[0], acc0);
      i16_span<MB, U>(src[1], k, bshift, xq, c[1], acc1);
    }
    sums[0] = i16_finish(src[0], acc0[0], qx.sum + r0 * G, G, post);
    sums[kDecodeMaxRows] = i16_finish(src[1], acc1[0], qx.sum + r0 * G, G, post);
  }
}

// The end of eight output rows (i16_rows8, i16_rows8c): INT-N offsets added
// (sum_g o_g * the sum of x over group g), the eight horizontal sums done
// together, out[0..8) = sums * post.
template <bool H, class Src>
__attribute__((always_inline)) inline void finish8(const Src* src, __m512 (&acc)[8], const QuantX& qx, int64_t G, float post, float* out) {
  if (src[0].offsets) {  // INT-N: sum_g o_g * (sum of x over group g)
    const float* xs = qx.sum;
    // 16 offsets of row o from group g (mk: the valid ones): f32, fp16, or -zero16 * the fp16 scales
    auto offs = [&](int o, int64_t g, __mmask16 mk) __attribute__((always_inline)) {
      if constexpr (H) {
        if (src[o].offsets16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, src[o].offsets16 + g));
        return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, src[o].scales16 + g)), _mm512_set1_ps(-src[o].zero16));
      } else {
        return _mm512_maskz_loadu_ps(mk, src[o].offsets + g);
      }
    };
    for (int64_t g = 0; g < G; g += 16) {
      const __mmask16 mk = G - g >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (G - g)) - 1);
      const __m512 sv = _mm512_maskz_loadu_ps(mk, xs + g);
#pragma GCC unroll 8
      for (int o = 0; o < 8; o++) acc[o] = _mm512_fmadd_ps(offs(o, g, mk), sv, acc[o]);
    }
  }
  _mm256_storeu_ps(out, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(post)));
}

// The scales of a span of 128 per lane (lane l: block (8 l) >> shift of
// the span, from block g): one broadcast, or 2 or 4 values read with a
// masked load (nothing past them) and spread by gidx.
__attribute__((always_inline)) inline __m512 span128_scales(const float* sc, int64_t g, int shift, __m512i gidx) {
  if (shift >= 7) return _mm512_set1_ps(sc[g]);
  return _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (128 >> shift)) - 1), sc + g));
}

// The same from fp16 copies of the scales: n = 1 .. 16 of them from block g
// (a masked load of exactly n), spread by gidx.
__attribute__((always_inline)) inline __m512 spread_scales16(const uint16_t* sc, int64_t g, int64_t n, __m512i gidx) {
  if (n == 1) return _mm512_set1_ps(_cvtsh_ss(sc[g]));
  return _mm512_permutexvar_ps(gidx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), sc + g)));
}
// NF4/FP4 codes in a span of 128: its 64 bytes read as 32 words, each
// holding the codes of elements 4j .. 4j + 3 in its 4 nibbles (high nibble
// = even element), taken out by shifts alone (vpermw reads the low 5 bits
// of each index, and the table repeats past 16), against x in the q128
// layout (element 4j + s at 32 s + j). Lane l of the result sums elements
// 8l .. 8l + 7 of the span, in two int32 sums of four products each (four
// |table| * |x| <= 16383 * 32767 fit an int32, eight do not). Against two
// spans of 64: 0.96 (0.95-0.98) of the time per SmolLM-135M NF4 token,
// paired rounds on the 2-core EPYC VM; the same for INT4 (masks for the
// table) gained nothing (1.01, 0.98-1.02).
__attribute__((always_inline)) inline __m512 q4_span128_sums(const Q4Src16& src, int64_t k, const int16_t* x) {
  const __m512i w = _mm512_loadu_si512(src.packed + (k >> 1)), t = *src.table;
  const __m512i e1 = _mm512_permutexvar_epi16(w, t), e0 = _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 4), t);
  const __m512i e3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 8), t), e2 = _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 12), t);
  const __m512i Ia = dp16(dp16(_mm512_setzero_si512(), e0, _mm512_loadu_si512(x)), e1, _mm512_loadu_si512(x + 32));
  const __m512i Ib = dp16(dp16(_mm512_setzero_si512(), e2, _mm512_loadu_si512(x + 64)), e3, _mm512_loadu_si512(x + 96));
  return _mm512_add_ps(_mm512_cvtepi32_ps(Ia), _mm512_cvtepi32_ps(Ib));
}

// One row of x (m = 1) in spans of 64 against 8 output rows per call: each
// row's sum stays in its own vector, and the eight are reduced together and
// stored with one vector store. Rows of a few hundred weights (K = 576: 9
// spans) otherwise spend as much on their prologue and horizontal sum as on
// their spans. H: the scales (and offsets) come from their fp16 copies.
// out[o] = sum_k w_o[k] x[k] * post.
template <class Src, bool H>
void i16_rows8(const Src* src, int64_t K, int bshift, const QuantX& qx, float post, float* out) {
  const int64_t G = K >> bshift;
  const int16_t* xp = qx.q64;
  const float* dl = qx.d64;
  const __m512i gidx = lane_groups(2, bshift), gidx128 = lane_groups(3, bshift);
  __m512 acc[8];
  for (int o = 0; o < 8; o++) acc[o] = _mm512_setzero_ps();
  // one row after the other, two accumulators per row: rows stream in
  // memory order (the eight rows read side by side, span by span, took
  // 14.8-15.9 ms per SmolLM-135M INT8 token against 9.2-9.4 row by row,
  // medians of 15 on the 2-core EPYC VM)
#pragma GCC unroll 8
  for (int o = 0; o < 8; o++) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    auto span = [&](int64_t k, __m512& a) __attribute__((always_inline)) {
      __m512i ev, od;
      if constexpr (std::is_same_v<Src, Q4Src16>) q4_codes64(src[o].packed, *src[o].table, k, ev, od);
      else i4_codes64<Src::bits>(src[o].codes, k, ev, od);
      const __m512i I = dp16(dp16(_mm512_setzero_si512(), ev, _mm512_loadu_si512(xp + k)), od, _mm512_loadu_si512(xp + k + 32));
      __m512 ws;
      if constexpr (H) ws = span64_scales16(src[o].scales16, k >> bshift, bshift, gidx);
      else ws = span64_scales(src[o].scales, k >> bshift, bshift, gidx);
      const __m512 cv = _mm512_mul_ps(ws, _mm512_loadu_ps(dl + (k >> 2)));
      a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), cv, a);
    };
    int64_t k = 0;
    if constexpr (std::is_same_v<Src, Q4Src16>) {
      if (qx.q128) {  // spans of 128, the last 64 (K % 128) as above
        auto span128 = [&](int64_t k1, __m512& a) __attribute__((always_inline)) {
          const __m512 cv = _mm512_mul_ps(span128_scales(src[o].scales, k1 >> bshift, bshift, gidx128), _mm512_loadu_ps(qx.d128 + (k1 >> 3)));
          a = _mm512_fmadd_ps(q4_span128_sums(src[o], k1, qx.q128 + k1), cv, a);
        };
        for (; k + 256 <= K; k += 256) { span128(k, a0); span128(k + 128, a1); }
        if (k + 128 <= K) { span128(k, a0); k += 128; }
      }
    }
    for (; k + 128 <= K; k += 128) { span(k, a0); span(k + 64, a1); }
    if (k < K) span(k, a0);
    acc[o] = _mm512_add_ps(a0, a1);
  }
  finish8<H>(src, acc, qx, G, post, out);
}

// The same eight-row driver for INT-N in spans of 32 or 64 (INT3, and the
// others when x is not permuted): per row its combined scales, then the
// row's spans as i16_rows does, and one finish for the eight.
template <int U, class Src>
void i16_rows8c(const Src* src, int64_t K, int bshift, const QuantX& qx, float post, float* out) {
  const int64_t G = K >> bshift;
  const float* d[1] = {qx.d};
  const int16_t* xq[1] = {qx.q};
  __m512 acc[8];
  float c[1][1][kI16MaxBlocks + 16];
  for (int o = 0; o < 8; o++) {
    combined_scales<1>(src[o].scales, d, G, c[0]);
    __m512 a0[1] = {_mm512_setzero_ps()}, a1[1] = {_mm512_setzero_ps()};
    {
      constexpr int64_t S = 32 * U;
      int64_t k = 0;
      for (; k + 2 * S <= K; k += 2 * S) {
        i16_span<1, U>(src[o], k, bshift, xq, c[0], a0);
        i16_span<1, U>(src[o], k + S, bshift, xq, c[0], a1);
      }
      if (k < K) i16_span<1, U>(src[o], k, bshift, xq, c[0], a0);
    }
    acc[o] = _mm512_add_ps(a0[0], a1[0]);
  }
  finish8<false>(src, acc, qx, G, post, out);
}

// rows of x in tiles of up to 8 against R output rows
template <int R, int U, class Src>
inline void i16_tiles(int64_t m, const Src* src, int64_t K, int bshift, const QuantX& qx, float post, float* sums) {
  if constexpr (R > 1) {
    i16_rows<1, R, U>(src, K, bshift, qx, 0, post, sums);
  } else {
    for (int64_t r0 = 0; r0 < m; r0 += 8) {
      const int64_t mb = std::min<int64_t>(8, m - r0);
      float* s = sums + r0;
      switch (mb) {
        case 1: i16_rows<1, 1, U>(src, K, bshift, qx, r0, post, s); break;
        case 2: i16_rows<2, 1, U>(src, K, bshift, qx, r0, post, s); break;
        case 3: i16_rows<3, 1, U>(src, K, bshift, qx, r0, post, s); break;
        case 4: i16_rows<4, 1, U>(src, K, bshift, qx, r0, post, s); break;
        case 5: i16_rows<5, 1, U>(src, K, bshift, qx, r0, post, s); break;
        case 6: i16_rows<6, 1, U>(src, K, bshift, qx, r0, post, s); break;
        case 7: i16_rows<7, 1, U>(src, K, bshift, qx, r0, post, s); break;
        default: i16_rows<8, 1, U>(src, K, bshift, qx, r0, post, s); break;
      }
    }
  }
}

constexpr int64_t kI16Prefetch = 4;  // rows ahead

// Per-thread room for what eight rows' sources compute (double-quantized
// absmax), looked up once per share of rows rather than once per row.
inline float* i16_scratch() {
  thread_local float buf[8 * kI16MaxBlocks];
  return buf;
}

// y = alpha * x W^T + beta * y over output rows; make(o, slot, scratch)
// gives row o's source (slot < 8; the rows of a block are made in order, o
// at slot 0, o + j at slot j, so what slot 0 leaves in the thread's scratch,
// i16_scratch, serves the slots after it), pre(o) prefetches what row o reads. With one x row
// (m = 1), INT4, INT8 and NF4/FP4 go eight output rows per i16_rows8 call,
// INT3 eight per i16_rows8c, INT2 (spans of 128, with `pairs`) two at a
// time (two rows keep more in flight when the span work is short); the
// rows left over go as INT2's pairs or one at a time. Pairs had made INT8
// slower (14.8 against 9.1-9.6 ms per SmolLM-135M token in bench:decode on
// the 2-core EPYC VM) and NF4/FP4 no faster.
template <class Make, class Pre>
void i16_run(int64_t m, int64_t Nout, int64_t K, int bshift, const QuantX& qx, float post, float alpha, float beta, float* y,
             int64_t ldy, bool pairs, Make make, Pre pre) {
  using Src = decltype(make(int64_t(0), 0, static_cast<float*>(nullptr)));
  // INT4 and INT8 with x permuted for spans of 64 (U = 4), others by their block size
  constexpr bool span64 = std::is_same_v<Src, IntNSrc16<4>> || std::is_same_v<Src, IntNSrc16<8>> || std::is_same_v<Src, Q4Src16>;
  constexpr bool span128 = std::is_same_v<Src, IntNSrc16<2>>;
  const int umode = span64 && qx.q64 ? 4 : span128 && qx.q128 ? 8 : bshift >= 6 ? 2 : 1;
  auto rows = [&](int64_t o0, int64_t o1) {
    float sums[2 * kDecodeMaxRows];
    float* scratch = i16_scratch();
    auto store = [&](int64_t o, const float* s) {
      for (int64_t r = 0; r < m; r++) {
        float& c = y[r * ldy + o];
        c = beta == 0.0f ? alpha * s[r] : alpha * s[r] + beta * c;
      }
    };
    int64_t o = o0;
    // one x row: blocks of eight output rows through kern(s8) into sums[0..8)
    auto eight = [&](auto kern) __attribute__((always_inline)) {
      for (; o + 8 <= o1; o += 8) {
        if (o + 8 + kI16Prefetch <= Nout) for (int j = 0; j < 8; j++) pre(o + kI16Prefetch + j);
        Src s8[8];
        for (int j = 0; j < 8; j++) s8[j] = make(o + j, j, scratch);
        kern(s8);
        for (int j = 0; j < 8; j++) store(o + j, sums + j);
      }
    };
    if constexpr (span64) {
      if (m == 1 && umode == 4) {
        eight([&](const Src* s8) {
          if constexpr (std::is_same_v<Src, Q4Src16>) i16_rows8<Src, false>(s8, K, bshift, qx, post, sums);
          else if (s8[0].scales16) i16_rows8<Src, true>(s8, K, bshift, qx, post, sums);
          else i16_rows8<Src, false>(s8, K, bshift, qx, post, sums);
        });
      }
    } else {
      // INT3 (and INT2 / INT4 / INT8 in spans of 32 or 64 with x not
      // permuted): eight rows per call as well. INT2 in spans of 128 keeps
      // its pairs: eight rows per call made it slower (5.84-6.20 against
      // 5.41-5.44 ms per SmolLM-135M token in bench:decode; INT3 went from
      // 8.55-8.91 to 6.45-6.86 ms; the 2-core EPYC VM, alternating builds)
      if (m == 1 && umode != 8) {
        eight([&](const Src* s8) {
          if (umode == 2) i16_rows8c<2>(s8, K, bshift, qx, post, sums);
          else i16_rows8c<1>(s8, K, bshift, qx, post, sums);
        });
      }
    }
    if (m == 1 && pairs) {
      for (; o + 2 <= o1; o += 2) {
        if (o + 2 + kI16Prefetch <= Nout) { pre(o + kI16Prefetch); pre(o + 1 + kI16Prefetch); }
        const auto s0 = make(o, 0, scratch), s1 = make(o + 1, 1, scratch);
        const decltype(s0) src[2] = {s0, s1};
        if constexpr (span64) {
          if (umode == 4) { i16_tiles<2, 4>(m, src, K, bshift, qx, post, sums); store(o, sums); store(o + 1, sums + kDecodeMaxRows); continue; }
        }
        if constexpr (span128) {
          if (umode == 8) { i16_tiles<2, 8>(m, src, K, bshift, qx, post, sums); store(o, sums); store(o + 1, sums + kDecodeMaxRows); continue; }
        }
        if (umode == 2) i16_tiles<2, 2>(m, src, K, bshift, qx, post, sums);
        else i16_tiles<2, 1>(m, src, K, bshift, qx, post, sums);
        store(o, sums);
        store(o + 1, sums + kDecodeMaxRows);
      }
    }
    // one row at a time (m > 1, and the rows left over): slots cycle 0..7 so
    // that what slot 0 prepares for eight rows serves the seven after it
    for (const int64_t first = o; o < o1; o++) {
      if (o + kI16Prefetch < Nout) pre(o + kI16Prefetch);
      const auto s0 = make(o, static_cast<int>((o - first) & 7), scratch);
      if constexpr (span64) {
        if (umode == 4) { i16_tiles<1, 4>(m, &s0, K, bshift, qx, post, sums); store(o, sums); continue; }
      }
      if constexpr (span128) {
        if (umode == 8) { i16_tiles<1, 8>(m, &s0, K, bshift, qx, post, sums); store(o, sums); continue; }
      }
      if (umode == 2) i16_tiles<1, 2>(m, &s0, K, bshift, qx, post, sums);
      else i16_tiles<1, 1>(m, &s0, K, bshift, qx, post, sums);
      store(o, sums);
    }
  };
  if (omp_in_parallel() || Nout * K < kShareMin) rows(0, Nout);
  else share_rows(Nout, rows);
}

inline void prefetch_bytes(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < n; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

template <int N>
void i16_intn(int64_t m, int64_t Nout, int64_t K, float alpha, const QuantX& qx, const IntNView& w, float beta, float* y,
              int64_t ldy) {
  const Unpack16 u = intn_unpack<N>();
  const int64_t G = K >> w.group_shift, rb = (K * N) >> 3;
  // the fp16 copies are read only by i16_rows8 (one x row, INT4/INT8 in spans of 64)
  const bool reads16 = w.scales16 && m == 1 && (N == 4 || N == 8) && qx.q64;
  i16_run(m, Nout, K, w.group_shift, qx, 1.0f, alpha, beta, y, ldy, N <= 4,
          [&](int64_t o, int, float*) {
            return IntNSrc16<N>{w.codes + o * rb, &u, w.scales + o * G, w.offsets + o * G, w.scales16 ? w.scales16 + o * G : nullptr,
                                w.offsets16 ? w.offsets16 + o * G : nullptr, w.zero16};
          },
          [&](int64_t o) {
            prefetch_bytes(w.codes + o * rb, rb);
            if (reads16) {
              prefetch_bytes(w.scales16 + o * G, G * 2);
              if (w.offsets16) prefetch_bytes(w.offsets16 + o * G, G * 2);
            } else {
              prefetch_bytes(w.scales + o * G, G * 4);
              prefetch_bytes(w.offsets + o * G, G * 4);
            }
          });
}

#if defined(__AVX512VBMI__)
// A 256-entry f32 map as four byte planes (plane j: byte j of every entry),
// for expand_dq_absmax. Keyed by the map's address: the maps are static
// tables (dynamic_map), never freed or rewritten.
struct DqPlanes {
  const float* map = nullptr;
  alignas(64) uint8_t b[4][256];
};
inline const DqPlanes& dq_planes(const float* map) {
  thread_local DqPlanes p;
  if (p.map != map) {
    for (int c = 0; c < 256; c++) {
      uint32_t u;
      std::memcpy(&u, map + c, 4);
      for (int j = 0; j < 4; j++) p.b[j][c] = static_cast<uint8_t>(u >> (8 * j));
    }
    p.map = map;
  }
  return p;
}
#endif

// absmax of n consecutive double-quantized 4-bit blocks from block b0, as
// map[code] * scale[b / dq_block] + offset (dq_shift: log2 of dq_block, or
// -1 when it is not a power of two). One call per eight rows (i16_run's
// slot 0) rather than per row: 0.89 (0.86-0.92) of the per-row expansion's
// time per SmolLM-135M NF4+dq token, paired rounds on the 2-core EPYC VM; 16
// at a time with the map gathered was no faster (0.92).
__attribute__((noinline)) void expand_dq_absmax(const Quant4View& q, int64_t b0, int64_t n, int dq_shift, float* out) {
  const uint8_t* dc = q.dq_codes + b0;
  const float* map = q.dq_map;
  const float* sc = q.dq_scales;
  const float off = q.dq_offset;
#if defined(__AVX512VBMI__)
  // 64 blocks at a time, the map looked up byte by byte: each of its four
  // byte planes (256 bytes, four registers) is two vpermi2b and a select on
  // the code's top bit; the planes interleave back into floats with two
  // rounds of unpacks, the codes permuted beforehand so that the floats come
  // out in order. About 40 instructions per 64 blocks against six per block
  // for the loop below. dq_block is at least 16 blocks here, so 16
  // consecutive blocks span at most two of its scales.
  if (dq_shift >= 4) {
    const DqPlanes& pl = dq_planes(map);
    __m512i t[4][4];
    for (int j = 0; j < 4; j++)
      for (int i = 0; i < 4; i++) t[j][i] = _mm512_load_si512(pl.b[j] + 64 * i);
    // byte 16 L + 4 k + j takes code 16 k + 4 L + j (the unpacks' order)
    alignas(64) static const uint8_t order[64] = {0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,   4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
                                                  8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59, 12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
    const __m512i perm = _mm512_load_si512(order);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 voff = _mm512_set1_ps(off);
    const int64_t last = (b0 + n - 1) >> dq_shift;
    for (int64_t b = 0; b < n; b += 64) {
      const __mmask64 m = n - b >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - b)) - 1;
      const __m512i c = _mm512_permutexvar_epi8(perm, _mm512_maskz_loadu_epi8(m, dc + b));
      const __mmask64 top = _mm512_movepi8_mask(c);
      __m512i p[4];
      for (int j = 0; j < 4; j++)
        p[j] = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(t[j][0], c, t[j][1]), _mm512_permutex2var_epi8(t[j][2], c, t[j][3]));
      const __m512i w01l = _mm512_unpacklo_epi8(p[0], p[1]), w01h = _mm512_unpackhi_epi8(p[0], p[1]);
      const __m512i w23l = _mm512_unpacklo_epi8(p[2], p[3]), w23h = _mm512_unpackhi_epi8(p[2], p[3]);
      const __m512i d[4] = {_mm512_unpacklo_epi16(w01l, w23l), _mm512_unpackhi_epi16(w01l, w23l), _mm512_unpacklo_epi16(w01h, w23h), _mm512_unpackhi_epi16(w01h, w23h)};
      for (int k = 0; k < 4 && b + 16 * k < n; k++) {
        const int64_t at = b0 + b + 16 * k, s0 = at >> dq_shift;
        const __m512i e = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(at - (s0 << dq_shift))), lanes);
        const __mmask16 next = _mm512_cmpge_epi32_mask(e, _mm512_set1_epi32(1 << dq_shift));
        const __m512 sv = _mm512_mask_blend_ps(next, _mm512_set1_ps(sc[s0]), _mm512_set1_ps(sc[std::min(s0 + 1, last)]));
        const __mmask16 mk = static_cast<__mmask16>(m >> (16 * k));
        _mm512_mask_storeu_ps(out + b + 16 * k, mk, _mm512_fmadd_ps(_mm512_castsi512_ps(d[k]), sv, voff));  // as math::dq8_value
      }
    }
    return;
  }
#endif
  if (dq_shift >= 0) {
    for (int64_t b = 0; b < n; b++) out[b] = math::dq8_value(map[dc[b]], sc[(b0 + b) >> dq_shift], off);
  } else {
    for (int64_t b = 0; b < n; b++) out[b] = math::dq8_value(map[dc[b]], sc[(b0 + b) / q.dq_block], off);
  }
}

#if defined(TB_DECODE_I16) && defined(__AVX512VNNI__)
#define TB_DECODE_I8 1
// ---- 8-bit integer activations (DecodeAct::I8): INT-N and 4-bit weights, 1-16 rows of x ----
//
// x is quantized to int8 per group (4-bit: per block) and laid out per span so that one vector
// of 64 code bytes, taken out of the packed codes by a few shifts and masks,
// meets 64 bytes of x in the same order; vpdpbusd (u8 codes times s8 x) then
// leaves in lane l the dot product of E consecutive elements of the span,
// all in one group, whose scale and x step are applied per lane. The layouts
// (byte b of the span's x as element e of the span):
// - Natural64 (INT8): spans of 64, b = e; lane l elements 4l .. 4l + 3.
// - EvenOdd128 (INT4, NF4/FP4): spans of 128, the even elements at e / 2,
//   the odd ones at 64 + e / 2 (the two nibbles of the code bytes); lane l
//   elements 8l .. 8l + 7.
// - Quad128 (INT3): spans of 128 in fours, the even fours (elements 8l ..
//   8l + 3) at 4l, the odd fours at 64 + 4l; lane l elements 8l .. 8l + 7.
// - Field256 (INT2): spans of 256, element 4j + s at 64 s + j (field s of
//   code byte j); lane l elements 16l .. 16l + 15.
// A last, shorter span (K % span, a multiple of 64) fills the lanes it has.
enum class X8Layout { Natural64, EvenOdd128, Quad128, Field256 };

constexpr int x8_span_shift(X8Layout l) {
  return l == X8Layout::Natural64 ? 6 : l == X8Layout::Field256 ? 8 : 7;
}

struct QuantX8 {
  const int8_t* q;     // [ceil(K / span) * span] bytes in the layout above
  const float* dl;     // x's step per lane, 16 per span; 0 past K
  const float* sum;    // [K >> bshift] f32 sums of x per group
};

// false when some x is not finite
bool quantize_x8(int64_t K, const float* x, int bshift, X8Layout layout, std::vector<int8_t>& qbuf, std::vector<float>& dbuf,
                 std::vector<float>& sbuf, QuantX8& out) {
  const int sshift = x8_span_shift(layout);
  const int64_t B = int64_t(1) << bshift, G = K >> bshift, span = int64_t(1) << sshift, S = (K + span - 1) >> sshift;
  thread_local std::vector<float> dg;
  dg.resize(static_cast<size_t>(G));
  sbuf.resize(static_cast<size_t>(G));
  qbuf.assign(static_cast<size_t>(S * span), 0);
  const __m512 zero = _mm512_setzero_ps();
  // per 16 elements: EvenOdd128 bytes 0, 2, .., 14 then 1, 3, .., 15; Quad128
  // the fours 0, 2 then 1, 3; Field256 the 4 x 4 transpose (field s: bytes s, 4 + s, ..)
  const __m128i deint = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m128i quads = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  const __m128i fields = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512 bad = zero;
  int8_t* q = qbuf.data();
  for (int64_t g = 0; g < G; g++) {
    const float* xg = x + g * B;
    float amax, sum;
    block_stats(xg, B, amax, sum, bad);
    (void)sum;
    const float step = amax > 0.0f ? amax / 127.0f : 0.0f;
    dg[static_cast<size_t>(g)] = step;
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m512i qsum = _mm512_setzero_si512();
    for (int64_t k = 0; k < B; k += 16) {
      const int64_t e = g * B + k;
      const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), inv));  // within +-127
      qsum = _mm512_add_epi32(qsum, qi);
      const __m128i b = _mm512_cvtsepi32_epi8(qi);
      int8_t* at = q + ((e >> sshift) << sshift);  // the span's first byte
      const int64_t r = e & (span - 1);
      switch (layout) {
        case X8Layout::Natural64:
          _mm_storeu_si128(reinterpret_cast<__m128i*>(q + e), b);
          break;
        case X8Layout::EvenOdd128:
        case X8Layout::Quad128: {
          const __m128i d = _mm_shuffle_epi8(b, layout == X8Layout::EvenOdd128 ? deint : quads);
          _mm_storel_epi64(reinterpret_cast<__m128i*>(at + (r >> 1)), d);
          _mm_storel_epi64(reinterpret_cast<__m128i*>(at + 64 + (r >> 1)), _mm_unpackhi_epi64(d, d));
          break;
        }
        case X8Layout::Field256: {
          const __m128i d = _mm_shuffle_epi8(b, fields);
          const int64_t j = r >> 2;
          const uint32_t f0 = static_cast<uint32_t>(_mm_cvtsi128_si32(d)), f1 = static_cast<uint32_t>(_mm_extract_epi32(d, 1)), f2 = static_cast<uint32_t>(_mm_extract_epi32(d, 2)),
                         f3 = static_cast<uint32_t>(_mm_extract_epi32(d, 3));
          std::memcpy(at + j, &f0, 4);
          std::memcpy(at + 64 + j, &f1, 4);
          std::memcpy(at + 128 + j, &f2, 4);
          std::memcpy(at + 192 + j, &f3, 4);
          break;
        }
      }
    }
    // the group's sum of the rounded x (step * the sum of its bytes), for the
    // INT-N offsets: offset * sum(x^) + scale * sum(code * x^) is then exactly
    // w . x^, whose error sum(w (x^ - x)) is what 8-bit x costs everywhere;
    // with sum(x) instead the error is sum((w - offset) (x^ - x)), and
    // w - offset (0 .. the group's range) is larger than w: in RMS over
    // Gaussian groups of 32, 2.6 times on Q8_0's grid (offset -128 scales)
    // and 2.3 times for INT4 min-max
    sbuf[static_cast<size_t>(g)] = step * static_cast<float>(_mm512_reduce_add_epi32(qsum));
  }
  if (_mm512_reduce_add_ps(bad) != 0.0f || _mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q)) return false;
  // x's step per lane: lane l of span sp covers elements span * sp + per * l ..
  const int64_t per = span >> 4;
  dbuf.assign(static_cast<size_t>(S * 16), 0.0f);
  for (int64_t sp = 0; sp < S; sp++)
    for (int l = 0; l < 16; l++) {
      const int64_t k = span * sp + per * l;
      if (k < K) dbuf[static_cast<size_t>(sp * 16 + l)] = dg[static_cast<size_t>(k >> bshift)];
    }
  out = QuantX8{qbuf.data(), dbuf.data(), sbuf.data()};
  return true;
}

// INT3's byte permute and bit offsets (i8 INT3 format below): dword l of a
// span takes bytes 3l .. 3l + 2, codes 0-3 at bits 0, 3, 6, 9 and 4-7 at
// bits 12 .. 21 (plus 32 in the odd dwords, the high halves of their qwords).
struct Int3Tables {
  alignas(64) uint8_t perm[64], ctl_a[64], ctl_b[64];
  Int3Tables() {
    for (int l = 0; l < 16; l++)
      for (int i = 0; i < 4; i++) {
        perm[4 * l + i] = static_cast<uint8_t>(3 * l + std::min(i, 2));
        ctl_a[4 * l + i] = static_cast<uint8_t>((l & 1) * 32 + 3 * i);
        ctl_b[4 * l + i] = static_cast<uint8_t>((l & 1) * 32 + 12 + 3 * i);
      }
  }
};
inline const Int3Tables& int3_tables() {
  static const Int3Tables t;
  return t;
}

// ---- the formats of the 'i8' path ----
// A format holds what every row shares (masks, tables, lane indices) and
// gives, per span of SPAN elements of one output row (its I8Row), NV
// vectors of 64 code bytes (codes(row, k, left, v, neg): left = K - k, a
// last, shorter span when below SPAN) to be dotted with x in the matching
// layout (vector j against bytes 64 j of the span's x), and the span's
// scales per lane (scales(row, k, left)). SIGN: the code bytes are
// magnitudes, x is negated where the weight is negative (masks `neg`).
struct I8Row {
  const uint8_t* c;      // the row's first code byte
  const float* sc;       // its scales (4-bit: absmax)
  const uint16_t* sc16;  // fp16 copies of the scales (the formats' H), else null
};

// The scales per lane of a span of 128 from k (lane l: block (8 l) >> bshift
// of the span), for the formats in spans of 128 (INT3, INT4, 4-bit); a last
// span of 64 (left < 128) reads only its own blocks (tail_mk: their count
// when bshift < 6). H: from the fp16 copies.
template <bool H>
__attribute__((always_inline)) inline __m512 span128_row_scales(const I8Row& row, int64_t k, int64_t left, int bshift, __m512i gidx, __mmask16 tail_mk) {
  if constexpr (H) return spread_scales16(row.sc16, k >> bshift, std::max<int64_t>(1, std::min<int64_t>(left, 128) >> bshift), gidx);
  const float* sc = row.sc;
  if (left >= 128) return span128_scales(sc, k >> bshift, bshift, gidx);
  return bshift >= 6 ? _mm512_set1_ps(sc[k >> bshift]) : _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(tail_mk, sc + (k >> bshift)));
}
// INT4 (EvenOdd128): a span's 64 code bytes give the even elements (low
// nibbles) and the odd ones (high nibbles) after one shift and two masks;
// lane l holds elements 8l .. 8l + 7. A last span of 64 (32 bytes) fills
// lanes 0-7. H (here and in INT2, INT3, INT8): the scales from their fp16
// copies.
template <bool H>
struct I8Int4 {
  static constexpr int NV = 2, SPAN = 128;
  static constexpr bool SIGN = false;
  int bshift;
  __m512i gidx, m15;
  __mmask16 tail_mk;
  explicit I8Int4(int b) : bshift(b), gidx(lane_groups(3, b)), m15(_mm512_set1_epi8(15)),
      tail_mk(b >= 6 ? 0 : static_cast<__mmask16>((1u << (64 >> b)) - 1)) {}
  __attribute__((always_inline)) void codes(const I8Row& row, int64_t k, int64_t left, __m512i (&v)[NV], __mmask64 (&)[NV]) const {
    const uint8_t* c = row.c;
    const __m512i w = left >= 128 ? _mm512_loadu_si512(c + (k >> 1)) : _mm512_maskz_loadu_epi8(static_cast<__mmask64>(0xFFFFFFFFull), c + (k >> 1));
    v[0] = _mm512_and_si512(w, m15);
    v[1] = _mm512_and_si512(_mm512_srli_epi16(w, 4), m15);
  }
  __attribute__((always_inline)) __m512 scales(const I8Row& row, int64_t k, int64_t left) const {
    return span128_row_scales<H>(row, k, left, bshift, gidx, tail_mk);
  }
};

// INT8 (Natural64): 64 code bytes against the same 64 bytes of x, no
// unpacking at all; lane l holds elements 4l .. 4l + 3. H: the scales from
// their fp16 copies.
template <bool H>
struct I8Int8 {
  static constexpr int NV = 1, SPAN = 64;
  static constexpr bool SIGN = false;
  int bshift;
  __m512i gidx;
  explicit I8Int8(int b) : bshift(b), gidx(lane_groups(2, b)) {}
  __attribute__((always_inline)) void codes(const I8Row& row, int64_t k, int64_t, __m512i (&v)[NV], __mmask64 (&)[NV]) const {
    v[0] = _mm512_loadu_si512(row.c + k);
  }
  __attribute__((always_inline)) __m512 scales(const I8Row& row, int64_t k, int64_t) const {
    if constexpr (H) return span64_scales16(row.sc16, k >> bshift, bshift, gidx);
    else return span64_scales(row.sc, k >> bshift, bshift, gidx);
  }
};

// INT3 (Quad128): a span of 128 is 48 code bytes, elements 8l .. 8l + 7 in
// bytes 3l .. 3l + 2; one vpermb moves those three bytes to dword l, two
// vpmultishiftqb take out each dword's codes 0-3 and 4-7 as bytes, and a
// mask keeps their 3 bits; lane l holds elements 8l .. 8l + 7. A last span
// of 64 (24 bytes) fills lanes 0-7.
template <bool H>
struct I8Int3 {
  static constexpr int NV = 2, SPAN = 128;
  static constexpr bool SIGN = false;
  int bshift;
  __m512i gidx, perm, ctl_a, ctl_b, m7;
  __mmask16 tail_mk;
  explicit I8Int3(int b, const Int3Tables& t = int3_tables())
      : bshift(b), gidx(lane_groups(3, b)), perm(_mm512_load_si512(t.perm)), ctl_a(_mm512_load_si512(t.ctl_a)),
        ctl_b(_mm512_load_si512(t.ctl_b)), m7(_mm512_set1_epi8(7)), tail_mk(b >= 6 ? 0 : static_cast<__mmask16>((1u << (64 >> b)) - 1)) {}
  __attribute__((always_inline)) void codes(const I8Row& row, int64_t k, int64_t left, __m512i (&v)[NV], __mmask64 (&)[NV]) const {
    const uint8_t* c = row.c;
    const __mmask64 mk = left >= 128 ? (__mmask64(1) << 48) - 1 : (__mmask64(1) << 24) - 1;
    const __m512i w = _mm512_permutexvar_epi8(perm, _mm512_maskz_loadu_epi8(mk, c + ((3 * k) >> 3)));
    v[0] = _mm512_and_si512(_mm512_multishift_epi64_epi8(ctl_a, w), m7);
    v[1] = _mm512_and_si512(_mm512_multishift_epi64_epi8(ctl_b, w), m7);
  }
  __attribute__((always_inline)) __m512 scales(const I8Row& row, int64_t k, int64_t left) const {
    return span128_row_scales<H>(row, k, left, bshift, gidx, tail_mk);
  }
};

// INT2 (Field256): a span of 256 is 64 code bytes, field s of byte j (bits
// 2s, 2s + 1) element 4j + s; each field is one shift and one mask away from
// 64 code bytes; lane l holds elements 16l .. 16l + 15 (one group: groups
// are 16 or more). A last span of 64, 128 or 192 fills the lanes it has.
template <bool H>
struct I8Int2 {
  static constexpr int NV = 4, SPAN = 256;
  static constexpr bool SIGN = false;
  int bshift;
  __m512i gidx, m3;
  explicit I8Int2(int b) : bshift(b), gidx(lane_groups(4, b)), m3(_mm512_set1_epi8(3)) {}
  __attribute__((always_inline)) void codes(const I8Row& row, int64_t k, int64_t left, __m512i (&v)[NV], __mmask64 (&)[NV]) const {
    const uint8_t* c = row.c;
    const __m512i w = left >= 256 ? _mm512_loadu_si512(c + (k >> 2)) : _mm512_maskz_loadu_epi8((__mmask64(1) << (left >> 2)) - 1, c + (k >> 2));
    v[0] = _mm512_and_si512(w, m3);
    v[1] = _mm512_and_si512(_mm512_srli_epi16(w, 2), m3);
    v[2] = _mm512_and_si512(_mm512_srli_epi16(w, 4), m3);
    v[3] = _mm512_and_si512(_mm512_srli_epi16(w, 6), m3);
  }
  __attribute__((always_inline)) __m512 scales(const I8Row& row, int64_t k, int64_t left) const {
    const int64_t n = std::min<int64_t>(left, 256) >> bshift;
    if constexpr (H) return _mm512_permutexvar_ps(gidx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), row.sc16 + (k >> bshift))));
    return _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), row.sc + (k >> bshift)));
  }
};

// The INT-N format of Bits bits (H: fp16 scales)
template <int Bits, bool H>
using I8IntN = std::conditional_t<Bits == 2, I8Int2<H>, std::conditional_t<Bits == 3, I8Int3<H>, std::conditional_t<Bits == 4, I8Int4<H>, I8Int8<H>>>>;

#if defined(__AVX512BITALG__)
#define TB_DECODE_I8_Q4 1
// 4-bit blockwise (NF4, FP4, any code book; EvenOdd128 with the high nibble
// the even element): the code book's magnitudes as u8 (|t| / max|t| * 255,
// rounded) and its signs as a bit mask `neg`, both repeated every 16 codes.
// A span's 64 code bytes give the even elements' codes (high nibbles,
// shifted down) and the odd ones' (low nibbles) with two stray bits above
// each (bits 4-5: vpermb and vpshufbitqmb read 6), which the repeated
// tables ignore, so no mask is needed; vpermb looks up their magnitudes,
// vpshufbitqmb their signs (bit `code` of neg), and x's bytes are negated
// where the weight is negative, so that vpdpbusd (u8 x s8) takes |t|
// against x * sign(t).
struct I8Q4 {
  static constexpr int NV = 2, SPAN = 128;
  static constexpr bool SIGN = true;
  int bshift;
  __m512i gidx, mags, negq;
  __mmask16 tail_mk;
  I8Q4(int b, __m512i mags_, __m512i negq_)
      : bshift(b), gidx(lane_groups(3, b)), mags(mags_), negq(negq_), tail_mk(b >= 6 ? 0 : static_cast<__mmask16>((1u << (64 >> b)) - 1)) {}
  __attribute__((always_inline)) void codes(const I8Row& row, int64_t k, int64_t left, __m512i (&v)[NV], __mmask64 (&neg)[NV]) const {
    const uint8_t* c = row.c;
    const __m512i w = left >= 128 ? _mm512_loadu_si512(c + (k >> 1)) : _mm512_maskz_loadu_epi8(static_cast<__mmask64>(0xFFFFFFFFull), c + (k >> 1));
    const __m512i ce = _mm512_srli_epi16(w, 4);
    v[0] = _mm512_permutexvar_epi8(ce, mags);
    v[1] = _mm512_permutexvar_epi8(w, mags);
    neg[0] = _mm512_bitshuffle_epi64_mask(negq, ce);
    neg[1] = _mm512_bitshuffle_epi64_mask(negq, w);
  }
  __attribute__((always_inline)) __m512 scales(const I8Row& row, int64_t k, int64_t left) const {
    return span128_row_scales<false>(row, k, left, bshift, gidx, tail_mk);
  }
};
#endif

// One span's integer dot products: the format's NV code vectors against x's
// bytes at xq (vector j against xq + 64 j), x negated where `neg` says (SIGN)
template <class F>
__attribute__((always_inline)) inline __m512i i8_span_dot(const __m512i (&v)[F::NV], const __mmask64 (&neg)[F::NV], const int8_t* xq) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i I = zero;
#pragma GCC unroll 4
  for (int j = 0; j < F::NV; j++) {
    __m512i xv = _mm512_loadu_si512(xq + 64 * j);
    if constexpr (F::SIGN) xv = _mm512_mask_sub_epi8(xv, neg[j], zero, xv);
    I = _mm512_dpbusd_epi32(I, v[j], xv);
  }
  return I;
}

// Eight output rows (rows[0..8), format f) against one row of x: acc[o] lane l
// the sum over spans of (lane l's integer dot product) * scale * x's step.
// Two accumulators per row (even and odd spans); the eight rows' sums are
// reduced together by the caller.
template <class F>
__attribute__((always_inline)) inline void i8_rows8(const F& f, const I8Row* rows, int64_t K, const QuantX8& qx, __m512 (&acc)[8]) {
#pragma GCC unroll 8
  for (int o = 0; o < 8; o++) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    auto span = [&](int64_t k, __m512& a) __attribute__((always_inline)) {
      __m512i v[F::NV];
      __mmask64 neg[F::NV];
      const int64_t left = K - k;
      f.codes(rows[o], k, left, v, neg);
      const __m512i I = i8_span_dot<F>(v, neg, qx.q + k);  // span k / SPAN starts at byte k
      a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(f.scales(rows[o], k, left), _mm512_loadu_ps(qx.dl + (k / F::SPAN) * 16)), a);
    };
    int64_t k = 0;
    for (; k + 2 * F::SPAN <= K; k += 2 * F::SPAN) {
      span(k, a0);
      span(k + F::SPAN, a1);
    }
    if (k < K) span(k, a0);
    if (k + F::SPAN < K) span(k + F::SPAN, a1);
    acc[o] = _mm512_add_ps(a0, a1);
  }
}

// y = alpha * x W^T + beta * y, one row of x, INT-N: eight output rows per
// i8_rows8, their INT-N offsets added and sums reduced by finish8. Every
// width reads the fp16 copies of its constants where the operand has them
// (intnConstants16, as the i16 path does): INT4 g32 then reads 2 + 0.5
// bytes per 4 weights' 2 + 1 (the QA-LoRA deployables' Q4_1 form).
template <int Bits, bool H>
void i8_intn(int64_t N, int64_t K, float alpha, const IntNView& w, const QuantX8& qx, float beta, float* y) {
  const int64_t G = K >> w.group_shift, rb = (K * Bits) >> 3;
  const int bs = w.group_shift;
  const Unpack16 u = intn_unpack<Bits>();
  auto rows = [&](int64_t o0, int64_t o1) {
    const I8IntN<Bits, H> f(bs);  // built here, once per thread: its vectors stay in registers
    float sums[8];
    for (int64_t o = o0; o < o1; o += 8) {
      const int64_t n = std::min<int64_t>(8, o1 - o);
      IntNSrc16<Bits> s8[8];
      for (int64_t j = 0; j < 8; j++) {
        const int64_t r = o + std::min(j, n - 1);  // past the last row: the last row again, not stored
        s8[j] = IntNSrc16<Bits>{w.codes + r * rb, &u, w.scales + r * G, w.offsets + r * G, w.scales16 ? w.scales16 + r * G : nullptr,
                                w.offsets16 ? w.offsets16 + r * G : nullptr, w.zero16};
      }
      __m512 acc[8];
      I8Row r8[8];
      for (int j = 0; j < 8; j++) r8[j] = I8Row{s8[j].codes, s8[j].scales, s8[j].scales16};
      const QuantX xs{nullptr, nullptr, qx.sum, K, G};
      i8_rows8(f, r8, K, qx, acc);
      finish8<H>(s8, acc, xs, G, 1.0f, sums);
      for (int64_t j = 0; j < n; j++) {
        float& c = y[o + j];
        c = beta == 0.0f ? alpha * sums[j] : alpha * sums[j] + beta * c;
      }
    }
  };
  if (omp_in_parallel() || N * K < kShareMin) rows(0, N);
  else share_rows(N, rows);
}

#if defined(TB_DECODE_I8_Q4)
// The 'i8' path's view of a 4-bit weight with rows of K: false where it does
// not fit (rows not whole blocks of 16 to 128, K % 64, a code book without a
// finite nonzero value, double quantization incomplete); else I8Q4's tables
// (the code book's magnitudes and signs), the factor that undoes the magnitudes'
// scale (max|t| / 255) and the double quantization's block as a shift (-1
// when not a power of two or not double-quantized).
bool i8_q4_setup(const Quant4View& q, int64_t K, __m512i& mags, __m512i& negq, float& post, int& dq_shift) {
  if (K % 64 != 0 || q.block_shift < 4 || q.block_shift > 7 || K % (int64_t(1) << q.block_shift) != 0) return false;
  if ((K >> q.block_shift) > kI16MaxBlocks) return false;
  if (!q.absmax && (!q.dq_codes || !q.dq_scales || !q.dq_map || q.dq_block < 1)) return false;
  float tmax = 0.0f;
  for (int i = 0; i < 16; i++) tmax = std::max(tmax, std::fabs(q.table[i]));
  if (!(tmax > 0.0f) || !std::isfinite(tmax)) return false;
  alignas(64) uint8_t mag[64];
  uint64_t neg = 0;
  for (int i = 0; i < 64; i++) mag[i] = static_cast<uint8_t>(std::nearbyint(std::fabs(q.table[i & 15]) / tmax * 255.0f));
  for (int i = 0; i < 64; i++) if (q.table[i & 15] < 0.0f) neg |= uint64_t(1) << i;  // repeated, as mag (I8Q4)
  mags = _mm512_load_si512(mag);
  negq = _mm512_set1_epi64(static_cast<long long>(neg));
  post = tmax / 255.0f;
  dq_shift = -1;
  if (!q.absmax && (q.dq_block & (q.dq_block - 1)) == 0) while ((int64_t(1) << (dq_shift + 1)) <= q.dq_block) dq_shift++;
  return true;
}

// y = alpha * x W^T + beta * y, one row of x, a 4-bit blockwise weight in
// whole blocks of 16 to 128 per row (K % 64 == 0); double-quantized absmax
// expanded per eight rows as the i16 path does
bool decode_gemv_i8_q4(int64_t N, int64_t K, float alpha, const float* x, const Quant4View& q, float beta, float* y) {
  __m512i mags, negq;
  float post;
  int dq_shift;
  if (!i8_q4_setup(q, K, mags, negq, post, dq_shift)) return false;
  const int64_t nb = K >> q.block_shift;
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<float> dbuf, sbuf;
  QuantX8 qx{};
  if (!quantize_x8(K, x, q.block_shift, X8Layout::EvenOdd128, qbuf, dbuf, sbuf, qx)) return false;
  const int64_t rb = K >> 1;
  auto rows = [&](int64_t o0, int64_t o1) {
    const I8Q4 f(q.block_shift, mags, negq);
    float sums[8];
    float* scratch = i16_scratch();
    for (int64_t o = o0; o < o1; o += 8) {
      const int64_t n = std::min<int64_t>(8, o1 - o);
      if (!q.absmax) expand_dq_absmax(q, (o * K) >> q.block_shift, n * nb, dq_shift, scratch);
      I8Row r8[8];
      for (int64_t j = 0; j < 8; j++) {
        const int64_t r = std::min(j, n - 1);  // past the last row: the last row again, not stored
        r8[j] = I8Row{q.packed + (o + r) * rb, q.absmax ? q.absmax + (((o + r) * K) >> q.block_shift) : scratch + r * nb, nullptr};
      }
      __m512 acc[8];
      i8_rows8(f, r8, K, qx, acc);
      _mm256_storeu_ps(sums, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(post)));
      for (int64_t j = 0; j < n; j++) {
        float& c = y[o + j];
        c = beta == 0.0f ? alpha * sums[j] : alpha * sums[j] + beta * c;
      }
    }
  };
  if (omp_in_parallel() || N * K < kShareMin) rows(0, N);
  else share_rows(N, rows);
  return true;
}
#endif

// ---- 'i8' with several rows of x (2 to 16) ----
// One output row at a time against up to 8 rows of x (more: tiles of 8,
// the row of W then read again from L1): each span's codes are taken out
// once and dotted with every row of x, each row with its own accumulator,
// x's steps per lane and sums.
// sums[r] = one output row (format f) against rows 0..MB of qx (each x row
// quantized in f's layout), before any INT-N offsets
template <int MB, class F>
void i8_rows_m(const F& f, const I8Row& row, int64_t K, const QuantX8* qx, float* sums) {
  __m512 acc[MB];
#pragma GCC unroll 8
  for (int r = 0; r < MB; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += F::SPAN) {
    __m512i v[F::NV];
    __mmask64 neg[F::NV];
    const int64_t left = K - k;
    f.codes(row, k, left, v, neg);
    const __m512 ws = f.scales(row, k, left);
    const int64_t lane0 = (k / F::SPAN) * 16;
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) {
      const __m512i I = i8_span_dot<F>(v, neg, qx[r].q + k);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(ws, _mm512_loadu_ps(qx[r].dl + lane0)), acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MB; r++) sums[r] = _mm512_reduce_add_ps(acc[r]);
}

template <class F>
void i8_rows_tiles(const F& f, const I8Row& row, int64_t m, int64_t K, const QuantX8* qx, float* sums) {
  for (int64_t r0 = 0; r0 < m; r0 += 8) {
    switch (std::min<int64_t>(8, m - r0)) {
      case 1: i8_rows_m<1>(f, row, K, qx + r0, sums + r0); break;
      case 2: i8_rows_m<2>(f, row, K, qx + r0, sums + r0); break;
      case 3: i8_rows_m<3>(f, row, K, qx + r0, sums + r0); break;
      case 4: i8_rows_m<4>(f, row, K, qx + r0, sums + r0); break;
      case 5: i8_rows_m<5>(f, row, K, qx + r0, sums + r0); break;
      case 6: i8_rows_m<6>(f, row, K, qx + r0, sums + r0); break;
      case 7: i8_rows_m<7>(f, row, K, qx + r0, sums + r0); break;
      default: i8_rows_m<8>(f, row, K, qx + r0, sums + r0); break;
    }
  }
}

// sum_g offsets[g] * xs[g] of one INT-N output row (f32, fp16, or -zero16 * the fp16 scales)
inline float i8_offset_dot(const IntNView& w, int64_t o, int64_t G, bool h16, const float* xs) {
  __m512 a = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; g += 16) {
    const __mmask16 mk = G - g >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (G - g)) - 1);
    __m512 ov;
    if (h16 && w.offsets16) ov = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, w.offsets16 + o * G + g));
    else if (h16) ov = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, w.scales16 + o * G + g)), _mm512_set1_ps(-w.zero16));
    else ov = _mm512_maskz_loadu_ps(mk, w.offsets + o * G + g);
    a = _mm512_fmadd_ps(ov, _mm512_maskz_loadu_ps(mk, xs + g), a);
  }
  return _mm512_reduce_add_ps(a);
}

// y = alpha * x W^T + beta * y for 2-16 rows of x, format f; row(o) gives
// output row o's I8Row, offs(o, r) the INT-N offsets' term of row o with x
// row r (0 for 4-bit)
template <class F, class Row, class Offs>
void i8_run_m(int64_t m, int64_t N, int64_t K, float alpha, const QuantX8* qx, float beta, float* y, int64_t ldy, const F& f, Row row, Offs offs) {
  auto rows = [&](int64_t o0, int64_t o1) {
    const F fl = f;  // the thread's own copy: its vectors stay in registers
    float sums[kDecodeMaxRows];
    for (int64_t o = o0; o < o1; o++) {
      i8_rows_tiles(fl, row(o), m, K, qx, sums);
      for (int64_t r = 0; r < m; r++) {
        const float v = sums[r] + offs(o, r);
        float& c = y[r * ldy + o];
        c = beta == 0.0f ? alpha * v : alpha * v + beta * c;
      }
    }
  };
  if (omp_in_parallel() || N * K < kShareMin) rows(0, N);
  else share_rows(N, rows);
}

// The m rows of x quantized in a layout (false: some x not finite)
struct QuantX8Rows {
  QuantX8 qx[kDecodeMaxRows];
  bool make(int64_t m, int64_t K, const float* x, int64_t ldx, int bshift, X8Layout layout) {
    thread_local std::vector<int8_t> qb[kDecodeMaxRows];
    thread_local std::vector<float> db[kDecodeMaxRows], sb[kDecodeMaxRows];
    for (int64_t r = 0; r < m; r++)
      if (!quantize_x8(K, x + r * ldx, bshift, layout, qb[r], db[r], sb[r], qx[r])) return false;
    return true;
  }
};

bool decode_gemv_i8_rows(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W, float beta, float* y,
                         int64_t ldy) {
  if (W.dtype != DType::U8 || K % 64 != 0) return false;
  QuantX8Rows xr;
#if defined(TB_DECODE_I8_Q4)
  if (W.quant == QuantKind::Q4 && W.q4) {
    const Quant4View& q = *W.q4;
    __m512i mags, negq;
    float post;
    int dq_shift;
    if (!i8_q4_setup(q, K, mags, negq, post, dq_shift)) return false;
    const int64_t nb = K >> q.block_shift;
    if (!xr.make(m, K, x, ldx, q.block_shift, X8Layout::EvenOdd128)) return false;
    const int64_t rb = K >> 1;
    i8_run_m(m, N, K, alpha * post, xr.qx, beta, y, ldy, I8Q4(q.block_shift, mags, negq),
             [&](int64_t o) {
               const int64_t b0 = (o * K) >> q.block_shift;
               const float* sc = q.absmax ? q.absmax + b0 : nullptr;
               if (!sc) {
                 float* scratch = i16_scratch();
                 expand_dq_absmax(q, b0, nb, dq_shift, scratch);
                 sc = scratch;
               }
               return I8Row{q.packed + o * rb, sc, nullptr};
             },
             [](int64_t, int64_t) { return 0.0f; });
    return true;
  }
#endif
  if (W.quant != QuantKind::IntN || !W.intn) return false;
  const IntNView& w = *W.intn;
  if ((w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8) || w.group_shift < 4 || w.group_shift > 7 || K % (int64_t(1) << w.group_shift) != 0) return false;
  const X8Layout layout = w.bits == 2 ? X8Layout::Field256 : w.bits == 3 ? X8Layout::Quad128 : w.bits == 4 ? X8Layout::EvenOdd128 : X8Layout::Natural64;
  if (!xr.make(m, K, x, ldx, w.group_shift, layout)) return false;
  const int64_t G = K >> w.group_shift, rb = (K * w.bits) >> 3;
  // fp16 constants for INT8 only: with several rows of x the narrower formats
  // are bound by arithmetic, not reads, and their conversions cost more than
  // the bytes they save (INT4 g32, 4 rows: 10.70-10.75 against 9.82-10.21 ms per
  // SmolLM-135M token, two runs, 2-core EPYC VM)
  const bool h16 = w.bits == 8 && w.scales16;
  auto offs = [&](int64_t o, int64_t r) { return i8_offset_dot(w, o, G, h16, xr.qx[r].sum); };
  auto row = [&](int64_t o) { return I8Row{w.codes + o * rb, w.scales + o * G, w.scales16 ? w.scales16 + o * G : nullptr}; };
  auto run = [&](auto bits) {
    constexpr int B = decltype(bits)::value;
    if (h16) i8_run_m(m, N, K, alpha, xr.qx, beta, y, ldy, I8IntN<B, true>(w.group_shift), row, offs);
    else i8_run_m(m, N, K, alpha, xr.qx, beta, y, ldy, I8IntN<B, false>(w.group_shift), row, offs);
  };
  switch (w.bits) {
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    default: run(std::integral_constant<int, 8>{}); break;
  }
  return true;
}

// y = alpha * x W^T + beta * y for one row of x and an INT2, INT3, INT4 or INT8 weight
// (K a multiple of 64, groups of 16 to 128); false (the caller takes the
// I16 path) for anything else, or x not finite.
bool decode_gemv_i8(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W, float beta, float* y,
                    int64_t ldy) {
  if (m > 1) return decode_gemv_i8_rows(m, N, K, alpha, x, ldx, W, beta, y, ldy);
  if (W.dtype != DType::U8) return false;
#if defined(TB_DECODE_I8_Q4)
  if (W.quant == QuantKind::Q4 && W.q4) return decode_gemv_i8_q4(N, K, alpha, x, *W.q4, beta, y);
#endif
  if (W.quant != QuantKind::IntN || !W.intn) return false;
  const IntNView& w = *W.intn;
  if ((w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8) || K % 64 != 0 || w.group_shift < 4 || w.group_shift > 7 || K % (int64_t(1) << w.group_shift) != 0) return false;
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<float> dbuf, sbuf;
  QuantX8 qx{};
  const X8Layout layout = w.bits == 2 ? X8Layout::Field256 : w.bits == 3 ? X8Layout::Quad128 : w.bits == 4 ? X8Layout::EvenOdd128 : X8Layout::Natural64;
  if (!quantize_x8(K, x, w.group_shift, layout, qbuf, dbuf, sbuf, qx)) return false;
  switch (w.bits) {
    case 2: (w.scales16 ? i8_intn<2, true> : i8_intn<2, false>)(N, K, alpha, w, qx, beta, y); break;
    case 3: (w.scales16 ? i8_intn<3, true> : i8_intn<3, false>)(N, K, alpha, w, qx, beta, y); break;
    case 4: (w.scales16 ? i8_intn<4, true> : i8_intn<4, false>)(N, K, alpha, w, qx, beta, y); break;
    default: (w.scales16 ? i8_intn<8, true> : i8_intn<8, false>)(N, K, alpha, w, qx, beta, y); break;
  }
  return true;
}
#endif

// The f32 path's result is used instead (false) when the weight or x does
// not fit this path: K not a multiple of 32, 4-bit rows not whole blocks, x
// not finite.
bool decode_gemv_i16(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W, float beta,
                     float* y, int64_t ldy) {
  if (W.dtype != DType::U8 || K % 32 != 0) return false;
  thread_local std::vector<int16_t> qbuf;
  thread_local std::vector<float> dbuf, sbuf;
  QuantX qx{};
  if (W.quant == QuantKind::IntN && W.intn) {
    const IntNView& w = *W.intn;
    if (w.group_shift < 4 || K % (int64_t(1) << w.group_shift) != 0 || (K >> w.group_shift) > kI16MaxBlocks) return false;
    if (!quantize_x(m, K, x, ldx, w.group_shift, qbuf, dbuf, sbuf, qx)) return false;
    thread_local std::vector<int16_t> q64buf;
    thread_local std::vector<float> d64buf;
    if ((w.bits == 4 || w.bits == 8) && K % 64 == 0) { permute_x64(m, K, q64buf, qx); lanes_d64(m, K, w.group_shift, d64buf, qx); }
    if (w.bits == 2 && K >= 128) permute_x128(m, K, q64buf, qx);
    switch (w.bits) {
      case 2: i16_intn<2>(m, N, K, alpha, qx, w, beta, y, ldy); return true;
      case 3: i16_intn<3>(m, N, K, alpha, qx, w, beta, y, ldy); return true;
      case 4: i16_intn<4>(m, N, K, alpha, qx, w, beta, y, ldy); return true;
      case 8: i16_intn<8>(m, N, K, alpha, qx, w, beta, y, ldy); return true;
      default: return false;
    }
  }
  if (W.quant == QuantKind::Q4 && W.q4) {
    const Quant4View& q = *W.q4;
    if (q.block_shift < 5 || K % (int64_t(1) << q.block_shift) != 0 || (K >> q.block_shift) > kI16MaxBlocks) return false;
    if (!q.absmax && (!q.dq_codes || !q.dq_scales || !q.dq_map || q.dq_block < 1)) return false;
    if (!quantize_x(m, K, x, ldx, q.block_shift, qbuf, dbuf, sbuf, qx)) return false;
    thread_local std::vector<int16_t> q64buf;
    thread_local std::vector<float> d64buf;
    if (K % 64 == 0) { permute_x64(m, K, q64buf, qx); lanes_d64(m, K, q.block_shift, d64buf, qx); }
    thread_local std::vector<int16_t> q128buf;
    thread_local std::vector<float> d128buf;
    if (m == 1 && K % 64 == 0 && K >= 128) { permute_x128(m, K, q128buf, qx); lanes_d128(m, K, q.block_shift, d128buf, qx); }
    // the table as int16, repeated to 32 entries (see q4_unpack)
    alignas(64) int16_t t16[32];
    float tmax = 0.0f;
    for (int i = 0; i < 16; i++) tmax = std::max(tmax, std::fabs(q.table[i]));
    if (!(tmax > 0.0f) || !std::isfinite(tmax)) return false;
    for (int i = 0; i < 32; i++) t16[i] = static_cast<int16_t>(std::nearbyint(q.table[i & 15] / tmax * kI16Table));
    const __m512i table = _mm512_load_si512(t16);
    const Unpack16 u = q4_unpack();
    const int64_t nb = K >> q.block_shift;
    // y = alpha * (tmax / T) * sum over blocks of absmax_b * d_b * (t16 . q)
    const float post = tmax / kI16Table;
    int dq_shift = -1;  // log2 of the double quantization's block when a power of two
    if (!q.absmax && (q.dq_block & (q.dq_block - 1)) == 0) while ((int64_t(1) << (dq_shift + 1)) <= q.dq_block) dq_shift++;
    const int64_t rb = K >> 1;
    i16_run(m, N, K, q.block_shift, qx, post, alpha, beta, y, ldy, false,
            [&](int64_t o, int slot, float* scratch) {
              const int64_t b0 = (o * K) >> q.block_shift;
              if (q.absmax) return Q4Src16{q.packed + o * rb, &u, &table, q.absmax + b0, nullptr};
              // double-quantized absmax: slot 0 expands rows o .. o + 7 (those
              // that exist) into the thread's scratch, slot j reads row o - j's
              // expansion at j * nb (i16_run makes a block's rows in order)
              if (slot == 0) expand_dq_absmax(q, b0, std::min<int64_t>(8, N - o) * nb, dq_shift, scratch);
              return Q4Src16{q.packed + o * rb, &u, &table, scratch + slot * nb, nullptr};
            },
            [&](int64_t o) {
              prefetch_bytes(q.packed + o * rb, rb);
              if (q.absmax) prefetch_bytes(q.absmax + ((o * K) >> q.block_shift), nb * 4);
            });
    return true;
  }
  return false;
}
#endif

DecodeIsa best_isa() {
#if defined(__AVX512F__)
  return DecodeIsa::Avx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return DecodeIsa::Avx2;
#else
  return DecodeIsa::Portable;
#endif
}

}  // namespace

bool decode_isa_available(DecodeIsa isa) {
  switch (isa) {
    case DecodeIsa::Best: case DecodeIsa::Portable: return true;
#if defined(__AVX512F__)
    case DecodeIsa::Avx512: return true;
#endif
#if defined(__AVX2__) && defined(__FMA__)
    case DecodeIsa::Avx2: return true;
#endif
    default: return false;
  }
}

const char* decode_isa_name(DecodeIsa isa) {
  switch (isa == DecodeIsa::Best ? best_isa() : isa) {
    case DecodeIsa::Avx512: return "avx512";
    case DecodeIsa::Avx2: return "avx2";
    default: return "portable";
  }
}

bool decode_gemv_handles(int64_t M, const MatRef& A, const MatRef& B) {
  if (M < 1 || M > kDecodeMaxRows || A.dtype != DType::F32 || A.trans || !B.trans) return false;
  switch (B.dtype) {
    case DType::F32: case DType::BF16: return true;
    case DType::U8: return (B.quant == QuantKind::IntN && B.intn) || (B.quant == QuantKind::Q4 && B.q4 && (B.q4->absmax || B.q4->dq_codes));
    default: return false;
  }
}

bool decode_i8_available() {
#if defined(TB_DECODE_I8)
  return true;
#else
  return false;
#endif
}

bool decode_i8_q4_available() {
#if defined(TB_DECODE_I8_Q4)
  return true;
#else
  return false;
#endif
}

bool decode_i16_available() {
#if defined(TB_DECODE_I16)
  return true;
#else
  return false;
#endif
}

void decode_gemv(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W, float beta,
                 float* y, int64_t ldy, DecodeIsa isa, DecodeAct act) {
  if (m <= 0 || N <= 0) return;
  if (m > kDecodeMaxRows) bad_weight("more than 16 rows");
  if (isa == DecodeIsa::Best) isa = best_isa();
#if defined(TB_DECODE_I16)
#if defined(TB_DECODE_I8)
  if (act == DecodeAct::I8 && isa == DecodeIsa::Avx512 && decode_gemv_i8(m, N, K, alpha, x, ldx, W, beta, y, ldy)) return;
#endif
  if (act != DecodeAct::F32 && isa == DecodeIsa::Avx512 && decode_gemv_i16(m, N, K, alpha, x, ldx, W, beta, y, ldy)) return;
#else
  (void)act;
#endif
  switch (isa) {
#if defined(__AVX512F__)
    case DecodeIsa::Avx512: run<Avx512>(m, N, K, alpha, x, ldx, W, beta, y, ldy); return;
#endif
#if defined(__AVX2__) && defined(__FMA__)
    case DecodeIsa::Avx2: run<Avx2>(m, N, K, alpha, x, ldx, W, beta, y, ldy); return;
#endif
    default: run<Portable>(m, N, K, alpha, x, ldx, W, beta, y, ldy); return;
  }
}

// ---- bindings ----

static DecodeIsa isa_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return DecodeIsa::Best;
  if (!info[i].IsString()) throw arg_error(info, fn, "isa must be a string: 'avx512', 'avx2' or 'portable'");
  const std::string s = info[i].As<Napi::String>().Utf8Value();
  DecodeIsa isa;
  if (s == "avx512") isa = DecodeIsa::Avx512;
  else if (s == "avx2") isa = DecodeIsa::Avx2;
  else if (s == "portable") isa = DecodeIsa::Portable;
  else throw arg_error(info, fn, "unknown isa '" + s + "' (avx512, avx2 or portable)");
  if (!decode_isa_available(isa)) throw arg_error(info, fn, "this build has no '" + s + "' decode path (decode_isas lists them)");
  return isa;
}

DecodeAct decode_act_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return DecodeAct::F32;
  if (!info[i].IsString()) throw arg_error(info, fn, "activations must be a string: 'f32', 'i16' or 'i8'");
  const std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s == "f32") return DecodeAct::F32;
  if (s == "i16") return DecodeAct::I16;
  if (s == "i8") return DecodeAct::I8;
  throw arg_error(info, fn, "unknown activations '" + s + "' ('f32', 'i16' or 'i8')");
}

// decode_gemv(x, W, y, m, out, in, isa?, activations?): y [m, out] = x [m, in] W^T, W a
// weight [out, in] on the CPU (f32, bf16 or quantized), 1 <= m <= 16.
static Napi::Value DecodeGemvBinding(const Napi::CallbackInfo& info) {
  const char* fn = "decode_gemv";
  const int64_t m = int_arg(info, 3, fn, "m", 1), out = int_arg(info, 4, fn, "out", 1), in = int_arg(info, 5, fn, "in", 1);
  if (m > kDecodeMaxRows) throw arg_error(info, fn, "m must be at most 16 (the decode GEMV's rows)");
  const DecodeIsa isa = isa_arg(info, 6, fn);
  const DecodeAct act = decode_act_arg(info, 7, fn);
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(m * in), DType::F32);
  WeightOperand w = weight_arg(info, 1, fn, "W", out, in, -1, nullptr, /*keep_double_quant=*/true);
  TensorArg y = tensor_arg(info, 2, fn, "y", static_cast<size_t>(m * out), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    decode_gemv(m, out, in, 1.0f, x.f32(), in, w.mat(in, true), 0.0f, y.f32(), out, isa, act);
    return info.Env().Undefined();
  });
}

static Napi::Value DecodeIsasBinding(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env());
  uint32_t n = 0;
  for (DecodeIsa isa : {DecodeIsa::Avx512, DecodeIsa::Avx2, DecodeIsa::Portable})
    if (decode_isa_available(isa)) a.Set(n++, Napi::String::New(info.Env(), decode_isa_name(isa)));
  return a;
}

// Reads every float of p[0, n) once with the widest vector loads on the
// calling thread and returns their sum (so the reads are not optimised away).
static double stream_sum(const float* p, int64_t n) {
  double total = 0.0;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + i + 48));
  }
  total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#elif defined(__AVX2__)
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + i + 24));
  }
  float l[8];
  _mm256_storeu_ps(l, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (float v : l) total += v;
#endif
  float s = 0.0f;
  for (; i < n; i++) s += p[i];
  return total + s;
}

// stream_read(t, passes): reads every byte of f32 tensor t `passes` times on
// the calling thread with the widest vector loads, returns the sum (so the
// reads are not optimised away): the streaming-read roof the decode GEMV is
// judged against, when t is much larger than the caches.
static Napi::Value StreamReadBinding(const Napi::CallbackInfo& info) {
  const char* fn = "stream_read";
  TensorArg t = tensor_arg(info, 0, fn, "t", 0, DType::F32);
  const int64_t passes = int_arg(info, 1, fn, "passes", 1);
  double total = 0.0;
  for (int64_t pass = 0; pass < passes; pass++) total += stream_sum(t.f32(), static_cast<int64_t>(t.numel));
  return Napi::Number::New(info.Env(), total);
}

// decode_gemv_timed(calls, passes, isa?, activations?, roof?): runs the list
// of decode GEMVs `calls` (each [x, W, y, m, out, in], as decode_gemv takes
// them) `passes` times, parsed once, with no return to JavaScript between
// calls, and returns { kernelS, roofS }: the seconds of each pass (steady
// clock). With `roof` (an f32 tensor) each pass is preceded by one
// stream_read of it, timed alone (roofS), so that a kernel pass and a roof
// pass always sit side by side on a machine whose bandwidth drifts.
static Napi::Value DecodeGemvTimedBinding(const Napi::CallbackInfo& info) {
  const char* fn = "decode_gemv_timed";
  if (info.Length() < 1 || !info[0].IsArray()) throw arg_error(info, fn, "calls must be an array of [x, W, y, m, out, in]");
  const Napi::Array calls = info[0].As<Napi::Array>();
  const int64_t passes = int_arg(info, 1, fn, "passes", 1);
  const DecodeIsa isa = isa_arg(info, 2, fn);
  const DecodeAct act = decode_act_arg(info, 3, fn);
  TensorArg roof = tensor_arg(info, 4, fn, "roof", 0, DType::F32, false, /*nullable=*/true);
  struct Call { TensorArg x, y; std::unique_ptr<WeightOperand> w; int64_t m, out, in; };
  std::vector<Call> list;
  for (uint32_t c = 0; c < calls.Length(); c++) {
    const std::string at = "calls[" + std::to_string(c) + "]";
    const Napi::Value e = calls.Get(c);
    if (!e.IsArray() || e.As<Napi::Array>().Length() != 6) throw arg_error(info, fn, at + " must be [x, W, y, m, out, in]");
    const Napi::Array a = e.As<Napi::Array>();
    int64_t dims[3];
    for (int k = 0; k < 3; k++) {
      const Napi::Value v = a.Get(3 + k);
      const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
      if (!(d >= 1.0) || d != static_cast<double>(static_cast<int64_t>(d)) || d > 1e9)
        throw arg_error(info, fn, at + ": m, out and in must be positive integers");
      dims[k] = static_cast<int64_t>(d);
    }
    Call call;
    call.m = dims[0], call.out = dims[1], call.in = dims[2];
    if (call.m > kDecodeMaxRows) throw arg_error(info, fn, at + ": m must be at most 16 (the decode GEMV's rows)");
    call.x = tensor_value_any_device(info, a.Get(0u), fn, (at + " x").c_str(), static_cast<size_t>(call.m * call.in), DType::F32);
    call.y = tensor_value_any_device(info, a.Get(2u), fn, (at + " y").c_str(), static_cast<size_t>(call.m * call.out), DType::F32);
    if (call.x.dev != Device::CPU || call.y.dev != Device::CPU) throw arg_error(info, fn, at + ": x and y must be on the CPU");
    call.w = std::make_unique<WeightOperand>(weight_value(info, a.Get(1u), SIZE_MAX, fn, (at + " W").c_str(), call.out, call.in, -1, nullptr, true));
    list.push_back(std::move(call));
  }
  std::vector<double> kernel_s(static_cast<size_t>(passes)), roof_s(roof.data ? static_cast<size_t>(passes) : 0);
  double sink = 0.0;
  guarded(info, [&]() -> Napi::Value {
    using clock = std::chrono::steady_clock;
    for (int64_t p = 0; p < passes; p++) {
      if (roof.data) {
        const auto t0 = clock::now();
        sink += stream_sum(roof.f32(), static_cast<int64_t>(roof.numel));
        roof_s[p] = std::chrono::duration<double>(clock::now() - t0).count();
      }
      const auto t0 = clock::now();
      for (const Call& c : list) decode_gemv(c.m, c.out, c.in, 1.0f, c.x.f32(), c.in, c.w->mat(c.in, true), 0.0f, c.y.f32(), c.out, isa, act);
      kernel_s[p] = std::chrono::duration<double>(clock::now() - t0).count();
    }
    return info.Env().Undefined();
  });
  Napi::Env env = info.Env();
  auto arr = [&](const std::vector<double>& v) {
    Napi::Array r = Napi::Array::New(env, v.size());
    for (uint32_t k = 0; k < v.size(); k++) r.Set(k, Napi::Number::New(env, v[k]));
    return r;
  };
  Napi::Object r = Napi::Object::New(env);
  r.Set("kernelS", arr(kernel_s));
  r.Set("roofS", arr(roof_s));
  r.Set("sink", Napi::Number::New(env, sink));
  return r;
}

// The calling thread's rate of independent dot-product instructions: 12
// accumulators, each instruction's inputs fixed, so nothing but the
// instruction's throughput limits it. Products (multiply-adds) per second:
// 'i8' vpdpbusd zmm (64 u8 x s8 each), 'i16' vpdpwssd zmm (32 s16 x s16),
// 'f32' vfmadd231ps zmm (16). The multiply rate beside the streaming roof
// in bench:decode: several rows of x are bound by it.
#if defined(__AVX512F__)
template <int KIND>
double dot_rate(int64_t iters) {
  __m512i a[12];
  __m512 f[12];
  for (int i = 0; i < 12; i++) { a[i] = _mm512_set1_epi32(i); f[i] = _mm512_set1_ps(0.001f * static_cast<float>(i)); }
  const __m512i p = _mm512_set1_epi8(3), q = _mm512_set1_epi8(5);
  const __m512 u = _mm512_set1_ps(0.999f), v = _mm512_set1_ps(1e-4f);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
      if constexpr (KIND == 0) a[i] = _mm512_dpbusd_epi32(a[i], p, q);
      else if constexpr (KIND == 1) a[i] = _mm512_dpwssd_epi32(a[i], p, q);
      else f[i] = _mm512_fmadd_ps(f[i], u, v);
    }
    // keep every chain live and in registers
    __asm__ volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]));
    __asm__ volatile("" : "+v"(a[6]), "+v"(a[7]), "+v"(a[8]), "+v"(a[9]), "+v"(a[10]), "+v"(a[11]));
    __asm__ volatile("" : "+v"(f[0]), "+v"(f[1]), "+v"(f[2]), "+v"(f[3]), "+v"(f[4]), "+v"(f[5]));
    __asm__ volatile("" : "+v"(f[6]), "+v"(f[7]), "+v"(f[8]), "+v"(f[9]), "+v"(f[10]), "+v"(f[11]));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int per = KIND == 0 ? 64 : KIND == 1 ? 32 : 16;
  return static_cast<double>(iters) * 12 * per / secs;
}
#endif

// dot_rate(kind, iters?): products per second of kind 'i8', 'i16' or 'f32' on
// the calling thread (see dot_rate), or null where this build has no such
// instruction (no AVX-512, or no VNNI for 'i8' and 'i16')
static Napi::Value DotRateBinding(const Napi::CallbackInfo& info) {
  const char* fn = "dot_rate";
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), std::string(fn) + ": kind must be 'i8', 'i16' or 'f32'");
  const std::string kind = info[0].As<Napi::String>().Utf8Value();
  if (kind != "i8" && kind != "i16" && kind != "f32") throw Napi::TypeError::New(info.Env(), std::string(fn) + ": unknown kind '" + kind + "' ('i8', 'i16' or 'f32')");
  const int64_t iters = info.Length() > 1 && !info[1].IsUndefined() ? int_arg(info, 1, fn, "iters", 1) : 20000000;
#if defined(__AVX512F__)
  if (kind == "f32") return Napi::Number::New(info.Env(), dot_rate<2>(iters));
#if defined(__AVX512VNNI__)
  return Napi::Number::New(info.Env(), kind == "i8" ? dot_rate<0>(iters) : dot_rate<1>(iters));
#endif
#endif
  (void)iters;
  return info.Env().Null();
}

static void register_decode(Napi::Env env, Napi::Object exports) {
  exports.Set("decode_gemv", Napi::Function::New(env, DecodeGemvBinding));
  exports.Set("decode_isas", Napi::Function::New(env, DecodeIsasBinding));
  exports.Set("decodeKernel", Napi::String::New(env, decode_isa_name(DecodeIsa::Best)));
  exports.Set("decodeI16", Napi::Boolean::New(env, decode_i16_available()));
  exports.Set("decodeI8", Napi::Boolean::New(env, decode_i8_available()));
  exports.Set("decodeI8Q4", Napi::Boolean::New(env, decode_i8_q4_available()));
  exports.Set("stream_read", Napi::Function::New(env, StreamReadBinding));
  exports.Set("dot_rate", Napi::Function::New(env, DotRateBinding));
  exports.Set("decode_gemv_timed", Napi::Function::New(env, DecodeGemvTimedBinding));
}
TB_REGISTER_OPS(decode, register_decode);

}  // namespace tb
