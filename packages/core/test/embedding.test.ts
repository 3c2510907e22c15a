import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, bf16ToF32, embeddingBackward, embeddingForward, f32ToBf16 } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// A lookup is a copy, so forward is compared exactly. The backward sums each
// id's rows in token order in f32, exactly as a Float32Array loop does; tfjs's
// gather gradient may sum in another order, so it is compared to 1e-6.

function randomIds(r: ReturnType<typeof rng>, N: number, V: number): Int32Array {
  const ids = new Int32Array(N);
  for (let i = 0; i < N; i++) ids[i] = Math.floor(r.next() * V);
  ids[0] = 0; ids[N - 1] = V - 1;  // both ends of the table
  return ids;
}

test('embedding forward equals tf.gather (f32 weight, repeated ids, odd C)', async () => {
  const tf = await tfjs();
  const r = rng();
  const [N, V, C] = [200, 50, 37];
  const wv = randn(V * C, r), ids = randomIds(r, N, V);
  const w = Tensor.from(wv, [V, C], { category: 'trainable' }), idT = Tensor.from(ids, [N], { dtype: 'i32' });
  const out = embeddingForward(idT, w);
  assert.deepEqual(out.shape, [N, C]);
  assert.equal(out.category, 'activation');
  const want = tf.tidy(() => tf.gather(tf.tensor2d(wv, [V, C]), tf.tensor1d(ids, 'int32')).dataSync());
  assert.deepEqual(out.data(), want);
  for (const x of [w, idT, out]) x.dispose();
});

test('embedding forward with a bf16 weight equals gather of the rounded weight', async () => {
  const tf = await tfjs();
  const r = rng();
  const [N, V, C] = [64, 300, 128];
  const wv = randn(V * C, r, 0.1), ids = randomIds(r, N, V);
  const w = Tensor.from(wv, [V, C], { dtype: 'bf16', category: 'frozen' }), idT = Tensor.from(ids, [N], { dtype: 'i32' });
  const out = embeddingForward(idT, w);
  const rounded = wv.map((v) => bf16ToF32(f32ToBf16(v)));
  const want = tf.tidy(() => tf.gather(tf.tensor2d(rounded, [V, C]), tf.tensor1d(ids, 'int32')).dataSync());
  assert.deepEqual(out.data(), want);
  // writing into a given out tensor
  const given = Tensor.from(randn(N * C, r), [N, C]);
  assert.equal(embeddingForward(idT, w, { out: given }), given);
  assert.deepEqual(given.data(), want);
  for (const x of [w, idT, out, given]) x.dispose();
});

test('embedding backward equals the tfjs gather gradient, accumulates (+=) and sums repeated ids', async () => {
  const tf = await tfjs();
  const r = rng();
  const [N, V, C] = [300, 40, 45];  // ~7 repeats per id
  const wv = randn(V * C, r), dv = randn(N * C, r), ids = randomIds(r, N, V);
  const want = tf.tidy(() => {
    const idT = tf.tensor1d(ids, 'int32'), d = tf.tensor2d(dv, [N, C]);
    const g = tf.grad((w) => tf.sum(tf.mul(tf.gather(w, idT), d)))(tf.tensor2d(wv, [V, C]));
    return g.dataSync() as Float32Array;
  });
  const dout = Tensor.from(dv, [N, C]), idT = Tensor.from(ids, [N], { dtype: 'i32' });
  const dw = Tensor.zeros([V, C], { category: 'grad' });
  assert.equal(embeddingBackward(dout, idT, dw), dw);
  assertClose('dweight', dw.data() as Float32Array, want, 1e-6, r.seed);
  embeddingBackward(dout, idT, dw);
  assertClose('dweight twice = 2x', dw.data() as Float32Array, want.map((v) => 2 * v), 1e-6, r.seed);
  // accumulates onto whatever is there
  const init = randn(V * C, r);
  const dw2 = Tensor.from(init, [V, C], { category: 'grad' });
  embeddingBackward(dout, idT, dw2);
  assertClose('dweight += onto init', dw2.data() as Float32Array, want.map((v, i) => v + init[i]), 1e-6, r.seed);
  for (const x of [dout, idT, dw, dw2]) x.dispose();
});

test('embedding backward on a threaded size matches a sequential f32 scatter-add exactly', () => {
  const r = rng();
  const [N, V, C] = [4096, 1000, 520];  // C not a multiple of the 16-float column block
  const dv = randn(N * C, r), ids = new Int32Array(N);
  for (let i = 0; i < N; i++) ids[i] = r.next() < 0.3 ? 7 : Math.floor(r.next() * V);  // one very frequent id
  const want = new Float32Array(V * C);
  for (let i = 0; i < N; i++) {
    const o = ids[i] * C;
    for (let k = 0; k < C; k++) want[o + k] += dv[i * C + k];
  }
  const dout = Tensor.from(dv, [N, C]), idT = Tensor.from(ids, [N], { dtype: 'i32' });
  const dw = Tensor.zeros([V, C], { category: 'grad' });
  embeddingBackward(dout, idT, dw);
  assert.deepEqual(dw.data(), want, `bitwise equal to the token-order f32 sum (seed ${r.seed})`);
  for (const x of [dout, idT, dw]) x.dispose();
});

test('embedding rejects bad ids and shapes with clear errors', () => {
  const [V, C] = [10, 4];
  const w = Tensor.zeros([V, C]);
  const badHi = Tensor.from([1, 2, 10, 3], [4], { dtype: 'i32' });
  const badLo = Tensor.from([1, -3, 2, 3], [4], { dtype: 'i32' });
  assert.throws(() => embeddingForward(badHi, w), /id 10 at position 2 is outside \[0, 10\)/);
  assert.throws(() => embeddingForward(badLo, w), /id -3 at position 1 is outside \[0, 10\)/);
  const dout = Tensor.zeros([4, C]), dw = Tensor.zeros([V, C], { category: 'grad' });
  assert.throws(() => embeddingBackward(dout, badHi, dw), /embedding_backward: id 10 at position 2/);
  assert.ok((dw.data() as Float32Array).every((v) => v === 0), 'nothing written before the check');
  const ids = Tensor.from([0, 1, 2, 3], [4], { dtype: 'i32' });
  assert.throws(() => embeddingForward(Tensor.zeros([4]), w), /'ids' has dtype f32, expected i32/);
  assert.throws(() => embeddingForward(ids, Tensor.zeros([V, C], { dtype: 'i32' })), /'weight' has dtype i32, expected f32 or bf16/);
  assert.throws(() => embeddingForward(ids, Tensor.zeros([V * C])), /'weight' must have rank 2/);
  assert.throws(() => embeddingForward(ids, w, { out: Tensor.zeros([4, C + 1]) }), /'out' has shape \[4, 5\], expected \[4, 4\]/);
  assert.throws(() => embeddingBackward(Tensor.zeros([5, C]), ids, dw), /'ids' has 4 entries but dout \[5, 4\] has 5 rows/);
  assert.throws(() => embeddingBackward(dout, ids, Tensor.zeros([V, C + 1])), /'dweight' has shape \[10, 5\], expected \[10, 4\]/);
  assert.throws(() => embeddingBackward(dout, ids, Tensor.zeros([V, C], { dtype: 'bf16' })), /'dweight' has dtype bf16, expected f32/);
  assert.throws(() => embeddingBackward(Tensor.zeros([4, C], { dtype: 'bf16' }), ids, dw), /'dout' has dtype bf16, expected f32/);
  for (const x of [w, badHi, badLo, dout, dw, ids]) x.dispose();
});
