// Deployable rows of the quantized methods, straight from their plugins on a
// tiny random base (the runner test covers the whole path; this one covers
// the QLoRA rows requantized to the suite's QA-LoRA widths).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaModel, Tensor, preset, saveHfModel } from '@tunebench/core';
import { loraLayers } from '@tunebench/lora';
import { methodPlugin, parseMethods } from '../src/index.js';

function fixedLoss(model: LlamaModel): Record<string, number> {
  const B = 2, T = 32;
  const ids = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 11) % 259), [B, T], { dtype: 'i32' });
  const targets = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 48) % 259), [B, T], { dtype: 'i32' });
  try {
    const { lossSum, count } = model.forward({ ids, targets }, { training: false });
    return { loss: lossSum / count };
  } finally {
    ids.dispose(); targets.dispose();
  }
}

/** B away from zero, as after training */
function perturbAdapters(model: LlamaModel): void {
  let s = 1;
  for (const l of loraLayers(model)) for (const a of l.adapters.values()) {
    const b = a.B.value.data() as Float32Array;
    for (let i = 0; i < b.length; i++) { s = (s * 16807) % 2147483647; b[i] = (s / 2147483647 - 0.5) * 0.2; }
  }
}

const dir = mkdtempSync(join(tmpdir(), 'tb-deploy-'));
const base = LlamaModel.init(preset('tiny'), { seed: 4, std: 0.15, trainable: false });
saveHfModel(base, dir, { dtype: 'f32' });
base.dispose();
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

test('QLoRA deployables add merged + requantized INT-N rows (RTN and GPTQ) at the suite\'s QA-LoRA widths', () => {
  const [qlora, ...qa] = parseMethods('qlora4,qalora4,qalora2-rtn');
  const plugin = methodPlugin('qlora');
  const model = plugin.prepare(dir, qlora, 0);
  try {
    perturbAdapters(model);
    const rows = plugin.deployables!(model, qlora, { evaluate: fixedLoss, dir, suiteMethods: [qlora, ...qa] });
    assert.deepEqual(rows.map((r) => r.kind), [
      'merged bf16', 'merged + requantized NF4',
      'merged + requantized INT4 g32 RTN', 'merged + requantized INT4 g32 GPTQ',
      'merged + requantized INT2 g32 RTN', 'merged + requantized INT2 g32 GPTQ',
    ]);
    const byKind = new Map(rows.map((r) => [r.kind, r]));
    assert.ok(Math.abs(byKind.get('merged + requantized INT4 g32 RTN')!.bits - 6) < 1e-9, '4 bits + two f32 per 32 weights');
    assert.ok(Math.abs(byKind.get('merged + requantized INT2 g32 GPTQ')!.bits - 4) < 1e-9);
    for (const r of rows) assert.ok(Number.isFinite(r.metrics.loss) && r.decodeTokensPerSecond! > 0, r.kind);
    // RTN and GPTQ give different INT-N models
    assert.notEqual(byKind.get('merged + requantized INT2 g32 RTN')!.metrics.loss, byKind.get('merged + requantized INT2 g32 GPTQ')!.metrics.loss);
    assert.equal(fixedLoss(model).loss, fixedLoss(model).loss);
    assert.ok(loraLayers(model).length > 0, 'the trained model keeps its adapters');
    // without QA-LoRA rows in the suite, QLoRA's rows are as before
    assert.equal(plugin.deployables!(model, qlora, { evaluate: fixedLoss, dir }).length, 2);
  } finally {
    model.dispose();
  }
});

test('the QA-LoRA deployable is the merged INT-N model, exact: the same metrics as the adapted model', () => {
  const [spec] = parseMethods('qalora3');
  const plugin = methodPlugin('qa-lora');
  const model = plugin.prepare(dir, spec, 0);
  try {
    perturbAdapters(model);
    const before = fixedLoss(model);
    const [row] = plugin.deployables!(model, spec, { evaluate: fixedLoss, dir, metrics: before });
    assert.equal(row.kind, 'QA-LoRA merged INT3');
    assert.ok(Math.abs(row.bits - 5) < 1e-9, `3 bits + two f32 per 32 weights: ${row.bits}`);
    // the merged offsets add the same delta in another order: f32 rounding of the loss at most
    assert.ok(row.vsTrained!.maxAbsMetricDiff < 1e-5, `${row.vsTrained!.maxAbsMetricDiff}`);
    assert.deepEqual(fixedLoss(model), before, 'the adapted model is left as it was');
  } finally {
    model.dispose();
  }
});

test('QA-LoRA kernel rows: the INT-N GEMM both ways and the decode kernel at the row\'s width', () => {
  const [spec] = parseMethods('qalora3');
  const cases = methodPlugin('qa-lora').kernelCases!(spec, { N: 16, inF: 64, outF: 96, seed: 1 });
  assert.deepEqual(cases.map((c) => c.name), ['int3 g32 gemm x.W^T 16x96x64', 'int3 g32 gemm dy.W 16x64x96', 'int3 g32 decode x.W^T 1x96x64']);
  for (const c of cases) { c.run(); assert.ok(c.flop > 0 && c.bytes > 0); }
  for (const c of cases) c.dispose?.();
  assert.equal(methodPlugin('qa-lora').peerUnsupported!('pytorch', spec), 'the PyTorch peer has no group-wise INT-N base or pooled (QA-LoRA) adapters');
});
