// The kernel benchmark harness, the one both `pnpm bench:kernels` (core's
// bench/kernels.ts: the presets' shapes, OpenBLAS side by side) and a
// suite run (@tunebench/bench's runner: the suite's own shapes plus the
// methods' rows) go through: one timing rule, one roofline, one file format
// (kernels.json, KernelReport below).
//
// Each case is timed with tinybench (time and iterations set explicitly).
// Each row gives GFLOP/s and GB/s (compulsory traffic: every operand read
// once, every output written once) and is judged against peaks measured in
// the same run, roofline style: the compute peak is the best dense GEMM
// GFLOP/s of the run (a 1024^3 GEMM is always timed for it; OpenBLAS's GEMMs
// count when it is compared), the bandwidth peak that of y += a*x over
// arrays far larger than the caches. A kernel whose FLOP per byte is below
// the machine balance (peak GFLOP/s over peak GB/s) is memory-bound and
// compared with the bandwidth peak, the others with the compute peak.
//
// Cases come from generators, set up one group at a time and disposed as
// soon as they are timed, so a sweep over large shapes never holds them all.
//
// CUDA rows (device 'cuda', only where a GPU is present: cudaGemmCases) are
// judged against peaks of their own device: the best CUDA GEMM of the run
// (cuBLASLt's when it is there) and a device-to-device copy. Each CUDA call
// ends with synchronize('cuda') inside the timed function; small ones are
// repeated within it so the launch and synchronisation do not dominate.
import { cpus } from 'node:os';
import { Bench } from 'tinybench';
import { synchronize } from '../device.js';
import type { Device } from '../dtype.js';
import { type LlamaConfig, headDim } from '../nn/config.js';
import { native } from '../native.js';
import { attentionBackward, attentionForward } from '../ops/attention.js';
import { crossEntropyBackward, crossEntropyForward } from '../ops/cross_entropy.js';
import { addInPlace } from '../ops/elementwise.js';
import { cublasLtStatus, gemmKernel, matmul } from '../ops/gemm.js';
import { loraBackward, loraForward } from '../ops/lora.js';
import { type QuantizedWeight, disposeQuantized, quantize4bit } from '../quant/quant4.js';
import { quantizeIntN } from '../quant/intn.js';
import { Tensor } from '../tensor.js';
import { relativeError } from '../util/compare.js';
import { Rng } from '../util/rng.js';

/** One timed kernel call, set up beforehand. Methods add their own (e.g. QLoRA's NF4 GEMM). */
export interface KernelCase {
  name: string;
  /** floating-point operations and compulsory bytes of one call */
  flop: number;
  bytes: number;
  /** one call */
  run: () => void;
  /** frees what this case alone made (shared tensors are freed by the generator) */
  dispose: () => void;
  /** 'gemm' rows are compute-peak candidates; default 'method' */
  section?: KernelSection;
  shape?: string;
  /** who computes it; default 'tunebench' */
  provider?: string;
  /** tokens per call, for tokens/s */
  tokens?: number;
  /** the bandwidth-peak row */
  memoryPeak?: boolean;
  /** this case redoes `of` with another provider; maxRelDiff compares the two results (after timing) */
  compare?: { of: string; maxRelDiff: () => number };
  /** where it runs; default 'cpu' (peaks are per device) */
  device?: Device;
}

export type KernelSection = 'stream' | 'gemm' | 'lora' | 'attention' | 'xent' | 'method';

/** A row of kernels.json. */
export interface KernelRow {
  section: KernelSection;
  name: string;
  shape?: string;
  provider: string;
  /** mean milliseconds per call */
  ms: number;
  gflops: number;
  gbps: number;
  tokensPerS?: number;
  /** the peaks of the same run, and the roof that bounds this row */
  peakGflops: number;
  peakGbps: number;
  bound: 'compute' | 'memory';
  /** on our row: OpenBLAS's time over ours (above 1: we are faster); on OpenBLAS's: the largest relative difference of the results */
  vsOpenblas?: number;
  /** on our CUDA row: cuBLASLt's time over ours */
  vsCublasLt?: number;
  maxRelDiff?: number;
  /** 'cuda' on CUDA rows (absent: the CPU) */
  device?: Device;
}

export interface OpenblasInfo { available: boolean; path: string; config: string; core: string; error: string }

export const KERNEL_REPORT_FORMAT = 'tunebench-kernels/2';

