// AdamW: the CUDA kernels' per-element math on the CPU (every machine), the
// multi-tensor entry point on the CPU, and the CUDA kernels (single tensor,
// multi-tensor, the AdamW optimizer on CUDA parameters) against the CPU
// reference (GPU machines).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AdamW, Tensor, adamwStep, adamwStepMulti, native, type Parameter } from '../src/index.js';
import { RAGGED, assertConforms, onCuda, skipCuda, valuesOf } from './cuda_helpers.js';
import { assertClose, randn, rng } from './helpers.js';

const HYPER = { lr: 3e-3, beta1: 0.85, beta2: 0.97, eps: 1e-6, weightDecay: 0.1 };

function state(n: number, r: ReturnType<typeof rng>): { p: Float32Array; m: Float32Array; v: Float32Array } {
  return { p: randn(n, r), m: randn(n, r, 0.1), v: randn(n, r, 0.01).map((x) => x * x) };
}

describe('adamw host math (kernels/adamw_math.h)', () => {
  test('matches adamw_step over several steps, including zero and huge gradients', () => {
    const r = rng();
    const n = 4099;
    const s = state(n, r);
    const ref = [s.p, s.m, s.v].map((a) => Tensor.from(a, [n]));
    const hm = [s.p, s.m, s.v].map((a) => Tensor.from(a, [n]));
    for (let step = 1; step <= 3; step++) {
      const gv = randn(n, r);
      gv[0] = 0; gv[1] = 1e15; gv[2] = -1e-30;
      const g = Tensor.from(gv, [n]);
      adamwStep(ref[0], g, ref[1], ref[2], { ...HYPER, step });
      (native.hostmath_adamw as (...a: unknown[]) => void)(hm[0].handle, g.handle, hm[1].handle, hm[2].handle,
        HYPER.lr, HYPER.beta1, HYPER.beta2, HYPER.eps, HYPER.weightDecay, step);
      g.dispose();
    }
    for (let k = 0; k < 3; k++) assertClose(['p', 'm', 'v'][k], hm[k].toFloat32(), ref[k].toFloat32(), 1e-6, r.seed);
    for (const t of [...ref, ...hm]) t.dispose();
  });
});

describe('adamwStepMulti on the CPU', () => {
  test('equals adamwStep per tensor (each tensor its own weight decay)', () => {
    const r = rng();
    const sizes = [1, 7, 4096, 4097, 33];
    const a = sizes.map((n) => state(n, r)), grads = sizes.map((n) => randn(n, r));
    const mk = () => a.map((s, k) => ({ param: Tensor.from(s.p, [sizes[k]]), grad: Tensor.from(grads[k], [sizes[k]]),
      m: Tensor.from(s.m, [sizes[k]]), v: Tensor.from(s.v, [sizes[k]]), weightDecay: k % 2 ? 0 : 0.1 }));
    const one = mk(), multi = mk();
    for (const e of one) adamwStep(e.param, e.grad, e.m, e.v, { ...HYPER, weightDecay: e.weightDecay, step: 2 });
    adamwStepMulti(multi, { ...HYPER, step: 2 });
    one.forEach((e, k) => {
      for (const f of ['param', 'm', 'v'] as const) assert.deepEqual(multi[k][f].toFloat32(), e[f].toFloat32(), `${f}[${k}]`);
    });
    for (const e of [...one, ...multi]) for (const t of [e.param, e.grad, e.m, e.v]) t.dispose();
  });

  test('rejects mismatched shapes and lists', () => {
    const p = Tensor.zeros([4]), g = Tensor.zeros([5]);
    assert.throws(() => adamwStepMulti([{ param: p, grad: g, m: p, v: p, weightDecay: 0 }], { lr: 1e-3, step: 1 }), /'grads\[0\]' has shape \[5\]/);
    assert.throws(() => (native.adamw_step_multi as (...a: unknown[]) => void)([p.handle], [], [], [], [], 1e-3, 0.9, 0.999, 1e-8, 1),
      /'grads' has 0 entries/);
    p.dispose(); g.dispose();
  });
});

