// GPTQ checkpoints as the QA-LoRA base. The checkpoints are written here by
// a small writer of our own, from the layout's definition (AutoGPTQ /
// GPTQModel: qweight I32 [in·b/32, out] packed along the input dim, qzeros
// I32 [groups, out·b/32] packed along the output dim, scales F16 [groups,
// out], g_idx I32 [in]; v1 "gptq" stores zero − 1, "gptq_v2" the zero), with
// its own safetensors and fp16 encoding: no project code builds the files.
// The loaded weights must equal W[o, i] = s[g(i), o] · (q[i, o] − z[g(i), o])
// bit for bit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { IntNLinear, type LlamaModel, type Tensor, dequantizeIntN, loadHfModel, readSafetensors } from '@tunebench/core';
import { LoraLinear, loraLayers } from '@tunebench/lora';
import { loadGptqModel, loadQaloraMerged, loadQaloraModel, mergeQalora, saveGptqModel, saveQaloraModel } from '../src/index.js';
import { logitsOf, relErr, tempDir, train } from './helpers.js';

// ---------------------------------------------------------------------------
// the independent writer

type Dt = 'F16' | 'F32' | 'I32';
interface Entry { name: string; dtype: Dt; shape: number[]; data: Uint8Array }

/** safetensors: u64 LE header length, JSON header (padded with spaces to 8 bytes), data. */
function writeSafetensorsFile(path: string, entries: Entry[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const e of entries) { header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.data.length] }; off += e.data.length; }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8) json += ' ';
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([head, Buffer.from(json, 'utf8'), ...entries.map((e) => Buffer.from(e.data.buffer, e.data.byteOffset, e.data.length))]));
}

const i32 = (a: Int32Array) => new Uint8Array(a.buffer);
const u16 = (a: Uint16Array) => new Uint8Array(a.buffer);

/** xorshift32, seeded */
function rng(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 4294967296; };
}

/** fp16 bits of k / 1024 for an integer 0 < |k| < 2048 (exact in fp16), 0 for k = 0. */
function half(k: number): number {
  if (k === 0) return 0;
  const a = Math.abs(k), e = Math.floor(Math.log2(a));
  const mant = (a / 2 ** e - 1) * 1024;  // a < 2^11: an integer
  return (k < 0 ? 0x8000 : 0) | ((e - 10 + 15) << 10) | mant;
}
/** the value of fp16 bits (normal numbers only) */
const halfValue = (h: number) => ((h & 0x7fff) === 0 ? 0 : (h & 0x8000 ? -1 : 1) * (1 + (h & 0x3ff) / 1024) * 2 ** (((h >> 10) & 0x1f) - 15));
const bytesOf = (t: Tensor) => { const d = t.data(); return new Uint8Array(d.buffer, d.byteOffset, d.byteLength).slice(); };

/** Packs values (each < 2^b) along one dimension into 32-bit words: words[w][c] for column c. */
function packColumn(vals: (k: number) => number, n: number, b: number, put: (word: number, v: number) => void): void {
  if (b === 3) {
    // 32 values in 3 words: 10 values, one split 2+1 bits, 10 values, one split 1+2 bits, 10 values
    for (let blk = 0; blk < n / 32; blk++) {
      const v = (j: number) => vals(blk * 32 + j), w = blk * 3;
      let a = 0, c = 0, d = 0;
      for (let j = 0; j < 10; j++) a |= v(j) << (3 * j);
      a |= (v(10) & 0x3) << 30;
      c |= (v(10) >> 2) & 0x1;
      for (let j = 0; j < 10; j++) c |= v(11 + j) << (3 * j + 1);
      c |= (v(21) & 0x1) << 31;
      d |= (v(21) >> 1) & 0x3;
      for (let j = 0; j < 10; j++) d |= v(22 + j) << (3 * j + 2);
      put(w, a); put(w + 1, c); put(w + 2, d);
    }
    return;
  }
  const per = 32 / b;
  for (let w = 0; w < n / per; w++) {
    let word = 0;
    for (let j = 0; j < per; j++) word |= vals(w * per + j) << (b * j);
    put(w, word);
  }
}

interface Truth { q: Uint8Array; z: Uint8Array; s: Float64Array; g: Int32Array; out: number; inF: number; groups: number }
interface GptqOpts {
  bits: 2 | 3 | 4 | 8; groupSize: number; sym: boolean; format?: 'gptq' | 'gptq_v2'; descAct?: boolean; permute?: boolean;
  seed?: number; layers?: number; tied?: boolean; noFormatKey?: boolean;
  /** the model's architecture (default llama) */
  arch?: Arch;
  /** llama/qwen3 attention_bias true: fp16 biases on q, k, v and o_proj */
  attentionBias?: boolean;
  /** also write the same model, dequantized, as an ordinary checkpoint here */
  denseDir?: string;
  /** two shards and an index, the tensors dealt alternately (a projection's parts end up in both) */
  sharded?: boolean;
  /** change the file after the fact */
  tamper?: (entries: Entry[], config: Record<string, unknown>) => void;
}

const HIDDEN = 64, INTER = 192, VOCAB = 259, HEADS = 4, KV_HEADS = 2;
/** Architectures as published checkpoints of each family spell them in config.json (tiny sizes):
 * Qwen2 has biases on q, k and v_proj; Qwen3 per-head q/k RMSNorms and a head_dim of its own
 * (here 32, not hidden / heads = 16); Mistral a sliding window (here 8 positions). */
