import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import {
  ADAMW8BIT_BLOCK_SIZE, ADAMW8BIT_MIN_SIZE, AdamW, AdamW8bit, ArrayDataSource, LlamaModel, Tensor, Trainer, adamw8bitStep,
  dynamicMap, loadCheckpoint, makeOptimizer, memory, preset, readSafetensors, saveCheckpoint, writeSafetensors,
  type Optimizer, type Parameter,
} from '../src/index.js';
import { randn, relErr, rng, countingRows } from './helpers.js';

// Rows of a toy language (as in train.test.ts): each row counts up from a
// start token, so the loss can fall far.

function param(name: string, shape: number[], values: Float32Array): Parameter {
  return { name, value: Tensor.from(values, shape, { category: 'trainable' }), grad: Tensor.zeros(shape, { category: 'grad' }) };
}
function disposeParams(ps: Parameter[]): void {
  for (const p of ps) { p.value.dispose(); p.grad?.dispose(); }
}
/** A copy of every state tensor's bytes, to see whether anything changed. */
function snapshotState(o: Optimizer): Map<string, number[]> {
  return new Map([...o.stateTensors()].map(([k, t]) => [k, Array.from(t.data() as Uint8Array)]));
}
const close = (got: number, want: number, rel = 1e-6) => Math.abs(got - want) <= rel * Math.abs(want);

test('dynamic maps: 256 sorted values each, pinned entries, one exact zero', () => {
  const s = dynamicMap(true), u = dynamicMap(false);
  assert.equal(s.length, 256);
  assert.equal(u.length, 256);
  // Both are strictly increasing: the decades (10^(i-7), 10^(i-6)) do not
  // overlap and the 0 and 1 appended are unique, so there are no duplicated zeros.
  for (let i = 1; i < 256; i++) {
    assert.ok(s[i] > s[i - 1], `signed map not increasing at ${i}`);
    assert.ok(u[i] > u[i - 1], `unsigned map not increasing at ${i}`);
  }
  // signed: 127 negatives, then 0 at index 127, 127 positives, and 1.0. There
  // is no -1: the most negative is the largest midpoint of the last decade,
  // linspace(0.1, 1, 65) has step 0.9/64, so -(1 - 0.9/128) = -0.99296875.
  assert.equal(s[127], 0);
  assert.equal(s[255], 1);
  assert.ok(close(s[0], -0.99296875), `signed min ${s[0]}`);
  assert.ok(close(s[254], 0.99296875), `signed second largest ${s[254]}`);
  assert.ok(close(s[253], 0.97890625), `signed third largest ${s[253]}`);  // (0.971875 + 0.9859375) / 2
  assert.ok(close(s[128], 0.55e-6), `smallest positive ${s[128]}`);  // decade 0: linspace(0.1, 1, 2) -> mean 0.55, * 1e-6
  assert.ok(close(s[129], 0.325e-5), `${s[129]}`);                     // decade 1: linspace(0.1, 1, 3) -> 0.325, 0.775, * 1e-5
  assert.ok(close(s[130], 0.775e-5), `${s[130]}`);
  for (let i = 0; i < 127; i++) assert.equal(s[i], -s[254 - i], `signed map symmetric at ${i}`);
  // signed decade i holds 2^i positive values
  for (let i = 0; i < 7; i++) {
    const n = Array.from(s).filter((x) => x > 10 ** (i - 7) && x < 10 ** (i - 6)).length;
    assert.equal(n, 2 ** i, `signed decade ${i}`);
  }
  // unsigned: 0, 254 midpoints (2^(i+1) per decade), 1.0; all >= 0
  assert.equal(u[0], 0);
  assert.equal(u[255], 1);
  assert.ok(u.every((x) => x >= 0));
  assert.ok(close(u[1], 0.325e-6), `${u[1]}`);  // decade 0: linspace(0.1, 1, 3) -> 0.325, 0.775, * 1e-6
  assert.ok(close(u[2], 0.775e-6), `${u[2]}`);
  assert.ok(close(u[3], 0.2125e-5), `${u[3]}`);  // decade 1: linspace(0.1, 1, 5) -> first mean 0.2125, * 1e-5
  assert.ok(close(u[254], 0.996484375), `${u[254]}`);  // 1 - 0.9/256
  for (let i = 0; i < 7; i++) {
    const n = Array.from(u).filter((x) => x > 10 ** (i - 7) && x < 10 ** (i - 6)).length;
    assert.equal(n, 2 ** (i + 1), `unsigned decade ${i}`);
  }
  s[0] = 5;
  assert.notEqual(dynamicMap(true)[0], 5, 'each call returns a fresh copy');
});

