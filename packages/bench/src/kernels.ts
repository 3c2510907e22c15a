// Kernel microbenchmarks of a suite, timed with tinybench (time and
// iterations set explicitly) at the suite's own shapes: dense GEMM (f32 and
// bf16 weights), the fused LoRA forward and backward, causal attention
// forward and backward. Each row gives GFLOP/s and GB/s (compulsory traffic:
// every operand read once, every output written once) and is judged against
// a peak measured in the same run, roofline style: the compute peak is the
// best GEMM GFLOP/s of the run (a 1024^3 GEMM is added for it), the
// bandwidth peak that of y += a*x over arrays far larger than the caches; a
// kernel whose FLOP per byte is below the machine balance (peak GFLOP/s over
// peak GB/s) is memory-bound and compared with the bandwidth peak, the
// others with the compute peak. NF4 and INT-N GEMMs join with their packages.
import { Bench } from 'tinybench';
import {
  type LlamaConfig, Rng, Tensor, addInPlace, attentionBackward, attentionForward, gemmKernel, headDim, loraBackward, loraForward, matmul, native,
} from '@tunebench/core';
import type { KernelCase } from './methods.js';
import type { KernelSpeedRow } from './report/html.js';

export interface KernelBenchOptions {
  cfg: LlamaConfig;
  /** rows x sequence length of a training step */
  batchSize: number;
  seqLen: number;
  /** LoRA rank for the fused LoRA rows */
  loraRank: number;
  /** tinybench time budget per kernel, ms (default 200) */
  timeMs?: number;
  /** tinybench minimum iterations per kernel (default 5) */
  iterations?: number;
  /** the methods' own kernel rows (e.g. the NF4 GEMM), timed after the dense ones */
  extra?: KernelCase[];
  log?: (line: string) => void;
}

export interface KernelReport {
  rows: KernelSpeedRow[];
  /** how they were measured */
  settings: { timeMs: number; iterations: number; threads: number; gemm: string; tokens: number; streamMiB: number };
}

/** t filled with uniform values in [-scale, scale), seeded. */
function seeded(t: Tensor, seed: number, scale = 1): Tensor {
  const v = t.data() as Float32Array, rng = new Rng(seed);
  for (let i = 0; i < v.length; i++) v[i] = (rng.next() * 2 - 1) * scale;
  return t;
}

