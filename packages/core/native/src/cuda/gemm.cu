// GEMM on the GPU: C = alpha * op(A) op(B) + beta * C with the semantics of
// cpu/gemm.cc (gemm.h), bf16 tensor cores (WMMA m16n16k16) with fp32
// accumulation.
//
// One kernel for every operand kind: a 256-thread block (8 warps, 2 x 4, each
// 64 x 32 of C) computes a 128 x 128 tile of C over K in steps of 32. The A
// and B tiles live in shared memory as bf16 [128 rows][32 k] (A: rows are m,
// B: rows are n; k contiguous, padded to 40 so rows stay 16-byte aligned and
// fragment loads spread over the banks), two stages: while the tensor cores
// work on one stage, every thread fetches its 16 elements of the next A and
// B tiles from global memory into registers, converting to bf16 (f32 rounded,
// bf16 as is, quantized weights dequantized), and stores them to the other
// stage afterwards. The fetch is a loader functor per operand format (a
// template parameter), so the fused dequantize-GEMMs for NF4/FP4 and INT-N
// are this same kernel with another B loader: the weight is dequantized tile
// by tile into shared memory and never exists in bf16 or f32 as a whole.
// Tile edges are zero-filled, so any M, N, K works.
//
// Decoding (a few rows of f32 activations times a quantized weight, x W^T)
// uses quant_decode instead: one warp per output column, the weight
// dequantized in registers.
//
// Status: compiled, not yet run on a GPU (the per-run dequantization is
// tested on the CPU through hostmath_gemm_dequant).
#include <mma.h>

#include "../kernels/gemm_math.h"
#include "../kernels/quant_math.h"
#include "common.cuh"
#include "gemm.h"

namespace tb::cuda {
namespace {

using namespace nvcuda;

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int LDS = BK + 8;  // bf16 row stride of a shared tile (80 bytes)
constexpr int kThreads = 256;

struct Table16 {
  float v[16];
};

Table16 table_of(const MatRef& B) {
  Table16 t{};
  if (B.dtype == DType::U8 && B.quant == QuantKind::Q4)
    for (int i = 0; i < 16; i++) t.v[i] = B.q4->table[i];
  return t;
}

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x (lo) at the lower address
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ void pack16(const float* f, uint32_t* v) {
#pragma unroll
  for (int i = 0; i < 8; i++) v[i] = pack2(f[2 * i], f[2 * i + 1]);
}

// Which 16 elements of a [128][32] tile thread `tid` fetches:
//   k-major source (contiguous along k): row tid / 2, k (tid % 2) * 16 .. +16
//   row-major source (contiguous along the rows): k tid / 8, rows (tid % 8) * 16 .. +16
__device__ __forceinline__ void run_of(bool kmajor, int tid, int& r, int& k) {
  if (kmajor) { r = tid >> 1; k = (tid & 1) * 16; }
  else { k = tid >> 3; r = (tid & 7) * 16; }
}

// The tile row of the i-th of the 16 single-element stores of a thread whose
// run (run_of, row-major source) starts at row r: r + (i ^ (tid & 7)). In
// order (r + i), the 8 threads of a warp with the same k store rows 16 apart
// at once, and 16 rows of LDS bf16 (80 bytes) are 320 words, 0 mod 32 banks:
// an 8-way bank conflict at every store. Taken in the order i ^ (tid & 7),
// their rows at one store differ in the low 3 bits, 20 words apart mod 32
// each: 8 different banks (the threads with k and k + 1 share a word).
__device__ __forceinline__ int stash_t_row(int tid, int r, int i) { return r + (i ^ (tid & 7)); }

// Registers -> shared tile [128][LDS] (bf16 pairs, first element low).
__device__ __forceinline__ void stash(bool kmajor, int tid, const uint32_t* v, uint16_t* tile) {
  int r, k;
  run_of(kmajor, tid, r, k);
  if (kmajor) {
    uint4* d = reinterpret_cast<uint4*>(tile + r * LDS + k);
    d[0] = make_uint4(v[0], v[1], v[2], v[3]);
    d[1] = make_uint4(v[4], v[5], v[6], v[7]);
  } else {
    uint16_t h[16];
#pragma unroll
    for (int i = 0; i < 8; i++) {
      h[2 * i] = static_cast<uint16_t>(v[i] & 0xffffu);
      h[2 * i + 1] = static_cast<uint16_t>(v[i] >> 16);
    }
    // h[i] <- h[i ^ (tid & 7)]: three stages of conditional swaps with
    // constant register indices (a runtime index would put h in local memory)
    const int a = tid & 7;
#pragma unroll
    for (int b = 1; b < 8; b <<= 1) {
      const bool swap = (a & b) != 0;
#pragma unroll
      for (int i = 0; i < 16; i++) {
        if (i & b) continue;
        const uint16_t x = h[i], y = h[i | b];
        h[i] = swap ? y : x;
        h[i | b] = swap ? x : y;
      }
    }
#pragma unroll
    for (int i = 0; i < 16; i++) tile[stash_t_row(tid, r, i) * LDS + k] = h[i];
  }
}

// ---- loaders: fetch(row0, k0, tid, v) puts the thread's 16 tile elements,
// op(X)(row0 + r.., k0 + k..) as bf16 pairs, into v; outside [rows, K) zero.
// For A the tile rows are m (op(A) is M x K); for B they are n (op(B)^T is N x K).

// A dense f32 or bf16 operand; kmajor: stored [rows][K] (row stride ld), else [K][rows].
template <typename T>
struct DenseLoader {
  const T* p;
  int64_t ld, rows, K;
  bool kmajor;