test('adamw8bitStep: the AdamW update on dequantized state, requantized to the nearest code per block', () => {
  const r = rng();
  const n = 4100;  // 17 blocks, the last one 4 elements long
  const nb = Math.ceil(n / ADAMW8BIT_BLOCK_SIZE);
  const lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  // the kernel holds the betas in float32: 1 - 0.999f is 1.3e-5 off 0.001
  const B1 = Math.fround(b1), B2 = Math.fround(b2);
  const sMap = dynamicMap(true), uMap = dynamicMap(false);
  const p = Tensor.from(randn(n, r), [n]), g = Tensor.zeros([n]);
  const mc = Tensor.zeros([n], { dtype: 'u8' }), vc = Tensor.zeros([n], { dtype: 'u8' });
  const ma = Tensor.zeros([nb]), va = Tensor.zeros([nb]);
  (mc.data() as Uint8Array).fill(127);
  for (let step = 1; step <= 4; step++) {
    const gv = randn(n, r);
    if (step === 1) gv.fill(0, 0, 256);  // block 0 stays all zero after step 1: absmax 0, codes of 0
    (g.data() as Float32Array).set(gv);
    const P = Float64Array.from(p.data() as Float32Array);
    const mCodes = Uint8Array.from(mc.data() as Uint8Array), vCodes = Uint8Array.from(vc.data() as Uint8Array);
    const mAbs = Float64Array.from(ma.data() as Float32Array), vAbs = Float64Array.from(va.data() as Float32Array);
    adamw8bitStep(p, g, mc, ma, vc, va, { lr, beta1: b1, beta2: b2, eps, weightDecay: wd, step });
    const M = new Float64Array(n), V = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const blk = Math.floor(i / ADAMW8BIT_BLOCK_SIZE);
      M[i] = B1 * sMap[mCodes[i]] * mAbs[blk] + (1 - B1) * gv[i];
      V[i] = B2 * uMap[vCodes[i]] * vAbs[blk] + (1 - B2) * gv[i] * gv[i];
      P[i] = P[i] * (1 - lr * wd) - (lr / (1 - b1 ** step)) * M[i] / (Math.sqrt(V[i]) / Math.sqrt(1 - b2 ** step) + eps);
    }
    assert.ok(relErr(p.data() as Float32Array, P) < 1e-5, `step ${step}: params ${relErr(p.data() as Float32Array, P)} (seed ${r.seed})`);
    for (const [what, X, map, codes, absmax] of [['m', M, sMap, mc, ma], ['v', V, uMap, vc, va]] as const) {
      const gotCodes = codes.data() as Uint8Array, gotAbs = absmax.data() as Float32Array;
      for (let blk = 0; blk < nb; blk++) {
        const i0 = blk * ADAMW8BIT_BLOCK_SIZE, i1 = Math.min(n, i0 + ADAMW8BIT_BLOCK_SIZE);
        let want = 0;
        for (let i = i0; i < i1; i++) want = Math.max(want, Math.abs(X[i]));
        assert.ok(Math.abs(gotAbs[blk] - want) <= 1e-6 * want, `step ${step} ${what} absmax of block ${blk}: ${gotAbs[blk]} vs ${want} (seed ${r.seed})`);
        for (let i = i0; i < i1; i++) {
          if (want === 0) { assert.equal(map[gotCodes[i]], 0, `${what}: an all-zero block gets the code of 0`); continue; }
          const x = X[i] / want;
          let best = 0;
          for (let k = 1; k < 256; k++) if (Math.abs(map[k] - x) < Math.abs(map[best] - x)) best = k;
          if (gotCodes[i] === best) continue;
          // only a near-tie may go the other way (float32 kernel vs float64 here)
          const mid = (map[best] + map[gotCodes[i]]) / 2;
          assert.ok(Math.abs(gotCodes[i] - best) === 1 && Math.abs(x - mid) < 1e-6,
            `step ${step} ${what}[${i}]: code ${gotCodes[i]} (${map[gotCodes[i]]}) for ${x}, nearest is ${best} (${map[best]}) (seed ${r.seed})`);
        }
      }
    }
    if (step === 1) assert.equal(ma.data()[0], 0);
  }
  for (const t of [p, g, mc, vc, ma, va]) t.dispose();
});

