// Regression check against a committed baseline. Task metrics are judged by
// intervals: a metric with per-example outcomes on both sides (accuracy,
// macro F1, loss, perplexity) regresses when the paired bootstrap interval of
// (now - baseline) on the same test items lies wholly on the worse side of
// zero; metrics without outcomes fall back to fixed tolerances. Memory is
// compared relatively; speed relatively after normalising by the reference
// kernel timed in the same run, and a run measured while the machine was
// busy (stats/learned.ts busyReason) is reported as not comparable, not as a
// regression. checkLearned: every trained run must have left its starting
// point's interval.
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { median, writeJsonAtomic } from '@tunebench/core';
import { type RunRecord, isPeer, withDeployables } from './record.js';
import type { Outcomes } from './stats/outcomes.js';
import { hasInterval, pairedDifference, sameItems } from './stats/bootstrap.js';
import { BUSY_LABEL, busyReason, higherIsBetter, intervalText, learnedVerdict, referenceMedian } from './stats/learned.js';

export interface Tolerances {
  /** absolute, for accuracy / macroF1 (higher is better) */
  metricAbs: number;
  /** absolute, for losses and forgetting (lower is better) */
  lossAbs: number;
  /** relative, for perplexities (lower is better) */
  perplexityRel: number;
  /** relative increase of peak memory */
  memoryRel: number;
  /** relative drop of normalised tokens/s */
  speedRel: number;
  /** metrics judged by the paired interval of (now - baseline): a regression
   * is a difference worse than this with 95% confidence (the numerics of
   * another CPU move a trained model a little; that is not a regression).
   * Absolute for accuracy / F1 and losses, relative for perplexity */
  interval?: { metricAbs: number; lossAbs: number; perplexityRel: number };
}

export const DEFAULT_INTERVAL_MARGIN = { metricAbs: 0.01, lossAbs: 0.01, perplexityRel: 0.01 };

/** The speed the check compares: steady tokens/s (median step) when the
 * record has it, else whole-run tokens/s; times the reference kernel ms. */
export function normalizedSpeed(r: RunRecord): number {
  return (r.speed.steadyTokensPerSecond ?? r.speed.tokensPerSecond) * r.referenceMs;
}

export const DEFAULT_TOLERANCES: Tolerances = { metricAbs: 0.03, lossAbs: 0.05, perplexityRel: 0.05, memoryRel: 0.10, speedRel: 0.40, interval: DEFAULT_INTERVAL_MARGIN };

export interface BaselineRun {
  /** a deployable model's row (its metrics and model bytes are checked; decode speed on a CI-sized model is too short to time) */
  deployable?: boolean;
  /** deployable rows: bytes of the model's projections */
  modelBytes?: number;
  status: RunRecord['status'];
  metrics: Record<string, number>;
  peakTotal: number;
  /** tokens/s x reference kernel ms: machine speed cancels */
  normalizedSpeed: number;
  /** per-example outcomes of the evaluation (the paired comparison's other side) */
  outcomes?: Outcomes;
  /** trained runs: whether the task metric left the untrained interval when the baseline was written */
  learned?: boolean;
}

export interface Baseline {
  suite: string;
  createdAt: string;
  commit: string;
  cpu: string;
  tolerances: Tolerances;
  runs: Record<string, BaselineRun>;
}

/** A baseline from this run's records; with `attempts` (the same runs timed
 * again), each run's speed is the median over all its attempts, so that the
 * baseline is a typical figure, not a lucky one. */
export function baselineFrom(records: RunRecord[], tolerances = DEFAULT_TOLERANCES, attempts: RunRecord[][] = []): Baseline {
  if (records.length === 0) throw new Error('no runs to make a baseline from');
  const runs: Record<string, BaselineRun> = {};
  // peers are not ours to regress (and PyTorch may be absent on the machine that checks)
  for (const r of withDeployables(records.filter((x) => !isPeer(x)))) {
    if (r.deployableOf) {
      runs[r.id] = { deployable: true, modelBytes: r.fileBytes, status: r.status, metrics: r.metrics, peakTotal: 0, normalizedSpeed: 0, ...(r.outcomes ? { outcomes: r.outcomes } : {}) };
      continue;
    }
    const speeds = [r, ...attempts.flat().filter((a) => a.id === r.id && a.status === 'ok')].map(normalizedSpeed);
    const v = learnedVerdict(r);
    runs[r.id] = {
      status: r.status, metrics: r.metrics, peakTotal: r.memory.peakTotal, normalizedSpeed: median(speeds),
      ...(r.outcomes ? { outcomes: r.outcomes } : {}), ...(v ? { learned: v.learned } : {}),
    };
  }
  return { suite: records[0].suite, createdAt: new Date().toISOString(), commit: records[0].provenance.commit, cpu: records[0].provenance.cpu, tolerances, runs };
}