  __device__ __forceinline__ float at(int64_t i) const {
    if constexpr (sizeof(T) == 4) return p[i];
    else return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
  }

  __device__ __forceinline__ void fetch(int64_t row0, int64_t k0, int tid, uint32_t* v) const {
    int r, k;
    run_of(kmajor, tid, r, k);
    const int64_t gr = row0 + r, gk = k0 + k;
    float f[16];
    if (kmajor) {
      if (gr >= rows) {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0;
        return;
      }
      const T* src = p + gr * ld + gk;
      if (gk + 16 <= K && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
        if constexpr (sizeof(T) == 4) {
          const float4* s4 = reinterpret_cast<const float4*>(src);
#pragma unroll
          for (int i = 0; i < 4; i++) {
            const float4 q = __ldg(s4 + i);
            f[4 * i] = q.x; f[4 * i + 1] = q.y; f[4 * i + 2] = q.z; f[4 * i + 3] = q.w;
          }
        } else {
          const uint4* s4 = reinterpret_cast<const uint4*>(src);
          const uint4 a = __ldg(s4), b = __ldg(s4 + 1);
          v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
          v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
          return;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 16; i++) f[i] = gk + i < K ? at(gr * ld + gk + i) : 0.0f;
      }
    } else {
      if (gk >= K) {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0;
        return;
      }
      const T* src = p + gk * ld + gr;
      if (gr + 16 <= rows && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
        if constexpr (sizeof(T) == 4) {
          const float4* s4 = reinterpret_cast<const float4*>(src);
#pragma unroll
          for (int i = 0; i < 4; i++) {
            const float4 q = __ldg(s4 + i);
            f[4 * i] = q.x; f[4 * i + 1] = q.y; f[4 * i + 2] = q.z; f[4 * i + 3] = q.w;
          }
        } else {
          const uint4* s4 = reinterpret_cast<const uint4*>(src);
          const uint4 a = __ldg(s4), b = __ldg(s4 + 1);
          v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
          v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
          return;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 16; i++) f[i] = gr + i < rows ? at(gk * ld + gr + i) : 0.0f;
      }
    }
    pack16(f, v);
  }
};

// A 4-bit (NF4/FP4) B: stored [rows][K] (x W^T, kmajor) or [K][rows] (dy W),
// unstrided (ld = stored columns); the table is in shared memory.
struct Quant4Loader {
  const uint8_t* packed;
  const float* absmax;
  const float* table;  // shared memory, set by the kernel
  int64_t ld, rows, K;
  int block_shift;
  bool kmajor;

