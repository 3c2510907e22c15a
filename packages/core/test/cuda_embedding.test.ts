// Embedding: the CUDA kernels' per-element math and host id grouping on the
// CPU (every machine), and the CUDA kernels against the CPU reference (GPU
// machines).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, embeddingBackward, embeddingForward, native } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { randn, rng } from './helpers.js';

function randomIds(r: ReturnType<typeof rng>, N: number, V: number): Int32Array {
  const ids = new Int32Array(N);
  for (let i = 0; i < N; i++) ids[i] = Math.floor(r.next() * V);
  ids[0] = 0; ids[N - 1] = V - 1;
  return ids;
}

// The lookup is a copy and the backward adds each id's rows in token order,
// one at a time, as the CPU does: both compare exactly.
describe('embedding host math (kernels/embedding_math.h)', () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    test(`matches the CPU reference op exactly, ${wdt} table, repeated ids`, () => {
      const r = rng();
      for (const [N, V, C] of [[1, 1, 1], [200, 50, 37], [67, 1000, 96]] as [number, number, number][]) {
        const ids = Tensor.from(randomIds(r, N, V), [N], { dtype: 'i32' });
        const w = Tensor.from(randn(V * C, r), [V, C], { dtype: wdt });
        const dout = Tensor.from(randn(N * C, r), [N, C]);
        const dw0 = randn(V * C, r);
        const out = Tensor.zeros([N, C]), dw = Tensor.from(dw0, [V, C]);
        (native.hostmath_embedding as (...a: unknown[]) => void)(ids.handle, w.handle, dout.handle, out.handle, dw.handle, N, V, C);
        assert.deepEqual(out.toFloat32(), embeddingForward(ids, w).toFloat32(), `out ${N}x${V}x${C} (seed ${r.seed})`);
        const want = embeddingBackward(dout, ids, Tensor.from(dw0, [V, C]));
        assert.deepEqual(dw.toFloat32(), want.toFloat32(), `dweight ${N}x${V}x${C} (seed ${r.seed})`);
      }
    });
  }
});

describe('embedding on CUDA', { skip: skipCuda }, () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    for (const N of RAGGED) {
      for (const [V, C] of [[3, 5], [97, 96], [1000, 257]] as [number, number][]) {
        test(`forward and backward, ${N} ids, [${V}, ${C}] ${wdt} table`, () => {
          const r = rng();
          const ids = Tensor.from(randomIds(r, N, V), [N], { dtype: 'i32' });
          const w = Tensor.from(randn(V * C, r), [V, C], { dtype: wdt });
          const dout = Tensor.from(randn(N * C, r), [N, C]);
          const dw0 = randn(V * C, r);
          const [cids, cw, cdout] = [ids, w, dout].map(onCuda);
          assertConforms('out', embeddingForward(cids, cw), embeddingForward(ids, w), 0, r.seed);
          const want = embeddingBackward(dout, ids, Tensor.from(dw0, [V, C]));
          const got = embeddingBackward(cdout, cids, onCuda(Tensor.from(dw0, [V, C])));
          assertConforms('dweight (accumulated)', got, want, 0, r.seed);
        });
      }
    }
  }
  test('an id outside the table is a RangeError naming its position', () => {
    const ids = onCuda(Tensor.from([0, 5, 2], [3], { dtype: 'i32' }));
    const w = onCuda(Tensor.from(randn(12, rng()), [4, 3]));
    assert.throws(() => embeddingForward(ids, w), /id 5 at position 1 is outside \[0, 4\)/);
    assert.throws(() => embeddingBackward(onCuda(Tensor.zeros([3, 3])), ids, onCuda(Tensor.zeros([4, 3]))), /id 5 at position 1/);
    assert.deepEqual(Array.from(valuesOf(ids)), [0, 5, 2]);
  });
});
