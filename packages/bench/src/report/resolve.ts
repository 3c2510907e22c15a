// What the reports say about uncertainty, computed once for summary.md,
// results.csv and report.html from the records' per-example outcomes:
//   - seed groups: the runs of one method on one task that differ only in
//     their seed, with each metric's mean over seeds, the between-seed
//     spread and the bootstrap interval (stats/bootstrap.ts);
//   - comparisons: each method against full fine-tuning, QLoRA against LoRA
//     at the same rank, QA-LoRA's merged INT-N model against QLoRA merged and
//     requantized to the same width: a paired interval of the difference,
//     "better/worse by X [lo, hi]" or "not resolved";
//   - claims: what the methods' papers claim, checked against the suite's
//     own rows with a verdict and the evidence; a claim with no rows is left out;
//   - speed: which runs were timed while the machine was busy.
import { type RunRecord, isPeer, withDeployables } from '../record.js';
import { runLabels } from './common.js';
import { type Difference, type Interval, bootstrapInterval, hasInterval, pairedDifference, seedSpread } from '../stats/bootstrap.js';
import type { Outcomes } from '../stats/outcomes.js';
import { BUSY_LABEL, busyReason, higherIsBetter, learnedVerdict, referenceMedian, taskMetric } from '../stats/learned.js';

/** Metrics that get an interval in the tables (when the outcomes are there). */
export const INTERVAL_METRICS = ['accuracy', 'macroF1', 'adaptPerplexity', 'adaptLoss', 'perplexity', 'loss'] as const;

export interface MetricSummary {
  /** mean over the group's seeds */
  mean: number;
  /** between-seed sample standard deviation (0 with one seed) */
  spread: number;
  /** 95% bootstrap interval of the mean (test items resampled); absent without outcomes */
  interval?: Interval;
}

export interface SeedGroup {
  task: string;
  /** the method label (deployable rows: 'label → kind') */
  label: string;
  /** every record of the group, in record order */
  records: RunRecord[];
  /** the finished ones (what the figures are computed from) */
  ok: RunRecord[];
  seeds: number[];
  metrics: Record<string, MetricSummary>;
  /** outcomes of each finished seed (all present, or the group has no intervals) */
  outcomes: Outcomes[] | null;
}

const f4 = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : String(x));
const fmt = (x: number) => (Math.abs(x) >= 100 ? x.toFixed(1) : Math.abs(x) >= 10 ? x.toFixed(2) : x.toFixed(4));

/** Runs (ours, with deployable rows) grouped by task and method label; the seeds of one method fall in one group. */
export function seedGroups(records: readonly RunRecord[]): SeedGroup[] {
  const out = new Map<string, SeedGroup>();
  // one group: same task, method label and settings, the seed aside
  const settingsKey = (r: RunRecord) => JSON.stringify(Object.entries(r.settings ?? {}).filter(([k]) => k !== 'seed').sort(([a], [b]) => (a < b ? -1 : 1)));
  for (const r of withDeployables(records.filter((x) => !isPeer(x)))) {
    const key = `${r.task}\u0000${r.method}\u0000${settingsKey(r)}`;
    let g = out.get(key);
    if (!g) { g = { task: r.task, label: r.method, records: [], ok: [], seeds: [], metrics: {}, outcomes: null }; out.set(key, g); }
    g.records.push(r);
    if (r.status === 'ok') { g.ok.push(r); g.seeds.push(Number(r.settings?.seed ?? 0)); }
  }
  // labels that tell groups of one task apart (the settings that differ, as the tables label runs)
  for (const task of new Set([...out.values()].map((g) => g.task))) {
    const gs = [...out.values()].filter((g) => g.task === task);
    const labels = runLabels(gs.map((g) => g.records[0]));
    for (const g of gs) g.label = labels.get(g.records[0]) ?? g.label;
  }
  for (const g of out.values()) {
    g.outcomes = g.ok.length && g.ok.every((r) => r.outcomes) ? g.ok.map((r) => r.outcomes!) : null;
    const names = new Set(g.ok.flatMap((r) => Object.keys(r.metrics ?? {})));
    for (const m of names) {
      const vals = g.ok.map((r) => r.metrics[m]).filter((v) => typeof v === 'number' && Number.isFinite(v));
      if (vals.length !== g.ok.length || vals.length === 0) continue;
      const s: MetricSummary = { mean: vals.reduce((a, b) => a + b, 0) / vals.length, spread: seedSpread(vals) };
      if (g.outcomes && (INTERVAL_METRICS as readonly string[]).includes(m) && g.outcomes.every((o) => hasInterval(m, o))) {
        try { s.interval = bootstrapInterval(m, g.outcomes) ?? undefined; } catch { /* seeds on different items: no interval */ }
      }
      g.metrics[m] = s;
    }
  }
  return [...out.values()];
}