/** Measures the suite's kernels; every tensor made here is disposed before it returns. */
export async function measureKernels(o: KernelBenchOptions): Promise<KernelReport> {
  const timeMs = o.timeMs ?? 200, iterations = o.iterations ?? 5;
  const log = o.log ?? (() => {});
  const cfg = o.cfg, H = cfg.hiddenSize, I = cfg.intermediateSize, N = o.batchSize * o.seqLen, r = o.loraRank;
  const owned: Tensor[] = [];
  const keep = (t: Tensor) => { owned.push(t); return t; };
  const measured: { name: string; ms: number; flop: number; bytes: number; peakRole?: 'compute' | 'memory' }[] = [];

  async function time(name: string, flop: number, bytes: number, fn: () => void, peakRole?: 'compute' | 'memory'): Promise<void> {
    const bench = new Bench({ time: timeMs, iterations, warmupIterations: 1, warmupTime: 0, throws: true });
    bench.add(name, fn);
    await bench.run();
    const res = bench.tasks[0].result;
    if (res.state !== 'completed') throw new Error(`kernel benchmark ${name}: ${res.state}`);
    const ms = res.latency.mean;
    measured.push({ name, ms, flop, bytes, peakRole });
    log(`kernel ${name}: ${ms.toFixed(3)} ms, ${(flop / ms / 1e6).toFixed(1)} GFLOP/s, ${(bytes / ms / 1e6).toFixed(1)} GB/s`);
  }

  try {
    // the bandwidth peak: y += a*x over two 64 MiB arrays, 12 bytes per element (read x and y, write y)
    const streamN = 16 << 20;
    const sx = keep(seeded(Tensor.zeros([streamN]), 1)), sy = keep(seeded(Tensor.zeros([streamN]), 2));
    await time(`stream y += a*x (${(streamN * 4) >> 20} MiB arrays)`, 2 * streamN, 12 * streamN, () => { addInPlace(sy, sx, 1e-7); }, 'memory');

    // the compute peak candidate: a square GEMM
    const S = 1024;
    const ga = keep(seeded(Tensor.zeros([S, S]), 3)), gb = keep(seeded(Tensor.zeros([S, S]), 4, 0.05)), gc = keep(Tensor.zeros([S, S]));
    await time(`gemm ${S}x${S}x${S}`, 2 * S ** 3, 12 * S * S, () => { matmul(ga, gb, { out: gc }); });

    // the suite's linear layers: x [N, H] . W^T, W [I, H]
    const x = keep(seeded(Tensor.zeros([N, H]), 5)), W = keep(seeded(Tensor.zeros([I, H]), 6, 0.05)), y = keep(Tensor.zeros([N, I]));
    const Wb = keep(Tensor.from(W.data() as Float32Array, W.shape, { dtype: 'bf16', category: 'frozen' }));
    const gemmFlop = 2 * N * I * H;
    await time(`gemm x.W^T ${N}x${I}x${H} f32 W`, gemmFlop, 4 * (N * H + I * H + N * I), () => { matmul(x, W, { transB: true, out: y }); });
    await time(`gemm x.W^T ${N}x${I}x${H} bf16 W`, gemmFlop, 4 * (N * H + N * I) + 2 * I * H, () => { matmul(x, Wb, { transB: true, out: y }); });

    // fused LoRA over the bf16 base: y = x W^T + s (x A^T) B^T, and its backward
    const A = keep(seeded(Tensor.zeros([r, H]), 7, 0.05)), B = keep(seeded(Tensor.zeros([I, r]), 8, 0.05)), u = keep(Tensor.zeros([N, r]));
    const dy = keep(seeded(Tensor.zeros([N, I]), 9)), dx = keep(Tensor.zeros([N, H]));
    const dA = keep(Tensor.zeros([r, H])), dB = keep(Tensor.zeros([I, r]));
    const loraBytes = 4 * (N * H + N * I + N * r + r * H + I * r) + 2 * I * H;
    await time(`lora forward r${r} ${N}x${I}x${H}`, gemmFlop + 2 * N * r * (H + I), loraBytes, () => { loraForward(x, x, Wb, A, B, 2, { y, u }); });
    await time(`lora backward r${r} ${N}x${I}x${H}`, gemmFlop + 4 * N * r * (H + I), loraBytes + 4 * (r * H + I * r), () => {
      loraBackward(dy, x, Wb, A, B, u, 2, { dxInto: dx, dA, dB });
    });

    // causal attention at the suite's heads and sequence length
    const Bt = o.batchSize, T = o.seqLen, Hq = cfg.numHeads, Hkv = cfg.numKvHeads, D = headDim(cfg);
    const q = keep(seeded(Tensor.zeros([Bt, T, Hq, D]), 10)), k = keep(seeded(Tensor.zeros([Bt, T, Hkv, D]), 11)), v = keep(seeded(Tensor.zeros([Bt, T, Hkv, D]), 12));
    const out = keep(Tensor.zeros([Bt, T, Hq, D])), lse = keep(Tensor.zeros([Bt, Hq, T])), dout = keep(seeded(Tensor.zeros([Bt, T, Hq, D]), 13));
    const dq = keep(Tensor.zeros([Bt, T, Hq, D])), dk = keep(Tensor.zeros([Bt, T, Hkv, D])), dv = keep(Tensor.zeros([Bt, T, Hkv, D]));
    const pairs = (Bt * Hq * D * T * (T + 1)) / 2;
    const qBytes = 4 * Bt * T * Hq * D, kvBytes = 4 * Bt * T * Hkv * D, lseBytes = 4 * Bt * Hq * T;
    await time(`attention forward B${Bt} T${T} Hq${Hq} Hkv${Hkv} D${D}`, 4 * pairs, 2 * qBytes + 2 * kvBytes + lseBytes, () => { attentionForward(q, k, v, { out, lse }); });
    await time(`attention backward B${Bt} T${T} Hq${Hq} Hkv${Hkv} D${D}`, 10 * pairs, 4 * qBytes + 4 * kvBytes + lseBytes, () => {
      attentionBackward(dout, q, k, v, out, lse, { dq, dk, dv });
    });
    for (const c of o.extra ?? []) await time(c.name, c.flop, c.bytes, c.run);
  } finally {
    for (const t of owned) t.dispose();
    for (const c of o.extra ?? []) c.dispose();
  }

  const gflops = (m: (typeof measured)[number]) => m.flop / m.ms / 1e6;
  const gbps = (m: (typeof measured)[number]) => m.bytes / m.ms / 1e6;
  const peakGbps = Math.max(...measured.filter((m) => m.peakRole === 'memory').map(gbps));
  const peakGflops = Math.max(...measured.filter((m) => m.name.startsWith('gemm')).map(gflops));
  const balance = peakGflops / peakGbps;  // FLOP per byte where the two roofs meet
  const rows: KernelSpeedRow[] = measured.map((m) => ({
    name: m.name, ms: m.ms, gflops: gflops(m), gbps: gbps(m), peakGflops, peakGbps,
    bound: m.peakRole === 'memory' || m.flop / m.bytes < balance ? 'memory' : 'compute',
  }));
  return { rows, settings: { timeMs, iterations, threads: native.getThreads(), gemm: gemmKernel(), tokens: N, streamMiB: 64 } };
}