/** kernels.json. */
export interface KernelReport {
  format: typeof KERNEL_REPORT_FORMAT;
  date: string;
  cpu: string;
  cores: number;
  settings: { timeMs: number; iterations: number; threads: number; gemm: string; tokens: number; streamMiB: number };
  openblas: OpenblasInfo;
  rows: KernelRow[];
}

/** A row's fraction of the peak that bounds it (null without a usable peak). */
export function kernelFraction(r: { gflops: number; peakGflops: number; gbps?: number; peakGbps?: number; bound?: 'compute' | 'memory' }): number | null {
  const [v, p] = r.bound === 'memory' ? [r.gbps, r.peakGbps] : [r.gflops, r.peakGflops];
  return typeof v === 'number' && Number.isFinite(v) && typeof p === 'number' && Number.isFinite(p) && p > 0 ? v / p : null;
}

// ------------------------------------------------------------------ OpenBLAS
const blasNative = native as unknown as {
  openblas_info(): OpenblasInfo; openblas_set_threads(n: number): void; openblas_sgemm(...args: unknown[]): void;
};

/** OpenBLAS, loaded at run time for the comparison rows when installed (never linked). `core`
 * sets OPENBLAS_CORETYPE before it loads; it runs on the kernels' thread count. */
export function loadOpenblas(o: { core?: string } = {}): OpenblasInfo {
  if (o.core) process.env.OPENBLAS_CORETYPE = o.core;
  const info = blasNative.openblas_info();
  if (info.available) blasNative.openblas_set_threads(native.getThreads());
  return info;
}

export const NO_OPENBLAS: OpenblasInfo = { available: false, path: '', config: '', core: '', error: 'not compared' };

// --------------------------------------------------------------------- cases
/** t filled with uniform values in [-scale, scale), seeded. */
function seeded(t: Tensor, seed: number, scale = 1): Tensor {
  const v = t.data() as Float32Array, rng = new Rng(seed);
  for (let i = 0; i < v.length; i++) v[i] = (rng.next() * 2 - 1) * scale;
  return t;
}

const noop = () => {};

/** The peaks every report is judged against: streaming bandwidth and a square GEMM. */
export function* peakCases(blas: OpenblasInfo = NO_OPENBLAS): Generator<KernelCase> {
  // y += a*x over two 64 MiB arrays, 12 bytes per element (read x and y, write y)
  const n = STREAM_ELEMENTS;
  const x = seeded(Tensor.zeros([n]), 1), y = seeded(Tensor.zeros([n]), 2);
  try {
    yield { name: `stream y += a*x (${(n * 4) >> 20} MiB arrays)`, section: 'stream', flop: 2 * n, bytes: 12 * n, memoryPeak: true, run: () => { addInPlace(y, x, 1e-7); }, dispose: noop };
  } finally { x.dispose(); y.dispose(); }
  yield* gemmCases({ name: 'gemm 1024x1024x1024', M: 1024, N: 1024, K: 1024, tA: false, tB: false }, blas, 3, false);
}
const STREAM_ELEMENTS = 16 << 20;

interface GemmShape { name: string; M: number; N: number; K: number; tA: boolean; tB: boolean }

/** C [M, N] = op(A) op(B): ours with f32 operands; OpenBLAS's sgemm on the same operands when
 * available; with bf16 B too (a frozen weight) when B is a weight (x·Wᵀ) and `bf16`. */
function* gemmCases(g: GemmShape, blas: OpenblasInfo, seed: number, bf16: boolean): Generator<KernelCase> {
  const { M, N, K, tA, tB } = g;
  const a = seeded(Tensor.zeros(tA ? [K, M] : [M, K]), seed), b = seeded(Tensor.zeros(tB ? [N, K] : [K, N]), seed + 1, 0.05);
  const out = Tensor.zeros([M, N]);
  const shape = `${M}x${N}x${K}`, flop = 2 * M * N * K;
  try {
    yield { name: g.name, section: 'gemm', shape, flop, bytes: 4 * (M * K + K * N + M * N), run: () => { matmul(a, b, { transA: tA, transB: tB, out }); }, dispose: noop };
    if (blas.available) {
      const ref = Tensor.zeros([M, N]);
      yield {
        name: `${g.name} (OpenBLAS ${blas.core})`, section: 'gemm', shape, provider: `openblas(${blas.core})`, flop, bytes: 4 * (M * K + K * N + M * N),
        run: () => { blasNative.openblas_sgemm(tA, tB, M, N, K, 1, a.handle, a.shape[1], b.handle, b.shape[1], 0, ref.handle, N); },
        dispose: () => ref.dispose(),
        compare: { of: g.name, maxRelDiff: () => relativeError(out.data() as Float32Array, ref.data() as Float32Array) },
      };
    }
    if (bf16 && tB && !tA) {
      const bb = Tensor.from(b.data() as Float32Array, b.shape, { dtype: 'bf16', category: 'frozen' });
      yield { name: `${g.name} bf16 W`, section: 'gemm', shape, flop, bytes: 4 * (M * K + M * N) + 2 * K * N, run: () => { matmul(a, bb, { transB: true, out }); }, dispose: () => bb.dispose() };
    }
  } finally { a.dispose(); b.dispose(); out.dispose(); }
}