  __device__ __forceinline__ float at(int64_t e) const {
    return math::quant4_value(table, packed, absmax, block_shift, e);
  }

  // 16 values from element e. When e % 16 == 0, its 8 bytes are 8-byte
  // aligned and the run is inside one absmax block (blocks of 16 or more):
  // one 64-bit load and one absmax load instead of 8 byte loads (and 8
  // absmax loads); otherwise byte by byte.
  __device__ __forceinline__ void run16(int64_t e, float* f) const {
    const uint8_t* src = packed + (e >> 1);
    if ((e & 15) == 0 && block_shift >= 4 && (reinterpret_cast<uintptr_t>(src) & 7) == 0) {
      const uint2 w = __ldg(reinterpret_cast<const uint2*>(src));
      const float scale = absmax[e >> block_shift];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        math::quant4_pair(table, static_cast<uint8_t>(w.x >> (8 * i)), scale, f[2 * i], f[2 * i + 1]);
        math::quant4_pair(table, static_cast<uint8_t>(w.y >> (8 * i)), scale, f[8 + 2 * i], f[8 + 2 * i + 1]);
      }
    } else {
      math::quant4_run<16>(table, packed, absmax, block_shift, e, f);
    }
  }

  __device__ __forceinline__ void fetch(int64_t row0, int64_t k0, int tid, uint32_t* v) const {
    int r, k;
    run_of(kmajor, tid, r, k);
    const int64_t gr = row0 + r, gk = k0 + k;
    float f[16];
    if (kmajor) {
      if (gr >= rows) {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0;
        return;
      }
      const int64_t e = gr * ld + gk;
      if (gk + 16 <= K) run16(e, f);
      else
#pragma unroll
        for (int i = 0; i < 16; i++) f[i] = gk + i < K ? at(e + i) : 0.0f;
    } else {
      if (gk >= K) {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0;
        return;
      }
      const int64_t e = gk * ld + gr;
      if (gr + 16 <= rows) run16(e, f);
      else
#pragma unroll
        for (int i = 0; i < 16; i++) f[i] = gr + i < rows ? at(e + i) : 0.0f;
    }
    pack16(f, v);
  }
};

// An INT-N B with NB bits: stored [rows][K] (x W^T, groups along K) or
// [K][rows] (dy W, groups along rows). The stored columns are a multiple of
// the group (>= 16) and every run starts at a multiple of 16 of its row, so a
// run in range is whole and inside one group.
template <int NB>
struct IntNLoader {
  const uint8_t* codes;
  const float* scales;
  const float* offsets;
  int64_t ld, rows, K;
  int group_shift;
  bool kmajor;

  __device__ __forceinline__ void fetch(int64_t row0, int64_t k0, int tid, uint32_t* v) const {
    int r, k;
    run_of(kmajor, tid, r, k);
    const int64_t gr = row0 + r, gk = k0 + k;
    const bool in = kmajor ? (gr < rows && gk < K) : (gk < K && gr < rows);
    if (!in) {
#pragma unroll
      for (int i = 0; i < 8; i++) v[i] = 0;
      return;
    }
    const int64_t e = kmajor ? gr * ld + gk : gk * ld + gr;
    float f[16];
    math::intn_run<NB, 16>(codes, scales, offsets, group_shift, e, f);
    pack16(f, v);
  }
};

template <class L>
__device__ __forceinline__ void set_table(L&, const float*) {}
__device__ __forceinline__ void set_table(Quant4Loader& l, const float* t) { l.table = t; }

// C tile [BM x BN] per block; blockIdx.x over N tiles, blockIdx.y strides over M tiles.
template <class LA, class LB>
__global__ void __launch_bounds__(kThreads) gemm_kernel(int64_t M, int64_t N, int64_t K, float alpha, float beta,
                                                        LA la, LB lb, Table16 table, float* __restrict__ C,
                                                        int64_t ldc) {
  __shared__ __align__(128) uint16_t tiles[2][2][BM * LDS];  // [stage][A, B]
  __shared__ float s_table[16];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid < 16) s_table[tid] = table.v[tid];
  set_table(lb, s_table);
  __syncthreads();