type Arch = 'llama' | 'qwen2' | 'qwen3' | 'mistral';
const ARCH_KEYS: Record<Arch, Record<string, unknown>> = {
  llama: { architectures: ['LlamaForCausalLM'], model_type: 'llama' },
  qwen2: { architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', use_sliding_window: false, sliding_window: 131072, max_window_layers: 28, rms_norm_eps: 1e-6, rope_theta: 1000000 },
  qwen3: { architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', head_dim: 32, attention_bias: false, use_sliding_window: false, sliding_window: null, max_window_layers: 28, rms_norm_eps: 1e-6, rope_theta: 1000000 },
  mistral: { architectures: ['MistralForCausalLM'], model_type: 'mistral', sliding_window: 8 },
};
const headDimOf = (arch: Arch) => (arch === 'qwen3' ? 32 : HIDDEN / HEADS);
function shapesOf(arch: Arch): Record<string, [number, number]> {
  const q = HEADS * headDimOf(arch), kv = KV_HEADS * headDimOf(arch);
  return {
    'self_attn.q_proj': [q, HIDDEN], 'self_attn.k_proj': [kv, HIDDEN], 'self_attn.v_proj': [kv, HIDDEN], 'self_attn.o_proj': [HIDDEN, q],
    'mlp.gate_proj': [INTER, HIDDEN], 'mlp.up_proj': [INTER, HIDDEN], 'mlp.down_proj': [HIDDEN, INTER],
  };
}
const GPTQ_PART = /\.(qweight|qzeros|scales|g_idx)$/;

/** A tiny LlamaForCausalLM (or Qwen2, Qwen3, Mistral: o.arch) as a GPTQ checkpoint; returns the values
 * each projection's weight is made of. With o.denseDir, the same model is also written there as an
 * ordinary (unquantized) checkpoint: W = s·(q − z) as F32, every other tensor as in the GPTQ file. */
function writeGptq(dir: string, o: GptqOpts): Map<string, Truth> {
  const r = rng(o.seed ?? 1), b = o.bits, maxq = (1 << b) - 1, layers = o.layers ?? 1, format = o.format ?? 'gptq', arch = o.arch ?? 'llama';
  const entries: Entry[] = [], dense: Entry[] = [];
  const truth = new Map<string, Truth>();
  const halfs = (n: number, k: () => number) => { const a = new Uint16Array(n); for (let i = 0; i < n; i++) a[i] = half(k()); return a; };
  entries.push({ name: 'model.embed_tokens.weight', dtype: 'F16', shape: [VOCAB, HIDDEN], data: u16(halfs(VOCAB * HIDDEN, () => Math.round((r() - 0.5) * 600))) });
  for (let l = 0; l < layers; l++) {
    for (const norm of ['input_layernorm', 'post_attention_layernorm']) {
      entries.push({ name: `model.layers.${l}.${norm}.weight`, dtype: 'F16', shape: [HIDDEN], data: u16(halfs(HIDDEN, () => 1024 + Math.floor(r() * 100))) });
    }
    for (const [mod, [out, inF]] of Object.entries(shapesOf(arch))) {
      const name = `model.layers.${l}.${mod}`, G = o.groupSize === -1 ? inF : o.groupSize, groups = Math.ceil(inF / G);
      const q = new Uint8Array(inF * out), z = new Uint8Array(groups * out), sBits = new Uint16Array(groups * out), s = new Float64Array(groups * out);
      for (let k = 0; k < q.length; k++) q[k] = Math.floor(r() * (maxq + 1));
      for (let k = 0; k < z.length; k++) z[k] = o.sym ? 1 << (b - 1) : Math.floor(r() * (maxq + 1));
      // scales in [2^-8, 2^-6): fp16 exponent 7 or 8, any mantissa
      for (let k = 0; k < sBits.length; k++) { sBits[k] = ((7 + Math.floor(r() * 2)) << 10) | Math.floor(r() * 1024); s[k] = halfValue(sBits[k]); }
      // act-order: columns of each group scattered by a permutation
      const g = new Int32Array(inF);
      const perm = Array.from({ length: inF }, (_, i) => i);
      if (o.permute) for (let i = inF - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [perm[i], perm[j]] = [perm[j], perm[i]]; }
      for (let i = 0; i < inF; i++) g[perm[i]] = Math.floor(i / G);
      const qweight = new Int32Array((inF * b) / 32 * out);
      for (let c = 0; c < out; c++) packColumn((i) => q[i * out + c], inF, b, (w, v) => { qweight[w * out + c] = v; });
      const zw = (out * b) / 32, qzeros = new Int32Array(groups * zw);
      for (let gg = 0; gg < groups; gg++) {
        packColumn((c) => (format === 'gptq' ? (z[gg * out + c] - 1) & maxq : z[gg * out + c]), out, b, (w, v) => { qzeros[gg * zw + w] = v; });
      }
      entries.push({ name: `${name}.qweight`, dtype: 'I32', shape: [(inF * b) / 32, out], data: i32(qweight) });
      entries.push({ name: `${name}.qzeros`, dtype: 'I32', shape: [groups, zw], data: i32(qzeros) });
      entries.push({ name: `${name}.scales`, dtype: 'F16', shape: [groups, out], data: u16(sBits) });
      entries.push({ name: `${name}.g_idx`, dtype: 'I32', shape: [inF], data: i32(g) });
      truth.set(name, { q, z, s, g, out, inF, groups });
      if (o.denseDir) {
        const w = new Float32Array(out * inF);
        for (let oo = 0; oo < out; oo++) for (let i = 0; i < inF; i++) w[oo * inF + i] = s[g[i] * out + oo] * (q[i * out + oo] - z[g[i] * out + oo]);
        dense.push({ name: `${name}.weight`, dtype: 'F32', shape: [out, inF], data: new Uint8Array(w.buffer) });
      }
      // Qwen2: real fp16 biases on q, k and v, stored next to the projection's GPTQ parts
      if ((arch === 'qwen2' && /\.(q|k|v)_proj$/.test(mod)) || (o.attentionBias && /^self_attn\./.test(mod))) {
        entries.push({ name: `${name}.bias`, dtype: 'F16', shape: [out], data: u16(halfs(out, () => Math.round((r() - 0.5) * 1200))) });
      }
    }
    // Qwen3: per-head RMSNorm weights of q and k, [head_dim]
    if (arch === 'qwen3') {
      for (const n of ['q_norm', 'k_norm']) {
        entries.push({ name: `model.layers.${l}.self_attn.${n}.weight`, dtype: 'F16', shape: [headDimOf(arch)], data: u16(halfs(headDimOf(arch), () => 700 + Math.floor(r() * 700))) });
      }
    }
  }
  entries.push({ name: 'model.norm.weight', dtype: 'F16', shape: [HIDDEN], data: u16(halfs(HIDDEN, () => 1024)) });
  if (o.tied === false) entries.push({ name: 'lm_head.weight', dtype: 'F16', shape: [VOCAB, HIDDEN], data: u16(halfs(VOCAB * HIDDEN, () => Math.round((r() - 0.5) * 200))) });
  const qc: Record<string, unknown> = { quant_method: 'gptq', bits: b, group_size: o.groupSize, desc_act: o.descAct ?? false, sym: o.sym, damp_percent: 0.01, true_sequential: true };
  if (!o.noFormatKey) qc.checkpoint_format = format;
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: HIDDEN, intermediate_size: INTER, num_hidden_layers: layers,
    num_attention_heads: HEADS, num_key_value_heads: KV_HEADS, vocab_size: VOCAB, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 256,
    tie_word_embeddings: o.tied ?? true, hidden_act: 'silu', torch_dtype: 'float16', ...ARCH_KEYS[arch], quantization_config: qc,
  };
  if (o.attentionBias) config.attention_bias = true;
  o.tamper?.(entries, config);
  if (o.denseDir) {
    mkdirSync(o.denseDir, { recursive: true });
    writeSafetensorsFile(join(o.denseDir, 'model.safetensors'), [...entries.filter((e) => !GPTQ_PART.test(e.name)), ...dense]);
    const { quantization_config: _q, ...plain } = config;
    writeFileSync(join(o.denseDir, 'config.json'), JSON.stringify({ ...plain, torch_dtype: 'float32' }, null, 2));
  }
  mkdirSync(dir, { recursive: true });
  if (o.sharded) {
    const names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'], map: Record<string, string> = {};
    names.forEach((f, k) => {
      const mine = entries.filter((_, i) => i % 2 === k);
      for (const e of mine) map[e.name] = f;
      writeSafetensorsFile(join(dir, f), mine);
    });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: map }));
  } else {
    writeSafetensorsFile(join(dir, 'model.safetensors'), entries);
  }
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return truth;
}