test('adamw8bitStep names the argument it refuses', () => {
  const p = Tensor.zeros([300]), g = Tensor.zeros([300]);
  const c = Tensor.zeros([300], { dtype: 'u8' }), a = Tensor.zeros([2]);
  const opts = { lr: 1e-3, step: 1 };
  assert.throws(() => adamw8bitStep(p, g, p, a, c, a, opts), /adamw8bitStep: 'mCodes' has dtype f32, expected u8/);
  assert.throws(() => adamw8bitStep(p, g, c, a, c, Tensor.zeros([3]), opts), /'vAbsmax' has shape \[3\], expected \[2\]/);
  assert.throws(() => adamw8bitStep(p, g, c, a, Tensor.zeros([30, 10], { dtype: 'u8' }), a, opts), /'vCodes' has shape \[30, 10\], expected \[300\]/);
  assert.throws(() => adamw8bitStep(p, Tensor.zeros([299]), c, a, c, a, opts), /'grad' has shape \[299\]/);
  assert.throws(() => adamw8bitStep(p, g, c, a, c, a, { lr: 1e-3, step: 0 }), /step must be an integer >= 1/);
  for (const t of [p, g, c, a]) t.dispose();
});

test('AdamW8bit tracks the fp32 AdamW over 100 steps; small parameters match it bit for bit', () => {
  const r = rng();
  const shapes: [string, number[]][] = [['w', [64, 256]], ['norm', [5000]], ['small', [300]]];
  const init = shapes.map(([, s]) => randn(s.reduce((a, b) => a * b, 1), r));
  const make = () => shapes.map(([name, s], i) => param(name, s, init[i]));
  const a = make(), b = make();
  // weight decay on: the 1-D 'norm' parameter must not be decayed by either (decayNorms off)
  const config = { weightDecay: 0.1 };
  const o32 = makeOptimizer('adamw', config)(a), o8 = makeOptimizer('adamw8bit', config)(b);
  assert.equal(o32.name, 'adamw');
  assert.equal(o8.name, 'adamw8bit');
  for (let t = 0; t < 100; t++) {
    const gs = init.map((x) => randn(x.length, r));
    for (const ps of [a, b]) ps.forEach((p, i) => (p.grad!.data() as Float32Array).set(gs[i]));
    o32.step(1e-3);
    o8.step(1e-3);
  }
  // Judged on the parameters and on their change over the 100 steps (the
  // change is what the optimizer state drives), max-norm relative error.
  // Measured over seeds 1..10: w parameters 2.4e-4 .. 3.6e-4, change
  // 1.6e-2 .. 2.3e-2; norm parameters 2.1e-4 .. 3.0e-4, change 2.0e-2 .. 3.2e-2.
  // (Decaying the 1-D norm by mistake gives a change error of about 1.)
  for (const i of [0, 1]) {
    const p32 = a[i].value.data() as Float32Array, p8 = b[i].value.data() as Float32Array;
    const d32 = p32.map((x, k) => x - init[i][k]), d8 = p8.map((x, k) => x - init[i][k]);
    const eParam = relErr(p8, p32), eDelta = relErr(d8, d32);
    assert.ok(eParam < 7e-4, `${shapes[i][0]}: parameter relative error ${eParam.toExponential(2)} (seed ${r.seed})`);
    assert.ok(eDelta < 7e-2, `${shapes[i][0]}: update relative error ${eDelta.toExponential(2)} (seed ${r.seed})`);
  }
  const s32 = a[2].value.data() as Float32Array, s8 = b[2].value.data() as Float32Array;
  assert.ok(s8.every((x, k) => Object.is(x, s32[k])), `the ${300}-element parameter differs from fp32 AdamW`);
  o32.dispose(); o8.dispose();
  disposeParams([...a, ...b]);
});

