// Many adapters over one base: tokens/s and peak memory of serving a batch
// whose rows each name their LoRA adapter, in ONE forward pass over the base
// weights (LoraLinear.setRowAdapters), against one forward per adapter over
// that adapter's rows (the active adapter switched between passes). Both
// compute the same thing, so their summed losses must agree; the run fails
// if they do not. A base-only pass (no adapter) is shown for reference.
// Writes reports/kernels/multi_adapter.json.
//
//   node --import tsx bench/multi_adapter.ts
//   node --import tsx bench/multi_adapter.ts --help
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  LlamaModel, Rng, Tensor, gemmKernel, median, memory, native, parameterCount, preset, intOption, parseCli,
} from '@tunebench/core';
import { loraLayers, prepareLora, setActiveAdapter } from '../src/index.js';

const HELP = `Many LoRA adapters over one frozen base: one mixed pass vs one pass per adapter.

Usage: node --import tsx bench/multi_adapter.ts [options]

Options:
  --rows N         batch rows (sequences) (default 32)
  --seq N          tokens per row (default 128)
  --adapters N     adapters over the base; row i uses adapter i mod N (default 8)
  --iterations N   timed batches per mode, after one untimed (default 10)
  --out FILE       JSON results (default <repo>/reports/kernels/multi_adapter.json)
  -h, --help       this text

Model: preset 'small', frozen bf16 base; every adapter is LoRA r 8, alpha 16
on all linear layers (A as PEFT initialises it, B random so that adapters
differ), held for inference (no gradients). Tokens are bytes of this
repository's docs. Modes, each model.forward(..., { training: false }):
  mixed      one pass over all rows; each LoRA layer applies each row's
             adapter to that row (setRowAdapters, tokensPerRow = seq)
  separate   for each adapter: make it active, forward only its rows
  base only  one pass, no adapter (reference)
The modes take turns batch by batch (one untimed round first). tokens/s =
rows*seq / median batch time; peak = the allocator's highest total during a
batch (memory.resetPeak before each); transient = peak minus what was live
when the batch started (weights, adapters, the token batch).`;