/** How many weights of the model's projections differ from the definition (bit for bit). */
function mismatches(model: LlamaModel, truth: Map<string, Truth>): { bad: number; checked: number; first: string } {
  let bad = 0, checked = 0, first = '';
  for (const [name, l] of model.linears()) {
    const base = l instanceof LoraLinear ? l.base : l;
    assert.ok(base instanceof IntNLinear, `${name} is INT-N`);
    const t = truth.get(name)!;
    const W = dequantizeIntN(base.quantized);
    try {
      const w = W.data() as Float32Array;
      for (let o = 0; o < t.out; o++) {
        for (let i = 0; i < t.inF; i++) {
          const g = t.g[i], want = t.s[g * t.out + o] * (t.q[i * t.out + o] - t.z[g * t.out + o]);
          checked++;
          if (w[o * t.inF + i] !== want || Math.fround(want) !== want) { if (!bad) first = `${name}[${o}, ${i}]: ${w[o * t.inF + i]} vs ${want}`; bad++; }
        }
      }
    } finally {
      W.dispose();
    }
  }
  return { bad, checked, first };
}

function withDir<T>(fn: (dir: string) => T): T {
  const dir = tempDir();
  try { return fn(dir); } finally { rmSync(dir, { recursive: true, force: true }); }
}

// ---------------------------------------------------------------------------

for (const bits of [2, 3, 4, 8] as const) {
  test(`GPTQ ${bits}-bit loads bit-exactly: group sizes 32, 64, -1; sym and asym; v1 and v2 zero points`, (t) => {
    let cases = 0;
    for (const groupSize of [32, 64, -1]) {
      for (const sym of [true, false]) {
        for (const format of ['gptq', 'gptq_v2'] as const) {
          withDir((dir) => {
            const truth = writeGptq(dir, { bits, groupSize, sym, format, seed: bits * 100 + groupSize + (sym ? 7 : 0) });
            const g = loadGptqModel(dir);
            try {
              assert.equal(g.spec.bits, bits);
              assert.equal(g.spec.format, format);
              assert.equal(g.groupSize, groupSize === -1 ? 64 : groupSize, 'INT-N group width');
              const m = mismatches(g.model, truth);
              assert.equal(m.checked, [...truth.values()].reduce((a, x) => a + x.out * x.inF, 0));
              assert.equal(m.bad, 0, `g${groupSize} sym ${sym} ${format}: ${m.bad} of ${m.checked} weights differ from the definition; first ${m.first}`);
              // the embeddings (fp16 in the file) load exactly, as f32
              const emb = g.model.parameters().find((p) => p.name === 'model.embed_tokens.weight')!.value;
              assert.equal(emb.dtype, 'f32');
              const st = readFileSync(join(dir, 'model.safetensors'));
              const hl = Number(st.readBigUInt64LE(0)), hdr = JSON.parse(st.subarray(8, 8 + hl).toString('utf8'));
              const [b0] = hdr['model.embed_tokens.weight'].data_offsets, ev = emb.data() as Float32Array;
              for (let k = 0; k < 64; k++) assert.equal(ev[k], halfValue(st.readUInt16LE(8 + hl + b0 + 2 * k)), `embedding ${k}`);
            } finally {
              g.model.dispose();
            }
          });
          cases++;
        }
      }
    }
    t.diagnostic(`${cases} checkpoints of ${bits}-bit codes: every weight equals s·(q − z)`);
  });
}