test('AdamW8bit state: exact bytes, names, dtypes and memory category', () => {
  const r = rng();
  const before = memory.snapshot().cpu.live.optimizer;
  const ps = [param('w', [64, 256], randn(64 * 256, r))];
  const o = new AdamW8bit(ps);
  assert.equal(o.stateBytes(), 16384 * 2 + 64 * 4 * 2);
  assert.equal(memory.snapshot().cpu.live.optimizer - before, o.stateBytes());
  const st = o.stateTensors();
  assert.deepEqual([...st.keys()], ['exp_avg.w', 'exp_avg.absmax.w', 'exp_avg_sq.w', 'exp_avg_sq.absmax.w']);
  assert.deepEqual([...st.values()].map((t) => `${t.dtype}[${t.shape.join(',')}]`), ['u8[64,256]', 'f32[64]', 'u8[64,256]', 'f32[64]']);
  o.dispose();
  assert.equal(memory.snapshot().cpu.live.optimizer, before);

  // below the 8-bit threshold: fp32 state under AdamW's names; at it: 8-bit
  const small = [param('a', [ADAMW8BIT_MIN_SIZE - 1], randn(ADAMW8BIT_MIN_SIZE - 1, r)), param('b', [64, 64], randn(4096, r))];
  const o2 = new AdamW8bit(small), o3 = new AdamW(small);
  assert.equal(o2.stateBytes(), 8 * (ADAMW8BIT_MIN_SIZE - 1) + 2 * 4096 + 2 * 16 * 4);
  assert.equal(o3.stateBytes(), 8 * (ADAMW8BIT_MIN_SIZE - 1 + 4096));
  assert.deepEqual([...o2.stateTensors()].map(([k, t]) => `${k}:${t.dtype}`),
    ['exp_avg.a:f32', 'exp_avg_sq.a:f32', 'exp_avg.b:u8', 'exp_avg.absmax.b:f32', 'exp_avg_sq.b:u8', 'exp_avg_sq.absmax.b:f32']);
  o2.dispose(); o3.dispose();
  disposeParams([...ps, ...small]);
});

