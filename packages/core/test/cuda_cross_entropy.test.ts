// Fused cross-entropy: the CUDA kernels' per-element math (log-sum-exp merge,
// loss, dlogits) on the CPU (every machine), and the CUDA op against the CPU
// reference (GPU machines).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, bf16ToF32, crossEntropyBackward, crossEntropyForward, f32ToBf16, native } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

type R = ReturnType<typeof rng>;

function targetsOf(r: R, N: number, V: number, ignoredFrac: number, ignoreIndex: number): Int32Array {
  const t = new Int32Array(N);
  for (let i = 0; i < N; i++) t[i] = r.next() < ignoredFrac ? ignoreIndex : Math.floor(r.next() * V);
  return t;
}

const bf16Round = (a: Float32Array): Float32Array => a.map((v) => bf16ToF32(f32ToBf16(v)));

describe('cross_entropy host math (kernels/cross_entropy_math.h)', () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    test(`matches the CPU reference op, ${wdt} head, ignored tokens`, () => {
      const r = rng();
      for (const [N, C, V, frac] of [[1, 3, 2, 0], [37, 24, 101, 0.3], [50, 16, 1000, 0], [9, 8, 50, 1]] as [number, number, number, number][]) {
        const h = Tensor.from(randn(N * C, r, 2), [N, C]), w = Tensor.from(randn(V * C, r, 1 / Math.sqrt(C)), [V, C], { dtype: wdt });
        const targets = Tensor.from(targetsOf(r, N, V, frac, -100), [N], { dtype: 'i32' });
        const dw0 = randn(V * C, r), scale = 1 / Math.max(1, N);
        const loss = Tensor.zeros([N]), lse = Tensor.zeros([N]), dh = Tensor.zeros([N, C]), dw = Tensor.from(dw0, [V, C]);
        (native.hostmath_cross_entropy as (...a: unknown[]) => void)(h.handle, w.handle, targets.handle, N, C, V, -100, scale,
          loss.handle, lse.handle, dh.handle, dw.handle);
        const want = crossEntropyForward(h, w, targets, { chunkTokens: 7 });
        const wantDw = Tensor.from(dw0, [V, C]);
        const wantB = crossEntropyBackward(h, w, targets, want.lse, scale, { chunkTokens: 7, dw: wantDw });
        const tag = `${N}x${C}x${V}`;
        // f32 on both sides; the CPU's vectorised exp and other summation
        // orders differ by a few ulps (as in cross_entropy.test.ts)
        assertClose(`loss ${tag}`, loss.toFloat32(), want.losses.toFloat32(), 2e-6, r.seed);
        assertClose(`lse ${tag}`, lse.toFloat32(), want.lse.toFloat32(), 2e-6, r.seed);
        assertClose(`dh ${tag}`, dh.toFloat32(), wantB.dh.toFloat32(), 3e-5, r.seed);
        assertClose(`dw ${tag}`, dw.toFloat32(), wantDw.toFloat32(), 3e-5, r.seed);
      }
    });
  }
  test('a NaN logit gives a NaN lse and loss, as on the CPU (not skipped by the (max, sum) merge)', () => {
    const r = rng();
    const [N, C, V] = [6, 8, 70];
    const wv = randn(V * C, r);
    wv[37 * C + 2] = NaN;  // logit 37 of every token is NaN
    const h = Tensor.from(randn(N * C, r), [N, C]), w = Tensor.from(wv, [V, C]);
    const targets = Tensor.from(targetsOf(r, N, V, 0, -100), [N], { dtype: 'i32' });
    const loss = Tensor.zeros([N]), lse = Tensor.zeros([N]), dh = Tensor.zeros([N, C]), dw = Tensor.zeros([V, C]);
    (native.hostmath_cross_entropy as (...a: unknown[]) => void)(h.handle, w.handle, targets.handle, N, C, V, -100, 1,
      loss.handle, lse.handle, dh.handle, dw.handle);
    const want = crossEntropyForward(h, w, targets);
    for (const [name, got, ref] of [['lse', lse, want.lse], ['loss', loss, want.losses]] as const) {
      const g = got.toFloat32(), w2 = ref.toFloat32();
      for (let i = 0; i < N; i++) {
        assert.ok(Number.isNaN(w2[i]), `CPU ${name}[${i}] = ${w2[i]}`);
        assert.ok(Number.isNaN(g[i]), `host math ${name}[${i}] = ${g[i]}, the CPU gives NaN`);
      }
    }
  });
});

