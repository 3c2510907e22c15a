// Architectures beyond Llama through the same model code: Qwen2/2.5 (q/k/v
// biases), Qwen3 (per-head q/k RMSNorm, its own head_dim), Mistral (sliding
// window), Llama with attention_bias. Each test writes a tiny random
// checkpoint in the Hugging Face layout (config.json as transformers writes it
// for that model_type, safetensors named as its state_dict), loads it, and
// checks logits, loss and every gradient against the tfjs reference built
// from the same arrays and a config written here by hand; then the KV-cache
// decode, the save/load round trip, and the sliding-window attention op
// against a float64 evaluation of its definition.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';
import {
  KVCache, type LlamaConfig, LlamaModel, Tensor, attentionBackward, attentionDecode, attentionForward, configFromHf, configToHf,
  loadHfModel, modelTensorShapes, parameterCount, preset, readSafetensorsHeader, saveHfModel, writeSafetensors,
} from '../src/index.js';
import { tfjsLlamaLogits, tfjsLlamaLoss } from '../src/reference/tfjs_llama.js';
import { randn, relErr, rng, tfjs } from './helpers.js';

type R = ReturnType<typeof rng>;

interface Arch {
  name: string;
  /** config.json as transformers writes it for the architecture */
  json: Record<string, unknown>;
  /** the config the reference runs, written here independently of configFromHf */
  config: LlamaConfig;
  /** tensors besides Llama's: biases of these projections, q/k norms */
  biased: string[];
  qkNorm: boolean;
}

const BASE = { hidden_act: 'silu', initializer_range: 0.02, rms_norm_eps: 1e-6, torch_dtype: 'float32', vocab_size: 61, max_position_embeddings: 64 };

const ARCHS: Arch[] = [
  {
    name: 'qwen2 (q/k/v biases, tied, GQA)',
    json: {
      ...BASE, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
      num_attention_heads: 4, num_key_value_heads: 2, rope_theta: 1000000, tie_word_embeddings: true, use_sliding_window: false,
      sliding_window: 32, max_window_layers: 2,
    },
    config: {
      vocabSize: 61, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1000000,
      maxPositionEmbeddings: 64, tieWordEmbeddings: true, modelType: 'qwen2', qkvBias: true,
    },
    biased: ['q_proj', 'k_proj', 'v_proj'], qkNorm: false,
  },
  {
    name: 'qwen3 (q/k norms, head_dim 16 with hidden 32 / 4 heads, untied)',
    json: {
      ...BASE, architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', hidden_size: 32, intermediate_size: 40, num_hidden_layers: 2,
      num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, rope_theta: 1000000, tie_word_embeddings: false, attention_bias: false,
      use_sliding_window: false, sliding_window: null, max_window_layers: 2,
    },
    config: {
      vocabSize: 61, hiddenSize: 32, intermediateSize: 40, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1000000,
      maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'qwen3', headDim: 16, qkNorm: true,
    },
    biased: [], qkNorm: true,
  },
  {
    name: 'mistral (sliding window 5 over 13 tokens)',
    json: {
      ...BASE, architectures: ['MistralForCausalLM'], model_type: 'mistral', hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
      num_attention_heads: 4, num_key_value_heads: 1, rope_theta: 10000, rms_norm_eps: 1e-5, tie_word_embeddings: false, sliding_window: 5,
    },
    config: {
      vocabSize: 61, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 1, rmsNormEps: 1e-5, ropeTheta: 10000,
      maxPositionEmbeddings: 64, tieWordEmbeddings: false, modelType: 'mistral', slidingWindow: 5,
    },
    biased: [], qkNorm: false,
  },
  {
    name: 'llama with attention_bias (q/k/v/o biases)',
    json: {
      ...BASE, architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
      num_attention_heads: 2, num_key_value_heads: 2, rope_theta: 10000, tie_word_embeddings: true, attention_bias: true, mlp_bias: false,
    },
    config: {
      vocabSize: 61, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 2, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 10000,
      maxPositionEmbeddings: 64, tieWordEmbeddings: true, qkvBias: true, oBias: true,
    },
    biased: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], qkNorm: false,
  },
  {
    name: 'qwen3 with attention_bias (q/k/v/o biases and q/k norms), default head_dim 128, MQA',
    json: {
      ...BASE, architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', hidden_size: 24, intermediate_size: 40, num_hidden_layers: 1,
      num_attention_heads: 4, num_key_value_heads: 1, rope_theta: 10000, tie_word_embeddings: true, attention_bias: true,
    },
    // Qwen3Config's head_dim defaults to 128
    config: {
      vocabSize: 61, hiddenSize: 24, intermediateSize: 40, numLayers: 1, numHeads: 4, numKvHeads: 1, rmsNormEps: 1e-6, ropeTheta: 10000,
      maxPositionEmbeddings: 64, tieWordEmbeddings: true, modelType: 'qwen3', headDim: 128, qkNorm: true, qkvBias: true, oBias: true,
    },
    biased: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], qkNorm: true,
  },
];

