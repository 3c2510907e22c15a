import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, matmul, bf16ToF32, f32ToBf16 } from '../src/index.js';
import { assertClose, randn, rng, tfjs } from './helpers.js';

// Shapes chosen to cross every blocking edge: MR/NR remainders, several KC
// blocks, a row count that forces the shared-A path, and one big enough for
// the threaded path.
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [5, 7, 3], [13, 33, 17], [40, 70, 300], [389, 97, 513], [96, 4100, 40], [256, 256, 256],
];

test('matmul matches tfjs for every transpose combination and awkward shapes', async () => {
  const tf = await tfjs();
  const r = rng();
  for (const [M, N, K] of SHAPES) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const aShape = transA ? [K, M] : [M, K], bShape = transB ? [N, K] : [K, N];
        const av = randn(M * K, r), bv = randn(K * N, r);
        const a = Tensor.from(av, aShape), b = Tensor.from(bv, bShape);
        const c = matmul(a, b, { transA, transB });
        const want = tf.matMul(tf.tensor(av, aShape), tf.tensor(bv, bShape), transA, transB).dataSync();
        assertClose(`matmul ${M}x${N}x${K} tA=${transA} tB=${transB}`, c.data() as Float32Array, want, 2e-6 * Math.sqrt(K) + 1e-6, r.seed);
        a.dispose(); b.dispose(); c.dispose();
      }
    }
  }
});

test('matmul alpha and beta: accumulate into out, beta = 0 ignores NaN in out', () => {
  const r = rng();
  const [M, N, K] = [37, 45, 29];
  const av = randn(M * K, r), bv = randn(K * N, r), cv = randn(M * N, r);
  const a = Tensor.from(av, [M, K]), b = Tensor.from(bv, [K, N]);
  const ref = matmul(a, b, { reference: true });
  const c = Tensor.from(cv, [M, N]);
  matmul(a, b, { out: c, alpha: 0.5, beta: 2 });
  const want = new Float32Array(M * N);
  const rv = ref.data() as Float32Array;
  for (let i = 0; i < want.length; i++) want[i] = 0.5 * rv[i] + 2 * cv[i];
  assertClose('alpha/beta', c.data() as Float32Array, want, 1e-5, r.seed);
  (c.data() as Float32Array).fill(NaN);
  matmul(a, b, { out: c, beta: 0 });
  assertClose('beta=0', c.data() as Float32Array, rv, 1e-5, r.seed);
  for (const t of [a, b, ref, c]) t.dispose();
});

test('matmul with a bf16 weight equals f32 matmul of the rounded weight', () => {
  const r = rng();
  const [T, inF, outF] = [50, 300, 70];
  const x = Tensor.from(randn(T * inF, r), [T, inF]);
  const wv = randn(outF * inF, r, 0.05);
  const wRounded = wv.map((v) => bf16ToF32(f32ToBf16(v)));
  const wb = Tensor.from(wv, [outF, inF], { dtype: 'bf16', category: 'frozen' });
  const wf = Tensor.from(wRounded, [outF, inF]);
  const y1 = matmul(x, wb, { transB: true }), y2 = matmul(x, wf, { transB: true });
  assertClose('bf16 weight', y1.data() as Float32Array, y2.data() as Float32Array, 1e-6, r.seed);
  // the input-gradient direction: dX = dY W, W untransposed
  const dy = Tensor.from(randn(T * outF, r), [T, outF]);
  const d1 = matmul(dy, wb), d2 = matmul(dy, wf);
  assertClose('bf16 weight backward', d1.data() as Float32Array, d2.data() as Float32Array, 1e-6, r.seed);
  for (const t of [x, wb, wf, y1, y2, dy, d1, d2]) t.dispose();
});

test('matmul rejects mismatched shapes, wrong dtypes and missing out', () => {
  const a = Tensor.zeros([3, 4]), b = Tensor.zeros([5, 6]), i = Tensor.zeros([4, 2], { dtype: 'i32' });
  assert.throws(() => matmul(a, b), /inner dimensions differ: op\(a\) is \[3, 4\].*op\(b\) is \[5, 6\]/);
  assert.throws(() => matmul(a, i), /'b' has dtype i32, expected f32 or bf16/);
  assert.throws(() => matmul(a, Tensor.zeros([4])), /'b' must have rank 2/);
  assert.throws(() => matmul(a, Tensor.zeros([4, 2]), { beta: 1 }), /needs an 'out' tensor/);
  assert.throws(() => matmul(a, Tensor.zeros([4, 2]), { out: Tensor.zeros([3, 3]) }), /'out' has shape \[3, 3\], expected \[3, 2\]/);
  a.dispose();
  assert.throws(() => matmul(a, b), /'a' was disposed/);
});
