// LoRA on the architectures beyond Llama (Qwen2 q/k/v biases, Qwen3 q/k norms
// and its own head_dim, Mistral's sliding window): adapter gradients against
// the tfjs reference, biases and norms frozen through training, PEFT files
// under the same module names, merged models saved in the architecture's layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';
import {
  ArrayDataSource, type LlamaConfig, LlamaModel, Tensor, Trainer, loadHfModel, readSafetensorsHeader, saveHfModel,
} from '@tunebench/core';
import { tfjsLlamaLoss } from '@tunebench/core/reference/tfjs-llama';
import { PEFT_WEIGHTS_FILE, loraLayers, mergeAndUnload, prepareLora, saveAdapter } from '../src/index.js';
import { randomValues, relErr, tfjs } from './helpers.js';

const CONFIGS: Record<string, LlamaConfig> = {
  qwen2: {
    vocabSize: 53, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
    maxPositionEmbeddings: 64, tieWordEmbeddings: true, modelType: 'qwen2', qkvBias: true,
  },
  qwen3: {
    vocabSize: 53, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
    maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'qwen3', headDim: 16, qkNorm: true,
  },
  mistral: {
    vocabSize: 53, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 1, rmsNormEps: 1e-5, ropeTheta: 1e4,
    maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'mistral', slidingWindow: 4,
  },
};

/** A frozen random model whose biases and norm weights are far from their init (0 and 1). */
function frozenModel(cfg: LlamaConfig, seed: number): LlamaModel {
  const model = LlamaModel.init(cfg, { seed, std: 0.2, trainable: false });
  let s = seed;
  for (const p of model.parameters()) {
    if (p.value.shape.length !== 1) continue;
    const v = p.value.data() as Float32Array, noise = randomValues(v.length, ++s, 0.4);
    for (let i = 0; i < v.length; i++) v[i] += noise[i];
  }
  return model;
}

function batch(cfg: LlamaConfig, B: number, T: number, seed: number) {
  const ids = new Int32Array(B * T), targets = new Int32Array(B * T);
  const r = randomValues(2 * B * T, seed);
  for (let i = 0; i < B * T; i++) {
    ids[i] = Math.floor((r[i] * 0.5 + 0.5) * cfg.vocabSize) % cfg.vocabSize;
    targets[i] = Math.floor((r[B * T + i] * 0.5 + 0.5) * cfg.vocabSize) % cfg.vocabSize;
  }
  return { ids, targets };
}

function logitsOf(model: LlamaModel, ids: Int32Array, B: number, T: number): Float32Array {
  const x = Tensor.from(ids, [B, T], { dtype: 'i32' });
  const h = model.hidden(x), lg = model.logits(h);
  const out = Float32Array.from(lg.data() as Float32Array);
  for (const t of [x, h, lg]) t.dispose();
  return out;
}

