import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Tensor, bf16ToF32, crossEntropyBackward, crossEntropyForward, f32ToBf16, memory,
} from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// Tolerances (relative: max |got - want| / max |want|). Both sides compute the
// logits in f32 but sum the C products in different orders, and the kernel's
// vectorised exp is ~1 ulp, so values differ by a few f32 ulps of the logits.
// Measured over many seeds: losses/lse <= 2e-7, gradients <= 1e-6, except with
// logits of std ~20 where softmax inherits |logit| * eps and the gradients
// reach ~3e-6. The bounds below keep ~10x headroom over those worst cases and
// are still far below what any real mistake produces (a wrong softmax row,
// scale or target shows up at 1e-2 or worse).
const TOL_LOSS = 2e-6;
const TOL_GRAD = 3e-5;

interface Case {
  N: number; C: number; V: number;
  h: Float32Array; w: Float32Array; targets: Int32Array;
  ignoreIndex: number;
}

function makeCase(r: ReturnType<typeof rng>, N: number, C: number, V: number, ignoredFrac: number,
                  ignoreIndex = -100, hScale = 1): Case {
  const h = randn(N * C, r, hScale), w = randn(V * C, r, 1 / Math.sqrt(C));
  const targets = new Int32Array(N);
  for (let i = 0; i < N; i++) targets[i] = r.next() < ignoredFrac ? ignoreIndex : Math.floor(r.next() * V);
  return { N, C, V, h, w, targets, ignoreIndex };
}

interface Ref { losses: Float32Array; lse: Float32Array; sum: number; count: number; dh: Float32Array; dw: Float32Array }

/** tfjs: logits = h w^T, log-softmax, pick targets, masked mean; grads of the mean. */
async function reference(c: Case, wValues: Float32Array = c.w): Promise<Ref> {
  const tf = await tfjs();
  return tf.tidy(() => {
    const mask = new Float32Array(c.N), tcl = new Int32Array(c.N);
    let count = 0;
    for (let i = 0; i < c.N; i++) {
      const ign = c.targets[i] === c.ignoreIndex;
      mask[i] = ign ? 0 : 1;
      tcl[i] = ign ? 0 : c.targets[i];
      if (!ign) count++;
    }
    const oneHot = tf.oneHot(tf.tensor1d(tcl, 'int32'), c.V);
    const maskT = tf.tensor1d(mask);
    const h = tf.tensor2d(c.h, [c.N, c.C]), w = tf.tensor2d(wValues, [c.V, c.C]);
    const perToken = (hh: typeof h, ww: typeof w) => {
      const logits = tf.matMul(hh, ww, false, true);
      return tf.neg(tf.sum(tf.mul(tf.logSoftmax(logits), oneHot), 1)).mul(maskT) as typeof maskT;
    };
    const losses = perToken(h, w).dataSync() as Float32Array;
    const lse = tf.logSumExp(tf.matMul(h, w, false, true), 1).mul(maskT).dataSync() as Float32Array;
    let sum = 0;
    for (const v of losses) sum += v;
    const [dh, dw] = tf.grads((hh, ww) => tf.sum(perToken(hh as typeof h, ww as typeof w)).div(count))([h, w]);
    return { losses, lse, sum, count, dh: dh.dataSync() as Float32Array, dw: dw.dataSync() as Float32Array };
  });
}

function tensors(c: Case, wDtype: 'f32' | 'bf16' = 'f32') {
  return {
    h: Tensor.from(c.h, [c.N, c.C]),
    w: Tensor.from(c.w, [c.V, c.C], { dtype: wDtype, category: wDtype === 'bf16' ? 'frozen' : 'trainable' }),
    t: Tensor.from(c.targets, [c.N], { dtype: 'i32' }),
  };
}

