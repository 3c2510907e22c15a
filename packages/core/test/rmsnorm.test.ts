import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, bf16ToF32, f32ToBf16, native, rmsnorm, rmsnormBackward } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// Tolerances (max-abs error relative to the largest reference value, see
// helpers.relErr). The kernel and tfjs both compute in float32 but sum in a
// different order (16-lane partial sums vs tfjs's sequential sum). Measured
// worst over 80 random runs up to [300, 1000] and [64, 4096]: y, rstd 2.3e-7,
// dx 2.3e-7, dweight 6.3e-7 (an N-term sum, so it grows with N). Set ~10x:
const TOL_Y = 2e-6, TOL_DX = 5e-6, TOL_DW = 1e-5;

type TF = Awaited<ReturnType<typeof tfjs>>;

/** dx = rstd*dy*w - x*rstd^3*dot/C is a difference of terms of size |rstd*dy*w|;
 * when they cancel (C = 1 cancels completely: dx ~ eps) the error is measured
 * against that term size rather than the tiny result. */
function assertDx(name: string, got: Float32Array, want: Float32Array, dyv: Float32Array, wv: Float32Array,
                  rstd: Float32Array, C: number, seed: number): void {
  let err = 0, scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]), Math.abs(rstd[Math.floor(i / C)] * dyv[i] * wv[i % C]));
  }
  assert.ok(err <= TOL_DX * scale, `${name}: error ${(err / scale).toExponential(3)} of the term size > ${TOL_DX} (seed ${seed})`);
}

/** The reference: y, rstd, and dx, dw from tf.grads of sum(y * dy). */
function reference(tf: TF, xv: Float32Array, wv: Float32Array, dyv: Float32Array, N: number, C: number, eps: number) {
  return tf.tidy(() => {
    const x = tf.tensor2d(xv, [N, C]), w = tf.tensor1d(wv), dy = tf.tensor2d(dyv, [N, C]);
    const rstdOf = (xx: typeof x) => tf.rsqrt(tf.add(tf.mean(tf.square(xx), -1, true), eps));
    const f = (xx: typeof x, ww: typeof w) => tf.mul(tf.mul(xx, rstdOf(xx)), ww);
    const [dx, dw] = tf.grads((xx, ww) => tf.sum(tf.mul(f(xx as typeof x, ww as typeof w), dy)))([x, w]);
    return {
      y: f(x, w).dataSync() as Float32Array,
      rstd: rstdOf(x).dataSync() as Float32Array,
      dx: dx.dataSync() as Float32Array,
      dw: dw.dataSync() as Float32Array,
    };
  });
}

// N and C deliberately not multiples of 16; the last shape is large enough to
// split rows over threads (and so to exercise the per-thread dweight partials).
const SHAPES: [number, number][] = [[1, 1], [3, 5], [37, 83], [129, 257], [300, 1000]];

test('rmsnorm forward and backward match tfjs (f32 weight)', async () => {
  const tf = await tfjs();
  const r = rng();
  for (const [N, C] of SHAPES) {
    const xv = randn(N * C, r, 2), wv = randn(C, r), dyv = randn(N * C, r);
    const ref = reference(tf, xv, wv, dyv, N, C, 1e-6);
    const x = Tensor.from(xv, [N, C]), w = Tensor.from(wv, [C], { category: 'trainable' });
    const { y, rstd } = rmsnorm(x, w);
    assert.deepEqual(y.shape, [N, C]);
    assert.deepEqual(rstd.shape, [N]);
    assertClose(`y ${N}x${C}`, y.data() as Float32Array, ref.y, TOL_Y, r.seed);
    assertClose(`rstd ${N}x${C}`, rstd.data() as Float32Array, ref.rstd, TOL_Y, r.seed);
    const dy = Tensor.from(dyv, [N, C]);
    const dw = Tensor.zeros([C], { category: 'grad' });
    const { dx, dweight } = rmsnormBackward(dy, x, w, rstd, { dweight: dw });
    assert.equal(dweight, dw);
    assertDx(`dx ${N}x${C}`, dx.data() as Float32Array, ref.dx, dyv, wv, ref.rstd, C, r.seed);
    assertClose(`dweight ${N}x${C}`, dw.data() as Float32Array, ref.dw, TOL_DW, r.seed);
    for (const t of [x, w, y, rstd, dy, dw, dx]) t.dispose();
  }
});

