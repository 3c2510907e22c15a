// Intervals, seeds, the learned check and the claims: the statistics checked
// against closed forms (the binomial standard error, the ratio of sums), the
// check through the public API on the ci suite's own settings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  BUILTIN_SUITES, CLAIMS, type LabelOutcomes, type Outcomes, type RunRecord, type Suite, bootstrapInterval, checkAgainst, checkLearned, checkReport,
  baselineFrom, claims, comparisons, learnedVerdict, pairedDifference, parseMethods, readBaseline, renderSummary, runSuite, seedGroups, validateSuite,
} from '../src/index.js';

const cache = mkdtempSync(join(tmpdir(), 'tb-cache-'));
process.env.TUNEBENCH_CACHE = cache;
test.after(() => rmSync(cache, { recursive: true, force: true }));

/** n examples, the first `correct` predicted right (labels alternate 0/1). */
function labels(n: number, correct: number): Outcomes {
  const truth = Array.from({ length: n }, (_, i) => i % 2);
  return { labels: { kind: 'labels', numLabels: 2, truth, pred: truth.map((t, i) => (i < correct ? t : 1 - t)) } };
}

test('a bootstrap interval of accuracy has the binomial standard error; seeded, deterministic, at least 1000 resamples', () => {
  const o = labels(400, 320);
  const iv = bootstrapInterval('accuracy', [o])!;
  assert.equal(iv.value, 0.8);
  // independent reference: the normal approximation p ± 1.96 sqrt(p(1-p)/n) = 0.8 ± 0.0392
  const se = Math.sqrt((0.8 * 0.2) / 400);
  assert.ok(Math.abs(iv.lo - (0.8 - 1.96 * se)) < 0.008, `lo ${iv.lo}`);
  assert.ok(Math.abs(iv.hi - (0.8 + 1.96 * se)) < 0.008, `hi ${iv.hi}`);
  assert.deepEqual(bootstrapInterval('accuracy', [o]), iv, 'the same draws every time');
  assert.notDeepEqual(bootstrapInterval('accuracy', [o], { seed: 7 }), iv, 'another seed, other draws');
  assert.throws(() => bootstrapInterval('accuracy', [o], { resamples: 200 }), /at least 1000 resamples/);
  assert.equal(bootstrapInterval('adaptPerplexity', [o]), null, 'no text outcomes: no perplexity interval');
});

test('perplexity is the ratio of sums on every draw, never a mean of per-sequence perplexities', () => {
  const text: Outcomes = { text: { kind: 'text', nll: [10, 40, 6, 30], tokens: [10, 20, 3, 10] } };
  const iv = bootstrapInterval('adaptPerplexity', [text])!;
  assert.ok(Math.abs(iv.value - Math.exp(86 / 43)) < 1e-12, `${iv.value}`);
  assert.ok(iv.lo <= iv.value && iv.value <= iv.hi);
  // every draw is a ratio of sums of the per-sequence losses 1, 2, 2, 3: inside [e^1, e^3]
  assert.ok(iv.lo >= Math.exp(1) - 1e-9 && iv.hi <= Math.exp(3) + 1e-9);
});

test('a paired difference resolves what two overlapping intervals cannot; identical outcomes are not resolved; other items are not paired', () => {
  const a = labels(200, 150), b = labels(200, 140);  // b's right answers are a subset of a's
  const ia = bootstrapInterval('accuracy', [a])!, ib = bootstrapInterval('accuracy', [b])!;
  assert.ok(ia.lo < ib.hi, 'the two intervals overlap');
  const d = pairedDifference('accuracy', [a], [b], true)!;
  assert.ok(Math.abs(d.value - 0.05) < 1e-12);
  assert.equal(d.verdict, 'better');
  assert.ok(d.lo > 0 && d.hi < 0.1);
  assert.equal(pairedDifference('accuracy', [b], [a], true)!.verdict, 'worse');
  const same = pairedDifference('accuracy', [a], [a], true)!;
  assert.deepEqual([same.value, same.lo, same.hi, same.verdict], [0, 0, 0, 'not resolved']);
  assert.equal(pairedDifference('accuracy', [a], [labels(100, 50)], true), null);
  // seeds: the mean of each side, on one draw of the items for all of them
  const two = pairedDifference('accuracy', [a, b], [b], true)!;
  assert.ok(Math.abs(two.value - 0.025) < 1e-12);
});

