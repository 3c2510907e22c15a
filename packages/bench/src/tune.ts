// The learning-rate search (`--tune-lr`, suite field `tuneLr`): for each
// method and task, a few short seeded runs at rates on a small log grid,
// trained on the training data and scored on a validation part that is
// never the test split; the full run then uses the best rate. The chosen
// rate, the grid and every candidate's score are recorded with the run, so
// a table that compares methods says at which rate each was compared.
//
// Validation data per task: `spam` has a validation split of its own (a
// seeded subset of it); `adapt` and `jsonl` split their training data in
// two (candidates train on the larger part). The score is the task's own
// metric: macro F1 where there are labels (accuracy alone rewards answering
// the majority class), else the validation loss.
//
// A short run favours larger rates than a long one would (it has less time
// to profit from a careful rate): the candidates' steps are part of the
// record, and the held-out curve of the full run (evalCurve) shows whether
// the chosen rate kept improving over the whole budget.
import type { LlamaModel, TokenRows } from '@tunebench/core';
import { type MethodSpec } from './methods.js';

export interface TuneLrSpec {
  /** multiples of each method's configured rate to try (default [1/3, 1, 3]); a method row's lrGrid replaces them */
  factors?: number[];
  /** optimizer steps of each candidate run (default: a quarter of the suite's steps, at least 10) */
  steps?: number;
  /** validation examples scored per candidate (default 200) */
  maxValidation?: number;
  /** held-out evaluations during the full run, evenly spaced (default 5; 0 = none) */
  evalPoints?: number;
}

export const DEFAULT_FACTORS = [1 / 3, 1, 3];
export const DEFAULT_MAX_VALIDATION = 200;
export const DEFAULT_EVAL_POINTS = 5;

/** What a candidate is trained on and scored by. */
export interface Validation {
  /** rows the candidates train on */
  train: TokenRows;
  /** the metric the score is (macroF1, loss, ...) */
  metric: string;
  higherIsBetter: boolean;
  /** validation examples (or documents) scored */
  examples: number;
  /** where the validation data comes from, for the record */
  source: string;
  score(model: LlamaModel, batchSize: number): number;
}

export interface TuneCandidate {
  lr: number;
  /** the validation score; null when the run diverged or failed */
  score: number | null;
  finalLoss: number | null;
  status: 'ok' | 'diverged' | 'error';
  error?: string;
}

/** The search behind a run's learning rate (RunRecord.tuning). */
export interface TuningRecord {
  metric: string;
  higherIsBetter: boolean;
  /** optimizer steps of each candidate */
  steps: number;
  validation: string;
  examples: number;
  /** the rate the suite configured, around which the default grid is laid */
  configured: number;
  grid: number[];
  candidates: TuneCandidate[];
  chosen: number;
  /** wall time of the search */
  ms: number;
}

/** Rounds to 2 significant digits (rates like 3.3e-4, not 3.3333e-4). */
export function roundRate(x: number): number {
  return Number(x.toPrecision(2));
}

/** The candidate rates of a method: its lrGrid, else the factors times its rate; sorted, distinct. */
export function lrGrid(m: MethodSpec, spec: TuneLrSpec): number[] {
  const raw = m.lrGrid ?? (spec.factors ?? DEFAULT_FACTORS).map((f) => roundRate(m.lr * f));
  const grid = [...new Set(raw)].sort((a, b) => a - b);
  for (const lr of grid) if (!(Number.isFinite(lr) && lr > 0)) throw new Error(`${m.label}: learning-rate grid holds ${lr}; rates must be positive numbers`);
  return grid;
}

/** Candidate steps for a suite of `steps` steps. */
export function tuneSteps(spec: TuneLrSpec, steps: number): number {
  return Math.min(steps, spec.steps ?? Math.max(10, Math.round(steps / 4)));
}

/** The best candidate's rate: the best finite score; a tie (within 1e-9)
 * goes to the rate closest to the configured one on a log scale; when no
 * candidate finished, the configured rate. */
export function chooseLr(candidates: readonly TuneCandidate[], higherIsBetter: boolean, configured: number): number {
  const ok = candidates.filter((c) => c.score !== null && Number.isFinite(c.score));
  if (ok.length === 0) return configured;
  const sign = higherIsBetter ? 1 : -1;
  const best = Math.max(...ok.map((c) => sign * c.score!));
  const tied = ok.filter((c) => sign * c.score! >= best - 1e-9);
  tied.sort((a, b) => Math.abs(Math.log(a.lr / configured)) - Math.abs(Math.log(b.lr / configured)) || a.lr - b.lr);
  return tied[0].lr;
}

/** Held-out evaluation steps of a run of `steps` steps: 0 (before training) and `points` evenly spaced ones ending at the last step. */
export function evalSteps(steps: number, points: number): number[] {
  if (points <= 0) return [];
  const out = new Set<number>([0]);
  for (let i = 1; i <= points; i++) out.add(Math.max(1, Math.round((i * steps) / points)));
  return [...out].sort((a, b) => a - b);
}

/** One line for the log: "1e-3 → macroF1 0.41, 3e-3 → 0.52 (chosen), 1e-2 → diverged". */
export function describeTuning(t: TuningRecord): string {
  const parts = t.candidates.map((c) => `${c.lr.toExponential(1)} → ${c.score === null ? c.status : c.score.toFixed(4)}${c.lr === t.chosen ? ' (chosen)' : ''}`);
  return `${t.metric} on ${t.examples} validation example(s) after ${t.steps} steps: ${parts.join(', ')}`;
}
