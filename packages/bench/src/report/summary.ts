// summary.md: what a person reads in a terminal or a pull request. Per task,
// one table (method | status | main metrics | peak memory MiB | tokens/s |
// trainable params | file size); a run that did not finish says why in the
// status column ("does not fit (N bytes asked)", "diverged at step S",
// "error: ..."). Then the deployable models and the peers (TensorFlow.js,
// PyTorch) that redid some runs. Deterministic: no clock, no locale.
import { type RunRecord, isPeer } from '../record.js';
import {
  byTask, commonSettings, distinct, formatBits, formatBytes, formatMetric, formatMiB, formatParams, groupThousands, isFiniteNumber,
  mainMetrics, metricDirection, peerComparisons, provenanceLine, runLabels, statusText,
} from './common.js';
import { BUSY_LABEL, type SeedGroup, busyRuns, claims, comparisons, metricCell, notLearned, seedGroups } from './resolve.js';
import { taskMetric } from '../stats/learned.js';

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

function taskTable(runs: readonly RunRecord[], groups: readonly SeedGroup[], busy: Map<RunRecord, string>): string[] {
  const metrics = mainMetrics(runs.filter((r) => r.status === 'ok'));
  const gs = groups.filter((g) => !g.records[0].deployableOf);
  const labels = runLabels(gs.map((g) => g.records[0]));
  const lines: string[] = [];
  // rows that differ in activation checkpointing say so in a column of their own
  const modes = distinct(runs.map((r) => String(r.settings?.checkpointing ?? 'off')));
  const ck = modes.length > 1;
  const seeded = gs.some((g) => g.records.length > 1);
  // on the GPU: the tracked peak is the bytes the run requested from the
  // device; the caching pool's reserved peak (what the driver gave) beside it
  const gpu = runs.some((r) => r.provenance?.backend === 'cuda');
  const memHead = gpu ? ['device MiB (requested)', 'reserved MiB'] : ['peak memory MiB'];
  lines.push(row(['method', ...(seeded ? ['seeds'] : []), ...(ck ? ['checkpointing'] : []), 'status', ...metrics.map((m) => `${m} ${arrow(m)}`), ...memHead, 'tokens/s', 'median step ms [IQR]', 'trainable params', 'file size']));
  lines.push(row(['---', ...(seeded ? ['---:'] : []), ...(ck ? ['---'] : []), '---', ...metrics.map(() => '---:'), ...memHead.map(() => '---:'), '---:', '---:', '---:', '---:']));
  for (const g of gs) {
    const r = g.ok[0] ?? g.records[0];
    const ok = g.ok.length > 0;
    const med = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN; };
    const peak = Math.max(...g.ok.map((x) => x.memory?.peakTotal ?? 0), r.memory?.peakTotal ?? 0);
    // speed: the finished seeds' median; a run that diverged was timed too
    const tps = med((g.ok.length ? g.ok : g.records).map((x) => x.speed?.tokensPerSecond).filter(isFiniteNumber));
    const busyOf = g.ok.filter((x) => busy.has(x));
    const step = g.ok.length === 1 && isFiniteNumber(r.speed?.medianStepMs)
      ? `${r.speed.medianStepMs!.toFixed(1)}${r.speed.stepQuartilesMs ? ` [${r.speed.stepQuartilesMs[0].toFixed(1)}, ${r.speed.stepQuartilesMs[1].toFixed(1)}]` : ''}`
      : g.ok.length > 1 ? med(g.ok.map((x) => x.speed?.medianStepMs).filter(isFiniteNumber)).toFixed(1) : '-';
    const statuses = distinct(g.records.map((x) => statusText(x)));
    const flags = [
      ...(learnedFlag(g) ? ['⚠ did not learn'] : atMajority(r) && !r.untrained ? ['⚠ majority class'] : []),
      ...(busyOf.length ? [`† ${BUSY_LABEL}`] : []),
    ];
    lines.push(row([
      cell(labels.get(g.records[0]) ?? g.label),
      ...(seeded ? [String(g.records.length)] : []),
      ...(ck ? [cell(String(r.settings?.checkpointing ?? 'off'))] : []),
      cell([statuses.join('; '), ...flags].join(' ')),
      ...metrics.map((m) => (ok ? metricCell(g.metrics[m], g.ok.length) : '-')),
      isFiniteNumber(peak) && peak > 0 ? formatMiB(peak) : '-',
      ...(gpu ? [isFiniteNumber(r.memory?.reservedPeakBytes) && r.memory.reservedPeakBytes > 0 ? formatMiB(r.memory.reservedPeakBytes) : '-'] : []),
      isFiniteNumber(tps) && tps > 0 ? `${groupThousands(tps)}${busyOf.length ? ' †' : ''}` : '-',
      step,
      formatParams(r.trainableParameters, r.totalParameters),
      ok && isFiniteNumber(r.fileBytes) && r.fileBytes > 0 ? formatBytes(r.fileBytes) : '-',
    ]));
  }
  return lines;
}