test('AutoGPTQ\'s older layout: quantize_config.json (no checkpoint_format: v1 zero points), weights named after the model', () => withDir((dir) => {
  const truth = writeGptq(dir, { bits: 4, groupSize: 32, sym: false, noFormatKey: true, seed: 5 });
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const { quant_method: _m, ...qc } = config.quantization_config;
  delete config.quantization_config;
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(join(dir, 'quantize_config.json'), JSON.stringify(qc));
  renameSync(join(dir, 'model.safetensors'), join(dir, 'gptq_model-4bit-32g.safetensors'));
  const g = loadGptqModel(dir);
  try {
    assert.equal(g.spec.format, 'gptq');
    assert.equal(mismatches(g.model, truth).bad, 0);
  } finally {
    g.model.dispose();
  }
}));

test('a sharded checkpoint (index.json; the parts of one projection in different shards) loads exactly', () => withDir((dir) => {
  const truth = writeGptq(dir, { bits: 3, groupSize: 64, sym: false, format: 'gptq_v2', sharded: true, layers: 2, tied: false, seed: 8 });
  const g = loadGptqModel(dir);
  try {
    assert.equal(g.files.length, 2);
    assert.equal(mismatches(g.model, truth).bad, 0);
  } finally {
    g.model.dispose();
  }
}));

test('desc_act: a g_idx in order (static groups) loads exactly; an act-order g_idx (scattered groups) is refused by name', () => {
  withDir((dir) => {
    const truth = writeGptq(dir, { bits: 4, groupSize: 32, sym: false, descAct: true, seed: 11 });
    const g = loadGptqModel(dir);
    try {
      assert.equal(g.spec.descAct, true);
      assert.equal(mismatches(g.model, truth).bad, 0);
    } finally {
      g.model.dispose();
    }
  });
  withDir((dir) => {
    writeGptq(dir, { bits: 4, groupSize: 32, sym: false, descAct: true, permute: true, seed: 12 });
    assert.throws(() => loadGptqModel(dir), /model\.layers\.0\.self_attn\.q_proj\.g_idx puts input column \d+ in group \d+.*act-order checkpoint \(desc_act true\).*desc_act=false/);
    assert.throws(() => loadQaloraModel(dir, { bits: 4 }), /g_idx puts input column/);
  });
});

test('corrupt or inconsistent checkpoints are refused, naming the tensor or key', () => {
  const cases: [string, GptqOpts['tamper'], RegExp][] = [
    ['qweight rows', (e) => { const x = e.find((v) => v.name === 'model.layers.0.mlp.up_proj.qweight')!; x.shape = [x.shape[0] / 2, x.shape[1] * 2]; },
      /model\.layers\.0\.mlp\.up_proj\.qweight has shape \[4, 384\]; 4-bit 64 -> 192 with group_size 32 needs \[8, 192\]/],
    ['scales dtype', (e) => { const x = e.find((v) => v.name === 'model.layers.0.self_attn.k_proj.scales')!; x.dtype = 'I32'; x.shape = [x.shape[0], x.shape[1] / 2]; },
      /model\.layers\.0\.self_attn\.k_proj\.scales has dtype I32, expected F16/],
    ['qzeros missing', (e) => { e.splice(e.findIndex((v) => v.name === 'model.layers.0.self_attn.o_proj.qzeros'), 1); }, /model\.layers\.0\.self_attn\.o_proj\.qzeros is missing/],
    ['g_idx out of range', (e) => { const x = e.find((v) => v.name === 'model.layers.0.mlp.down_proj.g_idx')!; new Int32Array(x.data.buffer, x.data.byteOffset, 192)[5] = 9; },
      /model\.layers\.0\.mlp\.down_proj\.g_idx\[5\] is 9, outside the 6 group\(s\)/],
    ['bits', (_e, c) => { (c.quantization_config as Record<string, unknown>).bits = 5; }, /quantization_config: bits must be one of 2, 3, 4, 8, got 5/],
    ['format', (_e, c) => { (c.quantization_config as Record<string, unknown>).checkpoint_format = 'marlin'; }, /checkpoint_format "marlin" is not supported/],
    ['group size', (_e, c) => { (c.quantization_config as Record<string, unknown>).group_size = 40; }, /group_size 40 with 64 input features is not a whole number of INT-N groups/],
    ['bias', (e) => { e.push({ name: 'model.layers.0.self_attn.q_proj.bias', dtype: 'F32', shape: [64], data: new Uint8Array(Float32Array.from({ length: 64 }, (_, i) => (i === 3 ? 0.5 : 0)).buffer) }); },
      /model\.layers\.0\.self_attn\.q_proj\.bias\[3\] is 0\.5/],
    ['stray tensor', (e) => { e.push({ name: 'model.layers.0.self_attn.q_proj.weight_extra', dtype: 'F32', shape: [1], data: new Uint8Array(4) }); },
      /unexpected tensors .*model\.layers\.0\.self_attn\.q_proj\.weight_extra/],
  ];
  for (const [what, tamper, re] of cases) {
    withDir((dir) => {
      writeGptq(dir, { bits: 4, groupSize: 32, sym: false, seed: 3, tamper });
      assert.throws(() => loadGptqModel(dir), re, what);
    });
  }
  // an all-zero bias (some exporters write one) is accepted
  withDir((dir) => {
    writeGptq(dir, { bits: 4, groupSize: 32, sym: true, seed: 3, tamper: (e) => { e.push({ name: 'model.layers.0.self_attn.q_proj.bias', dtype: 'F16', shape: [64], data: new Uint8Array(128) }); } });
    loadGptqModel(dir).model.dispose();
    // the dense loader names what the directory is instead of listing missing weights
    assert.throws(() => loadHfModel(dir), /quantization_config\.quant_method "gptq": a GPTQ checkpoint .* loads as a QA-LoRA INT-N base/);
  });
});

