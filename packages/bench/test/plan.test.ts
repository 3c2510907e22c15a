import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArrayDataSource, type CheckpointingMode, LlamaModel, Trainer, makeOptimizer, memory, preset, saveHfModel } from '@tunebench/core';
import { prepareLora } from '@tunebench/lora';
import { loadQloraModel } from '@tunebench/qlora';
import { loadQaloraModel } from '@tunebench/qa-lora';
import { type MethodSpec, parseMethods, planFor } from '../src/index.js';

// Measure the peak of a few training steps and compare with the plan. A
// QLoRA model is measured from loading on (quantized as it is read), so the
// recorded peak would show a dense copy of the base if one were ever made.
function measure(name: string, spec: MethodSpec, B: number, T: number, mode: CheckpointingMode = 'off'): { peak: Record<string, number>; total: number } {
  const cfg = preset(name);
  const method = spec.name;
  let dir: string | null = null;
  if (method === 'qlora' || method === 'qa-lora') {
    dir = mkdtempSync(join(tmpdir(), 'tb-plan-'));
    const dense = LlamaModel.init(cfg, { seed: 1, dtype: 'bf16', trainable: false });
    saveHfModel(dense, dir);
    dense.dispose();
  }
  memory.emptyCache();
  const before = memory.snapshot().cpu;
  memory.resetPeak();
  let model: LlamaModel;
  if (dir && method === 'qa-lora') {
    // GPTQ's dense projections are workspace temporaries: the frozen peak must still be the INT-N base
    const gptq = spec.options?.quantizer === 'gptq';
    const calibration = gptq ? Array.from({ length: 4 }, (_, r) => Int32Array.from({ length: 64 }, (_, t) => (r * 11 + t * 3) % cfg.vocabSize)) : undefined;
    model = loadQaloraModel(dir, { r: spec.r, alpha: spec.alpha, ...(spec.options as object) }, { calibration }).model;
  } else if (dir) {
    model = loadQloraModel(dir, { r: spec.r, alpha: spec.alpha, ...(spec.options as object) }).model;
  } else {
    model = LlamaModel.init(cfg, { seed: 1, dtype: method === 'full' ? 'f32' : 'bf16', trainable: method === 'full' });
    if (method === 'lora') prepareLora(model, { r: 8, alpha: 16, trainEmbeddings: spec.options?.trainEmbeddings === true });
    // trainEmbeddings frees the bf16 embedding for an f32 copy: the plan is of
    // a training step, after that swap, so the peak starts there
    if (spec.options?.trainEmbeddings) memory.resetPeak();
  }
  const rows = Array.from({ length: B }, (_, r) => ({
    ids: Int32Array.from({ length: T }, (_, t) => (r * 7 + t) % cfg.vocabSize),
    targets: Int32Array.from({ length: T }, (_, t) => (r * 7 + t + 1) % cfg.vocabSize),
  }));
  model.checkpointing = mode;
  const optimizer = (spec.options?.optimizer ?? 'adamw') as 'adamw' | 'adamw8bit';
  const trainer = new Trainer(model, new ArrayDataSource(rows, B), { schedule: { kind: 'constant', lr: 1e-4, warmupSteps: 0, totalSteps: 2 }, optimizerFactory: makeOptimizer(optimizer) });
  trainer.trainStep();
  trainer.trainStep();
  const s = memory.snapshot().cpu;
  trainer.dispose(); model.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
  return { peak: s.peak, total: s.peakTotal - before.liveTotal };
}

const CASES = [['tiny', 'full', 4, 64], ['tiny', 'lora8', 4, 64], ['tiny', 'qlora8', 4, 64], ['tiny', 'full-8bit', 4, 64],
  ['small', 'full', 2, 128], ['small', 'lora8', 2, 128], ['small', 'qlora8', 2, 128], ['small', 'qlora64-8bit', 2, 128],
  ['tiny', 'qalora4', 4, 64], ['small', 'qalora2-rtn', 2, 128]] as const;
