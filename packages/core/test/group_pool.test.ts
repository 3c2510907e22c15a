import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, groupPoolBackward, groupPoolForward } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// The pool is a sum of L float32 values times a constant, tfjs forms the same
// mean in float32; differences are a few ulps. Tolerance relative to the largest value.
const TOL = 1e-6;

test('groupPoolForward / groupPoolBackward match tfjs (reshape, mean, scale; its gradient)', async () => {
  const tf = await tfjs();
  const r = rng();
  for (const [N, inF, L] of [[7, 48, 8], [33, 64, 1], [5, 30, 30], [0, 16, 4]] as const) {
    const scale = inF / L;
    const xv = randn(N * inF, r), dpv = randn(N * (inF / L), r), accv = randn(N * inF, r);
    const ref = tf.tidy(() => {
      const x = tf.tensor2d(xv, [N, inF]), dp = tf.tensor2d(dpv, [N, inF / L]);
      const f = (xx: typeof x) => tf.mean(tf.reshape(xx, [N, inF / L, L]), 2).mul(scale);
      const [dx] = tf.grads((xx) => tf.sum(tf.mul(f(xx as typeof x), dp)))([x]);
      return { p: f(x).dataSync() as Float32Array, dx: dx.dataSync() as Float32Array };
    });
    const x = Tensor.from(xv, [N, inF]), dp = Tensor.from(dpv, [N, inF / L]);
    const p = groupPoolForward(x, L, { scale });
    assert.deepEqual(p.shape, [N, inF / L]);
    assertClose(`pool [${N}, ${inF}] L=${L}`, p.data() as Float32Array, ref.p, TOL, r.seed);
    const dx = groupPoolBackward(dp, L, { scale });
    assertClose(`pool backward [${N}, ${inF}] L=${L}`, dx.data() as Float32Array, ref.dx, TOL, r.seed);
    // accumulate mode adds onto what is there
    const acc = Tensor.from(accv, [N, inF]);
    groupPoolBackward(dp, L, { scale, dxInto: acc });
    assertClose(`pool backward accumulate L=${L}`, acc.data() as Float32Array, ref.dx.map((v, i) => v + accv[i]), TOL, r.seed);
    for (const t of [x, dp, p, dx, acc]) t.dispose();
  }
});

test('groupPoolForward: a group size that does not divide the input, or is not a positive integer, is an error', () => {
  const x = Tensor.zeros([2, 12]);
  assert.throws(() => groupPoolForward(x, 5), /12 input features are not a whole number of groups of 5/);
  assert.throws(() => groupPoolForward(x, 0), /group size must be a positive integer, got 0/);
  assert.throws(() => groupPoolForward(x, 2, { out: Tensor.zeros([2, 5]) }), /out/);
  assert.throws(() => groupPoolBackward(Tensor.zeros([2, 3]), 4, { dxInto: Tensor.zeros([2, 13]) }), /dxInto/);
  x.dispose();
});
