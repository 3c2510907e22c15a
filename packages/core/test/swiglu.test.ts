import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, native, swiglu, swigluBackward } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// Tolerances (max-abs error relative to the largest reference value). tfjs's
// cpu backend takes sigmoid with Math.exp in double; the kernel uses a float32
// polynomial exp (< 1 ulp on [-87, 0]) and a few float32 products, so the
// error is a few ulps. Measured worst over 40 random runs ([64, 1100], gates
// ~N(0, 3) and N(0, 10)): out 1.5e-7, dup 1.5e-7, dgate 5.0e-7. dgate is the
// loosest because tfjs forms s + g*s*(1-s) in float32 steps: against a double
// reference tfjs is off by 3.4e-7 and the kernel by 1.7e-7. Tolerance 2e-6.
const TOL = 2e-6;

type TF = Awaited<ReturnType<typeof tfjs>>;

/** silu(gate) * up from tfjs ops; gradients from tf.grads of sum(out * dOut). */
function reference(tf: TF, gv: Float32Array, uv: Float32Array, dov: Float32Array, shape: [number, number]) {
  return tf.tidy(() => {
    const g = tf.tensor2d(gv, shape), u = tf.tensor2d(uv, shape), dout = tf.tensor2d(dov, shape);
    const f = (gg: typeof g, uu: typeof u) => tf.mul(tf.mul(gg, tf.sigmoid(gg)), uu);
    const [dg, du] = tf.grads((gg, uu) => tf.sum(tf.mul(f(gg as typeof g, uu as typeof u), dout)))([g, u]);
    return { out: f(g, u).dataSync() as Float32Array, dgate: dg.dataSync() as Float32Array, dup: du.dataSync() as Float32Array };
  });
}

function check(tf: TF, name: string, gv: Float32Array, uv: Float32Array, dov: Float32Array, shape: [number, number], seed: number) {
  const ref = reference(tf, gv, uv, dov, shape);
  const gate = Tensor.from(gv, shape), up = Tensor.from(uv, shape), dout = Tensor.from(dov, shape);
  const out = swiglu(gate, up);
  assert.deepEqual(out.shape, shape);
  const { dgate, dup } = swigluBackward(dout, gate, up);
  for (const [what, t] of [['out', out], ['dgate', dgate], ['dup', dup]] as const) {
    const v = t.data() as Float32Array;
    assert.ok(v.every(Number.isFinite), `${name}: ${what} has a non-finite value`);
  }
  assertClose(`${name} out`, out.data() as Float32Array, ref.out, TOL, seed);
  // dgate = dout*up*(s + g*s*(1-s)) cancels near g = -1.28 (where d silu = 0);
  // measure it against the size of the two terms, not the (tiny) result
  const dg = dgate.data() as Float32Array;
  let err = 0, scale = 0;
  for (let i = 0; i < dg.length; i++) {
    const s = 1 / (1 + Math.exp(-gv[i]));
    err = Math.max(err, Math.abs(dg[i] - ref.dgate[i]));
    scale = Math.max(scale, Math.abs(ref.dgate[i]), Math.abs(dov[i] * uv[i]) * (s + Math.abs(gv[i]) * s * (1 - s)));
  }
  assert.ok(err <= TOL * scale, `${name} dgate: error ${(err / scale).toExponential(3)} of the term size > ${TOL} (seed ${seed})`);
  assertClose(`${name} dup`, dup.data() as Float32Array, ref.dup, TOL, seed);
  for (const t of [gate, up, dout, out, dgate, dup]) t.dispose();
}

test('swiglu forward and backward match tfjs', async () => {
  const tf = await tfjs();
  const r = rng();
  // N and F not multiples of 16; the last is large enough to run threaded
  for (const shape of [[1, 1], [3, 5], [37, 83], [64, 1100]] as [number, number][]) {
    const n = shape[0] * shape[1];
    check(tf, `swiglu ${shape}`, randn(n, r, 3), randn(n, r), randn(n, r), shape, r.seed);
  }
});

