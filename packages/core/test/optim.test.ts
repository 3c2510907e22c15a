import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, adamwStep, clipGradNorm } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

test('AdamW without weight decay follows tfjs Adam step for step', async () => {
  const tf = await tfjs();
  const r = rng();
  const n = 1000, lr = 0.01;
  const p0 = randn(n, r);
  const p = Tensor.from(p0, [n], { category: 'trainable' });
  const m = Tensor.zeros([n], { category: 'optimizer' }), v = Tensor.zeros([n], { category: 'optimizer' });
  const g = Tensor.zeros([n], { category: 'grad' });
  const ref = tf.variable(tf.tensor1d(p0));
  const opt = tf.train.adam(lr, 0.9, 0.999, 1e-8);
  for (let step = 1; step <= 5; step++) {
    const gv = randn(n, r);
    (g.data() as Float32Array).set(gv);
    adamwStep(p, g, m, v, { lr, weightDecay: 0, step });
    opt.applyGradients([{ name: ref.name, tensor: tf.tensor1d(gv) }]);
  }
  assertClose('adam params after 5 steps', p.data() as Float32Array, ref.dataSync(), 1e-5, r.seed);
  for (const t of [p, m, v, g]) t.dispose();
});

test('AdamW decoupled weight decay matches the torch.optim.AdamW formula', () => {
  const r = rng();
  const n = 257, lr = 3e-3, wd = 0.1, b1 = 0.8, b2 = 0.95, eps = 1e-6;
  const p0 = randn(n, r);
  const p = Tensor.from(p0, [n]), m = Tensor.zeros([n]), v = Tensor.zeros([n]), g = Tensor.zeros([n]);
  const P = Float64Array.from(p0), M = new Float64Array(n), V = new Float64Array(n);
  for (let t = 1; t <= 4; t++) {
    const gv = randn(n, r);
    (g.data() as Float32Array).set(gv);
    adamwStep(p, g, m, v, { lr, beta1: b1, beta2: b2, eps, weightDecay: wd, step: t });
    for (let i = 0; i < n; i++) {
      P[i] *= 1 - lr * wd;
      M[i] = b1 * M[i] + (1 - b1) * gv[i];
      V[i] = b2 * V[i] + (1 - b2) * gv[i] * gv[i];
      P[i] -= (lr / (1 - b1 ** t)) * M[i] / (Math.sqrt(V[i]) / Math.sqrt(1 - b2 ** t) + eps);
    }
  }
  assertClose('adamw params', p.data() as Float32Array, P, 1e-5, r.seed);
  assertClose('adamw m', m.data() as Float32Array, M, 1e-5, r.seed);
  assertClose('adamw v', v.data() as Float32Array, V, 1e-5, r.seed);
  for (const t of [p, m, v, g]) t.dispose();
});

test('clipGradNorm: global norm over several tensors, scales only above the limit', () => {
  const r = rng();
  const a = randn(1000, r), b = randn(33333, r);
  const norm = Math.sqrt([...a, ...b].reduce((s, x) => s + x * x, 0));
  const ta = Tensor.from(a, [1000]), tb = Tensor.from(b, [33333]);
  const got = clipGradNorm([ta, tb], norm * 2);
  assert.ok(Math.abs(got - norm) / norm < 1e-9, `norm ${got} vs ${norm}`);
  assertClose('untouched below the limit', ta.data() as Float32Array, a, 0);
  clipGradNorm([ta, tb], 1.0);
  const after = Math.sqrt([...ta.data() as Float32Array, ...tb.data() as Float32Array].reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(after - 1.0) < 1e-4, `clipped norm ${after}`);
  const coef = 1.0 / (norm + 1e-6);
  assertClose('scaled uniformly', ta.data() as Float32Array, a.map((x) => x * coef), 1e-6, r.seed);
  ta.dispose(); tb.dispose();
});

test('clipGradNorm reports a non-finite norm and can refuse it', () => {
  const g = Tensor.from([1, NaN, 2], [3]);
  assert.ok(Number.isNaN(clipGradNorm([g], 1)));
  assert.equal((g.data() as Float32Array)[0], 1, 'grads left alone');
  assert.throws(() => clipGradNorm([g], 1, { errorIfNonfinite: true }), /total gradient norm is NaN/);
  assert.throws(() => clipGradNorm([g], 0), /maxNorm must be > 0/);
  g.dispose();
});

test('adamwStep rejects mismatched shapes and bad hyperparameters', () => {
  const p = Tensor.zeros([4]), g = Tensor.zeros([5]), m = Tensor.zeros([4]), v = Tensor.zeros([4]);
  assert.throws(() => adamwStep(p, g, m, v, { lr: 1e-3, step: 1 }), /'grad' has shape \[5\], expected \[4\]/);
  assert.throws(() => adamwStep(p, m, m, v, { lr: 1e-3, step: 0 }), /step must be an integer >= 1/);
  assert.throws(() => adamwStep(p, m, m, v, { lr: NaN, step: 1 }), /'lr' must be a finite number/);
  assert.throws(() => adamwStep(p, m, m, v, { lr: 1e-3, beta2: 1, step: 1 }), /beta2 must be in \[0, 1\)/);
  for (const t of [p, g, m, v]) t.dispose();
});
