// results.csv: one row per run (and one per deployable model of a run, with
// deployableOf naming the run), flat columns. The columns are the union over
// the records, in a stable order:
//   id suite task method impl peerOf status error oomBytes divergedAtStep
//   deployableOf deployable.{kind,bits,decodeTokensPerSecond}   (deployable rows)
//   llamaCpp.{shape,threads,promptTokens,newTokens,version} and per GGUF format F
//   (F16, Q8_0, Q4_1; 'none': no GGUF form, status only) llamaCpp.F.{status,
//   statusText,exact,weights,ours.prefillTokensPerSecond,llamaCpp.prefillTokensPerSecond,
//   ratioPrefill,ratioPrefillLow,ratioPrefillHigh,ours.decodeTokensPerSecond,
//   llamaCpp.decodeTokensPerSecond,ratioDecode,ratioDecodeLow,ratioDecodeHigh,
//   tokensAgree,firstDivergence,teacherForcedAgree} (Low/High: the rounds' own ratios)   (deployable rows with decode rows beside llama.cpp)
//   settings.<k>...   (sorted)
//   metric.<k>...     (sorted), then metric.<k>.lo metric.<k>.hi (95% bootstrap
//   interval, for metrics with per-example outcomes) and untrained.<task metric>,
//   learned (yes/no: did the task metric leave the untrained model's interval)
//   memory.peakTotal memory.peak.<category>... (core order) memory.rssBytes memory.cachedBytes
//   memory.deviceBytes memory.reservedPeakBytes memory.deviceTotalBytes fit.plannedBytes
//   fit.freeBytes (GPU backend only) memory.source memory.predicted.total
//   speed.tokensPerSecond speed.steadyTokensPerSecond speed.medianStepMs
//   speed.stepQ1Ms speed.stepQ3Ms speed.msPerStep.{forward,backward,optimizer,total}
//   speed.busy (why the speed is not comparable: the machine was busy; empty when it is)
//   trainableParameters totalParameters fileBytes referenceMs
//   provenance.{commit,backend,device,cpu,gemm,seed,node} provenance.packages.<name>... (sorted)
//   lossFinal steps startedAt durationMs
// Memory is in bytes. A value a run does not have is an empty cell. Records of
// the CPU backend written before memory.rssBytes existed held the process's
// resident set in memory.deviceBytes: it is shown as memory.rssBytes.
import { stringify } from 'csv-stringify/sync';
import { writeFileAtomic } from '@tunebench/core';
import { type DecodeRow, type RunRecord, rssBytesOf, withDeployables } from '../record.js';
import { distinct, isFiniteNumber, memoryCategories } from './common.js';
import { bootstrapInterval } from '../stats/bootstrap.js';
import { learnedVerdict, taskMetric } from '../stats/learned.js';
import { INTERVAL_METRICS, busyRuns } from './resolve.js';

type Cell = string | number | boolean | null | undefined;

interface Column {
  name: string;
  get(r: RunRecord): Cell;
}

function lastFinite(xs: readonly (number | null)[] | undefined): number | undefined {
  if (!xs) return undefined;
  for (let i = xs.length - 1; i >= 0; i--) if (isFiniteNumber(xs[i])) return xs[i] as number;
  return undefined;
}

