import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ArrayDataSource, LlamaModel, Trainer, memory, preset } from '@tunebench/core';
import { prepareLora } from '@tunebench/lora';
import { planMemory } from '../src/index.js';

// Measure the peak of a few training steps and compare with the plan.
function measure(name: string, method: 'full' | 'lora', B: number, T: number): { peak: Record<string, number>; total: number } {
  const cfg = preset(name);
  memory.emptyCache();
  const before = memory.snapshot().cpu;
  memory.resetPeak();
  const model = LlamaModel.init(cfg, { seed: 1, dtype: method === 'full' ? 'f32' : 'bf16', trainable: method === 'full' });
  if (method === 'lora') prepareLora(model, { r: 8, alpha: 16 });
  const rows = Array.from({ length: B }, (_, r) => ({
    ids: Int32Array.from({ length: T }, (_, t) => (r * 7 + t) % cfg.vocabSize),
    targets: Int32Array.from({ length: T }, (_, t) => (r * 7 + t + 1) % cfg.vocabSize),
  }));
  const trainer = new Trainer(model, new ArrayDataSource(rows, B), { schedule: { kind: 'constant', lr: 1e-4, warmupSteps: 0, totalSteps: 2 } });
  trainer.trainStep();
  trainer.trainStep();
  const s = memory.snapshot().cpu;
  trainer.dispose(); model.dispose();
  return { peak: s.peak, total: s.peakTotal - before.liveTotal };
}

for (const [name, method, B, T] of [['tiny', 'full', 4, 64], ['tiny', 'lora', 4, 64], ['small', 'full', 2, 128], ['small', 'lora', 2, 128]] as const) {
  test(`plan predicts the measured peak within 10%: ${name} ${method} batch ${B} x ${T}`, () => {
    const plan = planMemory(preset(name), { name: method, r: 8 }, B, T);
    const got = measure(name, method, B, T);
    for (const c of ['frozen', 'trainable', 'grad', 'optimizer'] as const) assert.equal(plan[c], got.peak[c], `${c}: predicted ${plan[c]}, measured ${got.peak[c]}`);
    const act = Math.abs(plan.activation - got.peak.activation) / got.peak.activation;
    assert.ok(act < 0.1, `activation: predicted ${plan.activation}, measured ${got.peak.activation} (${(act * 100).toFixed(1)}%)`);
    const tot = Math.abs(plan.total - got.total) / got.total;
    assert.ok(tot < 0.1, `total: predicted ${plan.total}, measured ${got.total} (${(tot * 100).toFixed(1)}%)`);
  });
}