test('rmsnorm with a bf16 (frozen) weight equals tfjs on the rounded weight; dweight omitted', async () => {
  const tf = await tfjs();
  const r = rng();
  const [N, C] = [45, 131];
  const xv = randn(N * C, r), wv = randn(C, r, 0.5).map((v) => 1 + v), dyv = randn(N * C, r);
  const wRounded = wv.map((v) => bf16ToF32(f32ToBf16(v)));
  const ref = reference(tf, xv, wRounded, dyv, N, C, 1e-6);
  const x = Tensor.from(xv, [N, C]), wb = Tensor.from(wv, [C], { dtype: 'bf16', category: 'frozen' });
  const { y, rstd } = rmsnorm(x, wb);
  assertClose('bf16 y', y.data() as Float32Array, ref.y, TOL_Y, r.seed);
  const dy = Tensor.from(dyv, [N, C]);
  const res = rmsnormBackward(dy, x, wb, rstd);
  assert.equal(res.dweight, undefined);
  assertClose('bf16 dx', res.dx.data() as Float32Array, ref.dx, TOL_DX, r.seed);
  // the weight gradient can still be taken for a bf16 weight (into an f32 tensor)
  const dw = Tensor.zeros([C]);
  rmsnormBackward(dy, x, wb, rstd, { dweight: dw });
  assertClose('bf16 dweight', dw.data() as Float32Array, ref.dw, TOL_DW, r.seed);
  for (const t of [x, wb, y, rstd, dy, res.dx, dw]) t.dispose();
});

test('rmsnorm dweight accumulates (+=) across calls, dx is overwritten', () => {
  const r = rng();
  for (const [N, C] of [[29, 67], [300, 1000]] as [number, number][]) {
    const x = Tensor.from(randn(N * C, r), [N, C]), w = Tensor.from(randn(C, r), [C]);
    const dy = Tensor.from(randn(N * C, r), [N, C]);
    const { y, rstd } = rmsnorm(x, w);
    const dw = Tensor.zeros([C]);
    const dx = Tensor.from(new Float32Array(N * C).fill(NaN), [N, C]);
    rmsnormBackward(dy, x, w, rstd, { dweight: dw, dx });
    const once = Float32Array.from(dw.data() as Float32Array);
    const dx1 = Float32Array.from(dx.data() as Float32Array);
    assert.ok(dx1.every(Number.isFinite), 'dx overwrote the NaNs it started with');
    rmsnormBackward(dy, x, w, rstd, { dweight: dw, dx });
    // partials are summed before the single += into dweight, so 2x is exact
    assertClose(`dweight twice ${N}x${C}`, dw.data() as Float32Array, once.map((v) => 2 * v), 0, r.seed);
    assertClose(`dx written ${N}x${C}`, dx.data() as Float32Array, dx1, 0, r.seed);
    for (const t of [x, w, dy, y, rstd, dw, dx]) t.dispose();
  }
});

test('rmsnorm eps is configurable and matches tfjs; y may be written into x', async () => {
  const tf = await tfjs();
  const r = rng();
  const [N, C] = [17, 33];
  // small inputs so eps = 0.1 matters
  const xv = randn(N * C, r, 0.05), wv = randn(C, r), dyv = randn(N * C, r);
  const ref = reference(tf, xv, wv, dyv, N, C, 0.1);
  const x = Tensor.from(xv, [N, C]), w = Tensor.from(wv, [C]), dy = Tensor.from(dyv, [N, C]);
  const { y, rstd } = rmsnorm(x, w, { eps: 0.1 });
  assertClose('eps y', y.data() as Float32Array, ref.y, TOL_Y, r.seed);
  assertClose('eps rstd', rstd.data() as Float32Array, ref.rstd, TOL_Y, r.seed);
  const dw = Tensor.zeros([C]);
  const { dx } = rmsnormBackward(dy, x, w, rstd, { dweight: dw });
  assertClose('eps dx', dx.data() as Float32Array, ref.dx, TOL_DX, r.seed);
  assertClose('eps dweight', dw.data() as Float32Array, ref.dw, TOL_DW, r.seed);
  const eps1 = rmsnorm(x, w);  // default 1e-6 differs
  assert.ok(Math.abs((eps1.rstd.data() as Float32Array)[0] - (rstd.data() as Float32Array)[0]) > 1e-3);
  // in place (inference): out === x
  const same = rmsnorm(x, w, { out: x, eps: 0.1 });
  assert.equal(same.y, x);
  assertClose('in place y', x.data() as Float32Array, ref.y, TOL_Y, r.seed);
  for (const t of [x, w, dy, y, rstd, dw, dx, eps1.y, eps1.rstd, same.rstd]) t.dispose();
});

