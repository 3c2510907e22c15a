import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, attentionBackward, attentionForward, memory, native } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// Tolerances (max-abs error relative to the largest reference value, see
// helpers.relErr). The kernel computes and accumulates in float32 (scores in
// 64-key tiles, an online softmax that rescales the running output, a
// polynomial exp good to ~1.5 ulp, P recomputed from lse in backward); tfjs's
// cpu matMul sums its dot products in JS doubles (32-term blocks), so most of
// the gap is our float32 sums. The error grows with the score magnitude (an
// absolute error in a score is a relative error in its probability): measured worst
// over 120 random runs of every config below: out 2.5e-6, lse 3.9e-7,
// dq 4.7e-6, dk 4.3e-6, dv 1.5e-6, the gradients' worst in the peaky x2/x3
// configs (x1 configs: grads under 2.2e-6). Set 6-8x above the worst, still
// well under 1e-4:
const TOL_FWD = 2e-5, TOL_GRAD = 3e-5;

/** assertClose, except that a reference that is identically zero (dq and dk
 * at T = 1: softmax over one key has no gradient) is compared absolutely;
 * the inputs are O(1), so the gradients' natural scale is 1. */
function close(name: string, got: Float32Array, want: Float32Array, tol: number, seed: number): void {
  if (want.every((x) => x === 0)) {
    const worst = got.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    assert.ok(worst <= tol, `${name}: reference is 0, got max |x| = ${worst.toExponential(3)} > ${tol} (seed ${seed})`);
  } else {
    assertClose(name, got, want, tol, seed);
  }
}

type TF = Awaited<ReturnType<typeof tfjs>>;
interface Dims { B: number; T: number; Hq: number; Hkv: number; D: number }

/** Causal GQA attention from tf ops: repeat kv heads (gather), masked scores,
 * softmax; gradients from tf.grads of sum(out * dout). */
function reference(tf: TF, d: Dims, qv: Float32Array, kv: Float32Array, vv: Float32Array, dov: Float32Array, scale: number) {
  const { B, T, Hq, Hkv, D } = d, G = Hq / Hkv;
  return tf.tidy(() => {
    const q = tf.tensor4d(qv, [B, T, Hq, D]), k = tf.tensor4d(kv, [B, T, Hkv, D]), v = tf.tensor4d(vv, [B, T, Hkv, D]);
    const dout = tf.tensor4d(dov, [B, T, Hq, D]);
    const bias = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) bias[i * T + j] = -1e9;
    const mask = tf.tensor2d(bias, [T, T]);
    const kvIndex = tf.tensor1d(Array.from({ length: Hq }, (_, h) => Math.floor(h / G)), 'int32');
    const heads = (x: typeof q) => tf.transpose(x, [0, 2, 1, 3]);                 // [B, H, T, D]
    const repeat = (x: typeof q) => tf.gather(heads(x), kvIndex, 1);             // [B, Hq, T, D]
    const scores = (qq: typeof q, kk: typeof q) => tf.add(tf.mul(tf.matMul(heads(qq), repeat(kk), false, true), scale), mask);
    const f = (qq: typeof q, kk: typeof q, vvv: typeof q) =>
      tf.transpose(tf.matMul(tf.softmax(scores(qq, kk)), repeat(vvv)), [0, 2, 1, 3]);
    const [dq, dk, dv] = tf.grads((a, b, c) => tf.sum(tf.mul(f(a as typeof q, b as typeof q, c as typeof q), dout)))([q, k, v]);
    return {
      out: f(q, k, v).dataSync() as Float32Array,
      lse: tf.logSumExp(scores(q, k), -1).dataSync() as Float32Array,   // [B, Hq, T]
      dq: dq.dataSync() as Float32Array, dk: dk.dataSync() as Float32Array, dv: dv.dataSync() as Float32Array,
    };
  });
}

// [B, T, Hq, Hkv, D, input scale]: Hq == Hkv, Hq = 4 * Hkv, MQA; T = 1, a
// tile remainder (37, 70, 100, 130), exactly one tile (64); D = 16, 24 (padded
// inside), 64, 130 (several column chunks); the x2 and x3 inputs make the
// softmax peaky so the running max moves between key tiles.
const CONFIGS: [number, number, number, number, number, number][] = [
  [1, 1, 2, 2, 16, 1],
  [2, 37, 4, 4, 16, 1],
  [1, 130, 8, 2, 64, 1],
  [2, 64, 4, 1, 64, 1],
  [1, 100, 4, 2, 24, 3],
  [2, 130, 4, 1, 16, 2],
  [1, 70, 2, 1, 130, 1],
];

