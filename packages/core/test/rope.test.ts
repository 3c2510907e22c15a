import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, native, rope, ropeBackward } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// Tolerances (max-abs error relative to the largest reference value). The
// kernel forms inv_freq, the angle and cos/sin exactly as tfjs's cpu backend
// does (float32 pow/multiply, cos/sin of the float32 angle rounded once), so
// the tables agree to the last bit; what differs is x*cos - y*sin, which the
// kernel may fuse into an FMA: about 1 ulp of the larger term. Measured over
// 40 random runs (positions up to 9000, theta 1e4 and 5e5): cos tables equal
// bit for bit, forward and backward worst 1.2e-7. Tolerance 1e-6.
const TOL = 1e-6;

type TF = Awaited<ReturnType<typeof tfjs>>;

/** HF apply_rotary_pos_emb built from tfjs ops; dx from tf.grads of sum(out * dOut). */
function reference(tf: TF, xv: Float32Array, pos: Int32Array, dov: Float32Array,
                   [B, T, H, D]: number[], theta: number) {
  return tf.tidy(() => {
    const h = D / 2, BT = B * T;
    const invFreq = tf.div(1, tf.pow(tf.scalar(theta), tf.div(tf.range(0, D, 2, 'float32'), D)));
    const freqs = tf.mul(tf.tensor2d(Float32Array.from(pos), [BT, 1]), tf.reshape(invFreq, [1, h]));
    const emb = tf.concat([freqs, freqs], 1);
    const cos = tf.reshape(tf.cos(emb), [BT, 1, D]), sin = tf.reshape(tf.sin(emb), [BT, 1, D]);
    const rotateHalf = (t: ReturnType<typeof tf.tensor3d>) =>
      tf.concat([tf.neg(tf.slice(t, [0, 0, h], [-1, -1, h])), tf.slice(t, [0, 0, 0], [-1, -1, h])], 2);
    const f = (t: ReturnType<typeof tf.tensor3d>) => tf.add(tf.mul(t, cos), tf.mul(rotateHalf(t), sin));
    const x = tf.tensor3d(xv, [BT, H, D]), dout = tf.tensor3d(dov, [BT, H, D]);
    const [dx] = tf.grads((t) => tf.sum(tf.mul(f(t as typeof x), dout)))([x]);
    return { out: f(x).dataSync() as Float32Array, dx: dx.dataSync() as Float32Array };
  });
}

interface Case { name: string; shape: [number, number, number, number]; theta: number; positions: (b: number, t: number, r: ReturnType<typeof rng>) => number }
const CASES: Case[] = [
  { name: 'tiny', shape: [1, 1, 1, 2], theta: 10000, positions: () => 3 },
  { name: 'prefill 0..T-1 per sequence', shape: [2, 5, 3, 6], theta: 10000, positions: (_b, t) => t },
  { name: 'KV-cache offsets, theta 5e5', shape: [3, 7, 2, 10], theta: 500000, positions: (b, t) => 1000 * b + 37 + t },
  { name: 'strided, non-contiguous', shape: [2, 9, 2, 8], theta: 500000, positions: (b, t) => 3 * t + 5 * b + 1 },
  { name: 'scattered with repeats', shape: [2, 37, 4, 64], theta: 500000, positions: (_b, _t, r) => Math.floor(r.next() * 60) * 131 },
  { name: 'decode (T = 1) at far positions', shape: [4, 1, 8, 128], theta: 10000, positions: (b) => 4093 + 977 * b },
  { name: 'threaded prefill', shape: [2, 64, 8, 64], theta: 10000, positions: (_b, t) => t },
];

