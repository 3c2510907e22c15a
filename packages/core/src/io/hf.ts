// Hugging Face LlamaForCausalLM interop: config.json <-> LlamaConfig, the
// parameter names and shapes, and model directories in safetensors.
//
// Tensor names and shapes (C = hidden, I = intermediate, V = vocab, D = C / Hq):
//   model.embed_tokens.weight                       [V, C]
//   model.layers.{i}.self_attn.q_proj.weight        [Hq*D, C]
//   model.layers.{i}.self_attn.k_proj.weight        [Hkv*D, C]
//   model.layers.{i}.self_attn.v_proj.weight        [Hkv*D, C]
//   model.layers.{i}.self_attn.o_proj.weight        [C, Hq*D]
//   model.layers.{i}.mlp.gate_proj.weight           [I, C]
//   model.layers.{i}.mlp.up_proj.weight             [I, C]
//   model.layers.{i}.mlp.down_proj.weight           [C, I]
//   model.layers.{i}.input_layernorm.weight         [C]
//   model.layers.{i}.post_attention_layernorm.weight [C]
//   model.norm.weight                               [C]
//   lm_head.weight                                  [V, C]   only when not tied
// (in the order of transformers' state_dict, which decides how it shards).
// Architectures (model_type) and what they add (see architectureFromHf):
//   mistral  sliding_window (attention to the last W positions), no new tensors
//   qwen2    model.layers.{i}.self_attn.{q,k,v}_proj.bias     [Hq*D], [Hkv*D], [Hkv*D]
//   qwen3    model.layers.{i}.self_attn.{q,k}_norm.weight     [D], head_dim from the config
//            (and with attention_bias, a bias on each of q, k, v, o)
//   llama    with attention_bias, a bias on each of q, k, v, o
//
// A model directory holds config.json and either model.safetensors or
// model.safetensors.index.json ({"metadata": {"total_size": N}, "weight_map":
// {name: "model-0000k-of-0000n.safetensors"}}) with its shards.
//
// Tied embeddings: a tied model's file may still carry lm_head.weight (some
// exporters write both); it is ignored, because transformers ties lm_head to
// embed_tokens after loading and never uses the stored copy either.
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type Category, DTYPE_BYTES } from '../dtype.js';
import { CONFIG_LIMITS, type LlamaConfig, MODEL_TYPES, type ModelType, headDim, validateConfig } from '../nn/config.js';
import { LlamaModel, type LinearFactory, modelTensorShapes } from '../nn/llama.js';
import { ropeScalingFromHf, ropeScalingToHf } from '../nn/rope_scaling.js';
import type { LinearLayer } from '../nn/module.js';
import { Tensor } from '../tensor.js';
import { readTextFile } from '../util/files.js';
import { parseJson } from '../util/json.js';
import { writeJsonAtomic } from './atomic.js';
import { type FloatTarget, readSafetensors, readSafetensorsHeader, writeSafetensors } from './safetensors.js';

export const HF_CONFIG_FILE = 'config.json';
export const HF_WEIGHTS_FILE = 'model.safetensors';
export const HF_WEIGHTS_INDEX_FILE = 'model.safetensors.index.json';
/** Buffers some checkpoints store that carry no parameters. */
const HARMLESS_EXTRA = /(^|\.)rotary_emb\.inv_freq$/;
const FLOAT_FILE_DTYPES = new Set(['F32', 'BF16', 'F16']);
const TORCH_DTYPE: Record<FloatTarget, string> = { f32: 'float32', bf16: 'bfloat16' };

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (o: Record<string, unknown>, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k) && o[k] !== undefined;
const shapeStr = (s: readonly number[]): string => `[${s.join(', ')}]`;
function listProblems(problems: string[], max = 25): string {
  return problems.length <= max ? problems.join('; ') : `${problems.slice(0, max).join('; ')}; ... and ${problems.length - max} more`;
}

// ---------------------------------------------------------------------------
// config.json

/** LlamaConfig from a transformers config.json object. `where` (the file path)
 * starts every error message. Throws on anything the model cannot honour. */
