// report.html: one self-contained file that opens offline. Every chart is a
// vega-lite spec compiled to vega and rendered to SVG here, in Node (vega's
// headless 'none' renderer), then inlined: the page has no <script>, no CDN,
// no web font, and a Content-Security-Policy that forbids fetching anything.
//
// Charts, each a <figure data-chart="NAME"> holding an <svg> (or a
// placeholder line) and the data table it was drawn from:
//   memory      peak memory per run, stacked by category, one panel per task
//   throughput  training tokens/s per run, one panel per task
//   peers       tokens/s of ours beside TensorFlow.js and PyTorch redoing the
//               same steps (log scale), with memory and loss agreement
//   pareto      task metric vs peak memory, with the Pareto front
//   loss        training loss per step, one line per run
//   deployable  deployable-model metric vs bits (record.deployable)
//   kernels     kernel GFLOP/s as a fraction of the measured peak (opts.kernels)
import type { TopLevelSpec } from 'vega-lite';
import { kernelFraction } from '@tunebench/core';
import { type RunRecord, isPeer, rssBytesOf } from '../record.js';
import { intervalText, learnedVerdict, taskMetric } from '../stats/learned.js';
import { bootstrapInterval } from '../stats/bootstrap.js';
import { BUSY_LABEL, busyRuns, claims, comparisons, metricCell, notLearned, seedGroups } from './resolve.js';
import {
  byTask, distinct, peerComparisons, formatBits, formatBytes, formatMetric, formatMiB, formatParams, groupThousands, isFiniteNumber, MIB,
  mainMetrics, memoryCategories, metricDirection, paretoFront, provenanceLine, runLabels, statusText,
} from './common.js';

/** One kernel's measured speed, for the `kernels` chart. */
export interface KernelSpeedRow {
  /** what was timed, e.g. 'gemm f32 1024x1024x1024' or 'attention_forward T=512' */
  name: string;
  /** mean milliseconds per call */
  ms?: number;
  /** measured throughput, GFLOP/s */
  gflops: number;
  /** the peak it is compared with, GFLOP/s: a figure measured on the same
   * machine (e.g. the best GEMM shape, or OpenBLAS's), not a datasheet number */
  peakGflops: number;
  /** compulsory memory traffic per second, GB/s, and the measured bandwidth peak */
  gbps?: number;
  peakGbps?: number;
  /** which roof limits it (FLOP per byte below the machine balance: memory);
   * the fraction shown is of that peak. Default compute. */
  bound?: 'compute' | 'memory';
}

/** A kernel row's fraction of the peak that bounds it (null without a usable peak): the harness's rule. */
export { kernelFraction };

/** Kernel benchmark figures to show beside the runs (`renderReport(..., { kernels })`). */
export interface KernelSpeeds {
  rows: KernelSpeedRow[];
}

export interface ReportOptions {
  /** page title and heading; default 'tunebench report' */
  title?: string;
  /** kernel speeds; the `kernels` chart is drawn only when given */
  kernels?: KernelSpeeds;
}

/** The data-chart names, in page order (`kernels` only with opts.kernels). */
export const REPORT_CHARTS = ['metrics', 'memory', 'throughput', 'peers', 'pareto', 'loss', 'deployable', 'kernels'] as const;
/** Charts drawn only when the records hold their data (a learning-rate search). */
export const OPTIONAL_CHARTS = ['tuning'] as const;
export type ReportChart = (typeof REPORT_CHARTS)[number] | (typeof OPTIONAL_CHARTS)[number];

export const NO_DEPLOYABLE_TEXT = 'no deployable-model rows in this run';
export const NO_PEERS_TEXT = 'no peer rows in this run (the suite\u2019s peers, or --peers tfjs,pytorch)';

/** Escapes text for HTML element content and attribute values. */
export function escapeHtml(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

// ---- vega-lite -> vega -> SVG

type Spec = Record<string, unknown>;

const VL_CONFIG = {
  font: 'sans-serif',
  background: 'white',
  view: { stroke: '#ddd' },
  // Text is measured by estimate in Node (no canvas), which runs wide: generous limits.
  axis: { labelFontSize: 11, titleFontSize: 11, labelLimit: 240 },
  // The top label inside the plot, and the title no taller than the plot, so
  // that nothing sticks out above a panel and every panel's title sits at the
  // same height.
  axisY: { labelFlush: true, titleLimit: 240 },
  legend: { labelFontSize: 11, titleFontSize: 11, labelLimit: 280 },
  title: { fontSize: 13, anchor: 'start', frame: 'group' },
};

const PANEL_WIDTH = 320;
const PANEL_HEIGHT = 240;

/** Renders a vega-lite spec to an SVG string. The SVG's ids (clip paths,
 * gradients) become `<idPrefix>-1`, `-2`, ...: unique within the page (two
 * inline SVGs sharing an id would clip each other) and the same every render. */
export async function vegaLiteToSvg(spec: Spec, idPrefix: string): Promise<string> {
  // Loaded on first use (~150 ms), so importing the package stays cheap.
  const [vega, { compile }] = await Promise.all([import('vega'), import('vega-lite')]);
  const compiled = compile({ config: VL_CONFIG, ...spec } as unknown as TopLevelSpec, { logger: vega.logger(vega.Error) }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Error });
  try {
    const svg = await view.toSVG();
    return cleanSvg(svg, idPrefix);
  } finally {
    view.finalize();
  }
}