/** "0.7850 [0.7300, 0.8350]" (± the seed spread with several seeds). */
export function metricCell(s: MetricSummary | undefined, seeds = 1): string {
  if (!s) return '-';
  const iv = s.interval ? ` [${fmt(s.interval.lo)}, ${fmt(s.interval.hi)}]` : '';
  const sp = seeds > 1 ? ` ±${fmt(s.spread)} sd over ${seeds} seeds` : '';
  return `${fmt(s.mean)}${iv}${sp}`;
}

// ---- which kind of method a row is (from its settings: records do not name their plugin)

export type MethodKind = 'full' | 'lora' | 'qlora' | 'qalora' | 'other';
export function methodKind(r: RunRecord): MethodKind {
  const s = r.settings ?? {};
  if (s.r === undefined) return s.weights === undefined ? 'full' : 'other';
  if (s.format !== undefined) return 'qlora';
  if (s.bits !== undefined && s.groupSize !== undefined) return 'qalora';
  return 'lora';
}

// ---- comparisons

export interface Comparison {
  task: string;
  metric: string;
  /** 'qlora-r8 vs lora-r8' */
  what: string;
  a: string;
  b: string;
  difference: Difference;
  /** "better by X [lo, hi]", "worse by ...", "not resolved (X [lo, hi])" */
  text: string;
}

function diffText(metric: string, d: Difference): string {
  // the size of the difference with its interval, as positive numbers
  const iv = d.value >= 0 ? `${fmt(d.value)} [${fmt(d.lo)}, ${fmt(d.hi)}]` : `${fmt(-d.value)} [${fmt(-d.hi)}, ${fmt(-d.lo)}]`;
  if (d.verdict === 'not resolved') return `not resolved (difference ${fmt(d.value)} [${fmt(d.lo)}, ${fmt(d.hi)}])`;
  return `${d.verdict} by ${iv} (${metric}${higherIsBetter(metric) ? '' : ', lower is better'})`;
}

function compare(task: string, metric: string, a: SeedGroup, b: SeedGroup, what?: string): Comparison | null {
  if (!a.outcomes || !b.outcomes) return null;
  const d = pairedDifference(metric, a.outcomes, b.outcomes, higherIsBetter(metric));
  if (!d) return null;
  return { task, metric, what: what ?? `${a.label} vs ${b.label}`, a: a.label, b: b.label, difference: d, text: diffText(metric, d) };
}

/** The comparison block of each task: every method against full fine-tuning, QLoRA vs LoRA at the same rank, QA-LoRA merged vs the requantized QLoRA rows of the same width. */
export function comparisons(groups: readonly SeedGroup[]): Comparison[] {
  const out: Comparison[] = [];
  const tasks = [...new Set(groups.map((g) => g.task))];
  for (const task of tasks) {
    const gs = groups.filter((g) => g.task === task && g.ok.length > 0);
    const trained = gs.filter((g) => !g.ok[0].deployableOf);
    const metric = taskMetric(trained[0]?.ok[0]?.metrics);
    if (!metric) continue;
    const push = (c: Comparison | null) => { if (c) out.push(c); };
    const full = trained.find((g) => methodKind(g.ok[0]) === 'full');
    if (full) for (const g of trained) if (g !== full) push(compare(task, metric, g, full));
    for (const q of trained.filter((g) => methodKind(g.ok[0]) === 'qlora')) {
      const l = trained.find((g) => methodKind(g.ok[0]) === 'lora' && g.ok[0].settings.r === q.ok[0].settings.r);
      if (l) push(compare(task, metric, q, l));
    }
    for (const [qa, req] of qaloraPairs(gs)) push(compare(task, metric, qa, req));
  }
  return out;
}

