// What every report (CSV, summary.md, report.html) shares: run grouping and
// labels, the choice of a task's main metrics and their direction, the Pareto
// front, failure wording and number formats. All of it is deterministic: the
// same records in the same order give the same text.
import { CATEGORIES } from '@tunebench/core';
import { lossAgreement } from '../peers/agreement.js';
import { type RunRecord, isPeer } from '../record.js';

/** A finite number (NaN written to JSON comes back as null). */
export function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** Whether a larger value of a metric is better. Decided by name:
 * loss, perplexity, forgetting, error rates: lower; everything else
 * (accuracy, macroF1, F1, BLEU, ...): higher. */
export type MetricDirection = 'higher' | 'lower';
const LOWER_IS_BETTER = /loss|perplexity|ppl|forgetting|error|wer$|cer$/i;
export function metricDirection(name: string): MetricDirection {
  return LOWER_IS_BETTER.test(name) ? 'lower' : 'higher';
}

/** Metrics shown first, in this order, when a task has them. Counts such as
 * `examples` are not metrics of quality and never chosen on their own. */
export const MAIN_METRIC_ORDER = [
  'accuracy', 'macroF1', 'adaptPerplexity', 'perplexity', 'evalLoss', 'loss', 'adaptLoss', 'baseLoss', 'forgetting',
] as const;
const NOT_QUALITY = new Set(['examples']);

/** Up to `max` metric names for a group of runs: the known ones in
 * MAIN_METRIC_ORDER, else the others sorted by name. */
export function mainMetrics(records: readonly { metrics?: Record<string, number> }[], max = 3): string[] {
  const present = new Set<string>();
  for (const r of records) {
    for (const [k, v] of Object.entries(r.metrics ?? {})) if (isFiniteNumber(v)) present.add(k);
  }
  const known = MAIN_METRIC_ORDER.filter((m) => present.has(m));
  if (known.length > 0) return known.slice(0, max);
  return [...present].filter((m) => !NOT_QUALITY.has(m)).sort().slice(0, max);
}

/** Records grouped by task, tasks in order of first appearance, runs in record order. */
export function byTask(records: readonly RunRecord[]): Map<string, RunRecord[]> {
  const out = new Map<string, RunRecord[]>();
  for (const r of records) {
    const g = out.get(r.task);
    if (g) g.push(r);
    else out.set(r.task, [r]);
  }
  return out;
}

/** Distinct values in order of first appearance. */
export function distinct<T>(values: Iterable<T>): T[] {
  return [...new Set(values)];
}

function settingText(v: string | number | boolean | undefined): string {
  return v === undefined ? '' : String(v);
}

/** Labels that tell the runs of one task apart: the method name, plus the
 * settings that differ between runs of that method (`lora r=8`; a setting a
 * run does not have is left out), plus `#n` where even those are identical. */
export function runLabels(taskRecords: readonly RunRecord[]): Map<RunRecord, string> {
  const labels = new Map<RunRecord, string>();
  const byMethod = new Map<string, RunRecord[]>();
  for (const r of taskRecords) {
    const g = byMethod.get(r.method);
    if (g) g.push(r);
    else byMethod.set(r.method, [r]);
  }
  for (const [method, runs] of byMethod) {
    if (runs.length === 1) { labels.set(runs[0], method); continue; }
    const keys = distinct(runs.flatMap((r) => Object.keys(r.settings ?? {}))).sort();
    const differing = keys.filter((k) => new Set(runs.map((r) => settingText(r.settings?.[k]))).size > 1);
    const base = runs.map((r) => [method, ...differing.filter((k) => r.settings?.[k] !== undefined)
      .map((k) => `${k}=${settingText(r.settings?.[k])}`)].join(' '));
    const seen = new Map<string, number>();
    const dup = new Set(base.filter((b, i) => base.indexOf(b) !== i));
    runs.forEach((r, i) => {
      if (!dup.has(base[i])) { labels.set(r, base[i]); return; }
      const n = (seen.get(base[i]) ?? 0) + 1;
      seen.set(base[i], n);
      labels.set(r, `${base[i]} #${n}`);
    });
  }
  return labels;
}