async function checkAgainstTfjs(label: string, c: Case, seed: number, chunkTokens?: number, wDtype: 'f32' | 'bf16' = 'f32') {
  const { h, w, t } = tensors(c, wDtype);
  const wUsed = wDtype === 'bf16' ? c.w.map((v) => bf16ToF32(f32ToBf16(v))) : c.w;
  const ref = await reference(c, wUsed);
  const fwd = crossEntropyForward(h, w, t, { chunkTokens, ignoreIndex: c.ignoreIndex });
  assert.equal(fwd.count, ref.count, `${label}: count`);
  assertClose(`${label} losses`, fwd.losses.data() as Float32Array, ref.losses, TOL_LOSS, seed);
  assertClose(`${label} lse`, fwd.lse.data() as Float32Array, ref.lse, TOL_LOSS, seed);
  assert.ok(Math.abs(fwd.sum - ref.sum) <= TOL_LOSS * Math.abs(ref.sum) + 1e-6, `${label}: sum ${fwd.sum} vs ${ref.sum} (seed ${seed})`);
  const losses = fwd.losses.data() as Float32Array;
  let exact = 0;
  for (const v of losses) exact += v;
  assert.ok(Math.abs(fwd.sum - exact) <= 1e-9 * Math.abs(exact) + 1e-9, `${label}: sum is the double sum of the losses`);
  for (let i = 0; i < c.N; i++) {
    if (c.targets[i] === c.ignoreIndex) assert.equal(losses[i], 0, `${label}: ignored token ${i} has loss 0`);
  }
  const dw = Tensor.zeros([c.V, c.C], { category: 'grad' });
  const bwd = crossEntropyBackward(h, w, t, fwd.lse, 1 / fwd.count, { dw, chunkTokens, ignoreIndex: c.ignoreIndex });
  assert.equal(bwd.dw, dw);
  assert.equal(bwd.dh.category, 'activation');
  assertClose(`${label} dh`, bwd.dh.data() as Float32Array, ref.dh, TOL_GRAD, seed);
  assertClose(`${label} dw`, dw.data() as Float32Array, ref.dw, TOL_GRAD, seed);
  const dhv = bwd.dh.data() as Float32Array;
  for (let i = 0; i < c.N; i++) {
    if (c.targets[i] !== c.ignoreIndex) continue;
    for (let k = 0; k < c.C; k++) assert.equal(dhv[i * c.C + k], 0, `${label}: ignored token ${i} has a zero dh row`);
  }
  for (const x of [h, w, t, fwd.losses, fwd.lse, dw, bwd.dh]) x.dispose();
}

test('cross-entropy matches tfjs: several chunks, N not a multiple of the chunk, ignored targets', async () => {
  const r = rng();
  await checkAgainstTfjs('chunk 64', makeCase(r, 300, 48, 777, 0.2), r.seed, 64);
  await checkAgainstTfjs('chunk 7', makeCase(r, 61, 19, 130, 0.3), r.seed, 7);
});

test('cross-entropy matches tfjs: default chunk, no ignored tokens, one chunk bigger than N', async () => {
  const r = rng();
  await checkAgainstTfjs('default chunk, N = 300', makeCase(r, 300, 40, 501, 0), r.seed);
  await checkAgainstTfjs('chunk > N', makeCase(r, 37, 33, 300, 0), r.seed, 1000);
  await checkAgainstTfjs('V = 2', makeCase(r, 9, 5, 2, 0.2), r.seed, 4);
});

test('cross-entropy matches tfjs: large logits (stability), custom ignoreIndex', async () => {
  const r = rng();
  // logits with std ~ 20: exp without the max subtracted would overflow
  await checkAgainstTfjs('large logits', makeCase(r, 120, 32, 400, 0.1, -100, 20), r.seed, 50);
  // an in-vocabulary ignore index (e.g. a pad id)
  await checkAgainstTfjs('ignoreIndex = 0', makeCase(r, 90, 16, 64, 0.3, 0), r.seed, 32);
});

test('cross-entropy: all but one target ignored', async () => {
  const r = rng();
  const c = makeCase(r, 50, 24, 211, 0);
  const keep = 37;
  for (let i = 0; i < c.N; i++) if (i !== keep) c.targets[i] = -100;
  await checkAgainstTfjs('all but one ignored', c, r.seed, 8);
});

test('cross-entropy: all targets ignored gives count 0, zero loss, zero dh, dw untouched', () => {
  const r = rng();
  const c = makeCase(r, 20, 8, 30, 1);
  const { h, w, t } = tensors(c);
  const fwd = crossEntropyForward(h, w, t);
  assert.equal(fwd.count, 0);
  assert.equal(fwd.sum, 0);
  assert.ok((fwd.losses.data() as Float32Array).every((v) => v === 0));
  const dwInit = randn(c.V * c.C, r);
  const dw = Tensor.from(dwInit, [c.V, c.C], { category: 'grad' });
  const dh = Tensor.from(randn(c.N * c.C, r), [c.N, c.C]);
  crossEntropyBackward(h, w, t, fwd.lse, 1, { dw, dh });
  assert.ok((dh.data() as Float32Array).every((v) => v === 0), 'dh is written (zeros), not accumulated');
  assert.deepEqual(dw.data(), dwInit);
  for (const x of [h, w, t, fwd.losses, fwd.lse, dw, dh]) x.dispose();
});