export function writeBaseline(path: string, records: RunRecord[], attempts: RunRecord[][] = []): Baseline {
  const b = baselineFrom(records, DEFAULT_TOLERANCES, attempts);
  mkdirSync(dirname(path), { recursive: true });
  writeJsonAtomic(path, b);
  return b;
}

export function readBaseline(path: string): Baseline {
  let b: Baseline;
  try {
    b = JSON.parse(readFileSync(path, 'utf8')) as Baseline;
  } catch (e) {
    throw new Error(`baseline ${path}: cannot read it (${(e as Error).message}); create one with --update-baseline`);
  }
  if (!b || typeof b !== 'object' || typeof b.runs !== 'object' || !b.tolerances) throw new Error(`baseline ${path}: not a tunebench baseline (no runs/tolerances)`);
  return b;
}

/** a problem line about speed starts, after the run id, with this */
export const SPEED_PREFIX = 'normalised speed';

/** Run ids whose only problems are speed: candidates for timing again. */
export function speedOnly(problems: string[]): Set<string> {
  const byId = new Map<string, string[]>();
  for (const p of problems) {
    const i = p.indexOf(': ');
    const id = p.slice(0, i);
    byId.set(id, [...(byId.get(id) ?? []), p.slice(i + 2)]);
  }
  return new Set([...byId].filter(([, ps]) => ps.every((p) => p.startsWith(SPEED_PREFIX))).map(([id]) => id));
}

/** Keep, per run id, the record with the highest normalised speed (timing attempts of the same run). */
export function fastestAttempt(first: RunRecord[], ...again: RunRecord[][]): RunRecord[] {
  const best = new Map(first.map((r) => [r.id, r]));
  for (const rs of again) for (const r of rs) {
    const b = best.get(r.id);
    if (b && r.status === 'ok' && normalizedSpeed(r) > normalizedSpeed(b)) best.set(r.id, { ...b, speed: r.speed, referenceMs: r.referenceMs });
  }
  return first.map((r) => best.get(r.id)!);
}

const HIGHER_BETTER = /accuracy|f1/i;
const PERPLEXITY = /perplexity/i;

/** Metrics that only stand in for the task metric (reported, not checked when the task metric has outcomes). */
const PROXY = new Set(['accuracyPerToken', 'majorityBaseline']);

export interface CheckResult {
  /** regressions: the check fails */
  failures: string[];
  /** what could not be judged (a speed measured on a busy machine), said but not failing */
  notes: string[];
}