/** Causal GQA attention forward and backward. FLOPs for the causal half: forward 2 matmuls
 * (QKᵀ, PV) = 4·B·Hq·D·T(T+1)/2; backward recomputes QKᵀ and does dV, dP, dQ, dK = 10·(...). */
function* attentionCases(Bt: number, T: number, Hq: number, Hkv: number, D: number): Generator<KernelCase> {
  const q = seeded(Tensor.zeros([Bt, T, Hq, D]), 10), k = seeded(Tensor.zeros([Bt, T, Hkv, D]), 11), v = seeded(Tensor.zeros([Bt, T, Hkv, D]), 12);
  const out = Tensor.zeros([Bt, T, Hq, D]), lse = Tensor.zeros([Bt, Hq, T]), dout = seeded(Tensor.zeros([Bt, T, Hq, D]), 13);
  const dq = Tensor.zeros([Bt, T, Hq, D]), dk = Tensor.zeros([Bt, T, Hkv, D]), dv = Tensor.zeros([Bt, T, Hkv, D]);
  const pairs = (Bt * Hq * D * T * (T + 1)) / 2;
  const qBytes = 4 * Bt * T * Hq * D, kvBytes = 4 * Bt * T * Hkv * D, lseBytes = 4 * Bt * Hq * T;
  const shape = `B${Bt} T${T} Hq${Hq} Hkv${Hkv} D${D}`;
  try {
    yield { name: `attention forward ${shape}`, section: 'attention', shape, tokens: Bt * T, flop: 4 * pairs, bytes: 2 * qBytes + 2 * kvBytes + lseBytes, run: () => { attentionForward(q, k, v, { out, lse }); }, dispose: noop };
    yield { name: `attention backward ${shape}`, section: 'attention', shape, tokens: Bt * T, flop: 10 * pairs, bytes: 4 * qBytes + 4 * kvBytes + lseBytes, run: () => { attentionBackward(dout, q, k, v, out, lse, { dq, dk, dv }); }, dispose: noop };
  } finally { for (const t of [q, k, v, out, lse, dout, dq, dk, dv]) t.dispose(); }
}

/** The LM head fused with cross-entropy, chunked over tokens: forward one logits GEMM
 * (2·N·V·C); backward recomputes it and adds dH and dW (3 GEMMs). */
function* xentCases(N: number, C: number, V: number): Generator<KernelCase> {
  const h = seeded(Tensor.zeros([N, C]), 7), w = seeded(Tensor.zeros([V, C]), 8, 0.05);
  const targets = Tensor.zeros([N], { dtype: 'i32' });
  const tv = targets.data() as Int32Array;
  for (let i = 0; i < N; i++) tv[i] = (i * 7919) % V;
  const dw = Tensor.zeros([V, C], { category: 'grad' });
  let f = crossEntropyForward(h, w, targets);
  const shape = `N${N} C${C} V${V}`, gemm = 2 * N * V * C;
  const inBytes = 4 * (N * C + V * C + N);
  try {
    yield { name: `xent forward ${shape}`, section: 'xent', shape, tokens: N, flop: gemm, bytes: inBytes + 8 * N, run: () => { f.losses.dispose(); f.lse.dispose(); f = crossEntropyForward(h, w, targets); }, dispose: noop };
    yield { name: `xent backward (dH, dW) ${shape}`, section: 'xent', shape, tokens: N, flop: 3 * gemm, bytes: inBytes + 4 * N + 4 * (N * C + 2 * V * C), run: () => { crossEntropyBackward(h, w, targets, f.lse, 1 / N, { dw }).dh.dispose(); }, dispose: noop };
  } finally { for (const t of [h, w, targets, dw, f.losses, f.lse]) t.dispose(); }
}

