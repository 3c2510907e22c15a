import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type RunRecord, type Suite, parseMethods, renderReport, renderSummary, runSuite, validateSuite } from '../src/index.js';
import { type TuneCandidate, chooseLr, evalSteps, lrGrid, roundRate, tuneSteps } from '../src/tune.js';
import { atMajority } from '../src/report/summary.js';
import { labelScores } from '../src/tasks/spam_task.js';

const cache = mkdtempSync(join(tmpdir(), 'tb-cache-'));
process.env.TUNEBENCH_CACHE = cache;
test.after(() => rmSync(cache, { recursive: true, force: true }));

const cand = (lr: number, score: number | null, status: TuneCandidate['status'] = 'ok'): TuneCandidate => ({ lr, score, finalLoss: null, status });

test('the grid: factors times the rate (2 significant digits), or the row\'s own lrGrid; sorted and distinct', () => {
  const [lora] = parseMethods('lora8');
  assert.deepEqual(lrGrid({ ...lora, lr: 2e-3 }, {}), [roundRate(2e-3 / 3), 2e-3, 6e-3]);
  assert.deepEqual(lrGrid({ ...lora, lr: 1e-3 }, { factors: [10, 1, 0.1, 1] }), [1e-4, 1e-3, 1e-2]);
  assert.deepEqual(lrGrid({ ...lora, lrGrid: [3e-3, 1e-3, 3e-3] }, { factors: [5] }), [1e-3, 3e-3]);
  assert.throws(() => lrGrid({ ...lora, lrGrid: [1e-3, -1] }, {}), /rates must be positive/);
  assert.equal(tuneSteps({}, 200), 50);
  assert.equal(tuneSteps({}, 20), 10);
  assert.equal(tuneSteps({}, 6), 6, 'never more than the run itself');
  assert.equal(tuneSteps({ steps: 30 }, 200), 30);
});

test('the choice: best score in the metric\'s direction; diverged candidates never win; ties go to the configured rate; none finished keeps it', () => {
  const c = [cand(1e-4, 0.4), cand(1e-3, 0.6), cand(1e-2, null, 'diverged')];
  assert.equal(chooseLr(c, true, 1e-4), 1e-3);
  assert.equal(chooseLr([cand(1e-4, 2.5), cand(1e-3, 2.1), cand(1e-2, 2.3)], false, 1e-4), 1e-3, 'a loss: lower is better');
  assert.equal(chooseLr([cand(1e-4, 0.5), cand(1e-3, 0.5), cand(1e-2, 0.5)], true, 1e-3), 1e-3, 'a tie: the configured rate');
  assert.equal(chooseLr([cand(1e-4, 0.5), cand(1e-2, 0.5)], true, 2e-3), 1e-2, 'a tie: the rate nearest on a log scale');
  assert.equal(chooseLr([cand(1e-3, null, 'diverged'), cand(1e-2, null, 'error')], true, 5e-4), 5e-4);
  assert.deepEqual(evalSteps(200, 5), [0, 40, 80, 120, 160, 200]);
  assert.deepEqual(evalSteps(3, 5), [0, 1, 2, 3]);
  assert.deepEqual(evalSteps(100, 0), []);
});

test('suite fields: tuneLr and lrGrid are checked like the rest', () => {
  const base = { name: 's', base: { preset: 'tiny' }, tasks: ['spam'], methods: [{ name: 'lora', r: 4, alpha: 8, lr: 1e-3, label: 'l' }],
    shared: { steps: 10, batchSize: 2, seqLen: 32, seed: 0, schedule: 'cosine', warmupSteps: 1 } };
  assert.ok(validateSuite({ ...base, tuneLr: { factors: [0.5, 2], steps: 4 } }, 'x').tuneLr);
  assert.throws(() => validateSuite({ ...base, tuneLr: { factor: [2] } }, 'x'), /unknown key 'factor' \(did you mean 'factors'\?\)/);
  assert.throws(() => validateSuite({ ...base, tuneLr: { factors: [0] } }, 'x'), /tuneLr\.factors\[0\]/);
  assert.throws(() => validateSuite({ ...base, methods: [{ ...base.methods[0], lrGrid: [] }] }, 'x'), /lrGrid/);
});

