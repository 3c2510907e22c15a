// The reports (results.csv, summary.md, report.html) from hand-made records:
// two tasks, three methods with loss curves, one run that does not fit, one
// that diverged, one that failed; names carry < and & to test escaping.
// The last test opens report.html in headless Chromium: /usr/bin/chromium, or
// TUNEBENCH_CHROMIUM; skipped, and says so, when there is none.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  NO_DEPLOYABLE_TEXT, NO_PEERS_TEXT, REPORT_CHARTS, metricDirection, paretoByTask, paretoFront, renderReport, renderSummary, resultsCsv,
  withDeployables, writeReports, writeResultsCsv, type KernelSpeeds, type RunRecord,
} from '../src/index.js';

const MiB = 1024 * 1024;
const SUITE = 'ci <&> test';
const ADAPT = 'adapt <humor & r>';
const QA = 'qa-lora <int4 & g32>';

interface Spec {
  task: string;
  method: string;
  status?: RunRecord['status'];
  settings?: Record<string, string | number | boolean>;
  metrics?: Record<string, number>;
  mib?: number;
  tps?: number;
  trainable?: number;
  extra?: Partial<RunRecord>;
}

function lossCurve(n: number, start: number, end: number): number[] {
  return Array.from({ length: n }, (_, i) => end + (start - end) * Math.exp(-i / 6) + 0.01 * Math.sin(i));
}

let started = 0;
function record(s: Spec): RunRecord {
  const mib = s.mib ?? 0;
  const bytes = mib * MiB;
  const settings = { steps: 20, batch: 8, seq: 128, lr: 1e-3, ...s.settings };
  const total = 1_234_567;
  const trainable = s.trainable ?? total;
  return {
    id: `${s.task}/${s.method}/${Object.entries(s.settings ?? {}).map(([k, v]) => `${k}=${v}`).join(',')}`,
    suite: SUITE,
    task: s.task,
    method: s.method,
    settings,
    status: s.status ?? 'ok',
    metrics: s.metrics ?? {},
    memory: {
      peakTotal: bytes,
      peak: {
        frozen: s.method === 'full' ? 0 : bytes * 0.4, trainable: s.method === 'full' ? bytes * 0.3 : bytes * 0.02,
        grad: s.method === 'full' ? bytes * 0.2 : bytes * 0.02, optimizer: s.method === 'full' ? bytes * 0.4 : bytes * 0.04,
        optimizer_host: 0, activation: bytes * 0.3, workspace: bytes * 0.05,
      },
      rssBytes: bytes * 1.3,
      cachedBytes: bytes * 0.1,
      predicted: mib ? { frozen: 0, trainable: 0, grad: 0, optimizer: 0, optimizer_host: 0, activation: 0, workspace: 0, total: bytes * 1.05 } : undefined,
    },
    speed: { tokensPerSecond: s.tps ?? 0, msPerStep: { forward: 10.5, backward: 21.25, optimizer: 2, total: 33.75 } },
    trainableParameters: trainable,
    totalParameters: total,
    fileBytes: s.method === 'full' ? total * 4 : trainable * 4,
    lossCurve: s.status === 'oom' || s.status === 'error' ? [] : lossCurve(20, 5.5, s.method === 'full' ? 2.0 : 2.3),
    referenceMs: 1.234,
    provenance: {
      commit: 'abc1234', packages: { '@tunebench/core': '0.1.0', '@tunebench/lora': '0.1.0' }, backend: 'cpu', device: 'cpu',
      cpu: 'AMD EPYC <test> & co', gemm: 'avx512 12x32', seed: 7, node: 'v20.20.2',
    },
    startedAt: new Date(Date.UTC(2025, 0, 1, 0, started++)).toISOString(),
    durationMs: 12345,
    ...s.extra,
  };
}

