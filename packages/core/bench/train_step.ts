// Training-throughput benchmark: tokens/s of one full fine-tuning step
// (forward, backward, AdamW over every parameter) of a model preset on the
// CPU, side by side with PyTorch on the CPU for the same model, batch,
// sequence length, initial weights and token batches (packages/bench/peers/torch_train.py, the bench's PyTorch peer).
// Prints the phase split, peak memory by category, a comparison table and the
// per-step losses of both (they must agree: same model, same numerics);
// writes reports/kernels/train_step.json.
//
//   node --import tsx bench/train_step.ts
//   node --import tsx bench/train_step.ts -- --help
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CATEGORIES, type LlamaConfig, LlamaModel, Rng, Tensor, adamwStep, gemmKernel, memory, modelTensorShapes, native, parameterCount, preset,
  trainable, intOption, parseCli,
} from '../src/index.js';
import { tfjsLlamaLoss } from '../src/reference/tfjs_llama.js';

const HELP = `Training-step throughput: tunebench vs PyTorch, both on the CPU.

Usage: node --import tsx bench/train_step.ts [-- options]

Options:
  --preset NAME      model preset from src/nn/config.ts (default small)
  --batch N          sequences per step (default 8)
  --seq N            tokens per sequence (default 256)
  --steps N          timed steps (default 10)
  --warmup N         untimed steps first (default 2)
  --threads N        tunebench kernel threads (default: all cores)
  --torch-threads L  comma-separated torch.set_num_threads values, one set of
                     torch runs each (default 2,1)
  --python PATH      Python with torch (default /usr/bin/python3)
  --no-torch         skip PyTorch
  --no-tfjs          skip TensorFlow.js (the pure-JS cpu backend: slow, a few steps only)
  --tfjs-steps N     timed TensorFlow.js steps after one warm-up (default 1; ~70 s each for small)
  --out FILE         JSON results (default reports/kernels/train_step.json)
  -h, --help         this text

One step = forward + backward (mean cross-entropy over the batch's targets)
+ AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01) on every
parameter + zeroing the gradients. tokens/s = batch*seq*steps / time of the
timed steps.

PyTorch (Debian: apt-get install python3-torch; it uses the system OpenBLAS)
runs the same model, weights and batches with OpenBLAS's kernel chosen by
the environment's OPENBLAS_CORETYPE and with SkylakeX (its AVX-512 kernel);
for each, with every --torch-threads value, and with more than one thread
both as installed and with OMP_WAIT_POLICY=PASSIVE. Debian's torch runs its
own ops on an OpenMP pool and its GEMMs on OpenBLAS's separate pthread pool
(one thread per core whatever torch.set_num_threads says); on few cores the
two pools' spinning threads fight: PASSIVE stops the OpenMP ones spinning,
and 1 torch thread leaves the cores to OpenBLAS. The ratio is taken against
the fastest torch run.

Example: node --import tsx bench/train_step.ts -- --batch 4 --seq 128 --steps 5`;

const optionSpec = {
  preset: { type: 'string', default: 'small' },
  batch: { type: 'string', default: '8' },
  seq: { type: 'string', default: '256' },
  steps: { type: 'string', default: '10' },
  warmup: { type: 'string', default: '2' },
  threads: { type: 'string' },
  'torch-threads': { type: 'string', default: '2,1' },
  python: { type: 'string', default: '/usr/bin/python3' },
  'no-torch': { type: 'boolean', default: false },
  'no-tfjs': { type: 'boolean', default: false },
  'tfjs-steps': { type: 'string' },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;
const opt = parseCli(optionSpec, HELP);

const B = intOption('batch', opt.batch, 8), T = intOption('seq', opt.seq, 256);
const steps = intOption('steps', opt.steps, 10), warmup = intOption('warmup', opt.warmup, 2, 0);
const torchThreads = opt['torch-threads'].split(',').map((x) => intOption('torch-threads', x.trim(), 2));
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
const lr = 1e-3, seed = 1234;

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

// initial weights, kept for the TensorFlow.js peer (tunebench's training changes them)
const initWeights = opt['no-tfjs'] ? null : new Map(params.map((p) => [p.name, p.value.toFloat32()]));

const rng = new Rng(seed + 1);
const idsAll = new Int32Array(totalSteps * 2 * B * T);  // [step, {ids, targets}, B, T]
const batches: { ids: Tensor; targets: Tensor }[] = [];
for (let s = 0; s < totalSteps; s++) {
  const ids = new Int32Array(B * T), targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let prev = Math.floor(rng.next() * cfg.vocabSize);
    for (let t = 0; t < T; t++) {
      const next = Math.floor(rng.next() * cfg.vocabSize);
      ids[b * T + t] = prev;
      targets[b * T + t] = next;
      prev = next;
    }
  }
  idsAll.set(ids, (2 * s) * B * T);
  idsAll.set(targets, (2 * s + 1) * B * T);
  batches.push({ ids: Tensor.from(ids, [B, T], { dtype: 'i32' }), targets: Tensor.from(targets, [B, T], { dtype: 'i32' }) });
}

