// The 'shape' job (speed and memory rows at published shapes, random
// weights, no task) and the 'shape-peer' job (PyTorch training the same shapes).
import { CATEGORIES, type Category, type Device, DivergedError, type LlamaModel, memory, preset } from '@tunebench/core';
import { countParameters } from '@tunebench/lora';
import { type MethodSpec, methodPlugin, planFor } from '../methods.js';
import { availableBytes, moveModel } from '../device.js';
import type { PeerOutcome } from '../peers/input.js';
import { runTorchShape, torchUnavailable } from '../peers/pytorch.js';
import type { RunRecord } from '../record.js';
import type { ShapeRow, Suite } from '../suite.js';
import { finetuneSteps, progressPrinter } from '../tasks/finetune.js';
import { brownData } from '../tasks/pretrain.js';
import {
  type JobContext, RunInterrupted, memoryAfter, notFitting, referenceKernelMs, speedOf, statusLine, trainStepByStep, warmupStepsOf,
} from './common.js';
import type { Job } from './plan.js';

export async function shapeJob(job: Job, ctx: JobContext): Promise<void> {
  const id = job.id, row = job.row!;
  if (ctx.done.has(id)) { ctx.log(`${id}: already in ${ctx.resultsPath}, skipped (--resume)`); return; }
  let r: RunRecord;
  try {
    r = await runShape(row, job.method!, ctx.suite, ctx.prov, id, ctx.log, ctx.progress, ctx.signal, ctx.device);
  } catch (e) {
    if (e instanceof RunInterrupted) ctx.stopIfAborted({ id, stepsDone: e.stepsDone, steps: row.steps });
    throw e;
  }
  ctx.record(r);
  ctx.log(`${id}: ${r.status}${r.status === 'ok' ? `, ${Math.round(r.speed.steadyTokensPerSecond ?? r.speed.tokensPerSecond)} tokens/s, ${(r.memory.peakTotal / 2 ** 20).toFixed(0)} MiB` : ` (${statusLine(r)})`}`);
}

export async function shapePeerJob(job: Job, ctx: JobContext): Promise<void> {
  const pid = job.id, row = job.row!, m = job.method!, device = ctx.device;
  if (ctx.done.has(pid)) { ctx.log(`${pid}: already in ${ctx.resultsPath}, skipped (--resume)`); return; }
  const r = ctx.done.get(job.needs[0]);
  const skip = (reason: string) => { ctx.notRun.push({ id: pid, reason }); ctx.log(`${pid}: skipped: ${reason}`); };
  if (!r || r.status !== 'ok') return skip(`our run did not finish (${r?.status ?? 'not run'})`);
  const why = torchUnavailable();
  if (why) return skip(`no PyTorch (${why}); set TUNEBENCH_PYTHON to a python with torch`);
  ctx.log(`${pid}: PyTorch trains the same shapes (its own random weights) on ${device}`);
  const t0 = performance.now();
  let outcome: PeerOutcome | Error;
  try {
    outcome = await runTorchShape(preset(row.preset), m, row, { device, seed: ctx.suite.shared.seed });
  } catch (e) {
    outcome = e as Error;
  }
  const pr = shapePeerRecord(r, outcome, pid, row, performance.now() - t0);
  if (ctx.signal?.aborted && pr.status === 'error') ctx.stopIfAborted({ id: pid, stepsDone: 0, steps: row.steps });
  ctx.record(pr);
  ctx.log(`${pid}: ${pr.status}${pr.status === 'ok' ? `, ${Math.round(pr.speed.steadyTokensPerSecond ?? pr.speed.tokensPerSecond)} tokens/s, ${(pr.memory.peakTotal / 2 ** 20).toFixed(0)} MiB (${pr.memory.source})` : ` (${pr.error})`}`);
}

/** A speed and memory row: the method applied to a model with random weights
 * at a published shape (device.ts randomModel), trained `row.steps` steps on
 * Brown text rows (byte tokens, which every vocabulary holds), timed after
 * the warm-up steps. The planned peak is checked against the free device
 * memory first: a row that does not fit is recorded as such, not run. No
 * task metrics: the weights are random. */
export async function runShape(row: ShapeRow, m: MethodSpec, suite: Suite, prov: RunRecord['provenance'], id: string, log: (l: string) => void,
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
export function shapePeerRecord(ours: RunRecord, outcome: PeerOutcome | Error, id: string, row: ShapeRow, durationMs: number): RunRecord {
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
