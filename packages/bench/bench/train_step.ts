// Training-throughput benchmark: tokens/s of one full fine-tuning step
// (forward, backward, AdamW over every parameter) of a model preset on the
// CPU, beside the bench's peers redoing the same steps: PyTorch
// (src/peers/pytorch.ts, peers/torch_train.py) in several BLAS/thread
// settings, and TensorFlow.js (src/peers/tfjs.ts). Everything goes through
// the peers' one path: capturePeerInput takes the initial weights, the
// batches and the learning rates; ours trains on exactly those batches.
// Prints the phase split, peak memory by category, a comparison table and
// the per-step losses (they must agree: same model, same numerics); writes
// reports/kernels/train_step.json.
//
//   pnpm --filter @tunebench/bench bench:train
//   pnpm --filter @tunebench/bench bench:train -- --help
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CATEGORIES, type LlamaConfig, LlamaModel, Rng, Tensor, TokenRows, adamwStep, gemmKernel, intOption, memory, modelTensorShapes, native, parameterCount,
  parseCli, preset, trainable,
} from '@tunebench/core';
import { type PeerOutcome, capturePeerInput, runTfjsPeer, runTorchPeer, torchUnavailable } from '../src/index.js';

const HELP = `Training-step throughput: tunebench beside its PyTorch and TensorFlow.js peers, all on the CPU.

Usage: pnpm --filter @tunebench/bench bench:train [-- options]

Options:
  --preset NAME      model preset (default small)
  --batch N          sequences per step (default 8)
  --seq N            tokens per sequence (default 256)
  --steps N          timed steps (default 10)
  --warmup N         untimed steps first (default 2)
  --threads N        tunebench kernel threads (default: all cores)
  --torch-threads L  comma-separated torch.set_num_threads values, one set of
                     torch runs each (default 2,1)
  --python PATH      Python with torch (default: the peer's, TUNEBENCH_PYTHON or python3)
  --no-torch         skip PyTorch
  --no-tfjs          skip TensorFlow.js
  --tfjs-steps N     timed TensorFlow.js steps after one warm-up (default 1)
  --out FILE         JSON results (default reports/kernels/train_step.json)
  -h, --help         this text

One step = forward + backward (mean cross-entropy over the batch's targets)
+ AdamW (lr 1e-3 constant, betas 0.9/0.999, eps 1e-8, weight decay 0.01) on
every parameter + zeroing the gradients. tokens/s = batch*seq*steps / time of
the timed steps.

PyTorch (Debian: apt-get install python3-torch libopenblas0-pthread) runs
with OpenBLAS's kernel chosen by the environment's OPENBLAS_CORETYPE and with
SkylakeX (its AVX-512 kernel); for each, with every --torch-threads value,
and with more than one thread both as installed and with
OMP_WAIT_POLICY=PASSIVE (Debian's torch runs its own ops on an OpenMP pool
and its GEMMs on OpenBLAS's pthread pool; on few cores the two fight). The
ratio is taken against the fastest torch run. TensorFlow.js runs its peer's
backend (wasm, SIMD), one warm-up step, --tfjs-steps timed, one profiled.

Example: pnpm --filter @tunebench/bench bench:train -- --batch 4 --seq 128 --steps 5`;