export function configFromHf(json: unknown, where: string): LlamaConfig {
  if (!isPlainObject(json)) throw new Error(`${where}: config is not a JSON object`);
  const problems: string[] = [];
  const modelType = modelTypeFromHf(json, problems);
  const int = (k: string, fallback?: number): number => {
    const v = json[k];
    if (!has(json, k) || v === null) {
      if (fallback !== undefined) return fallback;
      problems.push(`missing required key ${k}`);
      return NaN;
    }
    if (typeof v !== 'number' || !Number.isInteger(v)) { problems.push(`${k} must be an integer, got ${JSON.stringify(v)}`); return NaN; }
    return v;
  };
  const num = (k: string, fallback?: number): number => {
    const v = json[k];
    if (!has(json, k) || v === null) {
      if (fallback !== undefined) return fallback;
      problems.push(`missing required key ${k}`);
      return NaN;
    }
    if (typeof v !== 'number') { problems.push(`${k} must be a number, got ${JSON.stringify(v)}`); return NaN; }
    return v;
  };
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  // transformers: a missing (or null) num_key_value_heads means multi-head attention.
  const numKvHeads = int('num_key_value_heads', numHeads);

  // rope_theta, or (newer transformers) rope_parameters.rope_theta; default 10000.
  let ropeParamsTheta: number | undefined;
  if (has(json, 'rope_parameters') && json.rope_parameters !== null) {
    const rp = json.rope_parameters;
    if (!isPlainObject(rp)) problems.push(`rope_parameters must be an object, got ${JSON.stringify(rp)}`);
    else {
      if (has(rp, 'rope_theta')) {
        if (typeof rp.rope_theta === 'number') ropeParamsTheta = rp.rope_theta;
        else problems.push(`rope_parameters.rope_theta must be a number, got ${JSON.stringify(rp.rope_theta)}`);
      }
    }
  }
  const ropeTheta = num('rope_theta', ropeParamsTheta ?? 10000);
  if (ropeParamsTheta !== undefined && has(json, 'rope_theta') && json.rope_theta !== null && json.rope_theta !== ropeParamsTheta) {
    problems.push(`rope_theta ${JSON.stringify(json.rope_theta)} disagrees with rope_parameters.rope_theta ${ropeParamsTheta}`);
  }

  let tieWordEmbeddings = false;
  if (has(json, 'tie_word_embeddings') && json.tie_word_embeddings !== null) {
    if (typeof json.tie_word_embeddings !== 'boolean') problems.push(`tie_word_embeddings must be a boolean, got ${JSON.stringify(json.tie_word_embeddings)}`);
    else tieWordEmbeddings = json.tie_word_embeddings;
  }
  const config: LlamaConfig = {
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    rmsNormEps: num('rms_norm_eps'),
    ropeTheta,
    maxPositionEmbeddings: int('max_position_embeddings'),
    tieWordEmbeddings,
  };

  if (modelType) Object.assign(config, architectureFromHf(json, modelType, config, problems));

  // Keys that would change the computation in ways the model does not implement.
  // scaled RoPE (rope_scaling, or rope_parameters' rope_type): nn/rope_scaling.ts
  const ropeScaling = ropeScalingFromHf(json, config.maxPositionEmbeddings, problems);
  if (ropeScaling) config.ropeScaling = ropeScaling;
  if (has(json, 'hidden_act') && json.hidden_act !== 'silu') problems.push(`hidden_act ${JSON.stringify(json.hidden_act)} is not supported (only "silu")`);
  if (has(json, 'mlp_bias') && json.mlp_bias !== false && json.mlp_bias !== null) problems.push(`mlp_bias ${JSON.stringify(json.mlp_bias)} is not supported (only false)`);
  // absurd sizes named by the file's own keys (validateConfig would name our fields)
  const hfKeys: Record<keyof typeof CONFIG_LIMITS, string> = {
    vocabSize: 'vocab_size', hiddenSize: 'hidden_size', intermediateSize: 'intermediate_size', numLayers: 'num_hidden_layers',
    numHeads: 'num_attention_heads', numKvHeads: 'num_key_value_heads', maxPositionEmbeddings: 'max_position_embeddings',
  };
  for (const [k, limit] of Object.entries(CONFIG_LIMITS) as [keyof typeof CONFIG_LIMITS, number][]) {
    const v = config[k];
    if (typeof v === 'number' && v > limit) problems.push(`${hfKeys[k]} ${v} exceeds the limit of ${limit}`);
  }
  if (!Number.isNaN(config.rmsNormEps) && !(config.rmsNormEps > 0 && config.rmsNormEps <= 0.1)) problems.push(`rms_norm_eps must be a positive number no larger than 0.1, got ${JSON.stringify(config.rmsNormEps)}`);
  if (problems.length) throw new Error(`${where}: ${listProblems(problems)}`);
  validateConfig(config, where);
  return config;
}