for (const [name, token, B, T] of CASES) {
  test(`plan predicts the measured peak within 10%: ${name} ${token} batch ${B} x ${T}`, () => {
    const spec = parseMethods(token)[0];
    if (spec.name === 'lora') Object.assign(spec, { r: 8, alpha: 16 });
    const plan = planFor(preset(name), spec, B, T);
    const got = measure(name, spec, B, T);
    for (const c of ['frozen', 'trainable', 'grad', 'optimizer'] as const) assert.equal(plan[c], got.peak[c], `${c}: predicted ${plan[c]}, measured ${got.peak[c]}`);
    const act = Math.abs(plan.activation - got.peak.activation) / got.peak.activation;
    assert.ok(act < 0.1, `activation: predicted ${plan.activation}, measured ${got.peak.activation} (${(act * 100).toFixed(1)}%)`);
    const tot = Math.abs(plan.total - got.total) / got.total;
    assert.ok(tot < 0.1, `total: predicted ${plan.total}, measured ${got.total} (${(tot * 100).toFixed(1)}%)`);
  });
}

test('plan with LoRA trainEmbeddings: the embedding moves from frozen bf16 to trainable f32 with grad and AdamW state, as measured', () => {
  const spec: MethodSpec = { name: 'lora', r: 8, alpha: 16, lr: 1e-3, label: 'lora-r8-emb', options: { trainEmbeddings: true } };
  const plain = planFor(preset('tiny'), { ...spec, options: {} }, 4, 64);
  const plan = planFor(preset('tiny'), spec, 4, 64);
  const VC = preset('tiny').vocabSize * preset('tiny').hiddenSize;
  assert.equal(plain.frozen - plan.frozen, 2 * VC);
  assert.equal(plan.trainable - plain.trainable, 4 * VC);
  assert.equal(plan.optimizer - plain.optimizer, 8 * VC);
  const got = measure('tiny', spec, 4, 64);
  for (const c of ['frozen', 'trainable', 'grad', 'optimizer'] as const) assert.equal(plan[c], got.peak[c], `${c}: predicted ${plan[c]}, measured ${got.peak[c]}`);
});

// activation checkpointing: each mode predicted as closely as 'off'
for (const [name, token, B, T] of [['tiny', 'full', 4, 64], ['small', 'lora8', 2, 128], ['small', 'qlora8', 2, 128], ['small', 'full', 2, 128]] as const) {
  for (const mode of ['block', 'every:2'] as const) {
    test(`plan with checkpointing ${mode} predicts the measured peak within 10%: ${name} ${token} batch ${B} x ${T}`, () => {
      const spec = parseMethods(token)[0];
      const plan = planFor(preset(name), spec, B, T, 1, mode), off = planFor(preset(name), spec, B, T, 1, 'off');
      const got = measure(name, spec, B, T, mode);
      const act = Math.abs(plan.activation - got.peak.activation) / got.peak.activation;
      assert.ok(act < 0.1, `activation: predicted ${plan.activation}, measured ${got.peak.activation} (${(act * 100).toFixed(1)}%)`);
      const tot = Math.abs(plan.total - got.total) / got.total;
      assert.ok(tot < 0.1, `total: predicted ${plan.total}, measured ${got.total} (${(tot * 100).toFixed(1)}%)`);
      assert.ok(plan.activation < off.activation, 'checkpointing predicts fewer activation bytes');
    });
  }
}

test('a QLoRA run never holds the dense base: the peak frozen bytes are the 4-bit base, far below bf16', () => {
  const cfg = preset('small');
  const spec = parseMethods('qlora8')[0];
  const got = measure('small', spec, 2, 64);
  const plan = planFor(cfg, spec, 2, 64), dense = planFor(cfg, parseMethods('lora8')[0], 2, 64);
  assert.equal(got.peak.frozen, plan.frozen, 'frozen peak = quantized projections + bf16 embedding and norms');
  assert.ok(got.peak.frozen < 0.4 * dense.frozen, `frozen peak ${got.peak.frozen} B vs the bf16 base ${dense.frozen} B`);
});
