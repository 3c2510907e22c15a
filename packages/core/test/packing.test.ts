// Padding-free supervised batches: packExamples' layout (first fit, segments,
// positions restarting per example), dynamic padding, packed batches through
// TokenDataSource (seeded, resumable), and the contract that makes packing
// safe: a packed batch gives the same loss and the same gradient of every
// parameter as the same examples padded one per row.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ByteTokenizer, LlamaModel, type LlamaConfig, Tensor, TokenDataSource, TokenRows, type Batch, disposeBatch, dynamicLength,
  epochBatches, evaluateLoss, memory, packExamples, padExamples, prepareDataset, preset, sftDataset, type SftRow, type Tokenizer,
} from '../src/index.js';
import { relErr, rng } from './helpers.js';

const tok = new ByteTokenizer();
const BOS = 256, EOS = 257, PAD = 258, I = -100;

const rowsOf = (r: TokenRows) => Array.from({ length: r.numRows }, (_, i) => {
  const row = r.row(i);
  return { ids: [...row.ids], targets: [...row.targets], segments: [...row.segments!], positions: [...row.positions!] };
});

test('packExamples: first fit, segments per example, positions restart, the tail is padding with its own segment', () => {
  // lengths (n - 1 positions each, n = BOS + prompt + completion + EOS): 4, 5, 2, 3
  const ex: SftRow[] = [
    { prompt: 'ab', completion: 'c' },   // BOS a b c EOS       -> 4
    { prompt: 'xyz', completion: 'w' },  // BOS x y z w EOS     -> 5
    { prompt: '', completion: 'q' },     // BOS q EOS           -> 2
    { prompt: 'k', completion: 'mn' },   // BOS k m n EOS       -> 4
  ];
  const r = packExamples(tok, ex, 8, 'toy');
  assert.deepEqual(rowsOf(r), [
    // row 0: example 0 (4) + example 2 (2) fit in 8; 2 positions of padding
    { ids: [BOS, 97, 98, 99, BOS, 113, PAD, PAD], targets: [I, I, 99, EOS, 113, EOS, I, I],
      segments: [0, 0, 0, 0, 1, 1, 2, 2], positions: [0, 1, 2, 3, 0, 1, 0, 1] },
    // row 1: example 1 (5) opens it; example 3 (4) does not fit in 0 (2 left) nor 1 (3 left): row 2
    { ids: [BOS, 120, 121, 122, 119, PAD, PAD, PAD], targets: [I, I, I, 119, EOS, I, I, I],
      segments: [0, 0, 0, 0, 0, 1, 1, 1], positions: [0, 1, 2, 3, 4, 0, 1, 2] },
    { ids: [BOS, 107, 109, 110, PAD, PAD, PAD, PAD], targets: [I, 109, 110, EOS, I, I, I, I],
      segments: [0, 0, 0, 0, 1, 1, 1, 1], positions: [0, 1, 2, 3, 0, 1, 2, 3] },
  ]);
  assert.equal(r.stats.mode, 'pack-examples');
  assert.equal(r.stats.examples, 4);
  assert.equal(r.stats.rows, 3);
  assert.equal(r.stats.inputTokens, 15);
  assert.equal(r.stats.paddingTokens, 9);
  assert.equal(r.stats.targetTokens, r.targetTokens());
  assert.deepEqual([...r.lengths!], [6, 5, 4]);
  assert.ok(r.packed);
  // the same examples padded have the same targets, one row each
  const padded = padExamples(tok, ex, 8);
  assert.equal(padded.targetTokens(), r.targetTokens());
  assert.equal(padded.stats.paddingTokens, 4 * 8 - padded.stats.inputTokens);
  assert.ok(!padded.packed);
});

