// The data layer: JSONL datasets (errors name file:line), packing and
// prompt-masked padding (exact on tiny examples), the shuffling DataSource
// (seeded, resumable) and in-order evaluation batches.
import { test } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import {
  ByteTokenizer, LlamaModel, TokenDataSource, Trainer, countTargets, datasetFromRows, epochBatches, loadCheckpoint, memory,
  packTexts, padExamples, prepareDataset, preset, readJsonl, saveCheckpoint, sftDataset, textDataset,
  type Tokenizer, type TokenRows,
} from '../src/index.js';

const tok = new ByteTokenizer();
const BOS = 256, EOS = 257, PAD = 258, I = -100;
const b = (s: string) => [...Buffer.from(s, 'utf8')];

let tmp: string | null = null;
function tmpFile(name: string, content: string | Buffer): string {
  tmp ??= mkdtempSync(join(tmpdir(), 'tb-data-'));
  const f = join(tmp, name);
  writeFileSync(f, content);
  return f;
}
process.on('exit', () => { if (tmp) rmSync(tmp, { recursive: true, force: true }); });

// ---------------------------------------------------------------------------
// JSONL

test('readJsonl: text and prompt/completion files; blank lines, CRLF, BOM and extra keys', () => {
  const f = tmpFile('text.jsonl', '\ufeff{"text": "one"}\r\n\n   \n{"text": "two \\u00e9", "id": 7}\n{"text": ""}');
  assert.deepEqual(readJsonl(f), { kind: 'text', source: f, rows: [{ text: 'one' }, { text: 'two é' }, { text: '' }] });
  const g = tmpFile('sft.jsonl', '{"prompt": "2+2=", "completion": "4"}\n{"completion": "b", "prompt": "a", "meta": {}}\n');
  assert.deepEqual(readJsonl(g), { kind: 'sft', source: g, rows: [{ prompt: '2+2=', completion: '4' }, { prompt: 'a', completion: 'b' }] });
});

test('readJsonl: a line longer than the read chunk, and multi-byte characters across chunk edges', () => {
  const long = 'ü'.repeat(700_000) + '€'; // 1.4 MB, crosses the 1 MiB chunk
  const f = tmpFile('long.jsonl', `{"text": "x"}\n${JSON.stringify({ text: long })}\n{"text": "y"}\n`);
  const ds = readJsonl(f);
  assert.equal(ds.rows.length, 3);
  assert.equal((ds.rows[1] as { text: string }).text, long);
  assert.equal((ds.rows[2] as { text: string }).text, 'y');
});

test('readJsonl: every malformed line is an error naming file:line and the problem', () => {
  const cases: [string, string, RegExp][] = [
    ['json.jsonl', '{"text": "a"}\n\n{"text": "b",}\n', /:3: invalid JSON/],
    ['array.jsonl', '{"text": "a"}\n[1, 2]\n', /:2: expected a JSON object, got an array/],
    ['scalar.jsonl', '"just a string"\n', /:1: expected a JSON object, got string/],
    ['null.jsonl', 'null\n', /:1: expected a JSON object, got null/],
    ['nokeys.jsonl', '{"text": "a"}\n{"body": "b"}\n', /:2: expected \{"text": string\}, \{"prompt": string, "completion": string\} or \{"messages": \[\{"role", "content"\}, \.\.\.\]\}, got keys "body"/],
    ['texttype.jsonl', '{"text": 5}\n', /:1: "text" must be a string, got number/],
    ['nocompletion.jsonl', '{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n', /:2: missing "completion"/],
    ['prompttype.jsonl', '{"prompt": null, "completion": "c"}\n', /:1: "prompt" must be a string, got null/],
    ['both.jsonl', '{"text": "t", "prompt": "p", "completion": "c"}\n', /:1: a row has either "text" or "prompt"\/"completion", not both/],
    ['mixed.jsonl', '{"text": "a"}\n{"text": "b"}\n\n{"prompt": "p", "completion": "c"}\n', /:4: a \{"prompt", "completion"\} row, but the dataset started with a \{"text"\} row \(.*mixed\.jsonl:1\)/],
  ];
  for (const [name, content, re] of cases) {
    const f = tmpFile(name, content);
    assert.throws(() => readJsonl(f), (e: Error) => {
      assert.ok(e.message.startsWith(`${f}:`), `${name}: message does not start with the file: ${e.message}`);
      assert.match(e.message, re, name);
      return true;
    });
  }
  const bad = tmpFile('utf8.jsonl', Buffer.concat([Buffer.from('{"text": "ok"}\n{"text": "'), Buffer.from([0xff, 0xfe]), Buffer.from('"}\n')]));
  assert.throws(() => readJsonl(bad), (e: Error) => e.message === `${bad}:2: invalid UTF-8`);
});