function cleanSvg(svg: string, idPrefix: string): string {
  // Renumber ids in order of appearance: vega's counter runs on across
  // renders, and the page must come out the same every time.
  const ids = new Map<string, string>();
  for (const m of svg.matchAll(/\bid="([^"]+)"/g)) if (!ids.has(m[1])) ids.set(m[1], `${idPrefix}-${ids.size + 1}`);
  const rename = (id: string) => ids.get(id) ?? id;
  let out = svg.replace(/\bid="([^"]+)"|url\(#([^)"]+)\)|href="#([^"]+)"/g, (_m, id?: string, url?: string, href?: string) =>
    id !== undefined ? `id="${rename(id)}"` : url !== undefined ? `url(#${rename(url)})` : `href="#${rename(href!)}"`);
  // vega declares the xlink namespace on every SVG; drop it when unused so the
  // only URL on the page is the SVG namespace itself.
  if (!/\bxlink:/.test(out.replace(/\sxmlns:xlink="[^"]*"/, ''))) out = out.replace(/\sxmlns:xlink="[^"]*"/, '');
  return out;
}

// ---- chart data

interface TaskGroup {
  task: string;
  runs: RunRecord[];
  labels: Map<RunRecord, string>;
}

function groups(records: readonly RunRecord[]): TaskGroup[] {
  return [...byTask(records)].map(([task, runs]) => ({ task, runs, labels: runLabels(runs) }));
}

/** Runs whose training ran to the end or diverged: their memory and speed were measured. */
function trained(r: RunRecord): boolean {
  return r.status === 'ok' || r.status === 'diverged';
}

function concat(panels: Spec[], resolveColor: 'shared' | 'independent'): Spec {
  return { concat: panels, columns: 2, spacing: 40, resolve: { scale: { color: resolveColor } } };
}

function xRun(order: string[]): Spec {
  return { field: 'run', type: 'nominal', sort: order, title: null, axis: { labelAngle: -30 } };
}

interface Chart {
  name: ReportChart;
  caption: string;
  svg?: string;
  placeholder?: string;
  table: string;
}

function table(head: string[], rows: (string | number)[][], opts: { numeric?: boolean[]; rowAttrs?: string[] } = {}): string {
  const th = head.map((h, i) => `<th${opts.numeric?.[i] ? ' class="num"' : ''}>${escapeHtml(h)}</th>`).join('');
  const body = rows.map((r, j) =>
    `<tr${opts.rowAttrs?.[j] ?? ''}>${r.map((c, i) => `<td${opts.numeric?.[i] ? ' class="num"' : ''}>${escapeHtml(c)}</td>`).join('')}</tr>`).join('\n');
  return `<table class="data"><thead><tr>${th}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

// (0) the task metric with its interval, per method, beside the untrained model's interval and the majority share
async function metricsChart(records: readonly RunRecord[]): Promise<Chart> {
  const groups = seedGroups(records).filter((g) => g.ok.length > 0);
  const methods = distinct(records.map((r) => r.method));
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  for (const task of distinct(groups.map((g) => g.task))) {
    const gs = groups.filter((g) => g.task === task && !g.ok[0].deployableOf);
    const metric = taskMetric(gs[0]?.ok[0]?.metrics);
    if (!metric) continue;
    const values = gs.filter((g) => g.metrics[metric]).map((g) => {
      const m = g.metrics[metric], v = learnedVerdict(g.ok[0]);
      rows.push([task, g.label, metric, g.ok.length, metricCell(m, g.ok.length), v ? intervalText(v.untrained) : '-', v ? (v.learned ? 'yes' : 'no') : '-']);
      return { run: g.label, method: g.records[0].method, value: m.mean, lo: m.interval?.lo ?? m.mean, hi: m.interval?.hi ?? m.mean };
    });
    if (values.length === 0) continue;
    // the untrained model's interval (the first run's starting point) as a band, the majority share as a line
    const first = learnedVerdict(gs[0].ok[0]);
    const majority = gs[0].ok[0].metrics.majorityBaseline;
    const x = xRun(values.map((v) => v.run));
    const y = { field: 'value', type: 'quantitative', title: metric, scale: { zero: false, padding: 10 } };
    const layer: Spec[] = [];
    if (first) layer.push({ data: { values: [{ lo: first.untrained.lo, hi: first.untrained.hi }] }, mark: { type: 'rect', color: '#ddd', opacity: 0.6 },
      encoding: { y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' } } });
    if (isFiniteNumber(majority)) layer.push({ data: { values: [{ m: majority }] }, mark: { type: 'rule', color: '#c33', strokeDash: [4, 3] }, encoding: { y: { field: 'm', type: 'quantitative' } } });
    layer.push(
      { data: { values }, mark: { type: 'rule', strokeWidth: 1.5 }, encoding: { x, y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' }, color: { field: 'method', type: 'nominal', scale: { domain: methods }, title: 'method' } } },
      { data: { values }, mark: { type: 'point', filled: true, size: 60 }, encoding: { x, y, color: { field: 'method', type: 'nominal', scale: { domain: methods }, title: 'method' } } },
    );
    panels.push({ title: { text: task, subtitle: `${metric}: ${metricDirection(metric)} is better; grey band: untrained model${isFiniteNumber(majority) ? '; red line: majority share' : ''}` }, width: { step: 44 }, height: PANEL_HEIGHT, layer });
  }
  const caption = 'Each method\'s task metric (the mean over its seeds) with its 95% bootstrap interval over the test items (error bars); the grey band is the untrained starting point\'s interval, which a run must leave to count as having learned.';
  const head = ['task', 'method', 'metric', 'seeds', 'value [95% interval]', 'untrained [95% interval]', 'learned'];
  const tbl = table(head, rows, { numeric: [false, false, false, true, true, true, false] });
  if (panels.length === 0) return { name: 'metrics', caption, placeholder: 'no finished run with a task metric', table: tbl };
  return { name: 'metrics', caption, svg: await vegaLiteToSvg(concat(panels, 'shared'), 'metrics'), table: tbl };
}

// (a) memory
async function memoryChart(gs: TaskGroup[]): Promise<Chart> {
  const all = gs.flatMap((g) => g.runs);
  const cats = memoryCategories(all);
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  for (const g of gs) {
    const runs = g.runs.filter((r) => trained(r) && isFiniteNumber(r.memory?.peakTotal) && r.memory.peakTotal > 0);
    for (const r of g.runs) {
      const peak = r.memory?.peak as Record<string, number> | undefined;
      rows.push([g.task, g.labels.get(r)!, statusText(r),
        ...cats.map((c) => (trained(r) && isFiniteNumber(peak?.[c]) ? formatMiB(peak![c]) : '-')),
        trained(r) && isFiniteNumber(r.memory?.peakTotal) ? formatMiB(r.memory.peakTotal) : '-',
        trained(r) && isFiniteNumber(rssBytesOf(r)) ? formatMiB(rssBytesOf(r)!) : '-',
        trained(r) && isFiniteNumber(r.memory?.cachedBytes) ? formatMiB(r.memory.cachedBytes) : '-',
        isFiniteNumber(r.memory?.predicted?.total) ? formatMiB(r.memory.predicted!.total) : '-']);
    }
    if (runs.length === 0) continue;
    const order = runs.map((r) => g.labels.get(r)!);
    const bars = runs.flatMap((r) => cats.map((c, i) => ({
      run: g.labels.get(r)!, category: c, order: i, mib: ((r.memory.peak as Record<string, number>)[c] ?? 0) / MIB,
    }))).filter((d) => isFiniteNumber(d.mib) && d.mib > 0);
    const totals = runs.map((r) => ({ run: g.labels.get(r)!, mib: r.memory.peakTotal / MIB, what: 'peak total' }));
    const predicted = runs.filter((r) => isFiniteNumber(r.memory.predicted?.total))
      .map((r) => ({ run: g.labels.get(r)!, mib: r.memory.predicted!.total / MIB, what: 'predicted total' }));
    const layer: Spec[] = [
      {
        data: { values: bars }, mark: { type: 'bar' },
        encoding: {
          x: xRun(order),
          y: { field: 'mib', type: 'quantitative', stack: 'zero', title: 'peak MiB' },
          color: { field: 'category', type: 'nominal', scale: { domain: cats }, title: 'category' },
          order: { field: 'order', type: 'quantitative' },
        },
      },
      {
        data: { values: [...totals, ...predicted] }, mark: { type: 'tick', thickness: 2 },
        encoding: {
          x: xRun(order), y: { field: 'mib', type: 'quantitative' },
          fill: { field: 'what', type: 'nominal', title: 'total', scale: { domain: ['peak total', 'predicted total'], range: ['black', '#d62728'] } },
        },
      },
    ];
    panels.push({ title: g.task, width: { step: 44 }, height: PANEL_HEIGHT, layer });
  }
  const caption = 'Peak memory by category. Bars stack each category\u2019s own peak (they need not coincide, so a stack can exceed the total); the black tick is the peak of the total, the red one the prediction of tunebench plan. Process RSS is the whole process\u2019s resident memory right after training (V8 heap, task data, the allocator\u2019s cache of freed blocks, shown apart), not what the run needs.';
  const head = ['task', 'method', 'status', ...cats.map((c) => `${c} MiB`), 'peak total MiB', 'process RSS MiB', 'allocator cache MiB', 'predicted MiB'];
  const tbl = table(head, rows, { numeric: head.map((_, i) => i >= 3) });
  if (panels.length === 0) return { name: 'memory', caption, placeholder: 'no run measured its memory', table: tbl };
  return { name: 'memory', caption, svg: await vegaLiteToSvg(concat(panels, 'shared'), 'memory'), table: tbl };
}

// (b) throughput
async function throughputChart(gs: TaskGroup[]): Promise<Chart> {
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  const methods = distinct(gs.flatMap((g) => g.runs.map((r) => r.method)));
  const busy = busyRuns(gs.flatMap((g) => g.runs));
  for (const g of gs) {
    for (const r of g.runs) {
      const s = r.speed;
      const t = trained(r);
      rows.push([g.task, g.labels.get(r)!, statusText(r) + (busy.has(r) ? ` † ${BUSY_LABEL} (${busy.get(r)})` : ''),
        t && isFiniteNumber(s?.tokensPerSecond) ? groupThousands(s.tokensPerSecond) : '-',
        ...(['forward', 'backward', 'optimizer', 'total'] as const).map((k) => (t && isFiniteNumber(s?.msPerStep?.[k]) ? s.msPerStep[k].toFixed(1) : '-')),
        t && isFiniteNumber(s?.medianStepMs) ? `${s.medianStepMs!.toFixed(1)}${s.stepQuartilesMs ? ` [${s.stepQuartilesMs[0].toFixed(1)}, ${s.stepQuartilesMs[1].toFixed(1)}]` : ''}` : '-',
        isFiniteNumber(r.referenceMs) ? `${r.referenceMs.toFixed(2)}${isFiniteNumber(r.referenceAfterMs) ? ` → ${r.referenceAfterMs.toFixed(2)}` : ''}` : '-']);
    }
    const runs = g.runs.filter((r) => trained(r) && isFiniteNumber(r.speed?.tokensPerSecond) && r.speed.tokensPerSecond > 0);
    if (runs.length === 0) continue;
    const values = runs.map((r) => ({ run: g.labels.get(r)! + (busy.has(r) ? ' †' : ''), method: r.method, tps: r.speed.tokensPerSecond, comparable: busy.has(r) ? 'no (machine busy)' : 'yes' }));
    panels.push({
      title: g.task, width: { step: 44 }, height: PANEL_HEIGHT, data: { values }, mark: { type: 'bar' },
      encoding: {
        x: xRun(values.map((v) => v.run)),
        y: { field: 'tps', type: 'quantitative', title: 'train tokens/s' },
        color: { field: 'method', type: 'nominal', scale: { domain: methods }, title: 'method' },
        opacity: { field: 'comparable', type: 'nominal', scale: { domain: ['yes', 'no (machine busy)'], range: [1, 0.35] }, title: 'speed comparable' },
      },
    });
  }
  const caption = `Training throughput: input tokens per second over the training steps, with the mean milliseconds per optimizer step and its split. A pale bar and † mark a run timed while the machine was busy (${BUSY_LABEL}): its reference kernel was far from the suite's median or changed during the run, or its step times spread widely.`;
  const head = ['task', 'method', 'status', 'tokens/s', 'forward ms', 'backward ms', 'optimizer ms', 'step ms', 'median step ms [IQR]', 'reference kernel ms (before → after)'];
  const tbl = table(head, rows, { numeric: head.map((_, i) => i >= 3) });
  if (panels.length === 0) return { name: 'throughput', caption, placeholder: 'no run measured its speed', table: tbl };
  return { name: 'throughput', caption, svg: await vegaLiteToSvg(concat(panels, 'shared'), 'throughput'), table: tbl };
}

/** The Pareto analysis of one task: the runs with a metric and a memory
 * figure, and which of them are Pareto-optimal (the line). Exported so that
 * the CLI or a test can name the front. */
export interface TaskPareto {
  task: string;
  metric: string;
  direction: 'higher' | 'lower';
  points: { record: RunRecord; label: string; memory: number; metric: number; front: boolean }[];
}

export function paretoByTask(records: readonly RunRecord[]): TaskPareto[] {
  const out: TaskPareto[] = [];
  for (const g of groups(records.filter((r) => !isPeer(r)))) {
    const ok = g.runs.filter((r) => r.status === 'ok');
    const metric = mainMetrics(ok, 1)[0];
    if (metric === undefined) continue;
    const pts = ok.filter((r) => isFiniteNumber(r.metrics?.[metric]) && isFiniteNumber(r.memory?.peakTotal) && r.memory.peakTotal > 0)
      .map((r) => ({ record: r, label: g.labels.get(r)!, memory: r.memory.peakTotal, metric: r.metrics[metric], front: false }));
    if (pts.length === 0) continue;
    const direction = metricDirection(metric);
    const front = paretoFront(pts, direction);
    for (const i of front) pts[i].front = true;
    // Points in front order first (memory ascending), then the others in record order.
    const ordered = [...front.map((i) => pts[i]), ...pts.filter((p) => !p.front)];
    out.push({ task: g.task, metric, direction, points: ordered });
  }
  return out;
}

// (c) Pareto
async function paretoChart(records: readonly RunRecord[]): Promise<Chart> {
  const methods = distinct(records.map((r) => r.method));
  const analyses = paretoByTask(records);
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  const attrs: string[] = [];
  analyses.forEach((a, k) => {
    const values = a.points.map((p) => {
      const iv = p.record.outcomes ? bootstrapInterval(a.metric, [p.record.outcomes]) : null;
      return { run: p.label, method: p.record.method, mib: p.memory / MIB, value: p.metric, lo: iv?.lo ?? p.metric, hi: iv?.hi ?? p.metric };
    });
    const line = a.points.filter((p) => p.front).map((p, i) => ({ mib: p.memory / MIB, value: p.metric, i }));
    const x = { field: 'mib', type: 'quantitative', title: 'peak memory MiB', scale: { zero: false, padding: 20 } };
    const y = { field: 'value', type: 'quantitative', title: a.metric, scale: { zero: false, padding: 20 } };
    panels.push({
      title: { text: a.task, subtitle: `${a.metric}: ${a.direction} is better` }, width: PANEL_WIDTH, height: PANEL_HEIGHT,
      layer: [
        { name: `pareto_front_${k}`, data: { values: line }, mark: { type: 'line', color: '#888', strokeDash: [4, 3] },
          encoding: { x, y, order: { field: 'i', type: 'quantitative' } } },
        { data: { values }, mark: { type: 'rule', strokeWidth: 1.2 },
          encoding: { x, y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' }, color: { field: 'method', type: 'nominal', scale: { domain: methods }, title: 'method' } } },
        { data: { values }, mark: { type: 'point', filled: true, size: 70 },
          encoding: { x, y, color: { field: 'method', type: 'nominal', scale: { domain: methods }, title: 'method' } } },
        { data: { values }, mark: { type: 'text', align: 'left', dx: 7, dy: -6, fontSize: 10 },
          encoding: { x, y, text: { field: 'run', type: 'nominal' } } },
      ],
    });
    for (const p of a.points) {
      rows.push([a.task, p.label, a.metric, formatMetric(p.metric), formatMiB(p.memory), p.front ? 'yes' : 'no']);
      attrs.push(` data-run="${escapeHtml(p.record.id)}" data-pareto="${p.front ? 'yes' : 'no'}"`);
    }
  });
  const caption = 'Task metric against peak memory, with 95% bootstrap intervals as error bars. The dashed line joins the Pareto-optimal runs by their point values: no other run uses less memory for an equal or better metric (accuracy and F1: higher is better; loss and perplexity: lower); where intervals overlap, the order is not resolved.';
  const head = ['task', 'method', 'metric', 'value', 'peak MiB', 'Pareto-optimal'];
  const tbl = table(head, rows, { numeric: [false, false, false, true, true, false], rowAttrs: attrs });
  if (panels.length === 0) return { name: 'pareto', caption, placeholder: 'no finished run with a task metric', table: tbl };
  return { name: 'pareto', caption, svg: await vegaLiteToSvg(concat(panels, 'shared'), 'pareto'), table: tbl };
}

const IMPLS = ['tunebench', 'tensorflow.js', 'pytorch'];

// (b2) peers
async function peersChart(records: readonly RunRecord[]): Promise<Chart> {
  const cs = peerComparisons(records);
  const rows = cs.map((c) => {
    const ok = c.peer.status === 'ok';
    return [c.task, c.label, c.impl, statusText(c.peer), c.steps,
      ok && isFiniteNumber(c.peerTokensPerSecond) ? groupThousands(c.peerTokensPerSecond) : '-',
      isFiniteNumber(c.oursTokensPerSecond) ? groupThousands(c.oursTokensPerSecond) : '-',
      ok && isFiniteNumber(c.ratio) ? `${c.ratio >= 10 ? c.ratio.toFixed(0) : c.ratio.toFixed(2)}x` : '-',
      ok && isFiniteNumber(c.peer.memory?.peakTotal) && c.peer.memory.peakTotal > 0 ? formatMiB(c.peer.memory.peakTotal) : '-',
      c.ours && isFiniteNumber(c.ours.memory?.peakTotal) ? formatMiB(c.ours.memory.peakTotal) : '-',
      ok && isFiniteNumber(c.lossMaxAbsDiff10) ? c.lossMaxAbsDiff10.toExponential(1) : '-',
      ok && isFiniteNumber(c.stepsAgreeing) ? `${c.stepsAgreeing} of ${c.steps}` : '-',
      c.peer.provenance?.gemm ?? '-'];
  });
  const caption = 'The same first training steps from the same weights, batches and learning rates, by tunebench and by its peers: tokens per second of the median step (log scale), the ratio, each one\u2019s peak memory (peers by their own measure: TensorFlow.js counts its tensor bytes, PyTorch the growth of the process\u2019s resident set) and how closely the loss curves agree: the largest difference over the first 10 steps (same math, so it must be small) and for how many leading steps they stay within 1e-4 (a jumpy run at a high learning rate amplifies rounding differences later on).';
  const head = ['task', 'method', 'peer', 'status', 'steps', 'peer tokens/s', 'tunebench tokens/s', 'tunebench \u00f7 peer', 'peer memory MiB', 'tunebench memory MiB', 'loss diff, first 10 steps', 'steps within 1e-4', 'peer build'];
  const tbl = rows.length ? table(head, rows, { numeric: head.map((_, i) => i >= 4 && i <= 11) }) : '';
  const panels: Spec[] = [];
  const impls = ['tunebench', ...distinct(cs.map((c) => c.impl))];
  const okCs = cs.filter((c) => c.peer.status === 'ok');
  for (const task of distinct(okCs.map((c) => c.task))) {
    const values: { run: string; impl: string; tps: number }[] = [];
    const seen = new Set<string>();
    for (const c of okCs.filter((x) => x.task === task)) {
      if (c.ours && !seen.has(c.ours.id) && isFiniteNumber(c.oursTokensPerSecond)) { seen.add(c.ours.id); values.push({ run: c.label, impl: 'tunebench', tps: c.oursTokensPerSecond }); }
      if (isFiniteNumber(c.peerTokensPerSecond) && c.peerTokensPerSecond > 0) values.push({ run: c.label, impl: c.impl, tps: c.peerTokensPerSecond });
    }
    if (values.length === 0) continue;
    // bars on a log scale need a floor to stand on (zero is not on it): the power of ten below the slowest
    const floor = 10 ** Math.floor(Math.log10(Math.min(...values.map((v) => v.tps))));
    const ceil = 10 ** Math.ceil(Math.log10(Math.max(...values.map((v) => v.tps))));
    panels.push({
      title: task, width: { step: 60 }, height: PANEL_HEIGHT, data: { values }, mark: { type: 'bar' },
      encoding: {
        x: xRun(distinct(values.map((v) => v.run))),
        xOffset: { field: 'impl', type: 'nominal', sort: impls },
        y: { field: 'tps', type: 'quantitative', title: 'tokens/s (median step)', scale: { type: 'log', domain: [floor, ceil] }, stack: null },
        y2: { datum: floor },
        color: { field: 'impl', type: 'nominal', scale: { domain: impls }, title: 'implementation' },
      },
    });
  }
  if (panels.length === 0) return { name: 'peers', caption, placeholder: NO_PEERS_TEXT, table: tbl };
  return { name: 'peers', caption, svg: await vegaLiteToSvg(concat(panels, 'shared'), 'peers'), table: tbl };
}

/** At most `max` points of a curve: every k-th step and the last one. */
function thin(curve: readonly (number | null)[], max = 400): { step: number; loss: number }[] {
  const k = Math.max(1, Math.ceil(curve.length / max));
  const out: { step: number; loss: number }[] = [];
  curve.forEach((v, i) => {
    if ((i % k === 0 || i === curve.length - 1) && isFiniteNumber(v)) out.push({ step: i + 1, loss: v });
  });
  return out;
}

// (d) loss curves
async function lossChart(gs: TaskGroup[]): Promise<Chart> {
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  for (const g of gs) {
    const values: { run: string; impl: string; step: number; loss: number }[] = [];
    for (const r of g.runs) {
      const curve = r.lossCurve ?? [];
      const finite = curve.filter(isFiniteNumber);
      if (curve.length) {
        rows.push([g.task, g.labels.get(r)!, statusText(r), curve.length,
          formatMetric(finite[0]), formatMetric(finite[finite.length - 1]), formatMetric(finite.length ? Math.min(...finite) : NaN)]);
      }
      for (const p of thin(curve)) values.push({ run: g.labels.get(r)!, impl: r.impl ?? 'tunebench', ...p });
    }
    if (values.length === 0) continue;
    // A diverging loss would flatten every other curve: the axis stops a
    // little above the highest loss of the runs that did not diverge.
    const settledMax = g.runs.filter((r) => r.status !== 'diverged')
      .reduce((m, r) => (r.lossCurve ?? []).reduce((a, v) => (isFiniteNumber(v) && v > a ? v : a), m), -Infinity);
    const allMax = values.reduce((m, v) => Math.max(m, v.loss), -Infinity);
    const cut = Number.isFinite(settledMax) && allMax > 1.2 * settledMax ? 1.2 * settledMax : undefined;
    panels.push({
      title: g.task, width: PANEL_WIDTH, height: PANEL_HEIGHT, data: { values }, mark: { type: 'line', strokeWidth: 1.5, clip: true },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'optimizer step' },
        y: { field: 'loss', type: 'quantitative', title: 'training loss', scale: cut === undefined ? { zero: false } : { zero: false, domainMax: cut } },
        color: { field: 'run', type: 'nominal', title: 'run', sort: distinct(values.map((v) => v.run)) },
        ...(values.some((v) => v.impl !== 'tunebench') ? {
          strokeDash: { field: 'impl', type: 'nominal', title: 'implementation', scale: { domain: IMPLS, range: [[1, 0], [6, 3], [2, 2]] } },
        } : {}),
      },
    });
  }
  const caption = 'Training loss per optimizer step, one line per run (peers dashed: they redo our first steps and should lie on our line). A diverged run stops where its loss stopped being finite, and its line is cut a little above the highest loss of the other runs.';
  const head = ['task', 'method', 'status', 'steps', 'first loss', 'last loss', 'lowest loss'];
  const tbl = table(head, rows, { numeric: head.map((_, i) => i >= 3) });
  if (panels.length === 0) return { name: 'loss', caption, placeholder: 'no run recorded a loss curve', table: tbl };
  return { name: 'loss', caption, svg: await vegaLiteToSvg({ ...concat(panels, 'independent'), resolve: { scale: { color: 'independent', strokeDash: 'independent' } } }, 'loss'), table: tbl };
}

// (e) deployable models
async function deployableChart(gs: TaskGroup[]): Promise<Chart> {
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  for (const g of gs) {
    const items = g.runs.flatMap((r) => (r.deployable ?? []).map((d) => ({ r, d })));
    if (items.length === 0) continue;
    const metric = mainMetrics(items.map(({ d }) => d), 1)[0];
    for (const { r, d } of items) {
      rows.push([g.task, g.labels.get(r)!, d.kind, formatBits(d.bits), formatBytes(d.bytes),
        Object.keys(d.metrics ?? {}).sort().map((k) => `${k}=${formatMetric(d.metrics[k])}`).join(', '),
        isFiniteNumber(d.decodeTokensPerSecond) ? groupThousands(d.decodeTokensPerSecond) : '-']);
    }
    if (metric === undefined) continue;
    const values = items.filter(({ d }) => isFiniteNumber(d.bits) && isFiniteNumber(d.metrics?.[metric]))
      .map(({ r, d }) => ({ run: g.labels.get(r)!, kind: d.kind, bits: d.bits, value: d.metrics[metric] }));
    if (values.length === 0) continue;
    const x = { field: 'bits', type: 'quantitative', title: 'bits per weight', scale: { zero: false, padding: 20 } };
    const y = { field: 'value', type: 'quantitative', title: metric, scale: { zero: false, padding: 20 } };
    panels.push({
      title: { text: g.task, subtitle: `${metric}: ${metricDirection(metric)} is better` }, width: PANEL_WIDTH, height: PANEL_HEIGHT, data: { values },
      layer: [
        { mark: { type: 'point', filled: true, size: 70 },
          encoding: { x, y, color: { field: 'run', type: 'nominal', title: 'run', legend: { orient: 'bottom', direction: 'vertical' } } } },
        { mark: { type: 'text', align: 'left', dx: 7, dy: -6, fontSize: 10 }, encoding: { x, y, text: { field: 'kind', type: 'nominal' } } },
      ],
    });
  }
  const caption = 'Deployable models (merged, requantized) from each run: task metric against bits per weight.';
  const head = ['task', 'method', 'model', 'bits', 'size', 'metrics', 'decode tokens/s'];
  const tbl = rows.length ? table(head, rows, { numeric: [false, false, false, true, true, false, true] }) : '';
  if (panels.length === 0) return { name: 'deployable', caption, placeholder: NO_DEPLOYABLE_TEXT, table: tbl };
  return { name: 'deployable', caption, svg: await vegaLiteToSvg(concat(panels, 'independent'), 'deployable'), table: tbl };
}

// (f) kernel speeds
async function kernelChart(k: KernelSpeeds): Promise<Chart> {
  const rows = (k.rows ?? []).map((r) => ({ ...r, name: String(r.name), fraction: kernelFraction(r) }));
  const caption = 'Kernel speeds as a fraction of a peak measured in the same run (the line marks 100%): compute-bound kernels against the best GEMM GFLOP/s, memory-bound ones (fewer FLOP per byte than the machine balance) against the streaming bandwidth.';
  const num = (v: unknown, d = 1) => (isFiniteNumber(v) ? v.toFixed(d) : '-');
  const tbl = table(['kernel', 'ms', 'GFLOP/s', 'GB/s', 'bound', 'peak', 'of peak'],
    rows.map((r) => [r.name, num(r.ms, 3), num(r.gflops), num(r.gbps), r.bound ?? 'compute',
      r.bound === 'memory' ? `${num(r.peakGbps)} GB/s` : `${num(r.peakGflops)} GFLOP/s`,
      r.fraction === null ? '-' : `${(100 * r.fraction).toFixed(1)}%`]),
    { numeric: [false, true, true, true, false, true, true] });
  const values = rows.filter((r) => r.fraction !== null).map((r) => ({ name: r.name, fraction: r.fraction!, bound: r.bound ?? 'compute' }));
  if (values.length === 0) return { name: 'kernels', caption, placeholder: 'no kernel rows with a peak', table: tbl };
  const top = Math.max(1, ...values.map((r) => r.fraction));
  const spec: Spec = {
    width: PANEL_WIDTH + 80, height: { step: 22 },
    layer: [
      { data: { values }, mark: { type: 'bar' },
        encoding: {
          y: { field: 'name', type: 'nominal', sort: values.map((v) => v.name), title: null, axis: { labelLimit: 400 } },
          x: { field: 'fraction', type: 'quantitative', title: 'fraction of measured peak', axis: { format: '%' }, scale: { domain: [0, top] } },
          color: { field: 'bound', type: 'nominal', scale: { domain: ['compute', 'memory'], range: ['#4c78a8', '#f58518'] }, title: 'bound by' },
        } },
      { data: { values: [{ one: 1 }] }, mark: { type: 'rule', color: '#c33', strokeDash: [4, 3] }, encoding: { x: { field: 'one', type: 'quantitative' } } },
    ],
  };
  return { name: 'kernels', caption, svg: await vegaLiteToSvg(spec, 'kernels'), table: tbl };
}

// ---- the page
// (f) learning-rate search and held-out curves
async function tuningChart(gs: TaskGroup[]): Promise<Chart | null> {
  const panels: Spec[] = [];
  const rows: (string | number)[][] = [];
  for (const g of gs) {
    const tuned = g.runs.filter((r) => r.tuning);
    const curved = g.runs.filter((r) => r.evalCurve && r.evalCurve.points.length);
    if (tuned.length === 0 && curved.length === 0) continue;
    for (const r of tuned) {
      const t = r.tuning!;
      rows.push([g.task, g.labels.get(r)!, t.metric, t.candidates.map((c) => `${c.lr.toExponential(1)}: ${c.score === null ? c.status : formatMetric(c.score)}`).join(', '),
        t.chosen.toExponential(1), t.steps, t.examples]);
    }
    const lrValues = tuned.flatMap((r) => r.tuning!.candidates.filter((c) => c.score !== null)
      .map((c) => ({ run: g.labels.get(r)!, lr: c.lr, score: c.score!, chosen: c.lr === r.tuning!.chosen ? 'chosen' : 'tried' })));
    const metric = tuned[0]?.tuning?.metric ?? curved[0]?.evalCurve?.metric ?? 'score';
    if (lrValues.length) {
      const x = { field: 'lr', type: 'quantitative', title: 'learning rate', scale: { type: 'log' } };
      const y = { field: 'score', type: 'quantitative', title: `validation ${metric}`, scale: { zero: false } };
      panels.push({
        title: { text: `${g.task}: learning-rate search`, subtitle: `${metric} after ${tuned[0].tuning!.steps} steps; filled: chosen` }, width: PANEL_WIDTH, height: PANEL_HEIGHT, data: { values: lrValues },
        layer: [
          { mark: { type: 'line', strokeWidth: 1.2 }, encoding: { x, y, color: { field: 'run', type: 'nominal', title: 'run' } } },
          { mark: { type: 'point', size: 60 }, encoding: { x, y, color: { field: 'run', type: 'nominal', title: 'run' },
            fill: { condition: { test: "datum.chosen === 'chosen'", field: 'run', type: 'nominal' }, value: 'white' } } },
        ],
      });
    }
    const curveValues = curved.flatMap((r) => r.evalCurve!.points.map((p) => ({ run: g.labels.get(r)!, step: p.step, value: p.value })));
    if (curveValues.length) {
      panels.push({
        title: { text: `${g.task}: held-out ${metric} during the run`, subtitle: 'still rising (or falling) at the last step: the budget ended before the method converged' },
        width: PANEL_WIDTH, height: PANEL_HEIGHT, data: { values: curveValues }, mark: { type: 'line', point: true, strokeWidth: 1.5 },
        encoding: {
          x: { field: 'step', type: 'quantitative', title: 'optimizer step' },
          y: { field: 'value', type: 'quantitative', title: `validation ${metric}`, scale: { zero: false } },
          color: { field: 'run', type: 'nominal', title: 'run' },
        },
      });
    }
  }
  if (panels.length === 0 && rows.length === 0) return null;
  const caption = 'Each method\u2019s learning rate chosen on validation data (never the test split): the score of each short candidate run, and the validation score of the full run at a few steps.';
  const head = ['task', 'method', 'metric', 'candidates (lr: score)', 'chosen', 'steps each', 'validation examples'];
  const tbl = rows.length ? table(head, rows, { numeric: [false, false, false, false, true, true, true] }) : '';
  if (panels.length === 0) return { name: 'tuning', caption, placeholder: 'no candidate finished', table: tbl };
  return { name: 'tuning', caption, svg: await vegaLiteToSvg({ ...concat(panels, 'independent') }, 'tuning'), table: tbl };
}

const CSS = `
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em;margin:.2em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.fail{color:#a11}
figure{margin:1.5em 0;padding:12px;border:1px solid #e4e4e4;border-radius:4px}
figcaption{font-weight:600;margin-bottom:.5em}figcaption span{font-weight:400;color:#555;display:block;font-size:.9em}
.chart svg{max-width:100%;height:auto;display:block}
.placeholder{color:#777;font-style:italic;padding:2em;text-align:center;border:1px dashed #ccc}
`;

function runsTable(g: TaskGroup): string {
  const ok = g.runs.filter((r) => r.status === 'ok');
  const metrics = mainMetrics(ok);
  const sg = seedGroups(g.runs);
  const cellOf = (r: RunRecord, m: string) => {
    const grp = sg.find((x) => x.records.includes(r));
    if (!grp?.metrics[m]) return formatMetric(r.metrics?.[m]);
    // a group of seeds: its figure once, on its first row
    return grp.records[0] === r ? metricCell(grp.metrics[m], grp.ok.length) : '〃';
  };
  const failedToLearn = new Set(notLearned(g.runs).map((n) => n.record));
  const head = ['method', 'status', ...metrics, 'peak memory MiB', 'tokens/s', 'trainable params', 'file size'];
  const body = g.runs.map((r) => {
    const isOk = r.status === 'ok';
    const peak = r.memory?.peakTotal, tps = r.speed?.tokensPerSecond;
    const cells: [string, string][] = [
      [g.labels.get(r)!, ''],
      [statusText(r, 300) + (failedToLearn.has(r) ? ' ⚠ did not learn' : ''), isOk && !failedToLearn.has(r) ? '' : 'fail'],
      ...metrics.map((m): [string, string] => [isOk ? cellOf(r, m) : '-', 'num']),
      [isFiniteNumber(peak) && peak > 0 ? formatMiB(peak) : '-', 'num'],
      [isFiniteNumber(tps) && tps > 0 ? groupThousands(tps) : '-', 'num'],
      [formatParams(r.trainableParameters, r.totalParameters), 'num'],
      [isOk && isFiniteNumber(r.fileBytes) && r.fileBytes > 0 ? formatBytes(r.fileBytes) : '-', 'num'],
    ];
    return `<tr data-run="${escapeHtml(r.id)}" data-status="${escapeHtml(r.status)}">${cells.map(([t, c]) => `<td${c ? ` class="${c}"` : ''}>${escapeHtml(t)}</td>`).join('')}</tr>`;
  });
  const numeric = new Set(head.map((_, i) => i).filter((i) => i >= 2));
  const cs = comparisons(sg).filter((c) => c.task === g.task);
  const block = cs.length
    ? `\n<p class="meta">comparisons (${escapeHtml(cs[0].metric)}, paired bootstrap on the same test items, 95%):</p>\n<ul class="comparisons">${cs.map((c) => `<li data-comparison="${escapeHtml(c.what)}">${escapeHtml(c.what)}: ${escapeHtml(c.text)}</li>`).join('')}</ul>`
    : '';
  const notes = [...failedToLearn].map((r) => `<li>${escapeHtml(r.id)}: ${escapeHtml(learnedVerdict(r)!.text)}</li>`).join('');
  return `<h3>${escapeHtml(g.task)}</h3>\n${notes ? `<ul class="notes">${notes}</ul>\n` : ''}<table class="runs"><thead><tr>${head.map((h, i) => `<th${numeric.has(i) ? ' class="num"' : ''}>${escapeHtml(h)}</th>`).join('')}</tr></thead><tbody>\n${body.join('\n')}\n</tbody></table>${block}`;
}

/** The Claims section: each claim of the methods' papers with a verdict and its evidence. */
function claimsHtml(records: readonly RunRecord[]): string {
  const rows = claims(seedGroups(records));
  if (rows.length === 0) return '';
  return ['<h2>Claims</h2>',
    '<p class="meta">checked against this suite\'s own rows and intervals: reproduced when the 95% interval of the difference stays within the margin on the worse side, contradicted when it lies wholly beyond it, else not resolved; a claim without rows is left out.</p>',
    `<table class="claims"><thead><tr><th>claim</th><th>task</th><th>verdict</th><th>evidence</th></tr></thead><tbody>\n${rows.map((c) =>
      `<tr data-verdict="${escapeHtml(c.verdict)}"><td>${escapeHtml(c.claim)}</td><td>${escapeHtml(c.task ?? '-')}</td><td>${escapeHtml(c.verdict)}</td><td>${escapeHtml(c.evidence)}</td></tr>`).join('\n')}\n</tbody></table>`].join('\n');
}

function figure(c: Chart, title: string): string {
  const body = c.svg !== undefined ? `<div class="chart">${c.svg}</div>` : `<p class="placeholder">${escapeHtml(c.placeholder ?? '')}</p>`;
  return `<figure data-chart="${c.name}">\n<figcaption>${escapeHtml(title)}<span>${escapeHtml(c.caption)}</span></figcaption>\n${body}\n${c.table}\n</figure>`;
}

const TITLES: Record<ReportChart, string> = {
  metrics: 'Task metric with 95% intervals, beside the untrained model',
  memory: 'Peak memory by category',
  throughput: 'Training tokens per second',
  peers: 'tunebench beside TensorFlow.js and PyTorch',
  pareto: 'Task metric vs peak memory (Pareto front)',
  loss: 'Training loss curves',
  deployable: 'Deployable models: metric vs bits',
  kernels: 'Kernel speed vs measured peak',
  tuning: 'Learning rates chosen on validation data, and held-out curves',
};

/** The whole report as one HTML document. */
export async function renderReport(records: readonly RunRecord[], opts: ReportOptions = {}): Promise<string> {
  const title = opts.title ?? 'tunebench report';
  // peers have their own chart and join the loss curves; the rest is ours
  const ours = records.filter((r) => !isPeer(r));
  const gs = groups(ours);
  const charts: Chart[] = [
    await metricsChart(ours),
    await memoryChart(gs),
    await throughputChart(gs),
    await peersChart(records),
    await paretoChart(ours),
    await lossChart(groups(records)),
    await deployableChart(gs),
  ];
  const tuning = await tuningChart(gs);
  if (tuning) charts.push(tuning);
  if (opts.kernels) charts.push(await kernelChart(opts.kernels));
  const suites = distinct(records.map((r) => r.suite));
  const counts = (['ok', 'oom', 'diverged', 'error'] as const).map((s) => [s, records.filter((r) => r.status === s).length] as const)
    .filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s === 'oom' ? 'do not fit' : s === 'error' ? 'failed' : s}`);
  return [
    '<!doctype html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    // Nothing to fetch and nothing to run: the page is complete as it is.
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">`,
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeHtml(title)}</title>`,
    `<style>${CSS}</style>`,
    '</head>',
    '<body>',
    `<h1>${escapeHtml(title)}</h1>`,
    `<p class="meta">suite ${escapeHtml(suites.join(', ') || '-')} \u00b7 ${records.length} run${records.length === 1 ? '' : 's'}${counts.length ? `: ${escapeHtml(counts.join(', '))}` : ''}</p>`,
    ours.length ? `<p class="meta">${escapeHtml(provenanceLine(ours))}</p>` : '',
    '<h2>Runs</h2>',
    gs.length ? gs.map(runsTable).join('\n') : '<p class="placeholder">no runs recorded</p>',
    claimsHtml(ours),
    '<h2>Charts</h2>',
    ...charts.map((c) => figure(c, TITLES[c.name])),
    '</body>',
    '</html>',
    '',
  ].join('\n');
}