for (const [arch, cfg] of Object.entries(CONFIGS)) {
  test(`LoRA on ${arch}: adapter gradients match tfjs; biases and norms stay frozen; PEFT names; merged model saved as ${arch}`, async () => {
    const tf = await tfjs();
    const model = frozenModel(cfg, 7);
    const dir = mkdtempSync(join(tmpdir(), 'tunebench-lora-arch-'));
    try {
      const res = prepareLora(model, { r: 4, alpha: 8, targets: 'all-linear', seed: 3 });
      assert.equal(res.targets.length, 7 * cfg.numLayers);
      // B starts at zero; random B makes every adapter gradient non-trivial
      let seed = 100;
      for (const l of loraLayers(model)) {
        const b = l.adapter('default').B.value.data() as Float32Array;
        b.set(randomValues(b.length, ++seed, 0.2));
      }
      const extras = model.parameters().filter((p) => /\.bias$|_norm\.weight$/.test(p.name));
      if (arch !== 'mistral') assert.ok(extras.length > 0, 'the architecture has biases or q/k norms');
      assert.ok(extras.every((p) => p.grad === null), 'biases and q/k norms are frozen under LoRA');
      const before = new Map(extras.map((p) => [p.name, Float32Array.from(p.value.data() as Float32Array)]));

      // adapter gradients against tfjs (LoRA targets with A, B read as lora_A/lora_B)
      const B = 2, T = 9;
      const { ids, targets } = batch(cfg, B, T, 11);
      const idsT = Tensor.from(ids, [B, T], { dtype: 'i32' }), tgT = Tensor.from(targets, [B, T], { dtype: 'i32' });
      model.zeroGrad();
      const fw = model.forward({ ids: idsT, targets: tgT });
      model.backward(1 / fw.count);
      idsT.dispose(); tgT.dispose();
      const params = model.parameters();
      const refName = (n: string) => n.replace('.lora_A.default.', '.lora_A.').replace('.lora_B.default.', '.lora_B.');
      const vars = params.map((p) => tf.tensor(p.value.toFloat32(), [...p.value.shape]));
      const lora = { scale: 2, targets: new Set(loraLayers(model).map((l) => l.name)) };
      const f = (...xs: TF.Tensor[]) => tfjsLlamaLoss(tf, cfg, new Map(params.map((p, i) => [refName(p.name), xs[i]])), ids, targets, B, T, lora).div(fw.count) as TF.Scalar;
      const { value, grads } = tf.valueAndGrads(f)(vars);
      const refLoss = (await value.data())[0] * fw.count;
      assert.ok(Math.abs(fw.lossSum - refLoss) / Math.abs(refLoss) < 1e-4, `loss ${fw.lossSum} vs tfjs ${refLoss}`);
      params.forEach((p, i) => {
        if (!p.grad) return;
        const e = relErr(p.grad.toFloat32(), grads[i].dataSync());
        assert.ok(e < 2e-4, `gradient of ${p.name}: ${e.toExponential(2)}`);
      });
      for (const v of vars) v.dispose();
      model.zeroGrad();

      // a few steps: the loss falls, biases and norms do not move
      const rows = Array.from({ length: 4 }, (_, i) => batch(cfg, 1, 12, 20 + i));
      const trainer = new Trainer(model, new ArrayDataSource(rows, 4, 0, false), { schedule: { kind: 'constant', lr: 2e-2, warmupSteps: 0, totalSteps: 6 } });
      const losses = Array.from({ length: 6 }, () => trainer.trainStep().loss);
      trainer.dispose();
      assert.ok(losses[5] < losses[0], `LoRA trains: ${losses.join(', ')}`);
      for (const p of extras) assert.deepEqual(p.value.data(), before.get(p.name), `${p.name} unchanged`);

      // PEFT adapter: the same module names, no bias or norm in it
      saveAdapter(model, dir);
      const names = readSafetensorsHeader(join(dir, PEFT_WEIGHTS_FILE)).tensors.map((e) => e.name);
      assert.ok(names.includes('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'), names.slice(0, 3).join(', '));
      assert.ok(names.every((n) => /\.lora_[AB]\.weight$/.test(n)), 'only adapter weights');

      // merged: plain projections again, the same logits, saved with the architecture's tensors
      const adapted = logitsOf(model, ids, B, T);
      mergeAndUnload(model);
      const merged = logitsOf(model, ids, B, T);
      assert.ok(relErr(merged, adapted) < 1e-5, `merged vs adapted ${relErr(merged, adapted)}`);
      saveHfModel(model, join(dir, 'merged'), { dtype: 'f32' });
      assert.equal(JSON.parse(readFileSync(join(dir, 'merged', 'config.json'), 'utf8')).model_type, arch);
      const back = loadHfModel(join(dir, 'merged'), { trainable: false, frozenDtype: 'f32' });
      try {
        assert.deepEqual(back.config, cfg);
        assert.ok(relErr(logitsOf(back, ids, B, T), merged) < 1e-6);
      } finally {
        back.dispose();
      }
    } finally {
      model.dispose();
      tf.disposeVariables();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
