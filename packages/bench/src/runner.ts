// The runner: executes a suite's runs one after another, appending each
// finished run's record to results.jsonl at once (a crash or Ctrl-C loses no
// finished run), and going on when a run does not fit, diverges or fails.
// An aborted signal (the CLI's Ctrl-C) stops the run in progress after its
// current training step, records nothing of it, and ends the suite with
// SuiteInterrupted.
import { execSync } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ByteTokenizer, CATEGORIES, type Category, type Device, DivergedError, cudaInfo, deviceName, preset, synchronize, type LlamaModel, type StepStats, Tensor, type TokenRows, epochBatches, evaluateLoss,
  gemmKernel, matmul, median, memory, writeJsonAtomic, configFromHf, type LlamaConfig, type CheckpointingMode,
  type KernelReport, measureKernels,
} from '@tunebench/core';
import { countParameters } from '@tunebench/lora';
import { type MethodSpec, methodPlugin, parseMethods, planFor } from './methods.js';
import { availableBytes, moveModel } from './device.js';
import { type PeerImpl, type PeerInput, type PeerOutcome, capturePeerInput } from './peers/input.js';
import { runTorchPeer, runTorchShape, torchUnavailable } from './peers/pytorch.js';
import { runTfjsPeer } from './peers/tfjs.js';
import { lossAgreement } from './peers/agreement.js';
import type { RunRecord } from './record.js';
import type { Outcomes } from './stats/outcomes.js';
import type { PeerName, ShapeRow, Suite, TaskName } from './suite.js';
import { adaptData, evaluateAdapt } from './tasks/adapt.js';
import { type FinetuneOptions, type FinetuneResult, finetuneSteps, progressPrinter, resolveFinetuneOptions } from './tasks/finetune.js';
import { evaluateJsonl, jsonlData } from './tasks/jsonl_task.js';
import { brownData, pretrainBase } from './tasks/pretrain.js';
import { evaluateSpam, scoreSpam, spamData } from './tasks/spam_task.js';
import { DEFAULT_EVAL_POINTS, DEFAULT_MAX_VALIDATION, type TuneCandidate, type TuningRecord, type Validation, chooseLr, describeTuning, evalSteps, lrGrid, tuneSteps } from './tune.js';
import { scoreJsonl } from './tasks/jsonl_task.js';

export interface RunnerOptions {
  /** reports/<name> */
  outDir: string;
  /** skip runs already in results.jsonl */
  resume?: boolean;
  /** do only the runs with these ids (timing a run again) */
  only?: Set<string>;
  /** progress lines per run (default true) */
  progress?: boolean;
  /** learning rates by run id: used as they are, without a search (timing a run again) */
  lrs?: Map<string, number>;
  log?: (line: string) => void;
  /** aborted: stop after the current training step (see SuiteInterrupted) */
  signal?: AbortSignal;
  /** where the runs train (default cpu); resolve 'auto' first (core's resolveDevice) */
  device?: Device;
}

/** runSuite stopped by its signal. The finished runs are in results.jsonl;
 * the run that was in progress, if any, was dropped (--resume does it again). */
export class SuiteInterrupted extends Error {
  constructor(
    readonly resultsPath: string,
    /** what results.jsonl holds now: every finished run, this session's and earlier ones */
    readonly records: RunRecord[],
    /** the run stopped half-way and not recorded, with the steps it had done */
    readonly dropped: { id: string; stepsDone: number; steps: number } | null,
  ) {
    super(`interrupted${dropped ? ` during ${dropped.id}` : ''}`);
    this.name = 'SuiteInterrupted';
  }
}

/** A training run stopped between two steps by an aborted signal. */
class RunInterrupted extends Error {
  constructor(readonly stepsDone: number) {
    super(`interrupted after step ${stepsDone}`);
  }
}

/** Drives a training run of `steps` steps one at a time, letting the event
 * loop turn between steps: the training loop is synchronous, and a signal
 * handler (the CLI's Ctrl-C) only runs there. An aborted signal ends the run
 * after the step in progress (RunInterrupted) unless that was its last; the
 * trainer is disposed either way. */
async function trainStepByStep(run: Generator<StepStats, FinetuneResult, void>, steps: number, signal: AbortSignal | undefined): Promise<FinetuneResult> {
  try {
    for (let done = 0; ; done++) {
      if (signal?.aborted && done < steps) throw new RunInterrupted(done);
      const next = run.next();
      if (next.done) return next.value;
      if (signal) await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    run.return(undefined as never);
  }
}

/** The seeds each run is repeated with: shared.seeds, else the one shared.seed. */
export function runSeeds(suite: Suite): number[] {
  return suite.shared.seeds?.length ? suite.shared.seeds : [suite.shared.seed];
}

/** The suite as one seed of a run sees it: shared.seed is the run's seed (adapter
 * initialisation, data order); the data split keeps dataSeed (the suite's seed). */
export function withRunSeed(suite: Suite, seed: number): Suite {
  if (!suite.shared.seeds?.length) return suite;
  return { ...suite, shared: { ...suite.shared, seed, dataSeed: suite.shared.dataSeed ?? suite.shared.seed } };
}

export function runId(task: TaskName, m: MethodSpec, suite: Suite): string {
  const s = suite.shared;
  return `${task}/${m.label}/steps${s.steps}-b${s.batchSize}-t${s.seqLen}-seed${s.seed}`;
}

const PEER_IMPL: Record<PeerName, PeerImpl> = { tfjs: 'tensorflow.js', pytorch: 'pytorch' };

/** The peers that redo run (task, m), with their step counts. */
export function peersFor(task: TaskName, m: MethodSpec, suite: Suite): { peer: PeerName; steps: number; threads?: number }[] {
  const out: { peer: PeerName; steps: number; threads?: number }[] = [];
  for (const [peer, sel] of Object.entries(suite.peers ?? {}) as [PeerName, NonNullable<Suite['peers']>[PeerName]][]) {
    if (!sel) continue;
    if (!(sel.tasks ?? [suite.tasks[0]]).includes(task)) continue;
    if (sel.methods && !sel.methods.includes(m.label)) continue;
    out.push({ peer, steps: Math.min(sel.steps ?? suite.shared.steps, suite.shared.steps), threads: (sel as { threads?: number }).threads });
  }
  return out;
}

export function peerRunId(task: TaskName, m: MethodSpec, suite: Suite, peer: PeerName, steps: number): string {
  const s = suite.shared;
  return `${task}/${m.label}@${peer}/steps${steps}-b${s.batchSize}-t${s.seqLen}-seed${s.seed}`;
}

export function readResults(path: string): RunRecord[] {
  if (!existsSync(path)) return [];
  const out: RunRecord[] = [];
  readFileSync(path, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    try { out.push(JSON.parse(line) as RunRecord); } catch { throw new Error(`${path}:${i + 1}: not a JSON record (a run interrupted while writing? remove the line)`); }
  });
  return out;
}

