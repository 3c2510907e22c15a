// summary.md: what a person reads in a terminal or a pull request. Per task,
// one table (method | status | main metrics | peak memory MiB | tokens/s |
// trainable params | file size); a run that did not finish says why in the
// status column ("does not fit (N bytes asked)", "diverged at step S",
// "error: ..."). Deterministic: no clock, no locale.
import type { RunRecord } from '../record.js';
import {
  byTask, commonSettings, distinct, formatBytes, formatMetric, formatMiB, formatParams, groupThousands, isFiniteNumber,
  mainMetrics, metricDirection, provenanceLine, runLabels, statusText,
} from './common.js';

/** Escapes a table cell: pipes, line breaks, and a `<` that would open an HTML tag on GitHub. */
function cell(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/\r?\n/g, ' ').replace(/<(?=[A-Za-z/!?])/g, '\\<');
}

/** Text outside tables: only the tag-opening `<` matters. */
function text(s: string): string {
  return s.replace(/\r?\n/g, ' ').replace(/<(?=[A-Za-z/!?])/g, '\\<');
}

function row(cells: string[]): string {
  return `| ${cells.join(' | ')} |`;
}

function arrow(metric: string): string {
  return metricDirection(metric) === 'higher' ? '↑' : '↓';
}

function countStatuses(records: readonly RunRecord[]): string {
  const n = (s: RunRecord['status']) => records.filter((r) => r.status === s).length;
  const parts = [`${n('ok')} ok`];
  if (n('oom')) parts.push(`${n('oom')} do not fit`);
  if (n('diverged')) parts.push(`${n('diverged')} diverged`);
  if (n('error')) parts.push(`${n('error')} failed`);
  return `${records.length} run${records.length === 1 ? '' : 's'}: ${parts.join(', ')}`;
}

function taskTable(runs: readonly RunRecord[]): string[] {
  const metrics = mainMetrics(runs.filter((r) => r.status === 'ok'));
  const labels = runLabels(runs);
  const lines: string[] = [];
  lines.push(row(['method', 'status', ...metrics.map((m) => `${m} ${arrow(m)}`), 'peak memory MiB', 'tokens/s', 'trainable params', 'file size']));
  lines.push(row(['---', '---', ...metrics.map(() => '---:'), '---:', '---:', '---:', '---:']));
  for (const r of runs) {
    const ok = r.status === 'ok';
    const peak = r.memory?.peakTotal;
    const tps = r.speed?.tokensPerSecond;
    lines.push(row([
      cell(labels.get(r) ?? r.method),
      cell(statusText(r)),
      ...metrics.map((m) => (ok ? formatMetric(r.metrics?.[m]) : '-')),
      isFiniteNumber(peak) && peak > 0 ? formatMiB(peak) : '-',
      isFiniteNumber(tps) && tps > 0 ? groupThousands(tps) : '-',
      formatParams(r.trainableParameters, r.totalParameters),
      ok && isFiniteNumber(r.fileBytes) && r.fileBytes > 0 ? formatBytes(r.fileBytes) : '-',
    ]));
  }
  return lines;
}

function deployableTable(runs: readonly RunRecord[]): string[] {
  const labels = runLabels(runs);
  const rows = runs.flatMap((r) => (r.deployable ?? []).map((d) => ({ r, d })));
  if (rows.length === 0) return [];
  const cols = mainMetrics(rows.map(({ d }) => d));
  const lines = ['', 'deployable models:', ''];
  lines.push(row(['method', 'model', 'bits', 'size', ...cols.map((m) => `${m} ${arrow(m)}`), 'decode tokens/s']));
  lines.push(row(['---', '---', '---:', '---:', ...cols.map(() => '---:'), '---:']));
  for (const { r, d } of rows) {
    lines.push(row([
      cell(labels.get(r) ?? r.method), cell(d.kind), String(d.bits), formatBytes(d.bytes),
      ...cols.map((m) => formatMetric(d.metrics?.[m])),
      isFiniteNumber(d.decodeTokensPerSecond) ? groupThousands(d.decodeTokensPerSecond) : '-',
    ]));
  }
  return lines;
}

/** The markdown summary of a set of runs. */
export function renderSummary(records: readonly RunRecord[]): string {
  const suites = distinct(records.map((r) => r.suite));
  const lines: string[] = [];
  lines.push(`# tunebench${suites.length ? `: ${text(suites.join(', '))}` : ''}`, '');
  if (records.length === 0) {
    lines.push('no runs recorded.');
    return lines.join('\n') + '\n';
  }
  lines.push(countStatuses(records), '');
  lines.push(`provenance: ${text(provenanceLine(records))}`, '');
  for (const [task, runs] of byTask(records)) {
    lines.push(`## ${text(task)}`, '');
    const common = commonSettings(runs);
    if (common.length) lines.push(`settings: ${text(common.map(([k, v]) => `${k}=${v}`).join(' · '))}`, '');
    lines.push(...taskTable(runs));
    lines.push(...deployableTable(runs));
    lines.push('');
  }
  lines.push('↑ higher is better, ↓ lower is better; memory is the peak of tracked bytes during training.');
  return lines.join('\n') + '\n';
}
