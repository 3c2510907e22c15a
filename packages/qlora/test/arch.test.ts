// QLoRA on the architectures beyond Llama: the projections of a Qwen2, Qwen3
// or Mistral checkpoint are quantized to NF4, their biases and q/k norms are
// not (kept as frozen bf16 tensors); adapters train; merging and the
// bitsandbytes layout keep the architecture.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { type LlamaConfig, LlamaModel, Quant4Linear, Tensor, loadHfModel, saveHfModel } from '@tunebench/core';
import { LoraLinear } from '@tunebench/lora';
import { loadQloraModel, loadQuantizedModel, mergeQlora, quantizingFactory, saveQuantizedModel } from '../src/index.js';
import { randomValues, relErr, tempDir } from './helpers.js';

const CONFIGS: Record<string, LlamaConfig> = {
  qwen2: {
    vocabSize: 53, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
    maxPositionEmbeddings: 64, tieWordEmbeddings: true, modelType: 'qwen2', qkvBias: true,
  },
  qwen3: {
    vocabSize: 53, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
    maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'qwen3', headDim: 32, qkNorm: true,
  },
  mistral: {
    vocabSize: 53, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 1, rmsNormEps: 1e-5, ropeTheta: 1e4,
    maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'mistral', slidingWindow: 4,
  },
};

function checkpoint(cfg: LlamaConfig, dir: string): void {
  const model = LlamaModel.init(cfg, { seed: 5, std: 0.15, trainable: false });
  let s = 40;
  for (const p of model.parameters()) {
    if (p.value.shape.length !== 1) continue;
    const v = p.value.data() as Float32Array, noise = randomValues(v.length, ++s, 0.4);
    for (let i = 0; i < v.length; i++) v[i] += noise[i];
  }
  saveHfModel(model, dir, { dtype: 'bf16' });
  model.dispose();
}

function logitsOf(model: LlamaModel, ids: Int32Array): Float32Array {
  const x = Tensor.from(ids, [1, ids.length], { dtype: 'i32' });
  const h = model.hidden(x), lg = model.logits(h);
  const out = Float32Array.from(lg.data() as Float32Array);
  for (const t of [x, h, lg]) t.dispose();
  return out;
}

function trainSteps(model: LlamaModel, steps: number): number[] {
  const T = 12, ids = Int32Array.from({ length: T }, (_, t) => (t * 5 + 3) % 53), targets = Int32Array.from({ length: T }, (_, t) => (t * 5 + 8) % 53);
  const params = model.parameters().filter((p) => p.grad);
  const losses: number[] = [];
  for (let s = 0; s < steps; s++) {
    const a = Tensor.from(ids, [1, T], { dtype: 'i32' }), b = Tensor.from(targets, [1, T], { dtype: 'i32' });
    model.zeroGrad();
    const f = model.forward({ ids: a, targets: b });
    model.backward(1 / f.count);
    losses.push(f.lossSum / f.count);
    for (const p of params) {  // plain SGD
      const v = p.value.data() as Float32Array, g = p.grad!.data() as Float32Array;
      for (let i = 0; i < v.length; i++) v[i] -= 0.5 * g[i];
    }
    a.dispose(); b.dispose();
  }
  return losses;
}

for (const [arch, cfg] of Object.entries(CONFIGS)) {
  test(`QLoRA on ${arch}: projections NF4, biases and q/k norms frozen bf16; trains; merge and the bitsandbytes layout keep the architecture`, () => {
    const dir = tempDir();
    try {
      checkpoint(cfg, join(dir, 'base'));
      const { model, result } = loadQloraModel(join(dir, 'base'), { r: 4, alpha: 8, blockSize: 64 });
      try {
        assert.equal(result.targets.length, 7 * cfg.numLayers);
        for (const [n, l] of model.linears()) assert.ok(l instanceof LoraLinear && l.base instanceof Quant4Linear, `${n} is NF4 under an adapter`);
        const extras = model.parameters().filter((p) => /\.bias$|_norm\.weight$/.test(p.name));
        if (arch !== 'mistral') assert.ok(extras.length > 0);
        for (const p of extras) assert.ok(!p.quantized && p.value.dtype === 'bf16' && p.grad === null, `${p.name}: frozen bf16, not quantized`);
        const losses = trainSteps(model, 5);
        assert.ok(losses[4] < losses[0], `QLoRA trains: ${losses.join(', ')}`);
        const ids = Int32Array.from({ length: 10 }, (_, t) => (t * 7 + 1) % 53);
        const adapted = logitsOf(model, ids);
        mergeQlora(model, 'bf16');
        const merged = logitsOf(model, ids);
        assert.ok(relErr(merged, adapted) < 2e-2, `merged (bf16) vs adapted: ${relErr(merged, adapted)}`);
        saveHfModel(model, join(dir, 'merged'));
        assert.equal(JSON.parse(readFileSync(join(dir, 'merged', 'config.json'), 'utf8')).model_type, arch);
      } finally {
        model.dispose();
      }
      // the NF4 base in the bitsandbytes layout and back: biases and norms pass through
      const q = loadHfModel(join(dir, 'base'), { trainable: false, linear: quantizingFactory({ blockSize: 64 }) });
      try {
        saveQuantizedModel(q, join(dir, 'nf4'));
        const back = loadQuantizedModel(join(dir, 'nf4'));
        try {
          assert.deepEqual(back.config, cfg);
          const ids = Int32Array.from({ length: 9 }, (_, t) => (t * 3 + 2) % 53);
          assert.deepEqual(logitsOf(back, ids), logitsOf(q, ids));
        } finally {
          back.dispose();
        }
      } finally {
        q.dispose();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