describe('adamw on CUDA', { skip: skipCuda }, () => {
  for (const rows of RAGGED) {
    test(`adamw_step, [${rows}, 96], 3 steps`, () => {
      const r = rng();
      const n = rows * 96, shape = [rows, 96];
      const s = state(n, r);
      const cpu = [s.p, s.m, s.v].map((x) => Tensor.from(x, shape));
      const dev = cpu.map(onCuda);
      for (let step = 1; step <= 3; step++) {
        const g = Tensor.from(randn(n, r), shape), dg = onCuda(g);
        adamwStep(cpu[0], g, cpu[1], cpu[2], { ...HYPER, step });
        adamwStep(dev[0], dg, dev[1], dev[2], { ...HYPER, step });
        g.dispose(); dg.dispose();
      }
      for (let k = 0; k < 3; k++) assertConforms(['p', 'm', 'v'][k], dev[k], cpu[k], 1e-5, r.seed);
      for (const t of [...cpu, ...dev]) t.dispose();
    });
  }

  test('adamw_step_multi: many ragged tensors in one launch', () => {
    const r = rng();
    const sizes = [1, 7, 33, 127, 257, 4095, 4096, 4097, 96 * 257, 100003];
    const cpu = sizes.map((n, k) => {
      const s = state(n, r);
      return { param: Tensor.from(s.p, [n]), grad: Tensor.from(randn(n, r), [n]), m: Tensor.from(s.m, [n]), v: Tensor.from(s.v, [n]),
        weightDecay: k % 3 ? 0.1 : 0 };
    });
    const dev = cpu.map((e) => ({ param: onCuda(e.param), grad: onCuda(e.grad), m: onCuda(e.m), v: onCuda(e.v), weightDecay: e.weightDecay }));
    for (const step of [1, 2]) {
      adamwStepMulti(cpu, { ...HYPER, step });
      adamwStepMulti(dev, { ...HYPER, step });
    }
    cpu.forEach((e, k) => {
      for (const f of ['param', 'm', 'v'] as const) assertConforms(`${f}[${k}] (${sizes[k]} elements)`, dev[k][f], e[f], 1e-5, r.seed);
    });
    for (const e of [...cpu, ...dev]) for (const t of [e.param, e.grad, e.m, e.v]) t.dispose();
  });

  test('the AdamW optimizer keeps its state on CUDA and steps like the CPU one', () => {
    const r = rng();
    const shapes = [[64, 33], [257], [7, 5]];
    const mk = (device: 'cpu' | 'cuda', vals: Float32Array[], gs: Float32Array[]): Parameter[] => shapes.map((shape, k) => {
      const value = Tensor.from(vals[k], shape), grad = Tensor.from(gs[k], shape);
      if (device === 'cpu') return { name: `p${k}`, value, grad };
      const out = { name: `p${k}`, value: onCuda(value), grad: onCuda(grad) };
      value.dispose(); grad.dispose();
      return out;
    });
    const numel = shapes.map((s) => s.reduce((a, b) => a * b, 1));
    const vals = numel.map((n) => randn(n, r)), gs = numel.map((n) => randn(n, r));
    const pc = mk('cpu', vals, gs), pd = mk('cuda', vals, gs);
    const oc = new AdamW(pc, { weightDecay: 0.05 }), od = new AdamW(pd, { weightDecay: 0.05 });
    for (const t of od.stateTensors().values()) assert.equal(t.device, 'cuda');
    for (let i = 0; i < 3; i++) { oc.step(1e-2); od.step(1e-2); }
    pc.forEach((p, k) => assertConforms(p.name, pd[k].value, p.value, 1e-5, r.seed));
    const sc = oc.stateTensors(), sd = od.stateTensors();
    for (const [name, t] of sc) assertConforms(name, sd.get(name)!, t, 1e-5, r.seed);
    // state round trip through the CPU (checkpoints)
    od.loadState(sc, oc.stepCount);
    for (const [name, t] of sc) assert.deepEqual(valuesOf(sd.get(name)!), t.toFloat32(), name);
    oc.dispose(); od.dispose();
    for (const p of [...pc, ...pd]) { p.value.dispose(); p.grad!.dispose(); }
  });
});