test('packExamples: truncation as padExamples; examples without targets left out; seeded placement; errors', () => {
  // T = 5: the sequence budget is 6 tokens (BOS + 2 prompt + x y EOS), packed as 5 positions
  const long = packExamples(tok, [{ prompt: 'abcdef', completion: 'xy' }], 5);
  const pad = padExamples(tok, [{ prompt: 'abcdef', completion: 'xy' }], 5);
  assert.deepEqual([...long.ids], [...pad.ids]);
  assert.deepEqual([...long.targets], [...pad.targets]);
  assert.equal(long.stats.droppedPromptTokens, pad.stats.droppedPromptTokens);
  assert.equal(long.stats.paddingTokens, 0);
  const noEos: Tokenizer = { vocabSize: 259, bos: BOS, eos: null, pad: PAD, name: 'no-eos', encode: (t) => tok.encode(t), decode: () => '' };
  // no BOS either: nothing precedes the first token, so it is never a target (as in padding)
  const bare: Tokenizer = { vocabSize: 256, bos: null, eos: null, pad: null, name: 'bare', encode: (t) => tok.encode(t), decode: () => '' };
  const bareEx = [{ prompt: 'ab', completion: 'c' }, { prompt: '', completion: 'xy' }, { prompt: 'a', completion: '' }];
  assert.deepEqual(rowsOf(packExamples(bare, bareEx, 8)), [
    { ids: [97, 98, 120, 0, 0, 0, 0, 0], targets: [I, 99, 121, I, I, I, I, I], segments: [0, 0, 1, 2, 2, 2, 2, 2], positions: [0, 1, 0, 0, 1, 2, 3, 4] },
  ]);
  assert.equal(packExamples(bare, bareEx, 8).targetTokens(), padExamples(bare, bareEx, 8).targetTokens());
  const skipped = packExamples(noEos, [{ prompt: 'a', completion: '' }, { prompt: 'b', completion: 'c' }], 8);
  assert.equal(skipped.stats.rowsWithoutTargets, 1, 'the example with no target is counted and left out');
  assert.equal(skipped.stats.inputTokens, 2);
  const many = Array.from({ length: 40 }, (_, i) => ({ prompt: 'p'.repeat(i % 7), completion: 'c'.repeat(1 + (i % 3)) }));
  const a = packExamples(tok, many, 32, 'm', { seed: 1 }), a2 = packExamples(tok, many, 32, 'm', { seed: 1 });
  const c = packExamples(tok, many, 32, 'm', { seed: 2 });
  assert.equal(a.fingerprint(), a2.fingerprint());
  assert.notEqual(a.fingerprint(), c.fingerprint());
  assert.equal(a.targetTokens(), padExamples(tok, many, 32).targetTokens(), 'every example is placed');
  assert.ok(a.numRows < many.length / 3, `40 short examples in ${a.numRows} rows of 32`);
  assert.throws(() => packExamples(tok, [], 8, 'none'), /packExamples\(none\): no examples/);
  assert.throws(() => packExamples(tok, many, 0), /seqLen must be a positive integer/);
  assert.throws(() => packExamples(tok, many, 8, 'x', { seed: 0.5 }), /seed must be an integer/);
  assert.throws(() => packExamples(noEos, [{ prompt: 'a', completion: '' }], 8, 'empty'), /none of the 1 example\(s\) has a target token/);
});

test('prepareDataset: prompt/completion data packed by default, padded on request; fingerprints cover segments and positions', () => {
  const ds = sftDataset([{ prompt: 'q', completion: 'a' }, { prompt: 'rr', completion: 'b' }]);
  assert.equal(prepareDataset(ds, tok, 16).stats.mode, 'pack-examples');
  assert.equal(prepareDataset(ds, tok, 16, { packing: 'pad' }).stats.mode, 'pad');
  assert.throws(() => prepareDataset(ds, tok, 16, { packing: 'zip' as 'pack' }), /packing must be 'pack' or 'pad', got zip/);
  const r = prepareDataset(ds, tok, 16);
  const same = new TokenRows(16, r.ids, r.targets, r.padId, r.stats, { segments: r.segments, positions: r.positions });
  const seg = Int32Array.from(r.segments!, (s, i) => (i >= 15 ? s + 1 : s));
  const other = new TokenRows(16, r.ids, r.targets, r.padId, r.stats, { segments: seg, positions: r.positions });
  assert.equal(same.fingerprint(), r.fingerprint());
  assert.notEqual(other.fingerprint(), r.fingerprint());
  assert.throws(() => new TokenRows(16, r.ids, r.targets, r.padId, r.stats, { segments: r.segments }), /need both segments and positions/);
  assert.throws(() => new TokenRows(16, r.ids, r.targets, r.padId, r.stats, { lengths: Int32Array.of(17) }), /row length 17 is outside \[0, 16\]/);
});

