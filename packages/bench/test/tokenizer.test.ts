// The tasks' tokenizer on a base brought as a Hugging Face directory: its own
// tokenizer.json when it has one (tokenizer.ts), the byte tokenizer without;
// the suite refuses a tokenizer file it cannot use or whose ids the model's
// embedding does not cover.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaModel, type Tokenizer, preset, saveHfModel } from '@tunebench/core';
import { parseMethods } from '../src/methods.js';
import { calibrationRows } from '../src/methods/qa-lora.js';
import { prepareData } from '../src/runner.js';
import { validateSuite } from '../src/suite.js';
import { maxTokenId, taskTokenizer, tokenizerSetting } from '../src/tokenizer.js';

/** GPT-2's byte-to-character map: each byte as one printable character. */
function byteChars(): string[] {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b);
  for (let b = 0xae; b <= 0xff; b++) keep.push(b);
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + n++);
  return out;
}

/** A byte-level BPE tokenizer.json: specials 0-2, the 256 byte characters at
 * 3..258, and merges that make "hello" one token (id 262). */
function byteBpe(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (const c of byteChars()) vocab[c] = Object.keys(vocab).length;
  for (const t of ['he', 'll', 'hell', 'hello']) vocab[t] = Object.keys(vocab).length;
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab, merges: ['h e', 'l l', 'he ll', 'hell o'],
    },
  };
}

/** A tiny checkpoint (vocabulary `vocab`) in dir/model, with the tokenizer files when `tokenizer`. */
function checkpoint(dir: string, vocab: number, tokenizer: boolean): string {
  const model = LlamaModel.init({ ...preset('tiny'), vocabSize: vocab }, { seed: 1 });
  const at = join(dir, tokenizer ? 'with' : 'without');
  try { saveHfModel(model, at, { dtype: 'f32' }); } finally { model.dispose(); }
  if (tokenizer) {
    writeFileSync(join(at, 'tokenizer.json'), JSON.stringify(byteBpe()));
    writeFileSync(join(at, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }));
  }
  return at;
}

function jsonlSuite(hfDir: string, dataset: string) {
  return {
    name: 'tok', base: { hfDir }, tasks: ['jsonl'], methods: parseMethods('full'), dataset, datasetFormat: 'sft',
    shared: { steps: 2, batchSize: 2, seqLen: 32, seed: 0, schedule: 'constant', warmupSteps: 0, packing: 'pad' },
    peers: {}, kernels: false, decodeShape: 'none',
  };
}

const includes = (hay: ArrayLike<number>, needle: number[]): boolean => {
  for (let i = 0; i + needle.length <= hay.length; i++) if (needle.every((v, j) => hay[i + j] === v)) return true;
  return false;
};

test("a base with its own tokenizer.json: the tasks and GPTQ's calibration text use it, and the runs record it", () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-task-tok-'));
  try {
    const withTok = checkpoint(dir, 300, true), without = checkpoint(dir, 300, false);
    const dataset = join(dir, 'rows.jsonl');
    writeFileSync(dataset, Array.from({ length: 40 }, (_, i) => JSON.stringify({ prompt: `hello world ${i % 5}`, completion: i % 2 ? ' yes' : ' no' })).join('\n') + '\n');

    const tok = taskTokenizer(withTok);
    assert.equal(tok.name, `hf:${withTok}`);
    assert.equal(taskTokenizer(withTok), tok, 'loaded once per directory');
    assert.equal(taskTokenizer(without).name, 'byte');
    assert.equal(taskTokenizer().name, 'byte');
    assert.deepEqual(tok.encode('hello'), [262]);
    assert.equal(maxTokenId(tok), 262);
    assert.deepEqual(tokenizerSetting(withTok), { tokenizer: `hf:${withTok}` });
    assert.deepEqual(tokenizerSetting(without), {}, 'records without a tokenizer file stay as they were');

    const rowsOf = (hfDir: string): Int32Array => prepareData(validateSuite(jsonlSuite(hfDir, dataset), 'tok')).jsonl!.train.ids;
    const own = rowsOf(withTok), bytes = rowsOf(without);
    assert.ok(includes(own, [1, ...tok.encode('hello world')]), 'the rows hold BOS and the tokenizer file\'s ids of "hello world"');
    assert.ok(own.every((id) => id <= 262));
    assert.ok(includes(bytes, [256, ...Buffer.from('hello world')]), 'without the file: byte ids');

    const cal = (t: Tokenizer) => calibrationRows(t)[0];
    assert.notDeepEqual(Array.from(cal(tok)), Array.from(cal(taskTokenizer(without))), 'the calibration rows are tokenized with the base\'s tokenizer');
    assert.ok(cal(tok).every((id) => id <= 262));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a tokenizer file the tasks cannot use is refused before anything runs, saying why', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-task-tok-'));
  try {
    const small = checkpoint(dir, 260, true);  // ids up to 262: three have no embedding row
    const dataset = join(dir, 'rows.jsonl');
    writeFileSync(dataset, Array.from({ length: 20 }, (_, i) => JSON.stringify({ prompt: `p${i}`, completion: ' x' })).join('\n') + '\n');
    assert.throws(() => validateSuite(jsonlSuite(small, dataset), 'small'), /tokenizer\.json has ids up to 262, but the model's vocab_size is 260/);
    const config = JSON.parse(readFileSync(join(small, 'config.json'), 'utf8'));
    writeFileSync(join(small, 'config.json'), JSON.stringify({ ...config, vocab_size: 300 }));
    writeFileSync(join(small, 'tokenizer.json'), '{"model": ');
    assert.throws(() => validateSuite(jsonlSuite(small, dataset), 'broken'), /base\.hfDir: .*tokenizer\.json/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