// The initial weights and the batches, for torch (before training changes them).
let initDir: string | null = null;
if (!opt['no-torch']) {
  initDir = mkdtempSync(join(tmpdir(), 'tunebench-train-step-'));
  // weights.bin: every parameter's f32 values back to back; weights.json names them.
  const manifest: { name: string; shape: number[]; offset: number }[] = [];
  let offset = 0;
  const parts = model.parameters().map((p) => {
    manifest.push({ name: p.name, shape: [...p.value.shape], offset });
    offset += p.value.numel;
    return Buffer.from((p.value.data() as Float32Array).slice().buffer);
  });
  writeFileSync(join(initDir, 'weights.bin'), Buffer.concat(parts));
  writeFileSync(join(initDir, 'weights.json'), JSON.stringify(manifest));
  writeFileSync(join(initDir, 'batches.bin'), Buffer.from(idsAll.buffer));
}

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
  const t0 = performance.now();
  const r = model.forward(batches[s]);
  const t1 = performance.now();
  model.backward(1 / r.count);
  const t2 = performance.now();
  params.forEach((p, i) => adamwStep(p.value, p.grad!, moments[i].m, moments[i].v, { lr, step: s + 1 }));
  model.zeroGrad();
  const t3 = performance.now();
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
  impl: 'tunebench',
  threads,
  gemmKernel: gemmKernel(),
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
for (const b of batches) { b.ids.dispose(); b.targets.dispose(); }
for (const mv of moments) { mv.m.dispose(); mv.v.dispose(); }
model.dispose();