  const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows wm*64.., cols wn*32..
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t mtiles = (M + BM - 1) / BM, ktiles = (K + BK - 1) / BK;

  for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
    const int64_t m0 = mt * BM;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    uint32_t ra[8], rb[8];
    la.fetch(m0, 0, tid, ra);
    lb.fetch(n0, 0, tid, rb);
    stash(la.kmajor, tid, ra, tiles[0][0]);
    stash(lb.kmajor, tid, rb, tiles[0][1]);
    __syncthreads();

    for (int64_t t = 0; t < ktiles; t++) {
      const int cur = static_cast<int>(t & 1);
      const bool more = t + 1 < ktiles;
      if (more) {  // next tiles into registers while the tensor cores work
        la.fetch(m0, (t + 1) * BK, tid, ra);
        lb.fetch(n0, (t + 1) * BK, tid, rb);
      }
      const __nv_bfloat16* As = reinterpret_cast<const __nv_bfloat16*>(tiles[cur][0]);
      const __nv_bfloat16* Bs = reinterpret_cast<const __nv_bfloat16*>(tiles[cur][1]);
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[4];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 4; i++) wmma::load_matrix_sync(fa[i], As + (wm * 64 + i * 16) * LDS + kk, LDS);
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * LDS + kk, LDS);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      if (more) {  // the other stage was last read before the previous barrier
        stash(la.kmajor, tid, ra, tiles[cur ^ 1][0]);
        stash(lb.kmajor, tid, rb, tiles[cur ^ 1][1]);
      }
      __syncthreads();
    }

    // epilogue: each warp's 16 x 16 fragments through a 1 KiB scratch in the
    // (now idle) tiles, then alpha/beta and the bounds check on the way out
    float* scratch = reinterpret_cast<float*>(&tiles[0][0][0]) + warp * 256;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int64_t m = m0 + wm * 64 + i * 16 + (e >> 4), n = n0 + wn * 32 + j * 16 + (e & 15);
          if (m < M && n < N) {
            float* c = C + m * ldc + n;
            const float s = alpha * scratch[e];
            *c = beta == 0.0f ? s : s + beta * *c;
          }
        }
        __syncwarp();
      }
    __syncthreads();  // the scratch is the next tile's stage 0
  }
}

// C = beta * C (beta == 0: zeros, C not read): K == 0 or alpha == 0.
__global__ void scale_kernel(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  const int64_t total = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float* c = C + (i / N) * ldc + i % N;
    *c = beta == 0.0f ? 0.0f : beta * *c;
  }
}

unsigned capped(unsigned b) { return b > 65535u * 8 ? 65535u * 8 : b; }

template <class LA, class LB>
void launch_tiles(int64_t M, int64_t N, int64_t K, float alpha, float beta, const LA& la, const LB& lb,
                  const Table16& table, float* C, int64_t ldc) {
  const int64_t ntiles = (N + BN - 1) / BN, mtiles = (M + BM - 1) / BM;
  if (ntiles > 0x7fffffff) throw DeviceError("gemm: N is too large for the grid");
  dim3 grid(static_cast<unsigned>(ntiles), static_cast<unsigned>(mtiles < 65535 ? mtiles : 65535));
  gemm_kernel<LA, LB><<<grid, kThreads, 0, stream()>>>(M, N, K, alpha, beta, la, lb, table, C, ldc);
  TB_LAUNCH_CHECK();
}

template <typename T>
DenseLoader<T> dense(const MatRef& X, int64_t rows, int64_t K, bool kmajor) {
  return DenseLoader<T>{static_cast<const T*>(X.p), X.ld, rows, K, kmajor};
}

