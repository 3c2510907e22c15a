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
//   decode      our decode/prefill tokens/s beside llama.cpp's per deployable GGUF form (deployable.llamaCpp; only when recorded)
//   kernels     kernel GFLOP/s as a fraction of the measured peak (opts.kernels)
//
// This module holds the page itself (renderReport) and the report's public
// types; the charts are built in charts.ts and charts_extra.ts, rendered to
// SVG by vega.ts, and the tables are in html_tables.ts. Everything those
// exported from here before the split is re-exported below.
import { kernelFraction } from '@tunebench/core';
import { type RunRecord, isPeer } from '../record.js';
import { distinct, provenanceLine } from './common.js';
import {
  type Chart, groups, memoryChart, metricsChart, paretoChart, peersChart, throughputChart,
} from './charts.js';
import { decodeChart, deployableChart, kernelChart, lossChart, tuningChart } from './charts_extra.js';
import { claimsHtml, escapeHtml, runsTable } from './html_tables.js';

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
export const OPTIONAL_CHARTS = ['tuning', 'decode'] as const;
export type ReportChart = (typeof REPORT_CHARTS)[number] | (typeof OPTIONAL_CHARTS)[number];

export { NO_DEPLOYABLE_TEXT } from './charts_extra.js';
export { NO_PEERS_TEXT } from './charts.js';
export { escapeHtml } from './html_tables.js';
export { vegaLiteToSvg } from './vega.js';
export { type TaskPareto, paretoByTask } from './charts.js';

// ---- the page

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
  decode: 'Decode and prefill beside llama.cpp (same weights, prompt and threads)',
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
  const decode = await decodeChart(gs);
  if (decode) charts.push(decode);
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