const opt = parseCli({
  preset: { type: 'string', default: 'small' },
  batch: { type: 'string', default: '8' },
  seq: { type: 'string', default: '256' },
  steps: { type: 'string', default: '10' },
  warmup: { type: 'string', default: '2' },
  threads: { type: 'string' },
  'torch-threads': { type: 'string', default: '2,1' },
  python: { type: 'string' },
  'no-torch': { type: 'boolean', default: false },
  'no-tfjs': { type: 'boolean', default: false },
  'tfjs-steps': { type: 'string' },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const, HELP);

const B = intOption('batch', opt.batch, 8), T = intOption('seq', opt.seq, 256);
const steps = intOption('steps', opt.steps, 10), warmup = intOption('warmup', opt.warmup, 2, 0);
const torchThreads = opt['torch-threads'].split(',').map((x) => intOption('torch-threads', x.trim(), 2));
const tfjsSteps = intOption('tfjs-steps', opt['tfjs-steps'], 1);
if (opt.threads) native.setThreads(intOption('threads', opt.threads, 1));
let cfg: LlamaConfig;
try {
  cfg = preset(opt.preset);
} catch (e) {
  console.error((e as Error).message);
  process.exit(2);
}
if (T > cfg.maxPositionEmbeddings) { console.error(`--seq ${T} exceeds the preset's maxPositionEmbeddings ${cfg.maxPositionEmbeddings}`); process.exit(2); }
const totalSteps = warmup + steps;
const tokensPerStep = B * T;
const threads = native.getThreads();
const lr = 1e-3, weightDecay = 0.01, seed = 1234;

const cpuModel = cpus()[0]?.model ?? 'unknown';
console.log(`tunebench training-step benchmark — ${new Date().toISOString()}`);
console.log(`cpu: ${cpuModel} x ${cpus().length}; kernel threads: ${threads}; GEMM micro-kernel: ${gemmKernel()}`);
console.log(`model: preset '${opt.preset}' (${parameterCount(cfg).toLocaleString('en-US')} parameters) ${JSON.stringify(cfg)}`);
console.log(`step: batch ${B} x seq ${T} = ${tokensPerStep} tokens; ${warmup} warmup + ${steps} timed steps; AdamW lr ${lr}`);

// ------------------------------------------------------------ model, batches
const model = LlamaModel.init(cfg, { seed });
const params = trainable(model.parameters());
const expected = modelTensorShapes(cfg);
if (params.length !== expected.size || params.some((p) => !expected.has(p.name))) {
  throw new Error(`full fine-tuning needs every parameter trainable: got ${params.length}, the config has ${expected.size}`);
}

/** B*steps rows of random tokens, each target the next input: one epoch is the run. */
function randomRows(n: number): TokenRows {
  const rng = new Rng(seed + 1);
  const ids = new Int32Array(n * T), targets = new Int32Array(n * T);
  for (let r = 0; r < n; r++) {
    let prev = Math.floor(rng.next() * cfg.vocabSize);
    for (let t = 0; t < T; t++) {
      const next = Math.floor(rng.next() * cfg.vocabSize);
      ids[r * T + t] = prev; targets[r * T + t] = next; prev = next;
    }
  }
  return new TokenRows(T, ids, targets, 0, {
    mode: 'pack', examples: n, rows: n, inputTokens: n * T, targetTokens: n * T, streamTokens: n * T, droppedTailTokens: 0,
    promptTruncated: 0, droppedPromptTokens: 0, completionTruncated: 0, droppedCompletionTokens: 0, rowsWithoutTargets: 0, paddingTokens: 0,
  });
}
const peerSteps = Math.max(totalSteps, tfjsSteps + 2);
// the peers' input: initial weights, the batches in order, the learning rate of each step
const input = capturePeerInput(model, randomRows(B * peerSteps), {
  steps: peerSteps, batchSize: B, seed, schedule: { kind: 'constant', lr, warmupSteps: 0, totalSteps: peerSteps }, maxGradNorm: null, weightDecay,
});

// ------------------------------------------------------------- our training
const moments = params.map((p) => ({
  m: Tensor.zeros(p.value.shape, { category: 'optimizer' }),
  v: Tensor.zeros(p.value.shape, { category: 'optimizer' }),
}));
const phases = { forward: 0, backward: 0, optimizer: 0 };
const stepMs: number[] = [];
const losses: number[] = [];
let rssBefore = process.memoryUsage().rss;
model.zeroGrad();
for (let s = 0; s < totalSteps; s++) {
  if (s === warmup) { memory.resetPeak(); rssBefore = process.memoryUsage().rss; }
  const batch = { ids: Tensor.from(input.batches[s].ids, [B, T], { dtype: 'i32' }), targets: Tensor.from(input.batches[s].targets, [B, T], { dtype: 'i32' }) };
  const t0 = performance.now();
  const r = model.forward(batch);
  const t1 = performance.now();
  model.backward(1 / r.count);
  const t2 = performance.now();
  params.forEach((p, i) => adamwStep(p.value, p.grad!, moments[i].m, moments[i].v, { lr: input.lrs[s], step: s + 1, weightDecay }));
  model.zeroGrad();
  const t3 = performance.now();
  batch.ids.dispose(); batch.targets.dispose();
  losses.push(r.lossSum / r.count);
  if (s >= warmup) {
    phases.forward += t1 - t0; phases.backward += t2 - t1; phases.optimizer += t3 - t2;
    stepMs.push(t3 - t0);
  }
  const msg = `  tunebench step ${s + 1}/${totalSteps}${s < warmup ? ' (warmup)' : ''}: loss ${losses[s].toFixed(5)}, ${(t3 - t0).toFixed(1)} ms`;
  if (process.stdout.isTTY) process.stdout.write(`\r${msg}   ${s + 1 === totalSteps ? '\n' : ''}`);
  else if (s + 1 === totalSteps) console.log(`  tunebench: ${totalSteps} steps done`);
}
const mem = memory.snapshot().cpu;
const rssAfter = process.memoryUsage().rss;
const ourTotalS = stepMs.reduce((a, b) => a + b, 0) / 1e3;
const ours = {
  impl: 'tunebench', threads, gemmKernel: gemmKernel(),
  tokensPerS: (tokensPerStep * steps) / ourTotalS,
  msPerStep: (ourTotalS / steps) * 1e3,
  msPerStepMin: Math.min(...stepMs),
  stepMs,
  phasesMs: { forward: phases.forward / steps, backward: phases.backward / steps, optimizer: phases.optimizer / steps },
  losses,
  peakBytes: { ...mem.peak, total: mem.peakTotal },
  liveBytesAfter: mem.liveTotal,
  rssBytes: { beforeTimedSteps: rssBefore, afterTimedSteps: rssAfter },
};
for (const mv of moments) { mv.m.dispose(); mv.v.dispose(); }
model.dispose();

// ------------------------------------------------------------------- peers
interface PeerRun { label: string; env: Record<string, string>; outcome: PeerOutcome; tokensPerS: number; msPerStep: number; msPerStepMin: number }
const timedOf = (o: PeerOutcome) => o.stepMs.slice(o.timedFrom);
function peerRun(label: string, env: Record<string, string>, outcome: PeerOutcome): PeerRun {
  const timed = timedOf(outcome);
  const ms = timed.reduce((a, b) => a + b, 0) / timed.length;
  return { label, env, outcome, msPerStep: ms, msPerStepMin: Math.min(...timed), tokensPerS: (tokensPerStep * 1000) / ms };
}
const torchInput = { ...input, batches: input.batches.slice(0, totalSteps), lrs: input.lrs.slice(0, totalSteps) };
const torchRuns: PeerRun[] = [];
let torchNote = '';
const why = opt['no-torch'] ? 'skipped (--no-torch)' : torchUnavailable(opt.python);
if (why) {
  torchNote = opt['no-torch'] ? why : `PyTorch not available (${why}); install it (Debian: apt-get install python3-torch libopenblas0-pthread) or pass --python`;
} else {
  const envCore = process.env.OPENBLAS_CORETYPE;
  for (const core of [...new Set([envCore, 'SkylakeX'])]) {
    for (const th of torchThreads) {
      for (const passive of th > 1 ? [false, true] : [false]) {
        const env: Record<string, string> = {};
        if (core) env.OPENBLAS_CORETYPE = core;
        if (passive) env.OMP_WAIT_POLICY = 'PASSIVE';
        const label = `${core ?? 'auto'}, ${th} thread${th > 1 ? 's' : ''}${passive ? ', OMP passive' : ''}`;
        process.stdout.write(`  torch (${label}) ...`);
        try {
          const outcome = await runTorchPeer(torchInput, {
            python: opt.python, threads: th, warmup, env: { OPENBLAS_CORETYPE: env.OPENBLAS_CORETYPE, OMP_WAIT_POLICY: env.OMP_WAIT_POLICY },
          });
          const run = peerRun(label, env, outcome);
          torchRuns.push(run);
          process.stdout.write(` ${run.msPerStep.toFixed(1)} ms/step\n`);
        } catch (e) {
          process.stdout.write(' failed\n');
          console.error((e as Error).message);
        }
      }
    }
  }
  if (!torchRuns.length) torchNote = 'every torch run failed (see above)';
}

let tfjsRun: PeerRun | null = null;
if (!opt['no-tfjs']) {
  const n = tfjsSteps + 2;  // one warm-up, the timed ones, one profiled
  const outcome = await runTfjsPeer({ ...input, batches: input.batches.slice(0, n), lrs: input.lrs.slice(0, n) }, {
    onStep: (s, loss, ms) => process.stderr.write(`  tfjs: step ${s}/${n}: loss ${loss.toFixed(5)}, ${(ms / 1000).toFixed(1)} s\n`),
  });
  tfjsRun = peerRun(outcome.detail, {}, outcome);
}

// ------------------------------------------------------------------ report
const fmt = (x: number | undefined, d = 1) => (x === undefined ? '' : x.toFixed(d));
const MiB = (b: number) => (b / 2 ** 20).toFixed(2);
function printTable(title: string, header: string[], body: string[][], leftCols = 1): void {
  console.log(`\n${title}`);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i < leftCols ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(header));
  for (const r of body) console.log(line(r));
}

