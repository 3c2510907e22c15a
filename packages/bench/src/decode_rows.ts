// Decode rows beside llama.cpp: for each deployable format with a GGUF form,
// a model of the suite's decode shape (a preset, random weights) held the way
// the deployable holds its projections, exported to GGUF with the core
// exporter, and generated from by our generate() and by llama.cpp
// (node-llama-cpp's prebuilt CPU build, no GPU, never built or downloaded):
// the same prompt ids, the same threads, greedy, newTokens each. Recorded:
// prefill and decode tokens/s of both (the best of `repeats` interleaved
// runs), their ratio (ours / llama.cpp) and how many greedy tokens agree:
// free-running (each side from its own text: positions alike, first
// difference) and teacher-forced (llama.cpp's greedy token after the prompt
// and our tokens, in one controlledEvaluate: a difference does not carry on).
//
// Formats (what "exact" means: the file holds our weights):
//   bf16 projections   -> F16 (exact: bf16 values are fp16 values, but for
//                         |x| < 2^-14 where fp16 is subnormal) and Q8_0
//                         (requantized: our side stays bf16, so not exact)
//   INT4 g32           -> Q4_1 (exact up to fp16 rounding of each group's
//                         scale and offset: the same codes)
//   INT8 g32           -> Q8_0 (exact): our INT8 model is built on Q8_0's
//                         symmetric grid (codes q + 128, offset -128 d); an
//                         affine INT8 group has no Q8_0 form, and our kernel's
//                         speed does not depend on the values
//   other INT-N widths or groups, NF4/FP4: no GGUF form (status no-gguf;
//                         ours timed alone at the decode shape)
// Embeddings and the tied head are F16 in every file (the exporter's default)
// and bf16 on our side. llama.cpp's F16 and quantized matmuls round the
// activations (to fp16, or to 8-bit blocks), so greedy tokens of random
// weights can part after a near-tie: the agreement is recorded, not assumed.
// Timing: prefill is the prompt and the first token (as generate()'s
// prefillMs), decode the newTokens - 1 tokens after it; llama.cpp's include
// node-llama-cpp's per-token JavaScript (its async generator).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BYTE_BOS, ByteTokenizer, type DecodeActivations, DenseLinear, decodeActivationsBuilt, fastestDecodeActivations, IntNLinear, type GgufWeightType, type LlamaConfig, type LlamaModel, type QuantizedIntN, Tensor, exportGguf, f16ToF32,
  type LlamaCppLib, Quant4Linear, generate, intnBytes, isPreset, loadLlamaCpp as loadCoreLlamaCpp, native, preset, quantize4bit, quantizeQ8_0,
} from '@tunebench/core';
import { groupwiseOf, intnLinear, qaloraConfig } from '@tunebench/qa-lora';
import { randomModel } from './device.js';
import type { DecodeRow, DeployWeights } from './record.js';

/** The decode shape when a suite names none: SmolLM-135M's blocks (hidden 576, 30 layers, vocabulary 49152). */
export const DEFAULT_DECODE_SHAPE = 'smollm-135m';
export const DECODE_PROMPT_TOKENS = 32;
export const DECODE_NEW_TOKENS = 128;
export const DECODE_REPEATS = 2;
/** What the bench's decode steps (the deployables' decode tokens/s and the
 * decode rows) have their quantized projections multiply: `requested` (a
 * suite's decodeActivations), by default the fastest this build has ('i8'
 * with AVX-512 VNNI: x rounded to int8 per group, as llama.cpp's Q8
 * activations), reduced to what the build runs (core's decodeActivationsBuilt),
 * so that a row records what ran. */
export function benchDecodeActivations(requested?: DecodeActivations): DecodeActivations {
  return decodeActivationsBuilt(requested ?? fastestDecodeActivations());
}

export type { LlamaCppLib } from '@tunebench/core';
export type LlamaCppLoader = () => Promise<LlamaCppLib>;

/** node-llama-cpp with its prebuilt CPU binary (core's loadLlamaCpp), maxThreads 0:
 * each context uses exactly the threads it asks for. */
export const loadLlamaCpp: LlamaCppLoader = () => loadCoreLlamaCpp({ maxThreads: 0 });