test('cross-entropy with a single class (V = 1): zero loss, lse = the logit, zero gradients', () => {
  const r = rng();
  const c = makeCase(r, 13, 6, 1, 0.2);
  const { h, w, t } = tensors(c);
  const fwd = crossEntropyForward(h, w, t, { chunkTokens: 5 });
  assert.ok((fwd.losses.data() as Float32Array).every((v) => v === 0));
  const lse = fwd.lse.data() as Float32Array;
  for (let i = 0; i < c.N; i++) {
    let logit = 0;
    for (let k = 0; k < c.C; k++) logit += c.h[i * c.C + k] * c.w[k];
    const want = c.targets[i] === -100 ? 0 : logit;
    assert.ok(Math.abs(lse[i] - want) <= 1e-5 * (1 + Math.abs(want)), `lse[${i}] = ${lse[i]}, want ${want}`);
  }
  const dw = Tensor.zeros([1, c.C], { category: 'grad' });
  const bwd = crossEntropyBackward(h, w, t, fwd.lse, 1, { dw, chunkTokens: 5 });
  assert.ok((bwd.dh.data() as Float32Array).every((v) => Math.abs(v) < 1e-6));
  assert.ok((dw.data() as Float32Array).every((v) => Math.abs(v) < 1e-5));
  for (const x of [h, w, t, fwd.losses, fwd.lse, dw, bwd.dh]) x.dispose();
});

test('cross-entropy with a bf16 LM head equals tfjs on the bf16-rounded weights', async () => {
  const r = rng();
  await checkAgainstTfjs('bf16 w, chunk 40', makeCase(r, 150, 64, 333, 0.15), r.seed, 40, 'bf16');
});

test('cross-entropy backward: dw accumulates (+=), dh is overwritten (=), scale is applied as given', () => {
  const r = rng();
  const c = makeCase(r, 70, 16, 90, 0.2);
  const { h, w, t } = tensors(c);
  const fwd = crossEntropyForward(h, w, t, { chunkTokens: 16 });
  const dw = Tensor.zeros([c.V, c.C], { category: 'grad' });
  const once = crossEntropyBackward(h, w, t, fwd.lse, 0.25, { dw, chunkTokens: 16 });
  const dw1 = Float32Array.from(dw.data() as Float32Array), dh1 = Float32Array.from(once.dh.data() as Float32Array);
  (once.dh.data() as Float32Array).fill(123);
  crossEntropyBackward(h, w, t, fwd.lse, 0.25, { dw, dh: once.dh, chunkTokens: 16 });
  assertClose('dw twice = 2x', dw.data() as Float32Array, dw1.map((v) => 2 * v), 1e-6, r.seed);
  assert.deepEqual(once.dh.data(), dh1, 'dh overwritten with the same values');
  // scale is linear: 0.5 gives twice the dh of 0.25; without dw the head is frozen
  const half = crossEntropyBackward(h, w, t, fwd.lse, 0.5, { chunkTokens: 16 });
  assert.equal(half.dw, undefined);
  assertClose('scale 0.5', half.dh.data() as Float32Array, dh1.map((v) => 2 * v), 1e-6, r.seed);
  // the chunk size does not change the result beyond rounding
  const other = crossEntropyBackward(h, w, t, fwd.lse, 0.25, { chunkTokens: 1000 });
  assertClose('chunk-independent', other.dh.data() as Float32Array, dh1, 1e-6, r.seed);
  for (const x of [h, w, t, fwd.losses, fwd.lse, dw, once.dh, half.dh, other.dh]) x.dispose();
});

test('cross-entropy never materialises the N x V logits (peak workspace < N*V*4/4)', () => {
  const r = rng();
  const N = 2048, C = 64, V = 8192;
  const c = makeCase(r, N, C, V, 0.1);
  const { h, w, t } = tensors(c);
  const dw = Tensor.zeros([V, C], { category: 'grad' });
  const before = memory.snapshot().cpu;
  memory.resetPeak();
  const fwd = crossEntropyForward(h, w, t);
  const bwd = crossEntropyBackward(h, w, t, fwd.lse, 1 / fwd.count, { dw });
  const s = memory.snapshot().cpu;
  const peakWs = s.peak.workspace - before.live.workspace;
  const limit = (N * V * 4) / 4;
  assert.ok(peakWs > 0, 'the workspace is counted');
  assert.ok(peakWs < limit, `peak workspace ${peakWs} bytes >= ${limit} (a full logits buffer is ${N * V * 4})`);
  assert.equal(s.live.workspace, before.live.workspace, 'workspace released');
  assert.ok(Number.isFinite(fwd.sum) && fwd.count > 0);
  for (const x of [h, w, t, fwd.losses, fwd.lse, dw, bwd.dh]) x.dispose();
});