function run(d: Dims, scale?: number) {
  const r = rng();
  const { B, T, Hq, Hkv, D } = d;
  return { r, q: randn(B * T * Hq * D, r), k: randn(B * T * Hkv * D, r), v: randn(B * T * Hkv * D, r), dout: randn(B * T * Hq * D, r), scale };
}

test('attention forward (out, lse) and backward (dq, dk, dv) match tfjs', async () => {
  const tf = await tfjs();
  for (const [B, T, Hq, Hkv, D, mag] of CONFIGS) {
    const d = { B, T, Hq, Hkv, D };
    const { r, q: qv, k: kv, v: vv, dout: dov } = run(d);
    for (const x of [qv, kv]) for (let i = 0; i < x.length; i++) x[i] *= mag;
    const ref = reference(tf, d, qv, kv, vv, dov, 1 / Math.sqrt(D));
    const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
    const dout = Tensor.from(dov, [B, T, Hq, D]);
    const { out, lse } = attentionForward(q, k, v);
    assert.deepEqual(out.shape, [B, T, Hq, D]);
    assert.deepEqual(lse.shape, [B, Hq, T]);
    assert.equal(out.category, 'activation');
    const name = `B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} D=${D} x${mag}`;
    assertClose(`${name} out`, out.data() as Float32Array, ref.out, TOL_FWD, r.seed);
    assertClose(`${name} lse`, lse.data() as Float32Array, ref.lse, TOL_FWD, r.seed);
    const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse);
    assert.deepEqual(dk.shape, [B, T, Hkv, D]);
    assert.equal(dq.category, 'activation');
    close(`${name} dq`, dq.data() as Float32Array, ref.dq, TOL_GRAD, r.seed);
    close(`${name} dk`, dk.data() as Float32Array, ref.dk, TOL_GRAD, r.seed);
    close(`${name} dv`, dv.data() as Float32Array, ref.dv, TOL_GRAD, r.seed);
    for (const t of [q, k, v, dout, out, lse, dq, dk, dv]) t.dispose();
  }
});

test('lse is the log-sum-exp of the scaled causal scores; opts.scale overrides 1/sqrt(D), any sign', async () => {
  const tf = await tfjs();
  const d = { B: 2, T: 70, Hq: 4, Hkv: 2, D: 8 };
  const { B, T, Hq, Hkv, D } = d;
  for (const scale of [0.7, -0.4]) {
    const { r, q: qv, k: kv, v: vv, dout: dov } = run(d);
    const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
    const { out, lse } = attentionForward(q, k, v, { scale });
    // directly from the definition, in float64
    const want = new Float64Array(B * Hq * T);
    for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) for (let t = 0; t < T; t++) {
      const g = Math.floor(h / (Hq / Hkv)), s: number[] = [];
      for (let j = 0; j <= t; j++) {
        let dot = 0;
        for (let c = 0; c < D; c++) dot += qv[((b * T + t) * Hq + h) * D + c] * kv[((b * T + j) * Hkv + g) * D + c];
        s.push(dot * scale);
      }
      const m = Math.max(...s);
      want[(b * Hq + h) * T + t] = m + Math.log(s.reduce((acc, x) => acc + Math.exp(x - m), 0));
    }
    assertClose(`lse (float64 definition), scale ${scale}`, lse.data() as Float32Array, want, TOL_FWD, r.seed);
    const ref = reference(tf, d, qv, kv, vv, dov, scale);
    assertClose(`out, scale ${scale}`, out.data() as Float32Array, ref.out, TOL_FWD, r.seed);
    const dout = Tensor.from(dov, [B, T, Hq, D]);
    const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse, { scale });
    assertClose(`dq, scale ${scale}`, dq.data() as Float32Array, ref.dq, TOL_GRAD, r.seed);
    assertClose(`dk, scale ${scale}`, dk.data() as Float32Array, ref.dk, TOL_GRAD, r.seed);
    assertClose(`dv, scale ${scale}`, dv.data() as Float32Array, ref.dv, TOL_GRAD, r.seed);
    for (const t of [q, k, v, out, lse, dout, dq, dk, dv]) t.dispose();
  }
});

