// Kernel benchmark: GEMM GFLOP/s at the model presets' shapes (side by side
// with OpenBLAS sgemm when it is installed), attention and cross-entropy
// throughput. Prints tables; writes reports/kernels/kernels.json.
//
//   pnpm bench                       all sections
//   pnpm bench -- --quick            fewer shapes, shorter timing
//   pnpm bench -- --help
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';
import {
  Tensor, relativeError, attentionBackward, attentionForward, crossEntropyBackward, crossEntropyForward, gemmKernel, matmul, native, intOption, parseCli,
} from '../src/index.js';

const HELP = `Kernel benchmark for the tunebench native core (CPU).

Usage: pnpm bench [-- options]

Options:
  --only LIST        comma-separated sections: gemm, attention, xent (default: all)
  --quick            hidden sizes 256 and 1024 only, shorter timing (a smoke run)
  --time MS          tinybench time budget per task in ms (default 500; quick 150)
  --iterations N     tinybench minimum iterations per task (default 3)
  --tokens N         tokens per GEMM (the M of activations; default 4096)
  --threads N        kernel threads (default: all cores)
  --no-openblas      skip the OpenBLAS comparison
  --openblas-core C  set OPENBLAS_CORETYPE=C before OpenBLAS loads (e.g. SkylakeX
                     for its AVX-512 kernel; default: the environment's choice)
  --out FILE         JSON results (default reports/kernels/kernels.json)
  -h, --help         this text

OpenBLAS is loaded at run time when installed (Debian: apt-get install
libopenblas-dev); OPENBLAS_CORETYPE in the environment picks its kernel, as it
does for any program, and the core it used is printed.

Example: pnpm bench -- --only gemm --time 1000`;