test('rmsnorm rejects bad ranks, shapes, dtypes and eps with clear errors', () => {
  const x = Tensor.zeros([4, 6]), w = Tensor.zeros([6]), rstd = Tensor.zeros([4]);
  assert.throws(() => rmsnorm(Tensor.zeros([24]), w), /rmsnorm: 'x' must have rank 2, got shape \[24\]/);
  assert.throws(() => rmsnorm(x, Tensor.zeros([1, 6])), /rmsnorm: 'weight' must have rank 1/);
  assert.throws(() => rmsnorm(x, Tensor.zeros([5])), /rmsnorm: 'weight' has shape \[5\], expected \[6\]/);
  assert.throws(() => rmsnorm(x, Tensor.zeros([6], { dtype: 'f16' })), /rmsnorm: 'weight' has dtype f16, expected f32 or bf16/);
  assert.throws(() => rmsnorm(Tensor.zeros([4, 6], { dtype: 'bf16' }), w), /rmsnorm: 'x' has dtype bf16, expected f32/);
  assert.throws(() => rmsnorm(x, w, { eps: 0 }), /rmsnorm: 'eps' must be a positive finite number, got 0/);
  assert.throws(() => rmsnorm(x, w, { eps: -1e-6 }), /'eps' must be a positive finite number/);
  assert.throws(() => rmsnorm(x, w, { eps: NaN }), /'eps' must be a positive finite number/);
  assert.throws(() => rmsnorm(x, w, { out: Tensor.zeros([4, 5]) }), /rmsnorm: 'out' has shape \[4, 5\], expected \[4, 6\]/);
  assert.throws(() => rmsnorm(x, w, { rstd: Tensor.zeros([6]) }), /rmsnorm: 'rstd' has shape \[6\], expected \[4\]/);
  assert.throws(() => rmsnormBackward(Tensor.zeros([4, 5]), x, w, rstd), /rmsnormBackward: 'dy' has shape \[4, 5\], expected \[4, 6\]/);
  assert.throws(() => rmsnormBackward(x, x, w, Tensor.zeros([3])), /rmsnormBackward: 'rstd' has shape \[3\], expected \[4\]/);
  assert.throws(() => rmsnormBackward(x, x, w, rstd, { dweight: Tensor.zeros([6], { dtype: 'bf16' }) }),
    /rmsnormBackward: 'dweight' has dtype bf16, expected f32/);
  assert.throws(() => rmsnormBackward(x, x, w, rstd, { dweight: Tensor.zeros([7]) }),
    /rmsnormBackward: 'dweight' has shape \[7\], expected \[6\]/);
  assert.throws(() => rmsnormBackward(x, x, 'w' as unknown as Tensor, rstd), /'weight' must be a Tensor, got string/);
  // the native side re-checks element counts and eps before touching memory
  const fwd = native.rmsnorm_forward as (...a: unknown[]) => void;
  assert.throws(() => fwd(x.handle, w.handle, x.handle, rstd.handle, 5, 6, 1e-6),
    /rmsnorm_forward: tensor 'x' has 24 elements, the op needs at least 30/);
  assert.throws(() => fwd(x.handle, w.handle, x.handle, rstd.handle, 4, 6, 0), /rmsnorm_forward: 'eps' must be a positive finite number/);
  assert.throws(() => fwd(x.handle, rstd.handle, x.handle, rstd.handle, 4, 6, 1e-6),
    /rmsnorm_forward: tensor 'weight' has 4 elements, the op needs at least 6/);
  const bwd = native.rmsnorm_backward as (...a: unknown[]) => void;
  assert.throws(() => bwd(x.handle, x.handle, w.handle, rstd.handle, x.handle, rstd.handle, 4, 6),
    /rmsnorm_backward: tensor 'dweight' has 4 elements, the op needs at least 6/);
  w.dispose();
  assert.throws(() => rmsnorm(x, w), /rmsnorm: 'weight' was disposed/);
  for (const t of [x, rstd]) t.dispose();
});
