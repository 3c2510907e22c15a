// QA-LoRA adapters (pooled input) on LoraLinear, with PEFT's use_qalora semantics:
//   y = x W^T + s * B A (in/L * mean over each group of L features of dropout(x)),  A [r, in/L]
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DenseLinear, LlamaModel, Quant4Linear, Rng, Tensor, dequantize4bit, preset, quantize4bit, writeSafetensors,
} from '@tunebench/core';
import {
  LoraLinear, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, loadAdapter, loraConfig, loraLayers, pooledDelta, prepareLora, saveAdapter,
} from '../src/index.js';
import { randomValues, relErr, tfjs } from './helpers.js';

const seed = (Math.random() * 2 ** 31) >>> 0;
const MODULE = 'model.layers.0.self_attn.q_proj';

function denseBase(outF: number, inF: number, s = seed + 1): DenseLinear {
  return new DenseLinear(MODULE, Tensor.from(randomValues(outF * inF, s, 0.2), [outF, inF], { category: 'frozen' }), null);
}

function randomizeB(layer: LoraLinear, name: string, s: number): void {
  const b = layer.adapter(name).B.value;
  (b.data() as Float32Array).set(randomValues(b.numel, s, 0.1));
}

/** The keep-mask (scaled by 1/(1-p)) the layer will draw next, replayed from its random state. */
function nextMask(layer: LoraLinear, n: number, p: number): Float32Array {
  const rng = new Rng(layer.randomState());
  const m = new Float32Array(n);
  for (let i = 0; i < n; i++) m[i] = rng.next() < p ? 0 : 1 / (1 - p);
  return m;
}

/** y = x W^T + s * B A P(x) in float64, loop by loop, P(x)[g] = in/L * mean of x[g*L .. g*L+L-1]. */
function byHand(x: Float32Array, N: number, W: Float32Array, A: Float32Array, B: Float32Array,
                inF: number, outF: number, r: number, L: number, s: number): Float64Array {
  const G = inF / L, y = new Float64Array(N * outF);
  for (let n = 0; n < N; n++) {
    const p = new Float64Array(G);
    for (let g = 0; g < G; g++) {
      let sum = 0;
      for (let j = 0; j < L; j++) sum += x[n * inF + g * L + j];
      p[g] = (inF / L) * (sum / L);
    }
    const u = new Float64Array(r);
    for (let k = 0; k < r; k++) for (let g = 0; g < G; g++) u[k] += A[k * G + g] * p[g];
    for (let o = 0; o < outF; o++) {
      let base = 0, delta = 0;
      for (let i = 0; i < inF; i++) base += x[n * inF + i] * W[o * inF + i];
      for (let k = 0; k < r; k++) delta += B[o * r + k] * u[k];
      y[n * outF + o] = base + s * delta;
    }
  }
  return y;
}