test('dynamic padding: evaluation batches are cut to the longest real row rounded up to 8; the loss is unchanged', () => {
  assert.deepEqual([1, 8, 9, 30, 64, 65].map((n) => dynamicLength(n, 40)), [8, 8, 16, 32, 40, 40]);
  const ex = Array.from({ length: 5 }, (_, i) => ({ prompt: 'x'.repeat(3 * i), completion: 'yz' }));
  const rows = padExamples(tok, ex, 48);  // real lengths 4, 7, 10, 13, 16
  const shapes = [...epochBatches(rows, 2)].map((b) => { const s = b.ids.shape; disposeBatch(b); return s; });
  assert.deepEqual(shapes, [[2, 8], [2, 16], [2, 16]]);
  const full = [...epochBatches(rows, 2, { dynamicPadding: false })].map((b) => { const s = b.ids.shape; disposeBatch(b); return s; });
  assert.deepEqual(full, [[2, 48], [2, 48], [2, 48]]);
  const model = LlamaModel.init(preset('tiny'), { seed: 5 });
  const cut = evaluateLoss(model, epochBatches(rows, 2)), whole = evaluateLoss(model, epochBatches(rows, 2, { dynamicPadding: false }));
  assert.equal(cut.targetTokens, whole.targetTokens);
  assert.ok(Math.abs(cut.loss - whole.loss) <= 1e-6 * whole.loss, `loss ${cut.loss} vs ${whole.loss}`);
  const src = new TokenDataSource(rows, { batchSize: 2, shuffle: false, dynamicPadding: true });
  const b = src.next();
  assert.deepEqual(b.ids.shape, [2, 8]);
  assert.equal(b.realTokens, 4 + 7);
  disposeBatch(b);
  model.dispose();
});

test('TokenDataSource: packed batches carry segments, positions and real tokens; state/restore continues identically', () => {
  const ex = Array.from({ length: 30 }, (_, i) => ({ prompt: `${i}*${i}=`, completion: `${i * i}` }));
  const rows = packExamples(tok, ex, 24, 'squares');
  const live = memory.snapshot().cpu.liveTotal;
  const a = new TokenDataSource(rows, { batchSize: 2, seed: 7 });
  const snap = (bt: Batch) => {
    const s = [bt.ids, bt.targets, bt.segments!, bt.positions!].map((t) => [...(t.data() as Int32Array)]);
    disposeBatch(bt);
    return s;
  };
  const first = a.next();
  assert.deepEqual(first.segments!.shape, [2, 24]);
  assert.deepEqual(first.positions!.shape, [2, 24]);
  const order = a.epochOrder();
  const expectReal = rows.lengths![order[0]] + rows.lengths![order[1]];
  assert.equal(first.realTokens, expectReal);
  assert.deepEqual([...(first.segments!.data() as Int32Array)].slice(0, 24), [...rows.row(order[0]).segments!]);
  assert.deepEqual([...(first.positions!.data() as Int32Array)].slice(24), [...rows.row(order[1]).positions!]);
  disposeBatch(first);
  for (let i = 0; i < 2; i++) disposeBatch(a.next());
  const saved = a.state();
  const tail = Array.from({ length: 6 }, () => snap(a.next()));  // crosses an epoch boundary
  const b = new TokenDataSource(rows, { batchSize: 2, seed: 7 });
  b.restore(JSON.parse(JSON.stringify(saved)));
  assert.deepEqual(Array.from({ length: 6 }, () => snap(b.next())), tail);
  const padded = padExamples(tok, ex, 24);
  assert.throws(() => new TokenDataSource(padded, { batchSize: 2, seed: 7 }).restore(saved), /saved for other data/);
  assert.equal(memory.snapshot().cpu.liveTotal, live, 'no tensor leaked');
});

// ---------------------------------------------------------------------------
// The contract: packed == padded, loss and every gradient.
//
// Both batches hold the same examples, so the loss (a mean over the batch's
// target tokens) has the same denominator and each example's terms are the
// same maths: per-example causal attention inside its segment, RoPE from
// position 0. Only float32 summation order differs (other tile boundaries in
// attention, other row blocks in the GEMMs): the worst measured gradient
// error was 2.7e-7 relative (tiny presets, a few seeds); 1e-5 is the contract.
const PACK_TOL = 1e-5;

