// LoRA on a model moved to a device: the adapters move with their layers,
// their gradients and optimizer state live there, dropout and the bf16 merge
// work off the CPU. On the CPU: moving is a no-op. On CUDA (skipped without
// a device): the same training as the CPU reference within bf16 GEMM tolerance.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ArrayDataSource, DenseLinear, LlamaModel, Tensor, Trainer, cudaInfo, evaluateLoss, memory, preset, readSafetensors,
} from '@tunebench/core';
import { LoraLinear, loraLayers, mergeAndUnload, prepareLora, saveAdapter } from '../src/index.js';

const info = cudaInfo();
const skipCuda: false | string = info.available ? false : `no CUDA device (${info.compiled ? info.reason : 'this build has no CUDA backend'}); run on a GPU machine`;

function countingRows(n: number, T: number, vocab: number): { ids: Int32Array; targets: Int32Array }[] {
  return Array.from({ length: n }, (_, r) => {
    const ids = new Int32Array(T), targets = new Int32Array(T);
    for (let t = 0; t < T; t++) { ids[t] = (r * 37 + t) % vocab; targets[t] = (r * 37 + t + 1) % vocab; }
    return { ids, targets };
  });
}

function loraModel(seed: number, dropout = 0): LlamaModel {
  const model = LlamaModel.init(preset('tiny'), { seed, dtype: 'bf16', trainable: false });
  prepareLora(model, { r: 4, alpha: 8, seed, dropout });
  // B starts at zero; a nonzero B makes the adapter path count from the first step
  for (const l of loraLayers(model)) for (const a of l.adapters.values()) (a.B.value.data() as Float32Array).fill(0.01);
  return model;
}

function tensorsOf(model: LlamaModel): Tensor[] {
  return model.parameters().flatMap((p) => [p.value, ...(p.grad ? [p.grad] : [])]);
}

describe('LoRA on the CPU', () => {
  test("to('cpu') is a no-op and training keeps adapters, gradients and optimizer state on the CPU", () => {
    const model = loraModel(1, 0.1);
    const before = tensorsOf(model), live = memory.snapshot().cpu.liveTotal;
    assert.equal(model.to('cpu'), model);
    tensorsOf(model).forEach((t, i) => assert.equal(t, before[i]));
    assert.equal(memory.snapshot().cpu.liveTotal, live);
    const trainer = new Trainer(model, new ArrayDataSource(countingRows(4, 16, 259), 2, 1, false), {
      schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 2 },
    });
    trainer.trainStep();
    for (const t of [...tensorsOf(model), ...trainer.optimizer.stateTensors().values()]) assert.equal(t.device, 'cpu');
    trainer.dispose(); model.dispose();
  });
});

test("dropout off the CPU draws the CPU path's mask: the host computation gives the same mask and input", () => {
  const [N, inF, outF, p] = [6, 16, 8, 0.3];
  const layers = [0, 1].map(() => {
    const w = Tensor.from(Float32Array.from({ length: outF * inF }, (_, i) => Math.sin(i)), [outF, inF], { category: 'frozen' });
    const l = new LoraLinear(new DenseLinear('model.layers.0.self_attn.q_proj', w, null), 7);
    l.addAdapter('default', { r: 2, alpha: 4, rslora: false, dropout: p, init: 'kaiming', seed: 1 });
    return l;
  });
  const x = Tensor.from(Float32Array.from({ length: N * inF }, (_, i) => Math.cos(i)), [N, inF]);
  layers[0].forward(x).dispose();
  const saved = (layers[0] as unknown as { saved: { mask: Tensor; xa: Tensor } }).saved;
  const host = (layers[1] as unknown as { dropoutOnHost(x: Tensor, p: number): { mask: Tensor; xa: Tensor } }).dropoutOnHost(x, p);
  assert.deepEqual(host.mask.toFloat32(), saved.mask.toFloat32());
  assert.deepEqual(host.xa.toFloat32(), saved.xa.toFloat32());
  host.mask.dispose(); host.xa.dispose();
  for (const l of layers) l.dispose();
  x.dispose();
});

describe('LoRA on CUDA against the CPU', { skip: skipCuda }, () => {
  test('three steps over a bf16 base (with dropout) give the CPU losses; adapters save and merge from the GPU', () => {
    const losses: Record<'cpu' | 'cuda', number[]> = { cpu: [], cuda: [] };
    const merged: Record<'cpu' | 'cuda', number> = { cpu: NaN, cuda: NaN };
    const dir = mkdtempSync(join(tmpdir(), 'tunebench-lora-device-'));
    try {
      for (const device of ['cpu', 'cuda'] as const) {
        const model = loraModel(3, 0.1).to(device);
        const data = new ArrayDataSource(countingRows(8, 16, 259), 4, 3, false);
        const trainer = new Trainer(model, data, { schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 3 }, seed: 3 });
        for (let i = 0; i < 3; i++) losses[device].push(trainer.trainStep().loss);
        for (const t of [...tensorsOf(model), ...trainer.optimizer.stateTensors().values()]) assert.equal(t.device, device, String(t));
        saveAdapter(model, join(dir, device));
        const { tensors } = readSafetensors(join(dir, device, 'adapter_model.safetensors'), { category: 'workspace' });
        assert.ok(tensors.size > 0);
        for (const t of tensors.values()) t.dispose();
        mergeAndUnload(model);
        merged[device] = evaluateLoss(model, [new ArrayDataSource(countingRows(4, 16, 259), 4, 0, false).next()]).loss;
        trainer.dispose(); model.dispose();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const rel = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i]))) / Math.max(...b.map(Math.abs));
    assert.ok(rel(losses.cuda, losses.cpu) < 2e-2, `losses cuda ${losses.cuda} vs cpu ${losses.cpu}`);
    assert.ok(rel([merged.cuda], [merged.cpu]) < 2e-2, `merged loss cuda ${merged.cuda} vs cpu ${merged.cpu}`);
  });
});
