// SwiGLU: the CUDA kernel's per-element math on the CPU (every machine), and
// the CUDA kernel against the CPU reference (GPU machines).
import { describe, test } from 'node:test';
import { Tensor, native, swiglu, swigluBackward } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

describe('swiglu host math (kernels/swiglu_math.h)', () => {
  test('matches the CPU reference op, including large |gate|', () => {
    const r = rng();
    const n = 4099;
    const g = randn(n, r, 4);
    g[0] = 90; g[1] = -90; g[2] = 0;
    const u = randn(n, r), d = randn(n, r);
    const gate = Tensor.from(g, [1, n]), up = Tensor.from(u, [1, n]), dout = Tensor.from(d, [1, n]);
    const out = Tensor.zeros([1, n]), dg = Tensor.zeros([1, n]), du = Tensor.zeros([1, n]);
    (native.hostmath_swiglu as (...a: unknown[]) => void)(gate.handle, up.handle, dout.handle, out.handle, dg.handle, du.handle, n);
    const ref = swiglu(gate, up);
    const refB = swigluBackward(dout, gate, up);
    assertClose('out', out.toFloat32(), ref.toFloat32(), 1e-6, r.seed);
    assertClose('dgate', dg.toFloat32(), refB.dgate.toFloat32(), 1e-6, r.seed);
    assertClose('dup', du.toFloat32(), refB.dup.toFloat32(), 1e-6, r.seed);
  });
});

describe('swiglu on CUDA', { skip: skipCuda }, () => {
  for (const rows of RAGGED) {
    test(`forward and backward, [${rows}, 96]`, () => {
      const r = rng();
      const shape = [rows, 96], n = rows * 96;
      const gate = Tensor.from(randn(n, r, 3), shape), up = Tensor.from(randn(n, r), shape), dout = Tensor.from(randn(n, r), shape);
      const [cg, cu, cd] = [gate, up, dout].map(onCuda);
      assertConforms('out', swiglu(cg, cu), swiglu(gate, up), 1e-5, r.seed);
      const got = swigluBackward(cd, cg, cu), want = swigluBackward(dout, gate, up);
      assertConforms('dgate', got.dgate, want.dgate, 1e-5, r.seed);
      assertConforms('dup', got.dup, want.dup, 1e-5, r.seed);
    });
  }
});
