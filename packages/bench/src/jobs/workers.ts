// Several workers on one machine: one process per device (--devices) or per
// share of the CPU cores (--parallel N), pulling units of jobs (shard.ts's
// units: a run with its peers) from one queue. The coordinator hands out a
// unit when what it needs is done (the base first) and when the worker's
// device has room for its planned peak, and it alone appends the records the
// workers send back. An aborted signal stops every worker after its current
// step; --resume continues.
import { type ChildProcess, fork } from 'node:child_process';
import { mkdirSync, rmSync, existsSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import type { Device } from '@tunebench/core';
import type { RunRecord } from '../record.js';
import type { Suite } from '../suite.js';
import { SuiteInterrupted, appendRecord, readResults } from './common.js';
import { type Job, planJobs } from './plan.js';
import { shardUnits } from './shard.js';

export interface WorkerSpec {
  index: number;
  /** the device inside the worker ('cuda' is the one CUDA_VISIBLE_DEVICES leaves it) */
  device: Device;
  /** what the worker's environment adds: TUNEBENCH_THREADS, CUDA_VISIBLE_DEVICES */
  env: Record<string, string>;
  /** cuda:<k> or cpu */
  label: string;
  threads: number;
}

/** --parallel N on the CPU: the cores divided between N workers. */
export function cpuWorkers(n: number, cores: number): WorkerSpec[] {
  const threads = Math.max(1, Math.floor(cores / n));
  return Array.from({ length: n }, (_, index) => ({ index, device: 'cpu' as Device, env: { TUNEBENCH_THREADS: String(threads) }, label: 'cpu', threads }));
}

/** --devices cuda:0,cuda:1,...: one worker per GPU, the host's cores divided between them. */
export function cudaWorkers(ordinals: number[], cores: number): WorkerSpec[] {
  const threads = Math.max(1, Math.floor(cores / ordinals.length));
  return ordinals.map((k, index) => ({ index, device: 'cuda' as Device, env: { CUDA_VISIBLE_DEVICES: String(k), TUNEBENCH_THREADS: String(threads) }, label: `cuda:${k}`, threads }));
}

/** Parses --devices: 'all' or a list of cuda:<k>, each below `count` and named once. */
export function parseDevices(spec: string, count: number): number[] {
  if (count < 1) throw new Error('--devices: no CUDA device is visible');
  if (spec === 'all') return Array.from({ length: count }, (_, k) => k);
  const out: number[] = [];
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^cuda:(\d+)$/.exec(part);
    if (!m) throw new Error(`--devices: '${part}' is not cuda:<k> (e.g. cuda:0,cuda:1, or all)`);
    const k = Number(m[1]);
    if (k >= count) throw new Error(`--devices: ${part}: only ${count} CUDA device(s) are visible (cuda:0..cuda:${count - 1})`);
    if (out.includes(k)) throw new Error(`--devices: ${part} is named twice`);
    out.push(k);
  }
  if (out.length === 0) throw new Error('--devices: name at least one device, e.g. cuda:0,cuda:1, or all');
  return out;
}

/** What the coordinator and a worker say to each other (process.send). */
export type ToWorker =
  | { type: 'init'; suite: Suite; outDir: string; resultsPath: string; cacheDir?: string; resume: boolean; progress: boolean; worker: { index: number; of: number; threads: number }; device: Device }
  | { type: 'unit'; ids: string[] }
  | { type: 'stop' }
  | { type: 'exit' };
export type FromWorker =
  | { type: 'ready'; freeBytes: number }
  | { type: 'log'; line: string }
  | { type: 'record'; record: RunRecord }
  | { type: 'unitDone'; freeBytes: number; notRun: { id: string; reason: string }[] }
  | { type: 'interrupted'; dropped: SuiteInterrupted['dropped'] }
  | { type: 'failed'; message: string };

export interface ParallelOptions {
  outDir: string;
  resume?: boolean;
  progress?: boolean;
  log?: (line: string) => void;
  signal?: AbortSignal;
  cacheDir?: string;
  workers: WorkerSpec[];
  /** the script a worker runs (the CLI, with its 'worker' command) and node's flags for it */
  entry: { script: string; args: string[]; execArgv?: string[] };
}

/** exclusive: the kernel microbenchmarks run with no other worker busy (they are timings) */
interface Unit { jobs: Job[]; needs: string[]; peak: number; order: number; exclusive: boolean }