const optionSpec = {
  only: { type: 'string' },
  quick: { type: 'boolean', default: false },
  time: { type: 'string' },
  iterations: { type: 'string', default: '3' },
  tokens: { type: 'string', default: '4096' },
  threads: { type: 'string' },
  'no-openblas': { type: 'boolean', default: false },
  'openblas-core': { type: 'string' },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;
const opt = parseCli(optionSpec, HELP);

const sections = new Set((opt.only ?? 'gemm,attention,xent').split(',').map((s) => s.trim()).filter(Boolean));
for (const s of sections) {
  if (!['gemm', 'attention', 'xent'].includes(s)) { console.error(`--only: unknown section '${s}' (gemm, attention, xent)`); process.exit(2); }
}
const timeMs = intOption('time', opt.time, opt.quick ? 150 : 500);
const iterations = intOption('iterations', opt.iterations, 3);
const tokens = intOption('tokens', opt.tokens, 4096);
if (opt.threads) native.setThreads(intOption('threads', opt.threads, 1));

interface Row { section: string; name: string; shape: string; provider: string; ms: number; gflops?: number; tokensPerS?: number; ratio?: number; maxRelDiff?: number }
const rows: Row[] = [];

async function time(name: string, fn: () => void): Promise<number> {
  const bench = new Bench({ time: timeMs, iterations, warmupIterations: 1, warmupTime: 0, throws: true });
  bench.add(name, fn);
  await bench.run();
  const r = bench.tasks[0].result;
  if (r.state !== 'completed') throw new Error(`benchmark task ${name} did not complete (${r.state})`);
  return r.latency.mean; // ms
}

function fill(t: Tensor, seed: number, scale = 1): void {
  const v = t.data() as Float32Array;
  let s = seed >>> 0 || 1;
  for (let i = 0; i < v.length; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; v[i] = ((s / 4294967296) * 2 - 1) * scale; }
}


const fmt = (x: number | undefined, d = 1) => (x === undefined ? '' : x.toFixed(d));
function printTable(title: string, rs: Row[], cols: [string, (r: Row) => string][]): void {
  console.log(`\n${title}`);
  const widths = cols.map(([h, f]) => Math.max(h.length, ...rs.map((r) => f(r).length)));
  console.log(cols.map(([h], i) => h.padStart(widths[i])).join('  '));
  for (const r of rs) console.log(cols.map(([, f], i) => f(r).padStart(widths[i])).join('  '));
}

// ---------------------------------------------------------------- provenance
type OpenblasInfo = { available: boolean; path: string; config: string; core: string; error: string };
const nat = native as unknown as {
  openblas_info(): OpenblasInfo; openblas_set_threads(n: number): void;
  openblas_sgemm(...args: unknown[]): void;
};
const threads = native.getThreads();
// OpenBLAS reads OPENBLAS_CORETYPE when it is loaded, which happens below.
if (opt['openblas-core']) process.env.OPENBLAS_CORETYPE = opt['openblas-core'];
const blas: OpenblasInfo = opt['no-openblas'] ? { available: false, path: '', config: '', core: '', error: 'skipped (--no-openblas)' } : nat.openblas_info();
if (blas.available) nat.openblas_set_threads(threads);
console.log(`tunebench kernel benchmark — ${new Date().toISOString()}`);
console.log(`cpu: ${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}; kernel threads: ${threads}; GEMM micro-kernel: ${gemmKernel()}`);
console.log(`openblas: ${blas.available ? `${blas.config} (core ${blas.core}, ${threads} threads)` : blas.error}`);
console.log(`tinybench: time ${timeMs} ms, at least ${iterations} iterations per task`);

// ---------------------------------------------------------------------- GEMM
// Linear-layer shapes of a LLaMA block at hidden H with intermediate
// I = 8H/3 rounded up to 256 (H = 2048 gives TinyLlama-1.1B's 5632).
async function gemmSection(): Promise<void> {
  const hiddens = opt.quick ? [256, 1024] : [256, 512, 1024, 2048];
  const T = tokens;
  const gemmRows: Row[] = [];
  for (const H of hiddens) {
    const I = Math.ceil((8 * H) / 3 / 256) * 256;
    const cases: { name: string; M: number; N: number; K: number; tA: boolean; tB: boolean }[] = [
      { name: 'attn proj fwd  x·Wᵀ', M: T, N: H, K: H, tA: false, tB: true },
      { name: 'mlp up fwd     x·Wᵀ', M: T, N: I, K: H, tA: false, tB: true },
      { name: 'mlp down fwd   h·Wᵀ', M: T, N: H, K: I, tA: false, tB: true },
      { name: 'mlp down dX    dY·W', M: T, N: I, K: H, tA: false, tB: false },
      { name: 'mlp down dW    dYᵀ·h', M: H, N: I, K: T, tA: true, tB: false },
    ];
    for (const c of cases) {
      const a = Tensor.zeros(c.tA ? [c.K, c.M] : [c.M, c.K]), b = Tensor.zeros(c.tB ? [c.N, c.K] : [c.K, c.N]);
      fill(a, 1), fill(b, 2, 0.05);
      const out = Tensor.zeros([c.M, c.N]);
      const flop = 2 * c.M * c.N * c.K;
      const shape = `${c.M}x${c.N}x${c.K}`;
      const ms = await time(`ours ${c.name} ${shape}`, () => { matmul(a, b, { transA: c.tA, transB: c.tB, out }); });
      const ours: Row = { section: 'gemm', name: `H=${H} ${c.name}`, shape, provider: 'tunebench', ms, gflops: flop / ms / 1e6 };
      gemmRows.push(ours);
      if (blas.available) {
        const ref = Tensor.zeros([c.M, c.N]);
        const lda = a.shape[1], ldb = b.shape[1];
        const call = () => nat.openblas_sgemm(c.tA, c.tB, c.M, c.N, c.K, 1, a.handle, lda, b.handle, ldb, 0, ref.handle, c.N);
        const bms = await time(`openblas ${c.name} ${shape}`, call);
        const diff = relativeError(out.data() as Float32Array, ref.data() as Float32Array);
        gemmRows.push({ section: 'gemm', name: `H=${H} ${c.name}`, shape, provider: `openblas(${blas.core})`, ms: bms, gflops: flop / bms / 1e6, maxRelDiff: diff });
        ours.ratio = bms / ms;
        ours.maxRelDiff = diff;
        ref.dispose();
      }
      // The same forward with the weight stored bf16 (frozen base weights).
      if (c.tB && !c.tA) {
        const bb = Tensor.zeros(b.shape, { dtype: 'bf16', category: 'frozen' });
        const src = b.data() as Float32Array, dst = bb.data() as Uint16Array;
        const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
        for (let i = 0; i < dst.length; i++) dst[i] = u[i] >>> 16;
        const bms = await time(`ours bf16 ${c.name} ${shape}`, () => { matmul(a, bb, { transB: true, out }); });
        gemmRows.push({ section: 'gemm', name: `H=${H} ${c.name} (bf16 W)`, shape, provider: 'tunebench', ms: bms, gflops: flop / bms / 1e6 });
        bb.dispose();
      }
      a.dispose(); b.dispose(); out.dispose();
    }
  }
  rows.push(...gemmRows);
  printTable('GEMM (C = op(A)·op(B), f32 compute)', gemmRows, [
    ['case', (r) => r.name], ['M x N x K', (r) => r.shape], ['provider', (r) => r.provider],
    ['ms', (r) => fmt(r.ms, 2)], ['GFLOP/s', (r) => fmt(r.gflops)],
    ['ours/openblas', (r) => (r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`)],
    ['max rel diff', (r) => (r.maxRelDiff === undefined ? '' : r.maxRelDiff.toExponential(1))],
  ]);
  const ratios = gemmRows.filter((r) => r.ratio !== undefined).map((r) => r.ratio!);
  if (ratios.length) {
    const geo = Math.exp(ratios.reduce((s, r) => s + Math.log(r), 0) / ratios.length);
    console.log(`GEMM vs OpenBLAS (${blas.core}): geometric mean ${geo.toFixed(2)}x, min ${Math.min(...ratios).toFixed(2)}x, max ${Math.max(...ratios).toFixed(2)}x over ${ratios.length} shapes`);
  }
}

// ----------------------------------------------------------------- attention
// Causal GQA attention, D = 64. FLOPs counted for the causal half only:
// forward 2 matmuls (QKᵀ, PV) = 4·B·Hq·D·T(T+1)/2; backward recomputes QKᵀ and
// does 4 more (dV, dP, dQ, dK) = 10·B·Hq·D·T(T+1)/2.
async function attentionSection(): Promise<void> {
  const configs = opt.quick ? [{ B: 2, T: 512, Hq: 8, Hkv: 2, D: 64 }] : [
    { B: 2, T: 2048, Hq: 16, Hkv: 4, D: 64 },
    { B: 4, T: 1024, Hq: 8, Hkv: 8, D: 64 },
  ];
  const attRows: Row[] = [];
  for (const { B, T, Hq, Hkv, D } of configs) {
    const q = Tensor.zeros([B, T, Hq, D]), k = Tensor.zeros([B, T, Hkv, D]), v = Tensor.zeros([B, T, Hkv, D]);
    fill(q, 3), fill(k, 4), fill(v, 5);
    const pairs = (B * Hq * D * T * (T + 1)) / 2;
    const shape = `B${B} T${T} Hq${Hq} Hkv${Hkv} D${D}`;
    let fwd = attentionForward(q, k, v);
    const dout = Tensor.zeros([B, T, Hq, D]);
    fill(dout, 6);
    const fms = await time(`attention fwd ${shape}`, () => { fwd.out.dispose(); fwd.lse.dispose(); fwd = attentionForward(q, k, v); });
    const bms = await time(`attention bwd ${shape}`, () => {
      const g = attentionBackward(dout, q, k, v, fwd.out, fwd.lse);
      g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
    });
    attRows.push({ section: 'attention', name: 'forward', shape, provider: 'tunebench', ms: fms, gflops: (4 * pairs) / fms / 1e6, tokensPerS: (B * T) / (fms / 1e3) });
    attRows.push({ section: 'attention', name: 'backward', shape, provider: 'tunebench', ms: bms, gflops: (10 * pairs) / bms / 1e6, tokensPerS: (B * T) / (bms / 1e3) });
    for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
  }
  rows.push(...attRows);
  printTable('Causal attention (flash-style tiles, online softmax)', attRows, [
    ['pass', (r) => r.name], ['shape', (r) => r.shape], ['ms', (r) => fmt(r.ms, 2)],
    ['GFLOP/s', (r) => fmt(r.gflops)], ['tokens/s', (r) => fmt(r.tokensPerS, 0)],
  ]);
}

// ------------------------------------------------------------- cross-entropy
// Fused LM head + cross-entropy, chunked over tokens. Forward is one logits
// GEMM (2·N·V·C); backward recomputes it and adds dH and dW (3 GEMMs).
async function xentSection(): Promise<void> {
  const configs = opt.quick ? [{ N: 1024, C: 512, V: 8192 }] : [
    { N: tokens, C: 512, V: 32000 },
    { N: tokens, C: 2048, V: 32000 },
  ];
  const ceRows: Row[] = [];
  for (const { N, C, V } of configs) {
    const h = Tensor.zeros([N, C]), w = Tensor.zeros([V, C]);
    fill(h, 7), fill(w, 8, 0.05);
    const targets = Tensor.zeros([N], { dtype: 'i32' });
    const tv = targets.data() as Int32Array;
    for (let i = 0; i < N; i++) tv[i] = (i * 7919) % V;
    const dw = Tensor.zeros([V, C], { category: 'grad' });
    const shape = `N${N} C${C} V${V}`;
    let f = crossEntropyForward(h, w, targets);
    const fms = await time(`xent fwd ${shape}`, () => { f.losses.dispose(); f.lse.dispose(); f = crossEntropyForward(h, w, targets); });
    const bms = await time(`xent bwd ${shape}`, () => { crossEntropyBackward(h, w, targets, f.lse, 1 / N, { dw }).dh.dispose(); });
    const gemm = 2 * N * V * C;
    ceRows.push({ section: 'xent', name: 'forward', shape, provider: 'tunebench', ms: fms, gflops: gemm / fms / 1e6, tokensPerS: N / (fms / 1e3) });
    ceRows.push({ section: 'xent', name: 'backward (dH, dW)', shape, provider: 'tunebench', ms: bms, gflops: (3 * gemm) / bms / 1e6, tokensPerS: N / (bms / 1e3) });
    for (const t of [h, w, targets, dw, f.losses, f.lse]) t.dispose();
  }
  rows.push(...ceRows);
  printTable('Cross-entropy fused with the LM head (no N×V logits buffer)', ceRows, [
    ['pass', (r) => r.name], ['shape', (r) => r.shape], ['ms', (r) => fmt(r.ms, 2)],
    ['GFLOP/s', (r) => fmt(r.gflops)], ['tokens/s', (r) => fmt(r.tokensPerS, 0)],
  ]);
}

if (sections.has('gemm')) await gemmSection();
if (sections.has('attention')) await attentionSection();
if (sections.has('xent')) await xentSection();

const here = dirname(fileURLToPath(import.meta.url));
const outPath = resolve(opt.out ?? join(here, '..', '..', '..', 'reports', 'kernels', 'kernels.json'));
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify({
  date: new Date().toISOString(), cpu: cpus()[0]?.model, cores: cpus().length, threads, gemmKernel: gemmKernel(),
  openblas: blas, tinybench: { timeMs, iterations }, rows,
}, null, 2) + '\n');
console.log(`\nwrote ${outPath}`);