// ------------------------------------------------------------------- torch
interface TorchResult {
  label: string; env: Record<string, string>; impl: 'torch'; torchVersion: string; threads: number; cpuCapability: string;
  blasInfo: string; openblasCore?: string; openblasConfig?: string; openblasThreads?: number; openblasError?: string;
  attention: string; adamwForeach: boolean | null; tokensPerS: number; msPerStep: number; msPerStepMin: number;
  phasesMs: { forward: number; backward: number; optimizer: number }; losses: number[]; maxRssBytes: number;
}
const torchRuns: TorchResult[] = [];
let torchNote = '';
const here = dirname(fileURLToPath(import.meta.url));
if (opt['no-torch']) {
  torchNote = 'skipped (--no-torch)';
} else {
  const probe = spawnSync(opt.python, ['-c', 'import torch'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    const why = probe.error ? probe.error.message : (probe.stderr.trim().split('\n').pop() ?? `exit ${probe.status}`);
    torchNote = `PyTorch not available with ${opt.python} (${why}); install it (Debian: apt-get install python3-torch) `
      + 'or pass --python; only the tunebench figure is shown';
  } else {
    const envCore = process.env.OPENBLAS_CORETYPE;
    const variants: { label: string; env: Record<string, string>; threads: number }[] = [];
    for (const core of [...new Set([envCore, 'SkylakeX'])]) {
      for (const th of torchThreads) {
        for (const passive of th > 1 ? [false, true] : [false]) {
          const env: Record<string, string> = {};
          if (core) env.OPENBLAS_CORETYPE = core;
          if (passive) env.OMP_WAIT_POLICY = 'PASSIVE';
          variants.push({ label: `${core ?? 'auto'}, ${th} thread${th > 1 ? 's' : ''}${passive ? ', OMP passive' : ''}`, env, threads: th });
        }
      }
    }
    const script = join(here, '..', '..', 'bench', 'peers', 'torch_train.py');
    for (const v of variants) {
      process.stdout.write(`  torch (${v.label}) ...`);
      const env: NodeJS.ProcessEnv = { ...process.env, ...v.env };
      if (!v.env.OPENBLAS_CORETYPE) delete env.OPENBLAS_CORETYPE;
      if (!v.env.OMP_WAIT_POLICY) delete env.OMP_WAIT_POLICY;
      const res = spawnSync(opt.python, [script, '--config', JSON.stringify(cfg), '--batch', String(B), '--seq', String(T),
        '--steps', String(steps), '--warmup', String(warmup), '--threads', String(v.threads), '--lr', String(lr),
        '--init', initDir!], { encoding: 'utf8', env, timeout: 900_000, maxBuffer: 64 << 20 });
      const last = res.stdout?.trim().split('\n').pop() ?? '';
      let parsed: TorchResult | null = null;
      try { parsed = JSON.parse(last) as TorchResult; } catch { parsed = null; }
      if (res.status !== 0 || !parsed) {
        process.stdout.write(' failed\n');
        console.error(`torch run '${v.label}' failed (exit ${res.status}${res.signal ? `, ${res.signal}` : ''}):\n${res.stderr}`);
        continue;
      }
      torchRuns.push({ ...parsed, label: v.label, env: v.env });
      process.stdout.write(` ${parsed.msPerStep.toFixed(1)} ms/step\n`);
    }
    if (!torchRuns.length) torchNote = 'every torch run failed (see above)';
  }
}
if (initDir) rmSync(initDir, { recursive: true, force: true });

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

const best = torchRuns.reduce<TorchResult | null>((a, r) => (!a || r.tokensPerS > a.tokensPerS ? r : a), null);
if (torchRuns.length) {
  const t = torchRuns[0];
  console.log(`\ntorch ${t.torchVersion}: CPU capability ${t.cpuCapability}, BLAS_INFO=${t.blasInfo} `
    + `(${t.openblasConfig ?? t.openblasError ?? '?'}; ${t.openblasThreads ?? '?'} OpenBLAS threads), attention: ${t.attention}, `
    + `AdamW foreach=${t.adamwForeach}`);
}
// ---------------------------------------------------------- TensorFlow.js
interface TfjsResult { msPerStep: number; tokensPerS: number; losses: number[]; backend: string; steps: number }
let tfjsResult: TfjsResult | null = null;
if (initWeights) {
  const tfSteps = intOption('tfjs-steps', opt['tfjs-steps'], 1);
  const tf = await import('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  const vars = new Map([...initWeights].map(([name, v]) => [name, tf.variable(tf.tensor(v, [...expected.get(name)!]), true, name)]));
  const optimizer = tf.train.adam(lr);
  const losses: number[] = [];
  let timed = 0;
  for (let s = 0; s <= tfSteps; s++) {
    const ids = idsAll.subarray((2 * s) * B * T, (2 * s + 1) * B * T), targets = idsAll.subarray((2 * s + 1) * B * T, (2 * s + 2) * B * T);
    const t0 = performance.now();
    const loss = optimizer.minimize(() => tfjsLlamaLoss(tf, cfg, vars, ids, targets, B, T).div(B * T) as import('@tensorflow/tfjs').Scalar, true, [...vars.values()]);
    const v = (await loss!.data())[0];
    loss!.dispose();
    if (s > 0) timed += performance.now() - t0;
    losses.push(v);
    process.stderr.write(`  tfjs: step ${s + 1}/${tfSteps + 1}\n`);
  }
  for (const v of vars.values()) v.dispose();
  const ms = timed / tfSteps;
  tfjsResult = { msPerStep: ms, tokensPerS: (tokensPerStep * 1000) / ms, losses, backend: tf.getBackend(), steps: tfSteps };
}

const rows: string[][] = [];
const phaseCols = (p: { forward: number; backward: number; optimizer: number }) => [fmt(p.forward), fmt(p.backward), fmt(p.optimizer)];
rows.push(['tunebench', `${threads} threads, ${ours.gemmKernel}`, fmt(ours.msPerStep), fmt(ours.msPerStepMin), ...phaseCols(ours.phasesMs),
  fmt(ours.tokensPerS, 0), best ? `${(ours.tokensPerS / best.tokensPerS).toFixed(2)}x` : '']);
for (const r of torchRuns) {
  rows.push([`torch ${r.torchVersion}`, `${r.threads} thread${r.threads > 1 ? 's' : ''}, OpenBLAS ${r.openblasCore ?? '?'} x${r.openblasThreads ?? '?'}${r.env.OMP_WAIT_POLICY ? ', OMP passive' : ''}`,
    fmt(r.msPerStep), fmt(r.msPerStepMin), ...phaseCols(r.phasesMs), fmt(r.tokensPerS, 0),
    `${(ours.tokensPerS / r.tokensPerS).toFixed(2)}x`]);
}
if (tfjsResult) {
  rows.push([`tfjs (${tfjsResult.backend} backend)`, `${tfjsResult.steps} timed steps, Adam`, fmt(tfjsResult.msPerStep), '', '', '', '', fmt(tfjsResult.tokensPerS, 0),
    `${(ours.tokensPerS / tfjsResult.tokensPerS).toFixed(2)}x`]);
}
printTable(`Training step, preset '${opt.preset}', batch ${B} x seq ${T} (${tokensPerStep} tokens), mean of ${steps} steps (ms)`,
  ['implementation', 'setup', 'ms/step', 'min', 'forward', 'backward', 'optimizer', 'tokens/s', 'tunebench/this'], rows, 2);
if (torchNote) console.log(`\nnote: ${torchNote}`);
if (best) {
  console.log(`\ntunebench ${fmt(ours.tokensPerS, 0)} tokens/s; torch best ${fmt(best.tokensPerS, 0)} tokens/s (${best.label}); `
    + `ratio tunebench/torch = ${(ours.tokensPerS / best.tokensPerS).toFixed(2)}x`);
}

if (tfjsResult) {
  console.log(`\ntunebench ${fmt(ours.tokensPerS, 0)} tokens/s; TensorFlow.js ${fmt(tfjsResult.tokensPerS, 0)} tokens/s: ratio ${(ours.tokensPerS / tfjsResult.tokensPerS).toFixed(1)}x`);
  console.log(`per-step loss, tfjs (Adam, no weight decay): ${tfjsResult.losses.map((x) => x.toFixed(5)).join(' ')} (tunebench: ${ours.losses.slice(0, tfjsResult.losses.length).map((x) => x.toFixed(5)).join(' ')})`);
}

// losses: same weights, same batches, same numerics -> the same curve
let maxLossRel = 0;
for (const r of torchRuns) {
  for (let s = 0; s < Math.min(r.losses.length, ours.losses.length); s++) {
    maxLossRel = Math.max(maxLossRel, Math.abs(r.losses[s] - ours.losses[s]) / Math.abs(r.losses[s]));
  }
}
if (torchRuns.length) {
  const show = (xs: number[]) => xs.map((x) => x.toFixed(5)).join(' ');
  console.log(`\nper-step loss, tunebench: ${show(ours.losses)}`);
  console.log(`per-step loss, torch:     ${show(torchRuns[0].losses)}`);
  console.log(`largest relative loss difference over ${totalSteps} steps and ${torchRuns.length} torch runs: ${maxLossRel.toExponential(2)}`);
}

const memRows = [...CATEGORIES.filter((c) => ours.peakBytes[c] > 0).map((c) => [c, MiB(ours.peakBytes[c])]),
  ['total (simultaneous peak)', MiB(ours.peakBytes.total)]];
printTable('tunebench peak memory during the timed steps, by category (MiB; per-category peaks need not coincide)',
  ['category', 'MiB'], memRows);
console.log(`process resident set (RSS): ${MiB(rssBefore)} MiB before the timed steps, ${MiB(rssAfter)} MiB after `
  + `(${MiB((rssAfter - rssBefore) / steps)} MiB per step; tracked live bytes after the steps ${MiB(mem.liveTotal)} MiB)`);
if (torchRuns.length) console.log(`(torch: peak resident set of the whole process ${MiB(Math.max(...torchRuns.map((r) => r.maxRssBytes)))} MiB, not comparable category by category)`);

const outPath = resolve(opt.out ?? join(here, '..', '..', '..', 'reports', 'kernels', 'train_step.json'));
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify({
  date: new Date().toISOString(), cpu: cpuModel, cores: cpus().length, preset: opt.preset, config: cfg,
  parameters: parameterCount(cfg), batch: B, seq: T, tokensPerStep, steps, warmup, lr,
  tunebench: ours, torch: torchRuns, torchNote: torchNote || undefined,
  ratioVsBestTorch: best ? ours.tokensPerS / best.tokensPerS : undefined, maxLossRelDiff: torchRuns.length ? maxLossRel : undefined,
}, null, 2) + '\n');
console.log(`\nwrote ${outPath}`);
