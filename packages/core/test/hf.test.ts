// Hugging Face interop: config.json mapping (against the SmolLM-135M config),
// parameter names/shapes, and model directories saved and loaded bit-exactly,
// in one file and sharded, f32 and bf16; broken directories give clear errors
// and leak nothing.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LlamaModel, Tensor, bf16ToF32, configFromHf, configToHf, f32ToBf16, hfShardName, hfTensorShapes, loadHfModel,
  loadHfModelDir, memory, readSafetensors, readSafetensorsHeader, saveHfModel, saveHfModelDir, writeSafetensors,
} from '../src/index.js';
import { type LlamaConfig, parameterCount, preset } from '../src/nn/config.js';
import { randn, rng } from './helpers.js';

const root = mkdtempSync(join(tmpdir(), 'tunebench-hf-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dirNo = 0;
const freshDir = (): string => join(root, `m${dirNo++}`);
const live = (): number => memory.snapshot().cpu.liveTotal;
const disposeAll = (m: Map<string, Tensor>): void => { for (const t of m.values()) t.dispose(); };
const rawBits = (t: Tensor): Uint8Array => { const v = t.data(); return new Uint8Array(v.buffer, v.byteOffset, v.byteLength); };

/** config.json of HuggingFaceTB/SmolLM-135M (key set and values as published). */
const SMOLLM_135M = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 0,
  eos_token_id: 0,
  hidden_act: 'silu',
  hidden_size: 576,
  initializer_range: 0.02,
  intermediate_size: 1536,
  max_position_embeddings: 2048,
  model_type: 'llama',
  num_attention_heads: 9,
  num_hidden_layers: 30,
  num_key_value_heads: 3,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: true,
  torch_dtype: 'float32',
  transformers_version: '4.40.1',
  use_cache: true,
  vocab_size: 49152,
};

function randomModel(config: LlamaConfig, dtype: 'f32' | 'bf16', seed?: number): Map<string, Tensor> {
  const r = rng(seed);
  const m = new Map<string, Tensor>();
  for (const [name, shape] of hfTensorShapes(config)) {
    const n = shape.reduce((a, d) => a * d, 1);
    m.set(name, Tensor.from(randn(n, r, 0.02), shape, { dtype, category: 'trainable' }));
  }
  return m;
}

test('configFromHf maps the SmolLM-135M config.json to the smollm-135m preset', () => {
  assert.deepEqual(configFromHf(SMOLLM_135M, 'smollm/config.json'), preset('smollm-135m'));
  // Defaults as transformers: kv heads = heads, rope_theta 10000, untied.
  const { num_key_value_heads: _k, rope_theta: _r, tie_word_embeddings: _t, ...bare } = SMOLLM_135M;
  const c = configFromHf(bare, 'x');
  assert.equal(c.numKvHeads, 9);
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(configFromHf({ ...SMOLLM_135M, num_key_value_heads: null }, 'x').numKvHeads, 9);
  assert.equal(configFromHf({ ...SMOLLM_135M, head_dim: 64 }, 'x').hiddenSize, 576);
  // Newer transformers keep rope_theta under rope_parameters.
  const { rope_theta: _r2, ...noTheta } = SMOLLM_135M;
  assert.equal(configFromHf({ ...noTheta, rope_parameters: { rope_type: 'default', rope_theta: 500000 } }, 'x').ropeTheta, 500000);
});

test('configFromHf: missing keys, wrong types and unsupported features are named', () => {
  const where = '/models/bad/config.json';
  const bad = (patch: Record<string, unknown>, re: RegExp): void => {
    const json: Record<string, unknown> = { ...SMOLLM_135M, ...patch };
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete json[k];
    assert.throws(() => configFromHf(json, where), (e: Error) => {
      assert.ok(e.message.startsWith(where), e.message);
      assert.match(e.message, re);
      return true;
    });
  };
  bad({ hidden_size: undefined }, /missing required key hidden_size/);
  bad({ vocab_size: undefined, num_hidden_layers: undefined }, /missing required key num_hidden_layers.*missing required key vocab_size|missing required key vocab_size.*num_hidden_layers/);
  bad({ intermediate_size: '1536' }, /intermediate_size must be an integer, got "1536"/);
  bad({ num_attention_heads: 9.5 }, /num_attention_heads must be an integer/);
  bad({ rms_norm_eps: 'small' }, /rms_norm_eps must be a number/);
  bad({ tie_word_embeddings: 'yes' }, /tie_word_embeddings must be a boolean/);
  bad({ num_attention_heads: 7 }, /numHeads \(7\) does not divide hiddenSize \(576\)/);
  bad({ num_key_value_heads: 4 }, /numKvHeads \(4\) does not divide numHeads \(9\)/);
  bad({ head_dim: 7 }, /headDim 7 must be even for RoPE/);
  bad({ rope_scaling: { rope_type: 'longrope', factor: 8 } }, /rope_scaling\.rope_type "longrope" is not supported \(supported: default, linear, dynamic, llama3, yarn\)/);
  bad({ model_type: 'gemma' }, /model_type is "gemma", supported: "llama" \(LlamaForCausalLM\), "mistral"/);
  bad({ hidden_act: 'gelu' }, /hidden_act "gelu" is not supported/);
  bad({ mlp_bias: true }, /mlp_bias true is not supported/);
  bad({ rope_theta: 1e4, rope_parameters: { rope_theta: 5e5 } }, /rope_theta 10000 disagrees with rope_parameters.rope_theta 500000/);
  assert.throws(() => configFromHf([1], where), /\/models\/bad\/config\.json: config is not a JSON object/);
});

test('configToHf writes what configFromHf reads back, with the transformers keys', () => {
  for (const name of ['tiny', 'smollm-135m', 'tinyllama-1.1b']) {
    const c = preset(name);
    const json = configToHf(c, { dtype: 'bf16', bosTokenId: 1, eosTokenId: 2 });
    assert.deepEqual(json.architectures, ['LlamaForCausalLM']);
    assert.equal(json.model_type, 'llama');
    assert.equal(json.torch_dtype, 'bfloat16');
    assert.equal(json.hidden_act, 'silu');
    assert.equal(json.rope_scaling, null);
    assert.equal(json.head_dim, c.hiddenSize / c.numHeads);
    assert.equal(json.bos_token_id, 1);
    assert.deepEqual(configFromHf(JSON.parse(JSON.stringify(json)), name), c);
  }
  assert.equal(configToHf(preset('tiny')).torch_dtype, 'float32');
});

test('hfTensorShapes: names, shapes and the parameter count', () => {
  for (const name of ['tiny', 'smollm-135m', 'tinyllama-1.1b', 'llama-2-7b']) {
    const c = preset(name);
    const shapes = hfTensorShapes(c);
    let total = 0;
    for (const s of shapes.values()) total += s.reduce((a, d) => a * d, 1);
    assert.equal(total, parameterCount(c), name);
    assert.equal(shapes.size, 2 + 9 * c.numLayers + (c.tieWordEmbeddings ? 0 : 1), name);
  }
  const s = hfTensorShapes(preset('smollm-135m'));
  assert.deepEqual(s.get('model.embed_tokens.weight'), [49152, 576]);
  assert.deepEqual(s.get('model.layers.0.self_attn.q_proj.weight'), [576, 576]);
  assert.deepEqual(s.get('model.layers.29.self_attn.k_proj.weight'), [192, 576]);
  assert.deepEqual(s.get('model.layers.3.self_attn.v_proj.weight'), [192, 576]);
  assert.deepEqual(s.get('model.layers.3.self_attn.o_proj.weight'), [576, 576]);
  assert.deepEqual(s.get('model.layers.3.mlp.gate_proj.weight'), [1536, 576]);
  assert.deepEqual(s.get('model.layers.3.mlp.up_proj.weight'), [1536, 576]);
  assert.deepEqual(s.get('model.layers.3.mlp.down_proj.weight'), [576, 1536]);
  assert.deepEqual(s.get('model.layers.3.input_layernorm.weight'), [576]);
  assert.deepEqual(s.get('model.layers.3.post_attention_layernorm.weight'), [576]);
  assert.deepEqual(s.get('model.norm.weight'), [576]);
  assert.equal(s.has('lm_head.weight'), false);
  assert.deepEqual(hfTensorShapes(preset('tinyllama-1.1b')).get('lm_head.weight'), [32000, 2048]);
  assert.equal(hfShardName(2, 13), 'model-00002-of-00013.safetensors');
});

for (const tied of [true, false]) {
  for (const dtype of ['f32', 'bf16'] as const) {
    test(`save -> load round trip is bit-exact (${dtype}, ${tied ? 'tied' : 'untied'}, one file and sharded)`, () => {
      const config = { ...preset('tiny'), tieWordEmbeddings: tied };
      const before = live();
      const model = randomModel(config, dtype);
      for (const maxShardBytes of [undefined, 40_000]) {
        const dir = freshDir();
        saveHfModelDir(dir, config, model, { dtype, maxShardBytes });
        const files = readdirSync(dir).sort();
        const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
        assert.equal(cfg.torch_dtype, dtype === 'f32' ? 'float32' : 'bfloat16');
        if (maxShardBytes === undefined) {
          assert.deepEqual(files, ['config.json', 'model.safetensors']);
          assert.deepEqual(readSafetensorsHeader(join(dir, 'model.safetensors')).metadata, { format: 'pt' });
        } else {
          const shardFiles = files.filter((f) => f.startsWith('model-'));
          assert.ok(shardFiles.length > 2, `sharded into ${shardFiles.length}`);
          shardFiles.forEach((f, i) => assert.equal(f, hfShardName(i + 1, shardFiles.length)));
          assert.ok(files.includes('model.safetensors.index.json') && !files.includes('model.safetensors'));
          const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
          assert.deepEqual(Object.keys(index), ['metadata', 'weight_map']);
          let total = 0;
          for (const t of model.values()) total += t.bytes;
          assert.equal(index.metadata.total_size, total);
          assert.deepEqual(Object.keys(index.weight_map), [...model.keys()].sort());
          for (const f of shardFiles) {
            const h = readSafetensorsHeader(join(dir, f));
            assert.deepEqual(h.metadata, { format: 'pt' });
            const bytes = h.tensors.reduce((a, t) => a + t.end - t.begin, 0);
            assert.ok(bytes <= maxShardBytes || h.tensors.length === 1, `${f} holds ${bytes} bytes`);
            for (const t of h.tensors) assert.equal(index.weight_map[t.name], f);
          }
        }
        const loaded = loadHfModelDir(dir, { dtype, category: 'trainable' });
        assert.deepEqual(loaded.config, config);
        assert.deepEqual([...loaded.tensors.keys()], [...hfTensorShapes(config).keys()]);
        assert.deepEqual(loaded.source.dtypes, [dtype === 'f32' ? 'F32' : 'BF16']);
        for (const [name, want] of model) {
          const got = loaded.tensors.get(name)!;
          assert.equal(got.dtype, dtype);
          assert.equal(got.category, 'trainable');
          assert.deepEqual(got.shape, want.shape);
          assert.deepEqual(rawBits(got), rawBits(want), name);
        }
        disposeAll(loaded.tensors);
      }
      disposeAll(model);
      assert.equal(live(), before);
    });
  }
}

test('f32 weights saved as bf16 (the default) load as their bf16 rounding', () => {
  const config = preset('tiny');
  const model = randomModel(config, 'f32');
  const dir = freshDir();
  saveHfModelDir(dir, config, model);
  assert.equal(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).torch_dtype, 'bfloat16');
  const loaded = loadHfModelDir(dir);
  const w = model.get('model.layers.1.mlp.down_proj.weight')!.data() as Float32Array;
  const got = loaded.tensors.get('model.layers.1.mlp.down_proj.weight')!;
  assert.equal(got.dtype, 'f32');
  assert.deepEqual(Array.from(got.data() as Float32Array), Array.from(w, (v) => bf16ToF32(f32ToBf16(v))));
  disposeAll(loaded.tensors); disposeAll(model);
});