/** The checkpoint's tensors, named and shaped as the architecture's state_dict (written out by hand here). */
function checkpointTensors(a: Arch, r: R): Map<string, { v: Float32Array; shape: number[] }> {
  const c = a.config, C = c.hiddenSize, D = c.headDim ?? C / c.numHeads, I = c.intermediateSize;
  const out = new Map<string, { v: Float32Array; shape: number[] }>();
  const mat = (n: string, shape: number[], std = 0.2) => out.set(n, { v: randn(shape[0] * shape[1], r, std), shape });
  const vec = (n: string, len: number, mean: number, std: number) => {
    const v = randn(len, r, std);
    for (let i = 0; i < len; i++) v[i] += mean;
    out.set(n, { v, shape: [len] });
  };
  mat('model.embed_tokens.weight', [c.vocabSize, C], 0.5);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const proj: [string, number, number][] = [['q_proj', c.numHeads * D, C], ['k_proj', c.numKvHeads * D, C], ['v_proj', c.numKvHeads * D, C], ['o_proj', C, c.numHeads * D]];
    for (const [n, o, inn] of proj) {
      mat(`${p}.self_attn.${n}.weight`, [o, inn], 0.3);
      if (a.biased.includes(n)) vec(`${p}.self_attn.${n}.bias`, o, 0, 0.5);
    }
    if (a.qkNorm) {
      vec(`${p}.self_attn.q_norm.weight`, D, 1, 0.3);
      vec(`${p}.self_attn.k_norm.weight`, D, 1, 0.3);
    }
    mat(`${p}.mlp.gate_proj.weight`, [I, C]);
    mat(`${p}.mlp.up_proj.weight`, [I, C]);
    mat(`${p}.mlp.down_proj.weight`, [C, I]);
    vec(`${p}.input_layernorm.weight`, C, 1, 0.2);
    vec(`${p}.post_attention_layernorm.weight`, C, 1, 0.2);
  }
  vec('model.norm.weight', C, 1, 0.2);
  if (!c.tieWordEmbeddings) mat('lm_head.weight', [c.vocabSize, C], 0.3);
  return out;
}

function writeCheckpoint(dir: string, a: Arch, tensors: Map<string, { v: Float32Array; shape: number[] }>): void {
  writeFileSync(join(dir, 'config.json'), JSON.stringify(a.json, null, 2));
  const ts = new Map([...tensors].map(([n, t]) => [n, Tensor.from(t.v, t.shape)]));
  try {
    writeSafetensors(join(dir, 'model.safetensors'), ts, { metadata: { format: 'pt' } });
  } finally {
    for (const t of ts.values()) t.dispose();
  }
}

function tokens(a: Arch, B: number, T: number, r: R) {
  const ids = new Int32Array(B * T), targets = new Int32Array(B * T);
  for (let i = 0; i < ids.length; i++) {
    ids[i] = Math.floor(r.next() * a.config.vocabSize);
    targets[i] = r.next() < 0.15 ? -100 : Math.floor(r.next() * a.config.vocabSize);
  }
  return { ids, targets };
}