const best = torchRuns.reduce<PeerRun | null>((a, r) => (!a || r.tokensPerS > a.tokensPerS ? r : a), null);
const phaseCols = (p?: { forward: number; backward: number; optimizer: number }) => (p ? [fmt(p.forward), fmt(p.backward), fmt(p.optimizer)] : ['', '', '']);
const rows: string[][] = [];
rows.push(['tunebench', `${threads} threads, ${ours.gemmKernel}`, fmt(ours.msPerStep), fmt(ours.msPerStepMin), ...phaseCols(ours.phasesMs),
  fmt(ours.tokensPerS, 0), best ? `${(ours.tokensPerS / best.tokensPerS).toFixed(2)}x` : '']);
for (const r of [...torchRuns, ...(tfjsRun ? [tfjsRun] : [])]) {
  rows.push([r.outcome.impl, r === tfjsRun ? `${r.label}, ${timedOf(r.outcome).length} timed` : `${r.label}; ${r.outcome.detail}`, fmt(r.msPerStep), fmt(r.msPerStepMin),
    ...phaseCols(r.outcome.phases), fmt(r.tokensPerS, 0), `${(ours.tokensPerS / r.tokensPerS).toFixed(2)}x`]);
}
printTable(`Training step, preset '${opt.preset}', batch ${B} x seq ${T} (${tokensPerStep} tokens), mean of the timed steps (ms)`,
  ['implementation', 'setup', 'ms/step', 'min', 'forward', 'backward', 'optimizer', 'tokens/s', 'tunebench/this'], rows, 2);