test('causal: changing k and v after position t leaves out, lse and dq at <= t bit-identical', () => {
  const d = { B: 2, T: 150, Hq: 4, Hkv: 2, D: 16 };
  const { B, T, Hq, Hkv, D } = d;
  const { r, q: qv, k: kv, v: vv, dout: dov } = run(d);
  const t0 = 1 + Math.floor(r.next() * (T - 3));  // anywhere, including inside a tile
  const q = Tensor.from(qv, [B, T, Hq, D]), dout = Tensor.from(dov, [B, T, Hq, D]);
  const results = [0, 1].map((variant) => {
    const k2 = kv.slice(), v2 = vv.slice();
    if (variant === 1) {
      for (let b = 0; b < B; b++) for (let t = t0 + 1; t < T; t++) for (let i = 0; i < Hkv * D; i++) {
        k2[(b * T + t) * Hkv * D + i] = r.normal() * 5;
        v2[(b * T + t) * Hkv * D + i] = r.normal() * 5;
      }
    }
    const k = Tensor.from(k2, [B, T, Hkv, D]), v = Tensor.from(v2, [B, T, Hkv, D]);
    const { out, lse } = attentionForward(q, k, v);
    const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse);
    const res = { out: (out.toFloat32()), lse: lse.toFloat32(), dq: dq.toFloat32() };
    for (const t of [k, v, out, lse, dq, dk, dv]) t.dispose();
    return res;
  });
  const row = Hq * D;
  let changedLater = false;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const s = (b * T + t) * row;
      const a = Array.from(results[0].out.subarray(s, s + row)), c = Array.from(results[1].out.subarray(s, s + row));
      if (t <= t0) {
        assert.deepEqual(c, a, `out at b=${b} t=${t} changed (keys after t0=${t0} changed; seed ${r.seed})`);
        assert.deepEqual(Array.from(results[1].dq.subarray(s, s + row)), Array.from(results[0].dq.subarray(s, s + row)), `dq at t=${t}`);
        for (let h = 0; h < Hq; h++) assert.equal(results[1].lse[(b * Hq + h) * T + t], results[0].lse[(b * Hq + h) * T + t]);
      } else if (a.some((x, i) => x !== c[i])) {
        changedLater = true;
      }
    }
  }
  assert.ok(changedLater, 'rows after t0 should see the changed keys');
  q.dispose(); dout.dispose();
});

test('preallocated outputs are overwritten (=), not accumulated', () => {
  const d = { B: 1, T: 77, Hq: 6, Hkv: 3, D: 32 };
  const { B, T, Hq, Hkv, D } = d;
  const { q: qv, k: kv, v: vv, dout: dov } = run(d);
  const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
  const dout = Tensor.from(dov, [B, T, Hq, D]);
  const fresh = attentionForward(q, k, v);
  const g = attentionBackward(dout, q, k, v, fresh.out, fresh.lse);
  const nan = (shape: number[]) => { const t = Tensor.zeros(shape); (t.data() as Float32Array).fill(NaN); return t; };
  const out = nan([B, T, Hq, D]), lse = nan([B, Hq, T]);
  const res = attentionForward(q, k, v, { out, lse });
  assert.equal(res.out, out);
  assert.equal(res.lse, lse);
  assert.deepEqual(out.toFloat32(), fresh.out.toFloat32());
  assert.deepEqual(lse.toFloat32(), fresh.lse.toFloat32());
  const dq = nan([B, T, Hq, D]), dk = nan([B, T, Hkv, D]), dv = nan([B, T, Hkv, D]);
  for (let rep = 0; rep < 2; rep++) {  // twice: a second call must not add to the first
    attentionBackward(dout, q, k, v, out, lse, { dq, dk, dv });
    assert.deepEqual(dq.toFloat32(), g.dq.toFloat32());
    assert.deepEqual(dk.toFloat32(), g.dk.toFloat32());
    assert.deepEqual(dv.toFloat32(), g.dv.toFloat32());
  }
  for (const t of [q, k, v, dout, fresh.out, fresh.lse, g.dq, g.dk, g.dv, out, lse, dq, dk, dv]) t.dispose();
});

test('memory: forward + backward workspace at T = 1024 is linear in T, far below a T x T buffer per head', () => {
  const B = 1, T = 1024, Hq = 8, Hkv = 2, D = 64;
  // Workspace is per-thread tiles (constant in T) plus Dq = rowsum(dO * O)
  // (B * Hq * T floats). Pin the thread count so the bound holds on any machine.
  const threads = native.getThreads();
  native.setThreads(Math.min(threads, 4));
  const nt = native.getThreads();
  try {
    const r = rng();
    const q = Tensor.from(randn(B * T * Hq * D, r), [B, T, Hq, D]);
    const k = Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]), v = Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]);
    const dout = Tensor.from(randn(B * T * Hq * D, r), [B, T, Hq, D]);
    const before = memory.snapshot().cpu.live.workspace;
    memory.resetPeak();
    const { out, lse } = attentionForward(q, k, v);
    const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse);
    const s = memory.snapshot().cpu;
    const peak = s.peak.workspace - before;
    assert.equal(s.live.workspace, before, 'workspace is released after the ops');
    assert.ok(peak > 0, 'the tiles are counted as workspace');
    // one T x T float score matrix per head: 32 MiB here. Anything quadratic in
    // T (even one T x T tile set per thread) would exceed an eighth of it.
    const quadratic = B * Hq * T * T * 4;
    assert.ok(peak < quadratic / 8, `peak workspace ${peak} B is not far below T x T per head (${quadratic} B)`);
    // and it fits the linear budget: Dq plus at most 11 tiles of 64 x 64 floats per thread (10 in backward at D = 64)
    const linear = B * Hq * T * 4 + nt * 11 * 64 * 64 * 4;
    assert.ok(peak <= linear, `peak workspace ${peak} B exceeds the linear budget ${linear} B (${nt} threads)`);
    for (const t of [q, k, v, dout, out, lse, dq, dk, dv]) t.dispose();
  } finally {
    native.setThreads(threads);
  }
});

