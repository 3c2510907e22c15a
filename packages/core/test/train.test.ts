import { test } from 'node:test';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import {
  ArrayDataSource, DivergedError, LlamaModel, Trainer, learningRate, loadCheckpoint, memory, preset, saveCheckpoint,
} from '../src/index.js';
import { relErr, countingRows } from './helpers.js';


function run(steps: number, opts: { seed?: number; accum?: number; batch?: number; lr?: number } = {}): number[] {
  const model = LlamaModel.init(preset('tiny'), { seed: opts.seed ?? 7 });
  const data = new ArrayDataSource(countingRows(8, 16, 259), opts.batch ?? 4, opts.seed ?? 7);
  const trainer = new Trainer(model, data, {
    schedule: { kind: 'cosine', lr: opts.lr ?? 3e-3, warmupSteps: 2, totalSteps: steps }, gradAccumulation: opts.accum ?? 1, seed: opts.seed ?? 7,
  });
  const losses = [];
  for (let i = 0; i < steps; i++) losses.push(trainer.trainStep().loss);
  trainer.dispose(); model.dispose();
  return losses;
}

test('full fine-tuning on a fixed batch halves the loss within 40 steps', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 1 });
  const data = new ArrayDataSource(countingRows(4, 16, 259), 4, 1, false);
  const trainer = new Trainer(model, data, { schedule: { kind: 'constant', lr: 3e-3, warmupSteps: 0, totalSteps: 40 } });
  const first = trainer.trainStep().loss;
  let last = first;
  for (let i = 1; i < 40; i++) last = trainer.trainStep().loss;
  assert.ok(last < first / 2, `loss ${first.toFixed(3)} -> ${last.toFixed(3)} did not halve`);
  trainer.dispose(); model.dispose();
});

test('same seed gives identical losses; another seed does not', () => {
  const a = run(6), b = run(6), c = run(6, { seed: 8 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

test('gradient accumulation normalises by all target tokens, not by the number of micro-batches', () => {
  // One batch of 4 rows vs 2 micro-batches of 2 rows, with different numbers
  // of masked targets per row: identical gradients only if the loss is
  // divided by the total target count of the step.
  const rows = countingRows(4, 12, 259);
  rows[0].targets.fill(-100, 0, 9);   // row 0: 3 targets
  rows[3].targets.fill(-100, 0, 2);   // row 3: 10 targets
  const grads = (batch: number, accum: number) => {
    const model = LlamaModel.init(preset('tiny'), { seed: 5 });
    const trainer = new Trainer(model, new ArrayDataSource(rows, batch, 0, false), {
      schedule: { kind: 'constant', lr: 0, warmupSteps: 0, totalSteps: 1 }, gradAccumulation: accum, maxGradNorm: null,
    });
    const stats = trainer.trainStep();
    const g = model.parameters().map((p) => p.grad!.toFloat32());
    trainer.dispose(); model.dispose();
    return { g, stats };
  };
  const one = grads(4, 1), two = grads(2, 2);
  assert.equal(one.stats.targetTokens, two.stats.targetTokens);
  assert.ok(Math.abs(one.stats.loss - two.stats.loss) < 1e-6 * Math.abs(one.stats.loss), `loss ${one.stats.loss} vs ${two.stats.loss}`);
  one.g.forEach((g, i) => assert.ok(relErr(two.g[i], g) < 1e-5, `gradient ${i} differs: ${relErr(two.g[i], g)}`));
});

test('schedules: linear warmup, then constant or cosine to the floor', () => {
  const s = { kind: 'cosine' as const, lr: 1, warmupSteps: 4, totalSteps: 14, minLrRatio: 0.1 };
  assert.equal(learningRate(s, 0), 0);
  assert.equal(learningRate(s, 2), 0.5);
  assert.equal(learningRate(s, 4), 1);
  assert.ok(Math.abs(learningRate(s, 9) - (0.1 + 0.9 * 0.5)) < 1e-12, 'half way down the cosine');
  assert.ok(Math.abs(learningRate(s, 14) - 0.1) < 1e-12);
  assert.equal(learningRate({ ...s, kind: 'constant' }, 9), 1);
  const model = LlamaModel.init(preset('tiny'));
  assert.throws(() => new Trainer(model, new ArrayDataSource(countingRows(1, 4, 259), 1), {
    schedule: { kind: 'linear' as never, lr: 1, warmupSteps: 0, totalSteps: 1 },
  }), /kind must be 'constant' or 'cosine'/);
  model.dispose();
});

test('a NaN loss stops training with a DivergedError naming the step, and frees the batch', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 2 });
  const trainer = new Trainer(model, new ArrayDataSource(countingRows(4, 8, 259), 2), { schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 5 } });
  trainer.trainStep();
  (model.norm.value.data() as Float32Array)[3] = NaN;
  const live = memory.snapshot().cpu.live.activation;
  assert.throws(() => trainer.trainStep(), (e: unknown) => e instanceof DivergedError && e.step === 2 && /diverged at step 2/.test(e.message));
  assert.equal(memory.snapshot().cpu.live.activation, live);
  trainer.dispose(); model.dispose();
});