/** Runs the suite's jobs on several workers; the records in the plan's order. */
export async function runParallel(suite: Suite, o: ParallelOptions): Promise<RunRecord[]> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const plan = planJobs(suite);
  const resultsPath = join(o.outDir, 'results.jsonl');
  const done = new Set(o.resume ? readResults(resultsPath).map((r) => r.id) : []);
  mkdirSync(o.outDir, { recursive: true });
  if (!o.resume && existsSync(resultsPath)) rmSync(resultsPath);
  // the pretraining is a unit of its own that every other unit waits for
  const units: Unit[] = [];
  const pre = plan.jobs.find((j) => j.kind === 'pretrain');
  if (pre) units.push({ jobs: [pre], needs: [], peak: pre.plannedBytes, order: -1, exclusive: false });
  for (const jobs of shardUnits(plan)) {
    const ids = new Set(jobs.map((j) => j.id));
    if (jobs.every((j) => done.has(j.id))) continue;
    units.push({ jobs, needs: [...new Set(jobs.flatMap((j) => j.needs).filter((n) => !ids.has(n)))], peak: Math.max(0, ...jobs.map((j) => j.plannedBytes)), order: plan.jobs.indexOf(jobs[0]), exclusive: jobs.some((j) => j.kind === 'kernels') });
  }
  const finished = new Set<string>(done);
  const isCpu = o.workers.every((w) => w.device === 'cpu');
  const running = new Map<number, Unit>();
  const free = new Map<number, number>();
  const notRun: { id: string; reason: string }[] = [];
  let dropped: SuiteInterrupted['dropped'] = null;
  let failure: Error | null = null;
  log(`suite ${suite.name}: ${plan.jobs.length} job(s) in ${units.length} unit(s) on ${o.workers.length} worker(s): ${o.workers.map((w) => `${w.label} (${w.threads} thread${w.threads === 1 ? '' : 's'})`).join(', ')}`);
  if (isCpu && o.workers.length > 1) log('workers share this machine\'s CPU: their speed figures are not comparable (the report marks them); one worker is the default');

  const children = o.workers.map((w) => fork(o.entry.script, o.entry.args, {
    env: { ...process.env, ...w.env }, execArgv: o.entry.execArgv ?? process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  }));
  const send = (c: ChildProcess, m: ToWorker) => { if (c.connected) c.send(m); };
  const stopAll = () => { for (const c of children) send(c, { type: 'stop' }); };
  let dispatchLater: () => void = () => {};
  // Ctrl-C: every worker stops after its current step; the idle ones exit at once
  const onAbort = () => { stopAll(); dispatchLater(); };
  o.signal?.addEventListener('abort', onAbort, { once: true });

  await new Promise<void>((resolveAll) => {
    let alive = children.length;
    // a unit is ready when what it needs is done; the kernel timings wait for every other unit and run alone
    const ready = (u: Unit) => u.needs.every((n) => finished.has(n)) && (!u.exclusive || (running.size === 0 && units.length === 1));
    const fits = (u: Unit, w: WorkerSpec) => {
      if (isCpu) return [...running.values()].reduce((s, r) => s + r.peak, 0) + u.peak <= totalmem() || running.size === 0;
      return u.peak <= (free.get(w.index) ?? 0) || ![...running.keys()].some((k) => k !== w.index);  // alone, a unit is tried (and recorded as not fitting if so)
    };
    const dispatch = () => {
      if (o.signal?.aborted || failure) { for (const c of children) if (![...running.keys()].includes(children.indexOf(c))) send(c, { type: 'exit' }); return; }
      for (const w of o.workers) {
        if (running.has(w.index) || !free.has(w.index) || [...running.values()].some((u) => u.exclusive)) continue;
        const i = units.findIndex((u) => ready(u) && fits(u, w));
        if (i < 0) continue;
        const [u] = units.splice(i, 1);
        running.set(w.index, u);
        send(children[w.index], { type: 'unit', ids: u.jobs.map((j) => j.id) });
      }
      if (units.length === 0) {
        for (const w of o.workers) if (!running.has(w.index)) send(children[w.index], { type: 'exit' });
      } else if (running.size === 0 && free.size === o.workers.length) {
        failure = new Error(`internal: ${units.length} unit(s) can never start (their needs: ${units.flatMap((u) => u.needs).join(', ')})`);
        for (const c of children) send(c, { type: 'exit' });
      }
    };
    dispatchLater = dispatch;
    children.forEach((c, index) => {
      const w = o.workers[index];
      c.on('message', (m: FromWorker) => {
        if (m.type === 'log') log(`[${w.label}${o.workers.length > 1 ? ` #${index}` : ''}] ${m.line}`);
        else if (m.type === 'record') { appendRecord(resultsPath, m.record); finished.add(m.record.id); }
        else if (m.type === 'ready') { free.set(index, m.freeBytes); dispatch(); }
        else if (m.type === 'unitDone') {
          const u = running.get(index);
          running.delete(index);
          for (const j of u?.jobs ?? []) finished.add(j.id);
          notRun.push(...m.notRun);
          free.set(index, m.freeBytes);
          dispatch();
        } else if (m.type === 'interrupted') { running.delete(index); dropped = dropped ?? m.dropped; dispatch(); }
        else if (m.type === 'failed') { running.delete(index); failure = failure ?? new Error(`worker ${w.label} #${index}: ${m.message}`); stopAll(); dispatch(); }
      });
      c.on('exit', (code) => {
        if (running.has(index) && !failure && !o.signal?.aborted) failure = new Error(`worker ${w.label} #${index} exited (code ${code}) during ${running.get(index)!.jobs[0].id}`);
        running.delete(index);
        if (--alive === 0) resolveAll();
        else dispatch();
      });
      send(c, { type: 'init', suite, outDir: o.outDir, resultsPath, ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}), resume: o.resume ?? false, progress: o.progress ?? true,
        worker: { index, of: o.workers.length, threads: w.threads }, device: w.device });
    });
  });
  o.signal?.removeEventListener('abort', onAbort);
  for (const x of notRun) log(`${x.id}: not run: ${x.reason}`);
  if (failure) throw failure;
  if (o.signal?.aborted || dropped) throw new SuiteInterrupted(resultsPath, readResults(resultsPath), dropped);
  const order = new Map(plan.jobs.map((j, i) => [j.id, i]));
  return readResults(resultsPath).sort((a, b) => (order.get(a.id) ?? 1e9) - (order.get(b.id) ?? 1e9));
}