test('attention rejects bad inputs with clear errors', () => {
  const q = Tensor.zeros([2, 5, 4, 8]), k = Tensor.zeros([2, 5, 2, 8]), v = Tensor.zeros([2, 5, 2, 8]);
  assert.throws(() => attentionForward(Tensor.zeros([10, 4, 8]), k, v), /attentionForward: 'q' must have rank 4, got shape \[10, 4, 8\]/);
  assert.throws(() => attentionForward(q, Tensor.zeros([2, 6, 2, 8]), v),
    /attentionForward: 'k' has shape \[2, 6, 2, 8\], expected \[2, 5, Hkv, 8\]/);
  assert.throws(() => attentionForward(q, Tensor.zeros([2, 5, 2, 16]), v),
    /attentionForward: 'k' has shape \[2, 5, 2, 16\], expected \[2, 5, Hkv, 8\]/);
  assert.throws(() => attentionForward(q, k, Tensor.zeros([2, 5, 1, 8])), /attentionForward: 'v' has shape \[2, 5, 1, 8\], expected \[2, 5, 2, 8\]/);
  assert.throws(() => attentionForward(q, Tensor.zeros([2, 5, 3, 8]), Tensor.zeros([2, 5, 3, 8])),
    /query heads Hq = 4 .* must be a multiple of kv heads Hkv = 3/);
  assert.throws(() => attentionForward(q, k, Tensor.zeros([2, 5, 2, 8], { dtype: 'bf16' })), /attentionForward: 'v' has dtype bf16, expected f32/);
  assert.throws(() => attentionForward(Tensor.zeros([2, 5, 4, 0]), Tensor.zeros([2, 5, 2, 0]), Tensor.zeros([2, 5, 2, 0])), /head dim D must be positive/);
  assert.throws(() => attentionForward(q, k, v, { scale: NaN }), /'scale' must be a finite number/);
  assert.throws(() => attentionForward(q, k, v, { out: Tensor.zeros([2, 5, 4, 4]) }), /'out' has shape \[2, 5, 4, 4\], expected \[2, 5, 4, 8\]/);
  assert.throws(() => attentionForward(q, k, v, { out: q }), /'out' is the same tensor as 'q'/);
  const { out, lse } = attentionForward(q, k, v);
  assert.throws(() => attentionBackward(out, q, k, v, out, Tensor.zeros([2, 5, 4])), /attentionBackward: 'lse' has shape \[2, 5, 4\], expected \[2, 4, 5\]/);
  assert.throws(() => attentionBackward(Tensor.zeros([2, 5, 4, 7]), q, k, v, out, lse), /attentionBackward: 'dout' has shape \[2, 5, 4, 7\], expected \[2, 5, 4, 8\]/);
  assert.throws(() => attentionBackward(out, q, k, v, out, lse, { dk: k }), /'dk' is the same tensor as 'k'/);
  assert.throws(() => attentionBackward(out, q, k, v, out, lse, { dk: Tensor.zeros([2, 5, 4, 8]) }), /'dk' has shape \[2, 5, 4, 8\], expected \[2, 5, 2, 8\]/);
  k.dispose();
  assert.throws(() => attentionForward(q, k, v), /'k' was disposed/);
  // the native side re-checks sizes before touching memory
  const small = Tensor.zeros([4]);
  const fwd = native.attention_forward as (...a: unknown[]) => void;
  assert.throws(() => fwd(q.handle, v.handle, v.handle, small.handle, small.handle, 2, 5, 4, 2, 8, 1),
    /attention_forward: tensor 'out' has 4 elements, the op needs at least 320/);
  assert.throws(() => fwd(q.handle, v.handle, v.handle, out.handle, lse.handle, 2, 5, 4, 3, 8, 1), /attention_forward: Hq = 4 is not a multiple of Hkv = 3/);
  for (const t of [q, v, out, lse, small]) t.dispose();
});