test('loadState refuses a wrong dtype or shape before copying anything', () => {
  const r = rng();
  for (const kind of ['adamw', 'adamw8bit'] as const) {
    const ps = [param('x', [64, 80], randn(5120, r)), param('y', [70], randn(70, r))];
    const o = makeOptimizer(kind)(ps);
    for (const p of ps) (p.grad!.data() as Float32Array).set(randn(p.value.numel, r));
    o.step(1e-2); o.step(1e-2);
    const before = snapshotState(o);
    // every other tensor is valid (and zero), and the bad one comes last, so
    // copying as it goes would show
    const good = () => new Map([...o.stateTensors()].map(([k, t]) => [k, Tensor.zeros(t.shape, { dtype: t.dtype })]));
    const cases: [string, Map<string, Tensor>, RegExp][] = [];
    {
      const m = good(); m.get('exp_avg_sq.y')!.dispose(); m.set('exp_avg_sq.y', Tensor.zeros([7, 10]));
      cases.push(['shape', m, /exp_avg_sq\.y is f32 \[7, 10\], expected f32 \[70\]/]);
    }
    {
      const m = good(); const last = [...m.keys()].filter((k) => k.endsWith('.x')).pop()!;
      const t = m.get(last)!; m.set(last, Tensor.zeros(t.shape, { dtype: t.dtype === 'u8' ? 'f32' : 'u8' })); t.dispose();
      cases.push(['dtype', m, new RegExp(`${last.replace(/\./g, '\\.')} is (u8|f32) .*expected (f32|u8)`)]);
    }
    {
      const m = good(); m.get('exp_avg.x')!.dispose(); m.delete('exp_avg.x');
      cases.push(['missing', m, /exp_avg\.x is missing/]);
    }
    { const m = good(); m.set('exp_avg.z', Tensor.zeros([1])); cases.push(['unknown', m, /exp_avg\.z is not state of this optimizer/]); }
    { const m = good(); cases.push(['step count', m, /step count -1/]); }
    for (const [what, m, re] of cases) {
      assert.throws(() => o.loadState(m, what === 'step count' ? -1 : 5), re, `${kind}: ${what}`);
      assert.deepEqual(snapshotState(o), before, `${kind}: a refused state (${what}) left the optimizer unchanged`);
      assert.equal(o.stepCount, 2);
      for (const t of m.values()) t.dispose();
    }
    // a valid one is taken whole
    const ok = good();
    o.loadState(ok, 9);
    assert.equal(o.stepCount, 9);
    for (const t of o.stateTensors().values()) assert.ok((t.data() as Uint8Array).every((x) => x === 0));
    for (const t of ok.values()) t.dispose();
    o.dispose();
    disposeParams(ps);
  }
  // the fp32 AdamW's state is not 8-bit state, and the other way round
  const ps = [param('x', [64, 80], randn(5120, r))];
  const o32 = new AdamW(ps), o8 = new AdamW8bit(ps);
  assert.throws(() => o8.loadState(o32.stateTensors(), 1), /exp_avg\.x is f32 \[64, 80\], expected u8 \[64, 80\].*exp_avg\.absmax\.x is missing/);
  assert.throws(() => o32.loadState(o8.stateTensors(), 1), /exp_avg\.x is u8 \[64, 80\], expected f32/);
  o32.dispose(); o8.dispose();
  disposeParams(ps);
});

test('makeOptimizer and the Trainer: unknown kinds and doubled configs are refused', () => {
  assert.throws(() => makeOptimizer('sgd' as never), /unknown optimizer 'sgd'/);
  const model = LlamaModel.init(preset('tiny'), { seed: 1 });
  const data = new ArrayDataSource(countingRows(2, 8, 259), 2);
  assert.throws(() => new Trainer(model, data, {
    schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 1 }, optimizer: { weightDecay: 0 }, optimizerFactory: makeOptimizer('adamw8bit'),
  }), /either optimizer .* or optimizerFactory/);
  model.dispose();
});

test('Trainer with the 8-bit AdamW: the loss halves on a fixed batch, with the state sized as planned', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 1 });
  const data = new ArrayDataSource(countingRows(4, 16, 259), 4, 1, false);
  const before = memory.snapshot().cpu.live.optimizer;
  const trainer = new Trainer(model, data, { schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 40 }, optimizerFactory: makeOptimizer('adamw8bit') });
  assert.equal(trainer.optimizer.name, 'adamw8bit');
  assert.equal(memory.snapshot().cpu.live.optimizer - before, trainer.optimizer.stateBytes());
  // 2 bytes an element and 8 per block of 256 from ADAMW8BIT_MIN_SIZE elements up, 8 bytes an element below
  const want = trainer.optimizer.params.reduce((s, p) => s + (p.value.numel < ADAMW8BIT_MIN_SIZE ? 8 * p.value.numel : 2 * p.value.numel + 8 * Math.ceil(p.value.numel / 256)), 0);
  assert.equal(trainer.optimizer.stateBytes(), want);
  const first = trainer.trainStep().loss;
  let last = first;
  for (let i = 1; i < 40; i++) last = trainer.trainStep().loss;
  assert.ok(last < first / 2, `loss ${first.toFixed(3)} -> ${last.toFixed(3)} did not halve`);
  trainer.dispose(); model.dispose();
});