template <class LA>
void launch_with_b(int64_t M, int64_t N, int64_t K, float alpha, const LA& la, const MatRef& B, float beta, float* C,
                   int64_t ldc) {
  const Table16 table = table_of(B);
  switch (B.dtype) {
    case DType::F32: launch_tiles(M, N, K, alpha, beta, la, dense<float>(B, N, K, B.trans), table, C, ldc); return;
    case DType::BF16: launch_tiles(M, N, K, alpha, beta, la, dense<uint16_t>(B, N, K, B.trans), table, C, ldc); return;
    case DType::U8: break;
    default: throw DeviceError("gemm: unsupported B operand");
  }
  if (B.quant == QuantKind::Q4) {
    const Quant4View& q = *B.q4;
    launch_tiles(M, N, K, alpha, beta, la, Quant4Loader{q.packed, q.absmax, nullptr, B.ld, N, K, q.block_shift, B.trans},
                 table, C, ldc);
    return;
  }
  if (B.quant != QuantKind::IntN) throw DeviceError("gemm: unsupported quantized B operand");
  const IntNView& q = *B.intn;
  switch (q.bits) {
    case 2: launch_tiles(M, N, K, alpha, beta, la, IntNLoader<2>{q.codes, q.scales, q.offsets, B.ld, N, K, q.group_shift, B.trans}, table, C, ldc); return;
    case 3: launch_tiles(M, N, K, alpha, beta, la, IntNLoader<3>{q.codes, q.scales, q.offsets, B.ld, N, K, q.group_shift, B.trans}, table, C, ldc); return;
    case 4: launch_tiles(M, N, K, alpha, beta, la, IntNLoader<4>{q.codes, q.scales, q.offsets, B.ld, N, K, q.group_shift, B.trans}, table, C, ldc); return;
    case 8: launch_tiles(M, N, K, alpha, beta, la, IntNLoader<8>{q.codes, q.scales, q.offsets, B.ld, N, K, q.group_shift, B.trans}, table, C, ldc); return;
    default: throw DeviceError("gemm: INT-N bits must be 2, 3, 4 or 8");
  }
}

// ---- decode: y [m, N] = alpha * x [m, K] deq(W)^T + beta * y, m <= 16 ----

constexpr int kDecodeWarps = 8;
constexpr int kDecodeChunk = 32 * 8;  // k per chunk: 8 per lane

// Row n of a 4-bit W [N, K]: w[0..8) = deq(W)(n, k..k+8), zero past K.
struct Quant4Row {
  const uint8_t* packed;
  const float* absmax;
  const float* table;  // shared memory
  int64_t K;
  int block_shift;
  __device__ __forceinline__ void fetch8(int64_t n, int64_t k, float* w) const {
    const int64_t e = n * K + k;
    if (k + 8 <= K) {
      math::quant4_run<8>(table, packed, absmax, block_shift, e, w);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) w[i] = k + i < K ? math::quant4_value(table, packed, absmax, block_shift, e + i) : 0.0f;
    }
  }
};

// Row n of an INT-N W [N, K] (K a multiple of the group, so of 16: a chunk
// of 8 at k % 8 == 0 inside K is whole and in one group).
template <int NB>
struct IntNRow {
  const uint8_t* codes;
  const float* scales;
  const float* offsets;
  const float* table;  // unused
  int64_t K;
  int group_shift;
  __device__ __forceinline__ void fetch8(int64_t n, int64_t k, float* w) const {
    math::intn_run<NB, 8>(codes, scales, offsets, group_shift, n * K + k, w);
  }
};

template <class W>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(int m, int64_t N, int64_t K, float alpha,
                                                                   const float* __restrict__ x, int64_t ldx, W w,
                                                                   Table16 table, float beta, float* __restrict__ y,
                                                                   int64_t ldy) {
  __shared__ __align__(16) float xs[kQuantDecodeMaxRows][kDecodeChunk];
  __shared__ float s_table[16];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid < 16) s_table[tid] = table.v[tid];
  w.table = s_table;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kDecodeWarps + warp;
  float acc[kQuantDecodeMaxRows];