/** A training step's shapes. */
export interface StepShape {
  cfg: LlamaConfig;
  /** rows x sequence length of a training step */
  batchSize: number;
  seqLen: number;
  /** LoRA rank for the fused LoRA rows */
  loraRank: number;
}

/** The kernels of one training step at its own shapes: the MLP up projection (f32 and bf16
 * weight), fused LoRA forward and backward over the bf16 base, causal attention, the LM head. */
export function* stepKernelCases(o: StepShape, blas: OpenblasInfo = NO_OPENBLAS): Generator<KernelCase> {
  const cfg = o.cfg, H = cfg.hiddenSize, I = cfg.intermediateSize, N = o.batchSize * o.seqLen, r = o.loraRank;
  yield* gemmCases({ name: `gemm x.W^T ${N}x${I}x${H} f32 W`, M: N, N: I, K: H, tA: false, tB: true }, blas, 5, false);
  // the same product with the weight stored bf16 (frozen base weights), named as before
  const x = seeded(Tensor.zeros([N, H]), 5), W = seeded(Tensor.zeros([I, H]), 6, 0.05), y = Tensor.zeros([N, I]);
  const Wb = Tensor.from(W.data() as Float32Array, W.shape, { dtype: 'bf16', category: 'frozen' });
  const A = seeded(Tensor.zeros([r, H]), 7, 0.05), B = seeded(Tensor.zeros([I, r]), 8, 0.05), u = Tensor.zeros([N, r]);
  const dy = seeded(Tensor.zeros([N, I]), 9), dx = Tensor.zeros([N, H]), dA = Tensor.zeros([r, H]), dB = Tensor.zeros([I, r]);
  const gemmFlop = 2 * N * I * H, shape = `${N}x${I}x${H}`;
  const loraBytes = 4 * (N * H + N * I + N * r + r * H + I * r) + 2 * I * H;
  try {
    yield { name: `gemm x.W^T ${shape} bf16 W`, section: 'gemm', shape, flop: gemmFlop, bytes: 4 * (N * H + N * I) + 2 * I * H, run: () => { matmul(x, Wb, { transB: true, out: y }); }, dispose: noop };
    // y = x W^T + s (x A^T) B^T, and its backward
    yield { name: `lora forward r${r} ${shape}`, section: 'lora', shape, flop: gemmFlop + 2 * N * r * (H + I), bytes: loraBytes, run: () => { loraForward(x, x, Wb, A, B, 2, { y, u }); }, dispose: noop };
    yield {
      name: `lora backward r${r} ${shape}`, section: 'lora', shape, flop: gemmFlop + 4 * N * r * (H + I), bytes: loraBytes + 4 * (r * H + I * r),
      run: () => { loraBackward(dy, x, Wb, A, B, u, 2, { dxInto: dx, dA, dB }); }, dispose: noop,
    };
  } finally { for (const t of [x, W, y, Wb, A, B, u, dy, dx, dA, dB]) t.dispose(); }
  yield* attentionCases(o.batchSize, o.seqLen, cfg.numHeads, cfg.numKvHeads, headDim(cfg));
  yield* xentCases(N, H, cfg.vocabSize);
}

export type SweepSection = 'gemm' | 'attention' | 'xent';

/** The presets' sweep: a LLaMA block's linear layers at hidden H (intermediate 8H/3 rounded up
 * to 256: H = 2048 gives TinyLlama-1.1B's 5632) with `tokens` rows, attention at D = 64 and the
 * LM head at a 32000 vocabulary. `quick`: smaller shapes, a smoke run. */