export interface ConfigToHfOptions {
  /** torch_dtype written to the config (default 'f32' -> "float32") */
  dtype?: FloatTarget;
  bosTokenId?: number;
  eosTokenId?: number;
}

/** A config.json object that transformers loads as the config's architecture
 * (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM;
 * keys sorted, as transformers writes them). */
export function configToHf(config: LlamaConfig, opts: ConfigToHfOptions = {}): Record<string, unknown> {
  validateConfig(config);
  const out: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    attention_bias: false,
    attention_dropout: 0.0,
    head_dim: headDim(config),
    hidden_act: 'silu',
    hidden_size: config.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: config.intermediateSize,
    max_position_embeddings: config.maxPositionEmbeddings,
    mlp_bias: false,
    num_attention_heads: config.numHeads,
    num_hidden_layers: config.numLayers,
    num_key_value_heads: config.numKvHeads,
    pretraining_tp: 1,
    rms_norm_eps: config.rmsNormEps,
    rope_scaling: ropeScalingToHf(config.ropeScaling),
    rope_theta: config.ropeTheta,
    tie_word_embeddings: config.tieWordEmbeddings,
    torch_dtype: TORCH_DTYPE[opts.dtype ?? 'f32'],
    use_cache: true,
    vocab_size: config.vocabSize,
  };
  Object.assign(out, architectureToHf(config));
  for (const [k, v] of Object.entries(out)) if (v === undefined) delete out[k];
  if (opts.bosTokenId !== undefined) out.bos_token_id = opts.bosTokenId;
  if (opts.eosTokenId !== undefined) out.eos_token_id = opts.eosTokenId;
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

// ---------------------------------------------------------------------------
// Architectures: model_type <-> the config's switches (qkvBias, oBias,
// qkNorm, headDim, slidingWindow), as transformers' modeling code reads each
// config class (defaults included).

const ARCH_CLASS: Record<ModelType, string> = {
  llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM',
};

function modelTypeFromHf(json: Record<string, unknown>, problems: string[]): ModelType | null {
  if (!has(json, 'model_type')) return 'llama';
  const t = json.model_type;
  if (typeof t === 'string' && (MODEL_TYPES as readonly string[]).includes(t)) return t as ModelType;
  problems.push(`model_type is ${JSON.stringify(t)}, supported: ${MODEL_TYPES.map((m) => `"${m}" (${ARCH_CLASS[m]})`).join(', ')}`);
  return null;
}

/** The switches of one architecture from its config.json keys; problems name
 * the keys the model cannot honour. */