test('readJsonl: an empty dataset or a missing file is an error naming the file', () => {
  for (const [name, content] of [['empty.jsonl', ''], ['blank.jsonl', '\n  \n\r\n']]) {
    const f = tmpFile(name, content);
    assert.throws(() => readJsonl(f), (e: Error) => e.message === `${f}: the dataset is empty (no rows)`);
  }
  const missing = join(tmpdir(), 'tb-no-such-dir', 'x.jsonl');
  assert.throws(() => readJsonl(missing), (e: Error) => e.message === `${missing}: file not found`);
});

test('datasets from rows in memory are checked the same way', () => {
  assert.deepEqual(textDataset(['a', 'b']), { kind: 'text', source: 'texts', rows: [{ text: 'a' }, { text: 'b' }] });
  assert.equal(sftDataset([{ prompt: 'p', completion: 'c' }], 'task').kind, 'sft');
  assert.throws(() => datasetFromRows([], 'task:train'), /^Error: task:train: the dataset is empty/);
  assert.throws(() => datasetFromRows([{ text: 'a' }, { prompt: 'p', completion: 'c' }], 'mix'), /mix\[1\]: a \{"prompt", "completion"\} row, but the dataset started with a \{"text"\} row \(mix\[0\]\)/);
  assert.throws(() => sftDataset([{ prompt: 'p' } as never], 'task'), /task\[0\]: missing "completion"/);
});

// ---------------------------------------------------------------------------
// Packing and padding

const rowsOf = (r: TokenRows) => Array.from({ length: r.numRows }, (_, i) => ({ ids: [...r.row(i).ids], targets: [...r.row(i).targets] }));

test('packing: [BOS] text [EOS] streams cut into windows of T+1 sharing one token; the tail is dropped', () => {
  // stream: BOS a b EOS BOS c EOS  (7 tokens)
  const three = packTexts(tok, ['ab', 'c'], 3);
  assert.deepEqual(rowsOf(three), [
    { ids: [BOS, 97, 98], targets: [97, 98, EOS] },
    { ids: [EOS, BOS, 99], targets: [BOS, 99, EOS] },
  ]);
  assert.equal(three.stats.droppedTailTokens, 0);
  assert.equal(three.stats.streamTokens, 7);
  const four = packTexts(tok, textDataset(['ab', 'c']).rows as { text: string }[], 4);
  assert.deepEqual(rowsOf(four), [{ ids: [BOS, 97, 98, EOS], targets: [97, 98, EOS, BOS] }]);
  assert.equal(four.stats.droppedTailTokens, 2, 'c and EOS are never targets');
  assert.equal(four.stats.targetTokens, 4);
  assert.equal(four.targetTokens(), 4);
  assert.equal(four.stats.inputTokens, 4);
  assert.throws(() => packTexts(tok, ['ab', 'c'], 7, 'tiny'), /packTexts\(tiny\): 2 text\(s\) give 7 tokens, fewer than one window of seqLen \+ 1 = 8/);
  assert.throws(() => packTexts(tok, ['ab'], 0), /seqLen must be a positive integer/);
});