/** (QA-LoRA merged INT-N, QLoRA merged + requantized INT-N at the same group size) deployable pairs of a task, GPTQ and RTN. */
function qaloraPairs(gs: readonly SeedGroup[]): [SeedGroup, SeedGroup, number, string][] {
  const out: [SeedGroup, SeedGroup, number, string][] = [];
  for (const qa of gs.filter((g) => g.ok[0].deployable_?.kind?.startsWith('QA-LoRA merged INT'))) {
    const bits = Number(qa.ok[0].settings.bits), group = Number(qa.ok[0].settings.groupSize);
    for (const quantizer of ['GPTQ', 'RTN']) {
      const req = gs.find((g) => g.ok[0].deployable_?.kind === `merged + requantized INT${bits} g${group} ${quantizer}`);
      if (req) out.push([qa, req, bits, quantizer]);
    }
  }
  return out;
}

// ---- claims

export type Verdict = 'reproduced' | 'not resolved' | 'contradicted';

export interface ClaimRow {
  claim: string;
  task?: string;
  verdict: Verdict;
  evidence: string;
}

/** The margin within which two methods count as matching: 0.02 absolute for accuracy and F1, 2% of the reference for perplexity, 0.02 nats for a loss. */
export function equivalenceMargin(metric: string, reference: number): number {
  if (/perplexity/i.test(metric)) return 0.02 * reference;
  return 0.02;
}

/** "a is at least as good as b" by the paired interval: reproduced when the worse-side bound stays within the margin, contradicted when the whole interval is worse by more than the margin. */
function nonInferior(metric: string, d: Difference, reference: number): { verdict: Verdict; margin: number } {
  const margin = equivalenceMargin(metric, reference);
  const up = higherIsBetter(metric);
  // the difference in the "better" direction: positive = a better
  const lo = up ? d.lo : -d.hi, hi = up ? d.hi : -d.lo;
  if (lo >= -margin) return { verdict: 'reproduced', margin };
  if (hi < -margin) return { verdict: 'contradicted', margin };
  return { verdict: 'not resolved', margin };
}

export const CLAIMS = {
  qloraMatchesLora: 'QLoRA (NF4 + double quantization) matches LoRA at the same rank',
  nf4Quarter: "QLoRA's frozen base takes about 1/4 of the bf16 base's bytes",
  qaloraBeatsRequantized: 'merged QA-LoRA INT-N is at least as good as QLoRA merged then requantized to INT-N with GPTQ (most visibly at 2-3 bits)',
  mergeExact: 'the merged QA-LoRA model keeps the trained metrics exactly; a requantized QLoRA model does not',
  smallRank: 'a small rank suffices (r 8 vs r 64)',
} as const;

/** The labels of a group's trained runs that did not learn (a deployable group: its trained runs'). */
function unlearned(g: SeedGroup, all: readonly SeedGroup[]): string[] {
  const trainedRuns = g.ok[0]?.deployableOf
    ? g.ok.map((d) => all.flatMap((x) => x.ok).find((x) => x.id === d.deployableOf && !x.deployableOf)).filter((x): x is RunRecord => !!x)
    : g.ok;
  return trainedRuns.filter((r) => learnedVerdict(r)?.learned === false).map((r) => r.id);
}