function architectureFromHf(json: Record<string, unknown>, modelType: ModelType, base: LlamaConfig, problems: string[]): Partial<LlamaConfig> {
  const arch: Partial<LlamaConfig> = {};
  if (modelType !== 'llama') arch.modelType = modelType;
  const implied = Number.isInteger(base.hiddenSize) && Number.isInteger(base.numHeads) && base.numHeads > 0 ? base.hiddenSize / base.numHeads : NaN;
  // head_dim: Qwen3Config defaults it to 128; the others to hidden_size / num_attention_heads
  const given = has(json, 'head_dim') && json.head_dim !== null;
  const hd: unknown = given ? json.head_dim : modelType === 'qwen3' ? 128 : implied;
  if (given && (typeof hd !== 'number' || !Number.isInteger(hd) || hd <= 0)) problems.push(`head_dim must be a positive integer, got ${JSON.stringify(hd)}`);
  else if (hd !== implied && typeof hd === 'number') arch.headDim = hd;  // (a non-integer implied one is validateConfig's to report)
  const flag = (k: string): boolean => {
    if (!has(json, k) || json[k] === null) return false;
    if (typeof json[k] !== 'boolean') { problems.push(`${k} must be a boolean, got ${JSON.stringify(json[k])}`); return false; }
    return json[k] as boolean;
  };
  // attention biases: Llama and Qwen3 put attention_bias on q, k, v and o;
  // Qwen2 always has q, k, v biases (and none on o); Mistral has none (transformers ignores the key)
  if (modelType === 'llama' || modelType === 'qwen3') {
    if (flag('attention_bias')) { arch.qkvBias = true; arch.oBias = true; }
  } else if (modelType === 'qwen2') {
    arch.qkvBias = true;
  }
  if (modelType === 'qwen3') arch.qkNorm = true;
  if (modelType === 'mistral') {
    // MistralConfig's default window is 4096; null means full attention
    const w = has(json, 'sliding_window') ? json.sliding_window : 4096;
    if (w !== null) {
      if (typeof w !== 'number' || !Number.isInteger(w) || w < 1) problems.push(`sliding_window must be a positive integer or null, got ${JSON.stringify(w)}`);
      else arch.slidingWindow = w;
    }
  }
  if (modelType === 'qwen2' || modelType === 'qwen3') {
    // sliding windows on the layers from max_window_layers on (transformers'
    // Qwen2/Qwen3 layer_types) are not implemented: refused unless no layer
    // has one (none from max_window_layers on, or no window shorter than the context)
    const w = json.sliding_window;
    if (flag('use_sliding_window') && typeof w === 'number' && w < base.maxPositionEmbeddings) {
      const first = has(json, 'max_window_layers') && typeof json.max_window_layers === 'number' ? json.max_window_layers : 28;
      if (first < base.numLayers) {
        problems.push(`use_sliding_window true with max_window_layers ${first} < num_hidden_layers ${base.numLayers} is not supported (sliding-window attention on some ${modelType} layers only); set use_sliding_window to false, as the published ${modelType} checkpoints have it`);
      }
    }
    if (Array.isArray(json.layer_types) && json.layer_types.some((t) => t !== 'full_attention')) {
      problems.push(`layer_types with ${JSON.stringify(json.layer_types.find((t) => t !== 'full_attention'))} layers is not supported (only "full_attention")`);
    }
  }
  return arch;
}

/** The keys that make transformers build the config's architecture; throws
 * when the switches are not those of its modelType. */
function architectureToHf(c: LlamaConfig): Record<string, unknown> {
  const type = c.modelType ?? 'llama';
  const q = !!c.qkvBias, o = !!c.oBias, norm = !!c.qkNorm, window = c.slidingWindow ?? null;
  const refuse = (what: string) => {
    throw new Error(`configToHf: modelType '${type}' (${ARCH_CLASS[type]}) cannot hold ${what}; change modelType or the switch`);
  };
  if (type !== 'mistral' && window !== null) refuse(`slidingWindow ${window} (only mistral has a sliding window)`);
  if (type !== 'qwen3' && norm) refuse('qkNorm (only qwen3 has q/k norms)');
  if (type === 'qwen2') {
    if (!q || o) refuse(`qkvBias ${q} / oBias ${o} (qwen2 has biases on q, k and v, none on o_proj)`);
  } else if (type === 'mistral') {
    if (q || o) refuse('projection biases');
  } else if (q !== o) {
    refuse(`qkvBias ${q} with oBias ${o} (attention_bias puts a bias on all four projections)`);
  }
  if (type === 'qwen3' && !norm) refuse('a model without qkNorm (qwen3 always has q/k norms)');
  const common = { architectures: [ARCH_CLASS[type]], model_type: type };
  switch (type) {
    case 'llama': return { ...common, attention_bias: q };
    case 'mistral': return { ...common, attention_bias: undefined, mlp_bias: undefined, pretraining_tp: undefined, sliding_window: window };
    case 'qwen2':
      return { ...common, attention_bias: undefined, mlp_bias: undefined, pretraining_tp: undefined, use_sliding_window: false, sliding_window: null, max_window_layers: c.numLayers };
    case 'qwen3':
      return { ...common, attention_bias: q, mlp_bias: undefined, pretraining_tp: undefined, use_sliding_window: false, sliding_window: null, max_window_layers: c.numLayers };
  }
}

