// Did a run learn its task? Every run evaluates its starting point once
// (record.untrained); the trained metric must leave that point's interval:
// its value lies outside the untrained model's 95% interval in the better
// direction, and the paired difference trained - untrained (same items)
// excludes zero; for classification the trained accuracy's own interval
// must also lie above the majority share (learning the label prior is not
// learning the task).
// And: is a run's speed comparable, or was the machine busy while it ran?
import { median } from '@tunebench/core';
import type { RunRecord } from '../record.js';
import { type Difference, type Interval, bootstrapInterval, pairedDifference } from './bootstrap.js';

/** The metric a task is judged by: accuracy for labelled tasks, else perplexity (adapt's, or a JSONL task's). */
export function taskMetric(metrics: Record<string, number> | undefined): string | undefined {
  if (!metrics) return undefined;
  for (const m of ['accuracy', 'adaptPerplexity', 'perplexity']) if (typeof metrics[m] === 'number' && Number.isFinite(metrics[m])) return m;
  return undefined;
}

export function higherIsBetter(metric: string): boolean {
  return !/loss|perplexity/i.test(metric);
}

export interface LearnedVerdict {
  metric: string;
  trained: Interval;
  untrained: Interval;
  /** trained - untrained, paired on the same test items */
  difference: Difference;
  /** classification: always answering the training data's majority label */
  majority?: number;
  learned: boolean;
  /** one line: the figures and why */
  text: string;
}

const f4 = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : String(x));
export const intervalText = (i: Interval) => `${f4(i.value)} [${f4(i.lo)}, ${f4(i.hi)}]`;

/** The verdict for a trained run with outcomes and an untrained evaluation; null when it has neither. */
export function learnedVerdict(r: Pick<RunRecord, 'status' | 'metrics' | 'outcomes' | 'untrained'>): LearnedVerdict | null {
  if (r.status !== 'ok' || !r.outcomes || !r.untrained) return null;
  const metric = taskMetric(r.metrics);
  if (!metric) return null;
  const trained = bootstrapInterval(metric, [r.outcomes]);
  const untrained = bootstrapInterval(metric, [r.untrained.outcomes]);
  const up = higherIsBetter(metric);
  const difference = pairedDifference(metric, [r.outcomes], [r.untrained.outcomes], up);
  if (!trained || !untrained || !difference) return null;
  const majority = metric === 'accuracy' && Number.isFinite(r.metrics.majorityBaseline) ? r.metrics.majorityBaseline : undefined;
  const aboveMajority = majority === undefined || trained.lo > majority;
  // the trained figure lies outside the untrained model's interval, in the better direction
  const outside = up ? trained.value > untrained.hi : trained.value < untrained.lo;
  const learned = difference.verdict === 'better' && aboveMajority && outside;
  const why: string[] = [];
  if (difference.verdict !== 'better') why.push(`the difference from the untrained model, ${intervalText(difference)}, ${up ? 'is not above' : 'is not below'} zero`);
  else if (!outside) why.push(`${f4(trained.value)} is still inside the untrained model's interval`);
  if (!aboveMajority) why.push(`its interval does not clear the majority share ${f4(majority!)}`);
  const text = `${metric} ${intervalText(trained)} vs untrained ${intervalText(untrained)}${majority !== undefined ? `, majority share ${f4(majority)}` : ''}`
    + (learned ? '' : `: did not learn (${why.join('; ')})`);
  return { metric, trained, untrained, difference, ...(majority !== undefined ? { majority } : {}), learned, text };
}

/** The median reference-kernel time of a set of runs (ours, finished). */
export function referenceMedian(records: readonly RunRecord[]): number {
  const refs = records.filter((r) => r.status === 'ok' && !r.deployableOf && (r.impl === undefined || r.impl === 'tunebench') && Number.isFinite(r.referenceMs) && r.referenceMs > 0)
    .map((r) => r.referenceMs);
  return refs.length ? median(refs) : NaN;
}

/** How far (as a ratio) a run's reference kernel may be from the suite's median, or from itself after the run. */
export const BUSY_RATIO = 1.5;
/** Interquartile range of the step times, relative to the median step, beyond which the steps spread widely. */
export const BUSY_SPREAD = 0.5;

/** Why a run's speed is not comparable (the machine was busy), or null. */
export function busyReason(r: Pick<RunRecord, 'referenceMs' | 'referenceAfterMs' | 'speed'> & { provenance?: Pick<RunRecord['provenance'], 'backend' | 'worker'> }, suiteMedianMs: number): string | null {
  const ratio = (a: number, b: number) => Math.max(a / b, b / a);
  const w = r.provenance?.worker;
  if (w && w.of > 1 && r.provenance?.backend === 'cpu') return `ran beside ${w.of - 1} other worker(s) on one CPU (--parallel ${w.of})`;
  const ref = r.referenceMs;
  if (Number.isFinite(ref) && ref > 0 && Number.isFinite(suiteMedianMs) && suiteMedianMs > 0 && ratio(ref, suiteMedianMs) > BUSY_RATIO) {
    return `reference kernel ${ref.toFixed(2)} ms before the run vs the suite's median ${suiteMedianMs.toFixed(2)} ms`;
  }
  const after = r.referenceAfterMs;
  if (Number.isFinite(ref) && ref > 0 && after !== undefined && Number.isFinite(after) && after > 0 && ratio(after, ref) > BUSY_RATIO) {
    return `reference kernel ${ref.toFixed(2)} ms before the run, ${after.toFixed(2)} ms after it`;
  }
  const q = r.speed?.stepQuartilesMs, med = r.speed?.medianStepMs;
  if (q && med && med > 0 && (q[1] - q[0]) / med > BUSY_SPREAD) {
    return `step times spread widely (interquartile ${q[0].toFixed(1)}-${q[1].toFixed(1)} ms around a median of ${med.toFixed(1)} ms)`;
  }
  return null;
}

export const BUSY_LABEL = 'machine busy: speed not comparable';