// Tolerance 1e-5 relative to the largest value, as the plain LoRA tests: float32
// GEMMs against tfjs's float32 ops, a few ulps apart.
test('pooled adapter: y, dx, dA and dB match tfjs with explicit pooling (dense and NF4 base, dropout, dx accumulated)', async () => {
  const tf = await tfjs();
  type TF2 = ReturnType<typeof tf.tensor2d>;
  const [N, inF, outF, r, alpha] = [11, 128, 24, 4, 8];
  const cases = [
    { L: 8, dropout: 0, quant: false, accumulate: false },
    { L: 32, dropout: 0.25, quant: false, accumulate: true },
    { L: 16, dropout: 0.1, quant: true, accumulate: false },
    { L: 1, dropout: 0, quant: false, accumulate: false },
  ];
  for (const { L, dropout, quant, accumulate } of cases) {
    const what = `L ${L}, dropout ${dropout}, ${quant ? 'nf4' : 'f32'} base${accumulate ? ', dxInto' : ''} (seed ${seed})`;
    const dense = denseBase(outF, inF);
    let base: DenseLinear | Quant4Linear = dense, Wv: Float32Array;
    if (quant) {
      const q = quantize4bit(dense.weight.value, { format: 'nf4', blockSize: 64 });
      dense.dispose();
      base = new Quant4Linear(MODULE, q);
      const deq = dequantize4bit(q);
      Wv = deq.toFloat32();
      deq.dispose();
    } else {
      Wv = dense.weight.value.toFloat32();
    }
    const layer = new LoraLinear(base, seed);
    const a = layer.addAdapter('qa', { r, alpha, rslora: false, dropout, init: 'kaiming', seed, poolSize: L });
    assert.deepEqual(a.A.value.shape, [r, inF / L], what);
    assert.deepEqual(a.B.value.shape, [outF, r], what);
    assert.equal(a.poolSize, L);
    randomizeB(layer, 'qa', seed + 2);
    const xv = randomValues(N * inF, seed + 3), dyv = randomValues(N * outF, seed + 4), prev = randomValues(N * inF, seed + 5);
    const mask = dropout > 0 ? nextMask(layer, N * inF, dropout) : new Float32Array(N * inF).fill(1);
    const x = Tensor.from(xv, [N, inF]), dy = Tensor.from(dyv, [N, outF]);
    const dxInto = accumulate ? Tensor.from(prev, [N, inF]) : undefined;
    const y = layer.forward(x);
    const dx = layer.backward(dy, dxInto);
    if (accumulate) assert.equal(dx, dxInto, 'dx accumulated in place');

    const W = tf.tensor2d(Wv, [outF, inF]), M = tf.tensor2d(mask, [N, inF]), dyT = tf.tensor2d(dyv, [N, outF]);
    // PEFT: dropout on x, then view(N, in/L, L).mean(2) * (in/L), then A, B, times scaling
    const reference = (xt: TF2, At: TF2, Bt: TF2) => {
      const pooled = tf.mean(tf.reshape(tf.mul(xt, M), [N, inF / L, L]), 2).mul(inF / L) as TF2;
      return tf.matMul(xt, W, false, true).add(tf.matMul(tf.matMul(pooled, At, false, true), Bt, false, true).mul(alpha / r));
    };
    const f = (...args: ReturnType<typeof tf.tensor>[]) => reference(args[0] as TF2, args[1] as TF2, args[2] as TF2).mul(dyT).sum();
    const xt = tf.tensor2d(xv, [N, inF]), At = tf.tensor2d(a.A.value.toFloat32(), [r, inF / L]), Bt = tf.tensor2d(a.B.value.toFloat32(), [outF, r]);
    const yRef = reference(xt, At, Bt).dataSync();
    const [gx, gA, gB] = tf.grads(f)([xt, At, Bt]);
    const dxRef = Float32Array.from(gx.dataSync(), (v, i) => v + (accumulate ? prev[i] : 0));
    assert.ok(relErr(y.toFloat32(), yRef) < 1e-5, `y: ${relErr(y.toFloat32(), yRef)}, ${what}`);
    assert.ok(relErr(dx.toFloat32(), dxRef) < 1e-5, `dx: ${relErr(dx.toFloat32(), dxRef)}, ${what}`);
    assert.ok(relErr(a.A.grad!.toFloat32(), gA.dataSync()) < 1e-5, `dA, ${what}`);
    assert.ok(relErr(a.B.grad!.toFloat32(), gB.dataSync()) < 1e-5, `dB, ${what}`);
    assert.equal(layer.base.weight.grad, null, 'nothing for the frozen base');
    // gradients accumulate over a second pass (the package's rule)
    const dA1 = a.A.grad!.toFloat32();
    const y2 = layer.forward(x);
    layer.backward(dy).dispose();
    if (dropout === 0) assert.ok(relErr(a.A.grad!.toFloat32(), dA1.map((v) => 2 * v)) < 1e-6, `dA accumulates, ${what}`);
    for (const t of [x, dy, y, y2, dx]) t.dispose();
    tf.dispose([W, M, dyT, xt, At, Bt, gx, gA, gB]);
    layer.dispose();
  }
});

