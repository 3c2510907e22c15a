// RMSNorm: the CUDA kernels' per-element math on the CPU (every machine), and
// the CUDA kernels against the CPU reference (GPU machines).
import { describe, test } from 'node:test';
import { Tensor, native, rmsnorm, rmsnormBackward } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

// Both sides compute in f32 and differ only in summation order (the CPU sums
// in 32 lanes, the host math sequentially, the GPU by shuffles); dweight is an
// N-term sum, so it gets more room.
const TOL = 2e-6, TOL_DW = 1e-5;

describe('rmsnorm host math (kernels/rmsnorm_math.h)', () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    test(`matches the CPU reference op, ${wdt} weight`, () => {
      const r = rng();
      for (const [N, C] of [[3, 5], [37, 83], [65, 1000]] as [number, number][]) {
        const x = Tensor.from(randn(N * C, r, 2), [N, C]), dy = Tensor.from(randn(N * C, r), [N, C]);
        const w = Tensor.from(randn(C, r), [C], { dtype: wdt });
        const dw0 = randn(C, r);
        const y = Tensor.zeros([N, C]), rstd = Tensor.zeros([N]), dx = Tensor.zeros([N, C]), dw = Tensor.from(dw0, [C]);
        (native.hostmath_rmsnorm as (...a: unknown[]) => void)(x.handle, w.handle, dy.handle, y.handle, rstd.handle,
          dx.handle, dw.handle, N, C, 1e-6);
        const ref = rmsnorm(x, w, { eps: 1e-6 });
        const refDw = Tensor.from(dw0, [C]);
        const refB = rmsnormBackward(dy, x, w, ref.rstd, { dweight: refDw });
        assertClose(`y ${N}x${C}`, y.toFloat32(), ref.y.toFloat32(), TOL, r.seed);
        assertClose(`rstd ${N}x${C}`, rstd.toFloat32(), ref.rstd.toFloat32(), TOL, r.seed);
        assertClose(`dx ${N}x${C}`, dx.toFloat32(), refB.dx.toFloat32(), 1e-5, r.seed);
        assertClose(`dweight ${N}x${C}`, dw.toFloat32(), refDw.toFloat32(), TOL_DW, r.seed);
      }
    });
  }
});

describe('rmsnorm on CUDA', { skip: skipCuda }, () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    for (const rows of RAGGED) {
      for (const C of [5, 96, 1031]) {
        test(`forward and backward, [${rows}, ${C}], ${wdt} weight`, () => {
          const r = rng();
          const x = Tensor.from(randn(rows * C, r, 2), [rows, C]), dy = Tensor.from(randn(rows * C, r), [rows, C]);
          const w = Tensor.from(randn(C, r), [C], { dtype: wdt });
          const dw0 = randn(C, r);
          const want = rmsnorm(x, w, { eps: 1e-5 });
          const wantDw = Tensor.from(dw0, [C]);
          const wantB = rmsnormBackward(dy, x, w, want.rstd, { dweight: wantDw });
          const [cx, cdy, cw] = [x, dy, w].map(onCuda);
          const got = rmsnorm(cx, cw, { eps: 1e-5 });
          assertConforms('y', got.y, want.y, 1e-5, r.seed);
          assertConforms('rstd', got.rstd, want.rstd, 1e-5, r.seed);
          const gotDw = onCuda(Tensor.from(dw0, [C]));
          const gotB = rmsnormBackward(cdy, cx, cw, got.rstd, { dweight: gotDw });
          assertConforms('dx', gotB.dx, wantB.dx, 1e-5, r.seed);
          assertConforms('dweight (accumulated)', gotDw, wantDw, 1e-5, r.seed);
          // without dweight; dx written over dy in place
          const inPlace = onCuda(dy);
          rmsnormBackward(inPlace, cx, cw, got.rstd, { dx: inPlace });
          assertConforms('dx in place', inPlace, wantB.dx, 1e-5, r.seed);
        });
      }
    }
  }
});