test('rope forward and backward match tfjs (HF rotate-half), both cos/sin strategies', async () => {
  const tf = await tfjs();
  const r = rng();
  for (const c of CASES) {
    const [B, T, H, D] = c.shape, n = B * T * H * D;
    const pos = new Int32Array(B * T);
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) pos[b * T + t] = c.positions(b, t, r);
    const xv = randn(n, r), dov = randn(n, r);
    const ref = reference(tf, xv, pos, dov, c.shape, c.theta);
    const x = Tensor.from(xv, c.shape), p = Tensor.from(pos, [B, T], { dtype: 'i32' });
    const dout = Tensor.from(dov, c.shape);
    const out = rope(x, p, { theta: c.theta });
    assertClose(`rope ${c.name}`, out.data() as Float32Array, ref.out, TOL, r.seed);
    const dx = ropeBackward(dout, p, { theta: c.theta });
    assertClose(`rope backward ${c.name}`, dx.data() as Float32Array, ref.dx, TOL, r.seed);
    // the table and the per-token paths compute the same values bit for bit
    for (const mode of ['table', 'token'] as const) {
      const o2 = rope(x, p, { theta: c.theta, mode }), d2 = ropeBackward(dout, p, { theta: c.theta, mode });
      assert.deepEqual(o2.data(), out.data(), `${c.name}: mode ${mode} forward differs`);
      assert.deepEqual(d2.data(), dx.data(), `${c.name}: mode ${mode} backward differs`);
      o2.dispose(); d2.dispose();
    }
    for (const t of [x, p, dout, out, dx]) t.dispose();
  }
});

test('rope pins the rotate-half convention against the HF formula written out (positions 0..3, D = 4)', () => {
  const [B, T, H, D] = [1, 4, 2, 4], h = D / 2, theta = 10000;
  const xv = Float32Array.from({ length: B * T * H * D }, (_, i) => (i % 7) - 3 + 0.25 * i);
  const x = Tensor.from(xv, [B, T, H, D]), p = Tensor.from([0, 1, 2, 3], [T], { dtype: 'i32' });
  const got = rope(x, p).data() as Float32Array;
  // LlamaRotaryEmbedding: inv_freq = 1 / theta^(arange(0, D, 2) / D); freqs = pos * inv_freq;
  // emb = cat(freqs, freqs); apply_rotary_pos_emb: q * cos + rotate_half(q) * sin,
  // rotate_half(q) = cat(-q[h:], q[:h])
  const want = new Float64Array(xv.length);
  for (let t = 0; t < T; t++) {
    const invFreq = [0, 2].map((j) => 1 / theta ** (j / D));
    const emb = [...invFreq.map((f) => t * f), ...invFreq.map((f) => t * f)];
    for (let hd = 0; hd < H; hd++) {
      const q = Array.from(xv.subarray((t * H + hd) * D, (t * H + hd + 1) * D));
      const rot = [...q.slice(h).map((v) => -v), ...q.slice(0, h)];
      for (let i = 0; i < D; i++) want[(t * H + hd) * D + i] = q[i] * Math.cos(emb[i]) + rot[i] * Math.sin(emb[i]);
    }
  }
  assertClose('HF formula', got, want, 1e-6);
  // position 0 is the identity; position 1 turns pair (x0, x2) by 1 radian
  assert.deepEqual(Array.from(got.subarray(0, 8)), Array.from(xv.subarray(0, 8)));
  const [a, b] = [xv[8], xv[10]];
  assert.ok(Math.abs(got[8] - (a * Math.cos(1) - b * Math.sin(1))) < 1e-5);
  assert.ok(Math.abs(got[10] - (b * Math.cos(1) + a * Math.sin(1))) < 1e-5);
  x.dispose(); p.dispose();
});