// tb::cuda::gemm rounds its operands to bf16 (fp32 accumulation). The
// forward's inputs are rounded to bf16 beforehand on both sides, so its logits
// are exact products summed in f32 and agree to f32 summation order. The
// backward's GEMMs round dlogits to bf16 (relative 2^-9 = 2e-3 per element),
// which dh and dw inherit: they get 1e-2.
const TOL_FWD = 1e-5, TOL_BWD = 1e-2;

describe('cross_entropy on CUDA', { skip: skipCuda }, () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    for (const N of RAGGED) {
      for (const [C, V, frac, chunk] of [[96, 257, 0, 256], [33, 1000, 0.3, 7], [64, 5000, 0.5, 32]] as [number, number, number, number][]) {
        test(`forward and backward, N ${N}, C ${C}, V ${V}, ${frac * 100}% ignored, chunk ${chunk}, ${wdt} head`, () => {
          const r = rng();
          const h = Tensor.from(bf16Round(randn(N * C, r, 2)), [N, C]);
          const w = Tensor.from(bf16Round(randn(V * C, r, 1 / Math.sqrt(C))), [V, C], { dtype: wdt });
          const targets = Tensor.from(targetsOf(r, N, V, frac, -100), [N], { dtype: 'i32' });
          const [ch, cw, ct] = [h, w, targets].map(onCuda);
          const want = crossEntropyForward(h, w, targets, { chunkTokens: chunk });
          const got = crossEntropyForward(ch, cw, ct, { chunkTokens: chunk });
          assert.equal(got.count, want.count);
          assert.ok(Math.abs(got.sum - want.sum) <= TOL_FWD * Math.max(1, Math.abs(want.sum)), `sum ${got.sum} vs ${want.sum} (seed ${r.seed})`);
          assertConforms('losses', got.losses, want.losses, TOL_FWD, r.seed);
          assertConforms('lse', got.lse, want.lse, TOL_FWD, r.seed);
          const scale = 1 / Math.max(1, want.count);
          const dw0 = randn(V * C, r, 0.01);
          const wantDw = Tensor.from(dw0, [V, C]), gotDw = onCuda(wantDw);
          const wantB = crossEntropyBackward(h, w, targets, want.lse, scale, { chunkTokens: chunk, dw: wantDw });
          const gotB = crossEntropyBackward(ch, cw, ct, got.lse, scale, { chunkTokens: chunk, dw: gotDw });
          assertConforms('dh', gotB.dh, wantB.dh, TOL_BWD, r.seed);
          assertConforms('dw (accumulated)', gotDw, wantDw, TOL_BWD, r.seed);
        });
      }
    }
  }
  test('all tokens ignored: zero losses and dh, dw untouched', () => {
    const h = onCuda(Tensor.from(randn(5 * 8, rng()), [5, 8])), w = onCuda(Tensor.from(randn(10 * 8, rng()), [10, 8]));
    const t = onCuda(Tensor.from(new Int32Array(5).fill(-100), [5], { dtype: 'i32' }));
    const f = crossEntropyForward(h, w, t);
    assert.equal(f.count, 0);
    assert.equal(f.sum, 0);
    const dw = onCuda(Tensor.from(new Float32Array(80).fill(1), [10, 8]));
    const b = crossEntropyBackward(h, w, t, f.lse, 1, { dw, dh: onCuda(Tensor.from(new Float32Array(40).fill(3), [5, 8])) });
    assertConforms('dh', b.dh, new Float32Array(40), 0);
    assertConforms('dw', dw, new Float32Array(80).fill(1), 0);
  });
  test('a target outside [0, V) is a RangeError naming its position', () => {
    const h = onCuda(Tensor.zeros([3, 4])), w = onCuda(Tensor.zeros([6, 4]));
    const t = onCuda(Tensor.from([1, -100, 6], [3], { dtype: 'i32' }));
    assert.throws(() => crossEntropyForward(h, w, t), /target 6 at position 2 is outside \[0, 6\)/);
  });
});
