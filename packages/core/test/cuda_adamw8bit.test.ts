// Blockwise 8-bit AdamW: the CUDA kernel's math on the CPU with the kernel's
// split of a block over threads (every machine), and the CUDA kernel and the
// AdamW8bit optimizer on CUDA against the CPU reference (GPU machines).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ADAMW8BIT_BLOCK_SIZE, AdamW8bit, Tensor, adamw8bitBlocks, adamw8bitStep, dynamicMap, native, type Parameter } from '../src/index.js';
import { assertConforms, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { randn, rng } from './helpers.js';

const HYPER = { lr: 2e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.05 };

/** state after a few steps of the CPU op from fresh codes: every code and absmax in use */
function warmState(n: number, r: ReturnType<typeof rng>): Tensor[] {
  const nb = adamw8bitBlocks(n);
  const p = Tensor.from(randn(n, r), [n]), mc = Tensor.zeros([n], { dtype: 'u8' }), ma = Tensor.zeros([nb]);
  const vc = Tensor.zeros([n], { dtype: 'u8' }), va = Tensor.zeros([nb]);
  (mc.data() as Uint8Array).fill(dynamicMap(true).indexOf(0));
  (vc.data() as Uint8Array).fill(dynamicMap(false).indexOf(0));
  for (let step = 1; step <= 2; step++) {
    const g = Tensor.from(randn(n, r), [n]);
    adamw8bitStep(p, g, mc, ma, vc, va, { ...HYPER, step });
    g.dispose();
  }
  return [p, mc, ma, vc, va];
}

const copy = (ts: Tensor[]) => ts.map((t) => { const c = Tensor.zeros(t.shape, { dtype: t.dtype }); native.copy_tensor(t.handle, c.handle); return c; });
const same = (a: Tensor, b: Tensor) => Array.from(valuesOf(a)).map(String).join() === Array.from(valuesOf(b)).map(String).join();

describe('adamw8bit host math (kernels/adamw8bit_math.h)', () => {
  for (const threads of [1, 8, 256]) {
    test(`equals adamw8bit_step, blocks split over ${threads} thread(s), NaN included`, () => {
      const r = rng();
      const n = 256 * 5 + 77;
      const cpu = warmState(n, r), hm = copy(cpu);
      const gv = randn(n, r);
      gv[300] = NaN;            // block 1: NaN in the middle
      gv[3 * 256 + 255] = NaN;  // block 3: NaN last
      const g = Tensor.from(gv, [n]);
      adamw8bitStep(cpu[0], g, cpu[1], cpu[2], cpu[3], cpu[4], { ...HYPER, step: 3 });
      (native.hostmath_adamw8bit as (...a: unknown[]) => void)(hm[0].handle, g.handle, hm[1].handle, hm[2].handle, hm[3].handle,
        hm[4].handle, HYPER.lr, HYPER.beta1, HYPER.beta2, HYPER.eps, HYPER.weightDecay, 3, ADAMW8BIT_BLOCK_SIZE, threads);
      ['p', 'mCodes', 'mAbsmax', 'vCodes', 'vAbsmax'].forEach((name, k) => assert.ok(same(hm[k], cpu[k]), `${name} differs (seed ${r.seed})`));
      for (const t of [...cpu, ...hm, g]) t.dispose();
    });
  }
});

describe('adamw8bit on CUDA', { skip: skipCuda }, () => {
  for (const n of [1, 255, 256, 257, 4096 + 33, 96 * 257]) {
    test(`adamw8bit_step, ${n} elements`, () => {
      const r = rng();
      const cpu = warmState(n, r), dev = cpu.map(onCuda);
      for (let step = 3; step <= 4; step++) {
        const g = Tensor.from(randn(n, r), [n]), dg = onCuda(g);
        adamw8bitStep(cpu[0], g, cpu[1], cpu[2], cpu[3], cpu[4], { ...HYPER, step });
        adamw8bitStep(dev[0], dg, dev[1], dev[2], dev[3], dev[4], { ...HYPER, step });
        g.dispose(); dg.dispose();
      }
      assertConforms('p', dev[0], cpu[0], 1e-5, r.seed);
      assertConforms('mAbsmax', dev[2], cpu[2], 1e-5, r.seed);
      assertConforms('vAbsmax', dev[4], cpu[4], 1e-5, r.seed);
      // codes may differ by one where a value sits at a rounding boundary
      for (const k of [1, 3]) {
        const a = valuesOf(dev[k]), b = valuesOf(cpu[k]);
        let off = 0;
        for (let i = 0; i < a.length; i++) if (Math.abs(a[i] - b[i]) > 1) off++;
        assert.equal(off, 0, `${k === 1 ? 'mCodes' : 'vCodes'}: ${off} codes differ by more than one (seed ${r.seed})`);
      }
      for (const t of [...cpu, ...dev]) t.dispose();
    });
  }

  test('AdamW8bit keeps its state on CUDA and steps like the CPU one', () => {
    const r = rng();
    const shapes = [[64, 96], [33], [4096 + 7]];
    const numel = shapes.map((s) => s.reduce((a, b) => a * b, 1));
    const vals = numel.map((n) => randn(n, r)), gs = numel.map((n) => randn(n, r));
    const pc: Parameter[] = shapes.map((s, k) => ({ name: `p${k}`, value: Tensor.from(vals[k], s), grad: Tensor.from(gs[k], s) }));
    const pd: Parameter[] = pc.map((p) => ({ name: p.name, value: onCuda(p.value), grad: onCuda(p.grad!) }));
    const oc = new AdamW8bit(pc), od = new AdamW8bit(pd);
    for (const t of od.stateTensors().values()) assert.equal(t.device, 'cuda');
    for (let i = 0; i < 3; i++) { oc.step(1e-2); od.step(1e-2); }
    pc.forEach((p, k) => assertConforms(p.name, pd[k].value, p.value, 1e-5, r.seed));
    oc.dispose(); od.dispose();
    for (const p of [...pc, ...pd]) { p.value.dispose(); p.grad!.dispose(); }
  });
});
