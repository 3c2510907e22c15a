// The 'run' job: one method trained on one task with one seed (after a
// learning-rate search when the suite asks for one), evaluated before and
// after, saved, and its deployable models scored; and the 'pretrain' job that
// gives the runs their base.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { CATEGORIES, type Category, type Device, DivergedError, type LlamaModel, type TokenRows, memory } from '@tunebench/core';
import { countParameters } from '@tunebench/lora';
import { type MethodSpec, methodPlugin, planFor } from '../methods.js';
import { availableBytes, moveModel } from '../device.js';
import { DEFAULT_DECODE_SHAPE, decodeRows } from '../decode_rows.js';
import { type PeerInput, capturePeerInput } from '../peers/input.js';
import type { RunRecord } from '../record.js';
import type { Outcomes } from '../stats/outcomes.js';
import type { Suite, TaskName } from '../suite.js';
import { adaptData, evaluateAdapt } from '../tasks/adapt.js';
import { type FinetuneOptions, finetuneSteps, progressPrinter, resolveFinetuneOptions } from '../tasks/finetune.js';
import { evaluateJsonl, jsonlData } from '../tasks/jsonl_task.js';
import { pretrainBase } from '../tasks/pretrain.js';
import { evaluateSpam, spamData } from '../tasks/spam_task.js';
import { DEFAULT_EVAL_POINTS, type TuningRecord, type Validation, evalSteps } from '../tune.js';
import { taskTokenizer, tokenizerSetting } from '../tokenizer.js';
import {
  type JobContext, RunInterrupted, baseDirOf, checkpointingOf, memoryAfter, notFitting, promptCharsOf, speedOf, trainStepByStep, warmupStepsOf,
  referenceKernelMs, withRunSeed,
} from './common.js';
import type { Job } from './plan.js';
import { tuneLearningRate, validationFor } from './search.js';

/** The 'pretrain' job: the suite's base, pretrained once and cached (or base.hfDir as it is). */
export function baseJob(ctx: JobContext): void {
  const suite = ctx.suite;
  if (suite.base.hfDir) { ctx.baseDir = suite.base.hfDir; return; }
  const p = pretrainBase({ preset: suite.base.preset, steps: suite.base.pretrainSteps, seed: suite.shared.seed, device: ctx.device, ...(ctx.cacheDir ? { cacheDir: ctx.cacheDir } : {}) });
  ctx.log(`base ${suite.base.preset}: ${p.cached ? 'cached' : `pretrained in ${(p.ms / 1000).toFixed(1)} s`}, validation loss ${p.validationLoss.toFixed(4)} (${p.dir})`);
  ctx.baseDir = p.dir;
}

/** The 'run' job. A run already recorded (--resume) is not redone; when its
 * peers are still to come, their input is captured from the prepared, untrained model. */
