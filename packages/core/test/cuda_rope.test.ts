// RoPE: the CUDA kernel's per-element math (kernels/rope_math.h) on the CPU
// against the CPU reference op (every machine), and the CUDA kernel against
// the CPU op (GPU machines).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Tensor, native, rope, ropeBackward } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

type R = ReturnType<typeof rng>;

/** Positions of packed rows: each segment restarts at 0 (or at an offset, as
 * a decode continues a sequence). */
function packedPositions(B: number, T: number, r: R, offset = 0): Int32Array {
  const pos = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let p = offset;
    for (let t = 0; t < T; t++) {
      if (r.next() < 0.05) p = 0;
      pos[b * T + t] = p++;
    }
  }
  return pos;
}

describe('rope host math (kernels/rope_math.h)', () => {
  for (const [D, theta] of [[64, 10000], [6, 10000], [128, 500000], [2, 1e6]] as const) {
    test(`forward and backward rotations match the CPU op, D=${D} theta=${theta}`, () => {
      const r = rng();
      const B = 2, T = 37, H = 3, n = B * T * H * D;
      const pos = packedPositions(B, T, r);
      pos[0] = -5; pos[1] = 131071; pos[2] = 2_000_000;  // negative and large positions
      const x = Tensor.from(randn(n, r), [B, T, H, D]), dout = Tensor.from(randn(n, r), [B, T, H, D]);
      const positions = Tensor.from(pos, [B * T], { dtype: 'i32' });
      const out = Tensor.zeros([B, T, H, D]), dx = Tensor.zeros([B, T, H, D]);
      (native.hostmath_rope as (...a: unknown[]) => void)(x.handle, dout.handle, positions.handle, out.handle, dx.handle,
        B * T, H, D, theta);
      const ref = rope(x, positions, { theta }), refB = ropeBackward(dout, positions, { theta });
      assertClose('out', out.toFloat32(), ref.toFloat32(), 1e-6, r.seed);
      assertClose('dx', dx.toFloat32(), refB.toFloat32(), 1e-6, r.seed);
      for (const t of [x, dout, positions, out, dx, ref, refB]) t.dispose();
    });
  }
});

describe('rope host math with a frequency table and an attention scale (scaled variants)', () => {
  test('forward and backward rotations match the CPU op', () => {
    const r = rng();
    const B = 2, T = 21, H = 3, D = 16, n = B * T * H * D;
    const pos = packedPositions(B, T, r, 5000);
    const invFreq = Float32Array.from({ length: D / 2 }, () => 1e-4 + r.next());
    const x = Tensor.from(randn(n, r), [B, T, H, D]), dout = Tensor.from(randn(n, r), [B, T, H, D]);
    const positions = Tensor.from(pos, [B * T], { dtype: 'i32' });
    const out = Tensor.zeros([B, T, H, D]), dx = Tensor.zeros([B, T, H, D]);
    (native.hostmath_rope as (...a: unknown[]) => void)(x.handle, dout.handle, positions.handle, out.handle, dx.handle,
      B * T, H, D, 10000, invFreq, 1.25);
    const ref = rope(x, positions, { invFreq, attentionScale: 1.25 }), refB = ropeBackward(dout, positions, { invFreq, attentionScale: 1.25 });
    assertClose('out', out.toFloat32(), ref.toFloat32(), 1e-6, r.seed);
    assertClose('dx', dx.toFloat32(), refB.toFloat32(), 1e-6, r.seed);
    for (const t of [x, dout, positions, out, dx, ref, refB]) t.dispose();
  });
});

describe('rope on CUDA', { skip: skipCuda }, () => {
  RAGGED.forEach((T, i) => {
    const D = [64, 128, 6, 96, 2][i], B = 2, H = 3;
    test(`forward and backward, B=${B} T=${T} H=${H} D=${D}, packed positions`, () => {
      const r = rng();
      const n = B * T * H * D, shape = [B, T, H, D];
      const pos = packedPositions(B, T, r, T === 1 ? 4095 : 0);
      const x = Tensor.from(randn(n, r), shape), dout = Tensor.from(randn(n, r), shape);
      const positions = Tensor.from(pos, [B, T], { dtype: 'i32' });
      const [cx, cd, cp] = [x, dout, positions].map(onCuda);
      for (const theta of [10000, 500000]) {
        const got = rope(cx, cp, { theta }), gotB = ropeBackward(cd, cp, { theta });
        assert.equal(got.device, 'cuda');
        const want = rope(x, positions, { theta }), wantB = ropeBackward(dout, positions, { theta });
        assertConforms(`out (theta ${theta})`, got, want, 1e-6, r.seed);
        assertConforms(`dx (theta ${theta})`, gotB, wantB, 1e-6, r.seed);
        for (const t of [got, gotB, want, wantB]) t.dispose();
      }
      for (const t of [x, dout, positions, cx, cd, cp]) t.dispose();
    });
  });

  test('a frequency table and an attention scale (scaled variants) match the CPU op', () => {
    const r = rng();
    const B = 2, T = 37, H = 3, D = 64, n = B * T * H * D;
    const invFreq = Float32Array.from({ length: D / 2 }, () => 1e-4 + r.next());
    const x = Tensor.from(randn(n, r), [B, T, H, D]), dout = Tensor.from(randn(n, r), [B, T, H, D]);
    const positions = Tensor.from(packedPositions(B, T, r, 9000), [B, T], { dtype: 'i32' });
    const [cx, cd, cp] = [x, dout, positions].map(onCuda);
    const opts = { invFreq, attentionScale: 1.2079 };
    const got = rope(cx, cp, opts), gotB = ropeBackward(cd, cp, opts);
    const want = rope(x, positions, opts), wantB = ropeBackward(dout, positions, opts);
    assertConforms('out', got, want, 1e-6, r.seed);
    assertConforms('dx', gotB, wantB, 1e-6, r.seed);
    for (const t of [x, dout, positions, cx, cd, cp, got, gotB, want, wantB]) t.dispose();
  });

  test('in place (out = x) equals out of place', () => {
    const r = rng();
    const B = 1, T = 33, H = 4, D = 64, n = B * T * H * D;
    const x = Tensor.from(randn(n, r), [B, T, H, D]);
    const positions = Tensor.from(packedPositions(B, T, r, 100), [B * T], { dtype: 'i32' });
    const cx = onCuda(x), cp = onCuda(positions);
    const want = rope(x, positions);
    rope(cx, cp, { out: cx });
    assertConforms('out', cx, want, 1e-6, r.seed);
    ropeBackward(cx, cp, { out: cx });  // the transposed rotation undoes it
    assertConforms('round trip', cx, valuesOf(x), 1e-5, r.seed);
    for (const t of [x, positions, cx, cp, want]) t.dispose();
  });

  test('positions on another device are rejected', () => {
    const x = onCuda(Tensor.zeros([1, 2, 1, 4]));
    const positions = Tensor.from(new Int32Array(2), [2], { dtype: 'i32' });
    assert.throws(() => rope(x, positions), /positions/);
    for (const t of [x, positions]) t.dispose();
  });
});
