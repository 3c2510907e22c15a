import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer, LlamaModel, preset } from '@tunebench/core';
import { evaluateJsonl, finetune, jsonlData } from '../src/index.js';

test('a user JSONL file with a small label set: loss, perplexity and accuracy', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-jsonl-'));
  const file = join(dir, 'sentiment.jsonl');
  const rows = Array.from({ length: 60 }, (_, i) => JSON.stringify({ prompt: `review ${i}: ${i % 2 ? 'great, loved it' : 'awful, hated it'} ->`, completion: i % 2 ? ' good' : ' bad' }));
  writeFileSync(file, rows.join('\n') + '\n');
  const data = jsonlData(file, new ByteTokenizer(), { seqLen: 48, seed: 1, evalFraction: 0.25 });
  assert.equal(data.kind, 'sft');
  assert.deepEqual(data.labels, [' bad', ' good']);
  assert.equal(data.counts.train + data.counts.eval, 60);
  assert.equal(data.candidates!.numRows, 2 * data.counts.eval);
  const model = LlamaModel.init(preset('tiny'), { seed: 2 });
  finetune(model, data.train, { steps: 40, batchSize: 8, lr: 3e-3 });
  const m = evaluateJsonl(model, data, 16);
  assert.ok(Number.isFinite(m.loss) && Math.abs(m.perplexity - Math.exp(m.loss)) < 1e-9 * m.perplexity);
  assert.ok(m.accuracy! > 0.9, `an easy two-label task is learned (accuracy ${m.accuracy})`);
  model.dispose();
  rmSync(dir, { recursive: true, force: true });
});

test('a text JSONL file is language modelling; a bad line names file:line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-jsonl-'));
  const file = join(dir, 'text.jsonl');
  writeFileSync(file, Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `line ${i} of some plain text for packing` })).join('\n'));
  const data = jsonlData(file, new ByteTokenizer(), { seqLen: 32 });
  assert.equal(data.kind, 'text');
  assert.equal(data.labels, null);
  const bad = join(dir, 'bad.jsonl');
  writeFileSync(bad, '{"text": "ok"}\n{"text": 3}\n');
  assert.throws(() => jsonlData(bad, new ByteTokenizer(), { seqLen: 32 }), /bad\.jsonl:2/);
  rmSync(dir, { recursive: true, force: true });
});