export function* sweepKernelCases(o: { sections: readonly SweepSection[]; quick?: boolean; tokens?: number }, blas: OpenblasInfo = NO_OPENBLAS): Generator<KernelCase> {
  const T = o.tokens ?? 4096;
  if (o.sections.includes('gemm')) {
    for (const H of o.quick ? [256, 1024] : [256, 512, 1024, 2048]) {
      const I = Math.ceil((8 * H) / 3 / 256) * 256;
      const shapes: GemmShape[] = [
        { name: `H=${H} attn proj fwd x.W^T`, M: T, N: H, K: H, tA: false, tB: true },
        { name: `H=${H} mlp up fwd x.W^T`, M: T, N: I, K: H, tA: false, tB: true },
        { name: `H=${H} mlp down fwd h.W^T`, M: T, N: H, K: I, tA: false, tB: true },
        { name: `H=${H} mlp down dX dY.W`, M: T, N: I, K: H, tA: false, tB: false },
        { name: `H=${H} mlp down dW dY^T.h`, M: H, N: I, K: T, tA: true, tB: false },
      ];
      for (const g of shapes) yield* gemmCases(g, blas, 1, true);
    }
  }
  if (o.sections.includes('attention')) {
    for (const a of o.quick ? [{ B: 2, T: 512, Hq: 8, Hkv: 2 }] : [{ B: 2, T: 2048, Hq: 16, Hkv: 4 }, { B: 4, T: 1024, Hq: 8, Hkv: 8 }]) {
      yield* attentionCases(a.B, a.T, a.Hq, a.Hkv, 64);
    }
  }
  if (o.sections.includes('xent')) {
    for (const x of o.quick ? [{ N: 1024, C: 512, V: 8192 }] : [{ N: T, C: 512, V: 32000 }, { N: T, C: 2048, V: 32000 }]) yield* xentCases(x.N, x.C, x.V);
  }
}

// ------------------------------------------------------------------ CUDA GEMM
/** A CUDA case: `reps` calls then synchronize('cuda') per timed call (flop and bytes scaled). */
function cudaCase(c: Omit<KernelCase, 'run' | 'device'> & { call: () => void }): KernelCase {
  const reps = Math.max(1, Math.min(50, Math.ceil(2e9 / Math.max(c.flop, 1))));
  const { call, ...rest } = c;
  return {
    ...rest, device: 'cuda', flop: c.flop * reps, bytes: c.bytes * reps,
    run: () => { for (let i = 0; i < reps; i++) call(); synchronize('cuda'); },
  };
}

function seededOn(shape: number[], seed: number, scale: number, dtype: 'f32' | 'bf16'): Tensor {
  const h = seeded(Tensor.zeros(shape), seed, scale);
  try {
    if (dtype === 'f32') return h.to('cuda');
    const b = Tensor.from(h.data() as Float32Array, shape, { dtype: 'bf16', category: 'frozen' });
    try { return b.to('cuda'); } finally { b.dispose(); }
  } finally { h.dispose(); }
}

function relDiffOn(a: Tensor, b: Tensor): number {
  const ha = a.to('cpu'), hb = b.to('cpu');
  try { return relativeError(ha.data() as Float32Array, hb.data() as Float32Array); } finally { ha.dispose(); hb.dispose(); }
}

function quantOnCuda(q: QuantizedWeight): QuantizedWeight {
  const moved: QuantizedWeight = q.kind === 'intn'
    ? { ...q, codes: q.codes.to('cuda'), scales: q.scales.to('cuda'), offsets: q.offsets.to('cuda') }
    : { ...q, packed: q.packed.to('cuda'), absmax: q.absmax?.to('cuda'), dq: q.dq && { ...q.dq, codes: q.dq.codes.to('cuda'), scales: q.dq.scales.to('cuda') } };
  disposeQuantized(q);
  return moved;
}

interface CudaGemm { name: string; M: number; N: number; K: number; tA: boolean; tB: boolean; a: 'f32' | 'bf16'; b: 'f32' | 'bf16' }

/** Our bf16 tensor-core GEMM on CUDA tensors, and cuBLASLt (bf16, fp32 accumulation) on the
 * same operands when it is present. */
function* cudaDenseCases(g: CudaGemm, seed: number): Generator<KernelCase> {
  const { M, N, K, tA, tB } = g;
  const a = seededOn(tA ? [K, M] : [M, K], seed, 1, g.a), b = seededOn(tB ? [N, K] : [K, N], seed + 1, 0.05, g.b);
  const out = Tensor.zeros([M, N], { device: 'cuda' });
  const shape = `${M}x${N}x${K}`, flop = 2 * M * N * K;
  const size = { f32: 4, bf16: 2 };
  const bytes = size[g.a] * M * K + size[g.b] * K * N + 4 * M * N;
  try {
    yield cudaCase({ name: g.name, section: 'gemm', shape, flop, bytes, provider: 'tunebench-cuda', call: () => { matmul(a, b, { transA: tA, transB: tB, out }); }, dispose: noop });
    if (cublasLtStatus() === '') {
      const ref = Tensor.zeros([M, N], { device: 'cuda' });
      yield cudaCase({
        name: `${g.name} (cuBLASLt)`, section: 'gemm', shape, flop, bytes, provider: 'cublaslt',
        call: () => { matmul(a, b, { transA: tA, transB: tB, out: ref, reference: true }); }, dispose: () => ref.dispose(),
        compare: { of: g.name, maxRelDiff: () => relDiffOn(out, ref) },
      });
    }
  } finally { a.dispose(); b.dispose(); out.dispose(); }
}

