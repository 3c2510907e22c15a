// LLaMA-architecture model configuration and presets.
import { type RopeScaling, ropeScalingProblems } from './rope_scaling.js';

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** scaled RoPE (llama3, linear, dynamic, yarn: nn/rope_scaling.ts); absent or null: plain RoPE */
  ropeScaling?: RopeScaling | null;

  // ---- architecture switches (Mistral, Qwen2/2.5, Qwen3); absent = plain Llama ----
  /** the Hugging Face model_type the config reads as and saves as (default 'llama') */
  modelType?: ModelType;
  /** per-head dimension (Qwen3 sets its own); default hiddenSize / numHeads */
  headDim?: number;
  /** biases on the q, k and v projections (Qwen2/2.5; Llama/Qwen3 attention_bias) */
  qkvBias?: boolean;
  /** bias on o_proj (Llama/Qwen3 attention_bias) */
  oBias?: boolean;
  /** RMSNorm of every query and key head (weights [headDim]) before RoPE (Qwen3) */
  qkNorm?: boolean;
  /** a query attends to the last slidingWindow positions, itself included
   * (Mistral); null or absent: every earlier position */
  slidingWindow?: number | null;
}

/** The Hugging Face architectures the model code computes (config.json model_type). */
export const MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'qwen3'] as const;
export type ModelType = (typeof MODEL_TYPES)[number];

/** Vocabulary of the built-in byte-level tokenizer: 256 bytes + BOS, EOS, PAD. */
export const BYTE_VOCAB_SIZE = 259;

/**
 * Presets. `tiny`, `mini` and `small` are ours (tests and CI seconds; CPU suite minutes), sized
 * for the byte-level vocabulary. The others carry the shapes of published
 * models, from each model's config.json on the Hugging Face hub:
 * HuggingFaceTB/SmolLM-135M, TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T,
 * meta-llama/Llama-2-7b-hf.
 */