function intnOf(model: LlamaModel): Map<string, IntNLinear> {
  const m = new Map<string, IntNLinear>();
  for (const [n, l] of model.linears()) { const b = l instanceof LoraLinear ? l.base : l; assert.ok(b instanceof IntNLinear); m.set(n, b); }
  return m;
}

for (const sym of [true, false]) test(`QA-LoRA on a GPTQ base (4-bit g32, sym ${sym}): its own codes, training lowers the loss, the merge computes what the trained model did; written back as GPTQ`, (t) => {
  const dir = tempDir(), out = tempDir(), exact = tempDir();
  try {
    const truth = writeGptq(dir, { bits: 4, groupSize: 32, sym, seed: 21, layers: 2, tied: false });
    // bits must match the checkpoint's (a different width would mean requantizing)
    assert.throws(() => loadQaloraModel(dir, { bits: 8 }), /GPTQ checkpoint of 4-bit codes \(quantization_config\.bits 4\); INT8 was asked for.*qalora4/);
    // a different group width asked for: the checkpoint's is used, and said
    const other = loadQaloraModel(dir, { bits: 4, groupSize: 16, r: 2, alpha: 4 });
    try {
      assert.equal(other.result.groupSize, 32);
      assert.ok(other.result.checkpoint!.notes.some((n) => /groupSize 16 was asked for.*pool over 32/.test(n)), other.result.checkpoint!.notes.join(' | '));
    } finally {
      other.model.dispose();
    }
    // the bench's default: quantizer 'gptq' without calibration rows; the codes come from the file
    const { model, result } = loadQaloraModel(dir, { bits: 4, groupSize: 32, r: 4, alpha: 8 });
    try {
      assert.equal(result.checkpoint!.kind, 'gptq');
      assert.equal(result.targets.length, 14);
      assert.equal(mismatches(model, truth).bad, 0, 'the base is the checkpoint, exactly');
      const before = logitsOf(model);
      const losses = train(model, 6, 1e-2);
      t.diagnostic(`losses ${losses.map((l) => l.toFixed(4)).join(', ')}`);
      assert.ok(losses[5] < losses[0] - 1e-3, `the loss decreases: ${losses.join(', ')}`);
      const trained = logitsOf(model);
      const base = intnOf(model);
      const scalesBefore = new Map([...base].map(([n, l]) => [n, Float32Array.from(l.quantized.scales.data() as Float32Array)]));
      mergeQalora(model);
      assert.equal(loraLayers(model).length, 0);
      const d = relErr(logitsOf(model), trained);
      t.diagnostic(`merged vs trained logits: max|diff|/max|ref| = ${d.toExponential(2)}`);
      assert.ok(d < 1e-4, `merged vs trained ${d}`);

      // GPTQ's integer zero points cannot hold the merged offsets: refused unless rounding is asked for
      assert.throws(() => saveGptqModel(model, out), /groups have an offset that is not −scale · \(an integer zero point in 0\.\.15\).*zeroPoints: 'round'/);
      const rep = saveGptqModel(model, out, { zeroPoints: 'round', format: 'gptq_v2' });
      assert.equal(rep.exact, false);
      assert.ok(rep.roundedGroups > 0 && rep.roundedGroups <= rep.groups);
      const saved = JSON.parse(readFileSync(join(out, 'gptq_export.json'), 'utf8'));
      assert.equal(saved.maxAbsWeightError, rep.maxAbsWeightError, 'the error is recorded with the files');
      const back = loadGptqModel(out);
      try {
        assert.equal(back.spec.format, 'gptq_v2');
        // measured independently: the reloaded weights against the merged model's
        let maxErr = 0, bound = 0;
        const mine = intnOf(model);
        for (const [n, l] of intnOf(back.model)) {
          const a = dequantizeIntN(l.quantized), b = dequantizeIntN(mine.get(n)!.quantized);
          const av = a.data() as Float32Array, bv = b.data() as Float32Array;
          for (let k = 0; k < av.length; k++) maxErr = Math.max(maxErr, Math.abs(av[k] - bv[k]));
          for (const s of scalesBefore.get(n)!) bound = Math.max(bound, s / 2);
          a.dispose(); b.dispose();
        }
        t.diagnostic(`sym ${sym}: GPTQ write-back of the merged model: ${rep.roundedGroups} of ${rep.groups} groups rounded (${rep.clampedGroups} clamped), ` +
          `max |weight error| ${maxErr.toExponential(3)} (reported ${rep.maxAbsWeightError.toExponential(3)}; largest scale/2 ${bound.toExponential(3)})`);
        assert.ok(maxErr > 0, 'rounded zero points move weights');
        assert.ok(Math.abs(maxErr - rep.maxAbsWeightError) <= 1e-7 * Math.max(1, maxErr), `measured ${maxErr} vs reported ${rep.maxAbsWeightError}`);
        if (rep.clampedGroups === 0) assert.ok(maxErr <= bound + 1e-6, `within half a scale: ${maxErr} vs ${bound}`);
        const drift = relErr(logitsOf(back.model), trained), moved = relErr(trained, before);
        t.diagnostic(`logits, max|diff|/max|ref|: rounded GPTQ file vs trained model ${drift.toExponential(2)}; trained vs the base before training ${moved.toExponential(2)}`);
      } finally {
        back.model.dispose();
      }
      // the project's INT-N file stays exact
      saveQaloraModel(model, exact);
      const ex = loadQaloraMerged(exact);
      try {
        assert.deepEqual(logitsOf(ex), logitsOf(model));
      } finally {
        ex.dispose();
      }
    } finally {
      model.dispose();
    }
  } finally {
    for (const d of [dir, out, exact]) rmSync(d, { recursive: true, force: true });
  }
});