test('resume from a checkpoint with the 8-bit AdamW gives the same losses and weights as an uninterrupted run', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-ckpt8-'));
  const path = join(dir, 'ckpt.safetensors');
  const make = (kind: 'adamw' | 'adamw8bit' = 'adamw8bit') => {
    const model = LlamaModel.init(preset('tiny'), { seed: 11 });
    const data = new ArrayDataSource(countingRows(6, 12, 259), 2, 11);
    const trainer = new Trainer(model, data, {
      schedule: { kind: 'cosine', lr: 3e-3, warmupSteps: 2, totalSteps: 8 }, gradAccumulation: 2, seed: 11, optimizerFactory: makeOptimizer(kind),
    });
    return { model, trainer };
  };
  const full = make();
  const uninterrupted = Array.from({ length: 8 }, () => full.trainer.trainStep().loss);
  const fullWeights = full.trainer.optimizer.params.map((p) => Array.from(p.value.data() as Float32Array));
  const fullState = snapshotState(full.trainer.optimizer);
  full.trainer.dispose(); full.model.dispose();

  const first = make();
  const before = Array.from({ length: 3 }, () => first.trainer.trainStep().loss);
  saveCheckpoint(first.trainer, path);
  first.trainer.dispose(); first.model.dispose();

  const second = make();
  loadCheckpoint(second.trainer, path);
  assert.equal(second.trainer.step, 3);
  assert.equal(second.trainer.optimizer.stepCount, 3);
  const after = Array.from({ length: 5 }, () => second.trainer.trainStep().loss);
  assert.deepEqual([...before, ...after], uninterrupted);
  second.trainer.optimizer.params.forEach((p, i) => assert.deepEqual(Array.from(p.value.data() as Float32Array), fullWeights[i], p.name));
  assert.deepEqual(snapshotState(second.trainer.optimizer), fullState);
  second.trainer.dispose(); second.model.dispose();

  // an 8-bit checkpoint is refused by a trainer with the fp32 AdamW, and the trainer is left alone
  const other = make('adamw');
  const live = memory.snapshot().cpu.liveTotal;
  assert.throws(() => loadCheckpoint(other.trainer, path), /holds state of optimizer 'adamw8bit', this trainer uses 'adamw'/);
  assert.equal(memory.snapshot().cpu.liveTotal, live);
  assert.equal(other.trainer.step, 0);

  // a checkpoint from before the optimizer name was recorded reads as 'adamw'
  other.trainer.trainStep();
  saveCheckpoint(other.trainer, path);
  const { tensors, metadata } = readSafetensors(path);
  const state = JSON.parse(metadata.state);
  assert.equal(state.optimizer, 'adamw');
  delete state.optimizer;
  writeSafetensors(path, tensors, { metadata: { ...metadata, state: JSON.stringify(state) } });
  for (const t of tensors.values()) t.dispose();
  const old = make('adamw');
  loadCheckpoint(old.trainer, path);
  assert.equal(old.trainer.step, 1);
  const eight = make('adamw8bit');
  assert.throws(() => loadCheckpoint(eight.trainer, path), /holds state of optimizer 'adamw', this trainer uses 'adamw8bit'/);
  for (const x of [other, old, eight]) { x.trainer.dispose(); x.model.dispose(); }
  rmSync(dir, { recursive: true, force: true });
});