/** The GGUF forms of a deployable's weights: which files llama.cpp runs, or why there is none. */
export function ggufForms(w: DeployWeights): { format: 'F16' | 'Q8_0' | 'Q4_1'; exact: boolean }[] | string {
  if (w.kind === 'bf16') return [{ format: 'F16', exact: true }, { format: 'Q8_0', exact: false }];
  if (w.kind === '4bit') return `llama.cpp has no ${w.format.toUpperCase()} blocks (its 4-bit formats are affine or k-quants); no GGUF form holds these weights`;
  if (w.bits === 4 && w.groupSize === 32) return [{ format: 'Q4_1', exact: true }];
  if (w.bits === 8 && w.groupSize === 32) return [{ format: 'Q8_0', exact: true }];
  return `INT${w.bits} g${w.groupSize} has no exact GGUF form (Q4_1 holds INT4 in groups of 32, Q8_0 symmetric INT8 in groups of 32)`;
}

/** How our side holds the projections for a row. */
function weightsText(w: DeployWeights): string {
  if (w.kind === 'bf16') return 'bf16';
  if (w.kind === '4bit') return `${w.format.toUpperCase()} b${w.blockSize}`;
  return w.bits === 8 ? `INT8 g${w.groupSize} (Q8_0's symmetric grid)` : `INT${w.bits} g${w.groupSize} (RTN)`;
}

export interface DecodeRowOptions {
  /** a model preset (core's PRESETS); random weights */
  shape: string;
  /** default: the native core's thread count (TUNEBENCH_THREADS) */
  threads?: number;
  promptTokens?: number;
  newTokens?: number;
  repeats?: number;
  seed?: number;
  /** what our quantized projections multiply in the decode steps (default: benchDecodeActivations()) */
  activations?: DecodeActivations;
  /** how node-llama-cpp is loaded (tests pass one that fails) */
  loadLlamaCpp?: LlamaCppLoader;
  /** the model's config in place of the preset's (tests: a small model with a padded vocabulary); `shape` names it */
  config?: LlamaConfig;
}

/** The std of a projection's random weights: PROJECTION_GAIN / sqrt(its input width). */
export const PROJECTION_GAIN = 1;

/**
 * The random-weight model of the decode shape holding its projections as `w`
 * (bf16 or INT-N). The embedding (the tied head) has std 0.02 (randomModel),
 * the projections std 1 / sqrt(in) (variance-preserving). With every weight
 * at 0.02 the blocks barely move the residual stream and greedy decoding
 * settles on one token repeated (SmolLM-135M's shape: 3 distinct tokens in
 * 128), so agreement would prove little; at 1 / sqrt(in) the next token
 * depends on the context (SmolLM-135M: 40 distinct in 128). A larger gain
 * makes the network chaotic: at 2 / sqrt(in) llama.cpp's 8-bit activations
 * alone moved SmolLM-135M's Q4_1 teacher-forced agreement from 118/128 to
 * 42/128. Speed does not depend on the values.
 */