// ---------------------------------------------------------------------------
// Names and shapes

/** Every parameter of the model by its Hugging Face name, in state_dict order. */
export function hfTensorShapes(config: LlamaConfig): Map<string, number[]> {
  validateConfig(config);
  return modelTensorShapes(config);
}

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

// ---------------------------------------------------------------------------
// Load

export interface LoadHfOptions {
  /** dtype of the loaded tensors (default 'f32'); floating weights are converted */
  dtype?: FloatTarget;
  /** memory category of the loaded tensors (default 'frozen'), or one per tensor name */
  category?: Category | ((name: string) => Category);
  /** each expected tensor as soon as it is read (see ReadSafetensorsOptions.onTensor):
   * return it to keep it in `tensors`, or null when the callback took it over */
  onTensor?: (name: string, t: Tensor) => Tensor | null;
}

export interface LoadedHfModel {
  config: LlamaConfig;
  /** in hfTensorShapes order */
  tensors: Map<string, Tensor>;
  /** safetensors files read (absolute paths) and the dtypes stored in them */
  source: { files: string[]; dtypes: string[] };
}

function readJson(path: string, what: string): unknown {
  if (!existsSync(path)) throw new Error(`${path}: ${what} not found`);
  const text = readTextFile(path, what);
  return parseJson(text, `${path}: ${what}`);
}

/** Shard file names must stay inside the model directory. */
const SAFE_FILE_NAME = /^(?!\.\.?$)[^/\\\0]+$/;

