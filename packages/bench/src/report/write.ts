// The three outputs of a suite, written side by side into one directory.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '@tunebench/core';
import type { RunRecord } from '../record.js';
import { resultsCsv } from './csv.js';
import { renderReport, type ReportOptions } from './html.js';
import { renderSummary } from './summary.js';

export interface ReportPaths {
  csv: string;
  summary: string;
  html: string;
}

/** Writes results.csv, summary.md and report.html into `dir` (created if
 * missing), each atomically. Everything is rendered before the first file is
 * written, so a rendering error leaves the old reports as they were. */
export async function writeReports(dir: string, records: readonly RunRecord[], opts: ReportOptions = {}): Promise<ReportPaths> {
  const csv = resultsCsv(records);
  const summary = renderSummary(records);
  const html = await renderReport(records, opts);
  mkdirSync(dir, { recursive: true });
  const paths = { csv: join(dir, 'results.csv'), summary: join(dir, 'summary.md'), html: join(dir, 'report.html') };
  writeFileAtomic(paths.csv, csv);
  writeFileAtomic(paths.summary, summary);
  writeFileAtomic(paths.html, html);
  return paths;
}
