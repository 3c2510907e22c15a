// Fused LoRA: the CUDA launcher's GEMM sequence (kernels/lora_math.h) run with
// the CPU gemm against the CPU ops (every machine), and the CUDA ops against
// the CPU reference (GPU machines), including a mixed-adapter batch with a
// pooled QA-LoRA adapter.
import { describe, test } from 'node:test';
import { Tensor, bf16ToF32, f32ToBf16, groupPoolForward, loraBackward, loraDeltaRows, loraForward, native, quantizeIntN } from '../src/index.js';
import { nativeOperand, type WeightOperand } from '../src/quant/quant4.js';
import { RAGGED, assertConforms, onCuda, skipCuda } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

type R = ReturnType<typeof rng>;
const T = (r: R, shape: number[], scale = 1) => Tensor.from(randn(shape.reduce((a, b) => a * b, 1), r, scale), shape);
const bf16Round = (a: Float32Array): Float32Array => a.map((v) => bf16ToF32(f32ToBf16(v)));
const Tb = (r: R, shape: number[], scale = 1) => Tensor.from(bf16Round(randn(shape.reduce((a, b) => a * b, 1), r, scale)), shape);

describe('lora host math (kernels/lora_math.h)', () => {
  for (const kind of ['f32', 'bf16', 'int4'] as const) {
    for (const withDxa of [false, true]) {
      test(`the GEMM sequence matches the CPU ops, ${kind} W${withDxa ? ', adapter gradient into dxa' : ''}`, () => {
        const r = rng();
        const [N, inF, outF, rank] = [37, 64, 48, 5];
        const Wd = T(r, [outF, inF], 0.1);
        const W: WeightOperand = kind === 'int4' ? quantizeIntN(Wd, { bits: 4, groupSize: 32 })
          : kind === 'bf16' ? Tensor.from(Wd.toFloat32(), [outF, inF], { dtype: 'bf16' }) : Wd;
        const x = T(r, [N, inF]), xa = T(r, [N, inF]), A = T(r, [rank, inF], 0.1), B = T(r, [outF, rank], 0.1), dy = T(r, [N, outF]);
        const s = 1.75, dx0 = randn(N * inF, r), dA0 = randn(rank * inF, r), dB0 = randn(outF * rank, r), yd0 = randn(N * outF, r);
        const y = Tensor.zeros([N, outF]), u = Tensor.zeros([N, rank]), dx = Tensor.from(dx0, [N, inF]);
        const dA = Tensor.from(dA0, [rank, inF]), dB = Tensor.from(dB0, [outF, rank]), yd = Tensor.from(yd0, [N, outF]);
        const dxa = withDxa ? Tensor.zeros([N, inF]) : null;
        (native.hostmath_lora as (...a: unknown[]) => void)(x.handle, xa.handle, nativeOperand(W), A.handle, B.handle, s, dy.handle,
          y.handle, u.handle, dx.handle, true, dA.handle, dB.handle, dxa?.handle ?? null, N, inF, outF, rank, yd.handle, 3, 20);
        const want = loraForward(x, xa, W, A, B, s);
        const wantDx = Tensor.from(dx0, [N, inF]), wantDA = Tensor.from(dA0, [rank, inF]), wantDB = Tensor.from(dB0, [outF, rank]);
        const wantDxa = withDxa ? Tensor.zeros([N, inF]) : undefined;
        loraBackward(dy, xa, W, A, B, want.u, s, { dxInto: wantDx, dA: wantDA, dB: wantDB, dxa: wantDxa });
        const wantYd = Tensor.from(yd0, [N, outF]);
        loraDeltaRows(x, A, B, s, wantYd, 3, 20);
        // the same CPU gemm calls in the same order: equal up to the GEMM's own threading
        const tol = 1e-6;
        assertClose('y', y.toFloat32(), want.y.toFloat32(), tol, r.seed);
        assertClose('u', u.toFloat32(), want.u.toFloat32(), tol, r.seed);
        assertClose('dx', dx.toFloat32(), wantDx.toFloat32(), tol, r.seed);
        assertClose('dA', dA.toFloat32(), wantDA.toFloat32(), tol, r.seed);
        assertClose('dB', dB.toFloat32(), wantDB.toFloat32(), tol, r.seed);
        if (dxa && wantDxa) assertClose('dxa', dxa.toFloat32(), wantDxa.toFloat32(), tol, r.seed);
        assertClose('delta rows', yd.toFloat32(), wantYd.toFloat32(), tol, r.seed);
      });
    }
  }
});

// tb::cuda::gemm rounds its operands to bf16 (fp32 accumulation). Inputs are
// rounded to bf16 beforehand on both sides, so u = xa A^T agrees to f32
// summation order; every other result passes an intermediate (u, du) through
// a GEMM, which rounds it (relative 2^-9 = 2e-3 per element): 1e-2.
const TOL_EXACT = 1e-5, TOL = 1e-2;