test('padding: prompt positions and padding are -100; completion tokens and EOS are targets', () => {
  const r = padExamples(tok, [{ prompt: 'ab', completion: 'c' }, { prompt: '', completion: 'xy' }], 6);
  assert.deepEqual(rowsOf(r), [
    // seq = BOS a b c EOS: targets at the positions whose next token is c or EOS
    { ids: [BOS, 97, 98, 99, EOS, PAD], targets: [I, I, 99, EOS, I, I] },
    // empty prompt: BOS predicts the first completion token
    { ids: [BOS, 120, 121, EOS, PAD, PAD], targets: [120, 121, EOS, I, I, I] },
  ]);
  assert.equal(r.stats.targetTokens, 5);
  assert.equal(r.stats.inputTokens, 9);
  assert.equal(r.stats.promptTruncated + r.stats.completionTruncated, 0);
  assert.equal(r.padId, PAD);
});

test('padding: the prompt is truncated from the left so the completion survives; a long completion is cut at its end', () => {
  // seq budget is T+1 = 6: BOS + 2 prompt tokens + x y EOS; ids hold the first 5
  const left = padExamples(tok, [{ prompt: 'abcdef', completion: 'xy' }], 5);
  assert.deepEqual(rowsOf(left), [{ ids: [BOS, 101, 102, 120, 121], targets: [I, I, 120, 121, EOS] }]);
  assert.equal(left.stats.promptTruncated, 1);
  assert.equal(left.stats.droppedPromptTokens, 4);
  assert.equal(left.stats.completionTruncated, 0);
  // completion + EOS (5) > room (3): no prompt at all, completion cut, EOS gone
  const cut = padExamples(tok, [{ prompt: 'ab', completion: 'wxyz' }, { prompt: 'q', completion: 'r' }], 3);
  assert.deepEqual(rowsOf(cut), [
    { ids: [BOS, 119, 120], targets: [119, 120, 121] },
    { ids: [BOS, 113, 114], targets: [I, 114, EOS] },
  ]);
  assert.deepEqual(
    [cut.stats.promptTruncated, cut.stats.droppedPromptTokens, cut.stats.completionTruncated, cut.stats.droppedCompletionTokens],
    [1, 2, 1, 2],
  );
  // multi-byte: truncation is in tokens (bytes here), not characters
  const mb = padExamples(tok, [{ prompt: 'é', completion: '€' }], 5);
  assert.deepEqual(rowsOf(mb), [{ ids: [BOS, 0xa9, 0xe2, 0x82, 0xac], targets: [I, 0xe2, 0x82, 0xac, EOS] }]);
});

test('a tokenizer without BOS/EOS/PAD: no specials added, EOS-less packing, padding with 0', () => {
  const bare: Tokenizer = { vocabSize: 256, bos: null, eos: null, pad: null, name: 'bare', encode: (t) => b(t), decode: () => '' };
  const p = packTexts(bare, ['abc', 'de'], 2);
  assert.deepEqual(rowsOf(p), [{ ids: [97, 98], targets: [98, 99] }, { ids: [99, 100], targets: [100, 101] }]);
  const s = padExamples(bare, [{ prompt: 'ab', completion: 'c' }, { prompt: '', completion: 'xy' }, { prompt: 'a', completion: '' }], 4);
  assert.deepEqual(rowsOf(s), [
    { ids: [97, 98, 99, 0], targets: [I, 99, I, I] },
    { ids: [120, 121, 0, 0], targets: [121, I, I, I] }, // nothing precedes x: it cannot be a target
    { ids: [97, 0, 0, 0], targets: [I, I, I, I] },
  ]);
  assert.equal(s.stats.rowsWithoutTargets, 1);
  const withEos: Tokenizer = { ...bare, eos: 255 };
  assert.equal(padExamples(withEos, [{ prompt: 'a', completion: 'b' }], 4).padId, 255, 'PAD falls back to EOS');
  const broken: Tokenizer = { ...bare, encode: () => [300] };
  assert.throws(() => packTexts(broken, ['x'], 1, 'src'), /src\[0\]: tokenizer bare produced id 300, outside its vocabulary \[0, 256\)/);
});