/** Settings shared (same value) by every run of a group, sorted by key. */
export function commonSettings(records: readonly RunRecord[]): [string, string | number | boolean][] {
  if (records.length === 0) return [];
  const keys = distinct(records.flatMap((r) => Object.keys(r.settings ?? {}))).sort();
  const out: [string, string | number | boolean][] = [];
  for (const k of keys) {
    const v = records[0].settings?.[k];
    if (v !== undefined && records.every((r) => r.settings?.[k] === v)) out.push([k, v]);
  }
  return out;
}

/** Why a run has no result, in words: "does not fit (N bytes asked)",
 * "diverged at step S", "error: ..."; "ok" for a finished run. */
export function statusText(r: RunRecord, maxError = 160): string {
  switch (r.status) {
    case 'ok': return 'ok';
    case 'oom':
      // planned: not run, the planner's peak exceeded the free device memory
      if (r.fit) return `does not fit (planned ${formatMiB(r.fit.plannedBytes)} MiB, ${formatMiB(r.fit.freeBytes)} MiB free; not run)`;
      // on the GPU: an allocation failed during the run
      if (r.provenance?.backend === 'cuda') return isFiniteNumber(r.oomBytes) ? `OOM (${r.oomBytes} bytes asked)` : 'OOM';
      return isFiniteNumber(r.oomBytes) ? `does not fit (${r.oomBytes} bytes asked)` : 'does not fit';
    case 'diverged': return isFiniteNumber(r.divergedAtStep) ? `diverged at step ${r.divergedAtStep}` : 'diverged';
    default: return `error: ${firstLine(r.error ?? 'unknown', maxError)}`;
  }
}