#pragma unroll
  for (int r = 0; r < kQuantDecodeMaxRows; r++) acc[r] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += kDecodeChunk) {
    __syncthreads();  // the previous chunk is consumed (and the table is set)
    for (int i = tid; i < m * kDecodeChunk; i += kDecodeWarps * 32) {
      const int r = i / kDecodeChunk, c = i % kDecodeChunk;
      xs[r][c] = k0 + c < K ? __ldg(x + r * ldx + k0 + c) : 0.0f;
    }
    __syncthreads();
    const int64_t k = k0 + lane * 8;
    if (n < N && k < K) {
      float wv[8];
      w.fetch8(n, k, wv);
#pragma unroll
      for (int r = 0; r < kQuantDecodeMaxRows; r++) {
        if (r < m) {
          const float4 a = *reinterpret_cast<const float4*>(&xs[r][lane * 8]);
          const float4 b = *reinterpret_cast<const float4*>(&xs[r][lane * 8 + 4]);
          acc[r] += a.x * wv[0] + a.y * wv[1] + a.z * wv[2] + a.w * wv[3] + b.x * wv[4] + b.y * wv[5] + b.z * wv[6] +
                    b.w * wv[7];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kQuantDecodeMaxRows; r++) {
    if (r < m) {
      float s = acc[r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0 && n < N) {
        float* c = y + r * ldy + n;
        *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
      }
    }
  }
}

template <class W>
void launch_decode(int m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const W& w,
                   const Table16& table, float beta, float* y, int64_t ldy) {
  const int64_t blocks = (N + kDecodeWarps - 1) / kDecodeWarps;
  if (blocks > 0x7fffffff) throw DeviceError("quant_decode: N is too large for the grid");
  decode_kernel<W><<<static_cast<unsigned>(blocks), kDecodeWarps * 32, 0, stream()>>>(m, N, K, alpha, x, ldx, w, table,
                                                                                       beta, y, ldy);
  TB_LAUNCH_CHECK();
}

// ---- double-quantized absmax ----
struct Map256 {
  float v[256];
};

__global__ void expand_absmax_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                     int64_t nblocks, int64_t dq_block, float offset, Map256 map,
                                     float* __restrict__ out) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < nblocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[b] = math::dq8_value(map.v[codes[b]], scales[b / dq_block], offset);
}

// ---- stored matrix -> compact bf16 (the cuBLASLt reference's operands) ----
struct StoredSrc {
  const void* p;
  int64_t ld, rows, cols;
  DType dtype;
  QuantKind quant;
  const uint8_t* packed;  // Q4 packed or INT-N codes
  const float* a;         // Q4 absmax or INT-N scales
  const float* b;         // INT-N offsets
  int shift, bits;
};

__global__ void to_bf16_kernel(StoredSrc s, Table16 table, uint16_t* __restrict__ out) {
  const int64_t total = s.rows * s.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / s.cols, c = i % s.cols;
    float v;
    if (s.dtype == DType::F32) v = static_cast<const float*>(s.p)[r * s.ld + c];
    else if (s.dtype == DType::BF16) { out[i] = static_cast<const uint16_t*>(s.p)[r * s.ld + c]; continue; }
    else if (s.quant == QuantKind::Q4) v = math::quant4_value(table.v, s.packed, s.a, s.shift, i);
    else v = math::intn_value(s.packed, s.a, s.b, s.bits, s.shift, i);
    out[i] = f32_to_bf16(v);
  }
}

}  // namespace

