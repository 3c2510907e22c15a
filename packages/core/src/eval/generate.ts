// Text generation with a KV cache: greedy, or sampled with temperature and
// top-k from a seeded random stream.
import type { LlamaModel } from '../nn/llama.js';
import { type DecodeActivations, FusedDecoder } from '../nn/decode_step.js';
import { KVCache } from '../nn/llama.js';
import { ropePositionLimit, ropePositionLimitText } from '../nn/rope_scaling.js';
import { Tensor, copyRows, hostValues } from '../tensor.js';
import { Rng } from '../util/rng.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 (default) = greedy */
  temperature?: number;
  /** sample among the k most likely tokens (0 = all) */
  topK?: number;
  seed?: number;
  /** stop after emitting this token */
  eos?: number | null;
  /** recompute the whole sequence every step instead of using the cache (reference path for tests) */
  noCache?: boolean;
  /** with the cache, run each generated token through the fused decode step
   * (nn/decode_step.ts: a few native calls, buffers reused) where it covers the
   * model; false: the op-by-op path (default true) */
  fusedDecode?: boolean;
  /** what the fused decode step's quantized projections multiply: 'i16'
   * (default: activations quantized to int16 per group, integer dot products),
   * 'f32' (the activations as they are) or 'i8' (INT-N and NF4/FP4 projections
   * with int8 activations, as llama.cpp rounds them; faster, coarser); see DecodeActivations */
  decodeActivations?: DecodeActivations;
}

export interface GenerateResult {
  tokens: number[];
  /** decode phase only (after the prompt) */
  decodeTokensPerSecond: number;
  prefillMs: number;
}

export function generate(model: LlamaModel, prompt: readonly number[], opts: GenerateOptions): GenerateResult {
  if (prompt.length === 0) throw new Error('generate: the prompt is empty (start it with BOS)');
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new Error(`generate: maxNewTokens must be an integer >= 0, got ${opts.maxNewTokens}`);
  const V = model.config.vocabSize;
  for (const t of prompt) if (!Number.isInteger(t) || t < 0 || t >= V) throw new Error(`generate: prompt token ${t} is outside [0, ${V})`);
  const total = prompt.length + opts.maxNewTokens;
  if (total > ropePositionLimit(model.config)) throw new Error(`generate: ${total} tokens exceed ${ropePositionLimitText(model.config)}`);
  const temperature = opts.temperature ?? 0, topK = opts.topK ?? 0;
  const rng = new Rng(opts.seed ?? 0);
  const out: number[] = [];
  const cache = opts.noCache ? null : new KVCache(model.config, 1, total, model.device);
  let fused: FusedDecoder | null = null;
  try {
    if (cache && opts.fusedDecode !== false) fused = FusedDecoder.create(model, cache, { activations: opts.decodeActivations });
    const t0 = performance.now();
    let next = nextToken(model, Int32Array.from(prompt), cache, temperature, topK, rng);
    const t1 = performance.now();
    const seq = [...prompt];
    while (out.length < opts.maxNewTokens) {
      out.push(next);
      seq.push(next);
      if (opts.eos !== undefined && opts.eos !== null && next === opts.eos) break;
      if (out.length === opts.maxNewTokens) break;
      if (fused) {
        const best = fused.step(next);
        next = temperature <= 0 ? best : pick(fused.logits, temperature, topK, rng);
      } else {
        next = nextToken(model, cache ? Int32Array.of(next) : Int32Array.from(seq), cache, temperature, topK, rng);
      }
    }
    const decodeMs = performance.now() - t1;
    return { tokens: out, decodeTokensPerSecond: out.length > 1 ? ((out.length - 1) * 1000) / decodeMs : 0, prefillMs: t1 - t0 };
  } finally {
    fused?.dispose();
    cache?.dispose();
  }
}

function nextToken(model: LlamaModel, ids: Int32Array, cache: KVCache | null, temperature: number, topK: number, rng: Rng): number {
  const idsT = Tensor.from(ids, [1, ids.length], { dtype: 'i32', category: 'activation' });
  const h = model.hidden(idsT, cache ?? undefined);
  idsT.dispose();
  const C = model.config.hiddenSize, T = ids.length;
  let last: Tensor;
  if (h.device === 'cpu') {
    last = Tensor.from((h.data() as Float32Array).subarray((T - 1) * C, T * C), [1, C], { category: 'activation' });
  } else {
    last = Tensor.zeros([1, C], { category: 'activation', device: h.device });
    copyRows(h, (T - 1) * C, 0, last, 0, 0, C, 1);
  }
  h.dispose();
  const logitsT = model.logits(last);
  last.dispose();
  const logits = (hostValues(logitsT) as Float32Array).slice();
  logitsT.dispose();
  return pick(logits, temperature, topK, rng);
}

/** argmax for temperature 0, else a sample from softmax(logits / temperature) over the top k. */
export function pick(logits: Float32Array, temperature: number, topK: number, rng: Rng): number {
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let idx = Array.from(logits.keys());
  if (topK > 0 && topK < logits.length) idx = idx.sort((a, b) => logits[b] - logits[a]).slice(0, topK);
  const m = Math.max(...idx.map((i) => logits[i]));
  const w = idx.map((i) => Math.exp((logits[i] - m) / temperature));
  let u = rng.next() * w.reduce((a, b) => a + b, 0);
  for (let j = 0; j < idx.length; j++) { u -= w[j]; if (u <= 0) return idx[j]; }
  return idx[idx.length - 1];
}
