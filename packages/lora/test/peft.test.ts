import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LlamaModel, Tensor, bf16ToF32, f32ToBf16, memory, preset, readSafetensors, readSafetensorsHeader, writeSafetensors,
} from '@tunebench/core';
import {
  LoraLinear, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, loadAdapter, loraLayers, prepareLora, saveAdapter, setActiveAdapter,
} from '../src/index.js';
import { randomValues, relErr } from './helpers.js';

const seed = (Math.random() * 2 ** 31) >>> 0;

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'tunebench-peft-'));
}

function randomizeB(model: LlamaModel, name: string): void {
  for (const l of loraLayers(model)) {
    if (!l.adapters.has(name)) continue;
    const b = l.adapter(name).B.value;
    (b.data() as Float32Array).set(randomValues(b.numel, seed + l.name.length * 31 + name.length, 0.2));
  }
}

function batch(B = 3, T = 12): { ids: Tensor; targets: Tensor } {
  const ids = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 11) % 259), [B, T], { dtype: 'i32' });
  const targets = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 48) % 259), [B, T], { dtype: 'i32' });
  return { ids, targets };
}

function loss(model: LlamaModel): number {
  const b = batch();
  const { lossSum } = model.forward(b, { training: false });
  b.ids.dispose(); b.targets.dispose();
  return lossSum;
}