/** x.W^T with W [N, K] quantized (fused dequantization; M <= 16 takes the decode kernel)
 * beside the same product with W dense bf16. */
function* cudaQuantCases(label: string, M: number, N: number, K: number, quantize: (w: Tensor) => QuantizedWeight, wBytes: number, seed: number): Generator<KernelCase> {
  const w = seeded(Tensor.zeros([N, K]), seed + 1, 0.05);
  const q = quantOnCuda(quantize(w));
  const wb = (() => { const b = Tensor.from(w.data() as Float32Array, [N, K], { dtype: 'bf16', category: 'frozen' }); try { return b.to('cuda'); } finally { b.dispose(); } })();
  w.dispose();
  const x = seededOn([M, K], seed, 1, 'f32'), y = Tensor.zeros([M, N], { device: 'cuda' }), yd = Tensor.zeros([M, N], { device: 'cuda' });
  const shape = `${M}x${N}x${K}`, flop = 2 * M * N * K, io = 4 * (M * K + M * N);
  const kind = M <= 16 ? 'decode' : 'fused';
  try {
    yield cudaCase({ name: `${label} ${kind} x.W^T ${shape}`, section: 'method', shape, flop, bytes: io + wBytes, provider: 'tunebench-cuda', call: () => { matmul(x, q, { transB: true, out: y }); }, dispose: noop });
    yield cudaCase({ name: `bf16 W x.W^T ${shape} (dense, beside ${label})`, section: 'method', shape, flop, bytes: io + 2 * N * K, provider: 'tunebench-cuda', call: () => { matmul(x, wb, { transB: true, out: yd }); }, dispose: noop });
  } finally { for (const t of [x, y, yd, wb]) t.dispose(); disposeQuantized(q); }
}

/** The CUDA GEMM rows (run only where a GPU is present): a device-copy bandwidth peak; our
 * bf16 tensor-core kernel beside cuBLASLt at a square 4096^3 and at training shapes (SmolLM-135M
 * H 576 / I 1536, TinyLlama H 2048 / I 5632, `tokens` rows); NF4 and INT-N fused GEMMs beside the
 * dense bf16 weight at training shapes and at decode (M = 1). */
export function* cudaGemmCases(o: { quick?: boolean; tokens?: number } = {}): Generator<KernelCase> {
  const T = o.tokens ?? 4096;
  {
    const n = 64 << 20;  // 256 MiB copied device to device: read + write
    const src = Tensor.zeros([n], { device: 'cuda' }), dst = Tensor.zeros([n], { device: 'cuda' });
    try {
      yield cudaCase({ name: `cuda device copy (${(n * 4) >> 20} MiB)`, section: 'stream', flop: 0, bytes: 8 * n, memoryPeak: true, call: () => { native.copy_tensor(src.handle, dst.handle); }, dispose: noop });
    } finally { src.dispose(); dst.dispose(); }
  }
  const S = o.quick ? 1024 : 4096;
  const shapes: CudaGemm[] = [
    { name: `cuda gemm ${S}x${S}x${S} bf16`, M: S, N: S, K: S, tA: false, tB: true, a: 'bf16', b: 'bf16' },
    { name: `cuda gemm ${S}x${S}x${S} f32`, M: S, N: S, K: S, tA: false, tB: false, a: 'f32', b: 'f32' },
  ];
  for (const [H, I] of o.quick ? [[576, 1536]] : [[576, 1536], [2048, 5632]]) {
    shapes.push(
      { name: `cuda H=${H} mlp up fwd x.W^T (bf16 W)`, M: T, N: I, K: H, tA: false, tB: true, a: 'f32', b: 'bf16' },
      { name: `cuda H=${H} mlp down fwd h.W^T (bf16 W)`, M: T, N: H, K: I, tA: false, tB: true, a: 'f32', b: 'bf16' },
      { name: `cuda H=${H} mlp down dX dY.W (bf16 W)`, M: T, N: I, K: H, tA: false, tB: false, a: 'f32', b: 'bf16' },
      { name: `cuda H=${H} mlp down dW dY^T.h`, M: H, N: I, K: T, tA: true, tB: false, a: 'f32', b: 'f32' },
    );
  }
  for (const g of shapes) yield* cudaDenseCases(g, 21);
  const [H, I] = o.quick ? [576, 1536] : [2048, 5632];
  for (const M of [T, 1]) {
    const nf4Bytes = I * H / 2 + 4 * I * H / 64;
    yield* cudaQuantCases('nf4', M, I, H, (w) => quantize4bit(w, { format: 'nf4', blockSize: 64 }), nf4Bytes, 31);
    for (const bits of [4, 3] as const) {
      const intnBytes = Math.ceil(I * H * bits / 8) + 8 * I * H / 64;
      yield* cudaQuantCases(`int${bits} g64`, M, I, H, (w) => quantizeIntN(w, { bits, groupSize: 64 }), intnBytes, 41 + bits);
    }
  }
}