test('re-saving unsharded over a sharded save removes the stale index and shards', () => {
  const config = preset('tiny');
  const model = randomModel(config, 'bf16');
  const dir = freshDir();
  saveHfModelDir(dir, config, model, { maxShardBytes: 40_000 });
  saveHfModelDir(dir, config, model);
  assert.deepEqual(readdirSync(dir).sort(), ['config.json', 'model.safetensors']);
  disposeAll(model);
});

test('tied model whose file also holds lm_head.weight: accepted, the copy ignored; harmless buffers ignored', () => {
  const config = preset('tiny');
  const model = randomModel(config, 'f32');
  const dir = freshDir();
  saveHfModelDir(dir, config, model, { dtype: 'f32' });
  const extra = new Map(model);
  const lm = Tensor.from(randn(config.vocabSize * config.hiddenSize, rng()), [config.vocabSize, config.hiddenSize]);
  const inv = Tensor.from(new Float32Array(8), [8]);
  extra.set('lm_head.weight', lm);
  extra.set('model.rotary_emb.inv_freq', inv);
  writeSafetensors(join(dir, 'model.safetensors'), extra, { metadata: { format: 'pt' } });
  const before = live();
  const loaded = loadHfModelDir(dir);
  assert.equal(loaded.tensors.has('lm_head.weight'), false);
  assert.equal(loaded.tensors.size, hfTensorShapes(config).size);
  assert.equal(live() - before, [...loaded.tensors.values()].reduce((a, t) => a + t.bytes, 0), 'the ignored tensors were never allocated');
  disposeAll(loaded.tensors); disposeAll(model); lm.dispose(); inv.dispose();
});