function logitsOf(model: LlamaModel, ids: Int32Array, B: number, T: number): Float32Array {
  const idsT = Tensor.from(ids, [B, T], { dtype: 'i32' });
  const h = model.hidden(idsT), lg = model.logits(h);
  const out = Float32Array.from(lg.data() as Float32Array);
  for (const t of [idsT, h, lg]) t.dispose();
  return out;
}

for (const a of ARCHS) {
  test(`${a.name}: a transformers-layout checkpoint loads; logits, loss and every gradient match the tfjs reference; KV-cache decode equals the full forward; save/load round-trips`, async (t) => {
    const tf = await tfjs();
    const r = rng();
    const dir = mkdtempSync(join(tmpdir(), 'tunebench-arch-'));
    const dir2 = mkdtempSync(join(tmpdir(), 'tunebench-arch-save-'));
    const B = 2, T = 13;
    const tensors = checkpointTensors(a, r);
    writeCheckpoint(dir, a, tensors);
    const model = loadHfModel(dir, { trainable: true });
    try {
      assert.deepEqual(model.config, a.config, 'config.json read as the architecture');
      assert.deepEqual(new Set(model.parameters().map((p) => p.name)), new Set(tensors.keys()), 'every tensor of the checkpoint is a parameter');
      const { ids, targets } = tokens(a, B, T, r);
      const P = new Map([...tensors].map(([n, x]) => [n, tf.tensor(x.v, x.shape)]));

      // logits
      const ours = logitsOf(model, ids, B, T);
      const ref = tfjsLlamaLogits(tf, a.config, P, ids, B, T).dataSync() as Float32Array;
      const le = relErr(ours, ref);
      t.diagnostic(`logits: max|diff|/max|ref| ${le.toExponential(2)}`);
      assert.ok(le < 1e-4, `logits vs tfjs: ${le} (seed ${r.seed})`);

      // loss and every gradient
      const idsT = Tensor.from(ids, [B, T], { dtype: 'i32' }), tgT = Tensor.from(targets, [B, T], { dtype: 'i32' });
      model.zeroGrad();
      const fw = model.forward({ ids: idsT, targets: tgT });
      const scale = 1 / fw.count;
      model.backward(scale);
      idsT.dispose(); tgT.dispose();
      const names = model.parameters().map((p) => p.name);
      const f = (...xs: TF.Tensor[]) => tfjsLlamaLoss(tf, a.config, new Map(names.map((n, i) => [n, xs[i]])), ids, targets, B, T).mul(scale) as TF.Scalar;
      const { value, grads } = tf.valueAndGrads(f)(names.map((n) => P.get(n)!));
      const refLoss = (await value.data())[0] / scale;
      assert.ok(Math.abs(fw.lossSum - refLoss) / Math.abs(refLoss) < 1e-4, `loss ${fw.lossSum} vs tfjs ${refLoss} (seed ${r.seed})`);
      model.parameters().forEach((p, i) => {
        const e = relErr(p.grad!.toFloat32(), grads[i].dataSync());
        assert.ok(e < 2e-4, `gradient of ${p.name}: relative error ${e.toExponential(2)} (seed ${r.seed})`);
        if (/\.bias$|_norm\.weight$/.test(p.name)) assert.ok((p.grad!.toFloat32() as Float32Array).some((x) => x !== 0), `${p.name} has a gradient`);
      });

      // decode with a KV cache (3 tokens, then one at a time) equals the full forward, row by row
      const idsFull = Tensor.from(ids, [B, T], { dtype: 'i32' });
      const full = model.hidden(idsFull);
      idsFull.dispose();
      const fullV = full.data() as Float32Array, C = a.config.hiddenSize;
      const cache = new KVCache(model.config, B, T);
      const step = (t0: number, t1: number) => {
        const x = new Int32Array(B * (t1 - t0));
        for (let b = 0; b < B; b++) for (let s = t0; s < t1; s++) x[b * (t1 - t0) + s - t0] = ids[b * T + s];
        const xt = Tensor.from(x, [B, t1 - t0], { dtype: 'i32' });
        const h = model.hidden(xt, cache);
        const hv = h.data() as Float32Array;
        for (let b = 0; b < B; b++) {
          for (let s = t0; s < t1; s++) {
            const got = hv.subarray((b * (t1 - t0) + s - t0) * C, (b * (t1 - t0) + s - t0 + 1) * C);
            const want = fullV.subarray((b * T + s) * C, (b * T + s + 1) * C);
            const e = relErr(got, want);
            assert.ok(e < 1e-5, `decode row ${b} position ${s}: ${e} (seed ${r.seed})`);
          }
        }
        xt.dispose(); h.dispose();
      };
      step(0, 3);
      for (let s = 3; s < T; s++) step(s, s + 1);
      cache.dispose(); full.dispose();

      // save (f32) and load back: the same config.json keys, names and logits
      saveHfModel(model, dir2, { dtype: 'f32' });
      const saved = JSON.parse(readFileSync(join(dir2, 'config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(saved.model_type, a.json.model_type);
      assert.deepEqual(saved.architectures, a.json.architectures);
      assert.deepEqual(configFromHf(saved, 'saved'), a.config);
      const header = readSafetensorsHeader(join(dir2, 'model.safetensors'));
      assert.deepEqual(new Set(header.tensors.map((e) => e.name)), new Set(tensors.keys()), 'saved under the architecture\'s own names');
      const back = loadHfModel(dir2, { trainable: false, frozenDtype: 'f32' });
      try {
        assert.deepEqual(logitsOf(back, ids, B, T), ours, 'logits after the round trip (frozen f32: the same kernels)');
      } finally {
        back.dispose();
      }
      // frozen bf16 (the adapter methods' base): biases and norms read as bf16 weights
      const bf = loadHfModel(dir, { trainable: false });
      try {
        assert.ok(bf.parameters().filter((p) => /\.bias$|_norm\.weight$/.test(p.name)).every((p) => p.value.dtype === 'bf16' && p.grad === null));
        // against the reference on the same bf16-rounded values: the bf16 path computes the same function
        const Pbf = new Map(bf.parameters().map((p) => [p.name, tf.tensor(p.value.toFloat32(), [...p.value.shape])]));
        const refBf = tfjsLlamaLogits(tf, a.config, Pbf, ids, B, T).dataSync() as Float32Array;
        const e = relErr(logitsOf(bf, ids, B, T), refBf);
        assert.ok(e < 1e-4, `bf16 logits vs tfjs on the bf16 values: ${e} (seed ${r.seed})`);
        for (const x of Pbf.values()) x.dispose();
      } finally {
        bf.dispose();
      }
      tf.disposeVariables();
      for (const x of P.values()) x.dispose();
    } finally {
      model.dispose();
      rmSync(dir, { recursive: true, force: true });
      rmSync(dir2, { recursive: true, force: true });
    }
  });
}

test('a bias-free Llama checkpoint is unchanged: no new tensors, same config keys', () => {
  const c: LlamaConfig = { vocabSize: 61, hiddenSize: 32, intermediateSize: 48, numLayers: 1, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 64, tieWordEmbeddings: true };
  const m = LlamaModel.init(c);
  try {
    assert.ok(m.parameters().every((p) => !/\.bias$|_norm\.weight$/.test(p.name)), 'no bias or q/k norm');
    assert.equal(m.parameters().length, 2 + 9);
    const json = configToHf(c);
    assert.equal(json.model_type, 'llama');
    assert.equal(json.attention_bias, false);
    assert.deepEqual(configFromHf(json, 'x'), c);
  } finally {
    m.dispose();
  }
});

test('configFromHf: transformers defaults per model_type, and refusals that name the key', () => {
  const qwen2 = ARCHS[0].json, mistral = ARCHS[2].json, qwen3 = ARCHS[1].json;
  // MistralConfig's default window is 4096; an explicit null is full attention
  const { sliding_window: _w, ...noWindow } = mistral;
  assert.equal(configFromHf(noWindow, 'm').slidingWindow, 4096);
  assert.equal(configFromHf({ ...mistral, sliding_window: null }, 'm').slidingWindow, undefined);
  // Qwen3Config's head_dim defaults to 128, independent of hidden / heads
  const { head_dim: _h, ...noHeadDim } = qwen3;
  assert.equal(configFromHf(noHeadDim, 'q').headDim, 128);
  // a Qwen2 window that reaches no layer is harmless
  assert.equal(configFromHf({ ...qwen2, use_sliding_window: true, max_window_layers: 2 }, 'q').slidingWindow, undefined);
  const bad = (json: Record<string, unknown>, re: RegExp) => assert.throws(() => configFromHf(json, '/m/config.json'), (e: Error) => {
    assert.match(e.message, /^\/m\/config\.json: /);
    assert.match(e.message, re);
    return true;
  });
  bad({ ...qwen2, use_sliding_window: true, max_window_layers: 1 }, /use_sliding_window true with max_window_layers 1 < num_hidden_layers 2 is not supported/);
  bad({ ...qwen3, layer_types: ['full_attention', 'sliding_attention'] }, /layer_types with "sliding_attention" layers is not supported/);
  bad({ ...qwen2, model_type: 'gemma2' }, /model_type is "gemma2", supported: "llama" \(LlamaForCausalLM\), "mistral" \(MistralForCausalLM\), "qwen2" \(Qwen2ForCausalLM\), "qwen3" \(Qwen3ForCausalLM\)/);
  bad({ ...mistral, sliding_window: 0 }, /sliding_window must be a positive integer or null, got 0/);
  bad({ ...qwen3, head_dim: 'wide' }, /head_dim must be a positive integer, got "wide"/);
  bad({ ...qwen2, mlp_bias: true }, /mlp_bias true is not supported/);
  // configToHf refuses switches its model_type cannot carry
  assert.throws(() => configToHf({ ...ARCHS[0].config, qkNorm: true }), /modelType 'qwen2' \(Qwen2ForCausalLM\) cannot hold qkNorm/);
  assert.throws(() => configToHf({ ...ARCHS[3].config, oBias: false }), /cannot hold qkvBias true with oBias false/);
  assert.throws(() => configToHf({ ...ARCHS[1].config, slidingWindow: 8 }), /cannot hold slidingWindow 8/);
});

test('a checkpoint missing the architecture\'s tensors is refused by name', () => {
  const r = rng();
  const dir = mkdtempSync(join(tmpdir(), 'tunebench-arch-'));
  try {
    const tensors = checkpointTensors(ARCHS[0], r);
    tensors.delete('model.layers.1.self_attn.k_proj.bias');
    writeCheckpoint(dir, ARCHS[0], tensors);
    assert.throws(() => loadHfModel(dir), /missing tensors: model\.layers\.1\.self_attn\.k_proj\.bias/);
    // the same tensors under a Llama config: the biases are not part of it
    writeCheckpoint(dir, { ...ARCHS[0], json: { ...ARCHS[0].json, model_type: 'llama', architectures: ['LlamaForCausalLM'] } }, checkpointTensors(ARCHS[0], r));
    assert.throws(() => loadHfModel(dir), /unexpected tensors \(not part of LlamaForCausalLM with this config\): .*model\.layers\.0\.self_attn\.q_proj\.bias/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// The sliding-window attention op against its definition, in float64.

interface Dims { B: number; T: number; Hq: number; Hkv: number; D: number }

function windowReference(d: Dims, W: number, seg: Int32Array | null, q: Float32Array, k: Float32Array, v: Float32Array, dout: Float32Array) {
  const { B, T, Hq, Hkv, D } = d, G = Hq / Hkv, scale = 1 / Math.sqrt(D);
  const out = new Float64Array(q.length), lse = new Float64Array(B * Hq * T);
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  const visible = (b: number, t: number, j: number) => j <= t && (W === 0 || t - j < W) && (!seg || seg[b * T + j] === seg[b * T + t]);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / G);
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * Hq + h) * D;
        const s: number[] = [], js: number[] = [];
        for (let j = 0; j <= t; j++) {
          if (!visible(b, t, j)) continue;
          const ko = ((b * T + j) * Hkv + g) * D;
          let dot = 0;
          for (let c = 0; c < D; c++) dot += q[qo + c] * k[ko + c];
          s.push(dot * scale); js.push(j);
        }
        const m = Math.max(...s);
        const p = s.map((x) => Math.exp(x - m)), l = p.reduce((x, y) => x + y, 0);
        lse[(b * Hq + h) * T + t] = m + Math.log(l);
        js.forEach((j, n) => { const vo = ((b * T + j) * Hkv + g) * D; for (let c = 0; c < D; c++) out[qo + c] += (p[n] / l) * v[vo + c]; });
        let delta = 0;
        for (let c = 0; c < D; c++) delta += dout[qo + c] * out[qo + c];
        js.forEach((j, n) => {
          const ko = ((b * T + j) * Hkv + g) * D, pr = p[n] / l;
          let dov = 0;
          for (let c = 0; c < D; c++) dov += dout[qo + c] * v[ko + c];
          const ds = pr * (dov - delta) * scale;
          for (let c = 0; c < D; c++) {
            dq[qo + c] += ds * k[ko + c];
            dk[ko + c] += ds * q[qo + c];
            dv[ko + c] += pr * dout[qo + c];
          }
        });
      }
    }
  }
  return { out, lse, dq, dk, dv };
}

function packedSegments(B: number, T: number, r: R): Int32Array {
  const seg = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let id = 0, left = 1 + Math.floor(r.next() * 40);
    for (let t = 0; t < T; t++) {
      if (left === 0) { id++; left = 1 + Math.floor(r.next() * 40); }
      seg[b * T + t] = id;
      left--;
    }
  }
  return seg;
}

for (const W of [1, 3, 64, 70, 129]) {
  for (const withSeg of [false, true]) {
    test(`attention with sliding window ${W}${withSeg ? ' and packed segments' : ''}: forward and backward match the float64 definition (T = 150, tiles of 64)`, () => {
      const r = rng();
      const d: Dims = { B: 2, T: 150, Hq: 4, Hkv: 2, D: 16 };
      const { B, T, Hq, Hkv, D } = d;
      const qv = randn(B * T * Hq * D, r), kv = randn(B * T * Hkv * D, r), vv = randn(B * T * Hkv * D, r), dov = randn(B * T * Hq * D, r);
      const seg = withSeg ? packedSegments(B, T, r) : null;
      const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
      const dout = Tensor.from(dov, [B, T, Hq, D]);
      const segments = seg ? Tensor.from(seg, [B, T], { dtype: 'i32' }) : undefined;
      const ref = windowReference(d, W, seg, qv, kv, vv, dov);
      const { out, lse } = attentionForward(q, k, v, { window: W, segments });
      const g = attentionBackward(dout, q, k, v, out, lse, { window: W, segments });
      // max |diff| / max |ref|, the reference's scale floored: with a window of
      // 1 a query sees only itself, so dq and dk are 0 up to rounding, measured
      // against the gradients' natural scale, 1 (the inputs are O(1))
      const check = (n: string, got: Tensor, want: Float64Array, tol: number) => {
        const g = got.data() as Float32Array;
        let diff = 0, scale = W === 1 ? 1 : 0.05;
        for (let i = 0; i < g.length; i++) { diff = Math.max(diff, Math.abs(g[i] - want[i])); scale = Math.max(scale, Math.abs(want[i])); }
        const e = diff / scale;
        assert.ok(e < tol, `${n}: ${e.toExponential(2)} (seed ${r.seed})`);
      };
      check('out', out, ref.out, 2e-5);
      check('lse', lse, ref.lse, 2e-5);
      check('dq', g.dq, ref.dq, 3e-5);
      check('dk', g.dk, ref.dk, 3e-5);
      check('dv', g.dv, ref.dv, 3e-5);
      for (const x of [q, k, v, dout, out, lse, g.dq, g.dk, g.dv]) x.dispose();
      segments?.dispose();
    });
  }
}

test('attention window: 0 and windows no shorter than T give plain causal attention, bit for bit; a bad window is refused', () => {
  const r = rng();
  const B = 1, T = 70, Hq = 2, Hkv = 1, D = 8;
  const q = Tensor.from(randn(B * T * Hq * D, r), [B, T, Hq, D]), k = Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]);
  const v = Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]);
  const plain = attentionForward(q, k, v);
  for (const window of [0, T, 1000]) {
    const w = attentionForward(q, k, v, { window });
    assert.deepEqual(w.out.data(), plain.out.data(), `window ${window}`);
    w.out.dispose(); w.lse.dispose();
  }
  const small = attentionForward(q, k, v, { window: 4 });
  assert.notDeepEqual(small.out.data(), plain.out.data(), 'a short window changes the result');
  assert.throws(() => attentionForward(q, k, v, { window: -1 }), /attentionForward: window must be 0 \(no sliding window\) or a positive integer below 2\^30, got -1/);
  assert.throws(() => attentionForward(q, k, v, { window: 2.5 }), /window must be 0/);
  for (const x of [q, k, v, plain.out, plain.lse, small.out, small.lse]) x.dispose();
});