describe('lora on CUDA', { skip: skipCuda }, () => {
  for (const wdt of ['f32', 'bf16'] as const) {
    for (const N of RAGGED) {
      for (const withDxa of [false, true]) {
        test(`forward and backward, N ${N}, in 96, out 80, r 8, ${wdt} W${withDxa ? ', dxa' : ''}`, () => {
          const r = rng();
          const [inF, outF, rank] = [96, 80, 8];
          const W = Tensor.from(Tb(r, [outF, inF], 0.1).toFloat32(), [outF, inF], { dtype: wdt });
          const x = Tb(r, [N, inF]), xa = Tb(r, [N, inF]), A = Tb(r, [rank, inF], 0.1), B = Tb(r, [outF, rank], 0.1), dy = Tb(r, [N, outF]);
          const [cW, cx, cxa, cA, cB, cdy] = [W, x, xa, A, B, dy].map(onCuda);
          const want = loraForward(x, xa, W, A, B, 2);
          const got = loraForward(cx, cxa, cW, cA, cB, 2);
          assertConforms('y', got.y, want.y, TOL, r.seed);
          assertConforms('u', got.u, want.u, TOL_EXACT, r.seed);
          const dA0 = randn(rank * inF, r, 0.01), dB0 = randn(outF * rank, r, 0.01), dx0 = randn(N * inF, r);
          const wantDA = Tensor.from(dA0, [rank, inF]), wantDB = Tensor.from(dB0, [outF, rank]), wantDx = Tensor.from(dx0, [N, inF]);
          const [gotDA, gotDB, gotDx] = [wantDA, wantDB, wantDx].map(onCuda);
          const wantDxa = withDxa ? Tensor.zeros([N, inF]) : undefined, gotDxa = wantDxa && onCuda(wantDxa);
          loraBackward(dy, xa, W, A, B, want.u, 2, { dxInto: wantDx, dA: wantDA, dB: wantDB, dxa: wantDxa });
          loraBackward(cdy, cxa, cW, cA, cB, got.u, 2, { dxInto: gotDx, dA: gotDA, dB: gotDB, dxa: gotDxa });
          assertConforms('dx (accumulated)', gotDx, wantDx, TOL, r.seed);
          assertConforms('dA (accumulated)', gotDA, wantDA, TOL, r.seed);
          assertConforms('dB (accumulated)', gotDB, wantDB, TOL, r.seed);
          if (gotDxa && wantDxa) assertConforms('dxa', gotDxa, wantDxa, TOL, r.seed);
          // dx written (no dxInto, no dA/dB)
          assertConforms('dx written', loraBackward(cdy, cxa, cW, cA, cB, got.u, 2), loraBackward(dy, xa, W, A, B, want.u, 2), TOL, r.seed);
        });
      }
    }
  }

  // The mixed batch of packages/lora (forwardRows): one base output, then each
  // run of rows sharing an adapter gets its delta; a pooled (QA-LoRA) adapter
  // reads the group-pooled input.
  for (const tokensPerRow of [1, 7, 33]) {
    test(`mixed-adapter batch with a pooled adapter, ${tokensPerRow} tokens per row`, () => {
      const r = rng();
      const [inF, outF, L] = [128, 72, 32];
      const rowsOf: (string | null)[] = ['a', 'a', null, 'p', 'a', 'p', 'p', null, 'a'];
      const N = rowsOf.length * tokensPerRow;
      const x = Tb(r, [N, inF]), yBase = T(r, [N, outF]);
      const adapters: Record<string, { A: Tensor; B: Tensor; s: number; pool: number | null }> = {
        a: { A: Tb(r, [8, inF], 0.1), B: Tb(r, [outF, 8], 0.1), s: 2, pool: null },
        p: { A: Tb(r, [4, inF / L], 0.1), B: Tb(r, [outF, 4], 0.1), s: 0.5, pool: L },
      };
      const run = (dev: (t: Tensor) => Tensor): Tensor => {
        const xx = dev(x), y = dev(yBase);
        const pooled = groupPoolForward(xx, L, { scale: inF / L });
        for (let row = 0; row < rowsOf.length;) {
          let end = row + 1;
          while (end < rowsOf.length && rowsOf[end] === rowsOf[row]) end++;
          const name = rowsOf[row];
          if (name !== null) {
            const a = adapters[name];
            loraDeltaRows(a.pool === null ? xx : pooled, dev(a.A), dev(a.B), a.s, y, row * tokensPerRow, (end - row) * tokensPerRow);
          }
          row = end;
        }
        return y;
      };
      assertConforms('y', run(onCuda), run((t) => t), TOL, r.seed);
    });
  }
});