if (torchNote) console.log(`\nnote: ${torchNote}`);
if (best) {
  console.log(`\ntunebench ${fmt(ours.tokensPerS, 0)} tokens/s; torch best ${fmt(best.tokensPerS, 0)} tokens/s (${best.label}); `
    + `ratio tunebench/torch = ${(ours.tokensPerS / best.tokensPerS).toFixed(2)}x`);
}

// losses: same weights, same batches, same numerics -> the same curve
const show = (xs: number[]) => xs.map((x) => x.toFixed(5)).join(' ');
let maxLossRel = 0;
for (const r of [...torchRuns, ...(tfjsRun ? [tfjsRun] : [])]) {
  r.outcome.losses.slice(0, ours.losses.length).forEach((l, s) => { maxLossRel = Math.max(maxLossRel, Math.abs(l - ours.losses[s]) / Math.abs(l)); });
}
console.log(`\nper-step loss, tunebench: ${show(ours.losses)}`);
if (torchRuns.length) console.log(`per-step loss, torch:     ${show(torchRuns[0].outcome.losses)}`);
if (tfjsRun) console.log(`per-step loss, tfjs:      ${show(tfjsRun.outcome.losses)}`);
if (torchRuns.length || tfjsRun) console.log(`largest relative loss difference against ours: ${maxLossRel.toExponential(2)}`);

const memRows = [...CATEGORIES.filter((c) => ours.peakBytes[c] > 0).map((c) => [c, MiB(ours.peakBytes[c])]),
  ['total (simultaneous peak)', MiB(ours.peakBytes.total)]];
printTable('tunebench peak memory during the timed steps, by category (MiB; per-category peaks need not coincide)', ['category', 'MiB'], memRows);
console.log(`process resident set (RSS): ${MiB(rssBefore)} MiB before the timed steps, ${MiB(rssAfter)} MiB after `
  + `(${MiB((rssAfter - rssBefore) / steps)} MiB per step; tracked live bytes after the steps ${MiB(mem.liveTotal)} MiB)`);
for (const r of [...torchRuns.slice(0, 1), ...(tfjsRun ? [tfjsRun] : [])]) {
  if (r.outcome.peakBytes !== null) console.log(`(${r.outcome.impl}: ${MiB(r.outcome.peakBytes)} MiB, ${r.outcome.memorySource}; not comparable category by category)`);
}

const here = dirname(fileURLToPath(import.meta.url));
const outPath = resolve(opt.out ?? join(here, '..', '..', '..', 'reports', 'kernels', 'train_step.json'));
mkdirSync(dirname(outPath), { recursive: true });
const peerJson = (r: PeerRun) => ({ label: r.label, env: r.env, tokensPerS: r.tokensPerS, msPerStep: r.msPerStep, msPerStepMin: r.msPerStepMin, ...r.outcome });
writeFileSync(outPath, JSON.stringify({
  date: new Date().toISOString(), cpu: cpuModel, cores: cpus().length, preset: opt.preset, config: cfg,
  parameters: parameterCount(cfg), batch: B, seq: T, tokensPerStep, steps, warmup, lr, weightDecay,
  tunebench: ours, torch: torchRuns.map(peerJson), torchNote: torchNote || undefined, tfjs: tfjsRun ? peerJson(tfjsRun) : undefined,
  ratioVsBestTorch: best ? ours.tokensPerS / best.tokensPerS : undefined, maxLossRelDiff: torchRuns.length || tfjsRun ? maxLossRel : undefined,
}, null, 2) + '\n');
console.log(`\nwrote ${outPath}`);