test('cross-entropy rejects bad shapes, dtypes and out-of-range targets with clear errors', () => {
  const N = 6, C = 4, V = 10;
  const h = Tensor.zeros([N, C]), w = Tensor.zeros([V, C]);
  const t = Tensor.from([1, 2, -100, 3, 4, 5], [N], { dtype: 'i32' });
  const lse = Tensor.zeros([N]);
  assert.throws(() => crossEntropyForward(h, Tensor.zeros([V, C + 1]), t),
    /crossEntropyForward: hidden sizes differ: h is \[6, 4\] \(C = 4\) but w is \[10, 5\] \(C = 5\)/);
  assert.throws(() => crossEntropyForward(h, w, Tensor.zeros([N + 1], { dtype: 'i32' })),
    /'targets' has 7 entries but h has 6 tokens/);
  assert.throws(() => crossEntropyForward(h, w, Tensor.zeros([N])), /'targets' has dtype f32, expected i32/);
  assert.throws(() => crossEntropyForward(Tensor.zeros([N, C], { dtype: 'bf16' }), w, t), /'h' has dtype bf16, expected f32/);
  assert.throws(() => crossEntropyForward(h, Tensor.zeros([V, C], { dtype: 'i8' }), t), /'w' has dtype i8, expected f32 or bf16/);
  assert.throws(() => crossEntropyForward(Tensor.zeros([N * C]), w, t), /'h' must have rank 2/);
  assert.throws(() => crossEntropyForward(h, w, t, { chunkTokens: 0 }), /'chunkTokens' must be a positive integer/);
  assert.throws(() => crossEntropyForward(h, w, t, { losses: Tensor.zeros([N + 1]) }), /'losses' has shape \[7\], expected \[6\]/);
  const bad = Tensor.from([1, 2, -100, 3, 10, 5], [N], { dtype: 'i32' });
  assert.throws(() => crossEntropyForward(h, w, bad), /target 10 at position 4 is outside \[0, 10\)/);
  const neg = Tensor.from([1, -1, -100, 3, 4, 5], [N], { dtype: 'i32' });
  assert.throws(() => crossEntropyForward(h, w, neg), /target -1 at position 1 is outside \[0, 10\)/);
  // with ignoreIndex = 0, the default -100 is an ordinary (bad) target
  assert.throws(() => crossEntropyForward(h, w, t, { ignoreIndex: 0 }), /target -100 at position 2/);
  assert.throws(() => crossEntropyBackward(h, w, bad, lse, 1), /cross_entropy_backward: target 10 at position 4/);
  assert.throws(() => crossEntropyBackward(h, w, t, Tensor.zeros([N + 1]), 1), /'lse' has shape \[7\], expected \[6\]/);
  assert.throws(() => crossEntropyBackward(h, w, t, lse, NaN), /'scale' must be a finite number/);
  assert.throws(() => crossEntropyBackward(h, w, t, lse, 1, { dw: Tensor.zeros([V, C + 1]) }), /'dw' has shape \[10, 5\], expected \[10, 4\]/);
  assert.throws(() => crossEntropyBackward(h, w, t, lse, 1, { dw: Tensor.zeros([V, C], { dtype: 'bf16' }) }), /'dw' has dtype bf16, expected f32/);
  assert.throws(() => crossEntropyBackward(h, w, t, lse, 1, { dw: w }), /'dw' must not be 'w' itself/);
  assert.throws(() => crossEntropyBackward(h, w, t, lse, 1, { dh: h }), /'dh' must be a tensor of its own/);
  assert.throws(() => crossEntropyBackward(h, w, t, lse, 1, { dh: Tensor.zeros([N, C + 1]) }), /'dh' has shape \[6, 5\], expected \[6, 4\]/);
  w.dispose();
  assert.throws(() => crossEntropyForward(h, w, t), /'w' was disposed/);
  for (const x of [h, t, lse, bad, neg]) x.dispose();
});