test('rope in place (out === x) and backward in place (out === dout); backward inverts forward', () => {
  const r = rng();
  for (const shape of [[2, 13, 3, 18], [1, 70, 8, 64]] as [number, number, number, number][]) {
    const [B, T, H, D] = shape, n = B * T * H * D;
    const pos = Int32Array.from({ length: B * T }, (_, i) => 11 + (i % T) * 2);
    const xv = randn(n, r);
    const p = Tensor.from(pos, [B * T], { dtype: 'i32' });
    const x = Tensor.from(xv, shape);
    const want = rope(x, p, { theta: 500000 });
    const res = rope(x, p, { theta: 500000, out: x });
    assert.equal(res, x);
    assert.deepEqual(x.data(), want.data(), 'in-place forward equals out-of-place');
    const back = ropeBackward(want, p, { theta: 500000 });
    ropeBackward(x, p, { theta: 500000, out: x });
    assert.deepEqual(x.data(), back.data(), 'in-place backward equals out-of-place');
    // the rotation is orthogonal: its transpose undoes it
    assertClose(`R^T R x ${shape}`, x.data() as Float32Array, xv, 1e-6, r.seed);
    for (const t of [p, x, want, back]) t.dispose();
  }
});

test('rope rejects bad ranks, odd D, wrong positions and theta with clear errors', () => {
  const x = Tensor.zeros([2, 3, 4, 8]), p = Tensor.zeros([6], { dtype: 'i32' });
  assert.throws(() => rope(Tensor.zeros([6, 4, 8]), p), /rope: 'x' must have rank 4, got shape \[6, 4, 8\]/);
  assert.throws(() => rope(Tensor.zeros([2, 3, 4, 7]), p), /rope: head dim D \(last axis of 'x' \[2, 3, 4, 7\]\) must be even and positive, got 7/);
  assert.throws(() => rope(Tensor.zeros([2, 3, 4, 0]), p), /rope: head dim D .* must be even and positive, got 0/);
  assert.throws(() => rope(x, Tensor.zeros([6])), /rope: 'positions' has dtype f32, expected i32/);
  assert.throws(() => rope(x, Tensor.zeros([5], { dtype: 'i32' })), /rope: 'positions' has shape \[5\], expected \[6\]/);
  assert.throws(() => rope(x, Tensor.zeros([3, 2], { dtype: 'i32' })), /rope: 'positions' has shape \[3, 2\], expected \[2, 3\]/);
  assert.throws(() => rope(x, Tensor.zeros([1, 2, 3], { dtype: 'i32' })),
    /rope: 'positions' must have shape \[B\*T\] = \[6\] or \[B, T\] = \[2, 3\], got \[1, 2, 3\]/);
  assert.throws(() => rope(Tensor.zeros([2, 3, 4, 8], { dtype: 'bf16' }), p), /rope: 'x' has dtype bf16, expected f32/);
  assert.throws(() => rope(x, p, { theta: 0 }), /rope: 'theta' must be a positive finite number, got 0/);
  assert.throws(() => rope(x, p, { theta: -10000 }), /'theta' must be a positive finite number/);
  assert.throws(() => rope(x, p, { out: Tensor.zeros([2, 3, 4, 4]) }), /rope: 'out' has shape \[2, 3, 4, 4\], expected \[2, 3, 4, 8\]/);
  assert.throws(() => ropeBackward(Tensor.zeros([2, 3, 4, 5]), p), /ropeBackward: head dim D .* must be even and positive, got 5/);
  assert.throws(() => ropeBackward(x, p, { mode: 'fast' as 'auto' }), /ropeBackward: 'mode' must be auto, table or token/);
  // native re-checks
  const fwd = native.rope_forward as (...a: unknown[]) => void;
  assert.throws(() => fwd(x.handle, p.handle, x.handle, 2, 3, 4, 7, 10000), /rope_forward: head dim D must be even, got 7/);
  assert.throws(() => fwd(x.handle, p.handle, x.handle, 2, 4, 4, 8, 10000), /rope_forward: tensor 'x' has 192 elements, the op needs at least 256/);
  assert.throws(() => fwd(x.handle, x.handle, x.handle, 2, 3, 4, 8, 10000), /rope_forward: tensor 'positions' has dtype f32, expected i32/);
  assert.throws(() => fwd(x.handle, p.handle, x.handle, 2, 3, 4, 8, -1), /rope_forward: 'theta' must be a positive finite number/);
  for (const t of [x, p]) t.dispose();
});