/** The CSV columns for these records (the union over them, stable order). */
export function csvColumns(records: readonly RunRecord[]): Column[] {
  const busy = busyRuns(records);
  const intervals = new Map<RunRecord, Record<string, { lo: number; hi: number }>>();
  for (const r of records) {
    if (!r.outcomes || r.status !== 'ok') continue;
    const iv: Record<string, { lo: number; hi: number }> = {};
    for (const k of INTERVAL_METRICS) {
      if (!isFiniteNumber(r.metrics?.[k])) continue;
      const i = bootstrapInterval(k, [r.outcomes]);
      if (i) iv[k] = i;
    }
    intervals.set(r, iv);
  }
  const withIv = (INTERVAL_METRICS as readonly string[]).filter((k) => [...intervals.values()].some((iv) => iv[k]));
  const hasUntrained = records.some((r) => r.untrained);
  const settings = distinct(records.flatMap((r) => Object.keys(r.settings ?? {}))).sort();
  const metrics = distinct(records.flatMap((r) => Object.keys(r.metrics ?? {}))).sort();
  const categories = memoryCategories(records);
  const packages = distinct(records.flatMap((r) => Object.keys(r.provenance?.packages ?? {}))).sort();
  return [
    { name: 'id', get: (r) => r.id },
    { name: 'suite', get: (r) => r.suite },
    { name: 'task', get: (r) => r.task },
    { name: 'method', get: (r) => r.method },
    { name: 'impl', get: (r) => r.impl ?? 'tunebench' },
    { name: 'peerOf', get: (r) => r.peerOf },
    { name: 'status', get: (r) => r.status },
    { name: 'error', get: (r) => r.error },
    { name: 'oomBytes', get: (r) => r.oomBytes },
    { name: 'divergedAtStep', get: (r) => r.divergedAtStep },
    { name: 'deployableOf', get: (r) => r.deployableOf },
    { name: 'deployable.kind', get: (r) => r.deployable_?.kind },
    { name: 'deployable.bits', get: (r) => r.deployable_?.bits },
    { name: 'deployable.decodeTokensPerSecond', get: (r) => r.deployable_?.decodeTokensPerSecond },
    ...decodeColumns(records),
    ...settings.map((k): Column => ({ name: `settings.${k}`, get: (r) => r.settings?.[k] })),
    ...metrics.map((k): Column => ({ name: `metric.${k}`, get: (r) => r.metrics?.[k] })),
    ...withIv.flatMap((k): Column[] => [
      { name: `metric.${k}.lo`, get: (r) => intervals.get(r)?.[k]?.lo },
      { name: `metric.${k}.hi`, get: (r) => intervals.get(r)?.[k]?.hi },
    ]),
    ...(hasUntrained ? [
      { name: 'untrained.taskMetric', get: (r: RunRecord) => { const m = taskMetric(r.metrics); return m && !r.deployableOf ? r.untrained?.metrics?.[m] : undefined; } },
      { name: 'learned', get: (r: RunRecord) => { if (r.deployableOf) return undefined; const v = learnedVerdict(r); return v ? (v.learned ? 'yes' : 'no') : undefined; } },
    ] : []),
    { name: 'memory.peakTotal', get: (r) => r.memory?.peakTotal },
    ...categories.map((c): Column => ({ name: `memory.peak.${c}`, get: (r) => (r.memory?.peak as Record<string, number> | undefined)?.[c] })),
    { name: 'memory.rssBytes', get: (r) => rssBytesOf(r) },
    { name: 'memory.cachedBytes', get: (r) => r.memory?.cachedBytes },
    { name: 'memory.deviceBytes', get: (r) => (r.provenance?.backend === 'cpu' ? undefined : r.memory?.deviceBytes) },
    { name: 'memory.reservedPeakBytes', get: (r) => r.memory?.reservedPeakBytes },
    { name: 'memory.deviceTotalBytes', get: (r) => r.memory?.deviceTotalBytes },
    { name: 'fit.plannedBytes', get: (r) => r.fit?.plannedBytes },
    { name: 'fit.freeBytes', get: (r) => r.fit?.freeBytes },
    { name: 'memory.source', get: (r) => r.memory?.source },
    { name: 'memory.predicted.total', get: (r) => r.memory?.predicted?.total },
    { name: 'speed.tokensPerSecond', get: (r) => r.speed?.tokensPerSecond },
    { name: 'speed.steadyTokensPerSecond', get: (r) => r.speed?.steadyTokensPerSecond },
    { name: 'speed.medianStepMs', get: (r) => r.speed?.medianStepMs },
    { name: 'speed.stepQ1Ms', get: (r) => r.speed?.stepQuartilesMs?.[0] },
    { name: 'speed.stepQ3Ms', get: (r) => r.speed?.stepQuartilesMs?.[1] },
    { name: 'speed.busy', get: (r) => busy.get(r) },
    { name: 'speed.msPerStep.forward', get: (r) => r.speed?.msPerStep?.forward },
    { name: 'speed.msPerStep.backward', get: (r) => r.speed?.msPerStep?.backward },
    { name: 'speed.msPerStep.optimizer', get: (r) => r.speed?.msPerStep?.optimizer },
    { name: 'speed.msPerStep.total', get: (r) => r.speed?.msPerStep?.total },
    { name: 'trainableParameters', get: (r) => r.trainableParameters },
    { name: 'totalParameters', get: (r) => r.totalParameters },
    { name: 'fileBytes', get: (r) => r.fileBytes },
    { name: 'referenceMs', get: (r) => r.referenceMs },
    { name: 'referenceAfterMs', get: (r) => r.referenceAfterMs },
    { name: 'provenance.commit', get: (r) => r.provenance?.commit },
    { name: 'provenance.backend', get: (r) => r.provenance?.backend },
    { name: 'provenance.device', get: (r) => r.provenance?.device },
    { name: 'provenance.cpu', get: (r) => r.provenance?.cpu },
    { name: 'provenance.gemm', get: (r) => r.provenance?.gemm },
    { name: 'provenance.seed', get: (r) => r.provenance?.seed },
    { name: 'provenance.node', get: (r) => r.provenance?.node },
    ...packages.map((p): Column => ({ name: `provenance.packages.${p}`, get: (r) => r.provenance?.packages?.[p] })),
    { name: 'lossFinal', get: (r) => lastFinite(r.lossCurve) },
    { name: 'steps', get: (r) => r.lossCurve?.length },
    { name: 'startedAt', get: (r) => r.startedAt },
    { name: 'durationMs', get: (r) => r.durationMs },
  ];
}

