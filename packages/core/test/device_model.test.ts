// A whole model on a device: LlamaModel.to(device), training, evaluation and
// generation with every tensor the model, trainer and optimizer allocate on
// the model's device. On the CPU: moving is a no-op and everything stays on
// the CPU. On CUDA (skipped without a device): the same training and decoding
// as the CPU reference, within bf16 GEMM tolerance.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ArrayDataSource, type Batch, IntNLinear, KVCache, LlamaModel, Quant4Linear, quantize4bit, quantizeIntN, type Optimizer, Tensor, Trainer, copyRows, evaluateLoss, generate, hostValues,
  loadCheckpoint, makeOptimizer, memory, preset, readSafetensors, saveCheckpoint,
} from '../src/index.js';
import { normalizedError, skipCuda } from './cuda_helpers.js';
import { countingRows } from './helpers.js';


/** Every tensor a trained model and its optimizer hold. */
function modelTensors(model: LlamaModel, optimizer?: Optimizer): Tensor[] {
  const out: Tensor[] = [];
  for (const p of model.parameters()) {
    out.push(p.value);
    if (p.grad) out.push(p.grad);
    if (p.quantized) out.push(...Object.values(p.quantized).filter((v): v is Tensor => v instanceof Tensor));
  }
  if (optimizer) out.push(...optimizer.stateTensors().values());
  return out;
}

function packedBatch(B: number, T: number, vocab: number): Batch {
  // two examples per row: positions restart and segments change half way
  const ids = new Int32Array(B * T), targets = new Int32Array(B * T), seg = new Int32Array(B * T), pos = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const i = b * T + t, half = t < T / 2 ? 0 : 1;
      ids[i] = (b * 13 + t * 7) % vocab;
      targets[i] = t === T - 1 ? -100 : (b * 13 + (t + 1) * 7) % vocab;
      seg[i] = half;
      pos[i] = half ? t - T / 2 : t;
    }
  }
  return {
    ids: Tensor.from(ids, [B, T], { dtype: 'i32' }), targets: Tensor.from(targets, [B, T], { dtype: 'i32' }),
    segments: Tensor.from(seg, [B, T], { dtype: 'i32' }), positions: Tensor.from(pos, [B, T], { dtype: 'i32' }),
  };
}