test('save -> load into a fresh model gives exactly the same loss; files as PEFT writes them', () => {
  const dir = tempDir();
  try {
    const model = LlamaModel.init(preset('tiny'), { seed: 5, dtype: 'bf16', trainable: false });
    prepareLora(model, { r: 4, alpha: 8, targets: ['v_proj', 'q_proj'], seed });
    randomizeB(model, 'default');
    const before = loss(model);
    const saved = saveAdapter(model, dir, { baseModelNameOrPath: 'tiny-test' });
    assert.equal(saved.adapter, 'default');

    const config = JSON.parse(readFileSync(join(dir, PEFT_CONFIG_FILE), 'utf8'));
    assert.deepEqual(config, {
      alpha_pattern: {}, base_model_name_or_path: 'tiny-test', bias: 'none', fan_in_fan_out: false, inference_mode: true,
      init_lora_weights: true, layers_pattern: null, layers_to_transform: null, lora_alpha: 8, lora_dropout: 0,
      modules_to_save: null, peft_type: 'LORA', r: 4, rank_pattern: {}, revision: null, target_modules: ['q_proj', 'v_proj'],
      task_type: 'CAUSAL_LM', use_dora: false, use_rslora: false,
    });
    assert.deepEqual(Object.keys(config), Object.keys(config).sort(), 'keys sorted, as PEFT writes them');
    const header = readSafetensorsHeader(join(dir, PEFT_WEIGHTS_FILE));
    assert.deepEqual(header.metadata, { format: 'pt' });
    const shapes = Object.fromEntries(header.tensors.map((e) => [e.name, [e.dtype, ...e.shape]]));
    const expected: Record<string, (string | number)[]> = {};
    for (const i of [0, 1]) {
      for (const p of ['q_proj', 'v_proj']) {
        const out = p === 'q_proj' ? 64 : 32;
        expected[`base_model.model.model.layers.${i}.self_attn.${p}.lora_A.weight`] = ['F32', 4, 64];
        expected[`base_model.model.model.layers.${i}.self_attn.${p}.lora_B.weight`] = ['F32', out, 4];
      }
    }
    assert.deepEqual(shapes, expected);

    const fresh = LlamaModel.init(preset('tiny'), { seed: 5, dtype: 'bf16', trainable: false });
    const res = loadAdapter(fresh, dir);
    assert.deepEqual(res.modules, saved.modules);
    assert.deepEqual(res.ignoredKeys, []);
    assert.equal(res.baseModelNameOrPath, 'tiny-test');
    assert.equal(loss(fresh), before, 'bit-identical loss after the round trip');
    const a = (fresh.linears().get('model.layers.0.self_attn.q_proj') as LoraLinear).adapter('default');
    assert.equal(a.A.grad, null, 'inference load: no gradients');
    assert.equal(a.A.value.category, 'frozen');

    // A second copy under another name, trainable, not activated.
    const res2 = loadAdapter(fresh, dir, { name: 'again', trainable: true, activate: false });
    assert.equal(res2.modules.length, 4);
    const l0 = fresh.linears().get('model.layers.0.self_attn.q_proj') as LoraLinear;
    assert.equal(l0.active, 'default', 'activate: false leaves the active adapter alone');
    assert.ok(l0.adapter('again').A.grad, 'trainable load has gradients');
    assert.throws(() => loadAdapter(fresh, dir, { name: 'again' }), /already has an adapter named 'again'/);
    model.dispose(); fresh.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ranks and alphas that differ by module, and a layer subset, round-trip through rank_pattern and layers_to_transform', () => {
  const dir = tempDir();
  try {
    const model = LlamaModel.init(preset('tiny'), { seed: 6, trainable: false });
    prepareLora(model, { r: 4, alpha: 8, targets: /layers\.1\.self_attn\.[qk]_proj$/, seed }, 'x');
    prepareLora(model, { r: 2, alpha: 3, targets: /layers\.1\.mlp\.down_proj$/, seed }, 'x');
    randomizeB(model, 'x');
    const before = loss(model);
    saveAdapter(model, dir);
    const config = JSON.parse(readFileSync(join(dir, PEFT_CONFIG_FILE), 'utf8'));
    assert.equal(config.r, 4);
    assert.equal(config.lora_alpha, 8);
    assert.deepEqual(config.rank_pattern, { 'layers.1.mlp.down_proj': 2 });
    assert.deepEqual(config.alpha_pattern, { 'layers.1.mlp.down_proj': 3 });
    assert.deepEqual(config.layers_to_transform, [1]);
    assert.deepEqual(config.target_modules, ['down_proj', 'k_proj', 'q_proj']);

    const fresh = LlamaModel.init(preset('tiny'), { seed: 6, trainable: false });
    const res = loadAdapter(fresh, dir, { name: 'y', trainable: true });
    assert.deepEqual(res.modules, ['model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.k_proj', 'model.layers.1.mlp.down_proj']);
    const down = (fresh.linears().get('model.layers.1.mlp.down_proj') as LoraLinear).adapter('y');
    assert.equal(down.r, 2);
    assert.equal(down.scale, 3 / 2);
    assert.equal(loss(fresh), before);
    setActiveAdapter(fresh, null);
    assert.notEqual(loss(fresh), before, 'the adapter did change the output');
    model.dispose(); fresh.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// Directories written by hand, as PEFT would

const HAND_CONFIG = {
  alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: 'HuggingFaceTB/SmolLM-135M', bias: 'none',
  corda_config: null, eva_config: null, exclude_modules: null, fan_in_fan_out: false, inference_mode: true,
  init_lora_weights: true, layer_replication: null, layers_pattern: null, layers_to_transform: null, loftq_config: {},
  lora_alpha: 6, lora_bias: false, lora_dropout: 0.05, megatron_config: null, megatron_core: 'megatron.core',
  modules_to_save: null, peft_type: 'LORA', peft_version: '0.15.2', r: 2, rank_pattern: {}, revision: null,
  target_modules: ['q_proj', 'o_proj'], task_type: 'CAUSAL_LM', trainable_token_indices: null, use_dora: false,
  use_rslora: false,
};

type TensorSpec = Record<string, { values: Float32Array; shape: number[] }>;

function writeAdapterDir(dir: string, config: Record<string, unknown>, tensors: TensorSpec, dtype: 'f32' | 'bf16' = 'f32'): void {
  writeFileSync(join(dir, PEFT_CONFIG_FILE), JSON.stringify(config, null, 2));
  const map = new Map(Object.entries(tensors).map(([n, t]) => [n, Tensor.from(t.values, t.shape)]));
  writeSafetensors(join(dir, PEFT_WEIGHTS_FILE), map, { metadata: { format: 'pt' }, dtype });
  for (const t of map.values()) t.dispose();
}

/** y = x W^T + scale * (x A^T) B^T in float64, written out loop by loop. */
function byHand(x: Float32Array, N: number, W: Float32Array, A: Float32Array, B: Float32Array, inF: number, outF: number, r: number, scale: number): Float64Array {
  const y = new Float64Array(N * outF);
  for (let n = 0; n < N; n++) {
    const u = new Float64Array(r);
    for (let k = 0; k < r; k++) for (let i = 0; i < inF; i++) u[k] += x[n * inF + i] * A[k * inF + i];
    for (let o = 0; o < outF; o++) {
      let base = 0, delta = 0;
      for (let i = 0; i < inF; i++) base += x[n * inF + i] * W[o * inF + i];
      for (let k = 0; k < r; k++) delta += u[k] * B[o * r + k];
      y[n * outF + o] = base + scale * delta;
    }
  }
  return y;
}

function checkLayer(model: LlamaModel, module: string, A: Float32Array, B: Float32Array, r: number, scale: number): void {
  const layer = model.linears().get(module);
  assert.ok(layer instanceof LoraLinear, `${module} is a LoRA layer`);
  const { inFeatures: inF, outFeatures: outF } = layer;
  const N = 5;
  const xv = randomValues(N * inF, seed + 7);
  const x = Tensor.from(xv, [N, inF]);
  layer.training = false;
  const y = layer.forward(x);
  const ref = byHand(xv, N, layer.base.weight.value.toFloat32(), A, B, inF, outF, r, scale);
  assert.ok(relErr(y.toFloat32(), ref) < 1e-5, `${module}: ${relErr(y.toFloat32(), ref)} (seed ${seed})`);
  layer.clearSaved();
  x.dispose(); y.dispose();
}

test('a hand-built PEFT directory loads, ignores newer keys, and computes x W^T + alpha/r x A^T B^T', () => {
  const dir = tempDir();
  try {
    const A0 = randomValues(2 * 64, seed + 1, 0.3), B0 = randomValues(64 * 2, seed + 2, 0.3);
    const A1 = randomValues(2 * 64, seed + 3, 0.3), B1 = randomValues(64 * 2, seed + 4, 0.3);
    writeAdapterDir(dir, HAND_CONFIG, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': { values: A0, shape: [2, 64] },
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': { values: B0, shape: [64, 2] },
      // some tools keep the adapter name in the key
      'base_model.model.model.layers.1.self_attn.o_proj.lora_A.default.weight': { values: A1, shape: [2, 64] },
      'base_model.model.model.layers.1.self_attn.o_proj.lora_B.default.weight': { values: B1, shape: [64, 2] },
    });
    const model = LlamaModel.init(preset('tiny'), { seed: 7, trainable: false });
    const res = loadAdapter(model, dir);
    assert.deepEqual(res.modules, ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.o_proj']);
    assert.deepEqual(res.ignoredKeys, [
      'auto_mapping', 'corda_config', 'eva_config', 'layer_replication', 'loftq_config', 'lora_bias', 'megatron_config',
      'megatron_core', 'peft_version', 'trainable_token_indices',
    ]);
    assert.equal(res.dropout, 0.05);
    assert.equal(loraLayers(model).length, 2, 'only the modules with tensors are adapted');
    checkLayer(model, 'model.layers.0.self_attn.q_proj', A0, B0, 2, 6 / 2);
    checkLayer(model, 'model.layers.1.self_attn.o_proj', A1, B1, 2, 6 / 2);
    model.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a regex target_modules string, rsLoRA and bf16 tensors', () => {
  const dir = tempDir();
  try {
    const r = 4, alpha = 8;
    const A = randomValues(r * 64, seed + 5, 0.3), B = randomValues(192 * r, seed + 6, 0.3);
    writeAdapterDir(dir, {
      ...HAND_CONFIG, r, lora_alpha: alpha, use_rslora: true, target_modules: 'model\\.layers\\.\\d+\\.mlp\\.(gate|up)_proj',
    }, {
      'base_model.model.model.layers.1.mlp.up_proj.lora_A.weight': { values: A, shape: [r, 64] },
      'base_model.model.model.layers.1.mlp.up_proj.lora_B.weight': { values: B, shape: [192, r] },
    }, 'bf16');
    const model = LlamaModel.init(preset('tiny'), { seed: 8, trainable: false });
    loadAdapter(model, dir);
    const round = (v: Float32Array) => Float32Array.from(v, (x) => bf16ToF32(f32ToBf16(x)));
    checkLayer(model, 'model.layers.1.mlp.up_proj', round(A), round(B), r, alpha / Math.sqrt(r));
    model.dispose();

    // the same tensors under a pattern that does not select up_proj
    writeAdapterDir(dir, { ...HAND_CONFIG, r, lora_alpha: alpha, target_modules: '.*gate_proj' }, {
      'base_model.model.model.layers.1.mlp.up_proj.lora_A.weight': { values: A, shape: [r, 64] },
      'base_model.model.model.layers.1.mlp.up_proj.lora_B.weight': { values: B, shape: [192, r] },
    });
    const other = LlamaModel.init(preset('tiny'), { seed: 8, trainable: false });
    assert.throws(() => loadAdapter(other, dir), /model\.layers\.1\.mlp\.up_proj has tensors but target_modules ".\*gate_proj" does not select it/);
    other.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad adapter directories fail with messages naming the file, and leave the model untouched', () => {
  const dir = tempDir();
  const model = LlamaModel.init(preset('tiny'), { seed: 9, trainable: false });
  const A = randomValues(2 * 64, seed, 0.3), B = randomValues(64 * 2, seed + 1, 0.3);
  const q = 'base_model.model.model.layers.0.self_attn.q_proj';
  const good: TensorSpec = { [`${q}.lora_A.weight`]: { values: A, shape: [2, 64] }, [`${q}.lora_B.weight`]: { values: B, shape: [64, 2] } };
  const weights = join(dir, PEFT_WEIGHTS_FILE).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const configFile = join(dir, PEFT_CONFIG_FILE).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const live = memory.snapshot().cpu.liveTotal;
  const fails = (config: Record<string, unknown>, tensors: TensorSpec, re: RegExp) => {
    writeAdapterDir(dir, config, tensors);
    assert.throws(() => loadAdapter(model, dir), re);
    assert.equal(loraLayers(model).length, 0, `no adapter left behind (${re})`);
    assert.equal(memory.snapshot().cpu.liveTotal, live, `nothing leaked (${re})`);
  };
  try {
    fails(HAND_CONFIG, { ...good, [`${q}.lora_A.weight`]: { values: randomValues(2 * 65, 1), shape: [2, 65] } },
      new RegExp(`^Error: ${weights}: ${q.replace(/\./g, '\\.')}\\.lora_A\\.weight has shape \\[2, 65\\], expected \\[2, 64\\]`));
    fails(HAND_CONFIG, { ...good, [`${q}.lora_B.weight`]: { values: randomValues(64 * 3, 1), shape: [64, 3] } },
      /lora_B\.weight has shape \[64, 3\], expected \[64, 2\] \(out_features x r, r = 2\)/);
    fails(HAND_CONFIG, { ...good, 'base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight': { values: A, shape: [2, 64] } },
      new RegExp(`${weights}: .*the model has no linear module model\\.layers\\.0\\.self_attn\\.qkv_proj`));
    fails(HAND_CONFIG, { ...good, 'base_model.model.lm_head.lora_embedding_A.weight': { values: A, shape: [2, 64] } },
      /unexpected tensors .*: base_model\.model\.lm_head\.lora_embedding_A\.weight/);
    fails(HAND_CONFIG, { [`${q}.lora_A.weight`]: good[`${q}.lora_A.weight`] }, /model\.layers\.0\.self_attn\.q_proj has lora_A but no lora_B/);
    fails({ ...HAND_CONFIG, target_modules: ['v_proj'] }, good, /q_proj has tensors but target_modules \["v_proj"\] does not select it/);
    fails({ ...HAND_CONFIG, layers_to_transform: [1] }, good, /layers_to_transform \[1\] does not include layer 0/);
    fails({ ...HAND_CONFIG, exclude_modules: ['q_proj'] }, good, /q_proj has tensors but exclude_modules excludes it/);
    fails({ ...HAND_CONFIG, peft_type: 'IA3' }, good, new RegExp(`^Error: ${configFile}: peft_type "IA3" is not supported \\(only "LORA"\\)`));
    fails({ ...HAND_CONFIG, use_dora: true }, good, new RegExp(`${configFile}: DoRA is not supported`));
    fails(HAND_CONFIG, { ...good, [`${q}.lora_magnitude_vector`]: { values: randomValues(64, 1), shape: [64] } }, /DoRA is not supported/);
    fails({ ...HAND_CONFIG, lora_bias: true, bias: 'all' }, good, /bias "all" is not supported.*lora_bias true is not supported/);
    fails({ ...HAND_CONFIG, fan_in_fan_out: true, r: 0 }, good, /r must be a positive integer, got 0; fan_in_fan_out true is not supported/);
    fails({ ...HAND_CONFIG, target_modules: '.*q_proj', layers_to_transform: 0 }, good, /layers_to_transform cannot be used when target_modules is a string/);
    fails({ ...HAND_CONFIG, init_lora_weights: 'pissa' }, good, /init_lora_weights "pissa" is not supported/);
    fails({ ...HAND_CONFIG, modules_to_save: ['lm_head'] }, good, /modules_to_save \["lm_head"\] is not supported/);

    // the older pickle file only
    rmSync(join(dir, PEFT_WEIGHTS_FILE));
    writeFileSync(join(dir, 'adapter_model.bin'), Buffer.from('PK\x03\x04 not really a zip'));
    assert.throws(() => loadAdapter(model, dir), /adapter_model\.bin: PyTorch pickle adapter files are not supported, only adapter_model\.safetensors/);
    rmSync(join(dir, 'adapter_model.bin'));
    assert.throws(() => loadAdapter(model, dir), /adapter_model\.safetensors: not found/);
    assert.throws(() => loadAdapter(model, join(dir, 'nope')), /nope: not a directory/);

    const trained = LlamaModel.init(preset('tiny'), { seed: 9 });
    writeAdapterDir(dir, HAND_CONFIG, good);
    assert.throws(() => loadAdapter(trained, dir), /base model must be frozen/);
    trained.dispose();
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('saveAdapter names the adapters it has when asked for one it does not', () => {
  const dir = tempDir();
  try {
    const model = LlamaModel.init(preset('tiny'), { seed: 10, trainable: false });
    prepareLora(model, { targets: ['q_proj'] }, 'alice');
    assert.throws(() => saveAdapter(model, dir, { adapter: 'bob' }), /no adapter named 'bob' \(have: alice\)/);
    assert.equal(saveAdapter(model, dir).adapter, 'alice', 'the active adapter by default');
    const { tensors } = readSafetensors(join(dir, PEFT_WEIGHTS_FILE));
    assert.equal(tensors.size, 4);
    for (const t of tensors.values()) t.dispose();
    model.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