export function decodeShapeModel(shape: string | LlamaConfig, w: DeployWeights, seed = 0): LlamaModel {
  const cfg = typeof shape === 'string' ? preset(shape) : shape;
  const model = randomModel(cfg, { trainable: false, seed, scale: (name, dims) => (name.endsWith('_proj.weight') ? PROJECTION_GAIN / (0.02 * Math.sqrt(dims[1])) : 1) });
  try {
    if (w.kind === 'intn') {
      for (const [name, l] of [...model.linears()]) {
        if (!(l instanceof DenseLinear)) continue;
        const q = w.bits === 8 ? new IntNLinear(name, q8GridIntN(l.weight.value, w.groupSize)) : intnLinear(name, l.weight.value, qaloraConfig({ bits: w.bits, groupSize: w.groupSize, quantizer: 'rtn' }));
        model.replaceLinear(name, q).dispose();
      }
    } else if (w.kind === '4bit') {
      // as QLoRA holds its base: double-quantized absmax
      for (const [name, l] of [...model.linears()]) {
        if (!(l instanceof DenseLinear)) continue;
        if (w.format !== 'nf4' && w.format !== 'fp4') throw new Error(`decodeShapeModel: unknown 4-bit format '${w.format}'`);
        model.replaceLinear(name, new Quant4Linear(name, quantize4bit(l.weight.value, { format: w.format, blockSize: w.blockSize, doubleQuant: true }))).dispose();
      }
    }
    return model;
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** INT8 groups of 32 on Q8_0's grid: q = Q8_0's int8 code, code q + 128, scale d (fp16), offset -128 d: w = d q exactly. */
function q8GridIntN(weight: Tensor, groupSize: number): QuantizedIntN {
  if (groupSize !== 32) throw new Error(`INT8 on Q8_0's grid needs groups of 32, got ${groupSize}`);
  const [rows, cols] = weight.shape as [number, number];
  const blocks = quantizeQ8_0(weight.toFloat32()), nb = (rows * cols) / 32;
  const dv = new DataView(blocks.buffer, blocks.byteOffset, blocks.byteLength);
  const codes = new Uint8Array(rows * cols), scales = new Float32Array(nb), offsets = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    const d = f16ToF32(dv.getUint16(b * 34, true));
    scales[b] = d;
    offsets[b] = -128 * d;
    for (let j = 0; j < 32; j++) codes[b * 32 + j] = dv.getInt8(b * 34 + 2 + j) + 128;
  }
  const opts = { category: 'frozen' as const };
  return {
    kind: 'intn', bits: 8, groupSize: 32, shape: [rows, cols], numel: rows * cols, quantizer: 'rtn', bytes: intnBytes([rows, cols], 8, 32),
    codes: Tensor.from(codes, [rows * cols], { ...opts, dtype: 'u8' }), scales: Tensor.from(scales, [rows, cols / 32], opts), offsets: Tensor.from(offsets, [rows, cols / 32], opts),
  };
}

/** The fixed prompt: BOS and the bytes of a sentence, `n` ids in all. */
export function decodePrompt(n: number): number[] {
  const text = 'Subject: the quarterly meeting moves to Thursday at ten; please bring the budget figures and the draft of the report. ';
  const bytes = new ByteTokenizer().encode(text.repeat(Math.ceil(n / text.length) + 1));
  return [BYTE_BOS, ...bytes.slice(0, n - 1)];
}

export interface Timed { tokens: number[]; prefillTokensPerSecond: number; decodeTokensPerSecond: number }

function oursOnce(model: LlamaModel, prompt: number[], n: number, act: DecodeActivations): Timed {
  const r = generate(model, prompt, { maxNewTokens: n, decodeActivations: act });
  return { tokens: r.tokens, prefillTokensPerSecond: (prompt.length * 1000) / r.prefillMs, decodeTokensPerSecond: r.decodeTokensPerSecond };
}

type Sequence = Awaited<ReturnType<Awaited<ReturnType<LlamaCppLib['llama']['loadModel']>>['createContext']>>['getSequence'] extends () => infer S ? S : never;

/** llama.cpp's greedy tokens from `prompt` on a cleared sequence: prefill is the
 * prompt and the first token (as ours), decode the n - 1 tokens after it. */
async function llamaCppOnce(seq: Sequence, prompt: number[], n: number): Promise<Timed> {
  await seq.clearHistory();
  const tokens: number[] = [];
  const t0 = performance.now();
  let t1 = t0, t2 = t0;
  type Token = import('node-llama-cpp').Token;
  for await (const t of seq.evaluate(prompt as unknown as Token[], { temperature: 0, yieldEogToken: true })) {
    t2 = performance.now();
    if (tokens.length === 0) t1 = t2;
    tokens.push(t as unknown as number);
    if (tokens.length === n) break;
  }
  if (tokens.length < n) throw new Error(`llama.cpp stopped after ${tokens.length} of ${n} tokens`);
  return { tokens, prefillTokensPerSecond: (prompt.length * 1000) / (t1 - t0), decodeTokensPerSecond: n > 1 ? ((n - 1) * 1000) / (t2 - t1) : 0 };
}

/** Positions where llama.cpp's greedy next token, given the prompt and our
 * tokens before it (teacher-forced: a difference does not carry on), is ours. */
async function teacherForcedAgree(seq: Sequence, prompt: number[], ours: number[]): Promise<number> {
  await seq.clearHistory();
  type Token = import('node-llama-cpp').Token;
  const input = [...prompt, ...ours.slice(0, -1)];
  const at = prompt.length - 1;
  const items = input.map((t, i) => (i >= at ? [t as unknown as Token, { generateNext: { token: true, options: { temperature: 0 } } }] as const : t as unknown as Token));
  const out = await seq.controlledEvaluate(items as Parameters<Sequence['controlledEvaluate']>[0]);
  let same = 0;
  for (let i = 0; i < ours.length; i++) if ((out[at + i]?.next.token as unknown as number | undefined) === ours[i]) same++;
  return same;
}

/** The lowest and highest of ours[i] / cpp[i] over the interleaved rounds. */
export function roundRange(ours: readonly Timed[], cpp: readonly Timed[], f: (r: Timed) => number): [number, number] {
  const r = ours.map((o, i) => f(o) / f(cpp[i]));
  return [Math.min(...r), Math.max(...r)];
}

function best(runs: Timed[]): { decodeTokensPerSecond: number; prefillTokensPerSecond: number } {
  return { decodeTokensPerSecond: Math.max(...runs.map((r) => r.decodeTokensPerSecond)), prefillTokensPerSecond: Math.max(...runs.map((r) => r.prefillTokensPerSecond)) };
}

/** Greedy agreement: identical positions, and the first that differs (a.length when none). */
export function tokenAgreement(a: readonly number[], b: readonly number[]): { tokensAgree: number; firstDivergence: number } {
  let same = 0, first = -1;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) same++;
    else if (first < 0) first = i;
  }
  return { tokensAgree: same, firstDivergence: first < 0 ? a.length : first };
}