test('attention decode with a window reads only the last W cached keys and equals the forward\'s last row', () => {
  const r = rng();
  const B = 2, T = 40, Hq = 4, Hkv = 2, D = 16, Tmax = 48;
  const qv = randn(B * T * Hq * D, r), kv = randn(B * T * Hkv * D, r), vv = randn(B * T * Hkv * D, r);
  const q = Tensor.from(qv, [B, T, Hq, D]), k = Tensor.from(kv, [B, T, Hkv, D]), v = Tensor.from(vv, [B, T, Hkv, D]);
  for (const W of [1, 7, 33]) {
    const { out, lse } = attentionForward(q, k, v, { window: W });
    const ov = out.data() as Float32Array;
    for (const L of [1, 5, 7, 8, 20, 40]) {
      // cache rows before the window and past L are NaN: neither may be read
      const kc = new Float32Array(B * Tmax * Hkv * D).fill(NaN), vc = new Float32Array(B * Tmax * Hkv * D).fill(NaN);
      for (let b = 0; b < B; b++) {
        for (let j = Math.max(0, L - W); j < L; j++) {
          const src = (b * T + j) * Hkv * D, dst = (b * Tmax + j) * Hkv * D;
          kc.set(kv.subarray(src, src + Hkv * D), dst);
          vc.set(vv.subarray(src, src + Hkv * D), dst);
        }
      }
      const qL = new Float32Array(B * Hq * D);
      for (let b = 0; b < B; b++) qL.set(qv.subarray((b * T + L - 1) * Hq * D, (b * T + L) * Hq * D), b * Hq * D);
      const qt = Tensor.from(qL, [B, 1, Hq, D]), kct = Tensor.from(kc, [B, Tmax, Hkv, D]), vct = Tensor.from(vc, [B, Tmax, Hkv, D]);
      const dec = attentionDecode(qt, kct, vct, L, { window: W });
      const want = new Float32Array(B * Hq * D);
      for (let b = 0; b < B; b++) want.set(ov.subarray((b * T + L - 1) * Hq * D, (b * T + L) * Hq * D), b * Hq * D);
      const e = relErr(dec.data() as Float32Array, want);
      assert.ok(e < 2e-5, `W ${W} L ${L}: ${e} (seed ${r.seed})`);
      for (const x of [qt, kct, vct, dec]) x.dispose();
    }
    out.dispose(); lse.dispose();
  }
  q.dispose(); k.dispose(); v.dispose();
});