test('--tune-lr in a suite: candidates scored on validation data, the full run at the best rate, recorded, reported, and not redone on --resume', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-tune-'));
  const suite: Suite = {
    name: 'tune', base: { preset: 'tiny', pretrainSteps: 4 }, tasks: ['spam', 'adapt'],
    methods: [{ name: 'lora', r: 4, alpha: 8, lr: 1e-3, label: 'lora-r4', lrGrid: [1e-4, 3e-3, 50] }],
    shared: { steps: 6, batchSize: 4, seqLen: 64, seed: 0, schedule: 'cosine', warmupSteps: 1, maxTrain: 24, maxTest: 12 },
    kernels: false, tuneLr: { steps: 3, maxValidation: 8, evalPoints: 2 },
  };
  const logs: string[] = [];
  const recs = await runSuite(suite, { outDir: out, log: (l) => logs.push(l) });
  assert.equal(recs.length, 2);
  for (const r of recs) {
    const t = r.tuning!;
    assert.ok(t, `${r.id}: the search is in the record`);
    assert.deepEqual(t.grid, [1e-4, 3e-3, 50]);
    assert.deepEqual(t.candidates.map((c) => c.lr), t.grid);
    assert.equal(t.steps, 3);
    assert.equal(t.configured, 1e-3);
    assert.equal(r.settings.lr, t.chosen, 'the full run used the chosen rate');
    const finite = t.candidates.filter((c) => c.score !== null).map((c) => c.score!);
    assert.equal(t.candidates.find((c) => c.lr === t.chosen)!.score, t.higherIsBetter ? Math.max(...finite) : Math.min(...finite));
    assert.deepEqual(r.evalCurve!.points.map((p) => p.step), [0, 3, 6]);
    assert.equal(r.budget!.steps, 6);
    assert.equal(r.budget!.rows, 24);
    const trainRows = 24 / r.budget!.epochs;  // epochs = rows drawn / training rows
    assert.ok(trainRows >= 1 && Math.abs(trainRows - Math.round(trainRows)) < 1e-9, `training rows ${trainRows}`);
    assert.ok(r.budget!.realTokens > 0 && r.budget!.realTokens <= 6 * 4 * 64, `real tokens ${r.budget!.realTokens}`);
    assert.ok(r.evalCurve!.points.every((p) => Number.isFinite(p.value)));
  }
  assert.equal(recs[0].tuning!.metric, 'macroF1');
  assert.match(recs[0].tuning!.validation, /spam validation split \(8 messages/);
  assert.equal(recs[1].tuning!.metric, 'loss');
  assert.equal(recs[1].tuning!.higherIsBetter, false);
  assert.equal(recs[1].tuning!.examples, 8, 'adapt: the validation rows are capped by maxValidation');
  assert.ok(logs.some((l) => /learning-rate search over 1\.0e-4, 3\.0e-3, 5\.0e\+1/.test(l)));
  const summary = renderSummary(recs);
  assert.match(summary, /learning rates chosen on validation data/);
  assert.match(summary, /budget of each run: 6 steps = 24 rows drawn = [\d.]+ epochs of the training rows/);
  assert.match(summary, /1\.0e-4: /);
  const html = await renderReport(recs);
  assert.match(html, /data-chart="tuning"/);
  // the candidates' runs were not redone on --resume
  const again: string[] = [];
  await runSuite(suite, { outDir: out, resume: true, log: (l) => again.push(l) });
  assert.ok(!again.some((l) => /learning-rate search/.test(l)));
  rmSync(out, { recursive: true, force: true });
});

test('a classification run no better than the majority class is flagged in the summary', () => {
  const r = (accuracy: number): RunRecord => ({
    id: `spam/m${accuracy}`, suite: 's', task: 'spam', method: `m${accuracy}`, settings: { lr: 1 }, status: 'ok',
    metrics: { accuracy, macroF1: 0.4, majorityBaseline: 0.69 }, memory: { peakTotal: 1, peak: {} as RunRecord['memory']['peak'], deviceBytes: 0 },
    speed: { tokensPerSecond: 1, msPerStep: { forward: 1, backward: 1, optimizer: 1, total: 3 } }, trainableParameters: 1, totalParameters: 2,
    fileBytes: 1, lossCurve: [1], referenceMs: 1, provenance: { commit: 'x', packages: {}, backend: 'cpu', device: 'cpu', cpu: 'c', gemm: 'g', seed: 0, node: 'v' },
    startedAt: '2026-01-01T00:00:00Z', durationMs: 1,
  });
  assert.ok(atMajority(r(0.69)));
  assert.ok(!atMajority(r(0.75)));
  const s = renderSummary([r(0.69), r(0.75)]);
  assert.match(s, /⚠ m0\.69: accuracy 0\.6900 does not beat always answering the majority class \(0\.6900\)/);
  assert.doesNotMatch(s, /⚠ m0\.75/);
});

test('labels of different token lengths: summed log-likelihood compares whole labels; per-token scoring is the alternative, and can disagree', () => {
  // one example, labels ' male' (5 tokens + EOS) and ' female' (7 + EOS): the
  // first letter decides (log p -2.0 vs -1.0); the later tokens are near-certain
  const ll = [-2.0 - 5 * 0.01, -1.0 - 7 * 0.01];
  const counts = [6, 8];
  assert.deepEqual(labelScores(ll, 1, 2), [ll]);
  const perToken = labelScores(ll, 1, 2, counts)[0];
  assert.ok(Math.abs(perToken[0] - ll[0] / 6) < 1e-12 && Math.abs(perToken[1] - ll[1] / 8) < 1e-12);
  // the sum prefers label 1 (higher probability of the whole string) ...
  assert.ok(ll[1] > ll[0]);
  // ... and so does the mean here; with the first letters swapped the mean's length bias shows
  const swapped = [-1.0 - 5 * 0.01, -1.2 - 7 * 0.01];
  assert.ok(swapped[0] > swapped[1], 'sum: the short label, whose whole string is likelier');
  const pt = labelScores(swapped, 1, 2, counts)[0];
  assert.ok(pt[1] > pt[0], 'mean per token: the long label, its near-certain tail dilutes the first letter');
});
