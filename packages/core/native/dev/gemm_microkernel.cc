// The GEMM micro-kernel in isolation (see README.md). Not part of the addon.
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

template <int MR, int NV>
__attribute__((noinline)) void micro(long kc, const float* __restrict ap, const float* __restrict bp, float* c,
                                     long ldc, bool prefetch_c) {
  constexpr int NR = NV * 16;
  __m512 acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  if (prefetch_c)
    for (int i = 0; i < MR; i++)
      for (int v = 0; v < NV; v++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16 * v), _MM_HINT_T0);
#pragma GCC unroll 4
  for (long k = 0; k < kc; k++) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = _mm512_load_ps(bp + 16 * v);
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++) {
      __m512 a = _mm512_set1_ps(ap[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
    ap += MR;
    bp += NR;
  }
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++)
      _mm512_storeu_ps(c + i * ldc + 16 * v, _mm512_add_ps(acc[i][v], _mm512_loadu_ps(c + i * ldc + 16 * v)));
}

float* filled(long n, float v) {
  float* p = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * n));
  for (long i = 0; i < n; i++) p[i] = v;
  return p;
}

// C hot: one tile per A panel, contiguous.
template <int MR, int NV>
void hot(const char* name, long kc, int panels) {
  constexpr int NR = NV * 16;
  float *ap = filled(MR * kc * panels, 1e-3f), *bp = filled(NR * kc, 1e-3f), *c = filled(MR * NR * panels, 0);
  const long reps = 2000;
  auto t0 = std::chrono::steady_clock::now();
  for (long r = 0; r < reps; r++)
    for (int p = 0; p < panels; p++) micro<MR, NV>(kc, ap + p * MR * kc, bp, c + p * MR * NR, NR, false);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-6s C hot, kc %ld, %2d A panels: %6.1f GFLOP/s\n", name, kc, panels, 2.0 * MR * NR * kc * panels * reps / s / 1e9);
  std::free(ap); std::free(bp); std::free(c);
}

// C cold and strided, walked as the macro-kernel walks it.
void cold(bool prefetch_c) {
  constexpr int MR = 12, NV = 2, NR = 32;
  const long M = 3840, N = 2048, kc = 256, mc = 384;
  float *c = filled(M * N, 0), *a = filled(mc * kc, 1e-3f), *b = filled(N * kc, 1e-3f);
  const int reps = 4;
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; r++)
    for (long ic = 0; ic < M; ic += mc)
      for (long j = 0; j < N; j += NR)
        for (long i = 0; i < mc; i += MR) micro<MR, NV>(kc, a + i * kc, b + j * kc, c + (ic + i) * N + j, N, prefetch_c);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("12x32  C cold, ldc %ld, prefetch C %-3s: %6.1f GFLOP/s\n", N, prefetch_c ? "yes" : "no", reps * 2.0 * M * N * kc / s / 1e9);
  std::free(a); std::free(b); std::free(c);
}

int main() {
  hot<12, 2>("12x32", 256, 1);
  hot<12, 2>("12x32", 256, 32);
  hot<14, 2>("14x32", 256, 1);
  hot<8, 3>("8x48", 256, 1);
  hot<6, 4>("6x64", 256, 1);
  hot<24, 1>("24x16", 256, 1);
  cold(false);
  cold(true);
}