const optionSpec = {
  rows: { type: 'string' },
  seq: { type: 'string' },
  adapters: { type: 'string' },
  iterations: { type: 'string' },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;
const opt = parseCli(optionSpec, HELP);

const rows = intOption('rows', opt.rows, 32), T = intOption('seq', opt.seq, 128);
const nAdapters = intOption('adapters', opt.adapters, 8), iterations = intOption('iterations', opt.iterations, 10);
const r = 8, alpha = 16, seed = 1234;
const cfg = preset('small');
if (T > cfg.maxPositionEmbeddings) { console.error(`--seq ${T} exceeds the preset's maxPositionEmbeddings ${cfg.maxPositionEmbeddings}`); process.exit(2); }
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..', '..');

console.log(`tunebench multi-adapter benchmark — ${new Date().toISOString()}`);
console.log(`cpu: ${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}; kernel threads: ${native.getThreads()}; GEMM micro-kernel: ${gemmKernel()}`);
console.log(`model: preset 'small' (${parameterCount(cfg).toLocaleString('en-US')} parameters), frozen bf16; `
  + `${nAdapters} adapters, all-linear, r ${r}, alpha ${alpha}`);
console.log(`batch: ${rows} rows x ${T} tokens = ${rows * T} tokens; 1 untimed + ${iterations} timed batches per mode, modes interleaved`);

// ------------------------------------------------------------ model, adapters
const model = LlamaModel.init(cfg, { seed, dtype: 'bf16', trainable: false });
const names = Array.from({ length: nAdapters }, (_, k) => `adapter${k}`);
const rng = new Rng(seed + 1);
for (const [k, name] of names.entries()) {
  prepareLora(model, { r, alpha, targets: 'all-linear', seed: seed + 10 + k }, name);
  for (const l of loraLayers(model)) {
    const a = l.adapter(name);
    const bv = a.B.value.data() as Float32Array;
    for (let i = 0; i < bv.length; i++) bv[i] = (2 * rng.next() - 1) * 0.05;
    // inference only: drop the gradients prepareLora allocated
    for (const p of [a.A, a.B]) { p.grad?.dispose(); p.grad = null; }
  }
}
const layers = loraLayers(model);

// ------------------------------------------------------------------- tokens
const text = Buffer.concat(['docs/ARCHITECTURE.md', 'README.md'].map((f) => readFileSync(join(repoRoot, f))));
const rowAdapter = Array.from({ length: rows }, (_, i) => names[i % nAdapters]);
const idv = new Int32Array(rows * T), tgv = new Int32Array(rows * T);
for (let i = 0; i < rows; i++) {
  const start = (i * (T + 1) * 7) % text.length;  // spread the rows over the text
  for (let t = 0; t < T; t++) {
    idv[i * T + t] = text[(start + t) % text.length];
    tgv[i * T + t] = text[(start + t + 1) % text.length];
  }
}
const toBatch = (rowIdx: number[]) => {
  const ids = new Int32Array(rowIdx.length * T), targets = new Int32Array(rowIdx.length * T);
  rowIdx.forEach((row, j) => { ids.set(idv.subarray(row * T, (row + 1) * T), j * T); targets.set(tgv.subarray(row * T, (row + 1) * T), j * T); });
  return { ids: Tensor.from(ids, [rowIdx.length, T], { dtype: 'i32' }), targets: Tensor.from(targets, [rowIdx.length, T], { dtype: 'i32' }) };
};
const full = toBatch(Array.from({ length: rows }, (_, i) => i));
const perAdapter = names.map((name) => ({ name, batch: toBatch(rowAdapter.flatMap((a, i) => (a === name ? [i] : []))) }))
  .filter((p) => p.batch.ids.shape[0] > 0);

// -------------------------------------------------------------------- modes
// The modes take turns batch by batch, so a slow spell on a shared machine
// hits all of them alike; figures are the median batch.
interface Mode {
  mode: string; basePasses: number;
  setup: () => void; once: () => { lossSum: number; count: number }; teardown: () => void;
  ms: number[]; peak: number; transient: number; peakByCategory: Record<string, number>; lossSum: number; count: number;
}
const mode = (name: string, basePasses: number, once: Mode['once'], setup: () => void, teardown: () => void): Mode => ({
  mode: name, basePasses, setup, once, teardown, ms: [], peak: 0, transient: 0, peakByCategory: {}, lossSum: 0, count: 0,
});
const modes: Mode[] = [
  mode('mixed (one pass)', 1, () => model.forward(full, { training: false }),
    () => { for (const l of layers) l.setRowAdapters(rowAdapter, T); },
    () => { for (const l of layers) l.setRowAdapters(null); }),
  mode(`separate (${perAdapter.length} passes)`, perAdapter.length, () => {
    let lossSum = 0, count = 0;
    for (const p of perAdapter) {
      setActiveAdapter(model, p.name);
      const res = model.forward(p.batch, { training: false });
      lossSum += res.lossSum; count += res.count;
    }
    return { lossSum, count };
  }, () => {}, () => setActiveAdapter(model, names[0])),
  mode('base only (no adapter)', 1, () => model.forward(full, { training: false }),
    () => setActiveAdapter(model, null), () => setActiveAdapter(model, names[0])),
];
for (let it = 0; it <= iterations; it++) {  // it = 0: untimed
  for (const m of modes) {
    m.setup();
    memory.resetPeak();
    const liveBefore = memory.snapshot().cpu.liveTotal;
    const t0 = performance.now();
    const res = m.once();
    const ms = performance.now() - t0;
    const snap = memory.snapshot().cpu;
    m.teardown();
    if (it === 0) continue;
    m.ms.push(ms);
    m.lossSum = res.lossSum; m.count = res.count;
    if (snap.peakTotal > m.peak) { m.peak = snap.peakTotal; m.peakByCategory = { ...snap.peak }; }
    m.transient = Math.max(m.transient, snap.peakTotal - liveBefore);
  }
}
const results = modes.map((m) => ({
  mode: m.mode, basePasses: m.basePasses, lossSum: m.lossSum, count: m.count,
  tokensPerS: (rows * T) / (median(m.ms) / 1e3), msMedian: median(m.ms), msMin: Math.min(...m.ms), msAll: m.ms,
  peakBytes: m.peak, transientBytes: m.transient, peakByCategory: m.peakByCategory,
}));
const [mixed, separate, baseOnly] = results;

// ------------------------------------------------------------------- report
const relDiff = Math.abs(mixed.lossSum - separate.lossSum) / Math.abs(separate.lossSum);
const MiB = (b: number) => (b / 2 ** 20).toFixed(2);
const table = results.map((m) => [
  m.mode, String(m.basePasses), m.tokensPerS.toFixed(0), m.msMedian.toFixed(1), m.msMin.toFixed(1),
  MiB(m.peakBytes), MiB(m.transientBytes), (m.lossSum / m.count).toFixed(6),
]);
const header = ['mode', 'base passes', 'tokens/s', 'ms/batch', 'min ms', 'peak MiB', 'transient MiB', 'loss/token'];
const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
const line = (row: string[]) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(`\n${rows} rows x ${T} tokens, ${nAdapters} adapters (row i -> adapter i mod ${nAdapters}), median of ${iterations} batches`);
console.log(line(header));
for (const row of table) console.log(line(row));
console.log(`\nmixed / separate: ${(mixed.tokensPerS / separate.tokensPerS).toFixed(2)}x tokens/s, `
  + `${(mixed.transientBytes / separate.transientBytes).toFixed(2)}x transient memory `
  + `(separate holds 1/${perAdapter.length} of the tokens per pass); mixed vs base only: `
  + `${(mixed.tokensPerS / baseOnly.tokensPerS).toFixed(2)}x tokens/s, +${MiB(mixed.transientBytes - baseOnly.transientBytes)} MiB transient`);
console.log(`summed loss: mixed ${mixed.lossSum.toPrecision(10)}, separate ${separate.lossSum.toPrecision(10)}, `
  + `relative difference ${relDiff.toExponential(2)} (${relDiff <= 1e-5 ? 'ok' : 'MISMATCH'}, limit 1e-5)`);

const outPath = resolve(opt.out ?? join(repoRoot, 'reports', 'kernels', 'multi_adapter.json'));
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify({
  date: new Date().toISOString(),
  cpu: { model: cpus()[0]?.model ?? 'unknown', cores: cpus().length, threads: native.getThreads(), gemmKernel: gemmKernel() },
  preset: 'small', config: cfg, baseDtype: 'bf16', adapters: nAdapters, r, alpha, targets: 'all-linear',
  rows, seq: T, iterations, rowAdapters: rowAdapter,
  modes: results,
  speedupMixedVsSeparate: mixed.tokensPerS / separate.tokensPerS,
  lossRelDiff: relDiff, lossCheck: relDiff <= 1e-5 ? 'ok' : 'mismatch',
}, null, 2) + '\n');
console.log(`\nwrote ${outPath}`);

for (const t of [full.ids, full.targets, ...perAdapter.flatMap((p) => [p.batch.ids, p.batch.targets])]) t.dispose();
model.dispose();
if (relDiff > 1e-5) process.exit(1);
