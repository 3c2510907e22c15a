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

// ---------------------------------------------------------------------------
// Segments (packed rows). The reference is block-diagonal attention built
// from per-example plain causal attention: each segment of each row is cut
// out, run alone through the causal kernel (checked against tfjs above), and
// put back. Tolerances as above: the two differ only in float32 summation
// order (other tile boundaries), the same error source as against tfjs.

/** segment ids of a row from its segment lengths (contiguous, increasing) */
function segRow(lengths: number[]): number[] {
  return lengths.flatMap((n, s) => Array<number>(n).fill(s));
}

function sliceTokens(x: Float32Array, b: number, T: number, H: number, D: number, s: number, e: number): Float32Array {
  return x.slice((b * T + s) * H * D, (b * T + e) * H * D);
}

function segmentedReference(d: Dims, seg: Int32Array, qv: Float32Array, kv: Float32Array, vv: Float32Array, dov: Float32Array) {
  const { B, T, Hq, Hkv, D } = d;
  const want = { out: new Float32Array(qv.length), lse: new Float32Array(B * Hq * T), dq: new Float32Array(qv.length),
                 dk: new Float32Array(kv.length), dv: new Float32Array(kv.length) };
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < T;) {
      let e = s + 1;
      while (e < T && seg[b * T + e] === seg[b * T + s]) e++;
      const n = e - s;
      const q = Tensor.from(sliceTokens(qv, b, T, Hq, D, s, e), [1, n, Hq, D]);
      const k = Tensor.from(sliceTokens(kv, b, T, Hkv, D, s, e), [1, n, Hkv, D]);
      const v = Tensor.from(sliceTokens(vv, b, T, Hkv, D, s, e), [1, n, Hkv, D]);
      const dout = Tensor.from(sliceTokens(dov, b, T, Hq, D, s, e), [1, n, Hq, D]);
      const { out, lse } = attentionForward(q, k, v);
      const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse);
      want.out.set(out.data() as Float32Array, (b * T + s) * Hq * D);
      want.dq.set(dq.data() as Float32Array, (b * T + s) * Hq * D);
      want.dk.set(dk.data() as Float32Array, (b * T + s) * Hkv * D);
      want.dv.set(dv.data() as Float32Array, (b * T + s) * Hkv * D);
      const lv = lse.data() as Float32Array;
      for (let h = 0; h < Hq; h++) want.lse.set(lv.subarray(h * n, (h + 1) * n), (b * Hq + h) * T + s);
      for (const t of [q, k, v, dout, out, lse, dq, dk, dv]) t.dispose();
      s = e;
    }
  }
  return want;
}

// Ragged layouts: length-1 segments, segments across tile boundaries, one
// longer than a tile, a trailing padding segment, a row that is one segment.
const SEGMENT_CASES: { d: Dims; rows: number[][] }[] = [
  { d: { B: 2, T: 200, Hq: 4, Hkv: 2, D: 16 }, rows: [[1, 5, 70, 1, 1, 100, 22], [150, 1, 49]] },
  { d: { B: 3, T: 130, Hq: 2, Hkv: 1, D: 24 }, rows: [[64, 64, 2], [1, 1, 1, 127], [130]] },
  { d: { B: 1, T: 37, Hq: 4, Hkv: 4, D: 16 }, rows: [Array<number>(37).fill(1)] },
  { d: { B: 2, T: 300, Hq: 2, Hkv: 2, D: 64 }, rows: [[10, 20, 30, 40, 50, 60, 70, 20], [299, 1]] },
];

test('segments: forward and backward equal per-example causal attention (block-diagonal), ragged lengths', () => {
  for (const { d, rows } of SEGMENT_CASES) {
    const { B, T, Hq, Hkv, D } = d;
    const { r, q: qv, k: kv, v: vv, dout: dov } = run(d);
    const seg = Int32Array.from(rows.flatMap(segRow));
    assert.equal(seg.length, B * T);
    const want = segmentedReference(d, seg, qv, kv, vv, dov);
    const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
    const dout = Tensor.from(dov, [B, T, Hq, D]), segments = Tensor.from(seg, [B, T], { dtype: 'i32' });
    const { out, lse } = attentionForward(q, k, v, { segments });
    const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse, { segments });
    const name = `B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} D=${D} segments ${JSON.stringify(rows)}`;
    assertClose(`${name} out`, out.data() as Float32Array, want.out, TOL_FWD, r.seed);
    assertClose(`${name} lse`, lse.data() as Float32Array, want.lse, TOL_FWD, r.seed);
    close(`${name} dq`, dq.data() as Float32Array, want.dq, TOL_GRAD, r.seed);
    close(`${name} dk`, dk.data() as Float32Array, want.dk, TOL_GRAD, r.seed);
    close(`${name} dv`, dv.data() as Float32Array, want.dv, TOL_GRAD, r.seed);
    for (const t of [q, k, v, dout, segments, out, lse, dq, dk, dv]) t.dispose();
  }
});