export const PRESETS: Readonly<Record<string, Readonly<LlamaConfig>>> = Object.freeze({
  tiny: {
    vocabSize: BYTE_VOCAB_SIZE, hiddenSize: 64, intermediateSize: 192, numLayers: 2, numHeads: 4, numKvHeads: 2,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 256, tieWordEmbeddings: true,
  },
  // the ci suite's base: twice tiny's width, so that QA-LoRA's adapters,
  // which see the input averaged per group of columns, are not starved
  // (groups of 16: 8 inputs per projection)
  mini: {
    vocabSize: BYTE_VOCAB_SIZE, hiddenSize: 128, intermediateSize: 384, numLayers: 2, numHeads: 4, numKvHeads: 2,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 256, tieWordEmbeddings: true,
  },
  small: {
    vocabSize: BYTE_VOCAB_SIZE, hiddenSize: 256, intermediateSize: 704, numLayers: 4, numHeads: 8, numKvHeads: 4,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 512, tieWordEmbeddings: true,
  },
  // the gpu suite's pretrained base (packages/bench): byte vocabulary, ~25M
  // parameters, pretrained on Brown in minutes on one GPU
  medium: {
    vocabSize: BYTE_VOCAB_SIZE, hiddenSize: 512, intermediateSize: 1408, numLayers: 8, numHeads: 8, numKvHeads: 4,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 1024, tieWordEmbeddings: true,
  },
  // Published shapes (random weights in the benchmarks), from each model's config.json on the Hugging Face hub:
  // HuggingFaceTB/SmolLM-135M, TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T (and -Chat-v1.0),
  // meta-llama/Llama-2-7b-hf: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
  // num_key_value_heads, vocab_size, rope_theta, rms_norm_eps, max_position_embeddings, tie_word_embeddings
  'smollm-135m': {
    vocabSize: 49152, hiddenSize: 576, intermediateSize: 1536, numLayers: 30, numHeads: 9, numKvHeads: 3,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 2048, tieWordEmbeddings: true,
  },
  'tinyllama-1.1b': {
    vocabSize: 32000, hiddenSize: 2048, intermediateSize: 5632, numLayers: 22, numHeads: 32, numKvHeads: 4,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 2048, tieWordEmbeddings: false,
  },
  'llama-2-7b': {
    vocabSize: 32000, hiddenSize: 4096, intermediateSize: 11008, numLayers: 32, numHeads: 32, numKvHeads: 32,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 4096, tieWordEmbeddings: false,
  },
  // Architectures beyond Llama 2, from each model's config.json on the Hugging Face hub:
  // meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B, Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-7B, Qwen/Qwen3-0.6B,
  // mistralai/Mistral-7B-v0.1 (the keys above, plus head_dim, sliding_window and the q/k/v biases and q/k norms
  // their model_type implies). Llama 3.x's rope_scaling ("llama3", factor 32 / 8) is left out: it changes no
  // shape, and the speed and memory rows these presets serve run far below its original context.
  'llama-3.2-1b': {
    vocabSize: 128256, hiddenSize: 2048, intermediateSize: 8192, numLayers: 16, numHeads: 32, numKvHeads: 8,
    rmsNormEps: 1e-5, ropeTheta: 500000, maxPositionEmbeddings: 131072, tieWordEmbeddings: true,
    ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
  },
  'llama-3.1-8b': {
    vocabSize: 128256, hiddenSize: 4096, intermediateSize: 14336, numLayers: 32, numHeads: 32, numKvHeads: 8,
    rmsNormEps: 1e-5, ropeTheta: 500000, maxPositionEmbeddings: 131072, tieWordEmbeddings: false,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
  },
  'qwen2.5-0.5b': {
    vocabSize: 151936, hiddenSize: 896, intermediateSize: 4864, numLayers: 24, numHeads: 14, numKvHeads: 2,
    rmsNormEps: 1e-6, ropeTheta: 1000000, maxPositionEmbeddings: 32768, tieWordEmbeddings: true,
    modelType: 'qwen2', qkvBias: true,
  },
  'qwen2.5-7b': {
    vocabSize: 152064, hiddenSize: 3584, intermediateSize: 18944, numLayers: 28, numHeads: 28, numKvHeads: 4,
    rmsNormEps: 1e-6, ropeTheta: 1000000, maxPositionEmbeddings: 131072, tieWordEmbeddings: false,
    modelType: 'qwen2', qkvBias: true,
  },
  'qwen3-0.6b': {
    vocabSize: 151936, hiddenSize: 1024, intermediateSize: 3072, numLayers: 28, numHeads: 16, numKvHeads: 8,
    rmsNormEps: 1e-6, ropeTheta: 1000000, maxPositionEmbeddings: 40960, tieWordEmbeddings: true,
    modelType: 'qwen3', headDim: 128, qkNorm: true,
  },
  'mistral-7b': {
    vocabSize: 32000, hiddenSize: 4096, intermediateSize: 14336, numLayers: 32, numHeads: 32, numKvHeads: 8,
    rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 32768, tieWordEmbeddings: false,
    modelType: 'mistral', slidingWindow: 4096,
  },
});

/** Whether `name` is one of PRESETS' own keys (not an Object.prototype member such as '__proto__' or 'constructor'). */
export function isPreset(name: string): boolean {
  return Object.hasOwn(PRESETS, name);
}

export function preset(name: string): LlamaConfig {
  const p = isPreset(name) ? PRESETS[name] : undefined;
  if (!p) throw new Error(`unknown model preset '${name}' (known: ${Object.keys(PRESETS).join(', ')})`);
  return { ...p };
}

/** Per-head dimension: the config's own headDim, else hiddenSize / numHeads. */
export function headDim(c: LlamaConfig): number {
  return c.headDim ?? c.hiddenSize / c.numHeads;
}

/** Throws an Error listing every problem with a config. */
/** Upper bounds on a config's sizes: far above every published LLaMA-family
 * model (vocabularies ~256k, hidden 16k, 126 layers, 128k positions). */
export const CONFIG_LIMITS = {
  vocabSize: 1 << 22, hiddenSize: 1 << 16, intermediateSize: 1 << 18, numLayers: 1024, numHeads: 1024, numKvHeads: 1024,
  maxPositionEmbeddings: 1 << 22,
} as const;