test('a GPTQ base written back without a merge is exact: the same qweight, qzeros, scales and g_idx', (t) => {
  let n = 0;
  for (const [bits, groupSize, sym, format] of [[3, -1, false, 'gptq'], [4, 64, true, 'gptq'], [2, 32, false, 'gptq_v2'], [8, 32, false, 'gptq']] as const) {
    const src = tempDir(), dst = tempDir();
    try {
      writeGptq(src, { bits, groupSize, sym, format, seed: 40 + bits });
      const g = loadGptqModel(src);
      try {
        const rep = saveGptqModel(g.model, dst, { format, groupSize });
        assert.equal(rep.exact, true);
        assert.equal(rep.maxAbsWeightError, 0);
        const cfg = JSON.parse(readFileSync(join(dst, 'config.json'), 'utf8'));
        assert.deepEqual([cfg.quantization_config.quant_method, cfg.quantization_config.bits, cfg.quantization_config.group_size, cfg.quantization_config.sym, cfg.quantization_config.checkpoint_format],
          ['gptq', bits, groupSize, sym, format]);
      } finally {
        g.model.dispose();
      }
      const a = readSafetensors(join(src, 'model.safetensors')).tensors, b = readSafetensors(join(dst, 'model.safetensors')).tensors;
      try {
        for (const [name, ta] of a) {
          if (!/\.(qweight|qzeros|scales|g_idx)$/.test(name)) continue;
          const tb = b.get(name);
          assert.ok(tb, `${name} written`);
          assert.equal(tb.dtype, ta.dtype, `${name} dtype`);
          assert.deepEqual(tb.shape, ta.shape, `${name} shape`);
          assert.deepEqual(bytesOf(tb), bytesOf(ta), `${bits}-bit g${groupSize} ${format}: ${name} byte for byte`);
          n++;
        }
      } finally {
        for (const x of [...a.values(), ...b.values()]) x.dispose();
      }
    } finally {
      rmSync(src, { recursive: true, force: true });
      rmSync(dst, { recursive: true, force: true });
    }
  }
  t.diagnostic(`${n} GPTQ tensors written back byte for byte`);
});

// ---------------------------------------------------------------------------
// the architectures beyond Llama as GPTQ checkpoints

/** The architecture's own tensors of a model (projection biases, q/k norms), f32 copies by name. */
function extrasOf(model: LlamaModel): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>();
  for (const p of model.parameters()) {
    if (!/\.(q|k|v|o)_proj\.bias$|\.(q|k)_norm\.weight$/.test(p.name)) continue;
    assert.ok(!p.quantized && p.grad === null, `${p.name}: frozen, not quantized`);
    m.set(p.name, p.value.toFloat32());
  }
  return m;
}

/** The fp16 values of a tensor of a single-file checkpoint, decoded here (not by the project's reader). */
function fileHalfs(dir: string, name: string): Float32Array {
  const st = readFileSync(join(dir, 'model.safetensors'));
  const hl = Number(st.readBigUInt64LE(0)), e = JSON.parse(st.subarray(8, 8 + hl).toString('utf8'))[name];
  assert.ok(e && e.dtype === 'F16', `${name} is an F16 tensor of the file`);
  const [b0, b1] = e.data_offsets as [number, number];
  return Float32Array.from({ length: (b1 - b0) / 2 }, (_, k) => halfValue(st.readUInt16LE(8 + hl + b0 + 2 * k)));
}

/** the architecture's own tensors per layer */
const EXTRAS: Record<Arch, number> = { llama: 0, qwen2: 3, qwen3: 2, mistral: 0 };