/** Every regression against the baseline (failures) and what could not be judged (notes). */
export function checkReport(records: RunRecord[], b: Baseline): CheckResult {
  const tol = b.tolerances;
  const byId = new Map(withDeployables(records).map((r) => [r.id, r]));
  const refMedian = referenceMedian(records);
  const failures: string[] = [], notes: string[] = [];
  for (const [id, base] of Object.entries(b.runs)) {
    const r = byId.get(id);
    if (!r) { failures.push(`${id}: run missing from this report`); continue; }
    if (base.status === 'ok' && r.status !== 'ok') { failures.push(`${id}: status ${r.status} (baseline ok): ${r.error ?? ''}`); continue; }
    for (const [k, was] of Object.entries(base.metrics)) {
      const now = r.metrics[k];
      if (k === 'majorityBaseline') continue;
      if (now === undefined || !Number.isFinite(now)) { failures.push(`${id}: metric ${k} missing or not finite`); continue; }
      const judged = metricByInterval(id, k, now, was, r.outcomes, base.outcomes, tol.interval ?? DEFAULT_INTERVAL_MARGIN);
      if (judged !== undefined) { if (judged) failures.push(judged); continue; }
      if (PROXY.has(k) && r.outcomes && base.outcomes) continue;
      if (HIGHER_BETTER.test(k)) { if (now < was - tol.metricAbs) failures.push(`${id}: ${k} ${now.toFixed(4)} < baseline ${was.toFixed(4)} - ${tol.metricAbs}`); }
      else if (PERPLEXITY.test(k)) { if (now > was * (1 + tol.perplexityRel)) failures.push(`${id}: ${k} ${now.toFixed(4)} > baseline ${was.toFixed(4)} x (1 + ${tol.perplexityRel})`); }
      else if (now > was + tol.lossAbs) failures.push(`${id}: ${k} ${now.toFixed(4)} > baseline ${was.toFixed(4)} + ${tol.lossAbs}`);
    }
    if (base.deployable) {
      if (base.modelBytes !== undefined && r.fileBytes > base.modelBytes * (1 + tol.memoryRel)) failures.push(`${id}: model bytes ${r.fileBytes} > baseline ${base.modelBytes} x (1 + ${tol.memoryRel})`);
      continue;
    }
    if (r.memory.peakTotal > base.peakTotal * (1 + tol.memoryRel)) failures.push(`${id}: peak memory ${r.memory.peakTotal} B > baseline ${base.peakTotal} B x (1 + ${tol.memoryRel})`);
    const speed = normalizedSpeed(r);
    if (speed < base.normalizedSpeed * (1 - tol.speedRel)) {
      const line = `${id}: ${SPEED_PREFIX} ${speed.toFixed(0)} < baseline ${base.normalizedSpeed.toFixed(0)} x (1 - ${tol.speedRel})`;
      const busy = busyReason(r, refMedian);
      if (busy) notes.push(`${line}: not comparable (${BUSY_LABEL}: ${busy})`);
      else failures.push(line);
    }
  }
  return { failures, notes };
}

/** A metric judged by the paired interval of (now - baseline): the failure line, '' when it holds, undefined when it has no outcomes on both sides. */
function metricByInterval(id: string, k: string, now: number, was: number, o: Outcomes | undefined, ob: Outcomes | undefined,
                          margins: NonNullable<Tolerances['interval']>): string | undefined {
  if (!o || !ob || !hasInterval(k, o) || !hasInterval(k, ob)) return undefined;
  if (!sameItems(k, o, ob)) return `${id}: ${k}: the baseline was scored on other test items (the suite's data changed?); write a new baseline with --update-baseline`;
  const up = higherIsBetter(k);
  const d = pairedDifference(k, [o], [ob], up);
  if (!d) return undefined;
  const margin = PERPLEXITY.test(k) ? margins.perplexityRel * was : HIGHER_BETTER.test(k) ? margins.metricAbs : margins.lossAbs;
  // worse by more than the margin, with 95% confidence: the whole interval lies beyond it
  const worse = up ? d.hi < -margin : d.lo > margin;
  if (!worse) return '';
  return `${id}: ${k} ${now.toFixed(4)} vs baseline ${was.toFixed(4)}: ${up ? 'lower' : 'higher'} by ${intervalText({ ...d, value: Math.abs(d.value), lo: up ? -d.hi : d.lo, hi: up ? -d.lo : d.hi })} (paired bootstrap, 95%; beyond the margin ${+margin.toPrecision(3)})`;
}

/** Every trained run whose task metric did not leave its starting point's
 * interval (empty = every run learned). With a baseline, a run that did not
 * learn when the baseline was written either is a known limitation, said in
 * `notes` (the report shows its evidence), not a failure: the check guards
 * what learned then. */
export function checkLearned(records: readonly RunRecord[], baseline?: Baseline, notes?: string[]): string[] {
  const out: string[] = [];
  for (const r of records) {
    if (isPeer(r) || r.deployableOf || r.status !== 'ok') continue;
    const v = learnedVerdict(r);
    if (!v || v.learned) continue;
    if (baseline?.runs[r.id]?.learned === false) notes?.push(`${r.id}: did not learn, as when the baseline was written (a known limitation): ${v.text}`);
    else out.push(`${r.id}: ${v.text}`);
  }
  return out;
}

/** Every regression beyond tolerance, as readable lines (empty = pass). */
export function checkAgainst(records: RunRecord[], b: Baseline): string[] {
  return checkReport(records, b).failures;
}