export function validateConfig(c: LlamaConfig, where = 'model config'): void {
  const problems: string[] = [];
  const posInt = (k: keyof LlamaConfig) => {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) problems.push(`${k} must be a positive integer, got ${JSON.stringify(v)}`);
  };
  for (const k of ['vocabSize', 'hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numKvHeads', 'maxPositionEmbeddings'] as const) posInt(k);
  // Sizes far beyond any published model are refused before anything grows
  // with them (a config claiming 1e7 layers would otherwise list 7e7 tensor
  // names before the weights file is even opened).
  for (const [k, limit] of Object.entries(CONFIG_LIMITS) as [keyof typeof CONFIG_LIMITS, number][]) {
    const v = c[k];
    if (typeof v === 'number' && Number.isInteger(v) && v > limit) problems.push(`${k} ${v} exceeds the limit of ${limit}`);
  }
  if (!(typeof c.rmsNormEps === 'number' && c.rmsNormEps > 0 && c.rmsNormEps <= 0.1)) problems.push(`rmsNormEps must be a positive number no larger than 0.1, got ${JSON.stringify(c.rmsNormEps)}`);
  if (!(typeof c.ropeTheta === 'number' && c.ropeTheta > 0 && c.ropeTheta <= 1e12)) problems.push(`ropeTheta must be a positive number no larger than 1e12, got ${JSON.stringify(c.ropeTheta)}`);
  if (typeof c.tieWordEmbeddings !== 'boolean') problems.push(`tieWordEmbeddings must be a boolean, got ${JSON.stringify(c.tieWordEmbeddings)}`);
  problems.push(...ropeScalingProblems(c.ropeScaling, c.maxPositionEmbeddings));
  validateArchitecture(c, problems);
  if (c.headDim === undefined && Number.isInteger(c.hiddenSize) && Number.isInteger(c.numHeads) && c.numHeads > 0) {
    if (c.hiddenSize % c.numHeads !== 0) problems.push(`numHeads (${c.numHeads}) does not divide hiddenSize (${c.hiddenSize})`);
    else if ((c.hiddenSize / c.numHeads) % 2 !== 0) problems.push(`head dimension hiddenSize/numHeads = ${c.hiddenSize / c.numHeads} must be even for RoPE`);
  }
  if (Number.isInteger(c.numHeads) && Number.isInteger(c.numKvHeads) && c.numKvHeads > 0 && c.numHeads % c.numKvHeads !== 0) {
    problems.push(`numKvHeads (${c.numKvHeads}) does not divide numHeads (${c.numHeads})`);
  }
  if (problems.length) throw new Error(`${where}: ${problems.join('; ')}`);
}

/** The architecture switches: each of the right type and size. */
function validateArchitecture(c: LlamaConfig, problems: string[]): void {
  if (c.modelType !== undefined && !MODEL_TYPES.includes(c.modelType)) problems.push(`modelType must be one of ${MODEL_TYPES.join(', ')}, got ${JSON.stringify(c.modelType)}`);
  if (c.headDim !== undefined) {
    if (typeof c.headDim !== 'number' || !Number.isInteger(c.headDim) || c.headDim <= 0 || c.headDim > 4096) problems.push(`headDim must be a positive integer no larger than 4096, got ${JSON.stringify(c.headDim)}`);
    else if (c.headDim % 2 !== 0) problems.push(`headDim ${c.headDim} must be even for RoPE`);
  }
  for (const k of ['qkvBias', 'oBias', 'qkNorm'] as const) {
    if (c[k] !== undefined && typeof c[k] !== 'boolean') problems.push(`${k} must be a boolean, got ${JSON.stringify(c[k])}`);
  }
  const w = c.slidingWindow;
  if (w !== undefined && w !== null && !(typeof w === 'number' && Number.isInteger(w) && w >= 1 && w <= 2 ** 30)) {
    problems.push(`slidingWindow must be a positive integer or null, got ${JSON.stringify(w)}`);
  }
}

/** The sliding window of a config as the kernels take it: 0 when every
 * earlier position is visible (no window, or one no shorter than the context). */
export function attentionWindow(c: LlamaConfig): number {
  const w = c.slidingWindow;
  return w === undefined || w === null || w >= c.maxPositionEmbeddings ? 0 : w;
}

/** Parameter count of the model (embedding counted once when tied). */
export function parameterCount(c: LlamaConfig): number {
  const D = headDim(c), kv = c.numKvHeads * D, q = c.numHeads * D;
  const attn = c.hiddenSize * q * 2 + c.hiddenSize * kv * 2
    + (c.qkvBias ? q + 2 * kv : 0) + (c.oBias ? c.hiddenSize : 0) + (c.qkNorm ? 2 * D : 0);
  const mlp = 3 * c.hiddenSize * c.intermediateSize;
  const norms = 2 * c.hiddenSize;
  const emb = c.vocabSize * c.hiddenSize;
  return c.numLayers * (attn + mlp + norms) + c.hiddenSize + emb * (c.tieWordEmbeddings ? 1 : 2);
}