test('pooled adapter: merged forward equals the adapter forward; unmerge restores; mergeAndUnload keeps it', () => {
  const [N, inF, outF, L] = [9, 96, 40, 12];
  for (const dtype of ['f32', 'bf16'] as const) {
    const w = Tensor.from(randomValues(outF * inF, seed + 6, 0.2), [outF, inF], { dtype, category: 'frozen' });
    const layer = new LoraLinear(new DenseLinear(MODULE, w, null), seed);
    const x = Tensor.from(randomValues(N * inF, seed + 7), [N, inF]);
    layer.training = false;
    const base = layer.forward(x).toFloat32();
    layer.addAdapter('qa', { r: 3, alpha: 12, rslora: true, dropout: 0.3, init: 'gaussian', seed, poolSize: L });
    assert.deepEqual(layer.forward(x).toFloat32(), base, 'B starts at zero');
    randomizeB(layer, 'qa', seed + 8);
    const adapted = layer.forward(x).toFloat32();
    assert.ok(relErr(adapted, base) > 1e-3, 'the adapter changes the output');
    layer.merge('qa');
    const merged = layer.forward(x).toFloat32();
    // bf16: the merged weight is rounded to bf16 (8 bits of mantissa), as PEFT's merge into a bf16 weight
    const tol = dtype === 'f32' ? 1e-4 : 1e-2;
    assert.ok(relErr(merged, adapted) < tol, `${dtype} merged vs adapter: ${relErr(merged, adapted)}`);
    layer.unmerge();
    assert.ok(relErr(layer.forward(x).toFloat32(), adapted) < (dtype === 'f32' ? 1e-5 : 1e-2), `${dtype}: unmerge`);
    if (dtype === 'f32') {
      const plain = layer.mergeAndUnload() as DenseLinear;
      const y = plain.forward(x);
      assert.ok(relErr(y.toFloat32(), adapted) < 1e-4, 'merge and unload');
      y.dispose(); plain.dispose();
    } else {
      layer.clearSaved();
      layer.dispose();
    }
    x.dispose();
  }
});

test('pooledDelta: the exact per-group weight delta, s * in/L^2 * B A, equal to the adapter on unit inputs', () => {
  const [inF, outF, r, L, alpha] = [48, 20, 5, 6, 10];
  const layer = new LoraLinear(denseBase(outF, inF), seed);
  const a = layer.addAdapter('qa', { r, alpha, rslora: false, dropout: 0, init: 'kaiming', seed, poolSize: L });
  randomizeB(layer, 'qa', seed + 9);
  const G = inF / L, s = alpha / r;
  const delta = pooledDelta(layer, 'qa');
  assert.equal(delta.length, outF * G);
  // the formula, in float64
  const Av = a.A.value.toFloat32(), Bv = a.B.value.toFloat32();
  const want = new Float64Array(outF * G);
  for (let o = 0; o < outF; o++) for (let g = 0; g < G; g++) {
    let ba = 0;
    for (let k = 0; k < r; k++) ba += Bv[o * r + k] * Av[k * G + g];
    want[o * G + g] = s * (inF / L) / L * ba;
  }
  assert.ok(relErr(delta, want) < 1e-6, `formula: ${relErr(delta, want)}`);
  // the layer's own response to each unit input e_i, minus the base's: column i of the effective delta
  layer.training = false;
  const eye = new Float32Array(inF * inF);
  for (let i = 0; i < inF; i++) eye[i * inF + i] = 1;
  const X = Tensor.from(eye, [inF, inF]);
  const y = layer.forward(X).toFloat32();
  layer.active = null;
  const yb = layer.forward(X).toFloat32();
  const expanded = new Float32Array(outF * inF);
  for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) expanded[o * inF + i] = delta[o * G + Math.floor(i / L)];
  const probed = new Float32Array(outF * inF);
  for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) probed[o * inF + i] = y[i * outF + o] - yb[i * outF + o];
  assert.ok(relErr(probed, expanded) < 1e-4, `probed vs expanded pooledDelta: ${relErr(probed, expanded)}`);
  const dw = layer.deltaWeight('qa');
  assert.ok(relErr(dw.toFloat32(), expanded) < 1e-6, 'deltaWeight is pooledDelta spread over each group');
  dw.dispose();
  layer.addAdapter('plain', { r, alpha, rslora: false, dropout: 0, init: 'kaiming', seed });
  assert.throws(() => pooledDelta(layer, 'plain'), /adapter 'plain' is not pooled/);
  layer.clearSaved();
  X.dispose(); layer.dispose();
});