const rowCache = new Map<string, Promise<DecodeRow[]>>();

/** The decode rows of a deployable's weights at a decode shape: one per GGUF
 * form (one row saying why when there is none). Never throws: a failure is
 * the row's status. The same weights, shape and settings are measured once
 * per process (every run of a suite shares them). */
export function decodeRows(w: DeployWeights, opts: DecodeRowOptions): Promise<DecodeRow[]> {
  const key = JSON.stringify([w, opts.shape, opts.config ?? null, opts.threads ?? native.getThreads(), opts.promptTokens, opts.newTokens, opts.repeats, opts.seed, benchDecodeActivations(opts.activations), opts.loadLlamaCpp ? 'custom' : 'default']);
  let p = rowCache.get(key);
  if (!p) {
    p = computeRows(w, opts);
    rowCache.set(key, p);
  }
  return p;
}

async function computeRows(w: DeployWeights, opts: DecodeRowOptions): Promise<DecodeRow[]> {
  const threads = opts.threads ?? native.getThreads();
  const promptTokens = opts.promptTokens ?? DECODE_PROMPT_TOKENS, newTokens = opts.newTokens ?? DECODE_NEW_TOKENS;
  const repeats = opts.repeats ?? DECODE_REPEATS;
  const activations = benchDecodeActivations(opts.activations);
  const base = { shape: opts.shape, weights: weightsText(w), threads, promptTokens, newTokens, repeats, activations };
  const forms = ggufForms(w);
  const o = { ...opts, threads, promptTokens, newTokens, repeats };
  if (typeof forms === 'string') {
    // no llama.cpp form: ours alone at the decode shape
    const row: DecodeRow = { ...base, format: null, exact: false, status: 'no-gguf', statusText: forms };
    let model: LlamaModel | null = null;
    try {
      model = decodeShapeModel(decodeConfig(o), w, o.seed ?? 0);
      const ours: Timed[] = [];
      for (let i = 0; i < repeats; i++) ours.push(oursOnce(model, decodePrompt(promptTokens), newTokens, activations));
      row.ours = best(ours);
      row.statusText = `${forms}; ours timed alone`;
    } catch (e) {
      row.status = 'error';
      row.statusText = `${forms}; ours: ${(e as Error).message}`;
    } finally {
      model?.dispose();
    }
    return [row];
  }
  let model: LlamaModel | null = null;
  try {
    // one model for every form of these weights
    const cfg = decodeConfig(o);
    model = decodeShapeModel(cfg, w, o.seed ?? 0);
    const rows: DecodeRow[] = [];
    for (const f of forms) {
      const row: DecodeRow = { ...base, format: f.format, exact: f.exact, status: 'ok' };
      try {
        Object.assign(row, await compareOne(model, w, f.format, o));
      } catch (e) {
        row.status = 'error';
        row.statusText = (e as Error).message;
      }
      rows.push(row);
    }
    return rows;
  } catch (e) {
    return forms.map((f) => ({ ...base, format: f.format, exact: f.exact, status: 'error' as const, statusText: (e as Error).message }));
  } finally {
    model?.dispose();
  }
}