describe('a model on the CPU', () => {
  test("to('cpu') is a no-op: the same model, the same tensors, nothing allocated", () => {
    const model = LlamaModel.init(preset('tiny'), { seed: 3 });
    const before = modelTensors(model);
    const live = memory.snapshot().cpu.liveTotal;
    assert.equal(model.device, 'cpu');
    assert.equal(model.to('cpu'), model);
    const after = modelTensors(model);
    assert.equal(after.length, before.length);
    after.forEach((t, i) => assert.equal(t, before[i], `tensor ${i} was replaced`));
    assert.equal(memory.snapshot().cpu.liveTotal, live);
    model.dispose();
  });

  for (const kind of ['adamw', 'adamw8bit'] as const) {
    test(`every tensor of a trained model stays on the CPU (${kind}): parameters, gradients, optimizer state, KV cache`, () => {
      const model = LlamaModel.init(preset('tiny'), { seed: 3 }).to('cpu');
      const data = new ArrayDataSource(countingRows(4, 16, 259), 2, 1, false);
      const trainer = new Trainer(model, data, { schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 2 }, optimizerFactory: makeOptimizer(kind) });
      for (let i = 0; i < 2; i++) assert.ok(Number.isFinite(trainer.trainStep().loss));
      const all = modelTensors(model, trainer.optimizer);
      assert.ok(all.length > 0);
      for (const t of all) assert.equal(t.device, 'cpu', String(t));
      const cache = new KVCache(model.config, 1, 8, model.device);
      for (const t of [...cache.k, ...cache.v]) assert.equal(t.device, 'cpu');
      model.hidden(Tensor.from([1, 2, 3], [1, 3], { dtype: 'i32' }), cache).dispose();
      assert.equal(cache.length, 3);
      cache.dispose();
      trainer.dispose(); model.dispose();
    });
  }

  test("the KV-cache append and the last-row read that a device model does with copyRows match the CPU model's loops", () => {
    // writeCache on a device: B rows of T*H*D elements into [B, Tmax, H, D] at position `at`
    const [B, T, H, D, Tmax, at] = [3, 2, 2, 4, 7, 4], row = H * D;
    const xv = Float32Array.from({ length: B * T * row }, (_, i) => i + 1);
    const x = Tensor.from(xv, [B, T, H, D]), cache = Tensor.zeros([B, Tmax, H, D]);
    copyRows(x, 0, T * row, cache, at * row, Tmax * row, T * row, B);
    const want = new Float32Array(B * Tmax * row);
    for (let b = 0; b < B; b++) want.set(xv.subarray(b * T * row, (b + 1) * T * row), (b * Tmax + at) * row);
    assert.deepEqual(cache.toFloat32(), want);
    // generate on a device: the last of T rows of C hidden values
    const C = 5, h = Tensor.from(Float32Array.from({ length: 4 * C }, (_, i) => i), [4, C]), last = Tensor.zeros([1, C]);
    copyRows(h, 3 * C, 0, last, 0, 0, C, 1);
    assert.deepEqual([...last.toFloat32()], [15, 16, 17, 18, 19]);
    for (const t of [x, cache, h, last]) t.dispose();
  });

  test("a quantized layer's to('cpu') keeps its codes and constants (the same tensors)", () => {
    const w = Tensor.from(Float32Array.from({ length: 32 * 64 }, (_, i) => Math.sin(i)), [32, 64]);
    const layers = [
      new Quant4Linear('q4', quantize4bit(w, { format: 'nf4', doubleQuant: true })),
      new IntNLinear('intn', quantizeIntN(w, { bits: 3, groupSize: 32 })),
    ];
    for (const l of layers) {
      const before = Object.values(l.quantized).filter((v) => v instanceof Tensor);
      l.to('cpu');
      assert.deepEqual(Object.values(l.quantized).filter((v) => v instanceof Tensor), before);
      assert.equal(l.weight.value, before[0]);
      l.dispose();
    }
    w.dispose();
  });

  test('copyRows copies strided rows and refuses ranges past either end', () => {
    const src = Tensor.from([1, 2, 3, 4, 5, 6], [6]), dst = Tensor.zeros([8]);
    copyRows(src, 1, 3, dst, 0, 4, 2, 2);  // rows [2, 3] and [5, 6]
    assert.deepEqual([...dst.toFloat32()], [2, 3, 0, 0, 5, 6, 0, 0]);
    assert.throws(() => copyRows(src, 4, 3, dst, 0, 4, 2, 2), /past the end of 'src'/);
    assert.throws(() => copyRows(src, 0, 3, dst, 5, 4, 2, 2), /past the end of 'dst'/);
    src.dispose(); dst.dispose();
  });
});

// GEMM inputs are bf16 on the GPU (fp32 accumulation): losses agree to about 1e-2.
const LOSS_TOL = 2e-2;

