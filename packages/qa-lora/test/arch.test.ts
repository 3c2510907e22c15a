// QA-LoRA on the architectures beyond Llama: the projections of a Qwen2, Qwen3
// or Mistral checkpoint become INT-N (RTN and GPTQ), their biases and q/k
// norms stay frozen dense tensors; adapters train; the merged INT-N model is
// saved and read back with the architecture's own config and tensors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { IntNLinear, type LlamaConfig, LlamaModel, Tensor, readSafetensorsHeader, saveHfModel } from '@tunebench/core';
import { LoraLinear } from '@tunebench/lora';
import { loadQaloraMerged, loadQaloraModel, mergeQalora, saveQaloraModel } from '../src/index.js';
import { relErr, tempDir, textRows, train } from './helpers.js';

const CONFIGS: Record<string, LlamaConfig> = {
  qwen2: {
    vocabSize: 259, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
    maxPositionEmbeddings: 64, tieWordEmbeddings: true, modelType: 'qwen2', qkvBias: true,
  },
  qwen3: {
    vocabSize: 259, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
    maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'qwen3', headDim: 32, qkNorm: true,
  },
  mistral: {
    vocabSize: 259, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 1, rmsNormEps: 1e-5, ropeTheta: 1e4,
    maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'mistral', slidingWindow: 6,
  },
};

function checkpoint(cfg: LlamaConfig, dir: string): void {
  const model = LlamaModel.init(cfg, { seed: 9, std: 0.15, trainable: false });
  let k = 0;
  for (const p of model.parameters()) {
    if (p.value.shape.length !== 1) continue;
    const v = p.value.data() as Float32Array;
    for (let i = 0; i < v.length; i++) v[i] += 0.3 * Math.sin(++k * 0.7);
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

for (const [arch, cfg] of Object.entries(CONFIGS)) {
  for (const quantizer of ['rtn', 'gptq'] as const) {
    test(`QA-LoRA (${quantizer}) on ${arch}: INT4 projections, dense frozen biases and norms; trains; merged INT-N model saved and read back as ${arch}`, () => {
      const dir = tempDir();
      try {
        checkpoint(cfg, join(dir, 'base'));
        const { model, result } = loadQaloraModel(join(dir, 'base'), { bits: 4, groupSize: 16, quantizer, r: 4, alpha: 8 },
          quantizer === 'gptq' ? { calibration: textRows(4, 24) } : {});
        try {
          assert.equal(result.targets.length, 7 * cfg.numLayers);
          for (const [n, l] of model.linears()) assert.ok(l instanceof LoraLinear && l.base instanceof IntNLinear, `${n} is INT4 under an adapter`);
          const extras = model.parameters().filter((p) => /\.bias$|_norm\.weight$/.test(p.name));
          if (arch !== 'mistral') assert.ok(extras.length > 0);
          for (const p of extras) assert.ok(!p.quantized && p.grad === null, `${p.name}: frozen, not quantized`);
          const losses = train(model, 4);
          assert.ok(losses[3] < losses[0], `QA-LoRA trains: ${losses.join(', ')}`);
          const ids = Int32Array.from({ length: 20 }, (_, t) => (t * 11 + 4) % 259);
          const adapted = logitsOf(model, ids);
          mergeQalora(model);
          const merged = logitsOf(model, ids);
          assert.ok(relErr(merged, adapted) < 1e-4, `merged vs adapted: ${relErr(merged, adapted)}`);
          saveQaloraModel(model, join(dir, 'intn'));
          const json = JSON.parse(readFileSync(join(dir, 'intn', 'config.json'), 'utf8')) as Record<string, unknown>;
          assert.equal(json.model_type, arch);
          const names = readSafetensorsHeader(join(dir, 'intn', 'model.safetensors')).tensors.map((e) => e.name);
          for (const p of extras) assert.ok(names.includes(p.name), `${p.name} saved under its own name`);
          const back = loadQaloraMerged(join(dir, 'intn'));
          try {
            assert.deepEqual(back.config, cfg);
            assert.deepEqual(logitsOf(back, ids), merged, 'the loaded INT-N model computes what the merged one did');
          } finally {
            back.dispose();
          }
        } finally {
          model.dispose();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
}
