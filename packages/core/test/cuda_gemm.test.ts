// GEMM on CUDA: the loaders' per-run dequantization (kernels/gemm_math.h) on
// the CPU against the dequantize ops (every machine), and the CUDA kernels
// against the CPU matmul (GPU machines).
//
// Tolerances. The tiled kernel rounds both operands to bf16 (8-bit
// mantissa, relative rounding error <= 2^-9) and accumulates bf16 x bf16
// products, which are exact in fp32, in fp32. So:
//   - against the CPU matmul of the same operands rounded to bf16 first,
//     only the summation order differs: normalised error ~1e-6, tested at 1e-4
//     (1e-3 for quantized weights, see quantCase);
//   - against the CPU matmul of the original f32 operands, each product
//     carries up to ~2^-8 of relative error with random sign; summed over K
//     and normalised by the largest |C| that is ~1e-3, tested at 1e-2.
// The decode kernel (m <= 16, quantized x Wᵀ, f32 x) does not round: it
// dequantizes to f32 and sums in fp32, tested at 1e-5 against the CPU.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type QuantizedIntN, type Quantized4bit, type QuantizedWeight, Tensor, cublasLtStatus, dequantize4bit, dequantizeIntN,
  intnDecode, matmul, native, nativeOperand, quantize4bit, quantizeIntN,
} from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

type Rng = ReturnType<typeof rng>;
type DT = 'f32' | 'bf16';

function hostDequant(q: QuantizedWeight, run: 8 | 16): Float32Array {
  const [rows, cols] = q.shape;
  const out = Tensor.zeros([rows, cols]);
  (native.hostmath_gemm_dequant as (...a: unknown[]) => void)(nativeOperand(q), rows, cols, run, out.handle);
  const v = out.toFloat32();
  out.dispose();
  return v;
}

function deqOf(q: QuantizedWeight): Float32Array {
  const t = q.kind === 'intn' ? dequantizeIntN(q) : dequantize4bit(q);
  const v = t.toFloat32();
  t.dispose();
  return v;
}

describe('gemm loaders host math (kernels/gemm_math.h)', () => {
  for (const format of ['nf4', 'fp4'] as const) {
    for (const doubleQuant of [false, true]) {
      // odd columns: every other row starts at an odd element (the odd-start path)
      for (const [rows, cols] of [[37, 83], [16, 128], [5, 1000]]) {
        test(`${format}${doubleQuant ? ' double-quantized' : ''} [${rows}, ${cols}], runs of 8 and 16, matches quant4 dequantize`, () => {
          const r = rng();
          const w = Tensor.from(randn(rows * cols, r), [rows, cols]);
          const q = quantize4bit(w, { format, blockSize: 64, doubleQuant });
          const want = deqOf(q);
          assertClose('run 16', hostDequant(q, 16), want, 1e-6, r.seed);
          assertClose('run 8', hostDequant(q, 8), want, 1e-6, r.seed);
        });
      }
    }
  }
  for (const bits of [2, 3, 4, 8] as const) {
    for (const groupSize of [16, 32, 128] as const) {
      test(`INT${bits} g${groupSize} [24, 256], runs of 8 and 16, matches intn dequantize`, () => {
        const r = rng();
        const w = Tensor.from(randn(24 * 256, r), [24, 256]);
        const q = quantizeIntN(w, { bits, groupSize });
        const want = deqOf(q);
        assertClose('run 16', hostDequant(q, 16), want, 1e-6, r.seed);
        assertClose('run 8', hostDequant(q, 8), want, 1e-6, r.seed);
      });
    }
  }
});

// ---- CUDA conformance ----

/** values rounded to bf16 (round to nearest even), as f32 */
function bf16Round(v: Float32Array): Float32Array {
  const t = Tensor.from(v, [v.length], { dtype: 'bf16' });
  const out = t.toFloat32();
  t.dispose();
  return out;
}