test('mixed batch: rows with a pooled adapter, a plain adapter and none match each adapter alone', () => {
  const [T, inF, outF] = [4, 64, 32];
  const layer = new LoraLinear(denseBase(outF, inF), seed);
  layer.addAdapter('qa', { r: 4, alpha: 8, rslora: false, dropout: 0, init: 'kaiming', seed, poolSize: 16 });
  layer.addAdapter('qa8', { r: 2, alpha: 4, rslora: false, dropout: 0, init: 'kaiming', seed, poolSize: 8 });
  layer.addAdapter('plain', { r: 4, alpha: 8, rslora: false, dropout: 0, init: 'kaiming', seed });
  randomizeB(layer, 'qa', seed + 10); randomizeB(layer, 'qa8', seed + 12); randomizeB(layer, 'plain', seed + 11);
  layer.training = false;
  const rows = ['qa', 'plain', null, 'qa', 'qa8', 'plain'];
  const xv = randomValues(rows.length * T * inF, seed + 12);
  const x = Tensor.from(xv, [rows.length * T, inF]);
  layer.setRowAdapters(rows, T);
  const mixed = layer.forward(x).toFloat32();
  layer.setRowAdapters(null);
  for (let row = 0; row < rows.length; row++) {
    layer.active = rows[row];
    const xr = Tensor.from(xv.subarray(row * T * inF, (row + 1) * T * inF), [T, inF]);
    const alone = layer.forward(xr).toFloat32();
    const got = mixed.subarray(row * T * outF, (row + 1) * T * outF);
    assert.ok(relErr(got, alone) < 1e-5, `row ${row} (${rows[row]}): ${relErr(got, alone)}`);
    xr.dispose();
  }
  layer.clearSaved();
  x.dispose(); layer.dispose();
});

// ---------------------------------------------------------------------------
// PEFT files

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'tunebench-qalora-'));
}

const HAND_CONFIG = {
  alpha_pattern: {}, base_model_name_or_path: null, bias: 'none', exclude_modules: null, fan_in_fan_out: false,
  inference_mode: true, init_lora_weights: true, layer_replication: null, layers_pattern: null, layers_to_transform: null,
  lora_alpha: 6, lora_bias: false, lora_dropout: 0.05, modules_to_save: null, peft_type: 'LORA', peft_version: '0.17.0',
  qalora_group_size: 8, r: 2, rank_pattern: {}, revision: null, target_modules: ['q_proj', 'down_proj'], task_type: 'CAUSAL_LM',
  use_dora: false, use_qalora: true, use_rslora: false,
};

type TensorSpec = Record<string, { values: Float32Array; shape: number[] }>;

function writeAdapterDir(dir: string, config: Record<string, unknown>, tensors: TensorSpec): void {
  writeFileSync(join(dir, PEFT_CONFIG_FILE), JSON.stringify(config, null, 2));
  const map = new Map(Object.entries(tensors).map(([n, t]) => [n, Tensor.from(t.values, t.shape)]));
  writeSafetensors(join(dir, PEFT_WEIGHTS_FILE), map, { metadata: { format: 'pt' }, dtype: 'f32' });
  for (const t of map.values()) t.dispose();
}

function checkLayer(model: LlamaModel, module: string, A: Float32Array, B: Float32Array, r: number, L: number, s: number): void {
  const layer = model.linears().get(module);
  assert.ok(layer instanceof LoraLinear, `${module} is a LoRA layer`);
  const { inFeatures: inF, outFeatures: outF } = layer;
  const N = 5, xv = randomValues(N * inF, seed + 13);
  const x = Tensor.from(xv, [N, inF]);
  layer.training = false;
  const y = layer.forward(x);
  const ref = byHand(xv, N, layer.base.weight.value.toFloat32(), A, B, inF, outF, r, L, s);
  assert.ok(relErr(y.toFloat32(), ref) < 1e-5, `${module}: ${relErr(y.toFloat32(), ref)} (seed ${seed})`);
  layer.clearSaved();
  x.dispose(); y.dispose();
}

