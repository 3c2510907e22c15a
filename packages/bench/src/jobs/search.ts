// The learning-rate search of a run (suites with tuneLr): short seeded runs
// over the method's rate grid, scored on validation data, never the test split.
import { type Device, DivergedError, type LlamaModel, epochBatches, evaluateLoss, memory } from '@tunebench/core';
import type { MethodSpec } from '../methods.js';
import { moveModel } from '../device.js';
import type { Suite, TaskName } from '../suite.js';
import { finetuneSteps } from '../tasks/finetune.js';
import { scoreJsonl } from '../tasks/jsonl_task.js';
import { scoreSpam } from '../tasks/spam_task.js';
import { type TuneCandidate, type TuningRecord, type Validation, chooseLr, describeTuning, lrGrid, tuneSteps } from '../tune.js';
import { RunInterrupted, checkpointingOf, trainStepByStep } from './common.js';
import { type TaskData, finetuneOptionsFor, prepareModel } from './run.js';

/** The validation part of a task's data (suites with tuneLr). */
export function validationFor(task: TaskName, data: TaskData, batchSize: number): Validation {
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
export async function tuneLearningRate(task: TaskName, m: MethodSpec, suite: Suite, baseDir: string, v: Validation, id: string, log: (l: string) => void,
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