test('broken model directories give errors naming the directory and the problem, and leak nothing', () => {
  const config = { ...preset('tiny'), tieWordEmbeddings: false };
  const start = live();
  const model = randomModel(config, 'f32');
  const expectError = (dir: string, re: RegExp, what: string): void => {
    const before = live();
    assert.throws(() => loadHfModelDir(dir), (e: Error) => {
      assert.ok(e instanceof Error);
      assert.ok(e.message.includes(dir), `${what}: ${e.message}`);
      assert.match(e.message, re, what);
      return true;
    }, what);
    assert.equal(live(), before, `${what}: memory leaked`);
  };

  // Shape disagreeing with the config: k_proj saved as [64, 64] where the config implies [32, 64].
  let dir = freshDir();
  saveHfModelDir(dir, config, model, { dtype: 'f32' });
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, num_key_value_heads: 2 }));
  const wrong = new Map(model);
  const k = Tensor.from(new Float32Array(64 * 64), [64, 64]);
  wrong.set('model.layers.0.self_attn.k_proj.weight', k);
  writeSafetensors(join(dir, 'model.safetensors'), wrong);
  expectError(dir, /model\.layers\.0\.self_attn\.k_proj\.weight has shape \[64, 64\], config implies \[32, 64\]/, 'shape');
  k.dispose();

  // A missing tensor, and an unexpected one.
  dir = freshDir();
  const partial = new Map(model);
  partial.delete('lm_head.weight');
  const bias = Tensor.from(new Float32Array(64), [64]);
  partial.set('model.layers.0.self_attn.q_proj.bias', bias);
  saveHfModelDir(dir, config, model, { dtype: 'f32' });
  writeSafetensors(join(dir, 'model.safetensors'), partial);
  expectError(dir, /missing tensors: lm_head\.weight.*unexpected tensors .*model\.layers\.0\.self_attn\.q_proj\.bias/, 'missing');
  bias.dispose();

  // A missing shard; a name mapped to a shard that does not hold it.
  dir = freshDir();
  saveHfModelDir(dir, config, model, { dtype: 'f32', maxShardBytes: 40_000 });
  const shards = readdirSync(dir).filter((f) => f.startsWith('model-'));
  const indexPath = join(dir, 'model.safetensors.index.json');
  const index = JSON.parse(readFileSync(indexPath, 'utf8'));
  unlinkSync(join(dir, shards[1]));
  expectError(dir, new RegExp(`shard .*${shards[1].replace(/\./g, '\\.')} is missing`), 'missing shard');
  dir = freshDir();
  saveHfModelDir(dir, config, model, { dtype: 'f32', maxShardBytes: 40_000 });
  index.weight_map['model.norm.weight'] = shards[0];
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
  expectError(dir, /model\.norm\.weight is mapped to .*model-00001-of-\d{5}\.safetensors but not in it/, 'mapping');
  index.weight_map['model.norm.weight'] = '../escape.safetensors';
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
  expectError(dir, /is not a file name in the directory: "\.\.\/escape\.safetensors"/, 'path escape');

  // A failure after some shards were loaded frees what they gave: with a wide
  // MLP, embed_tokens and the attention weights load, then gate_proj is refused.
  const wide = { ...config, intermediateSize: 1024 };
  const wideModel = randomModel(wide, 'f32');
  const before2 = live();
  dir = freshDir();
  saveHfModelDir(dir, wide, wideModel, { dtype: 'f32', maxShardBytes: 40_000 });
  memory.setAllocationLimit(100_000);
  try {
    assert.throws(() => loadHfModelDir(dir), /model-\d{5}-of-\d{5}\.safetensors: tensor "model\.layers\.0\.mlp\.gate_proj\.weight": out of memory/);
  } finally {
    memory.setAllocationLimit(0);
  }
  assert.equal(live(), before2, 'allocation refused midway: memory leaked');
  disposeAll(wideModel);

  // Integer weights.
  dir = freshDir();
  saveHfModelDir(dir, config, model, { dtype: 'f32' });
  const ints = new Map(model);
  const normI = Tensor.zeros([64], { dtype: 'i32' });
  ints.set('model.norm.weight', normI);
  writeSafetensors(join(dir, 'model.safetensors'), ints);
  expectError(dir, /model\.norm\.weight has dtype I32, expected a floating type/, 'integer weights');
  normI.dispose();

  // No weights; no config; no directory.
  dir = freshDir();
  saveHfModelDir(dir, config, model, { dtype: 'f32' });
  unlinkSync(join(dir, 'model.safetensors'));
  expectError(dir, /no model\.safetensors or model\.safetensors\.index\.json/, 'no weights');
  unlinkSync(join(dir, 'config.json'));
  expectError(dir, /config\.json: config\.json not found/, 'no config');
  expectError(join(root, 'nope'), /not a directory/, 'no dir');

  disposeAll(model);
  assert.equal(live(), start, 'nothing leaked');
});