void quant_decode(int64_t m, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const MatRef& W,
                  float beta, float* y, int64_t ldy) {
  if (m <= 0 || N <= 0) return;
  if (m > kQuantDecodeMaxRows) throw DeviceError("quant_decode: at most 16 rows");
  if (W.dtype != DType::U8) throw DeviceError("quant_decode: W must be a quantized weight");
  const int mi = static_cast<int>(m);
  if (W.quant == QuantKind::Q4) {
    const Quant4View& q = *W.q4;
    launch_decode(mi, N, K, alpha, x, ldx, Quant4Row{q.packed, q.absmax, nullptr, K, q.block_shift}, table_of(W), beta,
                  y, ldy);
    return;
  }
  if (W.quant != QuantKind::IntN) throw DeviceError("quant_decode: unsupported quantized weight");
  const IntNView& q = *W.intn;
  const Table16 t{};
  switch (q.bits) {
    case 2: launch_decode(mi, N, K, alpha, x, ldx, IntNRow<2>{q.codes, q.scales, q.offsets, nullptr, K, q.group_shift}, t, beta, y, ldy); return;
    case 3: launch_decode(mi, N, K, alpha, x, ldx, IntNRow<3>{q.codes, q.scales, q.offsets, nullptr, K, q.group_shift}, t, beta, y, ldy); return;
    case 4: launch_decode(mi, N, K, alpha, x, ldx, IntNRow<4>{q.codes, q.scales, q.offsets, nullptr, K, q.group_shift}, t, beta, y, ldy); return;
    case 8: launch_decode(mi, N, K, alpha, x, ldx, IntNRow<8>{q.codes, q.scales, q.offsets, nullptr, K, q.group_shift}, t, beta, y, ldy); return;
    default: throw DeviceError("quant_decode: INT-N bits must be 2, 3, 4 or 8");
  }
}

void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_kernel<<<capped(blocks_for(M * N, 256)), 256, 0, stream()>>>(M, N, beta, C, ldc);
    TB_LAUNCH_CHECK();
    return;
  }
  if (B.dtype == DType::U8 && B.trans && A.dtype == DType::F32 && !A.trans && M <= kQuantDecodeMaxRows) {
    quant_decode(M, N, K, alpha, static_cast<const float*>(A.p), A.ld, B, beta, C, ldc);
    return;
  }
  const bool a_kmajor = !A.trans;  // stored [M][K] unless transposed
  switch (A.dtype) {
    case DType::F32: launch_with_b(M, N, K, alpha, dense<float>(A, M, K, a_kmajor), B, beta, C, ldc); return;
    case DType::BF16: launch_with_b(M, N, K, alpha, dense<uint16_t>(A, M, K, a_kmajor), B, beta, C, ldc); return;
    default: throw DeviceError("gemm: A must be f32 or bf16");
  }
}

void expand_absmax(const uint8_t* codes, const float* scales, int64_t nblocks, int64_t dq_block, float offset,
                   const float* map256, float* out) {
  if (nblocks <= 0) return;
  Map256 map;
  for (int i = 0; i < 256; i++) map.v[i] = map256[i];
  expand_absmax_kernel<<<capped(blocks_for(nblocks, 256)), 256, 0, stream()>>>(codes, scales, nblocks, dq_block, offset,
                                                                                map, out);
  TB_LAUNCH_CHECK();
}

void to_bf16_stored(const MatRef& X, int64_t rows, int64_t cols, uint16_t* out) {
  if (rows <= 0 || cols <= 0) return;
  StoredSrc s{X.p, X.ld, rows, cols, X.dtype, X.quant, nullptr, nullptr, nullptr, 0, 0};
  if (X.dtype == DType::U8) {
    if (X.quant == QuantKind::Q4) { s.packed = X.q4->packed; s.a = X.q4->absmax; s.shift = X.q4->block_shift; }
    else if (X.quant == QuantKind::IntN) {
      s.packed = X.intn->codes; s.a = X.intn->scales; s.b = X.intn->offsets;
      s.shift = X.intn->group_shift; s.bits = X.intn->bits;
    } else throw DeviceError("to_bf16_stored: unsupported operand");
  } else if (X.dtype != DType::F32 && X.dtype != DType::BF16) {
    throw DeviceError("to_bf16_stored: unsupported operand");
  }
  to_bf16_kernel<<<capped(blocks_for(rows * cols, 256)), 256, 0, stream()>>>(s, table_of(X), out);
  TB_LAUNCH_CHECK();
}

}  // namespace tb::cuda