/** The decode shape's config; throws saying why it cannot be used. */
function decodeConfig(o: DecodeRowOptions & { promptTokens: number; newTokens: number; repeats: number }): LlamaConfig {
  if (!o.config && !isPreset(o.shape)) throw new Error(`decode shape '${o.shape}' is not a model preset`);
  const cfg = o.config ?? preset(o.shape);
  if (cfg.modelType !== undefined && cfg.modelType !== 'llama') throw new Error(`decode shape '${o.shape}' is a ${cfg.modelType} model; the decode rows use plain Llama shapes`);
  if (o.promptTokens < 1 || o.newTokens < 1 || o.repeats < 1) throw new Error('decode rows need promptTokens, newTokens and repeats >= 1');
  if (o.promptTokens + o.newTokens > cfg.maxPositionEmbeddings) throw new Error(`${o.promptTokens} + ${o.newTokens} tokens exceed ${o.shape}'s ${cfg.maxPositionEmbeddings} positions`);
  return cfg;
}

async function compareOne(model: LlamaModel, w: DeployWeights, format: 'F16' | 'Q8_0' | 'Q4_1', o: DecodeRowOptions & { threads: number; promptTokens: number; newTokens: number; repeats: number }): Promise<Partial<DecodeRow>> {
  const prompt = decodePrompt(o.promptTokens);
  let lib: LlamaCppLib | null = null, unavailable = '';
  try { lib = await (o.loadLlamaCpp ?? loadLlamaCpp)(); } catch (e) { unavailable = (e as Error).message; }
  const dir = mkdtempSync(join(tmpdir(), 'tb-decode-rows-'));
  try {
    if (!lib) {
      const ours: Timed[] = [];
      for (let i = 0; i < o.repeats; i++) ours.push(oursOnce(model, prompt, o.newTokens, benchDecodeActivations(o.activations)));
      return { status: 'unavailable', statusText: `${unavailable}; ours timed alone`, ours: best(ours) };
    }
    const path = join(dir, `${o.shape}-${format}.gguf`);
    const type = format.toLowerCase() as GgufWeightType;
    exportGguf(model, path, {
      type, tokenizer: new ByteTokenizer(), padVocabulary: true,
      ...(format === 'Q4_1' && w.kind === 'intn' ? { groupwise: groupwiseOf(model) } : {}),
    });
    const cppModel = await lib.llama.loadModel({ modelPath: path, gpuLayers: 0 });
    try {
      const ctx = await cppModel.createContext({
        contextSize: Math.max(256, Math.ceil((o.promptTokens + o.newTokens) / 256) * 256), batchSize: o.promptTokens + o.newTokens,
        threads: { ideal: o.threads, min: o.threads }, sequences: 1,
      });
      try {
        const seq = ctx.getSequence();
        const ours: Timed[] = [], cpp: Timed[] = [];
        for (let i = 0; i < o.repeats; i++) {
          ours.push(oursOnce(model, prompt, o.newTokens, benchDecodeActivations(o.activations)));
          cpp.push(await llamaCppOnce(seq, prompt, o.newTokens));
        }
        const b = best(ours), c = best(cpp);
        const forced = await teacherForcedAgree(seq, prompt, ours[0].tokens);
        const notes: string[] = [];
        if (ours.some((r) => r.tokens.join() !== ours[0].tokens.join())) notes.push('our greedy tokens differed between repeats');
        if (cpp.some((r) => r.tokens.join() !== cpp[0].tokens.join())) notes.push("llama.cpp's greedy tokens differed between repeats");
        return {
          status: 'ok', ...(notes.length ? { statusText: notes.join('; ') } : {}),
          ours: b, llamaCpp: { ...c, version: lib.version },
          ratioDecode: b.decodeTokensPerSecond / c.decodeTokensPerSecond, ratioPrefill: b.prefillTokensPerSecond / c.prefillTokensPerSecond,
          ratioDecodeRange: roundRange(ours, cpp, (r) => r.decodeTokensPerSecond), ratioPrefillRange: roundRange(ours, cpp, (r) => r.prefillTokensPerSecond),
          ...tokenAgreement(ours[0].tokens, cpp[0].tokens), teacherForcedAgree: forced,
        };
      } finally {
        await ctx.dispose();
      }
    } finally {
      await cppModel.dispose();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
