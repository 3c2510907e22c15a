// Gradient clipping: the CUDA kernels' math on the CPU with the CUDA
// reduction's lane split (every machine), and grad_sumsq / grad_scale /
// clipGradNorm on CUDA against the CPU reference (GPU machines).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Tensor, clipGradNorm, native } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda } from './cuda_helpers.js';
import { randn, rng } from './helpers.js';

type SumsqFn = (x: unknown) => number;
const sumsq = (t: Tensor) => (native.grad_sumsq as SumsqFn)(t.handle);
/** the lane count of cuda/grad_clip.cu: min(ceil(n / 256), 1024) blocks of 256 threads */
const lanesFor = (n: number) => Math.min(Math.max(Math.ceil(n / 256), 1), 1024) * 256;

describe('grad_clip host math (kernels/grad_clip_math.h)', () => {
  for (const n of [1, 255, 4099, 300001]) {
    test(`sum of squares with the CUDA lane split equals grad_sumsq, ${n} elements`, () => {
      const r = rng();
      const x = Tensor.from(randn(n, r, 3), [n]);
      const got = (native.hostmath_grad_sumsq as (x: unknown, l: number) => number)(x.handle, lanesFor(n));
      const want = sumsq(x);
      assert.ok(Math.abs(got - want) <= 1e-12 * want, `${got} vs ${want} (seed ${r.seed})`);
      x.dispose();
    });
  }

  test('NaN and inf propagate as on the CPU; scale equals grad_scale', () => {
    const r = rng();
    const a = randn(1000, r);
    a[500] = Infinity;
    const x = Tensor.from(a, [1000]);
    assert.equal((native.hostmath_grad_sumsq as (x: unknown, l: number) => number)(x.handle, 256), sumsq(x));
    a[3] = NaN;
    const y = Tensor.from(a, [1000]);
    assert.ok(Number.isNaN((native.hostmath_grad_sumsq as (x: unknown, l: number) => number)(y.handle, 256)));
    assert.ok(Number.isNaN(sumsq(y)));
    const b = randn(777, r), u = Tensor.from(b, [777]), v = Tensor.from(b, [777]);
    (native.hostmath_grad_scale as (x: unknown, s: number) => void)(u.handle, 0.37);
    (native.grad_scale as (x: unknown, s: number) => void)(v.handle, 0.37);
    assert.deepEqual(u.toFloat32(), v.toFloat32());
    for (const t of [x, y, u, v]) t.dispose();
  });
});

describe('grad_clip on CUDA', { skip: skipCuda }, () => {
  for (const rows of [...RAGGED, 4099]) {
    test(`grad_sumsq and grad_scale, [${rows}, 96]`, () => {
      const r = rng();
      const n = rows * 96;
      const x = Tensor.from(randn(n, r, 2), [rows, 96]), dx = onCuda(x);
      const want = sumsq(x), got = sumsq(dx);
      assert.equal(typeof got, 'number');
      assert.ok(Math.abs(got - want) <= 1e-12 * want, `${got} vs ${want} (seed ${r.seed})`);
      (native.grad_scale as (x: unknown, s: number) => void)(x.handle, 0.61);
      (native.grad_scale as (x: unknown, s: number) => void)(dx.handle, 0.61);
      assertConforms('scaled', dx, x, 0, r.seed);
      x.dispose(); dx.dispose();
    });
  }

  test('grad_sumsq of an empty tensor is 0; NaN and inf propagate', () => {
    const e = onCuda(Tensor.zeros([0]));
    assert.equal(sumsq(e), 0);
    const a = new Float32Array(3000).fill(1);
    a[2999] = Infinity;
    const inf = onCuda(Tensor.from(a, [3000]));
    assert.equal(sumsq(inf), Infinity);
    a[0] = NaN;
    const nan = onCuda(Tensor.from(a, [3000]));
    assert.ok(Number.isNaN(sumsq(nan)));
    for (const t of [e, inf, nan]) t.dispose();
  });

  test('clipGradNorm over CUDA grads equals the CPU result', () => {
    const r = rng();
    const sizes = [1000, 33333, 7];
    const cpu = sizes.map((n) => Tensor.from(randn(n, r), [n])), dev = cpu.map(onCuda);
    const nc = clipGradNorm(cpu, 1.0), nd = clipGradNorm(dev, 1.0);
    assert.ok(Math.abs(nc - nd) <= 1e-12 * nc, `${nd} vs ${nc} (seed ${r.seed})`);
    cpu.forEach((t, k) => assertConforms(`grads[${k}]`, dev[k], t, 1e-7, r.seed));
    for (const t of [...cpu, ...dev]) t.dispose();
  });
});
