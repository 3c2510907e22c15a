// The charts of report.html (html.ts), second part: training loss curves,
// deployable models, kernel speeds and the learning-rate search. The shared
// chart plumbing and the other charts are in charts.ts.
import { kernelFraction } from '@tunebench/core';
import { distinct, formatBits, formatBytes, formatMetric, groupThousands, isFiniteNumber, mainMetrics, metricDirection, statusText } from './common.js';
import type { KernelSpeeds } from './html.js';
import type { DecodeRow } from '../record.js';
import { table } from './html_tables.js';
import type { Chart, TaskGroup } from './charts.js';
import { type Spec, PANEL_HEIGHT, PANEL_WIDTH, concat, vegaLiteToSvg } from './vega.js';

export const NO_DEPLOYABLE_TEXT = 'no deployable-model rows in this run';

const IMPLS = ['tunebench', 'tensorflow.js', 'pytorch'];

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
export async function lossChart(gs: TaskGroup[]): Promise<Chart> {
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
export async function deployableChart(gs: TaskGroup[]): Promise<Chart> {
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
export async function kernelChart(k: KernelSpeeds): Promise<Chart> {
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

// (f) learning-rate search and held-out curves
export async function tuningChart(gs: TaskGroup[]): Promise<Chart | null> {
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


// (h) decode beside llama.cpp (deployable.llamaCpp, decode_rows.ts)
/** Our decode and prefill tokens/s beside llama.cpp's for each deployable's
 * GGUF form; null when no run has decode rows. The rows are the same for
 * every task and seed (one decode shape per suite): each is drawn once. */
export async function decodeChart(gs: TaskGroup[]): Promise<Chart | null> {
  const seen = new Set<string>();
  const items: { label: string; kind: string; x: DecodeRow }[] = [];
  for (const g of gs) {
    for (const r of g.runs) {
      for (const d of r.deployable ?? []) {
        for (const x of d.llamaCpp ?? []) {
          const label = r.method;
          const key = `${label}|${d.kind}|${x.format}`;
          if (seen.has(key)) continue;
          seen.add(key);
          items.push({ label, kind: d.kind, x });
        }
      }
    }
  }
  if (items.length === 0) return null;
  const name = (i: (typeof items)[number]) => `${i.label} → ${i.kind} · ${i.x.format ?? 'no GGUF'}`;
  const values = items.flatMap((i) => [
    ...(i.x.ours ? [{ row: name(i), impl: 'tunebench', phase: 'decode', tps: i.x.ours.decodeTokensPerSecond }, { row: name(i), impl: 'tunebench', phase: 'prefill', tps: i.x.ours.prefillTokensPerSecond }] : []),
    ...(i.x.llamaCpp ? [{ row: name(i), impl: 'llama.cpp', phase: 'decode', tps: i.x.llamaCpp.decodeTokensPerSecond }, { row: name(i), impl: 'llama.cpp', phase: 'prefill', tps: i.x.llamaCpp.prefillTokensPerSecond }] : []),
  ]).filter((v) => isFiniteNumber(v.tps));
  const shapes = distinct(items.map((i) => `${i.x.shape} (${i.x.threads} thread${i.x.threads === 1 ? '' : 's'})`)).join(', ');
  const first = items[0].x;
  const caption = `Tokens per second of our generate() and of llama.cpp (node-llama-cpp's prebuilt CPU build) on the same weights at the decode shape ${shapes}: random weights held as each deployable holds its projections, exported to GGUF; ${first.promptTokens} prompt ids, ${first.newTokens} greedy tokens, the best of ${first.repeats} interleaved runs (ratio: best over best; in brackets the lowest and highest of the rounds' own ratios). Decode: one token at a time after the prompt; prefill: the prompt and the first token.`;
  const r2 = (y: number) => (y >= 10 ? y.toFixed(0) : y.toFixed(2));
  const pct = (x: number | undefined, range?: readonly number[]) => (isFiniteNumber(x)
    ? `${r2(x)}x${range && range.length === 2 && range.every(isFiniteNumber) ? ` (rounds ${r2(range[0])}-${r2(range[1])})` : ''}` : '-');
  const num = (x: number | undefined) => (isFiniteNumber(x) ? groupThousands(x) : '-');
  const head = ['method', 'model', 'ours', 'GGUF', 'ours decode tok/s', 'llama.cpp decode tok/s', 'decode ratio', 'ours prefill tok/s', 'llama.cpp prefill tok/s', 'prefill ratio', 'greedy agree', 'teacher-forced agree', 'status'];
  const tbl = table(head, items.map(({ label, kind, x }) => [
    label, kind, x.weights, x.format ? `${x.format} (${x.exact ? 'exact' : 'requantized'})` : 'none',
    num(x.ours?.decodeTokensPerSecond), num(x.llamaCpp?.decodeTokensPerSecond), pct(x.ratioDecode, x.ratioDecodeRange),
    num(x.ours?.prefillTokensPerSecond), num(x.llamaCpp?.prefillTokensPerSecond), pct(x.ratioPrefill, x.ratioPrefillRange),
    isFiniteNumber(x.tokensAgree) ? `${x.tokensAgree}/${x.newTokens}${x.firstDivergence! < x.newTokens ? ` (first at ${x.firstDivergence})` : ''}` : '-',
    isFiniteNumber(x.teacherForcedAgree) ? `${x.teacherForcedAgree}/${x.newTokens}` : '-',
    x.statusText ? `${x.status}: ${x.statusText}` : x.status,
  ]), { numeric: head.map((_, i) => i >= 4 && i <= 11) });
  if (values.length === 0) return { name: 'decode', caption, placeholder: 'no decode row was timed (see the status column)', table: tbl };
  const rowsOrder = distinct(values.map((v) => v.row));
  const panel = (phase: string): Spec => ({
    title: `${phase} tokens/s`, width: PANEL_WIDTH, height: { step: 14 },
    data: { values: values.filter((v) => v.phase === phase) }, mark: { type: 'bar' },
    encoding: {
      y: { field: 'row', type: 'nominal', sort: rowsOrder, title: null, axis: { labelLimit: 360 } },
      yOffset: { field: 'impl', type: 'nominal', sort: ['tunebench', 'llama.cpp'] },
      x: { field: 'tps', type: 'quantitative', title: 'tokens per second' },
      color: { field: 'impl', type: 'nominal', title: 'implementation', scale: { domain: ['tunebench', 'llama.cpp'] } },
    },
  });
  return { name: 'decode', caption, svg: await vegaLiteToSvg({ vconcat: [panel('decode'), panel('prefill')], resolve: { scale: { color: 'shared' } } }, 'decode'), table: tbl };
}
