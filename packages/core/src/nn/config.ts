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
}

/** Vocabulary of the built-in byte-level tokenizer: 256 bytes + BOS, EOS, PAD. */
export const BYTE_VOCAB_SIZE = 259;

/**
 * Presets. `tiny` and `small` are ours (CI seconds; CPU suite minutes), sized
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

export function headDim(c: LlamaConfig): number {
  return c.hiddenSize / c.numHeads;
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
  if (Number.isInteger(c.hiddenSize) && Number.isInteger(c.numHeads) && c.numHeads > 0) {
    if (c.hiddenSize % c.numHeads !== 0) problems.push(`numHeads (${c.numHeads}) does not divide hiddenSize (${c.hiddenSize})`);
    else if ((c.hiddenSize / c.numHeads) % 2 !== 0) problems.push(`head dimension hiddenSize/numHeads = ${c.hiddenSize / c.numHeads} must be even for RoPE`);
  }
  if (Number.isInteger(c.numHeads) && Number.isInteger(c.numKvHeads) && c.numKvHeads > 0 && c.numHeads % c.numKvHeads !== 0) {
    problems.push(`numKvHeads (${c.numKvHeads}) does not divide numHeads (${c.numHeads})`);
  }
  if (problems.length) throw new Error(`${where}: ${problems.join('; ')}`);
}

/** Parameter count of the model (embedding counted once when tied). */
export function parameterCount(c: LlamaConfig): number {
  const D = headDim(c), kv = c.numKvHeads * D;
  const attn = c.hiddenSize * c.hiddenSize * 2 + c.hiddenSize * kv * 2;
  const mlp = 3 * c.hiddenSize * c.intermediateSize;
  const norms = 2 * c.hiddenSize;
  const emb = c.vocabSize * c.hiddenSize;
  return c.numLayers * (attn + mlp + norms) + c.hiddenSize + emb * (c.tieWordEmbeddings ? 1 : 2);
}