// -------------------------------------------------------------------- timing
export interface KernelTiming {
  /** tinybench time budget per kernel, ms (default 200) */
  timeMs?: number;
  /** tinybench minimum iterations per kernel (default 5) */
  iterations?: number;
  /** the tokens the shapes were built for, recorded in settings */
  tokens: number;
  openblas?: OpenblasInfo;
  /** one line per kernel as it is timed */
  log?: (line: string) => void;
}

/** Times every case (each disposed once timed), then judges the rows against the run's peaks. */
export async function runKernelCases(cases: Iterable<KernelCase>, o: KernelTiming): Promise<KernelReport> {
  const timeMs = o.timeMs ?? 200, iterations = o.iterations ?? 5, log = o.log ?? (() => {});
  const measured: (Omit<KernelRow, 'peakGflops' | 'peakGbps' | 'bound'> & { flop: number; bytes: number; memoryPeak: boolean })[] = [];
  for (const c of cases) {
    try {
      const bench = new Bench({ time: timeMs, iterations, warmupIterations: 1, warmupTime: 0, throws: true });
      bench.add(c.name, c.run);
      await bench.run();
      const res = bench.tasks[0].result;
      if (res.state !== 'completed') throw new Error(`kernel benchmark ${c.name}: ${res.state}`);
      const ms = res.latency.mean;
      const row: (typeof measured)[number] = {
        section: c.section ?? 'method', name: c.name, ...(c.shape ? { shape: c.shape } : {}), provider: c.provider ?? 'tunebench', ms,
        gflops: c.flop / ms / 1e6, gbps: c.bytes / ms / 1e6, ...(c.tokens ? { tokensPerS: c.tokens / (ms / 1e3) } : {}),
        flop: c.flop, bytes: c.bytes, memoryPeak: c.memoryPeak ?? false, ...(c.device && c.device !== 'cpu' ? { device: c.device } : {}),
      };
      if (c.compare) {
        const ours = measured.find((m) => m.name === c.compare!.of);
        row.maxRelDiff = c.compare.maxRelDiff();
        if (ours && c.provider === 'cublaslt') ours.vsCublasLt = ms / ours.ms;
        else if (ours) ours.vsOpenblas = ms / ours.ms;
      }
      measured.push(row);
      log(`kernel ${c.name}${c.provider ? ` [${c.provider}]` : ''}: ${ms.toFixed(3)} ms, ${row.gflops.toFixed(1)} GFLOP/s, ${row.gbps.toFixed(1)} GB/s`);
    } finally {
      c.dispose();
    }
  }
  // peaks per device (the CPU's when no row names one)
  const onDev = (m: { device?: Device }, d: Device) => (m.device ?? 'cpu') === d;
  const peaks = (d: Device) => {
    const gbps = Math.max(...measured.filter((m) => m.memoryPeak && onDev(m, d)).map((m) => m.gbps));
    const gflops = Math.max(...measured.filter((m) => m.section === 'gemm' && onDev(m, d)).map((m) => m.gflops));
    return { gbps, gflops };
  };
  const peakOf = { cpu: peaks('cpu'), cuda: peaks('cuda') };
  const rows: KernelRow[] = measured.map(({ flop, bytes, memoryPeak, ...m }) => {
    const { gflops: peakGflops, gbps: peakGbps } = peakOf[m.device ?? 'cpu'];
    const balance = peakGflops / peakGbps;  // FLOP per byte where the two roofs meet
    return { ...m, peakGflops, peakGbps, bound: memoryPeak || flop / bytes < balance ? 'memory' : 'compute' };
  });
  return {
    format: KERNEL_REPORT_FORMAT, date: new Date().toISOString(), cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length,
    settings: { timeMs, iterations, threads: native.getThreads(), gemm: gemmKernel(), tokens: o.tokens, streamMiB: (STREAM_ELEMENTS * 4) >> 20 },
    openblas: o.openblas ?? NO_OPENBLAS, rows,
  };
}

