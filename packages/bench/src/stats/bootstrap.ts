// Bootstrap intervals of the task metrics from per-example outcomes
// (outcomes.ts): percentile intervals at 95%, seeded, so the same records give
// the same intervals.
//   - one run, or several seeds of one method: resample the test items (the
//     same draw for every seed) and average the seeds' metric on it;
//   - two methods on the same test items: a *paired* bootstrap of the
//     difference (one draw of the items for both sides), which removes the
//     items' own difficulty from the comparison.
// Sequences (rows) are the unit of text outcomes: perplexity is the ratio of
// sums exp(sum nll / sum tokens) on each draw, never a mean of per-row
// perplexities.
import { Rng } from '@tunebench/core';
import type { LabelOutcomes, Outcomes, TextOutcomes } from './outcomes.js';

export const DEFAULT_RESAMPLES = 2000;
export const DEFAULT_BOOTSTRAP_SEED = 20261206;
export const LEVEL = 0.95;

export interface Interval {
  /** the metric on all items (mean over seeds) */
  value: number;
  lo: number;
  hi: number;
}

export interface BootstrapOptions {
  resamples?: number;
  seed?: number;
}

type Weights = Float64Array;

/** A metric computed on weighted items (weight = how often a draw took the item). */
type Estimator = (o: Outcomes, w: Weights | null) => number;

function accuracy(l: LabelOutcomes, w: Weights | null): number {
  let c = 0, n = 0;
  for (let i = 0; i < l.truth.length; i++) {
    const wi = w ? w[i] : 1;
    n += wi;
    if (l.pred[i] === l.truth[i]) c += wi;
  }
  return c / n;
}

function macroF1(l: LabelOutcomes, w: Weights | null): number {
  const L = l.numLabels;
  const tp = new Float64Array(L), fp = new Float64Array(L), fn = new Float64Array(L);
  for (let i = 0; i < l.truth.length; i++) {
    const wi = w ? w[i] : 1;
    if (wi === 0) continue;
    const t = l.truth[i], p = l.pred[i];
    if (t === p) tp[t] += wi;
    else { fp[p] += wi; fn[t] += wi; }
  }
  let s = 0;
  for (let c = 0; c < L; c++) s += tp[c] === 0 ? 0 : (2 * tp[c]) / (2 * tp[c] + fp[c] + fn[c]);
  return s / L;
}

function loss(t: TextOutcomes, w: Weights | null): number {
  let s = 0, n = 0;
  for (let i = 0; i < t.nll.length; i++) {
    const wi = w ? w[i] : 1;
    s += wi * t.nll[i];
    n += wi * t.tokens[i];
  }
  return s / n;
}

const labels = (f: (l: LabelOutcomes, w: Weights | null) => number): Estimator => (o, w) => (o.labels ? f(o.labels, w) : NaN);
const text = (f: (t: TextOutcomes, w: Weights | null) => number): Estimator => (o, w) => (o.text ? f(o.text, w) : NaN);

/** The metrics that have intervals, by the names the records use. */
const ESTIMATORS: Record<string, Estimator> = {
  accuracy: labels(accuracy),
  macroF1: labels(macroF1),
  adaptLoss: text(loss),
  loss: text(loss),
  evalLoss: text(loss),
  adaptPerplexity: text((t, w) => Math.exp(loss(t, w))),
  perplexity: text((t, w) => Math.exp(loss(t, w))),
};

/** Whether a metric has an interval when the outcomes it is computed from are there. */
export function hasInterval(metric: string, o: Outcomes | undefined): boolean {
  const e = ESTIMATORS[metric];
  return !!o && !!e && Number.isFinite(e(o, null));
}

/** The metric on all items of one evaluation (NaN when the outcomes lack it). */
export function metricFromOutcomes(metric: string, o: Outcomes): number {
  const e = ESTIMATORS[metric];
  return e ? e(o, null) : NaN;
}

/** Number of resampling units (test examples or sequences) behind a metric. */
function unitsOf(metric: string, o: Outcomes): number {
  return ESTIMATORS[metric] && (['accuracy', 'macroF1'].includes(metric) ? o.labels?.truth.length : o.text?.nll.length) || 0;
}

/** Whether two evaluations scored the same items (so they can be paired). */
export function sameItems(metric: string, a: Outcomes, b: Outcomes): boolean {
  if (metric === 'accuracy' || metric === 'macroF1') {
    const x = a.labels, y = b.labels;
    return !!x && !!y && x.numLabels === y.numLabels && x.truth.length === y.truth.length && x.truth.every((t, i) => t === y.truth[i]);
  }
  const x = a.text, y = b.text;
  return !!x && !!y && x.tokens.length === y.tokens.length && x.tokens.every((t, i) => t === y.tokens[i]);
}