test('swiglu stays finite and accurate for large |gate| (+-50 and beyond)', async () => {
  const tf = await tfjs();
  const r = rng();
  const shape: [number, number] = [9, 50];
  const n = shape[0] * shape[1];
  const gv = new Float32Array(n);
  for (let i = 0; i < n; i++) gv[i] = (r.next() < 0.5 ? -1 : 1) * (40 + 20 * r.next());  // |g| in [40, 60]
  // (very large positive gates would dominate the max-relative error, so they are checked below)
  gv[0] = 50; gv[1] = -50; gv[2] = 0; gv[3] = -87.5; gv[4] = -1000; gv[5] = -1e30;
  check(tf, 'large |gate|', gv, randn(n, r), randn(n, r), shape, r.seed);
  // exact limits: silu(g) -> g for g >> 0 and -> 0 for g << 0; d silu -> 1 and 0
  const gate = Tensor.from([50, -50, 1000, -1000, 1e30, -1e30], [1, 6]), up = Tensor.from([1, 1, 1, 1, 1, 1], [1, 6]);
  const ones = Tensor.from([1, 1, 1, 1, 1, 1], [1, 6]);
  const out = swiglu(gate, up);
  const o = out.data() as Float32Array;
  assert.equal(o[0], 50);
  assert.ok(o[1] < 0 && o[1] > -1e-19, `silu(-50) = ${o[1]}`);
  assert.equal(o[2], 1000);
  assert.equal(Math.abs(o[3]), 0);
  assert.equal(o[4], Math.fround(1e30));
  assert.equal(Math.abs(o[5]), 0);
  const { dgate, dup } = swigluBackward(ones, gate, up);
  const dg = dgate.data() as Float32Array, du = dup.data() as Float32Array;
  assert.deepEqual(Array.from(dg), [1, dg[1], 1, dg[3], 1, dg[5]]);
  for (const i of [1, 3, 5]) assert.ok(Math.abs(dg[i]) < 1e-19, `dgate at gate ${gate.data()[i]}: ${dg[i]}`);
  assert.ok(du.every(Number.isFinite));
  for (const t of [gate, up, ones, out, dgate, dup]) t.dispose();
});

test('swiglu writes its results (no accumulation) and may write out into gate', () => {
  const r = rng();
  const shape: [number, number] = [13, 21], n = 13 * 21;
  const gv = randn(n, r, 2), uv = randn(n, r), dov = randn(n, r);
  const gate = Tensor.from(gv, shape), up = Tensor.from(uv, shape), dout = Tensor.from(dov, shape);
  const want = swiglu(gate, up);
  const dgate = Tensor.from(new Float32Array(n).fill(NaN), shape), dup = Tensor.from(new Float32Array(n).fill(7), shape);
  swigluBackward(dout, gate, up, { dgate, dup });
  const first = [Float32Array.from(dgate.data() as Float32Array), Float32Array.from(dup.data() as Float32Array)];
  swigluBackward(dout, gate, up, { dgate, dup });
  assert.deepEqual(dgate.data(), first[0]);
  assert.deepEqual(dup.data(), first[1]);
  assert.ok(first[0].every(Number.isFinite));
  const res = swiglu(gate, up, { out: gate });
  assert.equal(res, gate);
  assert.deepEqual(gate.data(), want.data());
  for (const t of [gate, up, dout, want, dgate, dup]) t.dispose();
});

test('swiglu rejects bad ranks, mismatched shapes and wrong dtypes with clear errors', () => {
  const g = Tensor.zeros([4, 6]), u = Tensor.zeros([4, 6]);
  assert.throws(() => swiglu(Tensor.zeros([24]), u), /swiglu: 'gate' must have rank 2, got shape \[24\]/);
  assert.throws(() => swiglu(g, Tensor.zeros([4, 5])), /swiglu: 'up' has shape \[4, 5\], expected \[4, 6\]/);
  assert.throws(() => swiglu(g, Tensor.zeros([4, 6], { dtype: 'bf16' })), /swiglu: 'up' has dtype bf16, expected f32/);
  assert.throws(() => swiglu(g, u, { out: Tensor.zeros([6, 4]) }), /swiglu: 'out' has shape \[6, 4\], expected \[4, 6\]/);
  assert.throws(() => swigluBackward(Tensor.zeros([4, 7]), g, u), /swigluBackward: 'dout' has shape \[4, 7\], expected \[4, 6\]/);
  assert.throws(() => swigluBackward(g, g, Tensor.zeros([2, 2, 6])), /swigluBackward: 'up' must have rank 2/);
  assert.throws(() => swigluBackward(g, g, u, { dgate: u, dup: u }), /swigluBackward: 'dgate' and 'dup' must be different tensors/);
  // native re-checks
  const fwd = native.swiglu_forward as (...a: unknown[]) => void;
  assert.throws(() => fwd(g.handle, u.handle, Tensor.zeros([3]).handle, 24), /swiglu_forward: tensor 'out' has 3 elements, the op needs at least 24/);
  assert.throws(() => fwd(g.handle, Tensor.zeros([24], { dtype: 'i32' }).handle, g.handle, 24), /swiglu_forward: tensor 'up' has dtype i32, expected f32/);
  for (const t of [g, u]) t.dispose();
});