const ARCH_CASES: [Arch, boolean, string][] = [
  ['qwen2', false, 'fp16 q/k/v biases'], ['qwen3', false, 'q/k norms, head_dim 32 ≠ hidden/heads'], ['mistral', false, 'sliding window 8'],
  ['qwen3', true, 'attention_bias: q/k/v/o biases beside the q/k norms'], ['llama', true, 'attention_bias: q/k/v/o biases'],
];
for (const [arch, attentionBias, what] of ARCH_CASES) {
  test(`a ${arch} GPTQ checkpoint loads exactly (${what}); its logits equal the dequantized model's loaded densely; written back unchanged`, (t) => {
    const dir = tempDir(), dense = tempDir(), out = tempDir();
    try {
      const truth = writeGptq(dir, { arch, attentionBias, bits: 4, groupSize: 32, sym: false, seed: 60, layers: 2, tied: arch !== 'qwen3', denseDir: dense });
      const g = loadGptqModel(dir);
      const ref = loadHfModel(dense, { trainable: false, frozenDtype: 'f32' });
      try {
        assert.deepEqual(g.model.config, ref.config, 'the config is read as the dense loader reads it');
        assert.equal(g.model.config.modelType ?? 'llama', arch);
        if (arch === 'qwen3') assert.equal(g.model.config.headDim, 32);
        if (arch === 'mistral') assert.equal(g.model.config.slidingWindow, 8);
        const m = mismatches(g.model, truth);
        assert.equal(m.bad, 0, `${m.bad} of ${m.checked} weights differ from the definition; first ${m.first}`);
        // biases and norms: the file's fp16 values, as the block's frozen parameters
        const extras = extrasOf(g.model);
        assert.equal(extras.size, 2 * (EXTRAS[arch] + (attentionBias ? 4 : 0)));
        for (const [n, v] of extras) assert.deepEqual(v, fileHalfs(dir, n), `${n}: the file's values`);
        const got = logitsOf(g.model), want = logitsOf(ref), d = relErr(got, want);
        t.diagnostic(`${arch}: GPTQ-loaded vs dense-loaded logits, max|diff|/max|ref| = ${d.toExponential(2)}`);
        assert.ok(d < 1e-5, `${arch}: logits ${d}`);
        // the biases and norms matter at this size (a loader that dropped them could not pass the check above)
        if (extras.size) {
          const p = g.model.parameters().find((q) => extras.has(q.name))!;
          const v = p.value.data() as Float32Array, saved = Float32Array.from(v);
          v.fill(p.name.endsWith('.bias') ? 0 : 1);
          const d0 = relErr(logitsOf(g.model), want);
          v.set(saved);
          assert.ok(d0 > 100 * d, `without ${p.name} the logits move (${d0}) far beyond the tolerance`);
        }
        // written back without a merge: the same GPTQ tensors byte for byte, the biases and norms under their names, the same logits
        const rep = saveGptqModel(g.model, out, { groupSize: 32 });
        assert.equal(rep.exact, true);
        const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
        assert.deepEqual([cfg.model_type, cfg.architectures[0]], [arch, (ARCH_KEYS[arch].architectures as string[])[0]]);
        assert.equal(cfg.attention_bias ?? false, attentionBias, 'attention_bias as read');
        if (arch === 'qwen3') assert.equal(cfg.head_dim, 32);
        if (arch === 'mistral') assert.equal(cfg.sliding_window, 8);
        const a = readSafetensors(join(dir, 'model.safetensors')).tensors, b = readSafetensors(join(out, 'model.safetensors')).tensors;
        try {
          for (const [name, ta] of a) {
            const tb = b.get(name);
            assert.ok(tb, `${name} written`);
            assert.deepEqual(tb.shape, ta.shape, `${name} shape`);
            if (GPTQ_PART.test(name)) assert.deepEqual(bytesOf(tb), bytesOf(ta), `${name} byte for byte`);
            else assert.deepEqual(tb.toFloat32(), ta.toFloat32(), `${name} values`);
          }
          assert.equal(b.size, a.size, 'nothing more written');
        } finally {
          for (const x of [...a.values(), ...b.values()]) x.dispose();
        }
        const back = loadGptqModel(out);
        try {
          assert.deepEqual(back.model.config, g.model.config);
          assert.deepEqual(logitsOf(back.model), got, 'the written checkpoint computes what the loaded one did');
        } finally {
          back.model.dispose();
        }
      } finally {
        g.model.dispose();
        ref.dispose();
      }
    } finally {
      for (const x of [dir, dense, out]) rmSync(x, { recursive: true, force: true });
    }
  });
}

for (const arch of ['qwen2', 'qwen3'] as const) {
  test(`QA-LoRA on a ${arch} GPTQ base: trains (the loss decreases), the ${arch === 'qwen2' ? 'biases' : 'q/k norms'} stay as loaded, merges, and is written back as a ${arch} GPTQ checkpoint`, (t) => {
    const dir = tempDir(), out = tempDir();
    try {
      const truth = writeGptq(dir, { arch, bits: 4, groupSize: 32, sym: true, seed: 70, layers: 2, tied: false });
      const { model, result } = loadQaloraModel(dir, { bits: 4, groupSize: 32, r: 4, alpha: 8 });
      try {
        assert.equal(result.checkpoint!.kind, 'gptq');
        assert.equal(result.targets.length, 14);
        assert.equal(mismatches(model, truth).bad, 0, 'the base is the checkpoint, exactly');
        const extras = extrasOf(model);
        assert.equal(extras.size, 2 * EXTRAS[arch]);
        for (const [n, v] of extras) assert.deepEqual(v, fileHalfs(dir, n), `${n}: the file's values`);
        const losses = train(model, 6, 1e-2);
        t.diagnostic(`${arch} losses ${losses.map((l) => l.toFixed(4)).join(', ')}`);
        assert.ok(losses[5] < losses[0] - 1e-3, `the loss decreases: ${losses.join(', ')}`);
        assert.deepEqual(extrasOf(model), extras, 'training leaves the biases and norms as loaded');
        const trained = logitsOf(model);
        mergeQalora(model);
        assert.equal(loraLayers(model).length, 0);
        const d = relErr(logitsOf(model), trained);
        assert.ok(d < 1e-4, `merged vs trained ${d}`);
        assert.deepEqual(extrasOf(model), extras, 'the merge leaves them too');
        const rep = saveGptqModel(model, out, { zeroPoints: 'round' });
        const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
        assert.equal(cfg.model_type, arch);
        assert.equal(cfg.quantization_config.quant_method, 'gptq');
        // the same layout: each bias next to its projection's GPTQ parts, the norms under their names
        const st = readFileSync(join(out, 'model.safetensors'));
        const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString('utf8')) as Record<string, { shape: number[] }>;
        for (const n of extras.keys()) {
          assert.deepEqual(header[n]?.shape, [extras.get(n)!.length], `${n} written, [${extras.get(n)!.length}]`);
          if (!n.endsWith('.bias')) continue;
          for (const p of ['qweight', 'qzeros', 'scales', 'g_idx']) assert.ok(header[n.replace(/bias$/, p)], `${n.replace(/bias$/, p)} beside it`);
          assert.equal(header[n.replace(/bias$/, 'weight')], undefined, 'the projection itself stays quantized');
        }
        const back = loadGptqModel(out);
        try {
          assert.deepEqual(back.model.config, model.config);
          assert.deepEqual(extrasOf(back.model), extras, 'the biases and norms read back as they were');
          // the weights: rounded zero points move them by what the export reports, no more
          let maxErr = 0;
          const mine = intnOf(model);
          for (const [n, l] of intnOf(back.model)) {
            const a = dequantizeIntN(l.quantized), b = dequantizeIntN(mine.get(n)!.quantized);
            const av = a.data() as Float32Array, bv = b.data() as Float32Array;
            for (let k = 0; k < av.length; k++) maxErr = Math.max(maxErr, Math.abs(av[k] - bv[k]));
            a.dispose(); b.dispose();
          }
          assert.ok(Math.abs(maxErr - rep.maxAbsWeightError) <= 1e-7 * Math.max(1, maxErr), `measured ${maxErr} vs reported ${rep.maxAbsWeightError}`);
          t.diagnostic(`${arch}: written back with ${rep.roundedGroups} of ${rep.groups} zero points rounded; logits vs the merged model ${relErr(logitsOf(back.model), trained).toExponential(2)}`);
        } finally {
          back.model.dispose();
        }
      } finally {
        model.dispose();
      }
    } finally {
      for (const x of [dir, out]) rmSync(x, { recursive: true, force: true });
    }
  });
}