export interface KernelBenchOptions extends StepShape, Omit<KernelTiming, 'tokens'> {
  /** more rows (a method's own kernels), timed after the step's */
  extra?: Iterable<KernelCase>;
}

/** A training step's kernels at its shapes, judged against the run's peaks (what a suite records). */
export function measureKernels(o: KernelBenchOptions): Promise<KernelReport> {
  const blas = o.openblas ?? NO_OPENBLAS;
  function* all(): Generator<KernelCase> {
    yield* peakCases(blas);
    yield* stepKernelCases(o, blas);
    if (o.extra) yield* o.extra;
  }
  return runKernelCases(all(), { ...o, tokens: o.batchSize * o.seqLen });
}

/** The report as a text table (what `pnpm bench:kernels` prints). */
export function formatKernelTable(r: KernelReport): string {
  const num = (v: number | undefined, d: number) => (v === undefined || !Number.isFinite(v) ? '' : v.toFixed(d));
  const cols: [string, (x: KernelRow) => string][] = [
    ['kernel', (x) => x.name], ['provider', (x) => x.provider], ['ms', (x) => num(x.ms, 3)], ['GFLOP/s', (x) => num(x.gflops, 1)],
    ['GB/s', (x) => num(x.gbps, 1)], ['tokens/s', (x) => num(x.tokensPerS, 0)], ['bound', (x) => x.bound],
    ['of peak', (x) => { const f = kernelFraction(x); return f === null ? '' : `${(100 * f).toFixed(1)}%`; }],
    ['openblas/ours', (x) => (x.vsOpenblas === undefined ? '' : `${x.vsOpenblas.toFixed(2)}x`)],
    ...(r.rows.some((x) => x.vsCublasLt !== undefined)
      ? [['cublasLt/ours', (x: KernelRow) => (x.vsCublasLt === undefined ? '' : `${x.vsCublasLt.toFixed(2)}x`)] as [string, (x: KernelRow) => string]]
      : []),
    ['max rel diff', (x) => (x.maxRelDiff === undefined ? '' : x.maxRelDiff.toExponential(1))],
  ];
  const cells = r.rows.map((x) => cols.map(([, f]) => f(x)));
  const widths = cols.map(([h], i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((s, i) => (i === 0 ? s.padEnd(widths[i]) : s.padStart(widths[i]))).join('  ');
  const peak = r.rows.find((x) => x.device === undefined) ?? r.rows[0];
  const cudaPeak = r.rows.find((x) => x.device === 'cuda');
  const ratios = r.rows.filter((x) => x.vsOpenblas !== undefined).map((x) => x.vsOpenblas!);
  const geo = ratios.length ? Math.exp(ratios.reduce((s, x) => s + Math.log(x), 0) / ratios.length) : undefined;
  return [
    line(cols.map(([h]) => h)), ...cells.map(line),
    peak ? `peaks of this run: ${num(peak.peakGflops, 1)} GFLOP/s (best dense GEMM), ${num(peak.peakGbps, 1)} GB/s (stream)` : 'no rows',
    ...(cudaPeak ? [`CUDA peaks of this run: ${num(cudaPeak.peakGflops, 1)} GFLOP/s (best CUDA GEMM), ${num(cudaPeak.peakGbps, 1)} GB/s (device copy)`] : []),
    ...(geo === undefined ? [] : [`OpenBLAS time / ours over ${ratios.length} GEMMs: geometric mean ${geo.toFixed(2)}x, min ${Math.min(...ratios).toFixed(2)}x, max ${Math.max(...ratios).toFixed(2)}x`]),
  ].join('\n');
}