/** The decode rows beside llama.cpp of deployable rows: columns llamaCpp.<format>.<field> for each GGUF
 * format present (F16, Q8_0, Q4_1; 'none' for a format with no GGUF form), the decode shape once. */
function decodeColumns(records: readonly RunRecord[]): Column[] {
  const rowsOf = (r: RunRecord) => r.deployable_?.llamaCpp ?? [];
  const all = records.flatMap(rowsOf);
  if (all.length === 0) return [];
  const order = ['F16', 'Q8_0', 'Q4_1', 'none'];
  const keys = distinct(all.map((d) => d.format ?? 'none')).sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const at = (r: RunRecord, k: string) => rowsOf(r).find((d) => (d.format ?? 'none') === k);
  const fields: [string, (d: DecodeRow) => Cell][] = [
    ['status', (d) => d.status], ['statusText', (d) => d.statusText], ['exact', (d) => (d.format ? d.exact : undefined)], ['weights', (d) => d.weights],
    ['ours.prefillTokensPerSecond', (d) => d.ours?.prefillTokensPerSecond], ['llamaCpp.prefillTokensPerSecond', (d) => d.llamaCpp?.prefillTokensPerSecond],
    ['ratioPrefill', (d) => d.ratioPrefill], ['ratioPrefillLow', (d) => d.ratioPrefillRange?.[0]], ['ratioPrefillHigh', (d) => d.ratioPrefillRange?.[1]],
    ['ours.decodeTokensPerSecond', (d) => d.ours?.decodeTokensPerSecond], ['llamaCpp.decodeTokensPerSecond', (d) => d.llamaCpp?.decodeTokensPerSecond],
    ['ratioDecode', (d) => d.ratioDecode], ['ratioDecodeLow', (d) => d.ratioDecodeRange?.[0]], ['ratioDecodeHigh', (d) => d.ratioDecodeRange?.[1]],
    ['tokensAgree', (d) => d.tokensAgree], ['firstDivergence', (d) => d.firstDivergence],
    ['teacherForcedAgree', (d) => d.teacherForcedAgree],
  ];
  return [
    { name: 'llamaCpp.shape', get: (r) => rowsOf(r)[0]?.shape },
    { name: 'llamaCpp.threads', get: (r) => rowsOf(r)[0]?.threads },
    { name: 'llamaCpp.promptTokens', get: (r) => rowsOf(r)[0]?.promptTokens },
    { name: 'llamaCpp.newTokens', get: (r) => rowsOf(r)[0]?.newTokens },
    { name: 'llamaCpp.version', get: (r) => rowsOf(r).find((d) => d.llamaCpp)?.llamaCpp?.version },
    ...keys.flatMap((k) => fields.filter(([f]) => k !== 'none' || f === 'status' || f === 'statusText')
      .map(([f, get]): Column => ({ name: `llamaCpp.${k}.${f}`, get: (r) => { const d = at(r, k); return d ? get(d) : undefined; } }))),
  ];
}

function cellText(v: Cell): string {
  if (v === undefined || v === null) return '';
  return String(v);
}

/** The CSV text (header + one row per run, `\n` line ends, quoted where needed). */
export function resultsCsv(trained: readonly RunRecord[]): string {
  // deployable models (merged, requantized) are rows of their own after their run
  const records = withDeployables(trained);
  const cols = csvColumns(records);
  const rows = records.map((r) => cols.map((c) => cellText(c.get(r))));
  return stringify([cols.map((c) => c.name), ...rows], { record_delimiter: 'unix', quoted_match: /^[\s]|[\s]$/ });
}

/** Writes results.csv (atomically). */
export function writeResultsCsv(records: readonly RunRecord[], path: string): void {
  writeFileAtomic(path, resultsCsv(records));
}