test('presets of the published architectures: parameter counts equal the published totals, and the shapes round-trip through config.json', () => {
  // totals of each checkpoint's weights (its model.safetensors index total_size / bytes per bf16 value)
  const published: Record<string, number> = {
    'llama-3.2-1b': 1_235_814_400, 'llama-3.1-8b': 8_030_261_248, 'qwen2.5-0.5b': 494_032_768,
    'qwen2.5-7b': 7_615_616_512, 'qwen3-0.6b': 596_049_920, 'mistral-7b': 7_241_732_096,
  };
  for (const [name, total] of Object.entries(published)) {
    const c = preset(name);
    assert.equal(parameterCount(c), total, name);
    let n = 0;
    for (const s of modelTensorShapes(c).values()) n += s.reduce((a, d) => a * d, 1);
    assert.equal(n, total, `${name}: tensor shapes`);
    assert.deepEqual(configFromHf(JSON.parse(JSON.stringify(configToHf(c))), name), c, `${name}: config.json round trip`);
  }
  assert.deepEqual(modelTensorShapes(preset('qwen3-0.6b')).get('model.layers.0.self_attn.q_proj.weight'), [2048, 1024]);
  assert.deepEqual(modelTensorShapes(preset('qwen3-0.6b')).get('model.layers.27.self_attn.k_norm.weight'), [128]);
  assert.deepEqual(modelTensorShapes(preset('qwen2.5-0.5b')).get('model.layers.0.self_attn.k_proj.bias'), [128]);
  assert.equal(configToHf(preset('mistral-7b')).sliding_window, 4096);
});