function fixtures(): RunRecord[] {
  started = 0;
  const adaptDiverged = record({
    task: ADAPT, method: 'lora', status: 'diverged', settings: { lr: 1 }, mib: 330, tps: 9000, trainable: 10_000,
    extra: { error: 'loss is NaN at step 7', divergedAtStep: 7 },
  });
  // A diverged curve as it comes back from JSON: the non-finite losses are null.
  adaptDiverged.lossCurve = [5.5, 5.0, 6.1, 9.8, 40.2, 800.5, null as unknown as number];
  return [
    // spam: accuracy, higher is better. lora (300 MiB, .93) dominates the QA run (350, .91); full (800, .95) is on the front.
    record({ task: 'spam', method: 'full', metrics: { accuracy: 0.95, macroF1: 0.94, examples: 600 }, mib: 800, tps: 5000 }),
    record({ task: 'spam', method: 'lora', metrics: { accuracy: 0.93, macroF1: 0.925, examples: 600 }, mib: 300, tps: 8000, trainable: 10_000,
      settings: { r: 8, alpha: 16, target: 'all-linear' } }),
    record({ task: 'spam', method: QA, metrics: { accuracy: 0.91, macroF1: 0.90, examples: 600 }, mib: 350, tps: 7000, trainable: 10_000,
      extra: { deployable: [
        { kind: 'merged bf16', bits: 16, bytes: 2_469_134, metrics: { accuracy: 0.91 }, decodeTokensPerSecond: 1500 },
        { kind: 'QA-LoRA merged INT4 <g32>', bits: 4, bytes: 617_283, metrics: { accuracy: 0.905 } },
      ] } }),
    record({ task: 'spam', method: 'full', status: 'oom', settings: { seq: 2048 },
      extra: { error: 'TB_OOM: allocation of 123456789 bytes failed', oomBytes: 123456789 } }),
    // adapt: perplexity, lower is better. The QA run (250, 21) dominates lora (320, 22); full (900, 20) is on the front.
    record({ task: ADAPT, method: 'full', metrics: { adaptPerplexity: 20, adaptLoss: Math.log(20), baseLoss: 1.9 }, mib: 900, tps: 4800 }),
    record({ task: ADAPT, method: 'lora', metrics: { adaptPerplexity: 22, adaptLoss: Math.log(22), baseLoss: 1.8 }, mib: 320, tps: 8100, trainable: 10_000 }),
    record({ task: ADAPT, method: QA, metrics: { adaptPerplexity: 21, adaptLoss: Math.log(21), baseLoss: 1.85 }, mib: 250, tps: 6900, trainable: 10_000 }),
    adaptDiverged,
    record({ task: ADAPT, method: QA, status: 'error', settings: { bits: 3 },
      extra: { error: 'unsupported bits 3 | use 2, 4 or 8 <see docs>\nstack trace line', } }),
    // peers that redid spam/full's first steps: their own chart, and the loss chart; nothing else
    peer('tensorflow.js', 4, 40, 110, 3e-6),
    peer('pytorch', 20, 2500, 70, 8e-7),
  ];
}

function peer(impl: 'tensorflow.js' | 'pytorch', steps: number, tps: number, mib: number, diff: number): RunRecord {
  const r = record({ task: 'spam', method: `full \u00b7 ${impl}`, metrics: { lossMaxAbsDiff10: diff, lossMaxAbsDiff: 10 * diff, stepsAgreeing: steps, finalLoss: 2.5 }, mib, tps });
  return {
    ...r, id: `spam/full@${impl}/`, impl, peerOf: 'spam/full/', settings: { ...r.settings, steps },
    memory: { ...r.memory, peak: { frozen: 0, trainable: 0, grad: 0, optimizer: 0, optimizer_host: 0, activation: 0, workspace: 0 }, source: `${impl} <own> measure`, predicted: undefined },
    speed: { tokensPerSecond: tps, steadyTokensPerSecond: tps, msPerStep: { forward: null, backward: null, optimizer: null, total: 100 } },
    lossCurve: lossCurve(steps, 5.5, 2.0).map((l) => l + diff), provenance: { ...r.provenance, gemm: `${impl} build` },
  };
}

const EXPECTED_FRONT: Record<string, string[]> = {
  spam: ['spam/lora/r=8,alpha=16,target=all-linear', 'spam/full/'],
  [ADAPT]: [`${ADAPT}/${QA}/`, `${ADAPT}/full/`],
};

const KERNELS: KernelSpeeds = {
  rows: [
    { name: 'gemm f32 1024^3', gflops: 900, peakGflops: 1000 },
    { name: 'attention <fwd> & bwd', gflops: 250, peakGflops: 1000 },
    { name: 'no peak', gflops: 10, peakGflops: 0 },
  ],
};