function gradientsOf(model: LlamaModel, batch: Batch): { loss: number; count: number; grads: Map<string, Float32Array> } {
  model.zeroGrad();
  const r = model.forward(batch, { training: true });
  model.backward(1 / r.count);
  const grads = new Map<string, Float32Array>();
  for (const p of model.parameters()) if (p.grad) grads.set(p.name, p.grad.toFloat32());
  return { loss: r.lossSum / r.count, count: r.count, grads };
}

function wholeBatch(rows: TokenRows): Batch {
  const src = new TokenDataSource(rows, { batchSize: rows.numRows, shuffle: false });
  return src.next();
}

function comparePackedWithPadded(cfg: LlamaConfig, examples: SftRow[], T: number, checkpointing: 'off' | 'block' = 'off'): void {
  const r = rng();
  const model = LlamaModel.init(cfg, { seed: r.seed, std: 0.1 });
  model.checkpointing = checkpointing;
  const packed = packExamples(tok, examples, T, 'ragged', { seed: r.seed });
  const padded = padExamples(tok, examples, T, 'ragged');
  assert.ok(packed.numRows < padded.numRows, 'several examples share a row');
  const pb = wholeBatch(packed), qb = wholeBatch(padded);
  const p = gradientsOf(model, pb), q = gradientsOf(model, qb);
  assert.equal(p.count, q.count, 'same target tokens');
  const lossErr = Math.abs(p.loss - q.loss) / Math.abs(q.loss);
  assert.ok(lossErr <= PACK_TOL, `loss packed ${p.loss} vs padded ${q.loss}: ${lossErr.toExponential(2)} (seed ${r.seed})`);
  assert.equal(p.grads.size, model.parameters().length);
  for (const [name, g] of q.grads) {
    const err = relErr(p.grads.get(name)!, g);
    assert.ok(err <= PACK_TOL, `${checkpointing}: gradient of ${name}: packed vs padded relative error ${err.toExponential(2)} (seed ${r.seed})`);
  }
  disposeBatch(pb); disposeBatch(qb); model.dispose();
}

// ragged: lengths 2 .. ~70 positions, one truncated (prompt longer than T),
// one-token completions; several cross the 64-position attention tile
const RAGGED: SftRow[] = [
  { prompt: '', completion: 'a' },
  { prompt: 'the quick brown fox ', completion: 'jumps' },
  { prompt: 'x'.repeat(90), completion: 'over the lazy dog' },
  { prompt: 'q', completion: 'r' },
  { prompt: 'lorem ipsum dolor sit amet, consectetur ', completion: 'adipiscing elit' },
  { prompt: '2+2=', completion: '4' },
  { prompt: 'abc', completion: 'defghijklmnopqrstuvwxyz0123456789' },
  { prompt: '', completion: 'z' },
  { prompt: 'spam? ', completion: ' ham' },
];

test('packed batch: loss and every parameter gradient equal the same examples padded one per row', () => {
  comparePackedWithPadded(preset('tiny'), RAGGED, 80);
});

test('packed batch equals padded with activation checkpointing (the replay uses segments and positions), untied head, MHA', () => {
  const cfg: LlamaConfig = { ...preset('tiny'), numLayers: 3, numKvHeads: 4, tieWordEmbeddings: false };
  comparePackedWithPadded(cfg, RAGGED, 80, 'block');
});

test('bad packed batches are refused: positions out of range, wrong shape, decreasing segments', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 6 });
  const ids = Tensor.zeros([1, 4], { dtype: 'i32' }), targets = Tensor.zeros([1, 4], { dtype: 'i32' });
  const i32 = (a: number[], shape: number[]) => Tensor.from(Int32Array.from(a), shape, { dtype: 'i32' });
  assert.throws(() => model.forward({ ids, targets, positions: i32([0, 1, 2, 256], [1, 4]) }),
    /batch position 256 \(row 0, token 3\) is outside \[0, max_position_embeddings = 256\)/);
  assert.throws(() => model.forward({ ids, targets, positions: i32([0, 1, 2, 3], [4]) }), /batch positions must be i32 \[1, 4\] like ids, got i32 \[4\]/);
  assert.throws(() => model.forward({ ids, targets, segments: i32([0, 1, 1, 0], [1, 4]) }), /forward: 'segments' must be non-decreasing/);
  assert.throws(() => model.forward({ ids, targets, segments: Tensor.zeros([1, 4]) }), /forward: 'segments' has dtype f32, expected i32/);
  ids.dispose(); targets.dispose(); model.dispose();
});