/** A group with a run whose task metric did not leave its untrained interval. */
function learnedFlag(g: SeedGroup): boolean {
  return notLearned(g.ok).length > 0;
}

/** Why runs did not learn and which were timed on a busy machine. */
function evidenceNotes(runs: readonly RunRecord[], busy: Map<RunRecord, string>): string[] {
  const lines: string[] = [];
  for (const n of notLearned(runs)) lines.push(`⚠ ${cell(n.record.id)}: ${text(n.text)}.${n.record.tuning ? '' : ' (--tune-lr searches a rate)'}`);
  for (const r of runs) if (busy.has(r)) lines.push(`† ${cell(r.id)}: ${BUSY_LABEL} (${text(busy.get(r)!)}); its speed and its ratios against peers are not findings.`);
  return lines.length ? ['', ...lines] : [];
}

function comparisonBlock(task: string, groups: readonly SeedGroup[]): string[] {
  const cs = comparisons(groups).filter((c) => c.task === task);
  if (cs.length === 0) return [];
  const lines = ['', `comparisons (${cs[0].metric}, paired bootstrap on the same test items, 95%; "not resolved" when the interval of the difference holds zero):`, ''];
  for (const c of cs) lines.push(`- ${text(c.what)}: ${text(c.text)}`);
  return lines;
}

/** The Claims section: each claim of the methods' papers the suite has rows for, with a verdict. */
export function claimsSection(records: readonly RunRecord[]): string[] {
  const rows = claims(seedGroups(records));
  if (rows.length === 0) return [];
  const lines = ['## Claims', '', 'checked against this suite\'s own rows and intervals (matching: the 95% interval of the difference stays within the margin on the worse side; contradicted: it lies wholly beyond it):', ''];
  lines.push(row(['claim', 'task', 'verdict', 'evidence']));
  lines.push(row(['---', '---', '---', '---']));
  for (const c of rows) lines.push(row([cell(c.claim), cell(c.task ?? '-'), c.verdict, cell(c.evidence)]));
  lines.push('');
  return lines;
}

/** A classification run whose accuracy does not beat always answering the majority class. */
export function atMajority(r: RunRecord): boolean {
  const a = r.metrics?.accuracy, m = r.metrics?.majorityBaseline;
  return r.status === 'ok' && isFiniteNumber(a) && isFiniteNumber(m) && a <= m;
}

function majorityNotes(runs: readonly RunRecord[]): string[] {
  const labels = runLabels(runs);
  const flagged = runs.filter(atMajority);
  if (flagged.length === 0) return [];
  return ['', ...flagged.map((r) => `⚠ ${cell(labels.get(r) ?? r.method)}: accuracy ${formatMetric(r.metrics.accuracy)} does not beat always answering the majority class (${formatMetric(r.metrics.majorityBaseline)}): it has not learned the task at this rate and budget${r.tuning ? '' : ' (--tune-lr searches a rate)'}.`)];
}

function tuningTable(runs: readonly RunRecord[]): string[] {
  const labels = runLabels(runs);
  const rows = runs.filter((r) => r.tuning || r.evalCurve);
  if (rows.length === 0) return [];
  const lines = ['', 'learning rates chosen on validation data (never the test split), and the held-out score during the run:', ''];
  lines.push(row(['method', 'metric', 'candidates (lr: score after the short run)', 'chosen lr', 'held-out curve (step: score)']));
  lines.push(row(['---', '---', '---', '---:', '---']));
  for (const r of rows) {
    const t = r.tuning;
    const metric = t?.metric ?? r.evalCurve?.metric ?? '-';
    lines.push(row([
      cell(labels.get(r) ?? r.method), `${metric} ${t ? (t.higherIsBetter ? '↑' : '↓') : ''}`.trim(),
      t ? t.candidates.map((c) => `${c.lr.toExponential(1)}: ${c.score === null ? c.status : formatMetric(c.score)}`).join(' · ') : '-',
      t ? t.chosen.toExponential(1) : String(r.settings?.lr ?? '-'),
      r.evalCurve ? r.evalCurve.points.map((p) => `${p.step}: ${formatMetric(p.value)}`).join(' → ') : '-',
    ]));
  }
  const t = rows.find((r) => r.tuning)?.tuning;
  if (t) lines.push('', `each candidate: ${t.steps} steps from the same weights and data order, scored on ${text(t.validation)}.`);
  return lines;
}