/** Loads a LlamaForCausalLM directory saved by transformers (or saveHfModelDir). */
export function loadHfModelDir(dir: string, opts: LoadHfOptions = {}): LoadedHfModel {
  const root = resolve(dir);
  const dtype = opts.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new TypeError(`${root}: dtype must be 'f32' or 'bf16', got ${JSON.stringify(dtype)}`);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`${root}: not a directory`);
  const configPath = join(root, HF_CONFIG_FILE);
  const configJson = readJson(configPath, HF_CONFIG_FILE);
  refuseQuantizedCheckpoint(configJson, configPath);
  const config = configFromHf(configJson, configPath);
  const expected = hfTensorShapes(config);

  // name -> shard file (absolute path)
  const sourceOf = new Map<string, string>();
  const indexPath = join(root, HF_WEIGHTS_INDEX_FILE);
  const singlePath = join(root, HF_WEIGHTS_FILE);
  let files: string[];
  if (existsSync(indexPath)) {
    const index = readJson(indexPath, HF_WEIGHTS_INDEX_FILE);
    if (!isPlainObject(index) || !isPlainObject(index.weight_map)) throw new Error(`${indexPath}: no "weight_map" object`);
    const problems: string[] = [];
    const shards = new Set<string>();
    for (const [name, f] of Object.entries(index.weight_map)) {
      if (typeof f !== 'string' || !SAFE_FILE_NAME.test(f)) { problems.push(`weight_map[${JSON.stringify(name)}] is not a file name in the directory: ${JSON.stringify(f)}`); continue; }
      const abs = join(root, f);
      shards.add(abs);
      sourceOf.set(name, abs);
    }
    for (const s of shards) if (!existsSync(s)) problems.push(`shard ${s} is missing`);
    if (problems.length) throw new Error(`${indexPath}: ${listProblems(problems)}`);
    files = [...shards].sort();
  } else if (existsSync(singlePath)) {
    files = [singlePath];
  } else {
    const other = ['pytorch_model.bin', 'pytorch_model.bin.index.json'].filter((f) => existsSync(join(root, f)));
    throw new Error(`${root}: no ${HF_WEIGHTS_FILE} or ${HF_WEIGHTS_INDEX_FILE}${other.length ? ` (found ${other.join(', ')}: only safetensors weights are supported)` : ''}`);
  }

  // Headers first: every problem is reported before any tensor is allocated.
  const found = new Map<string, { file: string; dtype: string; shape: number[] }>();
  const problems: string[] = [];
  const dtypes = new Set<string>();
  for (const f of files) {
    const header = readSafetensorsHeader(f);
    for (const e of header.tensors) {
      if (sourceOf.size && sourceOf.get(e.name) !== f) continue; // the weight_map is authoritative
      found.set(e.name, { file: f, dtype: e.dtype, shape: e.shape });
    }
  }
  for (const [name, f] of sourceOf) if (!found.has(name)) problems.push(`${name} is mapped to ${f} but not in it`);
  const missing: string[] = [];
  for (const [name, shape] of expected) {
    const got = found.get(name);
    if (!got) { if (!sourceOf.has(name)) missing.push(name); continue; }
    if (!sameShape(got.shape, shape)) problems.push(`${name} has shape ${shapeStr(got.shape)}, config implies ${shapeStr(shape)}`);
    if (!FLOAT_FILE_DTYPES.has(got.dtype)) problems.push(`${name} has dtype ${got.dtype}, expected a floating type (F32, BF16, F16)`);
    dtypes.add(got.dtype);
  }
  if (missing.length) problems.unshift(`missing tensors: ${missing.join(', ')}`);
  const unexpected = [...found.keys()].filter((n) => !expected.has(n) && !HARMLESS_EXTRA.test(n) && !(config.tieWordEmbeddings && n === 'lm_head.weight'));
  if (unexpected.length) problems.push(`unexpected tensors (not part of ${ARCH_CLASS[config.modelType ?? 'llama']} with this config): ${unexpected.join(', ')}`);
  if (problems.length) throw new Error(`${root}: ${listProblems(problems)}`);

  const loaded = new Map<string, Tensor>();
  const takenOver = new Set<string>();
  try {
    for (const f of files) {
      const taken = new Set<string>();
      const { tensors } = readSafetensors(f, {
        filter: (n) => expected.has(n) && found.get(n)?.file === f,
        category: opts.category ?? 'frozen',
        convert: { to: dtype },
        onTensor: opts.onTensor && ((n, t) => {
          if (!sameShape(t.shape, expected.get(n)!)) { t.dispose(); throw new Error(`${root}: ${n} changed while loading`); }
          const kept = opts.onTensor!(n, t);
          if (!kept) taken.add(n);
          return kept;
        }),
      });
      for (const [n, t] of tensors) loaded.set(n, t);
      for (const n of taken) takenOver.add(n);
    }
    const ordered = new Map<string, Tensor>();
    for (const name of expected.keys()) {
      if (takenOver.has(name)) continue;
      const t = loaded.get(name);
      if (!t || !sameShape(t.shape, expected.get(name)!)) throw new Error(`${root}: ${name} changed while loading`);
      ordered.set(name, t);
    }
    return { config, tensors: ordered, source: { files, dtypes: [...dtypes].sort() } };
  } catch (e) {
    for (const t of loaded.values()) t.dispose();
    throw e;
  }
}

// ---------------------------------------------------------------------------
// Save

export interface SaveHfOptions {
  /** dtype of the stored weights (default 'bf16') */
  dtype?: FloatTarget;
  /** shard when the weights exceed this many bytes (default: never) */
  maxShardBytes?: number;
}