export async function runJob(job: Job, ctx: JobContext): Promise<void> {
  const task = job.task!, m = job.method!, id = job.id;
  const seeded = withRunSeed(ctx.suite, job.seed!);
  const sh = ctx.suite.shared;
  const peerSteps = ctx.peerSteps.get(id) ?? 0;
  const prior = ctx.done.get(id);
  if (prior) {
    if (peerSteps > 0 && prior.status === 'ok') {
      // only its peers are missing (at the run's own rate, which a search may have chosen)
      ctx.peerInputs.set(id, peerInputOnly(task, { ...m, lr: Number(prior.settings.lr ?? m.lr) }, seeded, baseDirOf(ctx), ctx.data, peerSteps));
    } else ctx.log(`${id}: already in ${ctx.resultsPath}, skipped (--resume)`);
    return;
  }
  const baseDir = baseDirOf(ctx);
  const validation = seeded.tuneLr && !ctx.lrs ? validationFor(task, ctx.data, sh.batchSize) : undefined;
  let tuning: TuningRecord | undefined;
  let run = m;
  const fixed = ctx.lrs?.get(id);
  let r: RunRecord, peerInput: PeerInput | null;
  try {
    const searched = ctx.searchedLr.get(`${task}/${m.label}`);
    if (fixed !== undefined && Number.isFinite(fixed)) run = { ...m, lr: fixed };
    else if (validation && searched !== undefined) {
      // the other seeds of a run take the rate its first seed's search chose
      run = { ...m, lr: searched };
      ctx.log(`${id}: lr ${searched} (chosen by the search of the first seed)`);
    } else if (validation) {
      tuning = await tuneLearningRate(task, m, seeded, baseDir, validation, id, ctx.log, ctx.signal, ctx.device);
      run = { ...m, lr: tuning.chosen };
      ctx.searchedLr.set(`${task}/${m.label}`, tuning.chosen);
    }
    ({ record: r, peerInput } = await runOne(task, run, seeded, baseDir, ctx.data, ctx.prov, id, ctx.log, ctx.progress, peerSteps, ctx.signal, { tuning, validation, device: ctx.device, ...(ctx.machineBytes ? { machineBytes: ctx.machineBytes } : {}) }));
  } catch (e) {
    if (e instanceof RunInterrupted) ctx.stopIfAborted({ id, stepsDone: e.stepsDone, steps: sh.steps });
    throw e;
  }
  ctx.record(r);
  ctx.log(`${id}: ${r.status}${r.status === 'ok' ? ` ${Object.entries(r.metrics).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ')}` : ` (${r.error})`}`);
  if (peerInput) ctx.peerInputs.set(id, peerInput);
}

export function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((s, f) => s + statSync(join(dir, f)).size, 0);
}

export interface TaskData {
  spam?: ReturnType<typeof spamData>;
  adapt?: ReturnType<typeof adaptData>;
  jsonl?: ReturnType<typeof jsonlData>;
}

/** The base model ready for method m (its plugin adds adapters, quantizes, ...). */
export function prepareModel(m: MethodSpec, suite: Suite, baseDir: string): LlamaModel {
  return methodPlugin(m.name).prepare(baseDir, m, suite.shared.seed);
}

/** How prompt/completion training rows were built (absent for text streams). */
export function packingSetting(rows: TokenRows): { packing?: 'pack' | 'pad' } {
  return rows.stats.mode === 'pack-examples' ? { packing: 'pack' } : rows.stats.mode === 'pad' ? { packing: 'pad' } : {};
}

export function trainRows(task: TaskName, data: TaskData): TokenRows {
  return task === 'spam' ? data.spam!.train : task === 'adapt' ? data.adapt!.train : data.jsonl!.train;
}

export function finetuneOptionsFor(m: MethodSpec, suite: Suite): FinetuneOptions {
  const sh = suite.shared;
  const plugin = methodPlugin(m.name);
  return {
    steps: sh.steps, batchSize: sh.batchSize, lr: m.lr, schedule: sh.schedule, warmupSteps: sh.warmupSteps, seed: sh.seed,
    optimizer: plugin.optimizer ? (wd) => plugin.optimizer!(m, wd) : undefined,
  };
}

export function peerInputOf(model: LlamaModel, rows: TokenRows, m: MethodSpec, suite: Suite, steps: number): PeerInput {
  const f = resolveFinetuneOptions(finetuneOptionsFor(m, suite));
  return capturePeerInput(model, rows, { steps, batchSize: suite.shared.batchSize, seed: f.seed, schedule: f.schedule, maxGradNorm: f.maxGradNorm, weightDecay: f.weightDecay });
}

/** A peer input for a run already done (--resume): the model prepared as for the run, not trained. */
export function peerInputOnly(task: TaskName, m: MethodSpec, suite: Suite, baseDir: string, data: TaskData, steps: number): PeerInput {
  const model = prepareModel(m, suite, baseDir);
  try {
    return peerInputOf(model, trainRows(task, data), m, suite, steps);
  } finally {
    model.dispose();
  }
}


export async function runOne(task: TaskName, m: MethodSpec, suite: Suite, baseDir: string, data: TaskData,
                      prov: RunRecord['provenance'], id: string, log: (l: string) => void, progress: boolean,
                      peerSteps: number, signal?: AbortSignal,
                      extra: { tuning?: TuningRecord; validation?: Validation; device?: Device; machineBytes?: number } = {}): Promise<{ record: RunRecord; peerInput: PeerInput | null }> {
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
    checkpointing, ...(sh.offload ? { offload: device === 'cpu' ? 'identity on the cpu backend (kept block inputs are host memory already)' : 'asked for; not implemented on the GPU yet (block inputs stay on the device)' } : {}), ...plugin.settings(m, baseDir),
    ...packingSetting(trainRows(task, data)),
    ...(task === 'spam' ? { promptChars: promptCharsOf(suite) } : {}),
    // the tasks' tokenizer: the base's own tokenizer.json (absent: the byte tokenizer, as before)
    ...tokenizerSetting(baseDir),
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
    if (device === 'cpu') {
      // a run whose planned peak exceeds the machine's memory is recorded, not run
      const machine = extra.machineBytes ?? totalmem();
      if (predicted.total > machine) {
        notFitting(record, predicted, machine, 'of this machine\'s memory');
        return { record, peerInput: null };
      }
    }
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
    // a checkpoint or adapter whose values overflow (rope_theta 1e-320, lora_alpha 1e308) would train on NaN: say so now
    const bad = nonFiniteStart(record.untrained);
    if (bad) throw new Error(`the prepared model's first evaluation is not finite (${bad}): check the base's and the adapter's values (rope_theta, weights, lora_alpha); not trained`);
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
        record.deployable = plugin.deployables(model, m, { evaluate, dir, metrics: record.metrics, suiteMethods: suite.methods, decodeActivations: suite.decodeActivations, tokenizer: taskTokenizer(baseDir) })
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
  // the decode rows beside llama.cpp (not part of the run's duration): each
  // deployable's format at the suite's decode shape, measured once per process
  const shape = suite.decodeShape ?? DEFAULT_DECODE_SHAPE;
  if (record.status === 'ok' && device === 'cpu' && shape !== 'none') {
    for (const d of record.deployable ?? []) {
      if (!d.weights) continue;
      const d0 = performance.now();
      d.llamaCpp = await decodeRows(d.weights, { shape, activations: suite.decodeActivations });
      const secs = (performance.now() - d0) / 1000;
      for (const row of d.llamaCpp) {
        log(`${id} → ${d.kind}: decode at ${shape}${row.format ? ` vs llama.cpp ${row.format}` : ''}: ${row.status}${row.statusText ? ` (${row.statusText})` : ''}${secs >= 1 ? `, ${secs.toFixed(0)} s` : ''}`);
      }
    }
  }
  return { record, peerInput: record.status === 'ok' ? peerInput : null };
}


/** What is non-finite in a starting point's evaluation, or null. */
export function nonFiniteStart(e: { metrics: Record<string, number>; outcomes: Outcomes }): string | null {
  for (const [k, v] of Object.entries(e.metrics)) if (k !== 'forgetting' && !Number.isFinite(v)) return `${k} is ${v}`;
  const ll = e.outcomes.labels?.ll?.flat() ?? [];
  if (ll.some((x) => !Number.isFinite(x))) return 'a label log-likelihood is not finite';
  const nll = e.outcomes.text?.nll ?? [];
  if (nll.some((x) => !Number.isFinite(x))) return 'a sequence loss is not finite';
  return null;
}