test('the published config.json files of Qwen2.5-0.5B, Qwen3-0.6B and Mistral-7B-v0.1 read as the presets', () => {
  // the keys of each model's config.json on the Hugging Face hub (token ids and dtype included: they must be ignored)
  const qwen25: Record<string, unknown> = {
    architectures: ['Qwen2ForCausalLM'], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151643, hidden_act: 'silu',
    hidden_size: 896, initializer_range: 0.02, intermediate_size: 4864, max_position_embeddings: 32768, max_window_layers: 24,
    model_type: 'qwen2', num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 1000000.0,
    sliding_window: 32768, tie_word_embeddings: true, torch_dtype: 'bfloat16', use_cache: true, use_mrope: false, use_sliding_window: false,
    vocab_size: 151936,
  };
  const qwen3: Record<string, unknown> = {
    architectures: ['Qwen3ForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151645,
    head_dim: 128, hidden_act: 'silu', hidden_size: 1024, initializer_range: 0.02, intermediate_size: 3072, max_position_embeddings: 40960,
    max_window_layers: 28, model_type: 'qwen3', num_attention_heads: 16, num_hidden_layers: 28, num_key_value_heads: 8, rms_norm_eps: 1e-6,
    rope_scaling: null, rope_theta: 1000000, sliding_window: null, tie_word_embeddings: true, torch_dtype: 'bfloat16', use_cache: true,
    use_sliding_window: false, vocab_size: 151936,
  };
  const mistral: Record<string, unknown> = {
    architectures: ['MistralForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096, initializer_range: 0.02,
    intermediate_size: 14336, max_position_embeddings: 32768, model_type: 'mistral', num_attention_heads: 32, num_hidden_layers: 32,
    num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0, sliding_window: 4096, tie_word_embeddings: false, torch_dtype: 'bfloat16',
    use_cache: true, vocab_size: 32000,
  };
  assert.deepEqual(configFromHf(qwen25, 'Qwen2.5-0.5B'), preset('qwen2.5-0.5b'));
  assert.deepEqual(configFromHf(qwen3, 'Qwen3-0.6B'), preset('qwen3-0.6b'));
  assert.deepEqual(configFromHf(mistral, 'Mistral-7B-v0.1'), preset('mistral-7b'));
  // the same Qwen2.5 file with a 4096-token window switched on for layers 12..23 is refused by name;
  // its own window (32768, the whole context) would change nothing, and is accepted
  assert.throws(() => configFromHf({ ...qwen25, use_sliding_window: true, max_window_layers: 12, sliding_window: 4096 }, 'x'), /use_sliding_window true with max_window_layers 12 < num_hidden_layers 24/);
  assert.deepEqual(configFromHf({ ...qwen25, use_sliding_window: true, max_window_layers: 12 }, 'x'), preset('qwen2.5-0.5b'));
});