function deployableTable(runs: readonly RunRecord[], groups: readonly SeedGroup[] = []): string[] {
  const labels = runLabels(runs);
  const rows = runs.flatMap((r) => (r.deployable ?? []).map((d) => ({ r, d })));
  if (rows.length === 0) return [];
  const cols = mainMetrics(rows.map(({ d }) => d));
  // one row per deployable of the first seed; the metric cells are the seed group's (mean, interval)
  const group = (r: RunRecord, kind: string) => groups.find((g) => g.records.some((x) => x.deployableOf === r.id && x.deployable_?.kind === kind));
  const firstSeed = new Set(groups.filter((g) => !g.records[0].deployableOf).map((g) => g.records[0].id));
  const lines = ['', 'deployable models:', ''];
  lines.push(row(['method', 'model', 'bits', 'size', ...cols.map((m) => `${m} ${arrow(m)}`), 'decode tokens/s']));
  lines.push(row(['---', '---', '---:', '---:', ...cols.map(() => '---:'), '---:']));
  const acts = distinct(rows.filter(({ d }) => isFiniteNumber(d.decodeTokensPerSecond)).map(({ d }) => d.decodeActivations ?? 'i16'));
  for (const { r, d } of rows) {
    if (groups.length && !firstSeed.has(r.id)) continue;
    const g = group(r, d.kind);
    lines.push(row([
      cell(labels.get(r) ?? r.method), cell(d.kind), formatBits(d.bits), formatBytes(d.bytes),
      ...cols.map((m) => (g?.metrics[m] ? metricCell(g.metrics[m], g.ok.length) : formatMetric(d.metrics?.[m]))),
      isFiniteNumber(d.decodeTokensPerSecond) ? groupThousands(d.decodeTokensPerSecond) : '-',
    ]));
  }
  if (acts.length) lines.push('', `decode tokens/s: our generate(), the quantized projections' activations ${acts.map((a) => `'${a}'`).join(', ')} (--decode-activations)`);
  // exact deployables (QA-LoRA's merge into the INT-N offsets) say how close they came to their trained run
  const exact = rows.filter(({ d }) => d.vsTrained && isFiniteNumber(d.vsTrained.maxAbsMetricDiff));
  if (exact.length) {
    lines.push('');
    for (const { r, d } of exact) lines.push(`${labels.get(r) ?? r.method}, ${d.kind}: largest |metric - the trained run's| = ${d.vsTrained!.maxAbsMetricDiff.toExponential(2)}`);
  }
  return lines;
}

/** tokens/s, or '-' */
function tps(x: number | undefined): string {
  return isFiniteNumber(x) ? groupThousands(x) : '-';
}

function ratioText(x: number | undefined, range?: readonly number[]): string {
  if (!isFiniteNumber(x)) return '-';
  const v = (y: number) => (y >= 10 ? y.toFixed(0) : y.toFixed(2));
  return `${v(x)}x${range && range.length === 2 && range.every(isFiniteNumber) ? ` (rounds ${v(range[0])}-${v(range[1])})` : ''}`;
}

/** Our decode beside llama.cpp's (deployable.llamaCpp, decode_rows.ts): one row per
 * (method, deployable, GGUF format) of the first seed; the rows are the same for every seed. */