/** Draws of n items with replacement, as multiplicities. */
function* draws(n: number, o: BootstrapOptions): Generator<Weights> {
  const rng = new Rng(o.seed ?? DEFAULT_BOOTSTRAP_SEED);
  const B = o.resamples ?? DEFAULT_RESAMPLES;
  if (!(Number.isInteger(B) && B >= 1000)) throw new Error(`bootstrap: at least 1000 resamples, got ${B}`);
  const w = new Float64Array(n);
  for (let b = 0; b < B; b++) {
    w.fill(0);
    for (let k = 0; k < n; k++) w[Math.floor(rng.next() * n)]++;
    yield w;
  }
}

function percentile(sorted: Float64Array, p: number): number {
  // linear interpolation between order statistics
  const x = p * (sorted.length - 1);
  const i = Math.floor(x), f = x - i;
  return i + 1 < sorted.length ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[i];
}

function intervalOf(value: number, stats: Float64Array): Interval {
  const s = stats.filter(Number.isFinite).sort();
  if (s.length === 0) return { value, lo: NaN, hi: NaN };
  return { value, lo: percentile(s, (1 - LEVEL) / 2), hi: percentile(s, 1 - (1 - LEVEL) / 2) };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function check(metric: string, samples: readonly Outcomes[]): void {
  if (!ESTIMATORS[metric]) throw new Error(`bootstrap: no interval for metric '${metric}' (known: ${Object.keys(ESTIMATORS).join(', ')})`);
  if (samples.length === 0) throw new Error('bootstrap: no evaluations');
  for (const s of samples.slice(1)) if (!sameItems(metric, samples[0], s)) throw new Error(`bootstrap: the seeds of one method were scored on different test items (${metric})`);
}

/** 95% interval of a metric; with several evaluations (seeds of one method on the same items), of their mean. Null when the outcomes lack the metric. */
export function bootstrapInterval(metric: string, samples: readonly Outcomes[], o: BootstrapOptions = {}): Interval | null {
  if (!samples.every((s) => hasInterval(metric, s))) return null;
  check(metric, samples);
  const est = ESTIMATORS[metric];
  const value = mean(samples.map((s) => est(s, null)));
  const B = o.resamples ?? DEFAULT_RESAMPLES;
  const stats = new Float64Array(B);
  let b = 0;
  for (const w of draws(unitsOf(metric, samples[0]), o)) stats[b++] = mean(samples.map((s) => est(s, w)));
  return intervalOf(value, stats);
}

export interface Difference extends Interval {
  /** the interval excludes zero: a is better or worse than b; else not resolved */
  verdict: 'better' | 'worse' | 'not resolved';
}

/** Paired 95% interval of metric(a) - metric(b) (each the mean over its
 * seeds) on the same test items; `higherIsBetter` turns the sign into a
 * verdict. Null when the two were not scored on the same items. */
export function pairedDifference(metric: string, a: readonly Outcomes[], b: readonly Outcomes[], higherIsBetter: boolean, o: BootstrapOptions = {}): Difference | null {
  if (a.length === 0 || b.length === 0) return null;
  if (![...a, ...b].every((s) => hasInterval(metric, s))) return null;
  if (![...a.slice(1), ...b].every((s) => sameItems(metric, a[0], s))) return null;
  const est = ESTIMATORS[metric];
  const value = mean(a.map((s) => est(s, null))) - mean(b.map((s) => est(s, null)));
  const B = o.resamples ?? DEFAULT_RESAMPLES;
  const stats = new Float64Array(B);
  let k = 0;
  for (const w of draws(unitsOf(metric, a[0]), o)) stats[k++] = mean(a.map((s) => est(s, w))) - mean(b.map((s) => est(s, w)));
  const iv = intervalOf(value, stats);
  const up = higherIsBetter ? iv.lo > 0 : iv.hi < 0;
  const down = higherIsBetter ? iv.hi < 0 : iv.lo > 0;
  return { ...iv, verdict: up ? 'better' : down ? 'worse' : 'not resolved' };
}

/** Between-seed spread of a metric: sample standard deviation (0 for one seed). */
export function seedSpread(values: readonly number[]): number {
  if (values.length < 2) return 0;
  const m = mean([...values]);
  return Math.sqrt(values.reduce((s, v) => s + (v - m) ** 2, 0) / (values.length - 1));
}