describe('a model on CUDA against the same model on the CPU', { skip: skipCuda }, () => {
  test('three training steps from the same init and batches give the same losses; state lives on the GPU', () => {
    const cfg = preset('tiny');
    const losses: Record<'cpu' | 'cuda', number[]> = { cpu: [], cuda: [] };
    for (const device of ['cpu', 'cuda'] as const) {
      const model = LlamaModel.init(cfg, { seed: 5 }).to(device);
      assert.equal(model.device, device);
      const data = new ArrayDataSource(countingRows(8, 16, cfg.vocabSize), 4, 5, false);
      const trainer = new Trainer(model, data, { schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 3 }, seed: 5 });
      for (let i = 0; i < 3; i++) losses[device].push(trainer.trainStep().loss);
      for (const t of modelTensors(model, trainer.optimizer)) assert.equal(t.device, device, String(t));
      trainer.dispose(); model.dispose();
    }
    for (const l of losses.cuda) assert.ok(Number.isFinite(l), `CUDA loss ${l}`);
    const e = normalizedError(losses.cuda, losses.cpu);
    assert.ok(e < LOSS_TOL, `losses cuda ${losses.cuda.map((x) => x.toFixed(5))} vs cpu ${losses.cpu.map((x) => x.toFixed(5))}: normalised error ${e.toExponential(3)}`);
  });

  test('AdamW8bit state on the GPU, a packed batch (segments, positions) and evaluation agree with the CPU', () => {
    const cfg = preset('tiny');
    const out: Record<'cpu' | 'cuda', number[]> = { cpu: [], cuda: [] };
    for (const device of ['cpu', 'cuda'] as const) {
      const model = LlamaModel.init(cfg, { seed: 9 }).to(device);
      const data = new ArrayDataSource(countingRows(8, 16, cfg.vocabSize), 4, 9, false);
      const trainer = new Trainer(model, data, {
        schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 2 }, optimizerFactory: makeOptimizer('adamw8bit'),
      });
      for (let i = 0; i < 2; i++) out[device].push(trainer.trainStep().loss);
      for (const t of trainer.optimizer.stateTensors().values()) assert.equal(t.device, device);
      out[device].push(evaluateLoss(model, [packedBatch(2, 16, cfg.vocabSize)]).loss);
      const b = packedBatch(2, 16, cfg.vocabSize);
      const r = model.forward(b, { training: false, rowLosses: true });
      out[device].push(...r.rows!.lossSum);
      for (const t of [b.ids, b.targets, b.segments!, b.positions!]) t.dispose();
      trainer.dispose(); model.dispose();
    }
    const e = normalizedError(out.cuda, out.cpu);
    assert.ok(e < LOSS_TOL, `cuda ${out.cuda.map((x) => x.toFixed(5))} vs cpu ${out.cpu.map((x) => x.toFixed(5))}: normalised error ${e.toExponential(3)}`);
  });

  test('greedy generation gives the same first tokens, with and without the KV cache', () => {
    // larger weights than the default init make the logits decisive, so a
    // bf16 rounding cannot flip the argmax of a near tie
    const cfg = preset('tiny');
    const prompt = [1, 17, 42, 99, 7];
    const tokens: Record<string, number[]> = {};
    for (const device of ['cpu', 'cuda'] as const) {
      const model = LlamaModel.init(cfg, { seed: 11, std: 0.3, trainable: false }).to(device);
      tokens[device] = generate(model, prompt, { maxNewTokens: 6 }).tokens;
      tokens[`${device} no cache`] = generate(model, prompt, { maxNewTokens: 6, noCache: true }).tokens;
      model.dispose();
    }
    assert.deepEqual(tokens.cuda.slice(0, 3), tokens.cpu.slice(0, 3), JSON.stringify(tokens));
    assert.deepEqual(tokens.cuda, tokens['cuda no cache'], JSON.stringify(tokens));
  });

  test('a checkpoint of a CUDA run is written from host copies and loads back into a CUDA trainer', () => {
    const cfg = preset('tiny');
    const dir = mkdtempSync(join(tmpdir(), 'tunebench-device-'));
    try {
      const model = LlamaModel.init(cfg, { seed: 2 }).to('cuda');
      const data = new ArrayDataSource(countingRows(8, 16, cfg.vocabSize), 4, 2, false);
      const trainer = new Trainer(model, data, { schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 4 } });
      trainer.trainStep();
      const path = join(dir, 'ckpt.safetensors');
      saveCheckpoint(trainer, path);
      const { tensors } = readSafetensors(path, { category: 'workspace' });
      const saved = tensors.get(`model.${model.embed.name}`)!;
      assert.deepEqual([...saved.toFloat32()], [...model.embed.value.toFloat32()]);
      for (const t of tensors.values()) t.dispose();
      const next = trainer.trainStep().loss;
      loadCheckpoint(trainer, path);
      const again = trainer.trainStep().loss;
      assert.ok(Math.abs(again - next) <= 1e-4 * Math.abs(next), `resumed loss ${again} vs ${next}`);
      trainer.dispose(); model.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('quantized layers move their codes and constants to CUDA and back unchanged', () => {
    const w = Tensor.from(Float32Array.from({ length: 32 * 64 }, (_, i) => Math.sin(i)), [32, 64]);
    const layers = [
      new Quant4Linear('q4', quantize4bit(w, { format: 'nf4', doubleQuant: true })),
      new IntNLinear('intn', quantizeIntN(w, { bits: 3, groupSize: 32 })),
    ];
    for (const l of layers) {
      const dense = l.toDense().toFloat32();
      l.to('cuda');
      for (const t of [l.weight.value, ...Object.values(l.quantized).filter((v): v is Tensor => v instanceof Tensor)]) assert.equal(t.device, 'cuda');
      if (l instanceof Quant4Linear) for (const t of [l.quantized.dq!.codes, l.quantized.dq!.scales]) assert.equal(t.device, 'cuda');
      l.to('cpu');
      assert.deepEqual(l.toDense().toFloat32(), dense);
      l.dispose();
    }
    w.dispose();
  });

  test('to(cuda) then to(cpu) gives back the same values', () => {
    const model = LlamaModel.init(preset('tiny'), { seed: 4 });
    const before = model.parameters().map((p) => Float32Array.from(hostValues(p.value) as Float32Array));
    model.to('cuda');
    assert.equal(model.device, 'cuda');
    model.to('cpu');
    model.parameters().forEach((p, i) => assert.deepEqual(p.value.data(), before[i], p.name));
    model.dispose();
  });
});
