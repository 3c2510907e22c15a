// Elementwise helpers (axpy, fill, group pooling): the CUDA kernels'
// per-element math on the CPU (every machine), and the CUDA kernels against
// the CPU reference (GPU machines).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, addInPlace, fill, groupPoolBackward, groupPoolForward, native } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

type Native = (...a: unknown[]) => void;

describe('elementwise host math (kernels/elementwise_math.h)', () => {
  test('axpy matches the CPU reference op', () => {
    const r = rng();
    const n = 4099;
    const yv = randn(n, r), xv = randn(n, r);
    const y = Tensor.from(yv, [n]), x = Tensor.from(xv, [n]), ref = Tensor.from(yv, [n]);
    (native.hostmath_elementwise_axpy as Native)(y.handle, x.handle, -0.75, n);
    addInPlace(ref, x, -0.75);
    assertClose('y', y.toFloat32(), ref.toFloat32(), 1e-6, r.seed);
  });

  for (const accumulate of [false, true]) {
    test(`group pooling matches the CPU reference ops (${accumulate ? 'accumulated' : 'written'} dx)`, () => {
      const r = rng();
      for (const [N, G, L] of [[1, 1, 1], [7, 5, 3], [33, 12, 32], [5, 4, 128]] as [number, number, number][]) {
        const inF = G * L, scale = inF / L;
        const x = Tensor.from(randn(N * inF, r), [N, inF]), dp = Tensor.from(randn(N * G, r), [N, G]);
        const dx0 = randn(N * inF, r);
        const p = Tensor.zeros([N, G]), dx = Tensor.from(dx0, [N, inF]);
        (native.hostmath_elementwise_group_pool as Native)(x.handle, p.handle, dp.handle, dx.handle, N, inF, L, scale, accumulate);
        const refDx = Tensor.from(dx0, [N, inF]);
        assertClose(`p ${N}x${G}x${L}`, p.toFloat32(), groupPoolForward(x, L, { scale }).toFloat32(), 1e-6, r.seed);
        const want = groupPoolBackward(dp, L, accumulate ? { scale, dxInto: refDx } : { scale });
        assertClose(`dx ${N}x${G}x${L}`, dx.toFloat32(), want.toFloat32(), 1e-6, r.seed);
      }
    });
  }
});

describe('elementwise on CUDA', { skip: skipCuda }, () => {
  for (const rows of RAGGED) {
    test(`addInPlace and fill, [${rows}, 97]`, () => {
      const r = rng();
      const shape = [rows, 97], n = rows * 97;
      const y = Tensor.from(randn(n, r), shape), x = Tensor.from(randn(n, r), shape);
      const cy = onCuda(y), cx = onCuda(x);
      assert.equal(addInPlace(cy, cx, 0.3), cy);
      assertConforms('y += 0.3 x', cy, addInPlace(y, x, 0.3), 1e-6, r.seed);
      addInPlace(cy, cy, -0.5);
      assertConforms('y += -0.5 y', cy, addInPlace(y, y, -0.5), 1e-6, r.seed);
      fill(cy, 2.5);
      assert.ok(valuesOf(cy).every((v) => v === 2.5), 'fill');
    });
    for (const L of [1, 3, 32, 128]) {
      test(`group pooling forward and backward, [${rows}, ${5 * L}], groups of ${L}`, () => {
        const r = rng();
        const inF = 5 * L, scale = inF / L;
        const x = Tensor.from(randn(rows * inF, r), [rows, inF]), dp = Tensor.from(randn(rows * 5, r), [rows, 5]);
        assertConforms('p', groupPoolForward(onCuda(x), L, { scale }), groupPoolForward(x, L, { scale }), 1e-6, r.seed);
        const cdp = onCuda(dp);
        assertConforms('dx written', groupPoolBackward(cdp, L, { scale }), groupPoolBackward(dp, L, { scale }), 1e-6, r.seed);
        const dx0 = randn(rows * inF, r);
        const want = Tensor.from(dx0, [rows, inF]), got = onCuda(want);
        groupPoolBackward(dp, L, { scale, dxInto: want });
        groupPoolBackward(cdp, L, { scale, dxInto: got });
        assertConforms('dx accumulated', got, want, 1e-6, r.seed);
      });
    }
  }
});