test('a hand-built PEFT use_qalora directory loads and computes x W^T + s B A (in/L * group means)', () => {
  const dir = tempDir();
  try {
    const r = 2, L = 8;
    // tiny: q_proj 64 -> 64, down_proj 192 -> 64
    const Aq = randomValues(r * (64 / L), seed + 14, 0.3), Bq = randomValues(64 * r, seed + 15, 0.3);
    const Ad = randomValues(r * (192 / L), seed + 16, 0.3), Bd = randomValues(64 * r, seed + 17, 0.3);
    writeAdapterDir(dir, HAND_CONFIG, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': { values: Aq, shape: [r, 64 / L] },
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': { values: Bq, shape: [64, r] },
      'base_model.model.model.layers.1.mlp.down_proj.lora_A.weight': { values: Ad, shape: [r, 192 / L] },
      'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight': { values: Bd, shape: [64, r] },
    });
    const model = LlamaModel.init(preset('tiny'), { seed: 7, trainable: false });
    const res = loadAdapter(model, dir);
    assert.equal(res.poolSize, L);
    assert.ok(!res.ignoredKeys.includes('use_qalora') && !res.ignoredKeys.includes('qalora_group_size'), 'both keys are read');
    checkLayer(model, 'model.layers.0.self_attn.q_proj', Aq, Bq, r, L, 6 / 2);
    checkLayer(model, 'model.layers.1.mlp.down_proj', Ad, Bd, r, L, 6 / 2);
    model.dispose();

    // without qalora_group_size, PEFT's default group size (16) applies
    const { qalora_group_size: _, ...noSize } = HAND_CONFIG;
    const A16 = randomValues(r * 4, seed + 18, 0.3);
    writeAdapterDir(dir, { ...noSize, target_modules: ['q_proj'] }, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': { values: A16, shape: [r, 4] },
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': { values: Bq, shape: [64, r] },
    });
    const m2 = LlamaModel.init(preset('tiny'), { seed: 7, trainable: false });
    assert.equal(loadAdapter(m2, dir).poolSize, 16);
    checkLayer(m2, 'model.layers.0.self_attn.q_proj', A16, Bq, r, 16, 3);
    m2.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('use_qalora files with the wrong shapes or a group size that does not divide in_features are refused', () => {
  const dir = tempDir();
  try {
    const model = LlamaModel.init(preset('tiny'), { seed: 7, trainable: false });
    const B = { values: randomValues(64 * 2, seed, 0.3), shape: [64, 2] };
    // lora_A of a plain adapter, [r, in], under use_qalora
    writeAdapterDir(dir, { ...HAND_CONFIG, target_modules: ['q_proj'] }, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': { values: randomValues(2 * 64, seed, 0.3), shape: [2, 64] },
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': B,
    });
    assert.throws(() => loadAdapter(model, dir), /q_proj\.lora_A\.weight has shape \[2, 64\], expected \[2, 8\] \(r x in_features\/qalora_group_size = 64\/8/);
    // a pooled lora_A without use_qalora
    writeAdapterDir(dir, { ...HAND_CONFIG, use_qalora: false, target_modules: ['q_proj'] }, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': { values: randomValues(2 * 8, seed, 0.3), shape: [2, 8] },
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': B,
    });
    assert.throws(() => loadAdapter(model, dir), /lora_A\.weight has shape \[2, 8\], expected \[2, 64\] \(r x in_features/);
    // 64 is not a multiple of 24
    writeAdapterDir(dir, { ...HAND_CONFIG, qalora_group_size: 24, target_modules: ['q_proj'] }, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': { values: randomValues(2 * 2, seed, 0.3), shape: [2, 2] },
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': B,
    });
    assert.throws(() => loadAdapter(model, dir), /in_features 64 is not divisible by qalora_group_size 24/);
    for (const bad of [0, -8, 2.5, '8']) {
      writeFileSync(join(dir, PEFT_CONFIG_FILE), JSON.stringify({ ...HAND_CONFIG, qalora_group_size: bad }));
      assert.throws(() => loadAdapter(model, dir), /qalora_group_size must be a positive integer/);
    }
    writeFileSync(join(dir, PEFT_CONFIG_FILE), JSON.stringify({ ...HAND_CONFIG, use_qalora: 'yes' }));
    assert.throws(() => loadAdapter(model, dir), /use_qalora must be a boolean/);
    assert.equal(loraLayers(model).length, 0, 'a refused load leaves the model as it was');
    model.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('save -> load round trip of a pooled adapter (use_qalora, qalora_group_size, lora_A [r, in/L])', () => {
  const dir = tempDir();
  try {
    const L = 32;
    const model = LlamaModel.init(preset('tiny'), { seed: 3, trainable: false });
    prepareLora(model, { r: 4, alpha: 8, poolSize: L, targets: ['q_proj', 'v_proj', 'down_proj'] }, 'qa');
    for (const l of loraLayers(model)) randomizeB(l, 'qa', seed + l.name.length);
    const res = saveAdapter(model, dir);
    assert.equal(res.config.use_qalora, true);
    assert.equal(res.config.qalora_group_size, L);
    const written = JSON.parse(readFileSync(join(dir, PEFT_CONFIG_FILE), 'utf8'));
    assert.equal(written.use_qalora, true);
    assert.equal(written.qalora_group_size, L);

    const fresh = LlamaModel.init(preset('tiny'), { seed: 3, trainable: false });
    const loaded = loadAdapter(fresh, dir, { name: 'qa' });
    assert.equal(loaded.poolSize, L);
    assert.deepEqual(loaded.modules, res.modules);
    const byName = new Map(loraLayers(fresh).map((l) => [l.name, l]));
    for (const l of loraLayers(model)) {
      const g = byName.get(l.name)!, a = l.adapter('qa'), b = g.adapter('qa');
      assert.equal(b.poolSize, L);
      assert.deepEqual(b.A.value.shape, [4, l.inFeatures / L]);
      assert.deepEqual(b.A.value.toFloat32(), a.A.value.toFloat32(), `${l.name} A`);
      assert.deepEqual(b.B.value.toFloat32(), a.B.value.toFloat32(), `${l.name} B`);
      const x = Tensor.from(randomValues(6 * l.inFeatures, seed + 19), [6, l.inFeatures]);
      l.training = false; g.training = false;
      const y1 = l.forward(x), y2 = g.forward(x);
      assert.deepEqual(y2.toFloat32(), y1.toFloat32(), `${l.name} output`);
      l.clearSaved(); g.clearSaved();
      for (const t of [x, y1, y2]) t.dispose();
    }
    // a plain adapter saves without the QA-LoRA keys; mixing plain and pooled in one adapter cannot be saved
    prepareLora(model, { r: 4, alpha: 8, targets: ['q_proj'] }, 'plain');
    const plain = saveAdapter(model, join(dir, 'plain'), { adapter: 'plain' });
    assert.ok(!('use_qalora' in plain.config) && !('qalora_group_size' in plain.config));
    prepareLora(model, { r: 4, alpha: 8, targets: ['k_proj'], poolSize: 16 }, 'plain');
    assert.throws(() => saveAdapter(model, join(dir, 'mixed'), { adapter: 'plain' }),
      /uses poolSize \(QA-LoRA group size, none = plain LoRA\) none and 16 on different modules/);
    model.dispose(); fresh.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('pooled adapter training through the model: backward runs and only A and B get gradients', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 4, trainable: false });
  prepareLora(model, { r: 4, alpha: 8, poolSize: 16, dropout: 0.1 });
  for (const l of loraLayers(model)) randomizeB(l, 'default', seed + l.name.length);
  const ids = Tensor.from(Int32Array.from({ length: 24 }, (_, i) => (i * 37 + 11) % 259), [2, 12], { dtype: 'i32' });
  const targets = Tensor.from(Int32Array.from({ length: 24 }, (_, i) => (i * 37 + 48) % 259), [2, 12], { dtype: 'i32' });
  const { lossSum } = model.forward({ ids, targets }, { training: true });
  assert.ok(Number.isFinite(lossSum));
  model.backward(1 / 24);
  const trained = model.parameters().filter((p) => p.grad !== null);
  assert.ok(trained.every((p) => /lora_[AB]/.test(p.name)), 'only adapter parameters train');
  assert.ok(trained.some((p) => p.name.includes('lora_A') && (p.grad!.data() as Float32Array).some((v) => v !== 0)), 'A gets a gradient');
  ids.dispose(); targets.dispose(); model.dispose();
});

test('bad pooled options are clear errors', () => {
  const layer = new LoraLinear(denseBase(8, 24), seed);
  const o = { r: 2, alpha: 4, rslora: false, dropout: 0, init: 'kaiming' as const, seed };
  assert.throws(() => layer.addAdapter('a', { ...o, poolSize: 5 }), /in_features 24 is not divisible by poolSize 5/);
  assert.throws(() => layer.addAdapter('a', { ...o, poolSize: 0 }), /poolSize \(QA-LoRA group size\) must be a positive integer, got 0/);
  assert.throws(() => layer.addAdapter('a', { ...o, poolSize: -4 }), /must be a positive integer, got -4/);
  assert.throws(() => layer.addAdapter('a', { ...o, poolSize: 1.5 }), /must be a positive integer, got 1.5/);
  assert.throws(() => layer.addAdapter('a', { ...o, r: 0, poolSize: 4 }), /r must be a positive integer, got 0/);
  assert.equal(layer.adapters.size, 0, 'nothing was added');
  assert.throws(() => loraConfig({ poolSize: 0 }), /poolSize \(QA-LoRA group size\) must be a positive integer/);
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  // 3 divides down_proj's 192 inputs but not q_proj's 64: refused before layer 0's down_proj is wrapped
  assert.throws(() => prepareLora(model, { poolSize: 3, targets: /layers\.0\.mlp\.down_proj|layers\.1\.self_attn\.q_proj/ }),
    /LoRA: model\.layers\.1\.self_attn\.q_proj: in_features 64 is not divisible by poolSize 3/);
  assert.equal(loraLayers(model).length, 0);
  model.dispose(); layer.dispose();
});
