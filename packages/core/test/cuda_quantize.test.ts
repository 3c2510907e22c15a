// Quantization families on CUDA (cuda/nf4.cu, cuda/intn.cu): the kernels'
// encoding and decoding math on the CPU against the CPU ops (every machine),
// and the CUDA ops against the CPU ops on fresh random weights with ragged
// sizes (GPU machines). Codes and scales must match exactly; dequantized
// values to rounding.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  Tensor, addToOffsets, dequantize4bit, dequantizeIntN, disposeIntN, disposeQuantized, native, quant4Absmax, quantize4bit, quantizeIntN,
  type IntNBits, type IntNGroupSize, type Quant4Format,
} from '../src/index.js';
import { assertConforms, normalizedError, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

type Fn = (...a: unknown[]) => number;
const call = (name: string, ...a: unknown[]) => (native[name] as Fn)(...a);

/** random weights with a zero block, a constant run and a few large values */
function weights(n: number, r: ReturnType<typeof rng>): Float32Array {
  const a = randn(n, r, 0.05);
  for (let i = 0; i < Math.min(n, 64); i++) a[i] = 0;
  for (let i = 64; i < Math.min(n, 96); i++) a[i] = 0.25;
  if (n > 200) { a[150] = 3; a[199] = -7; }
  return a;
}

const bytesOf = (t: Tensor) => Array.from(valuesOf(t));

describe('quant4 / blockwise8 host math (kernels/quantize_math.h, quant_math.h)', () => {
  for (const format of ['nf4', 'fp4'] as const) {
    for (const [numel, block] of [[4099, 64], [33, 32], [10000, 4096], [1, 32]] as const) {
      test(`${format}, ${numel} values, blocks of ${block}: codes, absmax and dequantized values equal the CPU op`, () => {
        const r = rng();
        const a = weights(numel, r);
        const x = Tensor.from(a, [1, numel]);
        const f = format === 'nf4' ? 0 : 1;
        const nb = Math.ceil(numel / block);
        const pk = Tensor.zeros([Math.ceil(numel / 2)], { dtype: 'u8' }), am = Tensor.zeros([nb]), out = Tensor.zeros([numel]);
        const pk2 = Tensor.zeros([Math.ceil(numel / 2)], { dtype: 'u8' }), am2 = Tensor.zeros([nb]);
        const badH = call('hostmath_quant4', x.handle, numel, block, f, pk.handle, am.handle, out.handle);
        const badC = call('quant4_quantize', x.handle, numel, block, f, pk2.handle, am2.handle);
        assert.equal(badH, badC);
        assert.deepEqual(bytesOf(pk), bytesOf(pk2), `packed (seed ${r.seed})`);
        assert.deepEqual(am.toFloat32(), am2.toFloat32(), `absmax (seed ${r.seed})`);
        const q = quantize4bit(x, { format, blockSize: block });
        const deq = dequantize4bit(q);
        assertClose('dequantized', out.toFloat32(), deq.toFloat32(), 1e-7, r.seed);
        for (const t of [x, pk, am, out, pk2, am2, deq]) t.dispose();
        disposeQuantized(q);
      });
    }
  }

  test('a non-finite value is counted as the CPU op counts it', () => {
    const a = new Float32Array(100).fill(0.5);
    a[3] = NaN; a[70] = Infinity;
    const x = Tensor.from(a, [100]);
    const pk = Tensor.zeros([50], { dtype: 'u8' }), am = Tensor.zeros([4]), out = Tensor.zeros([100]);
    assert.equal(call('hostmath_quant4', x.handle, 100, 32, 0, pk.handle, am.handle, out.handle), 2);
    assert.equal(call('quant4_quantize', x.handle, 100, 32, 0, pk.handle, am.handle), 2);
    for (const t of [x, pk, am, out]) t.dispose();
  });

  for (const signed of [true, false]) {
    test(`blockwise 8-bit (${signed ? 'signed' : 'unsigned'} map): codes and scales equal the CPU op`, () => {
      const r = rng();
      const n = 5001, block = 256, nb = Math.ceil(n / block);
      const a = weights(n, r).map((v) => (signed ? v : Math.abs(v)));
      const x = Tensor.from(a, [n]);
      const c1 = Tensor.zeros([n], { dtype: 'u8' }), s1 = Tensor.zeros([nb]), o1 = Tensor.zeros([n]);
      const c2 = Tensor.zeros([n], { dtype: 'u8' }), s2 = Tensor.zeros([nb]), o2 = Tensor.zeros([n]);
      call('hostmath_blockwise8', x.handle, n, block, signed, c1.handle, s1.handle, 0.125, o1.handle);
      call('blockwise_quantize8', x.handle, n, block, signed, c2.handle, s2.handle);
      call('blockwise_dequantize8', c2.handle, s2.handle, n, block, signed, 0.125, o2.handle);
      assert.deepEqual(bytesOf(c1), bytesOf(c2), `codes (seed ${r.seed})`);
      assert.deepEqual(s1.toFloat32(), s2.toFloat32(), `scales (seed ${r.seed})`);
      assertClose('dequantized', o1.toFloat32(), o2.toFloat32(), 1e-7, r.seed);
      for (const t of [x, c1, s1, o1, c2, s2, o2]) t.dispose();
    });
  }
});

describe('intn host math (kernels/quantize_math.h, quant_math.h)', () => {
  for (const bits of [2, 3, 4, 8] as const) {
    for (const group of [16, 128] as const) {
      test(`${bits}-bit, groups of ${group}: codes, scales, offsets and dequantized values equal the CPU op`, () => {
        const r = rng();
        const rows = 7, cols = group * 3;
        const a = weights(rows * cols, r);
        const x = Tensor.from(a, [rows, cols]);
        const g = rows * cols / group;
        const codes = Tensor.zeros([Math.ceil((rows * cols * bits) / 8)], { dtype: 'u8' }), sc = Tensor.zeros([g]), of = Tensor.zeros([g]);
        const out = Tensor.zeros([rows * cols]);
        assert.equal(call('hostmath_intn', x.handle, rows, cols, bits, group, codes.handle, sc.handle, of.handle, out.handle), 0);
        const q = quantizeIntN(x, { bits, groupSize: group });
        assert.deepEqual(bytesOf(codes), bytesOf(q.codes), `codes (seed ${r.seed})`);
        assert.deepEqual(sc.toFloat32(), q.scales.toFloat32(), `scales (seed ${r.seed})`);
        assert.deepEqual(of.toFloat32(), q.offsets.toFloat32(), `offsets (seed ${r.seed})`);
        const deq = dequantizeIntN(q);
        assertClose('dequantized', out.toFloat32(), deq.toFloat32(), 1e-7, r.seed);
        for (const t of [x, codes, sc, of, out, deq]) t.dispose();
        disposeIntN(q);
      });
    }
  }

  test('non-finite weights and overflowing ranges are counted as the CPU op counts them', () => {
    const a = new Float32Array(64).fill(1);
    a[0] = NaN; a[20] = 3e38; a[21] = -3e38;
    const x = Tensor.from(a, [2, 32]);
    const codes = Tensor.zeros([32], { dtype: 'u8' }), sc = Tensor.zeros([4]), of = Tensor.zeros([4]), out = Tensor.zeros([64]);
    const want = call('intn_quantize', x.handle, 2, 32, 4, 16, codes.handle, sc.handle, of.handle);
    assert.equal(want, 2);
    assert.equal(call('hostmath_intn', x.handle, 2, 32, 4, 16, codes.handle, sc.handle, of.handle, out.handle), want);
    for (const t of [x, codes, sc, of, out]) t.dispose();
  });
});

describe('quantization on CUDA', { skip: skipCuda }, () => {
  const shapes: [number, number][] = [[1, 64], [7, 96], [33, 131], [127, 64], [257, 96]];
  for (const format of ['nf4', 'fp4'] as Quant4Format[]) {
    for (const [rows, cols] of shapes) {
      for (const doubleQuant of [false, true]) {
        test(`quantize4bit ${format}${doubleQuant ? ' (double quant)' : ''}, [${rows}, ${cols}]`, () => {
          const r = rng();
          const w = Tensor.from(weights(rows * cols, r), [rows, cols]), dw = onCuda(w);
          const q = quantize4bit(w, { format, doubleQuant }), dq = quantize4bit(dw, { format, doubleQuant });
          assert.equal(dq.packed.device, 'cuda');
          assert.deepEqual(bytesOf(dq.packed), bytesOf(q.packed), `packed (seed ${r.seed})`);
          if (doubleQuant) {
            assert.deepEqual(bytesOf(dq.dq!.codes), bytesOf(q.dq!.codes), `dq codes (seed ${r.seed})`);
            assert.deepEqual(valuesOf(dq.dq!.scales), valuesOf(q.dq!.scales), `dq scales (seed ${r.seed})`);
            assert.equal(dq.dq!.offset, q.dq!.offset);
          } else {
            assert.deepEqual(valuesOf(dq.absmax!), valuesOf(q.absmax!), `absmax (seed ${r.seed})`);
          }
          const ga = quant4Absmax(dq), wa = quant4Absmax(q);
          assert.equal(ga.length, wa.length);
          assert.ok(normalizedError(ga, wa) <= 1e-6, `expanded absmax (seed ${r.seed})`);
          const got = dequantize4bit(dq), want = dequantize4bit(q);
          assert.equal(got.device, 'cuda');
          assertConforms('dequantized', got, want, 1e-6, r.seed);
          for (const t of [w, dw, got, want]) t.dispose();
          disposeQuantized(q); disposeQuantized(dq);
        });
      }
    }
  }

  test('quantize4bit of a bf16 weight and a non-finite weight on CUDA', () => {
    const r = rng();
    const w = Tensor.from(weights(37 * 64, r), [37, 64], { dtype: 'bf16' }), dw = onCuda(w);
    const q = quantize4bit(w, { format: 'nf4', blockSize: 32 }), dq = quantize4bit(dw, { format: 'nf4', blockSize: 32 });
    assert.deepEqual(bytesOf(dq.packed), bytesOf(q.packed), `packed (seed ${r.seed})`);
    assert.deepEqual(valuesOf(dq.absmax!), valuesOf(q.absmax!), `absmax (seed ${r.seed})`);
    const bad = new Float32Array(128).fill(1);
    bad[5] = NaN;
    const db = onCuda(Tensor.from(bad, [2, 64]));
    assert.throws(() => quantize4bit(db, { format: 'nf4' }), /holds 1 NaN or infinite/);
    for (const t of [w, dw, db]) t.dispose();
    disposeQuantized(q); disposeQuantized(dq);
  });

  test('blockwise 8-bit on CUDA, ragged lengths', () => {
    for (const n of [1, 255, 257, 5001]) {
      const r = rng();
      const x = Tensor.from(weights(n, r), [n]), dx = onCuda(x);
      const nb = Math.ceil(n / 256);
      const c = Tensor.zeros([n], { dtype: 'u8' }), s = Tensor.zeros([nb]), o = Tensor.zeros([n]);
      const dc = onCuda(c), ds = onCuda(s), dout = onCuda(o);
      call('blockwise_quantize8', x.handle, n, 256, true, c.handle, s.handle);
      call('blockwise_quantize8', dx.handle, n, 256, true, dc.handle, ds.handle);
      assert.deepEqual(bytesOf(dc), bytesOf(c), `codes, n ${n} (seed ${r.seed})`);
      assert.deepEqual(valuesOf(ds), valuesOf(s), `scales, n ${n} (seed ${r.seed})`);
      call('blockwise_dequantize8', c.handle, s.handle, n, 256, true, -0.5, o.handle);
      call('blockwise_dequantize8', dc.handle, ds.handle, n, 256, true, -0.5, dout.handle);
      assertConforms(`dequantized, n ${n}`, dout, o, 1e-6, r.seed);
      for (const t of [x, dx, c, s, o, dc, ds, dout]) t.dispose();
    }
  });

  for (const bits of [2, 3, 4, 8] as IntNBits[]) {
    for (const [rows, group] of [[1, 16], [7, 32], [33, 64], [257, 128]] as [number, IntNGroupSize][]) {
      test(`quantizeIntN RTN ${bits}-bit, [${rows}, ${group * 3}], groups of ${group}`, () => {
        const r = rng();
        const cols = group * 3;
        const w = Tensor.from(weights(rows * cols, r), [rows, cols]), dw = onCuda(w);
        const q = quantizeIntN(w, { bits, groupSize: group }), dq = quantizeIntN(dw, { bits, groupSize: group });
        assert.equal(dq.codes.device, 'cuda');
        assert.deepEqual(bytesOf(dq.codes), bytesOf(q.codes), `codes (seed ${r.seed})`);
        assert.deepEqual(valuesOf(dq.scales), valuesOf(q.scales), `scales (seed ${r.seed})`);
        assert.deepEqual(valuesOf(dq.offsets), valuesOf(q.offsets), `offsets (seed ${r.seed})`);
        const got = dequantizeIntN(dq), want = dequantizeIntN(q);
        assertConforms('dequantized', got, want, 1e-6, r.seed);
        for (const t of [w, dw, got, want]) t.dispose();
        disposeIntN(q); disposeIntN(dq);
      });
    }
  }

  test('INT-N on CUDA: bf16 weights, refused weights, GPTQ from a host copy, addToOffsets', () => {
    const r = rng();
    const w = Tensor.from(weights(9 * 64, r), [9, 64], { dtype: 'bf16' }), dw = onCuda(w);
    const q = quantizeIntN(w, { bits: 3, groupSize: 32 }), dq = quantizeIntN(dw, { bits: 3, groupSize: 32 });
    assert.deepEqual(bytesOf(dq.codes), bytesOf(q.codes), `codes (seed ${r.seed})`);
    const delta = randn(q.offsets.numel, r);
    addToOffsets(q, delta); addToOffsets(dq, delta);
    assert.deepEqual(valuesOf(dq.offsets), valuesOf(q.offsets));
    const bad = new Float32Array(64).fill(1);
    bad[9] = Infinity;
    const db = onCuda(Tensor.from(bad, [2, 32]));
    assert.throws(() => quantizeIntN(db, { bits: 4, groupSize: 16 }), /holds 1 NaN or infinite/);
    // GPTQ runs on the CPU from a host copy; the result comes back to the weight's device
    const X = Tensor.from(randn(8 * 64, r), [8, 64]);
    const g = quantizeIntN(w, { bits: 4, groupSize: 32, quantizer: 'gptq', calibration: X });
    const dg = quantizeIntN(dw, { bits: 4, groupSize: 32, quantizer: 'gptq', calibration: X });
    assert.equal(dg.codes.device, 'cuda');
    assert.deepEqual(bytesOf(dg.codes), bytesOf(g.codes), `GPTQ codes (seed ${r.seed})`);
    disposeIntN(g); disposeIntN(dg);
    for (const t of [w, dw, db, X]) t.dispose();
    disposeIntN(q); disposeIntN(dq);
  });
});