function nonInferiorRow(claim: string, task: string, metric: string, a: SeedGroup, b: SeedGroup, all: readonly SeedGroup[]): ClaimRow | null {
  const c = compare(task, metric, a, b);
  if (!c) return null;
  const ref = b.metrics[metric]?.mean ?? NaN;
  const nv = nonInferior(metric, c.difference, ref);
  // two runs that did not learn agree about nothing: such a comparison is no evidence either way
  const idle = [...unlearned(a, all), ...unlearned(b, all)];
  const verdict: Verdict = idle.length ? 'not resolved' : nv.verdict;
  return {
    claim, task, verdict,
    evidence: `${idle.length ? `${idle.join(', ')} did not learn the task, so this says nothing about the methods; ` : ''}`
      + `${a.label} ${metricCell(a.metrics[metric], a.seeds.length)} vs ${b.label} ${metricCell(b.metrics[metric], b.seeds.length)}: difference ${fmt(c.difference.value)} [${fmt(c.difference.lo)}, ${fmt(c.difference.hi)}] (paired, 95%); margin ±${fmt(nv.margin)} ${metric}`,
  };
}

/** Every claim the suite has rows for, with a verdict and its evidence. */
export function claims(groups: readonly SeedGroup[]): ClaimRow[] {
  const out: ClaimRow[] = [];
  const tasks = [...new Set(groups.map((g) => g.task))];
  const push = (r: ClaimRow | null) => { if (r) out.push(r); };
  for (const task of tasks) {
    const gs = groups.filter((g) => g.task === task && g.ok.length > 0);
    const trained = gs.filter((g) => !g.ok[0].deployableOf);
    const metric = taskMetric(trained[0]?.ok[0]?.metrics);
    if (!metric) continue;
    const kind = (g: SeedGroup) => methodKind(g.ok[0]);
    // 1. QLoRA (NF4, double quantization) vs LoRA at the same rank
    for (const q of trained.filter((g) => kind(g) === 'qlora' && g.ok[0].settings.format === 'nf4' && g.ok[0].settings.doubleQuant === true)) {
      const l = trained.find((g) => kind(g) === 'lora' && g.ok[0].settings.r === q.ok[0].settings.r);
      if (l) push(nonInferiorRow(CLAIMS.qloraMatchesLora, task, metric, q, l, groups));
    }
    // 3. QA-LoRA merged vs QLoRA merged + requantized with GPTQ at the same width
    for (const [qa, req, , quantizer] of qaloraPairs(gs)) if (quantizer === 'GPTQ') push(nonInferiorRow(CLAIMS.qaloraBeatsRequantized, task, metric, qa, req, groups));
    // 4. exactness of the merges: the deployable's outcomes against its trained run's
    for (const g of gs.filter((x) => x.ok[0].deployable_?.kind?.startsWith('QA-LoRA merged INT'))) {
      const runOf = (d: RunRecord) => trained.flatMap((x) => x.ok).find((x) => x.id === d.deployableOf);
      const diffs = g.ok.map((d) => { const t = runOf(d); return t ? maxMetricDiff(d, t) : NaN; });
      const exact = g.ok.every((d) => { const t = runOf(d); return !!t && sameEvaluation(d, t); });
      const reqs = gs.filter((x) => x.ok[0].deployable_?.kind?.startsWith('merged + requantized'));
      const reqDiffs = reqs.map((x) => ({
        label: x.label, diff: Math.max(...x.ok.map((d) => { const t = runOf(d); return t ? maxMetricDiff(d, t) : NaN; })),
        same: x.ok.every((d) => { const t = runOf(d); return !!t && sameEvaluation(d, t); }),
      }));
      const reqChanged = reqDiffs.filter((r) => !r.same);
      const verdict: Verdict = !exact ? 'contradicted' : reqDiffs.length === 0 || reqChanged.length === 0 ? 'not resolved' : 'reproduced';
      out.push({
        claim: CLAIMS.mergeExact, task, verdict,
        evidence: `${g.label}: largest |metric - trained| ${diffs.map((d) => d.toExponential(1)).join(', ')}${exact ? ` (the same predictions and per-sequence losses within float rounding, ${EXACT_RELATIVE} relative)` : ''}`
          + (reqDiffs.length ? `; requantized QLoRA rows: ${reqDiffs.map((r) => `${r.label} ${f4(r.diff)}`).join(', ')}` : '; no requantized QLoRA row to set beside it'),
      });
    }
    // 5. a small rank suffices: r 8 vs r 64 of the same method
    for (const k of ['lora', 'qlora'] as const) {
      const small = trained.find((g) => kind(g) === k && g.ok[0].settings.r === 8);
      const big = trained.find((g) => kind(g) === k && g.ok[0].settings.r === 64 && (k === 'lora' || g.ok[0].settings.format === small?.ok[0].settings.format));
      if (small && big) push(nonInferiorRow(CLAIMS.smallRank, task, metric, small, big, groups));
    }
  }
  // 2. NF4 base bytes vs bf16: the QLoRA run's deployables carry both (bytes of the projections)
  const seen = new Set<string>();
  for (const g of groups.filter((x) => x.ok[0]?.deployable_?.kind === 'merged + requantized NF4')) {
    const run = g.ok[0];
    const bf16 = groups.find((x) => x.task === g.task && x.ok[0]?.deployableOf === run.deployableOf && x.ok[0]?.deployable_?.kind === 'merged bf16')?.ok[0];
    if (!bf16 || seen.has(g.label.split(' → ')[0])) continue;
    seen.add(g.label.split(' → ')[0]);
    const ratio = run.fileBytes / bf16.fileBytes;
    out.push({
      claim: CLAIMS.nf4Quarter, verdict: ratio >= 0.2 && ratio <= 0.3 ? 'reproduced' : 'contradicted',
      evidence: `${g.label.split(' → ')[0]}: NF4 projections ${run.fileBytes} B vs bf16 ${bf16.fileBytes} B = ${ratio.toFixed(4)} (${(16 * ratio).toFixed(3)} bits per weight, the double-quantized constants included)`,
    });
  }
  return out;
}

