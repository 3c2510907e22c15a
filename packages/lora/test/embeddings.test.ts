// LoRA with trainEmbeddings: the tied embedding / LM head trains beside the adapters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArrayDataSource, LlamaModel, Tensor, Trainer, memory, preset, readSafetensorsHeader } from '@tunebench/core';
import { loadAdapter, prepareLora, saveAdapter, trainedEmbeddings, PEFT_WEIGHTS_FILE } from '../src/index.js';
import { relErr } from './helpers.js';

function rows(n: number, T: number, shift: number): { ids: Int32Array; targets: Int32Array }[] {
  return Array.from({ length: n }, (_, r) => {
    const ids = new Int32Array(T), targets = new Int32Array(T);
    for (let t = 0; t < T; t++) { ids[t] = (r * 37 + t * 7 + shift) % 259; targets[t] = (r * 37 + t * 7 + shift + 1) % 259; }
    return { ids, targets };
  });
}

function differs(a: Float32Array, b: Float32Array): boolean {
  return a.some((v, i) => v !== b[i]);
}

function batchOf(rs: { ids: Int32Array; targets: Int32Array }[]): { ids: Tensor; targets: Tensor } {
  const T = rs[0].ids.length;
  const ids = new Int32Array(rs.length * T), targets = new Int32Array(rs.length * T);
  rs.forEach((r, i) => { ids.set(r.ids, i * T); targets.set(r.targets, i * T); });
  return { ids: Tensor.from(ids, [rs.length, T], { dtype: 'i32' }), targets: Tensor.from(targets, [rs.length, T], { dtype: 'i32' }) };
}

test('trainEmbeddings: the tied embedding gradient equals full fine-tuning\'s on the same batch (B = 0 at init)', () => {
  const cfg = preset('tiny');
  assert.ok(cfg.tieWordEmbeddings, 'the tiny preset ties the head to the embedding');
  const full = LlamaModel.init(cfg, { seed: 5 });
  const lora = LlamaModel.init(cfg, { seed: 5, trainable: false });
  prepareLora(lora, { r: 4, alpha: 8, seed: 1, trainEmbeddings: true });
  const b = batchOf(rows(3, 24, 11));
  for (const m of [full, lora]) {
    m.zeroGrad();
    const { count } = m.forward(b);
    m.backward(1 / count);
  }
  const gFull = full.embed.grad!.data() as Float32Array, gLora = lora.embed.grad!.data() as Float32Array;
  assert.ok(gFull.some((v) => v !== 0));
  // same weights and, with B = 0, the same forward: only GEMM summation order differs
  const err = relErr(gLora, gFull);
  assert.ok(err < 1e-5, `embedding gradient relative error ${err}`);
  b.ids.dispose(); b.targets.dispose();
  full.dispose(); lora.dispose();
});

test('trainEmbeddings on a bf16 base: parameter counts, memory categories, and one step moves only the embedding and the adapters', () => {
  const cfg = preset('tiny');
  const VC = cfg.vocabSize * cfg.hiddenSize;
  const before = memory.snapshot().cpu.live;
  const model = LlamaModel.init(cfg, { seed: 2, dtype: 'bf16', trainable: false });
  const frozenBytes = memory.snapshot().cpu.live.frozen - before.frozen;
  const r = 8;
  const res = prepareLora(model, { r, alpha: 16, trainEmbeddings: true });
  let adapters = 0;
  for (const l of model.linears().values()) adapters += r * (l.inFeatures + l.outFeatures);
  assert.equal(res.trainableParameters, adapters + VC, 'adapters plus the one (tied) embedding');
  assert.deepEqual(res.embeddings, ['model.embed_tokens.weight']);
  assert.equal(model.embed.value.dtype, 'f32');
  assert.equal(model.embed.value.category, 'trainable');
  const live = memory.snapshot().cpu.live;
  assert.equal(live.frozen - before.frozen, frozenBytes - 2 * VC, 'the bf16 embedding left the frozen bytes');
  assert.equal(live.trainable - before.trainable, 4 * (adapters + VC));
  assert.equal(live.grad - before.grad, 4 * (adapters + VC));
  // a second adapter: the trained embedding is not mistaken for an unfrozen base
  const res2 = prepareLora(model, { r: 2, targets: ['q_proj'], trainEmbeddings: true }, 'second');
  assert.equal(res2.trainableParameters, adapters + VC + res2.targets.reduce((s, n) => s + 2 * (model.linears().get(n)!.inFeatures + model.linears().get(n)!.outFeatures), 0));

  const snap = new Map(model.parameters().map((p) => [p, Float32Array.from(p.value.toFloat32())]));
  const trainer = new Trainer(model, new ArrayDataSource(rows(4, 16, 3), 4, 0, false), { schedule: { kind: 'constant', lr: 1e-2, warmupSteps: 0, totalSteps: 1 } });
  trainer.trainStep();
  const changed = model.parameters().filter((p) => differs(p.value.toFloat32(), snap.get(p)!)).map((p) => p.name);
  const unexpected = changed.filter((n) => n !== 'model.embed_tokens.weight' && !/lora_[AB]/.test(n));
  assert.deepEqual(unexpected, [], 'no base weight moved');
  assert.ok(changed.includes('model.embed_tokens.weight'), 'the embedding moved');
  assert.ok(changed.some((n) => /lora_B/.test(n)), 'the adapters moved');
  trainer.dispose(); model.dispose();
});

test('trainEmbeddings is off by default and validated', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 1, dtype: 'bf16', trainable: false });
  const res = prepareLora(model, { r: 4 });
  assert.deepEqual(res.embeddings, []);
  assert.equal(model.embed.grad, null);
  assert.equal(model.embed.value.dtype, 'bf16');
  assert.throws(() => prepareLora(model, { trainEmbeddings: 'yes' as never }, 'b'), /trainEmbeddings must be a boolean/);
  model.dispose();
});

test('saveAdapter writes the embedding as PEFT modules_to_save; loadAdapter refuses such a file with a clear error', () => {
  const cfg = preset('tiny');
  const model = LlamaModel.init(cfg, { seed: 3, dtype: 'bf16', trainable: false });
  prepareLora(model, { r: 4, trainEmbeddings: true });
  assert.equal(trainedEmbeddings(model).length, 1);
  const dir = mkdtempSync(join(tmpdir(), 'lora-emb-'));
  try {
    const saved = saveAdapter(model, dir);
    assert.deepEqual(saved.config.modules_to_save, ['embed_tokens']);
    const header = readSafetensorsHeader(join(dir, PEFT_WEIGHTS_FILE));
    const emb = header.tensors.find((t) => t.name === 'base_model.model.model.embed_tokens.weight');
    assert.ok(emb, 'embedding saved under PEFT\'s key');
    assert.deepEqual(emb.shape, [cfg.vocabSize, cfg.hiddenSize]);
    assert.equal(emb.dtype, 'F32');
    const fresh = LlamaModel.init(cfg, { seed: 3, dtype: 'bf16', trainable: false });
    assert.throws(() => loadAdapter(fresh, dir), /modules_to_save \["embed_tokens"\] is not supported/);
    fresh.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
    model.dispose();
  }
});