test('architectures as GPTQ: what the model does not have is refused by name', () => {
  const f16 = (n: number, v: (k: number) => number) => new Uint8Array(Uint16Array.from({ length: n }, (_, k) => half(v(k))).buffer);
  const drop = (name: string) => (e: Entry[]) => { e.splice(e.findIndex((x) => x.name === name), 1); };
  const cases: [Arch, string, GptqOpts['tamper'], RegExp][] = [
    ['qwen2', 'o_proj bias', (e) => { e.push({ name: 'model.layers.0.self_attn.o_proj.bias', dtype: 'F16', shape: [64], data: f16(64, (k) => (k === 2 ? 512 : 0)) }); },
      /model\.layers\.0\.self_attn\.o_proj\.bias\[2\] is 0\.5: Qwen2ForCausalLM has biases on q_proj, k_proj and v_proj only/],
    ['qwen2', 'missing bias', drop('model.layers.0.self_attn.k_proj.bias'), /model\.layers\.0\.self_attn\.k_proj\.bias is missing/],
    ['qwen2', 'bias shape', (e) => { const x = e.find((v) => v.name === 'model.layers.0.self_attn.v_proj.bias')!; x.shape = [16]; x.data = x.data.slice(0, 32); },
      /model\.layers\.0\.self_attn\.v_proj\.bias has shape \[16\], config implies \[32\]/],
    ['qwen2', 'windowed layers', (_e, c) => { Object.assign(c, { use_sliding_window: true, sliding_window: 16, max_window_layers: 0 }); },
      /use_sliding_window true with max_window_layers 0 < num_hidden_layers 1 is not supported/],
    ['qwen3', 'norm shape', (e) => { const x = e.find((v) => v.name === 'model.layers.0.self_attn.q_norm.weight')!; x.shape = [16]; x.data = x.data.slice(0, 32); },
      /model\.layers\.0\.self_attn\.q_norm\.weight has shape \[16\], config implies \[32\]/],
    ['qwen3', 'missing norm', drop('model.layers.0.self_attn.k_norm.weight'), /model\.layers\.0\.self_attn\.k_norm\.weight is missing/],
    ['mistral', 'bias', (e) => { e.push({ name: 'model.layers.0.self_attn.q_proj.bias', dtype: 'F16', shape: [64], data: f16(64, () => 100) }); },
      /q_proj\.bias\[0\] is 0\.09765625: MistralForCausalLM has no projection biases/],
    ['llama', 'attention_bias without its biases', (_e, c) => { c.attention_bias = true; }, /model\.layers\.0\.self_attn\.(q|k|v|o)_proj\.bias is missing/],
    ['llama', 'mlp bias', (e) => { e.push({ name: 'model.layers.0.mlp.up_proj.bias', dtype: 'F16', shape: [192], data: f16(192, () => 1) }); },
      /mlp\.up_proj\.bias\[0\] is 0\.0009765625: LlamaForCausalLM has no bias on the MLP projections/],
    ['llama', 'model_type', (_e, c) => { c.model_type = 'gemma'; }, /model_type is "gemma", supported: "llama"/],
  ];
  for (const [arch, what, tamper, re] of cases) {
    withDir((dir) => {
      writeGptq(dir, { arch, bits: 4, groupSize: 32, sym: false, seed: 80, tamper });
      assert.throws(() => loadGptqModel(dir), re, `${arch}: ${what}`);
    });
  }
  // an all-zero bias where the architecture has none is still accepted
  withDir((dir) => {
    writeGptq(dir, { arch: 'qwen2', bits: 4, groupSize: 32, sym: false, seed: 81, tamper: (e) => { e.push({ name: 'model.layers.0.self_attn.o_proj.bias', dtype: 'F16', shape: [64], data: new Uint8Array(128) }); } });
    const g = loadGptqModel(dir);
    try {
      assert.equal(extrasOf(g.model).size, 3, 'q, k and v biases; none on o_proj');
    } finally {
      g.model.dispose();
    }
  });
});
