import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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

test('a chat JSONL file: assistant-only loss drops with training; the last assistant turns as a 2-label set are learned', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-jsonl-'));
  const file = join(dir, 'chat.jsonl');
  // multi-turn: a system message, a first exchange, then the review and its label
  const rows = Array.from({ length: 64 }, (_, i) => JSON.stringify({
    messages: [
      { role: 'system', content: 'Rate it.' },
      { role: 'user', content: `#${i}` },
      { role: 'assistant', content: 'Go on.' },
      { role: 'user', content: i % 2 ? 'great, loved it' : 'awful, hated it' },
      { role: 'assistant', content: i % 2 ? 'good' : 'bad' },
    ],
  }));
  writeFileSync(file, rows.join('\n') + '\n');
  const tok = new ByteTokenizer();
  const data = jsonlData(file, tok, { seqLen: 112, seed: 1, evalFraction: 0.25 });
  assert.equal(data.kind, 'chat');
  assert.deepEqual(data.labels, ['bad', 'good']);
  assert.equal(data.counts.train + data.counts.eval, 64);
  assert.equal(data.candidates!.numRows, 2 * data.counts.eval);
  assert.equal(data.train.stats.mode, 'pack-examples', 'chat rows are packed like prompt/completion rows');
  assert.equal(data.eval.stats.mode, 'pad');
  // targets: both assistant turns and their EOS in eval rows; the last turn alone in candidates
  const row = data.eval.row(0), cand = data.candidates!.row(0);
  const targeted = (t: Int32Array) => tok.decode([...t].filter((x) => x !== -100 && x < 256));
  assert.equal(targeted(row.targets), `Go on.${targeted(row.targets).endsWith('good') ? 'good' : 'bad'}`);
  assert.equal([...row.targets].filter((x) => x === tok.eos).length, 2);
  assert.equal(targeted(cand.targets), 'bad', 'the first candidate is the first label, scored alone');
  const model = LlamaModel.init(preset('tiny'), { seed: 2 });
  const before = evaluateJsonl(model, data, 16);
  // the label depends on a user turn ~20 tokens back: longer than the prompt/completion case above
  finetune(model, data.train, { steps: 120, batchSize: 8, lr: 3e-3 });
  const after = evaluateJsonl(model, data, 16);
  assert.ok(after.loss < before.loss - 0.5, `held-out assistant loss drops: ${before.loss.toFixed(3)} -> ${after.loss.toFixed(3)}`);
  assert.ok(Math.abs(after.perplexity - Math.exp(after.loss)) < 1e-9 * after.perplexity);
  assert.ok(after.accuracy! > 0.9, `an easy two-label chat task is learned (accuracy ${after.accuracy})`);
  assert.ok(data.majorityBaseline! > 0 && data.majorityBaseline! < 1);
  model.dispose();
  rmSync(dir, { recursive: true, force: true });
});

test('a chat JSONL file with the format set: a prompt/completion line is refused naming it; a model directory\'s template is used', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-jsonl-'));
  const chat = (a: string) => JSON.stringify({ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: a }] });
  const file = join(dir, 'mixed.jsonl');
  writeFileSync(file, `${chat('a')}\n${chat('b')}\n{"prompt": "p", "completion": "c"}\n`);
  assert.throws(() => jsonlData(file, new ByteTokenizer(), { seqLen: 32, format: 'chat' }), /mixed\.jsonl:3: a \{"prompt", "completion"\} row, but the format was set to chat/);
  const sft = join(dir, 'sft.jsonl');
  writeFileSync(sft, '{"prompt": "p", "completion": "c"}\n');
  assert.throws(() => jsonlData(sft, new ByteTokenizer(), { seqLen: 32, format: 'chat' }), /sft\.jsonl:1: .*format was set to chat/);
  // a model directory with a ChatML-style template: the rendered rows carry its markers (as bytes for the byte tokenizer)
  const model = join(dir, 'model');
  mkdirSync(model);
  writeFileSync(join(model, 'tokenizer_config.json'), JSON.stringify({
    chat_template: "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
    eos_token: '<|im_end|>',
  }));
  const good = join(dir, 'chat.jsonl');
  writeFileSync(good, Array.from({ length: 20 }, (_, i) => chat(i % 2 ? 'yes' : 'no')).join('\n'));
  const data = jsonlData(good, new ByteTokenizer(), { seqLen: 64, modelDir: model, evalFraction: 0.3, seed: 3 });
  const tok = new ByteTokenizer();
  const r = data.eval.row(0);
  const text = tok.decode([...r.ids].filter((x) => x < 256));
  assert.match(text, /^<\|im_start\|>user\nq<\|im_end\|>\n<\|im_start\|>assistant\n(yes|no)<\|im_end\|>/);
  const targets = tok.decode([...r.targets].filter((x) => x !== -100));
  assert.match(targets, /^(yes|no)<\|im_end\|>$/, 'the target is the answer and the template\'s end of turn (trailing newline left out)');
  rmSync(dir, { recursive: true, force: true });
});