/** Largest |metric - trained metric| over the metrics both have. */
function maxMetricDiff(d: RunRecord, t: RunRecord): number {
  let m = 0;
  for (const [k, v] of Object.entries(d.metrics)) if (Number.isFinite(v) && Number.isFinite(t.metrics[k])) m = Math.max(m, Math.abs(v - t.metrics[k]));
  return m;
}

/** Relative difference within which two evaluations of one model count as the same: float32 rounding of a different summation order (a merge folds the adapters into the weights). */
export const EXACT_RELATIVE = 1e-5;

/** A deployable that evaluates as its trained run: the same prediction on every test example and every metric and per-sequence NLL within float rounding. */
function sameEvaluation(d: RunRecord, t: RunRecord): boolean {
  const close = (a: number, b: number) => Math.abs(a - b) <= EXACT_RELATIVE * Math.max(1, Math.abs(a), Math.abs(b));
  for (const [k, v] of Object.entries(d.metrics)) if (Number.isFinite(v) && Number.isFinite(t.metrics[k]) && !close(v, t.metrics[k])) return false;
  const a = d.outcomes, b = t.outcomes;
  if (a?.labels && b?.labels && a.labels.pred.some((p, i) => p !== b.labels!.pred[i])) return false;
  if (a?.text && b?.text && a.text.nll.some((x, i) => !close(x, b.text!.nll[i]))) return false;
  return true;
}

// ---- learned / busy

/** Per run of ours (not deployables): the learned verdict, for the tables' status and the notes. */
export function notLearned(records: readonly RunRecord[]): { record: RunRecord; text: string }[] {
  return records.filter((r) => !isPeer(r) && !r.deployableOf).map((r) => ({ record: r, v: learnedVerdict(r) }))
    .filter((x) => x.v && !x.v.learned).map((x) => ({ record: x.record, text: x.v!.text }));
}

/** Runs timed while the machine was busy, with the reason. */
export function busyRuns(records: readonly RunRecord[]): Map<RunRecord, string> {
  const med = referenceMedian(records);
  const out = new Map<RunRecord, string>();
  for (const r of records) {
    if (isPeer(r) || r.deployableOf || r.status !== 'ok') continue;
    const why = busyReason(r, med);
    if (why) out.set(r, why);
  }
  return out;
}

export { BUSY_LABEL };
