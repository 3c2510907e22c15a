// Tokenizers: the byte-level one (exact ids, lenient decoding) and the
// Hugging Face tokenizer.json wrapper on a small hand-written BPE file.
import { test } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { BYTE_VOCAB_SIZE, ByteTokenizer, HfTokenizer, packTexts, padExamples } from '../src/index.js';

test('byte tokenizer: UTF-8 bytes, specials 256/257/258, vocabulary BYTE_VOCAB_SIZE', () => {
  const tok = new ByteTokenizer();
  assert.equal(tok.vocabSize, BYTE_VOCAB_SIZE);
  assert.equal(tok.vocabSize, 259);
  assert.deepEqual([tok.bos, tok.eos, tok.pad], [256, 257, 258]);
  assert.deepEqual(tok.encode('Aé€😀'), [0x41, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80]);
  assert.deepEqual(tok.encode(''), []);
  for (const s of ['', 'hello, world', 'héllo wörld — 日本語 🎉🇫🇷', '\ufeffleading BOM kept', 'a\u0000b\n\t']) {
    assert.equal(tok.decode(tok.encode(s)), s, JSON.stringify(s));
  }
  // a lone surrogate cannot be UTF-8: TextEncoder writes U+FFFD
  assert.deepEqual(tok.encode('\ud800'), [0xef, 0xbf, 0xbd]);
});

test('byte tokenizer: decode skips specials and unknown ids, turns invalid UTF-8 into U+FFFD without throwing', () => {
  const tok = new ByteTokenizer();
  assert.equal(tok.decode([256, 0x68, 0x69, 257, 258, 258]), 'hi');
  assert.equal(tok.decode([0xff, 0x41]), '\ufffdA');                 // byte that never starts a sequence
  assert.equal(tok.decode([0xc0, 0xaf]), '\ufffd\ufffd');            // overlong encoding
  assert.equal(tok.decode([0x41, 0xe6, 0x97]), 'A\ufffd');           // truncated 3-byte sequence at the end
  assert.equal(tok.decode([0xe6, 0x97, 0x41]), '\ufffdA');           // truncated in the middle
  assert.equal(tok.decode([0xed, 0xa0, 0x80]), '\ufffd\ufffd\ufffd'); // encoded surrogate
  assert.equal(tok.decode([0x41, -1, 999, 1.5, 0x42]), 'AB');
  assert.equal(tok.decode([]), '');
  assert.equal(tok.decode(new Int32Array([0xe2, 0x82, 0xac])), '€');
});

// A byte-level BPE in the tokenizers JSON format (GPT-2 style: 'Ġ' is the
// space byte), with Llama-like specials and a post-processor that would add
// <s> if encode() asked for special tokens.
function bpeTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2, '<pad>': 3 };
  for (const t of ['h', 'e', 'l', 'o', 'w', 'r', 'd', 'Ġ', '!', 'he', 'll', 'hell', 'hello', 'Ġw', 'or', 'Ġwor', 'ld', 'Ġworld']) {
    vocab[t] = Object.keys(vocab).length;
  }
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>'), special(3, '<pad>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab,
      merges: ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'o r', 'Ġw or', 'l d', 'Ġwor ld'],
    },
  };
}