function firstLine(s: string, max: number): string {
  const line = String(s).split(/\r?\n/).find((l) => l.trim() !== '') ?? '';
  const t = line.trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

/** Memory categories of the records: the core's order, then any others by name. */
export function memoryCategories(records: readonly RunRecord[]): string[] {
  const seen = new Set<string>();
  for (const r of records) for (const k of Object.keys(r.memory?.peak ?? {})) seen.add(k);
  const known: string[] = CATEGORIES.filter((c) => seen.has(c));
  const extra = [...seen].filter((c) => !(CATEGORIES as readonly string[]).includes(c)).sort();
  return [...known, ...extra];
}

export interface ParetoPoint {
  /** peak memory, bytes (lower is better) */
  memory: number;
  /** task metric */
  metric: number;
}

/** Indices of the Pareto-optimal points, sorted by memory ascending (ties by
 * index): no other point has memory <= and a metric at least as good with
 * one of the two strictly better. Identical points are all optimal. */
export function paretoFront(points: readonly ParetoPoint[], direction: MetricDirection): number[] {
  const better = (a: number, b: number) => (direction === 'higher' ? a > b : a < b);
  const front: number[] = [];
  points.forEach((p, i) => {
    const dominated = points.some((q, j) => j !== i &&
      q.memory <= p.memory && !better(p.metric, q.metric) && (q.memory < p.memory || better(q.metric, p.metric)));
    if (!dominated) front.push(i);
  });
  return front.sort((a, b) => points[a].memory - points[b].memory || a - b);
}

// ---- number formats (no locale: the output must not depend on the machine)

export const MIB = 1024 * 1024;

export function groupThousands(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const neg = n < 0;
  const [int, frac] = Math.abs(n).toFixed(0).split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${neg ? '-' : ''}${grouped}${frac ? `.${frac}` : ''}`;
}

export function formatMiB(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}

/** bits per weight: whole numbers as they are, others to 3 decimals (4.127) */
export function formatBits(bits: number): string {
  return Number.isInteger(bits) ? String(bits) : bits.toFixed(3);
}

export function formatBytes(bytes: number): string {
  if (!isFiniteNumber(bytes)) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes, u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

export function formatCount(n: number): string {
  if (!isFiniteNumber(n)) return '-';
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

/** Trainable parameters with their share of the total: "1.18 M (0.93%)". */
export function formatParams(trainable: number, total: number): string {
  if (!isFiniteNumber(trainable)) return '-';
  if (!isFiniteNumber(total) || total <= 0) return formatCount(trainable);
  const pct = (100 * trainable) / total;
  const p = pct >= 10 ? pct.toFixed(0) : pct >= 0.1 ? pct.toFixed(2) : pct.toPrecision(2);
  return `${formatCount(trainable)} (${p}%)`;
}

export function formatMetric(v: unknown): string {
  if (!isFiniteNumber(v)) return '-';
  const a = Math.abs(v);
  if (a >= 10000) return groupThousands(v);
  if (a >= 100) return v.toFixed(1);
  if (a >= 1) return v.toFixed(3);
  return v.toFixed(4);
}

/** The records' distinct values of one provenance field, joined. */
export function provenanceValues(records: readonly RunRecord[], key: 'commit' | 'cpu' | 'gemm' | 'node' | 'backend' | 'device'): string {
  const vals = distinct(records.map((r) => r.provenance?.[key]).filter((v): v is string => typeof v === 'string' && v !== ''));
  return vals.length ? vals.join(', ') : '-';
}

/** commit · cpu · gemm · node · backend (device), each the records' distinct values. */
export function provenanceLine(records: readonly RunRecord[]): string {
  return [
    `commit ${provenanceValues(records, 'commit')}`,
    `cpu ${provenanceValues(records, 'cpu')}`,
    `gemm ${provenanceValues(records, 'gemm')}`,
    `node ${provenanceValues(records, 'node')}`,
    `backend ${provenanceValues(records, 'backend')} (${provenanceValues(records, 'device')})`,
  ].join(' · ');
}

/** Tokens/s of the median step when recorded (robust to a busy moment), else over the whole run. */
export function steadyTokensPerSecond(r: RunRecord): number {
  return r.speed?.steadyTokensPerSecond ?? r.speed?.tokensPerSecond;
}

/** A peer run beside ours: the same first steps from the same weights and batches. */
export interface PeerComparison {
  task: string;
  peer: RunRecord;
  ours: RunRecord | undefined;
  /** our run's label within its task */
  label: string;
  impl: string;
  steps: number;
  peerTokensPerSecond: number;
  oursTokensPerSecond: number;
  /** ours / peer (tokens/s, median steps) */
  ratio: number;
  /** max |peer - ours| over the first 10 steps */
  lossMaxAbsDiff10: number;
  /** leading steps whose losses agree within 1e-4 */
  stepsAgreeing: number;
}

/** The peer rows of these records, each paired with the run of ours it redid. */
export function peerComparisons(records: readonly RunRecord[]): PeerComparison[] {
  const byId = new Map(records.map((r) => [r.id, r]));
  const labels = new Map<RunRecord, string>();
  for (const [, runs] of byTask(records.filter((r) => !isPeer(r)))) for (const [r, l] of runLabels(runs)) labels.set(r, l);
  return records.filter(isPeer).map((p) => {
    const ours = p.peerOf ? byId.get(p.peerOf) : undefined;
    const pt = steadyTokensPerSecond(p), ot = ours ? steadyTokensPerSecond(ours) : NaN;
    return {
      task: p.task, peer: p, ours, label: ours ? labels.get(ours) ?? ours.method : p.method, impl: p.impl ?? '-',
      steps: p.lossCurve?.length ?? 0, peerTokensPerSecond: pt, oursTokensPerSecond: ot,
      ratio: isFiniteNumber(pt) && pt > 0 && isFiniteNumber(ot) ? ot / pt : NaN,
      // a speed row's peer starts from random weights of its own: its losses are not comparable
      ...(ours && p.status === 'ok' && p.settings?.weights !== 'random' ? lossAgreement(p.lossCurve ?? [], ours.lossCurve ?? []) : { lossMaxAbsDiff10: NaN, stepsAgreeing: NaN }),
    };
  });
}