test('segments: one segment per row is bit-identical to plain causal attention', () => {
  const d = { B: 2, T: 150, Hq: 4, Hkv: 2, D: 24 };
  const { q: qv, k: kv, v: vv, dout: dov } = run(d);
  const { B, T, Hq, Hkv, D } = d;
  const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
  const dout = Tensor.from(dov, [B, T, Hq, D]);
  const segments = Tensor.from(Int32Array.from([...Array<number>(T).fill(3), ...Array<number>(T).fill(7)]), [B, T], { dtype: 'i32' });
  const plain = attentionForward(q, k, v), seg = attentionForward(q, k, v, { segments });
  const gp = attentionBackward(dout, q, k, v, plain.out, plain.lse);
  const gs = attentionBackward(dout, q, k, v, seg.out, seg.lse, { segments });
  assert.deepEqual(seg.out.data(), plain.out.data());
  assert.deepEqual(seg.lse.data(), plain.lse.data());
  for (const n of ['dq', 'dk', 'dv'] as const) assert.deepEqual(gs[n].data(), gp[n].data(), n);
  for (const t of [q, k, v, dout, segments, plain.out, plain.lse, seg.out, seg.lse, gp.dq, gp.dk, gp.dv, gs.dq, gs.dk, gs.dv]) t.dispose();
});

test('segments: key tiles wholly outside a query tile\'s segments are never read (NaN there does not leak)', () => {
  // Row 0: positions 0..127 (two whole 64-tiles) are segment 0 and hold NaN
  // in q, k, v and dout; 128..199 are segments 1 and 2. Masking alone would
  // leak (0 * NaN = NaN in P V); skipping the tiles does not.
  const d = { B: 1, T: 200, Hq: 2, Hkv: 1, D: 16 }, { B, T, Hq, Hkv, D } = d, cut = 128;
  const { r, q: qv, k: kv, v: vv, dout: dov } = run(d);
  const seg = Int32Array.from(segRow([cut, 50, T - cut - 50]));
  const want = segmentedReference(d, seg, qv, kv, vv, dov);
  for (const [x, H] of [[qv, Hq], [kv, Hkv], [vv, Hkv], [dov, Hq]] as const) x.fill(NaN, 0, cut * H * D);
  const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
  const dout = Tensor.from(dov, [B, T, Hq, D]), segments = Tensor.from(seg, [B, T], { dtype: 'i32' });
  const { out, lse } = attentionForward(q, k, v, { segments });
  const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse, { segments });
  const tail = (x: Float32Array, H: number) => x.subarray(cut * H * D);
  assertClose('out after the NaN segment', tail(out.data() as Float32Array, Hq), tail(want.out, Hq), TOL_FWD, r.seed);
  for (let h = 0; h < Hq; h++) {
    assertClose(`lse head ${h}`, (lse.data() as Float32Array).subarray(h * T + cut, (h + 1) * T), want.lse.subarray(h * T + cut, (h + 1) * T), TOL_FWD, r.seed);
  }
  assertClose('dq after the NaN segment', tail(dq.data() as Float32Array, Hq), tail(want.dq, Hq), TOL_GRAD, r.seed);
  assertClose('dk after the NaN segment', tail(dk.data() as Float32Array, Hkv), tail(want.dk, Hkv), TOL_GRAD, r.seed);
  assertClose('dv after the NaN segment', tail(dv.data() as Float32Array, Hkv), tail(want.dv, Hkv), TOL_GRAD, r.seed);
  for (const t of [q, k, v, dout, segments, out, lse, dq, dk, dv]) t.dispose();
});

test('segments: bad segment tensors are refused with clear errors (TS and native)', () => {
  const q = Tensor.zeros([2, 5, 4, 8]), k = Tensor.zeros([2, 5, 2, 8]), v = Tensor.zeros([2, 5, 2, 8]);
  const ids = (a: number[], shape: number[]) => Tensor.from(Int32Array.from(a), shape, { dtype: 'i32' });
  assert.throws(() => attentionForward(q, k, v, { segments: Tensor.zeros([2, 5]) }), /attentionForward: 'segments' has dtype f32, expected i32/);
  assert.throws(() => attentionForward(q, k, v, { segments: ids(Array(10).fill(0), [10]) }), /'segments' must have rank 2, got shape \[10\]/);
  assert.throws(() => attentionForward(q, k, v, { segments: ids(Array(12).fill(0), [2, 6]) }),
    /'segments' has shape \[2, 6\], expected \[B, T\] = \[2, 5\]/);
  assert.throws(() => attentionForward(q, k, v, { segments: ids([0, 0, 1, 1, 1, 0, 1, 0, 2, 2], [2, 5]) }),
    /'segments' must be non-decreasing within each row .*row 1 has id 0 at position 2 after 1 at position 1/);
  const { out, lse } = attentionForward(q, k, v);
  assert.throws(() => attentionBackward(out, q, k, v, out, lse, { segments: ids([0, 0, 0, 0, 0, 3, 2, 2, 2, 2], [2, 5]) }),
    /attentionBackward: 'segments' must be non-decreasing/);
  // the native side re-checks (dtype, size, order) before using them
  const fwd = native.attention_forward as (...a: unknown[]) => void;
  const bad = ids([0, 1, 0, 0, 0, 0, 0, 0, 0, 0], [2, 5]);
  assert.throws(() => fwd(q.handle, k.handle, v.handle, out.handle, lse.handle, 2, 5, 4, 2, 8, 1, bad.handle),
    /attention_forward: 'segments' must be non-decreasing within each row; row 0 position 2/);
  assert.throws(() => fwd(q.handle, k.handle, v.handle, out.handle, lse.handle, 2, 5, 4, 2, 8, 1, q.handle),
    /attention_forward: tensor 'segments' has dtype f32, expected i32/);
  for (const t of [q, k, v, out, lse, bad]) t.dispose();
});