/** RFC 4180 parsing, enough for what csv-stringify writes. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [], field = '', i = 0, quoted = false;
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 2; continue; }
      if (c === '"') { quoted = false; i++; continue; }
      field += c; i++; continue;
    }
    if (c === '"') { quoted = true; i++; continue; }
    if (c === ',') { row.push(field); field = ''; i++; continue; }
    if (c === '\n') { row.push(field); rows.push(row); row = []; field = ''; i++; continue; }
    field += c; i++;
  }
  if (field !== '' || row.length) { row.push(field); rows.push(row); }
  return rows;
}

function figures(html: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of html.matchAll(/<figure data-chart="([^"]+)">([\s\S]*?)<\/figure>/g)) {
    assert.ok(!out.has(m[1]), `one figure named ${m[1]}`);
    out.set(m[1], m[2]);
  }
  return out;
}

describe('results.csv', () => {
  test('header: fixed columns, then the union of settings and metrics, in a stable order', () => {
    const records = fixtures();
    const rows = parseCsv(resultsCsv(records));
    const [head, ...body] = rows;
    assert.deepEqual(head.slice(0, 10), ['id', 'suite', 'task', 'method', 'impl', 'peerOf', 'status', 'error', 'oomBytes', 'divergedAtStep']);
    const settings = head.filter((h) => h.startsWith('settings.'));
    assert.deepEqual(settings, ['settings.alpha', 'settings.batch', 'settings.bits', 'settings.lr', 'settings.r', 'settings.seq', 'settings.steps', 'settings.target']);
    const metrics = head.filter((h) => h.startsWith('metric.'));
    assert.deepEqual(metrics, ['metric.accuracy', 'metric.adaptLoss', 'metric.adaptPerplexity', 'metric.baseLoss', 'metric.examples', 'metric.finalLoss',
      'metric.lossMaxAbsDiff', 'metric.lossMaxAbsDiff10', 'metric.macroF1', 'metric.stepsAgreeing']);
    assert.ok(head.indexOf('settings.target') < head.indexOf('metric.accuracy'));
    for (const col of ['memory.peakTotal', 'memory.peak.frozen', 'memory.peak.workspace', 'memory.rssBytes', 'memory.cachedBytes', 'memory.deviceBytes', 'memory.predicted.total',
      'speed.tokensPerSecond', 'speed.msPerStep.forward', 'speed.msPerStep.backward', 'speed.msPerStep.optimizer', 'speed.msPerStep.total',
      'trainableParameters', 'totalParameters', 'fileBytes', 'referenceMs', 'provenance.commit', 'provenance.cpu', 'provenance.gemm',
      'provenance.node', 'provenance.seed', 'provenance.packages.@tunebench/core', 'startedAt', 'durationMs']) {
      assert.ok(head.includes(col), `column ${col}`);
    }
    assert.deepEqual(head.filter((h) => h.startsWith('memory.peak.')),
      ['memory.peak.frozen', 'memory.peak.trainable', 'memory.peak.grad', 'memory.peak.optimizer', 'memory.peak.optimizer_host',
        'memory.peak.activation', 'memory.peak.workspace'], 'categories in the core\u2019s order');
    assert.equal(head.at(-1), 'durationMs');
    assert.deepEqual(head.slice(10, 14), ['deployableOf', 'deployable.kind', 'deployable.bits', 'deployable.decodeTokensPerSecond']);
    // each deployable model is a row of its own after its run
    assert.equal(body.length, withDeployables(records).length);
    assert.ok(body.length > records.length, 'the fixtures have deployable rows');
    for (const row of body) assert.equal(row.length, head.length);
    // The same records in another order give the same columns.
    assert.deepEqual(parseCsv(resultsCsv([...records].reverse()))[0], head);
  });

  test('rows: values round-trip, missing values are empty, text with , " < & and line breaks survives', () => {
    const records = withDeployables(fixtures());
    const [head, ...body] = parseCsv(resultsCsv(fixtures()));
    const col = (name: string) => head.indexOf(name);
    records.forEach((r, i) => {
      const row = body[i];
      assert.equal(row[col('id')], r.id);
      assert.equal(row[col('suite')], SUITE);
      assert.equal(row[col('task')], r.task);
      assert.equal(row[col('method')], r.method);
      assert.equal(row[col('status')], r.status);
      assert.equal(row[col('error')], r.error ?? '');
      assert.equal(row[col('memory.peakTotal')], String(r.memory.peakTotal));
      assert.equal(row[col('settings.r')], r.settings.r === undefined ? '' : String(r.settings.r));
      assert.equal(row[col('metric.accuracy')], r.metrics.accuracy === undefined ? '' : String(r.metrics.accuracy));
      assert.equal(row[col('impl')], r.impl ?? 'tunebench');
      assert.equal(row[col('peerOf')], r.peerOf ?? '');
      assert.equal(row[col('memory.source')], r.memory.source ?? '');
      assert.equal(row[col('speed.msPerStep.backward')], r.impl || r.deployableOf ? '' : '21.25', 'a split a peer cannot make is empty');
      assert.equal(row[col('deployableOf')], r.deployableOf ?? '');
      assert.equal(row[col('deployable.bits')], r.deployable_ ? String(r.deployable_.bits) : '');
      assert.equal(row[col('provenance.cpu')], 'AMD EPYC <test> & co');
      assert.equal(row[col('startedAt')], r.startedAt);
    });
    const oom = body.find((row) => row[col('status')] === 'oom')!;
    assert.equal(oom[col('oomBytes')], '123456789');
    const err = body.find((row) => row[col('status')] === 'error')!;
    assert.equal(err[col('error')], 'unsupported bits 3 | use 2, 4 or 8 <see docs>\nstack trace line');
    assert.equal(body.find((row) => row[col('status')] === 'diverged')![col('divergedAtStep')], '7');
  });

  test('memory figures: process RSS and allocator cache apart; a CPU record from before rssBytes shows its deviceBytes as the RSS', async () => {
    const [now] = fixtures().filter((r) => r.status === 'ok' && !r.impl);
    const { rssBytes, cachedBytes, ...rest } = now.memory;
    const old: RunRecord = { ...now, id: `${now.id}-old`, memory: { ...rest, deviceBytes: 7 * MiB } };
    const cuda: RunRecord = { ...now, id: `${now.id}-cuda`, memory: { ...rest, deviceBytes: 9 * MiB }, provenance: { ...now.provenance, backend: 'cuda' } };
    const [head, ...body] = parseCsv(resultsCsv([now, old, cuda]));
    const cell = (row: string[], name: string) => row[head.indexOf(name)];
    assert.equal(cell(body[0], 'memory.rssBytes'), String(rssBytes));
    assert.equal(cell(body[0], 'memory.cachedBytes'), String(cachedBytes));
    assert.equal(cell(body[1], 'memory.rssBytes'), String(7 * MiB), 'the old field read as what it held');
    assert.equal(cell(body[1], 'memory.deviceBytes'), '', 'not device memory on the CPU');
    assert.equal(cell(body[1], 'memory.cachedBytes'), '');
    assert.equal(cell(body[2], 'memory.deviceBytes'), String(9 * MiB), 'device memory of a GPU record');
    assert.equal(cell(body[2], 'memory.rssBytes'), '');
    const html = await renderReport([now, old]);
    assert.match(html, /<th class="num">process RSS MiB<\/th><th class="num">allocator cache MiB<\/th>/);
    assert.doesNotMatch(html, /device MiB/);
    assert.match(html, /<td class="num">7\.0<\/td><td class="num">-<\/td>/, 'the old record: its RSS, no cache figure');
  });

  test('writeResultsCsv writes the same text, atomically (no temporary file left)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tb-report-csv-'));
    try {
      const path = join(dir, 'results.csv');
      writeResultsCsv(fixtures(), path);
      assert.equal(readFileSync(path, 'utf8'), resultsCsv(fixtures()));
      const empty = parseCsv(resultsCsv([]));
      assert.equal(empty.length, 1, 'no runs: the header alone');
      assert.deepEqual(empty[0].slice(0, 5), ['id', 'suite', 'task', 'method', 'impl']);
      assert.deepEqual(readdirSync(dir), ['results.csv'], 'no temporary file left');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Pareto front', () => {
  test('metric direction by name', () => {
    for (const m of ['accuracy', 'macroF1', 'f1', 'exactMatch']) assert.equal(metricDirection(m), 'higher', m);
    for (const m of ['loss', 'evalLoss', 'perplexity', 'adaptPerplexity', 'forgetting']) assert.equal(metricDirection(m), 'lower', m);
  });

  test('paretoFront: dominated points are out, ties stay, sorted by memory', () => {
    const pts = [
      { memory: 800, metric: 0.95 }, { memory: 300, metric: 0.93 }, { memory: 350, metric: 0.91 },
      { memory: 300, metric: 0.93 }, { memory: 100, metric: 0.5 }, { memory: 900, metric: 0.95 },
    ];
    assert.deepEqual(paretoFront(pts, 'higher'), [4, 1, 3, 0]);
    assert.deepEqual(paretoFront(pts, 'lower'), [4]);
    assert.deepEqual(paretoFront([], 'higher'), []);
  });

  test('paretoByTask picks the main metric per task and its front', () => {
    const a = paretoByTask(fixtures());
    assert.deepEqual(a.map((t) => [t.task, t.metric, t.direction]), [['spam', 'accuracy', 'higher'], [ADAPT, 'adaptPerplexity', 'lower']]);
    for (const t of a) {
      assert.deepEqual(t.points.filter((p) => p.front).map((p) => p.record.id), EXPECTED_FRONT[t.task], t.task);
      assert.ok(t.points.every((p) => p.record.status === 'ok'), 'only finished runs');
    }
  });
});

describe('summary.md', () => {
  test('per task a table; failed runs say why; a provenance line; deterministic', () => {
    const records = fixtures();
    const md = renderSummary(records);
    assert.match(md, /^# tunebench: ci <&> test\n/);
    assert.match(md, /9 runs: 6 ok, 1 do not fit, 1 diverged, 1 failed; 2 peer runs/);
    // peers: a table of their own, our run's speed beside theirs; not rows of the task table, not in the provenance line
    assert.match(md, /peers \(the same first steps/);
    assert.match(md, /^\| full seq=128 \| tensorflow\.js \| ok \| 4 \| 40 \| 5,000 \| 125x \| 110\.0 \| 3\.0e-6 \| 4 of 4 \|$/m);
    assert.match(md, /^\| full seq=128 \| pytorch \| ok \| 20 \| 2,500 \| 5,000 \| 2\.00x \| 70\.0 \| 8\.0e-7 \| 20 of 20 \|$/m);
    assert.doesNotMatch(md, /\| full · tensorflow\.js \| ok \|/);
    assert.doesNotMatch(md, /provenance:[^\n]*build/);
    assert.match(md, /provenance: commit abc1234 · cpu AMD EPYC \\<test> & co · gemm avx512 12x32 · node v20\.20\.2/);
    assert.match(md, /^## spam$/m);
    assert.match(md, /^## adapt \\<humor & r>$/m);
    assert.match(md, /^\| method \| status \| accuracy ↑ \| macroF1 ↑ \| peak memory MiB \| tokens\/s \| median step ms \[IQR\] \| trainable params \| file size \|$/m);
    assert.match(md, /^\| method \| status \| adaptPerplexity ↓ \| adaptLoss ↓ \| baseLoss ↓ \|/m);
    assert.match(md, /\| full seq=2048 \| does not fit \(123456789 bytes asked\) \| - \| - \| - \| - \|/);
    assert.match(md, /\| lora lr=1 \| diverged at step 7 \| - \| - \| - \| 330\.0 \| 9,000 \|/);
    assert.match(md, /\| error: unsupported bits 3 \\\| use 2, 4 or 8 \\<see docs> \|/, 'first line only, pipes escaped');
    assert.match(md, /\| lora \| ok \| 0\.9300 \| 0\.9250 \| 300\.0 \| 8,000 \| - \| 10\.0 k \(0\.81%\) \| 39\.1 KiB \|/);
    assert.match(md, /## spam\n\nsettings: batch=8 · lr=0\.001 · steps=20\n/, 'settings every run of the task shares');
    assert.match(md, /\| full seq=128 \| ok \|/, 'runs of one method are told apart by the settings that differ');
    assert.match(md, /deployable models:/);
    assert.match(md, /QA-LoRA merged INT4 \\<g32> \| 4 \| 602\.8 KiB \| 0\.9050 \| - \|/);
    // Every row of a table has as many cells as its header (escaped pipes are not cell breaks).
    for (const block of md.split(/\n(?!\|)/).map((b) => b.split('\n').filter((l) => l.startsWith('|'))).filter((b) => b.length)) {
      const cells = (l: string) => l.split(/(?<!\\)\|/).length;
      for (const line of block) assert.equal(cells(line), cells(block[0]), `cells per row: ${line}`);
    }
    assert.equal(renderSummary(records), md, 'same records, same text');
    assert.equal(renderSummary(JSON.parse(JSON.stringify(records))), md, 'the same after a JSON round trip');
    assert.equal(renderSummary([]), '# tunebench\n\nno runs recorded.\n');
  });
});

describe('report.html', () => {
  test('self-contained: no script, no URL but the SVG namespace, text escaped, one figure per chart with an svg', async () => {
    const records = fixtures();
    const html = await renderReport(records, { title: 'report <&> title', kernels: KERNELS });
    assert.ok(html.startsWith('<!doctype html>'));
    assert.doesNotMatch(html, /<script/i);
    assert.doesNotMatch(html, /@import|@font-face|<link\b|<img\b|<iframe\b/i);
    const urls = [...html.matchAll(/https?:\/\/[^\s"'<>)]*/g)];
    assert.ok(urls.length > 0, 'the svgs declare their namespace');
    for (const m of urls) {
      assert.equal(m[0], 'http://www.w3.org/2000/svg', `unexpected URL ${m[0]}`);
      assert.equal(html.slice(m.index! - 7, m.index!), 'xmlns="', 'the URL is an xmlns attribute');
    }
    assert.ok(html.includes('<title>report &lt;&amp;&gt; title</title>'));
    assert.ok(!html.includes(QA) && !html.includes(ADAPT) && !html.includes(SUITE), 'raw names never reach the page');
    assert.ok(html.includes('qa-lora &lt;int4 &amp; g32&gt;'));
    assert.ok(html.includes('does not fit (123456789 bytes asked)'));
    assert.ok(html.includes('diverged at step 7'));
    const figs = figures(html);
    assert.deepEqual([...figs.keys()], [...REPORT_CHARTS]);
    for (const [name, body] of figs) {
      assert.match(body, /<figcaption>[^<]+<span>/, `${name} has a title`);
      assert.equal(body.match(/<svg\b/g)?.length, 1, `${name} holds one svg`);
      assert.match(body, /<table class="data">/, `${name} has its data table`);
    }
    // Ids are made unique per chart, so two inline SVGs never clip each other.
    const ids = [...html.matchAll(/\sid="([^"]+)"/g)].map((m) => m[1]);
    assert.equal(new Set(ids).size, ids.length, 'ids are unique on the page');
    assert.match(figs.get('kernels')!, /<td class="num">90\.0%<\/td>/);
    assert.match(figs.get('kernels')!, /attention &lt;fwd&gt; &amp; bwd/);
    assert.equal(await renderReport(records, { title: 'report <&> title', kernels: KERNELS }), html, 'deterministic');
  });

  test('the Pareto line goes through exactly the Pareto-optimal runs', async () => {
    const html = await renderReport(fixtures());
    const fig = figures(html).get('pareto')!;
    const marked = [...fig.matchAll(/<tr data-run="([^"]+)" data-pareto="(yes|no)">/g)]
      .map((m) => [m[1].replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&'), m[2]] as const);
    assert.deepEqual(marked.filter(([, y]) => y === 'yes').map(([id]) => id), [...EXPECTED_FRONT.spam, ...EXPECTED_FRONT[ADAPT]]);
    assert.equal(marked.length, 6, 'every finished run is in the table');
    // In the SVG: one line per task panel, with as many vertices as the front
    // has runs, each vertex on one of the drawn points.
    const points = [...fig.matchAll(/aria-roledescription="point" transform="translate\(([-\d.]+),([-\d.]+)\)"/g)].map((m) => [+m[1], +m[2]]);
    assert.equal(points.length, 6);
    const lines = [...fig.matchAll(/class="mark-line role-mark pareto_front_(\d+)_marks"[^>]*>\s*<path[^>]*\sd="([^"]*)"/g)];
    assert.deepEqual(lines.map((m) => m[1]), ['0', '1']);
    for (const [k, task] of ['spam', ADAPT].entries()) {
      const d = lines[k][2];
      const vertices = [...d.matchAll(/[ML]([-\d.]+),([-\d.]+)/g)].map((m) => [+m[1], +m[2]]);
      assert.equal(vertices.length, EXPECTED_FRONT[task].length, `${task}: ${d}`);
      for (const [x, y] of vertices) {
        assert.ok(points.some(([px, py]) => Math.abs(px - x) < 0.01 && Math.abs(py - y) < 0.01), `${task}: vertex ${x},${y} is a point`);
      }
    }
  });

  test('without deployable rows: a placeholder, not an empty chart; no kernels figure without kernels', async () => {
    const records = fixtures().map((r) => ({ ...r, deployable: undefined }));
    const html = await renderReport(records);
    const figs = figures(html);
    assert.deepEqual([...figs.keys()], REPORT_CHARTS.filter((c) => c !== 'kernels'));
    assert.ok(figs.get('deployable')!.includes(NO_DEPLOYABLE_TEXT));
    assert.doesNotMatch(figs.get('deployable')!, /<svg/);
    // An empty run list still makes a valid page.
    const empty = await renderReport([]);
    assert.doesNotMatch(empty, /<script/i);
    assert.equal(figures(empty).size, 7);
    assert.ok(figures(empty).get('peers')!.includes(NO_PEERS_TEXT), 'no peers: a placeholder');
  });

  test('peers: their own chart (ours beside theirs, log scale) and the loss chart; not memory, speed, Pareto or the runs tables', async () => {
    const html = await renderReport(fixtures());
    const figs = figures(html);
    const peers = figs.get('peers')!;
    const rows = [...peers.matchAll(/<tr><td>spam<\/td><td>full seq=128<\/td><td>(tensorflow\.js|pytorch)<\/td>.*?<\/tr>/g)].map((m) => m[0]);
    assert.equal(rows.length, 2);
    assert.match(rows[0], /<td class="num">40<\/td><td class="num">5,000<\/td><td class="num">125x<\/td><td class="num">110\.0<\/td><td class="num">800\.0<\/td><td class="num">3\.0e-6<\/td><td class="num">4 of 4<\/td>/);
    // three bars: ours once, each peer once
    assert.equal([...peers.matchAll(/aria-roledescription="bar"/g)].length, 3);
    for (const name of ['memory', 'throughput', 'pareto']) assert.doesNotMatch(figs.get(name)!, /tensorflow\.js|pytorch/, `no peer in ${name}`);
    assert.match(figs.get('loss')!, /full · pytorch/, 'the peers\u2019 loss curves beside ours');
    assert.doesNotMatch(html.slice(0, html.indexOf('<h2>Charts</h2>')), /tensorflow\.js|pytorch/, 'the runs tables are ours');
  });

  test('opens in headless Chromium: no console or page errors, every chart is drawn', async (t) => {
    const executablePath = process.env.TUNEBENCH_CHROMIUM ?? '/usr/bin/chromium';
    if (!existsSync(executablePath)) {
      t.skip(`${executablePath} not found: install Debian's chromium to run the browser check`);
      return;
    }
    const { chromium } = await import('playwright-core');
    const dir = mkdtempSync(join(tmpdir(), 'tb-report-html-'));
    const browser = await chromium.launch({
      executablePath,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
      timeout: 20_000,
    });
    try {
      const paths = await writeReports(dir, fixtures(), { title: 'tunebench <browser> & test', kernels: KERNELS });
      assert.ok(existsSync(paths.csv) && existsSync(paths.summary));
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      const requests: string[] = [];
      page.on('request', (r) => { if (!r.url().startsWith('file://')) requests.push(r.url()); });
      await page.goto(pathToFileURL(paths.html).href, { waitUntil: 'load' });
      assert.equal(await page.title(), 'tunebench <browser> & test');
      const boxes = await page.$$eval('figure[data-chart]', (figs) => figs.map((f) => {
        const svg = f.querySelector('svg');
        const box = svg?.getBoundingClientRect();
        const drawn = svg ? (svg as SVGSVGElement).getBBox() : null;
        return { name: f.getAttribute('data-chart'), width: box?.width ?? 0, height: box?.height ?? 0, drawnWidth: drawn?.width ?? 0 };
      }));
      assert.deepEqual(boxes.map((b) => b.name), [...REPORT_CHARTS]);
      for (const b of boxes) assert.ok(b.width > 0 && b.height > 0 && b.drawnWidth > 0, `${b.name} is rendered: ${JSON.stringify(b)}`);
      assert.deepEqual(problems, []);
      assert.deepEqual(requests, [], 'the page fetches nothing');
    } finally {
      await browser.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
