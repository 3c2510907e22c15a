// Attention: the CUDA kernels' per-element math (kernels/attention_math.h) on
// the CPU against the CPU reference ops (every machine), and the CUDA kernels
// against the CPU ops (GPU machines).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Tensor, attentionBackward, attentionDecode, attentionForward, native } from '../src/index.js';
import { RAGGED, assertConforms, normalizedError, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { randn, rng } from './helpers.js';

type R = ReturnType<typeof rng>;
interface Dims { B: number; T: number; Hq: number; Hkv: number; D: number }

// Both sides compute in float32 with different summation orders (and the CPU
// a polynomial exp); the CPU op itself agrees with tfjs to ~5e-6 (attention.test.ts).
const TOL_FWD = 2e-5, TOL_GRAD = 3e-5;

/** Normalised error, except that a reference that is zero up to rounding
 * (dq and dk at T = 1: softmax over one key has no gradient, and both sides
 * leave float32 noise) is compared absolutely; the inputs are O(1), so the
 * gradients' natural scale is 1. */
function conforms(what: string, got: Tensor | Float32Array, want: Tensor | Float32Array, tol: number, seed: number): void {
  const g = got instanceof Tensor ? valuesOf(got) : got, w = want instanceof Tensor ? valuesOf(want) : want;
  if (w.every((x) => Math.abs(x) <= tol)) {
    const worst = g.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    assert.ok(worst <= tol, `${what}: reference is 0, got max |x| = ${worst.toExponential(3)} > ${tol} (seed ${seed})`);
    return;
  }
  const e = normalizedError(g, w);
  assert.ok(e <= tol, `${what}: normalised error ${e.toExponential(3)} > ${tol} (seed ${seed})`);
}

/** Random packed rows: segment lengths 1..maxLen, ids non-decreasing per row. */
function randomSegments(B: number, T: number, r: R, maxLen: number): Int32Array {
  const seg = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let id = Math.floor(r.next() * 5), left = 0;
    for (let t = 0; t < T; t++) {
      if (left === 0) { id += 1; left = 1 + Math.floor(r.next() * maxLen); }
      seg[b * T + t] = id;
      left--;
    }
  }
  return seg;
}

function inputs(d: Dims, r: R, amp = 1) {
  const { B, T, Hq, Hkv, D } = d;
  return {
    q: Tensor.from(randn(B * T * Hq * D, r, amp), [B, T, Hq, D]),
    k: Tensor.from(randn(B * T * Hkv * D, r, amp), [B, T, Hkv, D]),
    v: Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]),
    dout: Tensor.from(randn(B * T * Hq * D, r), [B, T, Hq, D]),
  };
}

const name = (d: Dims) => `B=${d.B} T=${d.T} Hq=${d.Hq} Hkv=${d.Hkv} D=${d.D}`;