function appendRecord(path: string, r: RunRecord): void {
  appendFileSync(path, JSON.stringify(r) + '\n');
  const fd = openSync(path, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}

/** Milliseconds of a fixed GEMM (median of 9 after 2 warm-ups), measured
 * just before each run: speed figures are multiplied by it so that a slower
 * or busier machine does not read as a regression. CPU: 512^3 f32; CUDA:
 * 2048^3 f32 (512^3 is launch-bound there), the device synchronised before
 * and after each product. */
export function referenceKernelMs(device: Device = 'cpu'): number {
  const n = device === 'cpu' ? 512 : 2048;
  const host = (v: number) => Tensor.from(new Float32Array(n * n).fill(v), [n, n]);
  const [ha, hb] = [host(0.5), host(0.25)];
  const a = device === 'cpu' ? ha : ha.to(device), b = device === 'cpu' ? hb : hb.to(device);
  if (device !== 'cpu') { ha.dispose(); hb.dispose(); }
  const c = Tensor.zeros([n, n], { device });
  const times: number[] = [];
  try {
    for (let i = 0; i < 11; i++) {
      synchronize(device);
      const t0 = performance.now();
      matmul(a, b, { out: c });
      synchronize(device);
      if (i >= 2) times.push(performance.now() - t0);
    }
  } finally {
    for (const t of [a, b, c]) t.dispose();
  }
  return median(times);
}

/** Steps before this many are warm-up (allocator, caches) and left out of the median. */
export function warmupStepsOf(n: number): number {
  return Math.min(3, Math.floor(n / 4));
}

export function provenance(seed: number, device: Device = 'cpu'): RunRecord['provenance'] {
  const here = dirname(fileURLToPath(import.meta.url));
  const root = resolve(here, '..', '..', '..');
  let commit = 'unknown';
  try { commit = execSync('git rev-parse --short HEAD', { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { /* not a checkout */ }
  const packages: Record<string, string> = {};
  for (const p of ['core', 'lora', 'qlora', 'qa-lora', 'bench']) {
    try { packages[`@tunebench/${p}`] = JSON.parse(readFileSync(join(root, 'packages', p, 'package.json'), 'utf8')).version; } catch { /* absent */ }
  }
  // a bundled build (the GPU kit) has no checkout: its commit is baked in
  if (commit === 'unknown' && process.env.TUNEBENCH_COMMIT) commit = process.env.TUNEBENCH_COMMIT;
  const out: RunRecord['provenance'] = {
    commit, packages, backend: device, device: deviceName(device), cpu: `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`, gemm: gemmKernel(), seed, node: process.version,
  };
  if (device === 'cuda') {
    const i = cudaInfo();
    out.cuda = { name: i.name, capability: i.capability, sms: i.sms, totalBytes: i.totalBytes, driverVersion: i.driverVersion, runtimeVersion: i.runtimeVersion };
    // the CPU GEMM kernel does not run the training on this backend
    out.gemm = `cuda (${gemmKernel()} on the host)`;
  }
  return out;
}

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((s, f) => s + statSync(join(dir, f)).size, 0);
}

interface TaskData {
  spam?: ReturnType<typeof spamData>;
  adapt?: ReturnType<typeof adaptData>;
  jsonl?: ReturnType<typeof jsonlData>;
}

export async function runSuite(suite: Suite, o: RunnerOptions): Promise<RunRecord[]> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const sh = suite.shared;
  const device = o.device ?? 'cpu';
  // the task data first: a dataset that cannot be used fails here, before the
  // output directory is created or its results.jsonl removed (and before a
  // base is pretrained)
  const tok = new ByteTokenizer();
  const data: TaskData = {};
  // validation parts (never the test split) for the learning-rate search and the held-out curves
  const maxValidation = suite.tuneLr ? suite.tuneLr.maxValidation ?? DEFAULT_MAX_VALIDATION : undefined;
  const validationFraction = suite.tuneLr ? 0.1 : undefined;
  if (suite.tasks.includes('spam')) data.spam = spamData(tok, { seqLen: sh.seqLen, maxChars: promptCharsOf(suite), seed: sh.seed, maxTrain: sh.maxTrain, maxTest: sh.maxTest, maxValidation, packing: sh.packing });
  if (suite.tasks.includes('adapt')) data.adapt = adaptData(brownData(sh.seqLen, sh.seed), sh.seqLen, { validationFraction, maxValidationRows: maxValidation, seed: sh.seed });
  if (suite.tasks.includes('jsonl')) data.jsonl = jsonlData(suite.dataset!, tok, { seqLen: sh.seqLen, seed: sh.seed, validationFraction, maxValidation, packing: sh.packing });
  const resultsPath = join(o.outDir, 'results.jsonl');
  const done = new Map(o.resume ? readResults(resultsPath).map((r) => [r.id, r]) : []);
  mkdirSync(o.outDir, { recursive: true });
  if (!o.resume && existsSync(resultsPath)) rmSync(resultsPath);

  // the base model
  let baseDir: string;
  if (suite.base.hfDir) baseDir = suite.base.hfDir;
  else {
    const p = pretrainBase({ preset: suite.base.preset, steps: suite.base.pretrainSteps, seed: sh.seed, device });
    log(`base ${suite.base.preset}: ${p.cached ? 'cached' : `pretrained in ${(p.ms / 1000).toFixed(1)} s`}, validation loss ${p.validationLoss.toFixed(4)} (${p.dir})`);
    baseDir = p.dir;
  }
  const stopIfAborted = (dropped: SuiteInterrupted['dropped'] = null): void => {
    if (o.signal?.aborted || dropped) throw new SuiteInterrupted(resultsPath, readResults(resultsPath), dropped);
  };
  stopIfAborted();
  const prov = provenance(sh.seed, device);
  const differing = suite.methods.map((m) => `${m.label}: lr ${m.lr}${m.r ? `, r ${m.r}, alpha ${m.alpha}` : ''}`).join('; ');
  log(`suite ${suite.name}: ${suite.tasks.length} task(s) x ${suite.methods.length} method(s); shared: ${sh.steps} steps, batch ${sh.batchSize}, seq ${sh.seqLen}, seed ${sh.seed}, ${sh.schedule} schedule; per method: ${differing}`);

  const records: RunRecord[] = [];
  // learning rates chosen by a search, per task/method label (reused by the other seeds)
  const searchedLr = new Map<string, number>();
  for (const r of done.values()) if (r.tuning) searchedLr.set(`${r.task}/${r.method}`, r.tuning.chosen);
  for (const task of suite.tasks) {
    for (const m of suite.methods) for (const runSeed of runSeeds(suite)) {
      // each seed of a run: its own adapter initialisation and data order; the data split stays the suite's
      const seeded = withRunSeed(suite, runSeed);
      const id = runId(task, m, seeded);
      // a peer that cannot redo this method is named once and never asked for
      // (its input would not even be captured: an INT-N base has no dense form for it)
      // peers redo the first seed only
      const wanted = o.only || runSeed !== runSeeds(suite)[0] ? [] : peersFor(task, m, seeded).filter((p) => !done.has(peerRunId(task, m, seeded, p.peer, p.steps)));
      if (o.only && !o.only.has(id)) continue;
      const peers = wanted.filter((p) => {
        const unsupported = methodPlugin(m.name).peerUnsupported?.(p.peer, m) ?? null;
        if (unsupported) log(`${peerRunId(task, m, seeded, p.peer, p.steps)}: skipped: ${unsupported}`);
        return !unsupported;
      });
      if (done.has(id) && peers.length === 0) { log(`${id}: already in ${resultsPath}, skipped (--resume)`); continue; }
      stopIfAborted();
      const peerSteps = peers.length ? Math.max(...peers.map((p) => p.steps)) : 0;
      let r: RunRecord, peerInput: PeerInput | null;
      if (done.has(id)) {
        // our run is in the results already; only its peers are missing (at the run's own rate, which a search may have chosen)
        r = done.get(id)!;
        if (r.status !== 'ok') continue;
        peerInput = peerInputOnly(task, { ...m, lr: Number(r.settings.lr ?? m.lr) }, seeded, baseDir, data, peerSteps);
      } else {
        const validation = seeded.tuneLr && !o.lrs ? validationFor(task, data, sh.batchSize) : undefined;
        let tuning: TuningRecord | undefined;
        let run = m;
        const fixed = o.lrs?.get(id);
        try {
          const searched = searchedLr.get(`${task}/${m.label}`);
          if (fixed !== undefined && Number.isFinite(fixed)) run = { ...m, lr: fixed };
          else if (validation && searched !== undefined) {
            // the other seeds of a run take the rate its first seed's search chose
            run = { ...m, lr: searched };
            log(`${id}: lr ${searched} (chosen by the search of the first seed)`);
          } else if (validation) {
            tuning = await tuneLearningRate(task, m, seeded, baseDir, validation, id, log, o.signal, device);
            run = { ...m, lr: tuning.chosen };
            searchedLr.set(`${task}/${m.label}`, tuning.chosen);
          }
          ({ record: r, peerInput } = await runOne(task, run, seeded, baseDir, data, prov, id, log, o.progress ?? true, peerSteps, o.signal, { tuning, validation, device }));
        } catch (e) {
          if (e instanceof RunInterrupted) stopIfAborted({ id, stepsDone: e.stepsDone, steps: sh.steps });
          throw e;
        }
        appendRecord(resultsPath, r);
        records.push(r);
        log(`${id}: ${r.status}${r.status === 'ok' ? ` ${Object.entries(r.metrics).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ')}` : ` (${r.error})`}`);
      }
      if (!peerInput) continue;
      for (const p of peers) {
        stopIfAborted();
        const pid = peerRunId(task, m, seeded, p.peer, p.steps);
        if (p.peer === 'pytorch') {
          const why = torchUnavailable();
          if (why) { log(`${pid}: skipped: no PyTorch (${why}); set TUNEBENCH_PYTHON to a python with torch`); continue; }
        }
        const input: PeerInput = { ...peerInput, batches: peerInput.batches.slice(0, p.steps), lrs: peerInput.lrs.slice(0, p.steps) };
        log(`${pid}: ${p.peer} redoes the first ${p.steps} step(s) of ${id}${p.peer === 'tfjs' ? ' (the pure-JS backend is slow)' : ''}`);
        const t0 = performance.now();
        let outcome: PeerOutcome | Error;
        try {
          outcome = p.peer === 'tfjs'
            ? await runTfjsPeer(input, { onStep: o.progress ?? true ? (st, loss, ms) => log(`${pid} step ${st}/${p.steps} loss ${loss.toFixed(4)} ${(ms / 1000).toFixed(1)} s`) : undefined })
            : await runTorchPeer(input, { threads: p.threads, device });
        } catch (e) {
          outcome = e as Error;
        }
        const pr = peerRecord(r, outcome, pid, PEER_IMPL[p.peer], p.steps, input, performance.now() - t0);
        // a peer that failed while Ctrl-C was pressed was most likely stopped by
        // it (the terminal signals the PyTorch child too): not a result
        if (o.signal?.aborted && pr.status === 'error') stopIfAborted({ id: pid, stepsDone: pr.lossCurve.length, steps: p.steps });
        appendRecord(resultsPath, pr);
        records.push(pr);
        log(`${pid}: ${pr.status}${pr.status === 'ok' ? `, ${Math.round(pr.speed.tokensPerSecond)} tokens/s; loss vs ours: max abs diff ${pr.metrics.lossMaxAbsDiff10?.toExponential(1)} over the first 10 steps, within 1e-4 for ${pr.metrics.stepsAgreeing} of ${pr.lossCurve.length} steps` : ` (${pr.error})`}`);
      }
    }
  }
  // speed and memory rows at published shapes, random weights (no task, no accuracy)
  for (const row of suite.shapes ?? []) {
    for (const m of parseMethods(row.methods.join(','))) {
      const id = shapeRunId(row, m);
      if (o.only && !o.only.has(id)) continue;
      const peers = o.only || !row.peers?.includes('pytorch') ? [] : ['pytorch' as const];
      const pid = `${id}@pytorch`;
      const wantPeer = peers.length > 0 && !done.has(pid);
      if (done.has(id) && !wantPeer) { log(`${id}: already in ${resultsPath}, skipped (--resume)`); continue; }
      stopIfAborted();
      let r: RunRecord;
      if (done.has(id)) r = done.get(id)!;
      else {
        try {
          r = await runShape(row, m, suite, prov, id, log, o.progress ?? true, o.signal, device);
        } catch (e) {
          if (e instanceof RunInterrupted) stopIfAborted({ id, stepsDone: e.stepsDone, steps: row.steps });
          throw e;
        }
        appendRecord(resultsPath, r);
        records.push(r);
        log(`${id}: ${r.status}${r.status === 'ok' ? `, ${Math.round(r.speed.steadyTokensPerSecond ?? r.speed.tokensPerSecond)} tokens/s, ${(r.memory.peakTotal / 2 ** 20).toFixed(0)} MiB` : ` (${statusLine(r)})`}`);
      }
      if (!wantPeer) continue;
      const unsupported = methodPlugin(m.name).peerUnsupported?.('pytorch', m) ?? null;
      if (unsupported) { log(`${pid}: skipped: ${unsupported}`); continue; }
      if (r.status !== 'ok') { log(`${pid}: skipped: our run did not finish (${r.status})`); continue; }
      const why = torchUnavailable();
      if (why) { log(`${pid}: skipped: no PyTorch (${why}); set TUNEBENCH_PYTHON to a python with torch`); continue; }
      stopIfAborted();
      log(`${pid}: PyTorch trains the same shapes (its own random weights) on ${device}`);
      const t0 = performance.now();
      let outcome: PeerOutcome | Error;
      try {
        outcome = await runTorchShape(preset(row.preset), m, row, { device, seed: sh.seed });
      } catch (e) {
        outcome = e as Error;
      }
      const pr = shapePeerRecord(r, outcome, pid, row, performance.now() - t0);
      if (o.signal?.aborted && pr.status === 'error') stopIfAborted({ id: pid, stepsDone: 0, steps: row.steps });
      appendRecord(resultsPath, pr);
      records.push(pr);
      log(`${pid}: ${pr.status}${pr.status === 'ok' ? `, ${Math.round(pr.speed.steadyTokensPerSecond ?? pr.speed.tokensPerSecond)} tokens/s, ${(pr.memory.peakTotal / 2 ** 20).toFixed(0)} MiB (${pr.memory.source})` : ` (${pr.error})`}`);
    }
  }
  stopIfAborted();
  if (suite.kernels !== false && !o.only) {
    const kernelsPath = join(o.outDir, KERNELS_FILE);
    if (o.resume && existsSync(kernelsPath)) log(`kernels: already in ${kernelsPath}, skipped (--resume)`);
    else if (device !== 'cpu') log(`kernels: the suite's kernel rows time the CPU kernels; on ${device} they are left out (the kernel benchmark runs on its own)`);
    else {
      const ranks = suite.methods.map((m) => methodPlugin(m.name).adapterRank?.(m)).filter((r): r is number => r !== undefined);
      const cfg = loadBaseConfig(baseDir);
      log(`kernels: microbenchmarks at the suite's shapes (hidden ${cfg.hiddenSize}, intermediate ${cfg.intermediateSize}, ${sh.batchSize} x ${sh.seqLen} tokens)`);
      // each method's own kernel rows, once per method name (its first spec)
      const firstOfEach = [...new Map(suite.methods.map((m) => [m.name, m])).values()];
      const N = sh.batchSize * sh.seqLen;
      const extra = firstOfEach.flatMap((m) => methodPlugin(m.name).kernelCases?.(m, { N, inF: cfg.hiddenSize, outF: cfg.intermediateSize, seed: sh.seed }) ?? []);
      const k = await measureKernels({ cfg, batchSize: sh.batchSize, seqLen: sh.seqLen, loraRank: ranks[0] ?? 8, extra, log: o.progress ?? true ? log : undefined });
      writeJsonAtomic(kernelsPath, k);
    }
  }
  return readResults(resultsPath);
}

/** The kernel microbenchmarks of a report directory, if measured. */
export const KERNELS_FILE = 'kernels.json';
export function readKernels(outDir: string): KernelReport | undefined {
  const path = join(outDir, KERNELS_FILE);
  if (!existsSync(path)) return undefined;
  try {
    const k = JSON.parse(readFileSync(path, 'utf8')) as KernelReport;
    if (!Array.isArray(k.rows)) throw new Error('no rows');
    return k;
  } catch (e) {
    throw new Error(`${path}: not a kernel benchmark file (${(e as Error).message}); delete it to measure again`);
  }
}

/** Speed figures from per-step times: whole-run tokens/s over the timed steps, and the median step. */
function speedOf(stepMs: number[], tokensPerStep: number, timedFrom: number): Pick<RunRecord['speed'], 'tokensPerSecond' | 'medianStepMs' | 'steadyTokensPerSecond' | 'stepQuartilesMs'> {
  const timed = stepMs.slice(timedFrom);
  const total = timed.reduce((a, b) => a + b, 0);
  const med = median(timed);
  return { tokensPerSecond: (tokensPerStep * timed.length * 1000) / total, medianStepMs: med, steadyTokensPerSecond: (tokensPerStep * 1000) / med, stepQuartilesMs: quartiles(timed) };
}

/** First and third quartiles (linear interpolation between order statistics). */
function quartiles(xs: readonly number[]): [number, number] {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => { const x = p * (s.length - 1), i = Math.floor(x), f = x - i; return i + 1 < s.length ? s[i] * (1 - f) + s[i + 1] * f : s[i] ?? NaN; };
  return [q(0.25), q(0.75)];
}

/** The record of a peer that redid our run `ours`. */
function peerRecord(ours: RunRecord, outcome: PeerOutcome | Error, id: string, impl: PeerImpl, steps: number, input: PeerInput, durationMs: number): RunRecord {
  const zero = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  const r: RunRecord = {
    ...ours, id, impl, peerOf: ours.id, method: `${ours.method} · ${impl}`, settings: { ...ours.settings, steps },
    status: 'ok', error: undefined, metrics: {}, memory: { peakTotal: 0, peak: zero },
    speed: { tokensPerSecond: 0, msPerStep: { forward: null, backward: null, optimizer: null, total: 0 } },
    fileBytes: 0, lossCurve: [], deployable: undefined, startedAt: new Date(Date.now() - durationMs).toISOString(), durationMs,
  };
  delete r.oomBytes; delete r.divergedAtStep; delete r.outcomes; delete r.untrained; delete r.referenceAfterMs;
  if (outcome instanceof Error) { r.status = 'error'; r.error = outcome.message; return r; }
  const tokensPerStep = input.batchSize * input.seqLen;
  const timed = outcome.stepMs.slice(outcome.timedFrom);
  r.speed = {
    ...speedOf(outcome.stepMs, tokensPerStep, outcome.timedFrom),
    msPerStep: { forward: outcome.phases?.forward ?? null, backward: outcome.phases?.backward ?? null, optimizer: outcome.phases?.optimizer ?? null, total: timed.reduce((a, b) => a + b, 0) / Math.max(timed.length, 1) },
  };
  r.memory = { peakTotal: outcome.peakBytes ?? 0, peak: zero, source: outcome.memorySource };
  r.lossCurve = outcome.losses;
  r.provenance = { ...ours.provenance, gemm: outcome.detail };
  const bad = outcome.losses.findIndex((l) => !Number.isFinite(l));
  if (bad >= 0) { r.status = 'diverged'; r.divergedAtStep = bad + 1; r.error = `${impl}: the loss is ${outcome.losses[bad]} at step ${bad + 1}`; return r; }
  if (outcome.losses.length < steps) { r.status = 'error'; r.error = `${impl} stopped after ${outcome.losses.length} of ${steps} steps`; return r; }
  r.metrics = { ...lossAgreement(outcome.losses, ours.lossCurve), finalLoss: outcome.losses[steps - 1] };
  return r;
}

function loadBaseConfig(baseDir: string): LlamaConfig {
  const path = join(baseDir, 'config.json');
  return configFromHf(JSON.parse(readFileSync(path, 'utf8')), path);
}

/** The spam prompts' character budget: the suite's, else 2 * seqLen (spamData's default). */
export function promptCharsOf(suite: Suite): number {
  return suite.shared.promptChars ?? 2 * suite.shared.seqLen;
}

/** Activation checkpointing of a run: the method row's, else the suite's, else off. */
export function checkpointingOf(m: MethodSpec, suite: Suite): CheckpointingMode {
  return m.checkpointing ?? suite.shared.checkpointing ?? 'off';
}

/** The base model ready for method m (its plugin adds adapters, quantizes, ...). */
function prepareModel(m: MethodSpec, suite: Suite, baseDir: string): LlamaModel {
  return methodPlugin(m.name).prepare(baseDir, m, suite.shared.seed);
}

/** How prompt/completion training rows were built (absent for text streams). */
function packingSetting(rows: TokenRows): { packing?: 'pack' | 'pad' } {
  return rows.stats.mode === 'pack-examples' ? { packing: 'pack' } : rows.stats.mode === 'pad' ? { packing: 'pad' } : {};
}

function trainRows(task: TaskName, data: TaskData): TokenRows {
  return task === 'spam' ? data.spam!.train : task === 'adapt' ? data.adapt!.train : data.jsonl!.train;
}

function finetuneOptionsFor(m: MethodSpec, suite: Suite): FinetuneOptions {
  const sh = suite.shared;
  const plugin = methodPlugin(m.name);
  return {
    steps: sh.steps, batchSize: sh.batchSize, lr: m.lr, schedule: sh.schedule, warmupSteps: sh.warmupSteps, seed: sh.seed,
    optimizer: plugin.optimizer ? (wd) => plugin.optimizer!(m, wd) : undefined,
  };
}

function peerInputOf(model: LlamaModel, rows: TokenRows, m: MethodSpec, suite: Suite, steps: number): PeerInput {
  const f = resolveFinetuneOptions(finetuneOptionsFor(m, suite));
  return capturePeerInput(model, rows, { steps, batchSize: suite.shared.batchSize, seed: f.seed, schedule: f.schedule, maxGradNorm: f.maxGradNorm, weightDecay: f.weightDecay });
}

/** A peer input for a run already done (--resume): the model prepared as for the run, not trained. */
function peerInputOnly(task: TaskName, m: MethodSpec, suite: Suite, baseDir: string, data: TaskData, steps: number): PeerInput {
  const model = prepareModel(m, suite, baseDir);
  try {
    return peerInputOf(model, trainRows(task, data), m, suite, steps);
  } finally {
    model.dispose();
  }
}

/** The validation part of a task's data (suites with tuneLr). */
function validationFor(task: TaskName, data: TaskData, batchSize: number): Validation {
  if (task === 'spam') {
    const v = data.spam!.validation!;
    return {
      train: data.spam!.train, metric: 'macroF1', higherIsBetter: true, examples: v.labels.length,
      source: `spam validation split (${v.labels.length} messages, majority share ${v.majorityBaseline.toFixed(4)})`,
      score: (model) => scoreSpam(model, v.candidates, v.labels, 32).macroF1,
    };
  }
  if (task === 'adapt') {
    const t = data.adapt!.tune!;
    return {
      train: t.train, metric: 'loss', higherIsBetter: false, examples: t.validation.numRows,
      source: `${t.validation.numRows} rows of ${t.documents} held-out-genre training document(s) set aside`,
      score: (model) => evaluateLoss(model, epochBatches(t.validation, batchSize)).loss,
    };
  }
  const j = data.jsonl!, t = j.tune!;
  const labelled = j.labels !== null && t.candidates !== null;
  return {
    train: t.train, metric: labelled ? 'macroF1' : 'loss', higherIsBetter: labelled, examples: t.examples,
    source: `${t.examples} training example(s) set aside`,
    score: (model) => {
      const e = scoreJsonl(model, { eval: t.eval, candidates: t.candidates, truth: t.truth, labels: j.labels }, batchSize, labelled ? { labelsOnly: true } : { lossOnly: true });
      return labelled ? e.macroF1! : e.loss;
    },
  };
}

/** Short seeded runs over the method's rate grid, scored on validation data; the best rate (tune.ts). */
async function tuneLearningRate(task: TaskName, m: MethodSpec, suite: Suite, baseDir: string, v: Validation, id: string, log: (l: string) => void,
                                signal?: AbortSignal, device: Device = 'cpu'): Promise<TuningRecord> {
  const spec = suite.tuneLr!;
  const sh = suite.shared;
  const steps = tuneSteps(spec, sh.steps);
  const grid = lrGrid(m, spec);
  const t0 = performance.now();
  const candidates: TuneCandidate[] = [];
  log(`${id}: learning-rate search over ${grid.map((x) => x.toExponential(1)).join(', ')}: ${steps} steps each, ${v.metric} on ${v.source}`);
  for (const lr of grid) {
    let model: LlamaModel | null = null;
    const c: TuneCandidate = { lr, score: null, finalLoss: null, status: 'ok' };
    try {
      model = prepareModel(m, suite, baseDir);
      model.checkpointing = checkpointingOf(m, suite);
      moveModel(model, device);
      const run = await trainStepByStep(finetuneSteps(model, v.train, {
        ...finetuneOptionsFor({ ...m, lr }, suite), steps, device,
        warmupSteps: Math.min(steps, Math.round((sh.warmupSteps * steps) / sh.steps)),
      }), steps, signal);
      c.finalLoss = run.finalLoss;
      c.score = v.score(model, sh.batchSize);
      if (!Number.isFinite(c.score)) { c.status = 'diverged'; c.score = null; }
    } catch (e) {
      // Ctrl-C during the search: the run is not recorded (the caller says so); --resume searches again
      if (e instanceof RunInterrupted) throw new RunInterrupted(0);
      if (e instanceof DivergedError) { c.status = 'diverged'; c.error = e.message; }
      else { c.status = 'error'; c.error = (e as Error).message; }
    } finally {
      model?.dispose();
      memory.emptyCache();
    }
    candidates.push(c);
    log(`${id}: lr ${lr.toExponential(1)}: ${c.score === null ? `${c.status}${c.error ? ` (${c.error})` : ''}` : `${v.metric} ${c.score.toFixed(4)}, final training loss ${c.finalLoss?.toFixed(4)}`}`);
  }
  const t: TuningRecord = {
    metric: v.metric, higherIsBetter: v.higherIsBetter, steps, validation: v.source, examples: v.examples,
    configured: m.lr, grid, candidates, chosen: chooseLr(candidates, v.higherIsBetter, m.lr), ms: performance.now() - t0,
  };
  log(`${id}: chosen lr ${t.chosen} (${describeTuning(t)})`);
  return t;
}

async function runOne(task: TaskName, m: MethodSpec, suite: Suite, baseDir: string, data: TaskData,
                      prov: RunRecord['provenance'], id: string, log: (l: string) => void, progress: boolean,
                      peerSteps: number, signal?: AbortSignal,
                      extra: { tuning?: TuningRecord; validation?: Validation; device?: Device } = {}): Promise<{ record: RunRecord; peerInput: PeerInput | null }> {
  const sh = suite.shared;
  const device = extra.device ?? 'cpu';
  let peerInput: PeerInput | null = null;
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const plugin = methodPlugin(m.name);
  const checkpointing = checkpointingOf(m, suite);
  const settings: RunRecord['settings'] = {
    steps: sh.steps, batchSize: sh.batchSize, seqLen: sh.seqLen, seed: sh.seed, ...(sh.dataSeed !== undefined ? { dataSeed: sh.dataSeed } : {}),
    schedule: sh.schedule, warmupSteps: sh.warmupSteps, lr: m.lr,
    checkpointing, ...(sh.offload ? { offload: device === 'cpu' ? 'identity on the cpu backend (kept block inputs are host memory already)' : 'asked for; not implemented on the GPU yet (block inputs stay on the device)' } : {}), ...plugin.settings(m),
    ...packingSetting(trainRows(task, data)),
    ...(task === 'spam' ? { promptChars: promptCharsOf(suite) } : {}),
    // label classification: how labels of different token lengths are compared (tune.ts, spam_task.ts labelScores)
    ...(task === 'spam' || (task === 'jsonl' && data.jsonl!.labels) ? { labelScoring: 'sum' } : {}),
  };
  const zeroPeak = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  const record: RunRecord = {
    id, suite: suite.name, task, method: m.label, settings, status: 'ok', metrics: {},
    memory: { peakTotal: 0, peak: zeroPeak },
    speed: { tokensPerSecond: 0, msPerStep: { forward: 0, backward: 0, optimizer: 0, total: 0 } },
    trainableParameters: 0, totalParameters: 0, fileBytes: 0, lossCurve: [], referenceMs: NaN, provenance: prov, startedAt, durationMs: 0,
    ...(extra.tuning ? { tuning: extra.tuning } : {}),
  };
  let model: LlamaModel | null = null;
  const tmp = mkdtempSync(join(tmpdir(), 'tunebench-run-'));
  try {
    record.referenceMs = referenceKernelMs(device);
    memory.emptyCache();
    // the run's memory is read on its device: on cuda the model is prepared
    // on the host and moved, and only what lives on the GPU counts
    const before = memory.snapshot()[device];
    memory.resetPeak();
    model = prepareModel(m, suite, baseDir);
    model.checkpointing = checkpointing;
    const predicted = planFor(model.config, m, sh.batchSize, sh.seqLen, 1, checkpointing);
    const counts = countParameters(model.parameters());
    record.trainableParameters = counts.trainableParameters;
    record.totalParameters = counts.totalParameters;
    const train = trainRows(task, data);
    // captured before training, so the peers start from the same weights (JS memory, not tracked)
    if (peerSteps > 0) peerInput = peerInputOf(model, train, m, suite, peerSteps);
    if (device !== 'cpu') {
      // a run whose planned peak exceeds the free device memory is recorded, not run
      const free = availableBytes(device);
      if (predicted.total > free) {
        notFitting(record, predicted, free);
        return { record, peerInput: null };
      }
      moveModel(model, device);
    }
    // the task evaluation of a model: its metrics and the per-example outcomes behind them
    const evaluation = (mod: LlamaModel): { metrics: Record<string, number>; outcomes: Outcomes } => {
      if (task === 'spam') {
        const e = evaluateSpam(mod, data.spam!, 32);
        return { metrics: { accuracy: e.accuracy, macroF1: e.macroF1, accuracyPerToken: e.accuracyPerToken, majorityBaseline: data.spam!.majorityBaseline }, outcomes: { labels: e.outcomes } };
      }
      if (task === 'adapt') {
        const e = evaluateAdapt(mod, data.adapt!, sh.batchSize);
        if (Number.isNaN(baseLossBefore)) baseLossBefore = e.baseLoss;  // the first evaluation is the starting point's
        return { metrics: { adaptLoss: e.adaptLoss, adaptPerplexity: e.adaptPerplexity, forgetting: e.baseLoss - baseLossBefore }, outcomes: { text: e.outcomes } };
      }
      const e = evaluateJsonl(mod, data.jsonl!, sh.batchSize);
      const out = Object.fromEntries(Object.entries(e).filter(([, x]) => typeof x === 'number')) as Record<string, number>;
      if (data.jsonl!.majorityBaseline !== undefined && out.accuracy !== undefined) out.majorityBaseline = data.jsonl!.majorityBaseline;
      return { metrics: out, outcomes: e.outcomes };
    };
    // the starting point, evaluated once: the run must leave its interval (stats/learned.ts);
    // its evaluation's memory is not the training's
    let baseLossBefore = NaN;
    record.untrained = evaluation(model);
    memory.resetPeak();
    // the held-out curve: the validation score at a few steps of the run
    // (evaluation time is left out of the run's speed figures by finetune)
    const v = extra.validation;
    const at = new Set(v ? evalSteps(sh.steps, suite.tuneLr?.evalPoints ?? DEFAULT_EVAL_POINTS) : []);
    const curve: { step: number; value: number }[] = [];
    const heldOut = (step: number) => { if (v && at.has(step)) curve.push({ step, value: v.score(model!, sh.batchSize) }); };
    heldOut(0);
    const printer = progress ? progressPrinter(id, sh.steps, Math.max(1, Math.floor(sh.steps / 5))) : undefined;
    const run = await trainStepByStep(finetuneSteps(model, train, {
      ...finetuneOptionsFor(m, suite), device,
      onStep: printer || v ? (st) => { printer?.(st); heldOut(st.step); } : undefined,
    }), sh.steps, signal);
    if (v && curve.length) record.evalCurve = { metric: v.metric, higherIsBetter: v.higherIsBetter, points: curve };
    record.memory = memoryAfter(device, before.liveTotal, predicted);
    const n = run.steps.length;
    const sum = (f: (s: (typeof run.steps)[number]) => number) => run.steps.reduce((a, s) => a + f(s), 0) / Math.max(n, 1);
    const { medianStepMs, steadyTokensPerSecond, stepQuartilesMs } = speedOf(run.steps.map((s) => s.ms.total), sh.batchSize * sh.seqLen, warmupStepsOf(n));
    record.speed = {
      tokensPerSecond: run.tokensPerSecond, realTokensPerSecond: run.realTokensPerSecond,
      msPerStep: { forward: sum((s) => s.ms.forward), backward: sum((s) => s.ms.backward), optimizer: sum((s) => s.ms.optimizer), total: sum((s) => s.ms.total) },
      medianStepMs, steadyTokensPerSecond, stepQuartilesMs,
    };
    record.referenceAfterMs = referenceKernelMs(device);
    record.lossCurve = run.steps.map((s) => s.loss);
    // what the run paid for: rows drawn, as epochs of the training rows, and real (non-padding) tokens
    const rowsSeen = run.steps.length * sh.batchSize;
    record.budget = { steps: run.steps.length, rows: rowsSeen, epochs: rowsSeen / train.numRows, realTokens: run.steps.reduce((a, st) => a + st.realTokens, 0) };
    // deployables evaluate through ctx.evaluate (metrics only); their outcomes are found by the metrics object they return
    const outcomesOf = new WeakMap<Record<string, number>, Outcomes>();
    const evaluate = (mod: LlamaModel): Record<string, number> => {
      const e = evaluation(mod);
      outcomesOf.set(e.metrics, e.outcomes);
      return e.metrics;
    };
    record.metrics = evaluate(model);
    record.outcomes = outcomesOf.get(record.metrics);
    const saved = join(tmp, 'saved');
    mkdirSync(saved);
    // files are written from host memory
    moveModel(model, 'cpu');
    plugin.save(model, m, saved);
    moveModel(model, device);
    record.fileBytes = dirBytes(saved);
    if (plugin.deployables) {
      const dir = join(tmp, 'deployable');
      mkdirSync(dir);
      try {
        record.deployable = plugin.deployables(model, m, { evaluate, dir, metrics: record.metrics, suiteMethods: suite.methods })
          .map((d) => (outcomesOf.has(d.metrics) ? { ...d, outcomes: outcomesOf.get(d.metrics) } : d));
      } catch (e) {
        // on the GPU a deployable that fails leaves the trained run's result standing
        if (device === 'cpu' || (e as { code?: string }).code === 'TB_OOM') throw e;
        record.deployableError = (e as Error).message;
        log(`${id}: deployable models failed on ${device}: ${(e as Error).message}`);
      }
    }
  } catch (e) {
    if (e instanceof RunInterrupted) throw e;  // not a result: nothing is recorded
    const err = e as Error & { code?: string; bytes?: number };
    if (err.code === 'TB_OOM') { record.status = 'oom'; record.oomBytes = err.bytes; record.error = `does not fit: ${err.message}`; }
    else if (e instanceof DivergedError) { record.status = 'diverged'; record.divergedAtStep = e.step; record.error = e.message; }
    else { record.status = 'error'; record.error = err.message; log(`${id}: ${err.stack ?? err.message}`); }
  } finally {
    model?.dispose();
    // the allocator's cached blocks (and malloc's free pages) go back to the
    // system between runs: the next run, its peers or the kernels start clean
    memory.emptyCache();
    rmSync(tmp, { recursive: true, force: true });
  }
  record.durationMs = performance.now() - t0;
  return { record, peerInput: record.status === 'ok' ? peerInput : null };
}

/** Marks a run as not fitting its device without running it: the planned
 * peak (plan.ts) and the bytes that were free. */
function notFitting(record: RunRecord, predicted: RunRecord['memory']['predicted'] & {}, free: number): void {
  record.status = 'oom';
  record.oomBytes = predicted.total;
  record.fit = { plannedBytes: predicted.total, freeBytes: free, ran: false };
  record.memory = { ...record.memory, predicted };
  record.error = `does not fit: the planned peak ${(predicted.total / 2 ** 20).toFixed(0)} MiB exceeds the ${(free / 2 ** 20).toFixed(0)} MiB free on ${record.provenance.device}; not run`;
}

/** The memory figures of a run just trained, read on its device. CPU: the
 * tracked peaks, the process resident set and the allocator's cache. CUDA:
 * the tracked peaks (bytes requested from the pool), the pool's reserved
 * bytes now and at most, and cudaMemGetInfo's free and total bytes. */
function memoryAfter(device: Device, liveBefore: number, predicted: RunRecord['memory']['predicted']): RunRecord['memory'] {
  const s = memory.snapshot()[device];
  const out: RunRecord['memory'] = {
    peakTotal: s.peakTotal - liveBefore, peak: Object.fromEntries(CATEGORIES.map((c) => [c, s.peak[c]])) as Record<Category, number>,
    rssBytes: process.memoryUsage().rss, cachedBytes: s.cachedBytes, predicted,
  };
  if (device !== 'cpu') {
    out.reservedBytes = s.reservedBytes;
    out.reservedPeakBytes = s.reservedPeakBytes;
    out.deviceFreeBytes = s.deviceFreeBytes;
    out.deviceTotalBytes = s.deviceTotalBytes;
    if (s.deviceTotalBytes !== undefined && s.deviceFreeBytes !== undefined) out.deviceBytes = s.deviceTotalBytes - s.deviceFreeBytes;
  }
  return out;
}

/** The status of a run that did not finish, in a few words (the log line). */
function statusLine(r: RunRecord): string {
  return r.error ?? r.status;
}

/** The id of a speed and memory row: shape/<preset>/<method>/steps..-b..-t.. */
export function shapeRunId(row: ShapeRow, m: MethodSpec): string {
  return `shape:${row.preset}/${m.label}/steps${row.steps}-b${row.batchSize}-t${row.seqLen}`;
}

/** A speed and memory row: the method applied to a model with random weights
 * at a published shape (device.ts randomModel), trained `row.steps` steps on
 * Brown text rows (byte tokens, which every vocabulary holds), timed after
 * the warm-up steps. The planned peak is checked against the free device
 * memory first: a row that does not fit is recorded as such, not run. No
 * task metrics: the weights are random. */
async function runShape(row: ShapeRow, m: MethodSpec, suite: Suite, prov: RunRecord['provenance'], id: string, log: (l: string) => void,
                        progress: boolean, signal: AbortSignal | undefined, device: Device): Promise<RunRecord> {
  const cfg = preset(row.preset);
  const plugin = methodPlugin(m.name);
  const checkpointing = m.checkpointing ?? row.checkpointing ?? 'off';
  const zeroPeak = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const record: RunRecord = {
    id, suite: suite.name, task: `shape:${row.preset}`, method: m.label,
    settings: {
      model: row.preset, weights: 'random', steps: row.steps, batchSize: row.batchSize, seqLen: row.seqLen, seed: suite.shared.seed, schedule: 'constant',
      lr: m.lr, checkpointing, ...plugin.settings(m), ...(plugin.shapeSettings?.(m) ?? {}),
    },
    status: 'ok', metrics: {}, memory: { peakTotal: 0, peak: zeroPeak },
    speed: { tokensPerSecond: 0, msPerStep: { forward: 0, backward: 0, optimizer: 0, total: 0 } },
    trainableParameters: 0, totalParameters: 0, fileBytes: 0, lossCurve: [], referenceMs: NaN, provenance: prov, startedAt, durationMs: 0,
  };
  const predicted = planFor(cfg, m, row.batchSize, row.seqLen, 1, checkpointing);
  let model: LlamaModel | null = null;
  try {
    if (!plugin.shapeModel) throw new Error(`method ${m.name} has no speed rows on random weights`);
    record.referenceMs = referenceKernelMs(device);
    memory.emptyCache();
    const free = availableBytes(device);
    if (predicted.total > free) {
      notFitting(record, predicted, free);
      log(`${id}: ${record.error}`);
      return record;
    }
    const before = memory.snapshot()[device];
    memory.resetPeak();
    const p0 = performance.now();
    model = plugin.shapeModel(cfg, m, suite.shared.seed);
    model.checkpointing = checkpointing;
    const counts = countParameters(model.parameters());
    record.trainableParameters = counts.trainableParameters;
    record.totalParameters = counts.totalParameters;
    moveModel(model, device);
    log(`${id}: model ready on ${device} in ${((performance.now() - p0) / 1000).toFixed(1)} s (${(counts.totalParameters / 1e6).toFixed(0)}M parameters, random weights)`);
    const rows = brownData(row.seqLen, suite.shared.seed).train;
    const printer = progress ? progressPrinter(id, row.steps, Math.max(1, Math.floor(row.steps / 4))) : undefined;
    const run = await trainStepByStep(finetuneSteps(model, rows, {
      steps: row.steps, batchSize: row.batchSize, lr: m.lr, schedule: 'constant', seed: suite.shared.seed, device,
      optimizer: plugin.optimizer ? (wd) => plugin.optimizer!(m, wd) : undefined, onStep: printer,
    }), row.steps, signal);
    record.memory = memoryAfter(device, before.liveTotal, predicted);
    const n = run.steps.length;
    const mean = (f: (s: (typeof run.steps)[number]) => number) => run.steps.slice(warmupStepsOf(n)).reduce((a, s) => a + f(s), 0) / Math.max(n - warmupStepsOf(n), 1);
    const { medianStepMs, steadyTokensPerSecond, tokensPerSecond, stepQuartilesMs } = speedOf(run.steps.map((s) => s.ms.total), row.batchSize * row.seqLen, warmupStepsOf(n));
    record.referenceAfterMs = referenceKernelMs(device);
    record.speed = {
      tokensPerSecond, medianStepMs, steadyTokensPerSecond, stepQuartilesMs,
      msPerStep: { forward: mean((s) => s.ms.forward), backward: mean((s) => s.ms.backward), optimizer: mean((s) => s.ms.optimizer), total: mean((s) => s.ms.total) },
    };
    record.lossCurve = run.steps.map((s) => s.loss);
    record.budget = { steps: n, rows: n * row.batchSize, epochs: (n * row.batchSize) / rows.numRows, realTokens: run.steps.reduce((a, st) => a + st.realTokens, 0) };
  } catch (e) {
    if (e instanceof RunInterrupted) throw e;
    const err = e as Error & { code?: string; bytes?: number };
    if (err.code === 'TB_OOM') { record.status = 'oom'; record.oomBytes = err.bytes; record.error = `OOM during the run: ${err.message}`; record.memory = { ...record.memory, predicted }; }
    else if (e instanceof DivergedError) { record.status = 'diverged'; record.divergedAtStep = e.step; record.error = e.message; }
    else { record.status = 'error'; record.error = err.message; log(`${id}: ${err.stack ?? err.message}`); }
  } finally {
    model?.dispose();
    memory.emptyCache();
  }
  record.durationMs = performance.now() - t0;
  return record;
}

/** The record of PyTorch training the same shapes as a speed row of ours. */
function shapePeerRecord(ours: RunRecord, outcome: PeerOutcome | Error, id: string, row: ShapeRow, durationMs: number): RunRecord {
  const zero = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  const r: RunRecord = {
    ...ours, id, impl: 'pytorch', peerOf: ours.id, method: `${ours.method} · pytorch`, status: 'ok', error: undefined, metrics: {},
    memory: { peakTotal: 0, peak: zero }, speed: { tokensPerSecond: 0, msPerStep: { forward: null, backward: null, optimizer: null, total: 0 } },
    fileBytes: 0, lossCurve: [], startedAt: new Date(Date.now() - durationMs).toISOString(), durationMs,
  };
  delete r.oomBytes; delete r.fit; delete r.referenceAfterMs;
  if (outcome instanceof Error) {
    const oom = /out of memory/i.test(outcome.message);
    r.status = oom ? 'oom' : 'error';
    r.error = outcome.message;
    return r;
  }
  const timed = outcome.stepMs.slice(outcome.timedFrom);
  r.speed = {
    ...speedOf(outcome.stepMs, row.batchSize * row.seqLen, outcome.timedFrom),
    msPerStep: { forward: outcome.phases?.forward ?? null, backward: outcome.phases?.backward ?? null, optimizer: outcome.phases?.optimizer ?? null, total: timed.reduce((a, b) => a + b, 0) / Math.max(timed.length, 1) },
  };
  r.memory = { peakTotal: outcome.peakBytes ?? 0, peak: zero, source: outcome.memorySource };
  r.lossCurve = outcome.losses;
  r.provenance = { ...ours.provenance, gemm: outcome.detail };
  r.settings = { ...ours.settings, ...(outcome.stack ? { peerStack: outcome.stack } : {}) };
  const bad = outcome.losses.findIndex((l) => !Number.isFinite(l));
  if (bad >= 0) { r.status = 'diverged'; r.divergedAtStep = bad + 1; r.error = `pytorch: the loss is ${outcome.losses[bad]} at step ${bad + 1}`; }
  return r;
}
