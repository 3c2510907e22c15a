// The charts of report.html (html.ts), first part: the runs grouped by task,
// the Chart each builder returns (SVG or placeholder, caption, data table),
// and the metrics, memory, throughput, pareto (with paretoByTask) and peers
// charts. The loss, deployable, kernels and tuning charts are in
// charts_extra.ts.
import { type RunRecord, isPeer, rssBytesOf } from '../record.js';
import { intervalText, learnedVerdict, taskMetric } from '../stats/learned.js';
import { bootstrapInterval } from '../stats/bootstrap.js';
import { BUSY_LABEL, busyRuns, metricCell, seedGroups } from './resolve.js';
import {
  byTask, distinct, peerComparisons, formatMetric, formatMiB, groupThousands, isFiniteNumber, MIB,
  mainMetrics, memoryCategories, metricDirection, paretoFront, runLabels, statusText,
} from './common.js';
import type { ReportChart } from './html.js';
import { escapeHtml, table } from './html_tables.js';
import { type Spec, PANEL_HEIGHT, PANEL_WIDTH, concat, vegaLiteToSvg, xRun } from './vega.js';

export const NO_PEERS_TEXT = 'no peer rows in this run (the suite\u2019s peers, or --peers tfjs,pytorch)';

// ---- chart data

export interface TaskGroup {
  task: string;
  runs: RunRecord[];
  labels: Map<RunRecord, string>;
}

export function groups(records: readonly RunRecord[]): TaskGroup[] {
  return [...byTask(records)].map(([task, runs]) => ({ task, runs, labels: runLabels(runs) }));
}

/** Runs whose training ran to the end or diverged: their memory and speed were measured. */
function trained(r: RunRecord): boolean {
  return r.status === 'ok' || r.status === 'diverged';
}

export interface Chart {
  name: ReportChart;
  caption: string;
  svg?: string;
  placeholder?: string;
  table: string;
}

// (0) the task metric with its interval, per method, beside the untrained model's interval and the majority share
export async function metricsChart(records: readonly RunRecord[]): Promise<Chart> {
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
export async function memoryChart(gs: TaskGroup[]): Promise<Chart> {
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
export async function throughputChart(gs: TaskGroup[]): Promise<Chart> {
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
export async function paretoChart(records: readonly RunRecord[]): Promise<Chart> {
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

// (b2) peers
export async function peersChart(records: readonly RunRecord[]): Promise<Chart> {
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