function decodeTable(runs: readonly RunRecord[], groups: readonly SeedGroup[] = []): string[] {
  const labels = runLabels(runs);
  const firstSeed = new Set(groups.filter((g) => !g.records[0].deployableOf).map((g) => g.records[0].id));
  const items = runs.filter((r) => !groups.length || firstSeed.has(r.id))
    .flatMap((r) => (r.deployable ?? []).flatMap((d) => (d.llamaCpp ?? []).map((x) => ({ r, d, x }))));
  if (items.length === 0) return [];
  const seen = new Set<string>();
  const first = items[0].x;
  const shapes = distinct(items.map(({ x }) => `${x.shape}, ${x.threads} thread${x.threads === 1 ? '' : 's'}`));
  const acts = distinct(items.map(({ x }) => x.activations ?? 'i16'));
  const lines = ['', `decode beside llama.cpp (${text(shapes.join('; '))}; random weights held as each deployable holds its projections; ${first.promptTokens} prompt ids, ${first.newTokens} greedy tokens; best of ${first.repeats} interleaved runs each; our quantized projections' activations ${acts.map((a) => `'${a}'`).join(', ')}):`, ''];
  lines.push(row(['method', 'model', 'ours', 'GGUF', 'ours prefill tok/s', 'llama.cpp prefill tok/s', 'prefill ours ÷ llama.cpp', 'ours decode tok/s', 'llama.cpp decode tok/s', 'decode ours ÷ llama.cpp', 'greedy tokens agree', 'teacher-forced agree', 'status']));
  lines.push(row(['---', '---', '---', '---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---']));
  for (const { r, d, x } of items) {
    const label = labels.get(r) ?? r.method;
    const key = `${label}|${d.kind}|${x.format}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const agree = isFiniteNumber(x.tokensAgree)
      ? `${x.tokensAgree} of ${x.newTokens}${x.firstDivergence !== undefined && x.firstDivergence < x.newTokens ? `, first difference at ${x.firstDivergence}` : ''}`
      : '-';
    const forced = isFiniteNumber(x.teacherForcedAgree) ? `${x.teacherForcedAgree} of ${x.newTokens}` : '-';
    lines.push(row([
      cell(label), cell(d.kind), cell(x.weights), x.format ? `${x.format} (${x.exact ? 'exact' : 'requantized'})` : 'none',
      tps(x.ours?.prefillTokensPerSecond), tps(x.llamaCpp?.prefillTokensPerSecond), ratioText(x.ratioPrefill, x.ratioPrefillRange),
      tps(x.ours?.decodeTokensPerSecond), tps(x.llamaCpp?.decodeTokensPerSecond), ratioText(x.ratioDecode, x.ratioDecodeRange),
      agree, forced, cell(x.statusText ? `${x.status}: ${x.statusText}` : x.status),
    ]));
  }
  const version = items.find(({ x }) => x.llamaCpp)?.x.llamaCpp?.version;
  lines.push('', `exact: the GGUF file holds our weights (up to fp16 rounding of values, or of Q4_1's block scale and offset); requantized: llama.cpp runs Q8_0 blocks of our bf16 weights. llama.cpp${version ? ` (${text(version)})` : ''} runs through node-llama-cpp, its per-token JavaScript included. Ratio: the best run of ours over the best of llama.cpp's, and in brackets the lowest and highest of the rounds' own ratios (each of our runs over the llama.cpp run timed next to it): a ratio whose rounds straddle 1 is not a finding. Greedy tokens agree: positions where both generated the same token, each from its own text so far (after a first difference they continue from different text); teacher-forced: positions where llama.cpp's greedy token after the prompt and our tokens is ours. llama.cpp's F16 and quantized matmuls round the activations (to fp16, or to 8-bit blocks), and random weights have near-ties, so even an exact file does not agree everywhere.`);
  return lines;
}

function peersTable(runs: readonly RunRecord[], busy: Map<RunRecord, string> = new Map()): string[] {
  const cs = peerComparisons(runs);
  if (cs.length === 0) return [];
  const random = cs.some((c) => c.peer.settings?.weights === 'random');
  const lines = ['', random
    ? 'peers (the same shapes, batch and sequence from random weights of their own: speed and memory only):'
    : 'peers (the same first steps from the same weights, batches and learning rates):', ''];
  lines.push(row(['method', 'peer', 'status', 'steps', 'peer tokens/s', 'tunebench tokens/s', 'tunebench ÷ peer', 'peer memory MiB', 'loss diff, first 10 steps', 'steps within 1e-4']));
  lines.push(row(['---', '---', '---', '---:', '---:', '---:', '---:', '---:', '---:', '---:']));
  for (const c of cs) {
    const ok = c.peer.status === 'ok';
    lines.push(row([
      cell(c.label), cell(c.impl), cell(statusText(c.peer)), String(c.steps),
      ok && isFiniteNumber(c.peerTokensPerSecond) ? groupThousands(c.peerTokensPerSecond) : '-',
      isFiniteNumber(c.oursTokensPerSecond) ? groupThousands(c.oursTokensPerSecond) : '-',
      c.ours && busy.has(c.ours) ? `not comparable (${BUSY_LABEL.split(':')[0]})` : ok && isFiniteNumber(c.ratio) ? `${c.ratio >= 10 ? c.ratio.toFixed(0) : c.ratio.toFixed(2)}x` : '-',
      ok && isFiniteNumber(c.peer.memory?.peakTotal) && c.peer.memory.peakTotal > 0 ? formatMiB(c.peer.memory.peakTotal) : '-',
      ok && isFiniteNumber(c.lossMaxAbsDiff10) ? c.lossMaxAbsDiff10.toExponential(1) : '-',
      ok && isFiniteNumber(c.stepsAgreeing) ? `${c.stepsAgreeing} of ${c.steps}` : '-',
    ]));
  }
  lines.push('', cs.some((c) => c.peer.memory?.source?.startsWith('torch.cuda'))
    ? 'tokens/s of the median step; peer memory is the peer\'s own figure (PyTorch on the GPU: torch.cuda.max_memory_allocated), not tracked bytes; a jumpy run amplifies rounding differences, so later steps may part.'
    : 'tokens/s of the median step; peer memory is the peer\'s own figure (TensorFlow.js: tensor bytes; PyTorch: resident-set growth), not tracked bytes; a jumpy run amplifies rounding differences, so later steps may part.');
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
  const peers = records.filter(isPeer).length;
  lines.push(`${countStatuses(records.filter((r) => !isPeer(r)))}${peers ? `; ${peers} peer run${peers === 1 ? '' : 's'}` : ''}`, '');
  lines.push(`provenance: ${text(provenanceLine(records.filter((r) => !isPeer(r))))}`, '');
  const busy = busyRuns(records);
  for (const [task, runs] of byTask(records)) {
    lines.push(`## ${text(task)}`, '');
    const ours = runs.filter((r) => !isPeer(r));
    const common = commonSettings(ours);
    if (common.length) lines.push(`settings: ${text(common.map(([k, v]) => `${k}=${v}`).join(' · '))}`, '');
    const budget = ours.find((r) => r.budget)?.budget;
    if (budget) lines.push(`budget of each run: ${groupThousands(budget.steps)} steps = ${groupThousands(budget.rows)} rows drawn = ${budget.epochs.toFixed(2)} epochs of the training rows, ${groupThousands(budget.realTokens)} real (non-padding) input tokens.`, '');
    const majority = ours.map((r) => r.metrics?.majorityBaseline).find(isFiniteNumber);
    if (majority !== undefined) lines.push(`always answering the training data's majority label scores accuracy ${formatMetric(majority)} here.`, '');
    if (ours.some((r) => r.settings?.labelScoring === 'sum')) {
      lines.push('labels are scored by the summed log-likelihood of their tokens and the end-of-sequence token, so labels of different lengths compete as whole strings; accuracyPerToken (results.csv) scores by the mean per token instead.', '');
    }
    const groups = seedGroups(ours);
    const metric = taskMetric(ours.find((r) => r.status === 'ok')?.metrics);
    if (groups.some((g) => Object.values(g.metrics).some((m) => m.interval))) {
      lines.push(`figures: the value [its 95% bootstrap interval over the test items]${groups.some((g) => g.ok.length > 1) ? ', the mean over seeds ± their standard deviation' : ''}; every run was also scored before its first step${metric ? ` (${metric} of the untrained model)` : ''}.`, '');
    }
    lines.push(...taskTable(ours, groups, busy));
    lines.push(...evidenceNotes(ours, busy));
    lines.push(...majorityNotes(ours.filter((r) => !r.untrained)));
    lines.push(...comparisonBlock(task, groups));
    lines.push(...tuningTable(ours));
    lines.push(...deployableTable(ours, groups));
    lines.push(...decodeTable(ours, groups));
    lines.push(...peersTable(runs, busy));
    lines.push('');
  }
  lines.push(...claimsSection(records));
  lines.push(records.some((r) => r.provenance?.backend === 'cuda')
    ? '↑ higher is better, ↓ lower is better; device MiB (requested) is the peak of tracked bytes on the GPU during training, reserved MiB the caching pool\'s peak held from the driver.'
    : '↑ higher is better, ↓ lower is better; memory is the peak of tracked bytes during training.');
  return lines.join('\n') + '\n';
}
