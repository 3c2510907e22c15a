// Activation checkpointing: a recomputed block must give exactly the loss and
// gradients of a kept one (same kernels, same order, same input), hold less
// activation memory, and resume from a training checkpoint like any run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ArrayDataSource, type CheckpointingMode, LlamaModel, Tensor, Trainer, isCheckpointed, loadCheckpoint, memory, parseCheckpointing,
  preset, saveCheckpoint,
} from '../src/index.js';

function countingRows(n: number, T: number, vocab: number): { ids: Int32Array; targets: Int32Array }[] {
  return Array.from({ length: n }, (_, r) => {
    const ids = new Int32Array(T), targets = new Int32Array(T);
    for (let t = 0; t < T; t++) { ids[t] = (r * 37 + t) % vocab; targets[t] = (r * 37 + t + 1) % vocab; }
    return { ids, targets };
  });
}

/** Loss and every gradient (as bytes) of one forward/backward under `mode`, and the activation peak. */
function lossAndGrads(mode: CheckpointingMode, numLayers = 3): { loss: number; grads: Map<string, Float32Array>; activationPeak: number } {
  const cfg = { ...preset('tiny'), numLayers };
  const model = LlamaModel.init(cfg, { seed: 5 });
  model.checkpointing = mode;
  const rows = countingRows(4, 32, cfg.vocabSize);
  const ids = Tensor.from(rows.flatMap((r) => [...r.ids]), [4, 32], { dtype: 'i32' });
  const targets = Tensor.from(rows.flatMap((r) => [...r.targets]), [4, 32], { dtype: 'i32' });
  memory.emptyCache();
  memory.resetPeak();
  const r = model.forward({ ids, targets }, { training: true });
  model.backward(1 / r.count);
  const activationPeak = memory.snapshot().cpu.peak.activation;
  const grads = new Map(model.parameters().map((p) => [p.name, Float32Array.from(p.grad!.data() as Float32Array)]));
  ids.dispose(); targets.dispose(); model.dispose();
  return { loss: r.lossSum, grads, activationPeak };
}

test('checkpointing modes parse, and say which blocks are recomputed', () => {
  assert.equal(parseCheckpointing('off'), 'off');
  assert.equal(parseCheckpointing('block'), 'block');
  assert.equal(parseCheckpointing('every:2'), 'every:2');
  for (const bad of ['every:0', 'every:x', 'all', '', null, 3]) assert.throws(() => parseCheckpointing(bad), /checkpointing must be 'off', 'block' or 'every:<k>'/);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => isCheckpointed('every:2', i)), [true, false, true, false, true]);
  assert.deepEqual([0, 1, 2].map((i) => isCheckpointed('block', i)), [true, true, true]);
  assert.deepEqual([0, 1, 2].map((i) => isCheckpointed('off', i)), [false, false, false]);
  const model = LlamaModel.init(preset('tiny'), { seed: 1 });
  assert.throws(() => { model.checkpointing = 'sometimes' as CheckpointingMode; }, /checkpointing must be/);
  model.dispose();
});

test('loss and every gradient with checkpointing are bit-identical to without, and the activation peak drops', () => {
  const off = lossAndGrads('off');
  for (const mode of ['block', 'every:2'] as const) {
    const ck = lossAndGrads(mode);
    assert.equal(ck.loss, off.loss, `${mode}: loss`);
    for (const [name, g] of off.grads) {
      const h = ck.grads.get(name)!;
      assert.ok(g.length === h.length && g.every((v, i) => Object.is(v, h[i])), `${mode}: gradient of ${name} differs`);
    }
    assert.ok(ck.activationPeak < off.activationPeak, `${mode}: activation peak ${ck.activationPeak} B vs ${off.activationPeak} B without`);
  }
  // block keeps less than every:2, which keeps less than off
  assert.ok(lossAndGrads('block').activationPeak < lossAndGrads('every:2').activationPeak);
});

test('a training step with checkpointing frees every activation, and resume from a checkpoint file gives the same losses', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-actckpt-'));
  const path = join(dir, 'ckpt.safetensors');
  const make = (mode: CheckpointingMode) => {
    const model = LlamaModel.init(preset('tiny'), { seed: 11 });
    model.checkpointing = mode;
    const data = new ArrayDataSource(countingRows(6, 12, 259), 2, 11);
    const trainer = new Trainer(model, data, { schedule: { kind: 'cosine', lr: 3e-3, warmupSteps: 2, totalSteps: 8 }, gradAccumulation: 2, seed: 11 });
    return { model, trainer };
  };
  const plain = make('off');
  const uninterrupted = Array.from({ length: 8 }, () => plain.trainer.trainStep().loss);
  plain.trainer.dispose(); plain.model.dispose();

  const first = make('block');
  const live = memory.snapshot().cpu.live.activation;
  const before = Array.from({ length: 3 }, () => first.trainer.trainStep().loss);
  assert.equal(memory.snapshot().cpu.live.activation, live, 'no activation outlives a step');
  saveCheckpoint(first.trainer, path);
  first.trainer.dispose(); first.model.dispose();
  const second = make('every:2');
  loadCheckpoint(second.trainer, path);
  const after = Array.from({ length: 5 }, () => second.trainer.trainStep().loss);
  second.trainer.dispose(); second.model.dispose();
  assert.deepEqual([...before, ...after], uninterrupted, 'checkpointed and resumed = plain and uninterrupted, bit for bit');
  rmSync(dir, { recursive: true, force: true });
});