describe('attention host math (kernels/attention_math.h)', () => {
  // [dims, key chunk]: GQA, MHA, MQA; T = 1; chunks that do and do not divide T
  const cases: [Dims, number][] = [
    [{ B: 2, T: 37, Hq: 4, Hkv: 2, D: 24 }, 32],
    [{ B: 1, T: 70, Hq: 2, Hkv: 2, D: 16 }, 5],
    [{ B: 1, T: 33, Hq: 3, Hkv: 1, D: 8 }, 1],
    [{ B: 2, T: 1, Hq: 2, Hkv: 1, D: 12 }, 32],
  ];
  for (const [d, chunk] of cases) {
    for (const withSeg of [false, true]) {
      test(`online softmax in chunks of ${chunk} and the backward math match the CPU ops, ${name(d)}${withSeg ? ', segments' : ''}`, () => {
        const r = rng();
        const { B, T, Hq, Hkv, D } = d;
        const { q, k, v, dout } = inputs(d, r, 1.5);
        const segments = withSeg ? Tensor.from(randomSegments(B, T, r, 9), [B, T], { dtype: 'i32' }) : undefined;
        const scale = 1 / Math.sqrt(D);
        const out = Tensor.zeros([B, T, Hq, D]), lse = Tensor.zeros([B, Hq, T]);
        const dq = Tensor.zeros([B, T, Hq, D]), dk = Tensor.zeros([B, T, Hkv, D]), dv = Tensor.zeros([B, T, Hkv, D]);
        (native.hostmath_attention as (...a: unknown[]) => void)(q.handle, k.handle, v.handle, dout.handle, out.handle,
          lse.handle, dq.handle, dk.handle, dv.handle, B, T, Hq, Hkv, D, scale, chunk, segments?.handle ?? null);
        const ref = attentionForward(q, k, v, { segments });
        const g = attentionBackward(dout, q, k, v, ref.out, ref.lse, { segments });
        conforms('out', out, ref.out, TOL_FWD, r.seed);
        conforms('lse', lse, ref.lse, TOL_FWD, r.seed);
        conforms('dq', dq, g.dq, TOL_GRAD, r.seed);
        conforms('dk', dk, g.dk, TOL_GRAD, r.seed);
        conforms('dv', dv, g.dv, TOL_GRAD, r.seed);
        for (const t of [q, k, v, dout, segments, out, lse, dq, dk, dv, ref.out, ref.lse, g.dq, g.dk, g.dv]) t?.dispose();
      });
    }
  }

  // The forward kernel's visiting order: a query tile (16 rows) walks key tiles
  // (32 keys) from its first row's segment start to its last row, so a row
  // meets tiles wholly masked for it, before any visible key (running max
  // -inf: -inf - -inf must not give NaN) and past its own position.
  for (const [tile, chunk] of [[16, 32], [16, 5], [4, 3]] as const) {
    test(`online softmax over the key chunks of a ${tile}-row query tile (chunks of ${chunk}, wholly masked ones included), segments`, () => {
      const r = rng();
      const d: Dims = { B: 2, T: 70, Hq: 2, Hkv: 1, D: 12 };
      const { B, T, Hq, Hkv, D } = d;
      const { q, k, v, dout } = inputs(d, r, 1.5);
      const segments = Tensor.from(randomSegments(B, T, r, 6), [B, T], { dtype: 'i32' });
      const out = Tensor.zeros([B, T, Hq, D]), lse = Tensor.zeros([B, Hq, T]);
      const dq = Tensor.zeros([B, T, Hq, D]), dk = Tensor.zeros([B, T, Hkv, D]), dv = Tensor.zeros([B, T, Hkv, D]);
      (native.hostmath_attention as (...a: unknown[]) => void)(q.handle, k.handle, v.handle, dout.handle, out.handle,
        lse.handle, dq.handle, dk.handle, dv.handle, B, T, Hq, Hkv, D, 1 / Math.sqrt(D), chunk, segments.handle, tile);
      const ref = attentionForward(q, k, v, { segments });
      conforms('out', out, ref.out, TOL_FWD, r.seed);
      conforms('lse', lse, ref.lse, TOL_FWD, r.seed);
      for (const t of [q, k, v, dout, segments, out, lse, dq, dk, dv, ref.out, ref.lse]) t.dispose();
    });
  }

  for (const [chunk, splits] of [[32, 4], [5, 3], [7, 1]] as const) {
    test(`decode: ${splits} partial online softmaxes in chunks of ${chunk}, merged, match attention_decode`, () => {
      const r = rng();
      const B = 2, Hq = 4, Hkv = 2, D = 20, Tmax = 150;
      for (const L of [1, 31, 150]) {
        const q = Tensor.from(randn(B * Hq * D, r, 1.5), [B, 1, Hq, D]);
        const kc = Tensor.from(randn(B * Tmax * Hkv * D, r, 1.5), [B, Tmax, Hkv, D]);
        const vc = Tensor.from(randn(B * Tmax * Hkv * D, r), [B, Tmax, Hkv, D]);
        const out = Tensor.zeros([B, 1, Hq, D]);
        (native.hostmath_attention_decode as (...a: unknown[]) => void)(q.handle, kc.handle, vc.handle, out.handle,
          B, Hq, Hkv, D, Tmax, L, 1 / Math.sqrt(D), chunk, splits);
        const ref = attentionDecode(q, kc, vc, L);
        conforms(`out (L=${L})`, out, ref, TOL_FWD, r.seed);
        for (const t of [q, kc, vc, out, ref]) t.dispose();
      }
    });
  }

  // Sliding windows (Mistral): the kernels' bounds narrowed by math::window_bounds,
  // with and without segments, in the kernel's own tile order; decode from decode_first_key
  for (const W of [1, 4, 20, 33]) {
    test(`sliding window ${W}: online softmax over a query tile's key chunks and the backward math match the CPU ops, with and without segments`, () => {
      const r = rng();
      const d: Dims = { B: 2, T: 70, Hq: 4, Hkv: 2, D: 12 };
      const { B, T, Hq, Hkv, D } = d;
      for (const withSeg of [false, true]) {
        const { q, k, v, dout } = inputs(d, r, 1.5);
        const segments = withSeg ? Tensor.from(randomSegments(B, T, r, 25), [B, T], { dtype: 'i32' }) : undefined;
        const out = Tensor.zeros([B, T, Hq, D]), lse = Tensor.zeros([B, Hq, T]);
        const dq = Tensor.zeros([B, T, Hq, D]), dk = Tensor.zeros([B, T, Hkv, D]), dv = Tensor.zeros([B, T, Hkv, D]);
        (native.hostmath_attention as (...a: unknown[]) => void)(q.handle, k.handle, v.handle, dout.handle, out.handle,
          lse.handle, dq.handle, dk.handle, dv.handle, B, T, Hq, Hkv, D, 1 / Math.sqrt(D), 5, segments?.handle ?? null, 16, W);
        const ref = attentionForward(q, k, v, { segments, window: W });
        const g = attentionBackward(dout, q, k, v, ref.out, ref.lse, { segments, window: W });
        conforms('out', out, ref.out, TOL_FWD, r.seed);
        conforms('lse', lse, ref.lse, TOL_FWD, r.seed);
        conforms('dq', dq, g.dq, TOL_GRAD, r.seed);
        conforms('dk', dk, g.dk, TOL_GRAD, r.seed);
        conforms('dv', dv, g.dv, TOL_GRAD, r.seed);
        for (const t of [q, k, v, dout, segments, out, lse, dq, dk, dv, ref.out, ref.lse, g.dq, g.dk, g.dv]) t?.dispose();
      }
    });
  }

  test('decode with a sliding window: partial online softmaxes from the first key in the window match attention_decode', () => {
    const r = rng();
    const B = 2, Hq = 4, Hkv = 2, D = 20, Tmax = 150;
    for (const [W, L] of [[1, 1], [1, 90], [7, 31], [40, 150], [200, 150]]) {
      const q = Tensor.from(randn(B * Hq * D, r, 1.5), [B, 1, Hq, D]);
      const kc = Tensor.from(randn(B * Tmax * Hkv * D, r, 1.5), [B, Tmax, Hkv, D]);
      const vc = Tensor.from(randn(B * Tmax * Hkv * D, r), [B, Tmax, Hkv, D]);
      const out = Tensor.zeros([B, 1, Hq, D]);
      (native.hostmath_attention_decode as (...a: unknown[]) => void)(q.handle, kc.handle, vc.handle, out.handle,
        B, Hq, Hkv, D, Tmax, L, 1 / Math.sqrt(D), 5, 3, W);
      const ref = attentionDecode(q, kc, vc, L, { window: W });
      conforms(`out (W=${W}, L=${L})`, out, ref, TOL_FWD, r.seed);
      for (const t of [q, kc, vc, out, ref]) t.dispose();
    }
  });

  test('segment bounds by binary search agree with the CPU scan (one-token and long segments)', () => {
    // the kernels' bounds feed the masks; a mismatch would show as a wrong
    // out where a segment starts: covered above, and here at its extremes
    const r = rng();
    const B = 1, T = 70, Hq = 1, Hkv = 1, D = 4;
    const seg = Int32Array.from({ length: T }, (_, t) => (t < 3 ? t : t < 40 ? 3 : t < 41 ? 4 : 9));
    const { q, k, v, dout } = inputs({ B, T, Hq, Hkv, D }, r);
    const segments = Tensor.from(seg, [B, T], { dtype: 'i32' });
    const out = Tensor.zeros([B, T, Hq, D]), lse = Tensor.zeros([B, Hq, T]);
    const dq = Tensor.zeros([B, T, Hq, D]), dk = Tensor.zeros([B, T, Hkv, D]), dv = Tensor.zeros([B, T, Hkv, D]);
    (native.hostmath_attention as (...a: unknown[]) => void)(q.handle, k.handle, v.handle, dout.handle, out.handle,
      lse.handle, dq.handle, dk.handle, dv.handle, B, T, Hq, Hkv, D, 0.5, 32, segments.handle);
    const ref = attentionForward(q, k, v, { segments, scale: 0.5 });
    conforms('out', out, ref.out, TOL_FWD, r.seed);
    conforms('lse', lse, ref.lse, TOL_FWD, r.seed);
    for (const t of [q, k, v, dout, segments, out, lse, dq, dk, dv, ref.out, ref.lse]) t.dispose();
  });
});