/** transformers' shard file name (1-based index). */
export function hfShardName(index: number, count: number): string {
  return `model-${String(index).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.safetensors`;
}
const SHARD_NAME = /^model-\d{5}-of-\d{5}\.safetensors$/;

/** Writes config.json and the weights (one file, or shards plus index as
 * transformers names them). Each file is written atomically; files of an
 * earlier save that the new one does not use are removed afterwards. */
export function saveHfModelDir(
  dir: string, config: LlamaConfig, tensors: Map<string, Tensor> | Record<string, Tensor>, opts: SaveHfOptions = {},
): void {
  const root = resolve(dir);
  const dtype = opts.dtype ?? 'bf16';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new TypeError(`${root}: dtype must be 'f32' or 'bf16', got ${JSON.stringify(dtype)}`);
  const maxShard = opts.maxShardBytes ?? Infinity;
  if (!(maxShard > 0)) throw new RangeError(`${root}: maxShardBytes must be positive, got ${maxShard}`);
  validateConfig(config, `${root}: config`);
  const expected = hfTensorShapes(config);
  const given = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));

  const problems: string[] = [];
  const missing = [...expected.keys()].filter((n) => !given.has(n));
  if (missing.length) problems.push(`missing tensors: ${missing.join(', ')}`);
  const unexpected = [...given.keys()].filter((n) => !expected.has(n));
  if (unexpected.length) problems.push(`unexpected tensors: ${unexpected.join(', ')}${config.tieWordEmbeddings && unexpected.includes('lm_head.weight') ? ' (the config ties lm_head to embed_tokens)' : ''}`);
  for (const [name, shape] of expected) {
    const t = given.get(name);
    if (!t) continue;
    if (!(t instanceof Tensor)) { problems.push(`${name} is not a Tensor`); continue; }
    if (t.disposed) { problems.push(`${name} was disposed`); continue; }
    if (!sameShape(t.shape, shape)) problems.push(`${name} has shape ${shapeStr(t.shape)}, config implies ${shapeStr(shape)}`);
    if (t.dtype !== 'f32' && t.dtype !== 'bf16' && t.dtype !== 'f16') problems.push(`${name} has dtype ${t.dtype}, expected f32, bf16 or f16`);
  }
  if (problems.length) throw new Error(`${root}: cannot save: ${listProblems(problems)}`);

  // Sharding as huggingface_hub's split_torch_state_dict_into_shards: greedy in
  // state_dict order; a tensor larger than the limit gets a shard of its own.
  const shards: string[][] = [];
  let current: string[] = [], currentBytes = 0, totalBytes = 0;
  for (const name of expected.keys()) {
    const bytes = given.get(name)!.numel * DTYPE_BYTES[dtype];
    totalBytes += bytes;
    if (bytes > maxShard) { shards.push([name]); continue; }
    if (currentBytes + bytes > maxShard && current.length) { shards.push(current); current = []; currentBytes = 0; }
    current.push(name);
    currentBytes += bytes;
  }
  if (current.length) shards.push(current);

  mkdirSync(root, { recursive: true });
  const metadata = { format: 'pt' };
  const written = new Set<string>();
  if (shards.length <= 1) {
    writeSafetensors(join(root, HF_WEIGHTS_FILE), given, { metadata, dtype });
    written.add(HF_WEIGHTS_FILE);
  } else {
    const weightMap: Record<string, string> = {};
    shards.forEach((names, i) => {
      const file = hfShardName(i + 1, shards.length);
      writeSafetensors(join(root, file), new Map(names.map((n) => [n, given.get(n)!])), { metadata, dtype });
      for (const n of names) weightMap[n] = file;
      written.add(file);
    });
    const sortedMap: Record<string, string> = {};
    for (const n of Object.keys(weightMap).sort()) sortedMap[n] = weightMap[n];
    // Written after the shards: a loader never sees an index whose shards are not there yet.
    writeJsonAtomic(join(root, HF_WEIGHTS_INDEX_FILE), { metadata: { total_size: totalBytes }, weight_map: sortedMap });
    written.add(HF_WEIGHTS_INDEX_FILE);
  }
  writeJsonAtomic(join(root, HF_CONFIG_FILE), configToHf(config, { dtype }));

  // An index left from an earlier sharded save would shadow a new single file.
  for (const f of readdirSync(root)) {
    if (written.has(f)) continue;
    if (f === HF_WEIGHTS_FILE || f === HF_WEIGHTS_INDEX_FILE || SHARD_NAME.test(f)) unlinkSync(join(root, f));
  }
}