test('saveHfModelDir validates names and shapes before writing anything', () => {
  const config = preset('tiny');
  const model = randomModel(config, 'f32');
  const dir = freshDir();
  const lm = Tensor.zeros([config.vocabSize, config.hiddenSize]);
  assert.throws(() => saveHfModelDir(dir, config, new Map([...model, ['lm_head.weight', lm]])),
    /cannot save: unexpected tensors: lm_head\.weight \(the config ties lm_head to embed_tokens\)/);
  const noNorm = new Map(model);
  noNorm.delete('model.norm.weight');
  assert.throws(() => saveHfModelDir(dir, config, noNorm), /cannot save: missing tensors: model\.norm\.weight/);
  const bad = new Map(model);
  const up = Tensor.zeros([config.hiddenSize, config.intermediateSize]);
  bad.set('model.layers.1.mlp.up_proj.weight', up);
  assert.throws(() => saveHfModelDir(dir, config, bad), /model\.layers\.1\.mlp\.up_proj\.weight has shape \[64, 192\], config implies \[192, 64\]/);
  assert.equal(existsSync(dir), false, 'nothing written');
  lm.dispose(); up.dispose(); disposeAll(model);
});

test('a model written by hand in the transformers layout loads (bf16 file, f16 tensor, index with extra metadata)', () => {
  const config = preset('tiny');
  const dir = freshDir();
  const model = randomModel(config, 'bf16', 7);
  saveHfModelDir(dir, config, model, { maxShardBytes: 60_000 });
  const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
  index.metadata.total_parameters = 123;
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2));
  const { tensors } = readSafetensors(join(dir, index.weight_map['model.norm.weight']));
  const f16 = Tensor.from(new Uint16Array(64).fill(0x3c00), [64], { dtype: 'f16' });
  tensors.set('model.norm.weight', f16);
  writeSafetensors(join(dir, index.weight_map['model.norm.weight']), tensors, { metadata: { format: 'pt' } });
  const loaded = loadHfModelDir(dir, { dtype: 'bf16' });
  assert.deepEqual(loaded.source.dtypes, ['BF16', 'F16']);
  assert.deepEqual(Array.from(loaded.tensors.get('model.norm.weight')!.toFloat32()), new Array(64).fill(1));
  disposeAll(loaded.tensors); disposeAll(tensors); disposeAll(model);
});