function quantOnCuda(q: QuantizedWeight): QuantizedWeight {
  if (q.kind === 'intn') return { ...q, codes: onCuda(q.codes), scales: onCuda(q.scales), offsets: onCuda(q.offsets) } as QuantizedIntN;
  return {
    ...q, packed: onCuda(q.packed), absmax: q.absmax && onCuda(q.absmax),
    dq: q.dq && { ...q.dq, codes: onCuda(q.dq.codes), scales: onCuda(q.dq.scales) },
  } as Quantized4bit;
}

interface Case {
  M: number; N: number; K: number;
  adt: DT; bdt: DT; transA: boolean; transB: boolean;
  alpha?: number; beta?: number;
}

/** Dense GEMM on CUDA vs the CPU: bf16-rounded reference (tight) and the f32 one (bf16-level). */
function denseCase(c: Case): void {
  const r = rng();
  const { M, N, K, transA, transB } = c;
  const alpha = c.alpha ?? 1, beta = c.beta ?? 0;
  const aShape = transA ? [K, M] : [M, K], bShape = transB ? [N, K] : [K, N];
  const av = randn(M * K, r), bv = randn(K * N, r), cv = randn(M * N, r);
  const a = Tensor.from(av, aShape, { dtype: c.adt }), b = Tensor.from(bv, bShape, { dtype: c.bdt });
  const ga = onCuda(a), gb = onCuda(b);
  const gc = onCuda(Tensor.from(cv, [M, N]));
  matmul(ga, gb, { transA, transB, alpha, beta, out: gc });
  const ar = Tensor.from(bf16Round(av), aShape), br = Tensor.from(bf16Round(bv), bShape);
  const want = matmul(ar, br, { transA, transB, alpha, beta, out: Tensor.from(cv, [M, N]) });
  const what = `${c.adt}${transA ? 'ᵀ' : ''} x ${c.bdt}${transB ? 'ᵀ' : ''} [${M}, ${N}, ${K}] beta ${beta}`;
  assertConforms(`${what} (bf16-rounded reference)`, gc, want, 1e-4, r.seed);
  const want32 = matmul(a, b, { transA, transB, alpha, beta, out: Tensor.from(cv, [M, N]) });
  assertConforms(`${what} (f32 reference)`, gc, want32, 1e-2, r.seed);
  for (const t of [a, b, ga, gb, gc, ar, br, want, want32]) t.dispose();
}

type Quant = { kind: 'nf4' | 'fp4'; doubleQuant?: boolean } | { kind: 'intn'; bits: 2 | 3 | 4 | 8; groupSize: 16 | 32 | 64 | 128 };

function quantize(w: Tensor, q: Quant): QuantizedWeight {
  return q.kind === 'intn'
    ? quantizeIntN(w, { bits: q.bits, groupSize: q.groupSize })
    : quantize4bit(w, { format: q.kind, blockSize: 64, doubleQuant: q.doubleQuant ?? false });
}

function quantName(q: Quant): string {
  return q.kind === 'intn' ? `INT${q.bits} g${q.groupSize}` : `${q.kind}${q.doubleQuant ? ' dq' : ''}`;
}