// ---------------------------------------------------------------------------
// Whole models

export interface LoadHfModelOptions {
  /** train every weight (full fine-tuning: f32 weights with gradients); default true */
  trainable?: boolean;
  /** storage of frozen weights (default bf16); trained weights are always f32 */
  frozenDtype?: FloatTarget;
  /** builds each projection's layer from its weight as soon as the weight is
   * read (e.g. quantizes it and frees the dense tensor), so a quantized
   * model never holds the dense base whole. Frozen models only. */
  linear?: LinearFactory;
}

/** A LlamaForCausalLM directory as a LlamaModel. */
export function loadHfModel(dir: string, opts: LoadHfModelOptions = {}): LlamaModel {
  const trainable = opts.trainable ?? true;
  if (opts.linear && trainable) throw new Error('loadHfModel: a linear factory needs a frozen model (trainable: false)');
  const built = new Map<string, LinearLayer>();
  const factory = opts.linear;
  let loaded: LoadedHfModel;
  try {
    loaded = loadHfModelDir(dir, {
      dtype: trainable ? 'f32' : (opts.frozenDtype ?? 'bf16'),
      // a projection handed to the factory is a temporary (it is quantized and freed at once)
      category: trainable ? 'trainable' : factory ? (n) => (LINEAR_WEIGHT.test(n) ? 'workspace' : 'frozen') : 'frozen',
      onTensor: factory && ((name, t) => {
        const m = LINEAR_WEIGHT.exec(name);
        if (!m) return t;
        try {
          built.set(m[1], factory(m[1], t));
        } catch (e) {
          t.dispose();
          throw e;
        }
        return null;
      }),
    });
  } catch (e) {
    for (const l of built.values()) l.dispose();
    throw e;
  }
  const { config, tensors } = loaded;
  try {
    return LlamaModel.fromTensors(config, tensors, { trainable, linears: built });
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    for (const l of built.values()) l.dispose();
    throw e;
  }
}

/** model.layers.{i}.{self_attn|mlp}.{proj}.weight -> the module name */
const LINEAR_WEIGHT = /^(model\.layers\.\d+\.(?:self_attn|mlp)\.(?:q|k|v|o|gate|up|down)_proj)\.weight$/;

/** Saves a LlamaModel as a LlamaForCausalLM directory (weights bf16 unless asked). */
export function saveHfModel(model: LlamaModel, dir: string, opts: SaveHfOptions = {}): void {
  saveHfModelDir(dir, model.config, model.namedTensors(), opts);
}

// ---------------------------------------------------------------------------
// Quantized checkpoints (GPTQ, the INT-N files of @tunebench/qa-lora): their
// projections are codes, not dense weights. Named here, so that loading one
// as a dense model says what it is and what reads it instead of listing
// every .weight as missing.

function refuseQuantizedCheckpoint(json: unknown, where: string): void {
  if (!isPlainObject(json) || !isPlainObject(json.quantization_config)) return;
  const method = json.quantization_config.quant_method;
  if (method === 'gptq') {
    throw new Error(`${where}: quantization_config.quant_method "gptq": a GPTQ checkpoint (qweight, qzeros, scales, g_idx) does not load as dense weights; ` +
      'it loads as a QA-LoRA INT-N base (@tunebench/qa-lora loadQaloraModel or loadGptqModel; in the bench: --methods qalora<bits>)');
  }
  if (method === 'tunebench_intn') {
    throw new Error(`${where}: quantization_config.quant_method "tunebench_intn": a merged QA-LoRA INT-N model; load it with @tunebench/qa-lora loadQaloraMerged`);
  }
}
