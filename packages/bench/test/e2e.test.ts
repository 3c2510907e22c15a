// Small end to end: pretrain the tiny base for a few steps, fine-tune it on
// spam for a few steps, and score the whole test split.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer, memory, native } from '@tunebench/core';
import { FORGETTING_ROWS, adaptData, brownData, evaluateAdapt, evenRows, evaluateSpam, finetune, loadBase, pretrainBase, spamData } from '../src/index.js';

test('pretrain tiny (cached), fine-tune on spam, accuracy over the whole test split', () => {
  const cacheDir = mkdtempSync(join(tmpdir(), 'tb-base-'));
  const opts = { preset: 'tiny', steps: 6, batchSize: 4, seqLen: 64, cacheDir, progress: false };
  const first = pretrainBase(opts);
  assert.equal(first.cached, false);
  assert.ok(Number.isFinite(first.validationLoss) && first.validationLoss < Math.log(259) + 0.5, `validation loss ${first.validationLoss}`);
  const again = pretrainBase(opts);
  assert.equal(again.cached, true, 'the second call reuses the cached base');
  assert.equal(again.dir, first.dir);
  assert.notEqual(pretrainBase({ ...opts, steps: 7 }).key, first.key, 'another step count is another base');
  // another kernel thread count is another base (some sums split differently)
  const threads = native.getThreads();
  try {
    native.setThreads(threads === 1 ? 2 : 1);
    assert.notEqual(pretrainBase(opts).key, first.key, 'another thread count is another base');
  } finally {
    native.setThreads(threads);
  }
  assert.equal(pretrainBase(opts).cached, true, 'the same thread count finds it again');

  const before = memory.snapshot().cpu.liveTotal;
  const model = loadBase(first.dir, { trainable: true });
  const data = spamData(new ByteTokenizer(), { seqLen: 96, maxTrain: 32 });
  const run = finetune(model, data.train, { steps: 3, batchSize: 4, lr: 1e-3 });
  assert.equal(run.steps.length, 3);
  const m = evaluateSpam(model, data, 32);
  assert.equal(m.examples, data.counts.test);
  assert.ok(m.examples > 500, `the whole test split is scored (${m.examples})`);
  assert.equal(m.confusion.flat().reduce((a, b) => a + b, 0), m.examples);
  assert.ok(m.accuracy >= 0 && m.accuracy <= 1 && m.macroF1 >= 0 && m.macroF1 <= 1);
  const spamShare = data.testLabels.filter((l) => l === 1).length / data.testLabels.length;
  assert.ok(spamShare > 0.2 && spamShare < 0.5, `the test split keeps both labels (spam share ${spamShare})`);
  assert.ok([spamShare, 1 - spamShare].some((x) => Math.abs(x - data.majorityBaseline) < 1e-12), `majority baseline ${data.majorityBaseline} is the share of one label`);
  model.dispose();
  assert.equal(memory.snapshot().cpu.liveTotal, before, 'everything freed');
  rmSync(cacheDir, { recursive: true, force: true });
});

test('adapt: the held-out genre never appears in the base data; metrics are finite', () => {
  const brown = brownData(64);
  const data = adaptData(brown, 64);
  assert.deepEqual(data.genres, ['r']);
  assert.ok(brown.split.train.every((d) => d.genre !== 'r'));
  assert.ok(data.train.numRows > 0 && data.test.numRows > 0);
  // forgetting is measured on FORGETTING_ROWS rows spread evenly over the base genres' validation text
  assert.equal(data.baseValidation.numRows, FORGETTING_ROWS);
  const all = brown.validation;
  assert.ok(all.numRows > 4 * FORGETTING_ROWS, `${all.numRows} validation rows`);
  const row = (r: typeof all, i: number) => Array.from(r.ids.subarray(i * 64, (i + 1) * 64));
  assert.deepEqual(row(data.baseValidation, 0), row(all, 0));
  assert.deepEqual(row(data.baseValidation, FORGETTING_ROWS - 1), row(all, Math.floor(((FORGETTING_ROWS - 1) * all.numRows) / FORGETTING_ROWS)));
  assert.equal(evenRows(data.test, data.test.numRows + 1), data.test, 'fewer rows than the cap: all of them');
  const cacheDir = mkdtempSync(join(tmpdir(), 'tb-base-'));
  const base = pretrainBase({ preset: 'tiny', steps: 2, batchSize: 2, seqLen: 64, cacheDir, progress: false });
  const model = loadBase(base.dir, { trainable: false });
  const m = evaluateAdapt(model, { ...data, test: data.test, baseValidation: data.baseValidation }, 16);
  assert.ok(Number.isFinite(m.adaptLoss) && Number.isFinite(m.baseLoss));
  assert.ok(Math.abs(m.adaptPerplexity - Math.exp(m.adaptLoss)) < 1e-6 * m.adaptPerplexity);
  model.dispose();
  rmSync(cacheDir, { recursive: true, force: true });
});
