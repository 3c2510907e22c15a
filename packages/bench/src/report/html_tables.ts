// The HTML tables of report.html (html.ts): HTML escaping, the data table
// under each chart, the per-task runs table with its seed groups and paired
// comparisons, and the Claims section.
import type { RunRecord } from '../record.js';
import { learnedVerdict } from '../stats/learned.js';
import { claims, comparisons, metricCell, notLearned, seedGroups } from './resolve.js';
import { formatBytes, formatMetric, formatMiB, formatParams, groupThousands, isFiniteNumber, mainMetrics, statusText } from './common.js';
import type { TaskGroup } from './charts.js';

/** Escapes text for HTML element content and attribute values. */
export function escapeHtml(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

export function table(head: string[], rows: (string | number)[][], opts: { numeric?: boolean[]; rowAttrs?: string[] } = {}): string {
  const th = head.map((h, i) => `<th${opts.numeric?.[i] ? ' class="num"' : ''}>${escapeHtml(h)}</th>`).join('');
  const body = rows.map((r, j) =>
    `<tr${opts.rowAttrs?.[j] ?? ''}>${r.map((c, i) => `<td${opts.numeric?.[i] ? ' class="num"' : ''}>${escapeHtml(c)}</td>`).join('')}</tr>`).join('\n');
  return `<table class="data"><thead><tr>${th}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

export function runsTable(g: TaskGroup): string {
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
export function claimsHtml(records: readonly RunRecord[]): string {
  const rows = claims(seedGroups(records));
  if (rows.length === 0) return '';
  return ['<h2>Claims</h2>',
    '<p class="meta">checked against this suite\'s own rows and intervals: reproduced when the 95% interval of the difference stays within the margin on the worse side, contradicted when it lies wholly beyond it, else not resolved; a claim without rows is left out.</p>',
    `<table class="claims"><thead><tr><th>claim</th><th>task</th><th>verdict</th><th>evidence</th></tr></thead><tbody>\n${rows.map((c) =>
      `<tr data-verdict="${escapeHtml(c.verdict)}"><td>${escapeHtml(c.claim)}</td><td>${escapeHtml(c.task ?? '-')}</td><td>${escapeHtml(c.verdict)}</td><td>${escapeHtml(c.evidence)}</td></tr>`).join('\n')}\n</tbody></table>`].join('\n');
}