/** x Wᵀ (trans: W [N, K]) or dy W (W [K, N]) with a quantized W on CUDA vs the CPU. */
function quantCase(q: Quant, M: number, N: number, K: number, transB: boolean, beta: number): void {
  const r = rng();
  const wShape = transB ? [N, K] : [K, N];
  const w = Tensor.from(randn(N * K, r), wShape);
  const qw = quantize(w, q);
  const gq = quantOnCuda(qw);
  const av = randn(M * K, r), cv = randn(M * N, r);
  const a = Tensor.from(av, [M, K]);
  const ga = onCuda(a), gc = onCuda(Tensor.from(cv, [M, N]));
  matmul(ga, gq, { transB, beta, out: gc });
  const what = `${quantName(q)} ${transB ? 'x Wᵀ' : 'dy W'} [${M}, ${N}, ${K}] beta ${beta}`;
  const decode = transB && M <= 16;
  if (decode) {
    // decode kernel: f32 x and f32 dequantized weights, nothing rounded
    const want = matmul(a, qw, { transB, beta, out: Tensor.from(cv, [M, N]) });
    assertConforms(`${what} (decode)`, gc, want, 1e-5, r.seed);
    want.dispose();
  } else {
    const ar = Tensor.from(bf16Round(av), [M, K]), wr = Tensor.from(bf16Round(deqOf(qw)), wShape);
    const want = matmul(ar, wr, { transB, beta, out: Tensor.from(cv, [M, N]) });
    // 1e-3, not 1e-4: the dequantized value (scale * q + offset, an expanded double-quantized
    // absmax) may differ by an f32 ulp between the CPU and the GPU (FMA contraction), which
    // rarely flips one weight's bf16 rounding: one product off by 2^-8, ~5e-4 of max |C| at worst
    assertConforms(`${what} (bf16-rounded reference)`, gc, want, 1e-3, r.seed);
    const want32 = matmul(a, qw, { transB, beta, out: Tensor.from(cv, [M, N]) });
    assertConforms(`${what} (CPU quantized matmul)`, gc, want32, 1e-2, r.seed);
    for (const t of [ar, wr, want, want32]) t.dispose();
  }
  for (const t of [w, a, ga, gc]) t.dispose();
}

describe('gemm on CUDA: dense', { skip: skipCuda }, () => {
  for (const adt of ['f32', 'bf16'] as const) {
    for (const bdt of ['f32', 'bf16'] as const) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          test(`${adt}${transA ? 'ᵀ' : ''} x ${bdt}${transB ? 'ᵀ' : ''}, [33, 127, 257], beta 0 and 1`, () => {
            denseCase({ M: 33, N: 127, K: 257, adt, bdt, transA, transB });
            denseCase({ M: 33, N: 127, K: 257, adt, bdt, transA, transB, alpha: 0.5, beta: 1 });
          });
        }
      }
    }
  }
  const shapes: [number, number, number][] = [
    ...RAGGED.map((n): [number, number, number] => [n, n, n]),
    [1, 257, 33], [257, 1, 127], [7, 33, 1000], [1000, 127, 7], [128, 128, 32], [256, 384, 96],
  ];
  for (const [M, N, K] of shapes) {
    test(`ragged [${M}, ${N}, ${K}]: f32 x bf16ᵀ (x Wᵀ) and f32ᵀ x f32 (weight gradient)`, () => {
      denseCase({ M, N, K, adt: 'f32', bdt: 'bf16', transA: false, transB: true });
      denseCase({ M, N, K, adt: 'f32', bdt: 'f32', transA: true, transB: false, beta: 1 });
    });
  }
  test('alpha = 0: C = beta C (beta 0: zeros, C never read)', () => {
    const a = onCuda(Tensor.from(new Float32Array(15).fill(1), [5, 3])), b = onCuda(Tensor.from(new Float32Array(27).fill(1), [3, 9]));
    const c = onCuda(Tensor.from(new Float32Array(45).fill(Number.NaN), [5, 9]));
    matmul(a, b, { alpha: 0, out: c });
    assert.deepEqual([...valuesOf(c)], new Array(45).fill(0));
    const c2 = onCuda(Tensor.from(new Float32Array(45).fill(2), [5, 9]));
    matmul(a, b, { alpha: 0, beta: 0.5, out: c2 });
    assert.deepEqual([...valuesOf(c2)], new Array(45).fill(1));
  });
  test('operands on different devices are refused', () => {
    const a = onCuda(Tensor.zeros([4, 8])), b = Tensor.zeros([8, 4]);
    assert.throws(() => matmul(a, b), /device/);
  });
});

