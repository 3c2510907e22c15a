// What every kind of job shares: ids, the seeds of a run, the results file
// (appended one record at a time, fsync'd), the stop between two training
// steps, the reference kernel and speed figures, provenance and memory.
import { execSync } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, fsyncSync, openSync, readFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CATEGORIES, type Category, type CheckpointingMode, type Device, type LlamaConfig, type StepStats, Tensor, configFromHf, cudaInfo, deviceName, gemmKernel,
  matmul, median, memory, synchronize,
} from '@tunebench/core';
import type { MethodSpec } from '../methods.js';
import type { PeerImpl } from '../peers/input.js';
import type { RunRecord } from '../record.js';
import type { PeerName, ShapeRow, Suite, TaskName } from '../suite.js';
import type { FinetuneResult } from '../tasks/finetune.js';

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
export class RunInterrupted extends Error {
  constructor(readonly stepsDone: number) {
    super(`interrupted after step ${stepsDone}`);
  }
}

/** Drives a training run of `steps` steps one at a time, letting the event
 * loop turn between steps: the training loop is synchronous, and a signal
 * handler (the CLI's Ctrl-C) only runs there. An aborted signal ends the run
 * after the step in progress (RunInterrupted) unless that was its last; the
 * trainer is disposed either way. */
export async function trainStepByStep(run: Generator<StepStats, FinetuneResult, void>, steps: number, signal: AbortSignal | undefined): Promise<FinetuneResult> {
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

export const PEER_IMPL: Record<PeerName, PeerImpl> = { tfjs: 'tensorflow.js', pytorch: 'pytorch' };

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

export function appendRecord(path: string, r: RunRecord): void {
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
  const root = resolve(here, '..', '..', '..', '..');
  let commit = 'unknown';
  try { commit = execSync('git rev-parse --short HEAD', { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { /* not a checkout */ }
  const packages: Record<string, string> = {};
  for (const p of ['core', 'lora', 'qlora', 'qa-lora', 'bench']) {
    try { packages[`@tunebench/${p}`] = JSON.parse(readFileSync(join(root, 'packages', p, 'package.json'), 'utf8')).version; } catch { /* absent */ }
  }
  // a bundled build (the GPU kit) has no checkout: its commit is baked in
  if (commit === 'unknown' && process.env.TUNEBENCH_COMMIT) commit = process.env.TUNEBENCH_COMMIT;
  const out: RunRecord['provenance'] = {
    commit, packages, backend: device, device: deviceName(device), cpu: `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`, gemm: gemmKernel(), seed, node: process.version, host: hostname(),
  };
  if (device === 'cuda') {
    const i = cudaInfo();
    out.cuda = { name: i.name, capability: i.capability, sms: i.sms, totalBytes: i.totalBytes, driverVersion: i.driverVersion, runtimeVersion: i.runtimeVersion };
    // the CPU GEMM kernel does not run the training on this backend
    out.gemm = `cuda (${gemmKernel()} on the host)`;
  }
  return out;
}


/** Speed figures from per-step times: whole-run tokens/s over the timed steps, and the median step. */
export function speedOf(stepMs: number[], tokensPerStep: number, timedFrom: number): Pick<RunRecord['speed'], 'tokensPerSecond' | 'medianStepMs' | 'steadyTokensPerSecond' | 'stepQuartilesMs'> {
  const timed = stepMs.slice(timedFrom);
  const total = timed.reduce((a, b) => a + b, 0);
  const med = median(timed);
  return { tokensPerSecond: (tokensPerStep * timed.length * 1000) / total, medianStepMs: med, steadyTokensPerSecond: (tokensPerStep * 1000) / med, stepQuartilesMs: quartiles(timed) };
}

/** First and third quartiles (linear interpolation between order statistics). */
export function quartiles(xs: readonly number[]): [number, number] {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => { const x = p * (s.length - 1), i = Math.floor(x), f = x - i; return i + 1 < s.length ? s[i] * (1 - f) + s[i + 1] * f : s[i] ?? NaN; };
  return [q(0.25), q(0.75)];
}


export function loadBaseConfig(baseDir: string): LlamaConfig {
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


/** Marks a run as not fitting its device without running it: the planned
 * peak (plan.ts) and the bytes that were free. */
export function notFitting(record: RunRecord, predicted: RunRecord['memory']['predicted'] & {}, free: number, where?: string): void {
  record.status = 'oom';
  record.oomBytes = predicted.total;
  record.fit = { plannedBytes: predicted.total, freeBytes: free, ran: false };
  record.memory = { ...record.memory, predicted };
  record.error = `does not fit: the planned peak ${(predicted.total / 2 ** 20).toFixed(0)} MiB exceeds the ${(free / 2 ** 20).toFixed(0)} MiB ${where ?? `free on ${record.provenance.device}`}; not run`;
}

/** The memory figures of a run just trained, read on its device. CPU: the
 * tracked peaks, the process resident set and the allocator's cache. CUDA:
 * the tracked peaks (bytes requested from the pool), the pool's reserved
 * bytes now and at most, and cudaMemGetInfo's free and total bytes. */
export function memoryAfter(device: Device, liveBefore: number, predicted: RunRecord['memory']['predicted']): RunRecord['memory'] {
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
export function statusLine(r: RunRecord): string {
  return r.error ?? r.status;
}

/** The id of a speed and memory row: shape/<preset>/<method>/steps..-b..-t.. */
export function shapeRunId(row: ShapeRow, m: MethodSpec): string {
  return `shape:${row.preset}/${m.label}/steps${row.steps}-b${row.batchSize}-t${row.seqLen}`;
}

/** What the jobs of one execution share (runner.ts builds it). */
export interface JobContext {
  suite: Suite;
  device: Device;
  outDir: string;
  /** results.jsonl, or a shard's results.shard-<i>-of-<n>.jsonl */
  resultsPath: string;
  /** kernels.json, or a shard's kernels.shard-<i>-of-<n>.json */
  kernelsPath: string;
  log: (line: string) => void;
  progress: boolean;
  signal?: AbortSignal;
  prov: RunRecord['provenance'];
  /** the base model's directory, once the pretraining job (or base.hfDir) gave it */
  baseDir: string | null;
  /** where pretrained bases are cached (default: pretrain.ts defaultCacheDir) */
  cacheDir?: string;
  /** the machine's memory that a CPU run's planned peak must fit (default os.totalmem) */
  machineBytes?: number;
  /** the tasks' data, prepared before anything ran */
  data: import('./run.js').TaskData;
  /** records by id: those in the results file at the start (--resume) and those written since */
  done: Map<string, RunRecord>;
  /** the peer inputs runs captured, by run id, until their last peer is done */
  peerInputs: Map<string, import('../peers/input.js').PeerInput>;
  /** the steps to capture for a run's peers (the most of its pending peers), by run id */
  peerSteps: Map<string, number>;
  /** learning rates chosen by a search, by task/method label (the other seeds reuse them) */
  searchedLr: Map<string, number>;
  /** rates given by run id: used as they are (timing a run again) */
  lrs?: Map<string, number>;
  /** jobs planned but not run here, with the reason (no PyTorch, ...) */
  notRun: { id: string; reason: string }[];
  /** appends a record to the results file and keeps it in `done` */
  record(r: RunRecord): void;
  /** throws SuiteInterrupted when the signal is aborted, or when `dropped` names a run stopped half-way */
  stopIfAborted(dropped?: SuiteInterrupted['dropped']): void;
}

/** The base directory of a context, or a clear error when no job provided it. */
export function baseDirOf(ctx: JobContext): string {
  if (!ctx.baseDir) throw new Error('internal: a job that needs the base model ran before the base was ready');
  return ctx.baseDir;
}