function withDir(files: Record<string, string>, fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tb-tok-'));
  try {
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('HfTokenizer.fromDir: a hand-written BPE tokenizer.json with tokenizer_config.json specials', () => {
  const config = { bos_token: '<s>', eos_token: { __type: 'AddedToken', content: '</s>', special: true }, pad_token: '<pad>', unk_token: '<unk>' };
  withDir({ 'tokenizer.json': JSON.stringify(bpeTokenizerJson()), 'tokenizer_config.json': JSON.stringify(config) }, (dir) => {
    const tok = HfTokenizer.fromDir(dir);
    assert.equal(tok.vocabSize, 22);
    assert.deepEqual([tok.bos, tok.eos, tok.pad], [1, 2, 3]);
    assert.equal(tok.name, `hf:${dir}`);
    const ids = tok.encode('hello world!');
    // merges give 'hello', 'Ġworld', '!'; no <s> (specials are the batcher's job)
    assert.deepEqual(ids, [tok.tokenToId('hello'), tok.tokenToId('Ġworld'), tok.tokenToId('!')]);
    assert.deepEqual(ids, [16, 21, 12]);
    assert.equal(tok.decode(ids), 'hello world!');
    assert.equal(tok.decode([1, ...ids, 2, 3, 3]), 'hello world!', 'specials skipped');
    assert.equal(tok.decode([]), '');
    assert.equal(tok.decode([16, 999, -1]), 'hello', 'unknown ids skipped');
    assert.deepEqual(tok.encode('hex'), [tok.tokenToId('he'), 0], 'a character outside the vocabulary is <unk>');
    assert.deepEqual(tok.encode('hello</s>'), [16, 2], 'special token text in the input maps to the special (as HF tokenizers do)');

    // it drives the batchers like the byte tokenizer
    const packed = packTexts(tok, ['hello world!', 'hello'], 3);
    assert.deepEqual([...packed.ids], [1, 16, 21, 12, 2, 1]);
    assert.deepEqual([...packed.targets], [16, 21, 12, 2, 1, 16]);
    const sft = padExamples(tok, [{ prompt: 'hello', completion: ' world' }], 6);
    assert.deepEqual([...sft.ids], [1, 16, 21, 2, 3, 3]);
    assert.deepEqual([...sft.targets], [-100, 21, 2, -100, -100, -100]);
  });
});

test('HfTokenizer: without tokenizer_config.json the specials are null unless given; minimal files work', () => {
  withDir({ 'tokenizer.json': JSON.stringify(bpeTokenizerJson()) }, (dir) => {
    const tok = HfTokenizer.fromDir(dir);
    assert.deepEqual([tok.bos, tok.eos, tok.pad], [null, null, null]);
    const tok2 = HfTokenizer.fromDir(dir, { bosToken: '<s>', eosToken: '</s>' });
    assert.deepEqual([tok2.bos, tok2.eos, tok2.pad], [1, 2, null]);
    assert.throws(() => HfTokenizer.fromDir(dir, { padToken: '[PAD]' }), /tokenizer\.json: pad_token "\[PAD\]" \(from the options\) is not in the vocabulary/);
  });
  // a WordLevel-style file with only a model (no normalizer/decoder/... keys)
  const tok = HfTokenizer.fromJson({ model: { type: 'WordLevel', vocab: { '[UNK]': 0, a: 1, b: 2, '[EOS]': 3 }, unk_token: '[UNK]' } }, { eos_token: '[EOS]' });
  assert.equal(tok.vocabSize, 4);
  assert.equal(tok.eos, 3);
  assert.deepEqual(tok.encode('a'), [1]);
  // its unknown token comes from the model
  const ws = HfTokenizer.fromJson({ model: { type: 'WordLevel', vocab: { '[UNK]': 0, a: 1 }, unk_token: '[UNK]' }, pre_tokenizer: { type: 'WhitespaceSplit' } });
  assert.deepEqual(ws.encode('a b a'), [1, 0, 1]);
  assert.deepEqual(ws.encode(''), []);
  const noUnk = HfTokenizer.fromJson({ model: { type: 'WordLevel', vocab: { a: 1, b: 0 } }, pre_tokenizer: { type: 'WhitespaceSplit' } }, {}, { name: 'wl' });
  assert.throws(() => noUnk.encode('a zz'), /wl: the text piece "zz" is not in the vocabulary and the tokenizer has no unknown token/);
});

test('HfTokenizer: missing or malformed files are errors naming the file', () => {
  withDir({}, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => e.message === `${join(dir, 'tokenizer.json')}: file not found`);
  });
  withDir({ 'tokenizer.json': '{"model": {"type": "BPE", ' }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => e.message.startsWith(`${join(dir, 'tokenizer.json')}: malformed JSON`));
  });
  withDir({ 'tokenizer.json': '[1, 2]' }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => e.message === `${join(dir, 'tokenizer.json')}: expected a JSON object, got an array`);
  });
  withDir({ 'tokenizer.json': '{"version": "1.0"}' }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => e.message.startsWith(`${join(dir, 'tokenizer.json')}: no "model" object`));
  });
  withDir({ 'tokenizer.json': JSON.stringify({ model: { type: 'BPE', vocab: { a: 0 } } }) }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), /tokenizer\.json: BPE "model" has no "merges" array/);
  });
  withDir({ 'tokenizer.json': JSON.stringify({ model: { type: 'Mystery', vocab: 'x' } }) }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), /tokenizer\.json: "model" has no "vocab"/);
  });
  withDir({ 'tokenizer.json': JSON.stringify(bpeTokenizerJson()), 'tokenizer_config.json': '{"bos_token": ' }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => e.message.startsWith(`${join(dir, 'tokenizer_config.json')}: malformed JSON`));
  });
  withDir({ 'tokenizer.json': JSON.stringify(bpeTokenizerJson()), 'tokenizer_config.json': '{"eos_token": "<|end|>"}' }, (dir) => {
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => e.message.includes('eos_token "<|end|>"') && e.message.includes(join(dir, 'tokenizer_config.json')));
  });
});