describe('gemm on CUDA: quantized B (fused dequantization)', { skip: skipCuda }, () => {
  const quants: Quant[] = [
    { kind: 'nf4' }, { kind: 'fp4' }, { kind: 'nf4', doubleQuant: true },
    { kind: 'intn', bits: 2, groupSize: 32 }, { kind: 'intn', bits: 3, groupSize: 64 },
    { kind: 'intn', bits: 4, groupSize: 32 }, { kind: 'intn', bits: 8, groupSize: 128 },
  ];
  for (const q of quants) {
    const ragged = q.kind !== 'intn';  // INT-N needs the stored columns to be whole groups
    test(`${quantName(q)}: x Wᵀ and dy W, tiled, beta 0 and 1`, () => {
      quantCase(q, 33, 384, 256, true, 0);
      quantCase(q, 257, 128, 512, true, 1);
      quantCase(q, 33, 256, 384, false, 0);
      quantCase(q, 130, 128, 96, false, 1);
      if (ragged) {
        quantCase(q, 127, 33, 257, true, 0);   // odd K: rows start at odd elements
        quantCase(q, 33, 127, 1000, false, 1); // odd N
      }
    });
  }
  for (const q of [{ kind: 'nf4' }, { kind: 'fp4', doubleQuant: true }, { kind: 'intn', bits: 4, groupSize: 64 },
                   { kind: 'intn', bits: 3, groupSize: 32 }, { kind: 'intn', bits: 2, groupSize: 16 }, { kind: 'intn', bits: 8, groupSize: 128 }] as Quant[]) {
    test(`${quantName(q)}: decode x Wᵀ, M = 1..16, beta 0 and 1`, () => {
      for (let M = 1; M <= 16; M++) quantCase(q, M, 200, 512, true, M % 2);
      if (q.kind !== 'intn') quantCase(q, 3, 77, 1001, true, 0);  // ragged K
    });
  }
  test('intnDecode on CUDA matches the CPU', () => {
    const r = rng();
    const w = Tensor.from(randn(96 * 256, r), [96, 256]);
    const q = quantizeIntN(w, { bits: 4, groupSize: 32 });
    const x = Tensor.from(randn(5 * 256, r), [5, 256]);
    const got = intnDecode(onCuda(x), quantOnCuda(q) as QuantizedIntN);
    assert.equal(got.device, 'cuda');
    assertConforms('intnDecode', got, intnDecode(x, q), 1e-5, r.seed);
  });
});

describe('gemm on CUDA: cuBLASLt reference', { skip: skipCuda }, () => {
  test('reference = cuBLASLt (bf16) when present, else "cuBLASLt not found"', () => {
    const r = rng();
    const [M, N, K] = [65, 130, 96];
    const av = randn(M * K, r), bv = randn(N * K, r);
    const a = onCuda(Tensor.from(av, [M, K])), b = onCuda(Tensor.from(bv, [N, K], { dtype: 'bf16' }));
    const status = cublasLtStatus();
    if (status !== '') {
      assert.match(status, /cuBLASLt/);
      assert.throws(() => matmul(a, b, { transB: true, reference: true }), /cuBLASLt/);
      return;
    }
    const got = matmul(a, b, { transB: true, reference: true });
    const want = matmul(Tensor.from(bf16Round(av), [M, K]), Tensor.from(bf16Round(bv), [N, K]), { transB: true });
    assertConforms('cuBLASLt', got, want, 1e-4, r.seed);
    const q = quantize4bit(Tensor.from(randn(N * K, r), [N, K]), { format: 'nf4' });
    const gotQ = matmul(onCuda(Tensor.from(av, [M, K])), quantOnCuda(q), { transB: true, reference: true });
    const wantQ = matmul(Tensor.from(bf16Round(av), [M, K]), Tensor.from(bf16Round(deqOf(q)), [N, K]), { transB: true });
    assertConforms('cuBLASLt nf4 (dequantized to bf16)', gotQ, wantQ, 1e-4, r.seed);
  });
});