test('a trained model saved in Hugging Face format loads back with the same loss', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-hfmodel-'));
  const model = LlamaModel.init({ ...preset('tiny'), tieWordEmbeddings: false }, { seed: 21 });
  const ids = Tensor.from(Int32Array.from({ length: 24 }, (_, i) => (i * 13) % 259), [2, 12], { dtype: 'i32' });
  const targets = Tensor.from(Int32Array.from({ length: 24 }, (_, i) => (i * 17 + 1) % 259), [2, 12], { dtype: 'i32' });
  const want = model.forward({ ids, targets }, { training: false });
  saveHfModel(model, dir, { dtype: 'f32' });
  const loaded = loadHfModel(dir);
  const got = loaded.forward({ ids, targets }, { training: false });
  assert.equal(got.lossSum, want.lossSum, 'f32 round trip is bit-exact');
  // bf16 (the default): frozen bf16 weights give the loss of the rounded weights
  saveHfModel(model, dir);
  const frozen = loadHfModel(dir, { trainable: false });
  assert.equal(frozen.embed.value.dtype, 'bf16');
  assert.equal(frozen.embed.grad, null);
  const approx = frozen.forward({ ids, targets }, { training: false });
  assert.ok(Math.abs(approx.lossSum - want.lossSum) / want.lossSum < 1e-2, `bf16 loss ${approx.lossSum} vs ${want.lossSum}`);
  for (const m of [model, loaded, frozen]) m.dispose();
  ids.dispose(); targets.dispose();
  rmSync(dir, { recursive: true, force: true });
});