test('prepareDataset packs text datasets; pads prompt/completion ones on request (packing them is the default)', () => {
  assert.equal(prepareDataset(textDataset(['hello world']), tok, 4).stats.mode, 'pack');
  assert.equal(prepareDataset(sftDataset([{ prompt: 'q', completion: 'a' }]), tok, 8).stats.mode, 'pack-examples');
  const s = prepareDataset(sftDataset([{ prompt: 'q', completion: 'a' }]), tok, 8, { packing: 'pad' });
  assert.equal(s.stats.mode, 'pad');
  assert.equal(s.numRows, 1);
});

// ---------------------------------------------------------------------------
// DataSource and evaluation batches

function numberedRows(n: number, T = 4): TokenRows {
  // row i: [BOS, 'A'+i, EOS, PAD...], targets ['A'+i, EOS, -100...]: the row is recognisable in a batch
  return padExamples(tok, Array.from({ length: n }, (_, i) => ({ prompt: '', completion: String.fromCharCode(65 + i) })), T);
}

function take(src: TokenDataSource, n: number): { ids: number[]; targets: number[] }[] {
  const out = [];
  for (let i = 0; i < n; i++) {
    const bt = src.next();
    assert.equal(bt.ids.dtype, 'i32');
    assert.deepEqual(bt.ids.shape, [src.batchSize, src.rows.seqLen]);
    out.push({ ids: [...(bt.ids.data() as Int32Array)], targets: [...(bt.targets.data() as Int32Array)] });
    bt.ids.dispose(); bt.targets.dispose();
  }
  return out;
}

test('shuffle: the same seed gives the same order, another seed another; every epoch is a permutation', () => {
  const rows = numberedRows(10);
  const a = new TokenDataSource(rows, { batchSize: 3, seed: 1 }), a2 = new TokenDataSource(rows, { batchSize: 3, seed: 1 });
  const c = new TokenDataSource(rows, { batchSize: 3, seed: 2 });
  assert.deepEqual(a.epochOrder(), a2.epochOrder());
  assert.notDeepEqual(a.epochOrder(), c.epochOrder());
  assert.deepEqual(take(a, 7), take(a2, 7));
  const identity = Array.from({ length: 10 }, (_, i) => i);
  const s = new TokenDataSource(rows, { batchSize: 5, seed: 1 });
  const rowAt = (ids: number[], k: number) => ids[k * 4 + 1] - 65; // position 1 holds the row's letter
  const orders: number[][] = [];
  for (let e = 0; e < 3; e++) {
    const got = take(s, 2).flatMap((bt) => [0, 1, 2, 3, 4].map((k) => rowAt(bt.ids, k)));
    const order = s.epochOrder(); // the next epoch starts only when a row is asked for
    assert.equal(s.epoch, e);
    assert.deepEqual([...order].sort((x, y) => x - y), identity, `epoch ${e} is a permutation`);
    assert.deepEqual(got, order, `epoch ${e}: batches follow the epoch order`);
    orders.push(order);
  }
  assert.notDeepEqual(orders[0], identity);
  assert.notDeepEqual(orders[0], orders[1], 'a new order each epoch');
  const plain = new TokenDataSource(rows, { batchSize: 4, shuffle: false });
  assert.deepEqual(plain.epochOrder(), identity);
});