// a record with outcomes, for the report-side tests
function rec(id: string, method: string, settings: RunRecord['settings'], o: Outcomes, extra: Partial<RunRecord> = {}): RunRecord {
  const l = o.labels as LabelOutcomes;
  const acc = l.pred.filter((p, i) => p === l.truth[i]).length / l.truth.length;
  return {
    id, suite: 't', task: 'spam', method, settings: { steps: 10, seed: 0, ...settings }, status: 'ok', metrics: { accuracy: acc, majorityBaseline: 0.5 }, outcomes: o,
    memory: { peakTotal: 1000, peak: {} as RunRecord['memory']['peak'] }, speed: { tokensPerSecond: 100, msPerStep: { forward: 0, backward: 0, optimizer: 0, total: 0 } },
    trainableParameters: 1, totalParameters: 1, fileBytes: 1, lossCurve: [], referenceMs: 1,
    provenance: { commit: 'x', packages: {}, backend: 'cpu', device: 'cpu', cpu: 'c', gemm: 'g', seed: 0, node: 'v' }, startedAt: '', durationMs: 0, ...extra,
  };
}

test('claims: QLoRA vs LoRA, the NF4 bytes, a small rank; comparisons against full fine-tuning; a claim without rows is left out', () => {
  const full = rec('spam/full', 'full', {}, labels(400, 340));
  const lora = rec('spam/lora-r8', 'lora-r8', { r: 8 }, labels(400, 330));
  const qlora = rec('spam/qlora-r8', 'qlora-r8', { r: 8, format: 'nf4', doubleQuant: true }, labels(400, 330), {
    deployable: [
      { kind: 'merged bf16', bits: 16, bytes: 16000, metrics: { accuracy: 0.825 } },
      { kind: 'merged + requantized NF4', bits: 4.127, bytes: 4127, metrics: { accuracy: 0.82 } },
    ],
  });
  const lora64 = rec('spam/lora-r64', 'lora-r64', { r: 64 }, labels(400, 250));
  const rows = claims(seedGroups([full, lora, qlora, lora64]));
  const by = (c: string) => rows.filter((r) => r.claim === c);
  assert.deepEqual(by(CLAIMS.qloraMatchesLora).map((r) => r.verdict), ['reproduced'], 'identical outcomes match');
  assert.deepEqual(by(CLAIMS.nf4Quarter).map((r) => r.verdict), ['reproduced']);
  assert.match(by(CLAIMS.nf4Quarter)[0].evidence, /= 0\.2579/);
  // r 8 is far better than r 64 here: "a small rank suffices" holds
  assert.deepEqual(by(CLAIMS.smallRank).map((r) => r.verdict), ['reproduced']);
  assert.equal(by(CLAIMS.qaloraBeatsRequantized).length, 0, 'no QA-LoRA rows: the claim is left out');
  // QLoRA far worse than LoRA: contradicted
  const bad = rec('spam/qlora-r8', 'qlora-r8', { r: 8, format: 'nf4', doubleQuant: true }, labels(400, 200));
  assert.deepEqual(claims(seedGroups([lora, bad])).filter((r) => r.claim === CLAIMS.qloraMatchesLora).map((r) => r.verdict), ['contradicted']);
  // runs that never left their starting point agree about nothing: not resolved, and said why
  const idle = (r: RunRecord): RunRecord => ({ ...r, untrained: { metrics: r.metrics, outcomes: r.outcomes! } });
  const still = claims(seedGroups([idle(lora), idle(qlora)])).filter((r) => r.claim === CLAIMS.qloraMatchesLora);
  assert.deepEqual(still.map((r) => r.verdict), ['not resolved']);
  assert.match(still[0].evidence, /^spam\/qlora-r8, spam\/lora-r8 did not learn the task/);
  const cs = comparisons(seedGroups([full, lora, qlora]));
  assert.deepEqual(cs.map((c) => c.what), ['lora-r8 vs full', 'qlora-r8 vs full', 'qlora-r8 vs lora-r8']);
  assert.match(cs[0].text, /^worse by 0\.0250 \[0\.0\d+, 0\.0\d+\]|^not resolved/);
  assert.match(cs[2].text, /^not resolved \(difference 0\.0000 \[0\.0000, 0\.0000\]\)/);
  const md = renderSummary([full, lora, qlora, lora64]);
  assert.match(md, /^## Claims$/m);
  assert.match(md, /\| QLoRA \(NF4 \+ double quantization\) matches LoRA at the same rank \| spam \| reproduced \|/);
  assert.match(md, /comparisons \(accuracy, paired bootstrap/);
});

test('against a baseline, a metric regresses when the paired interval lies wholly beyond the margin, not on a few flipped examples', () => {
  const base = baselineFrom([rec('spam/x', 'x', {}, labels(400, 320))]);
  assert.deepEqual(checkAgainst([rec('spam/x', 'x', {}, labels(400, 316))], base), [], 'four examples fewer: within the margin');
  assert.deepEqual(checkAgainst([rec('spam/x', 'x', {}, labels(400, 340))], base), [], 'better is no regression');
  const p = checkAgainst([rec('spam/x', 'x', {}, labels(400, 280))], base);
  assert.equal(p.length, 1, p.join('\n'));
  assert.match(p[0], /^spam\/x: accuracy 0\.7000 vs baseline 0\.8000: lower by 0\.1000 \[0\.0\d+, 0\.1\d+\] \(paired bootstrap, 95%; beyond the margin 0\.01\)$/);
  const other = checkAgainst([rec('spam/x', 'x', {}, labels(300, 240))], base);
  assert.match(other.join('\n'), /the baseline was scored on other test items/);
});

test('a run that did not learn fails the check, unless it did not learn when the baseline was written either (then it is a note)', () => {
  const still = (r: RunRecord): RunRecord => ({ ...r, untrained: { metrics: r.metrics, outcomes: r.outcomes! } });
  const learnt = rec('spam/a', 'a', {}, labels(400, 360), { untrained: { metrics: {}, outcomes: labels(400, 200) } });
  const idle = still(rec('spam/b', 'b', {}, labels(400, 200)));
  assert.deepEqual(checkLearned([learnt, idle]).map((f) => f.split(':')[0]), ['spam/b']);
  const notes: string[] = [];
  assert.deepEqual(checkLearned([learnt, idle], baselineFrom([learnt, idle]), notes), []);
  assert.match(notes.join('\n'), /^spam\/b: did not learn, as when the baseline was written \(a known limitation\): accuracy /);
  // a run that learned in the baseline and does not now fails
  const stalled = still(rec('spam/a', 'a', {}, labels(400, 200)));
  assert.deepEqual(checkLearned([stalled], baselineFrom([learnt])).map((f) => f.split(':')[0]), ['spam/a']);
});

test('a run timed while the machine was busy: its speed regression is a note, not a failure', () => {
  const o = labels(100, 80);
  const runs = ['a', 'b', 'c', 'd'].map((id) => rec(id, id, {}, o));
  const base = baselineFrom(runs);
  const now = runs.map((r) => ({ ...r }));
  now[0] = { ...now[0], referenceMs: 10, speed: { ...now[0].speed, tokensPerSecond: 5 } };   // the reference kernel 10x the suite's median
  now[1] = { ...now[1], speed: { ...now[1].speed, tokensPerSecond: 5 } };                    // slower on a quiet machine: a regression
  const r = checkReport(now, base);
  assert.deepEqual(r.failures.map((f) => f.split(':')[0]), ['b']);
  assert.equal(r.notes.length, 1);
  assert.match(r.notes[0], /^a: normalised speed .*not comparable \(machine busy: speed not comparable: reference kernel 10\.00 ms before the run vs the suite's median 1\.00 ms\)/);
});

test('seeds: each run once per seed on the same test items; one row with the mean, the spread and the interval', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-seeds-'));
  const suite: Suite = {
    name: 'seeds', base: { preset: 'tiny', pretrainSteps: 4 }, tasks: ['spam'], methods: parseMethods('lora4'),
    shared: { steps: 3, batchSize: 4, seqLen: 64, seed: 0, seeds: [0, 1], schedule: 'cosine', warmupSteps: 1, maxTrain: 24, maxTest: 12 }, kernels: false,
  };
  validateSuite(suite, 'seeds suite');
  assert.throws(() => validateSuite({ ...suite, shared: { ...suite.shared, seeds: [1, 1] } }, 's'), /shared\.seeds: lists a seed twice/);
  const records = await runSuite(suite, { outDir: out, log: () => {} });
  assert.deepEqual(records.map((r) => r.id), ['spam/lora-r4/steps3-b4-t64-seed0', 'spam/lora-r4/steps3-b4-t64-seed1']);
  assert.deepEqual(records.map((r) => [r.settings.seed, r.settings.dataSeed]), [[0, 0], [1, 0]]);
  assert.deepEqual(records[0].outcomes!.labels!.truth, records[1].outcomes!.labels!.truth, 'the same test items');
  assert.notDeepEqual(records[0].lossCurve, records[1].lossCurve, 'another adapter init and data order');
  const [g] = seedGroups(records);
  assert.equal(g.ok.length, 2);
  assert.ok(g.metrics.accuracy.interval, 'an interval over both seeds');
  assert.match(renderSummary(records), /\| lora-r4 \| 2 \| ok[^|]* \| [\d.]+ \[[\d.]+, [\d.]+\] ±[\d.]+ sd over 2 seeds \|/);
  rmSync(out, { recursive: true, force: true });
});

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

test('the check fails a LoRA that cannot learn (learning rate 0) at the ci suite\'s settings, naming the row by its task metric', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-lr0-'));
  const ci = BUILTIN_SUITES.ci;
  const lora = ci.methods.find((m) => m.label === 'lora-r8')!;
  const suite: Suite = { ...ci, methods: [{ ...lora, lr: 0 }], peers: {}, kernels: false };
  const records = await runSuite(validateSuite(suite, 'ci with a frozen LoRA'), { outDir: out, log: () => {}, progress: false });
  assert.deepEqual(records.map((r) => r.status), ci.tasks.map(() => 'ok'));
  for (const r of records) {
    const v = learnedVerdict(r)!;
    assert.equal(v.learned, false, `${r.id}: ${v.text}`);
    assert.equal(v.difference.value, 0, 'adapters at learning rate 0 do not move: the trained model is its starting point');
  }
  const failures = checkLearned(records);
  assert.equal(failures.length, ci.tasks.length, failures.join('\n'));
  assert.match(failures.find((f) => f.startsWith('spam/'))!, /^spam\/lora-r8\/\S+: accuracy [\d.]+ \[[\d.]+, [\d.]+\] vs untrained .*did not learn/);
  if (ci.tasks.includes('adapt')) assert.match(failures.find((f) => f.startsWith('adapt/'))!, /^adapt\/lora-r8\/\S+: adaptPerplexity .*did not learn/);
  // against the committed baseline, whose LoRA learned: its task metric is worse by its paired interval
  const baselinePath = join(root, 'reports', 'baselines', 'ci.json');
  assert.ok(existsSync(baselinePath));
  const problems = checkAgainst(records, readBaseline(baselinePath)).filter((p) => p.startsWith('spam/lora-r8/'));
  assert.ok(problems.some((p) => /: accuracy [\d.]+ vs baseline [\d.]+: lower by .*\(paired bootstrap, 95%; beyond the margin [\d.]+\)$/.test(p)), problems.join('\n'));
  rmSync(out, { recursive: true, force: true });
});