test('memory: weights, grads and optimizer state are counted in their categories', () => {
  const before = memory.snapshot().cpu.live;
  const model = LlamaModel.init(preset('tiny'), { seed: 3 });
  const trainer = new Trainer(model, new ArrayDataSource(countingRows(2, 8, 259), 2), { schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 1 } });
  const n = model.parameters().reduce((s, p) => s + p.value.numel, 0);
  const live = memory.snapshot().cpu.live;
  assert.equal(live.trainable - before.trainable, 4 * n);
  assert.equal(live.grad - before.grad, 4 * n);
  assert.equal(live.optimizer - before.optimizer, 8 * n);
  trainer.dispose(); model.dispose();
  const after = memory.snapshot().cpu.live;
  for (const c of ['trainable', 'grad', 'optimizer', 'activation'] as const) assert.equal(after[c], before[c], c);
});

test('resume from a checkpoint gives the same losses as an uninterrupted run', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-ckpt-'));
  const path = join(dir, 'ckpt.safetensors');
  const make = () => {
    const model = LlamaModel.init(preset('tiny'), { seed: 11 });
    const data = new ArrayDataSource(countingRows(6, 12, 259), 2, 11);
    const trainer = new Trainer(model, data, { schedule: { kind: 'cosine', lr: 3e-3, warmupSteps: 2, totalSteps: 8 }, gradAccumulation: 2, seed: 11 });
    return { model, trainer };
  };
  const full = make();
  const uninterrupted = Array.from({ length: 8 }, () => full.trainer.trainStep().loss);
  full.trainer.dispose(); full.model.dispose();

  const first = make();
  const before = Array.from({ length: 3 }, () => first.trainer.trainStep().loss);
  saveCheckpoint(first.trainer, path);
  first.trainer.dispose(); first.model.dispose();

  const second = make();  // fresh weights, fresh data order: everything must come from the file
  loadCheckpoint(second.trainer, path);
  assert.equal(second.trainer.step, 3);
  const after = Array.from({ length: 5 }, () => second.trainer.trainStep().loss);
  second.trainer.dispose(); second.model.dispose();
  assert.deepEqual([...before, ...after], uninterrupted);
  rmSync(dir, { recursive: true, force: true });
});

test('a checkpoint for another model, or a corrupt one, is refused with a clear error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-ckpt-'));
  const path = join(dir, 'ckpt.safetensors');
  const model = LlamaModel.init(preset('tiny'), { seed: 1 });
  const trainer = new Trainer(model, new ArrayDataSource(countingRows(2, 8, 259), 2), { schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 2 } });
  trainer.trainStep();
  saveCheckpoint(trainer, path);
  const other = LlamaModel.init({ ...preset('tiny'), numLayers: 1 }, { seed: 1 });
  const otherTrainer = new Trainer(other, new ArrayDataSource(countingRows(2, 8, 259), 2), { schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 2 } });
  const live = memory.snapshot().cpu.liveTotal;
  assert.throws(() => loadCheckpoint(otherTrainer, path), /written for model config/);
  assert.equal(memory.snapshot().cpu.liveTotal, live, 'nothing leaked by a refused checkpoint');
  const bytes = readFileSync(path);
  writeFileSync(path, bytes.subarray(0, bytes.length - 100));
  assert.throws(() => loadCheckpoint(trainer, path), /ckpt\.safetensors/);
  for (const x of [trainer, otherTrainer]) x.dispose();
  model.dispose(); other.dispose();
  rmSync(dir, { recursive: true, force: true });
});
