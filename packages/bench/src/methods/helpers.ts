// Helpers the built-in method plugins (methods/*.ts) share: option lookups,
// the optimizer option and its validation, a frozen random model for the
// speed and memory rows, optimizer-state bytes for the planner and decode
// speed for deployable rows. methods.ts re-exports optimizerStateBytes and
// decodeTokensPerSecond, as before the plugins moved out of it.
import {
  ADAMW8BIT_BLOCK_SIZE, ADAMW8BIT_MIN_SIZE, BYTE_BOS, type DecodeActivations, type LlamaConfig, type LlamaModel, type OptimizerName, ByteTokenizer, generate,
} from '@tunebench/core';
import type { MethodSpec } from '../methods.js';
import { randomModel } from '../device.js';
import { benchDecodeActivations } from '../decode_rows.js';

export function positiveInteger(v: unknown): boolean {
  return Number.isInteger(v) && (v as number) > 0;
}

/** A model with random weights, frozen, with `apply` run on it (disposed if that throws). */
export function frozenRandom(config: LlamaConfig, seed: number, apply: (m: LlamaModel) => void): LlamaModel {
  const model = randomModel(config, { trainable: false, seed });
  try { apply(model); } catch (e) { model.dispose(); throw e; }
  return model;
}

/** Optimizer state bytes of a tensor of n elements. */
export function optimizerStateBytes(kind: OptimizerName): (n: number) => number {
  if (kind === 'adamw') return (n) => 8 * n;
  // 8-bit blockwise: two u8 codes per element and two fp32 absmax per block;
  // tensors under the minimum size keep fp32 state (core train/adamw8bit.ts)
  return (n) => (n < ADAMW8BIT_MIN_SIZE ? 8 * n : 2 * n + 8 * Math.ceil(n / ADAMW8BIT_BLOCK_SIZE));
}

export function optionOf(spec: MethodSpec, key: string): string | number | boolean | undefined {
  return spec.options?.[key];
}

export function optimizerOption(spec: MethodSpec): OptimizerName {
  const o = optionOf(spec, 'optimizer') ?? 'adamw';
  return o as OptimizerName;
}

export function validateOptimizer(spec: MethodSpec): string[] {
  const o = optionOf(spec, 'optimizer');
  return o === undefined || o === 'adamw' || o === 'adamw8bit' ? [] : [`options.optimizer must be 'adamw' or 'adamw8bit', got ${JSON.stringify(o)}`];
}

/** A deployable row's decode speed under the suite's activations (benchDecodeActivations: by default the fastest built), and which ran. */
export function decodeSpeed(model: LlamaModel, requested: DecodeActivations | undefined): { decodeTokensPerSecond: number; decodeActivations: DecodeActivations } {
  const activations = benchDecodeActivations(requested);
  return { decodeTokensPerSecond: decodeTokensPerSecond(model, undefined, activations), decodeActivations: activations };
}

/** Decode speed of a model: greedy tokens after a short prompt, one sequence, KV cache (best of 2). */
export function decodeTokensPerSecond(model: LlamaModel, newTokens = 32, activations?: DecodeActivations): number {
  // byte ids (speed does not depend on the values), folded into the model's vocabulary
  const tok = new ByteTokenizer();
  const prompt = [BYTE_BOS, ...tok.encode('Subject: meeting tomorrow')].map((id) => id % model.config.vocabSize);
  const n = Math.min(newTokens, model.config.maxPositionEmbeddings - prompt.length);
  let best = 0;
  for (let i = 0; i < 2; i++) best = Math.max(best, generate(model, prompt, { maxNewTokens: n, decodeActivations: activations }).decodeTokensPerSecond);
  return best;
}