test('state()/restore(): a restored source continues with identical batches, across epoch boundaries', () => {
  const rows = numberedRows(7);
  const a = new TokenDataSource(rows, { batchSize: 3, seed: 5 });
  take(a, 4); // 12 rows: into the second epoch
  const saved = JSON.parse(JSON.stringify(a.state()));
  assert.equal(saved.epoch, 1);
  assert.equal(saved.cursor, 5);
  const rest = take(a, 6);
  const b2 = new TokenDataSource(rows, { batchSize: 3, seed: 99 }); // the seed comes from the state
  take(b2, 2);
  b2.restore(saved);
  assert.equal(b2.epoch, 1);
  assert.deepEqual(take(b2, 6), rest);
  // the state is small: no per-row order is stored
  assert.ok(JSON.stringify(saved).length < 300);

  const other = new TokenDataSource(numberedRows(8), { batchSize: 3, seed: 5 });
  assert.throws(() => other.restore(saved), /TokenDataSource\.restore: the position was saved for other data/);
  assert.throws(() => new TokenDataSource(rows, { batchSize: 3, seed: 5, shuffle: false }).restore(saved), /shuffle=true/);
  assert.throws(() => a.restore({ foo: 1 }), /not a saved TokenDataSource position/);
  assert.throws(() => a.restore({ ...saved, cursor: 8 }), /bad cursor 8 for 7 rows/);
  assert.throws(() => a.restore({ ...saved, epochRng: undefined }), /no RNG state/);
});

test('epochBatches: every row exactly once, in order; the last batch is filled with ignored rows', () => {
  const rows = numberedRows(7, 5);
  const live = memory.snapshot().cpu.liveTotal;
  const seenIds: number[] = [], seenTargets: number[] = [];
  const shape: number[][] = [];
  const src = new TokenDataSource(rows, { batchSize: 3, seed: 0 });
  take(src, 1);
  const before = JSON.stringify(src.state());
  let targets = 0;
  for (const bt of src.epochBatches()) {
    shape.push([bt.firstRow, bt.realRows]);
    const iv = bt.ids.data() as Int32Array, tv = bt.targets.data() as Int32Array;
    targets += countTargets(bt.targets);
    seenIds.push(...iv.subarray(0, bt.realRows * 5));
    seenTargets.push(...tv.subarray(0, bt.realRows * 5));
    assert.ok(iv.subarray(bt.realRows * 5).every((v) => v === PAD), 'filler inputs are PAD');
    assert.ok(tv.subarray(bt.realRows * 5).every((v) => v === I), 'filler targets are all ignored');
    bt.ids.dispose(); bt.targets.dispose();
  }
  assert.deepEqual(shape, [[0, 3], [3, 3], [6, 1]]);
  assert.deepEqual(seenIds, [...rows.ids]);
  assert.deepEqual(seenTargets, [...rows.targets]);
  assert.equal(targets, rows.targetTokens());
  assert.equal(targets, 14);
  assert.equal(JSON.stringify(src.state()), before, 'evaluation does not move the training position');
  assert.equal([...epochBatches(rows, 7)].map((bt) => { bt.ids.dispose(); bt.targets.dispose(); return bt.realRows; }).join(), '7');
  assert.equal(memory.snapshot().cpu.liveTotal, live, 'no tensor leaked');
});

test('training through TokenDataSource resumes from a checkpoint with identical losses', () => {
  const ds = sftDataset(Array.from({ length: 6 }, (_, i) => ({ prompt: `${i}+1=`, completion: `${i + 1}` })));
  const rows = prepareDataset(ds, tok, 12);
  assert.ok(rows.packed && rows.numRows < 6, 'packed rows (the default for prompt/completion data)');
  const make = () => {
    const model = LlamaModel.init(preset('tiny'), { seed: 3 });
    const trainer = new Trainer(model, new TokenDataSource(rows, { batchSize: 4, seed: 3 }), {
      schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 6 }, seed: 3,
    });
    return { model, trainer };
  };
  const dir = mkdtempSync(join(tmpdir(), 'tb-data-ckpt-'));
  try {
    const a = make();
    for (let i = 0; i < 2; i++) a.trainer.trainStep();
    saveCheckpoint(a.trainer, join(dir, 'c.safetensors'));
    const tail = [0, 1, 2].map(() => a.trainer.trainStep().loss);
    a.trainer.dispose(); a.model.dispose();
    const b2 = make();
    loadCheckpoint(b2.trainer, join(dir, 'c.safetensors'));
    assert.deepEqual([0, 1, 2].map(() => b2.trainer.trainStep().loss), tail);
    b2.trainer.dispose(); b2.model.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