describe('attention on CUDA', { skip: skipCuda }, () => {
  // one head-dim per T, covering every register width (D <= 32, 64, 128, 256)
  // and partial lanes; GQA, MHA and MQA
  const shapes: Omit<Dims, 'T'>[] = [
    { B: 2, Hq: 4, Hkv: 2, D: 64 },
    { B: 1, Hq: 3, Hkv: 1, D: 40 },
    { B: 2, Hq: 2, Hkv: 2, D: 16 },
    { B: 1, Hq: 4, Hkv: 1, D: 128 },
    { B: 1, Hq: 2, Hkv: 1, D: 200 },
  ];
  RAGGED.forEach((T, i) => {
    for (const withSeg of [false, true]) {
      const d: Dims = { ...shapes[i % shapes.length], T };
      test(`forward (out, lse) and backward (dq, dk, dv), ${name(d)}${withSeg ? ', segments' : ''}`, () => {
        const r = rng();
        const { B } = d;
        const { q, k, v, dout } = inputs(d, r, 1.5);
        const segments = withSeg ? Tensor.from(randomSegments(B, T, r, Math.max(1, Math.floor(T / 3))), [B, T], { dtype: 'i32' }) : undefined;
        const want = attentionForward(q, k, v, { segments });
        const wantG = attentionBackward(dout, q, k, v, want.out, want.lse, { segments });
        const [cq, ck, cv, cd] = [q, k, v, dout].map(onCuda);
        const cs = segments && onCuda(segments);
        const got = attentionForward(cq, ck, cv, { segments: cs });
        assert.equal(got.out.device, 'cuda');
        conforms('out', got.out, want.out, TOL_FWD, r.seed);
        conforms('lse', got.lse, want.lse, TOL_FWD, r.seed);
        // backward from the CPU's out and lse (copied), so only the backward is compared
        const [co, cl] = [want.out, want.lse].map(onCuda);
        const g = attentionBackward(cd, cq, ck, cv, co, cl, { segments: cs });
        conforms('dq', g.dq, wantG.dq, TOL_GRAD, r.seed);
        conforms('dk', g.dk, wantG.dk, TOL_GRAD, r.seed);
        conforms('dv', g.dv, wantG.dv, TOL_GRAD, r.seed);
        for (const t of [q, k, v, dout, segments, want.out, want.lse, wantG.dq, wantG.dk, wantG.dv, cq, ck, cv, cd, cs,
          got.out, got.lse, co, cl, g.dq, g.dk, g.dv]) t?.dispose();
      });
    }
  });

  for (const W of [3, 40, 100]) {
    test(`sliding window ${W}: forward, backward and decode match the CPU ops (T = 150, with and without segments)`, () => {
      const r = rng();
      const d: Dims = { B: 2, T: 150, Hq: 4, Hkv: 2, D: 64 };
      for (const withSeg of [false, true]) {
        const { q, k, v, dout } = inputs(d, r, 1.5);
        const segments = withSeg ? Tensor.from(randomSegments(d.B, d.T, r, 60), [d.B, d.T], { dtype: 'i32' }) : undefined;
        const want = attentionForward(q, k, v, { segments, window: W });
        const wantG = attentionBackward(dout, q, k, v, want.out, want.lse, { segments, window: W });
        const [cq, ck, cv, cd] = [q, k, v, dout].map(onCuda);
        const cs = segments && onCuda(segments);
        const got = attentionForward(cq, ck, cv, { segments: cs, window: W });
        conforms('out', got.out, want.out, TOL_FWD, r.seed);
        conforms('lse', got.lse, want.lse, TOL_FWD, r.seed);
        const [co, cl] = [want.out, want.lse].map(onCuda);
        const g = attentionBackward(cd, cq, ck, cv, co, cl, { segments: cs, window: W });
        conforms('dq', g.dq, wantG.dq, TOL_GRAD, r.seed);
        conforms('dk', g.dk, wantG.dk, TOL_GRAD, r.seed);
        conforms('dv', g.dv, wantG.dv, TOL_GRAD, r.seed);
        for (const t of [q, k, v, dout, segments, want.out, want.lse, wantG.dq, wantG.dk, wantG.dv, cq, ck, cv, cd, cs,
          got.out, got.lse, co, cl, g.dq, g.dk, g.dv]) t?.dispose();
      }
      const B = 2, Hq = 4, Hkv = 2, D = 64, Tmax = 150, L = 130;
      const q = Tensor.from(randn(B * Hq * D, r), [B, 1, Hq, D]);
      const kc = Tensor.from(randn(B * Tmax * Hkv * D, r), [B, Tmax, Hkv, D]), vc = Tensor.from(randn(B * Tmax * Hkv * D, r), [B, Tmax, Hkv, D]);
      const want = attentionDecode(q, kc, vc, L, { window: W });
      const [cq, ckc, cvc] = [q, kc, vc].map(onCuda);
      const got = attentionDecode(cq, ckc, cvc, L, { window: W });
      conforms('decode out', got, want, TOL_FWD, r.seed);
      for (const t of [q, kc, vc, want, cq, ckc, cvc, got]) t.dispose();
    });
  }

  test('a key tile wholly outside every segment of a query tile is never read (NaN there does not leak)', () => {
    const r = rng();
    const B = 1, T = 200, Hq = 2, Hkv = 1, D = 32, cut = 128;
    const seg = Int32Array.from({ length: T }, (_, t) => (t < cut ? 0 : t < cut + 50 ? 1 : 2));
    const d = { B, T, Hq, Hkv, D };
    const { q, k, v, dout } = inputs(d, r);
    const segments = Tensor.from(seg, [B, T], { dtype: 'i32' });
    const want = attentionForward(q, k, v, { segments });
    const wantG = attentionBackward(dout, q, k, v, want.out, want.lse, { segments });
    // poison segment 0 (positions < cut, two whole 64-query tiles) in the CUDA inputs
    const poison = (t: Tensor, H: number) => {
      const a = t.toFloat32().slice();
      a.fill(NaN, 0, cut * H * D);
      return onCuda(Tensor.from(a, t.shape));
    };
    const [cq, ck, cv, cd] = [poison(q, Hq), poison(k, Hkv), poison(v, Hkv), poison(dout, Hq)];
    const cs = onCuda(segments);
    const got = attentionForward(cq, ck, cv, { segments: cs });
    const co = onCuda(want.out), cl = onCuda(want.lse);
    const g = attentionBackward(cd, cq, ck, cv, co, cl, { segments: cs });
    const tail = (x: Tensor, H: number) => valuesOf(x).slice(cut * H * D);
    const tailL = (x: Tensor) => { const a = valuesOf(x); return Float32Array.from(a.filter((_, i) => i % T >= cut)); };
    assertConforms('out (segments 1, 2)', Tensor.from(tail(got.out, Hq), [T - cut, Hq * D]), tail(want.out, Hq), TOL_FWD, r.seed);
    assertConforms('lse (segments 1, 2)', Tensor.from(tailL(got.lse), [Hq * (T - cut)]), tailL(want.lse), TOL_FWD, r.seed);
    assertConforms('dk (segments 1, 2)', Tensor.from(tail(g.dk, Hkv), [T - cut, Hkv * D]), tail(wantG.dk, Hkv), TOL_GRAD, r.seed);
    assertConforms('dv (segments 1, 2)', Tensor.from(tail(g.dv, Hkv), [T - cut, Hkv * D]), tail(wantG.dv, Hkv), TOL_GRAD, r.seed);
    assertConforms('dq (segments 1, 2)', Tensor.from(tail(g.dq, Hq), [T - cut, Hq * D]), tail(wantG.dq, Hq), TOL_GRAD, r.seed);
    for (const t of [q, k, v, dout, segments, want.out, want.lse, wantG.dq, wantG.dk, wantG.dv, cq, ck, cv, cd, cs,
      got.out, got.lse, co, cl, g.dq, g.dk, g.dv]) t.dispose();
  });

  test('decode over a KV cache matches the CPU op', () => {
    const r = rng();
    const B = 2, Hq = 8, Hkv = 2, Tmax = 300;
    for (const [L, D] of [[1, 64], [7, 128], [33, 40], [127, 256], [257, 64], [300, 16]] as const) {
      const q = Tensor.from(randn(B * Hq * D, r, 1.5), [B, 1, Hq, D]);
      const kc = Tensor.from(randn(B * Tmax * Hkv * D, r, 1.5), [B, Tmax, Hkv, D]);
      const vc = Tensor.from(randn(B * Tmax * Hkv * D, r), [B, Tmax, Hkv, D]);
      const want = attentionDecode(q, kc, vc, L);
      const [cq, ck, cv] = [q, kc, vc].map(onCuda);
      const got = attentionDecode(cq, ck, cv, L);
      conforms(`out (L=${L}, D=${D})`, got, want, TOL_FWD, r.seed);
      for (const t of [q, kc, vc, want, cq, ck, cv, got]) t.dispose();
    }
  });

  test('segments on another device, and unsorted segment ids on the GPU, are rejected', () => {
    const B = 1, T = 8, H = 1, D = 8;
    const q = onCuda(Tensor.zeros([B, T, H, D]));
    const cpuSeg = Tensor.from(new Int32Array(T), [B, T], { dtype: 'i32' });
    assert.throws(() => attentionForward(q, q, q, { segments: cpuSeg }), /segments/);
    const bad = onCuda(Tensor.from(Int32Array.from([0, 0, 1, 1, 0, 2, 2, 2]), [B, T], { dtype: 'i32' }));
    assert.throws(() => attentionForward(q, q, q, { segments: bad }), /non-decreasing/);
    for (const t of [q, cpuSeg, bad]) t.dispose();
  });
});
