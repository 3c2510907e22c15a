// GGUF export for llama.cpp (architectures `llama`, `qwen2`, `qwen3`; see
// ggufArchitecture), and a reader.
//
// File layout (GGUF version 3, ggml-org/ggml docs/gguf.md, "File Structure"):
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
//   metadata kv:  gguf_string key | u32 value_type | value
//   tensor info:  gguf_string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset
//   zero padding to general.alignment, then the data area; each tensor's
//   offset is relative to the data area and a multiple of the alignment.
// gguf_string = u64 byte length + UTF-8 bytes (no NUL). Little-endian throughout.
// ne[0] is the fastest-varying dimension: our row-major W [out, in] is ne = [in, out].
//
// Block layouts (llama.cpp ggml/src/ggml-common.h; reference quantizers
// quantize_row_q8_0_ref / quantize_row_q4_1_ref in ggml/src/ggml-quants.c):
//   Q8_0, 34 bytes per 32 values:  fp16 d | int8 qs[32];           x = d·q
//     d = amax/127, q = roundf(x/d) (half away from zero)
//   Q4_1, 20 bytes per 32 values:  fp16 d | fp16 m | u8 qs[16];    x = d·q + m
//     d = (max-min)/15, m = min, q = min(15, trunc((x-min)/d + 0.5));
//     qs[j] holds element j in its LOW nibble and element j+16 in its HIGH nibble.
// Blocks run along ne[0] (a row), so every quantized row length must be a
// multiple of 32.
//
// What is exact: the norms (F32); token_embd and output up to fp16 rounding
// (F16 in every export unless Q8_0 is asked for: the head decides the top
// token, and 4-bit round-to-nearest of it changed llama.cpp's predictions);
// projections given group-wise (a merged QA-LoRA INT4 g32 model) up to the
// fp16 rounding of each block's d and m; F16 projections up to fp16 rounding.
// Q8_0 and Q4_1 projections of a dense model are requantized (not exact).
//
// RoPE: our model rotates HF-style halves (x[i], x[i+D/2]) (ops/rope.ts);
// llama.cpp's `llama` architecture uses LLAMA_ROPE_TYPE_NORM, which rotates
// adjacent pairs (x[2i], x[2i+1]) with the same frequencies. Like llama.cpp's
// convert_hf_to_gguf.py (LlamaModel.permute), we reorder the rows of q_proj and
// k_proj within each head: new row 2i+j = old row j·D/2+i. q·k is a sum over
// the head dimension, so permuting both alike leaves attention unchanged and
// llama.cpp computes the same function. v/o are not touched.
import { closeSync, fstatSync, readSync } from 'node:fs';
import { f16ToF32, f32ToF16 } from '../dtype.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { BYTE_BOS, BYTE_EOS, BYTE_PAD } from '../data/tokenizer.js';
import { BYTE_VOCAB_SIZE, headDim, type LlamaConfig } from '../nn/config.js';
import type { LlamaModel } from '../nn/llama.js';
import { ropeFrequencies, ropeInvFreqBase, yarnAttentionScale } from '../nn/rope_scaling.js';
import { isFrozenBase, type LinearLayer } from '../nn/module.js';
import { openRegularFile } from '../util/files.js';
import { writeFileAtomic } from './atomic.js';

export const GGUF_MAGIC = 0x46554747;  // the bytes "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_ALIGNMENT = 32;
/** values per block of Q8_0 and Q4_1 (QK8_0, QK4_1 in ggml-common.h) */
export const GGML_QK = 32;

// ---------------------------------------------------------------------------
// ggml tensor types: id, values per block, bytes per block (ggml/docs/gguf.md
// enum ggml_type; sizes from the block structs of ggml-common.h). Only F32,
// F16, Q8_0 and Q4_1 are dequantized; the others are known so that a reader
// can size them and name them in errors.

interface GgmlTypeInfo { readonly id: number; readonly name: string; readonly block: number; readonly bytes: number }
const TYPE_LIST: GgmlTypeInfo[] = [
  { id: 0, name: 'F32', block: 1, bytes: 4 }, { id: 1, name: 'F16', block: 1, bytes: 2 },
  { id: 2, name: 'Q4_0', block: 32, bytes: 18 }, { id: 3, name: 'Q4_1', block: 32, bytes: 20 },
  { id: 6, name: 'Q5_0', block: 32, bytes: 22 }, { id: 7, name: 'Q5_1', block: 32, bytes: 24 },
  { id: 8, name: 'Q8_0', block: 32, bytes: 34 }, { id: 9, name: 'Q8_1', block: 32, bytes: 36 },
  { id: 10, name: 'Q2_K', block: 256, bytes: 84 }, { id: 11, name: 'Q3_K', block: 256, bytes: 110 },
  { id: 12, name: 'Q4_K', block: 256, bytes: 144 }, { id: 13, name: 'Q5_K', block: 256, bytes: 176 },
  { id: 14, name: 'Q6_K', block: 256, bytes: 210 }, { id: 15, name: 'Q8_K', block: 256, bytes: 292 },
  { id: 24, name: 'I8', block: 1, bytes: 1 }, { id: 25, name: 'I16', block: 1, bytes: 2 },
  { id: 26, name: 'I32', block: 1, bytes: 4 }, { id: 27, name: 'I64', block: 1, bytes: 8 },
  { id: 28, name: 'F64', block: 1, bytes: 8 }, { id: 30, name: 'BF16', block: 1, bytes: 2 },
];
const TYPE_BY_ID = new Map(TYPE_LIST.map((t) => [t.id, t]));
const TYPE_BY_NAME = new Map(TYPE_LIST.map((t) => [t.name, t]));

/** llama_ftype ("general.file_type") of a mostly-<type> file (llama.h: MOSTLY_F16 = 1, MOSTLY_Q4_1 = 3, MOSTLY_Q8_0 = 7). */
const FILE_TYPE = { f16: 1, q4_1: 3, q8_0: 7 } as const;

// gguf_metadata_value_type (ggml/docs/gguf.md)
const VALUE_TYPES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'] as const;
export type GgufValueType = (typeof VALUE_TYPES)[number];
export type GgufScalarType = Exclude<GgufValueType, 'array'>;
export type GgufScalar = number | bigint | boolean | string;
/** One metadata value; arrays carry their element type (nested arrays have itemType 'array'). */
export type GgufKv =
  | { type: GgufScalarType; value: GgufScalar }
  | { type: 'array'; itemType: GgufValueType; value: (GgufScalar | GgufKv)[] };

// ---------------------------------------------------------------------------
// Block quantizers and dequantizers (Float32 arithmetic, as ggml's reference C)

const fr = Math.fround;

/** x [n] f32 (n a multiple of 32) -> Q8_0 blocks, as quantize_row_q8_0_ref */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % GGML_QK) throw new RangeError(`quantizeQ8_0: length ${x.length} is not a multiple of ${GGML_QK}`);
  const nb = x.length / GGML_QK, out = new Uint8Array(nb * 34), dv = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    const o = b * 34, base = b * GGML_QK;
    let amax = 0;
    for (let j = 0; j < GGML_QK; j++) amax = Math.max(amax, Math.abs(x[base + j]));
    const d = fr(amax / 127), id = d ? fr(1 / d) : 0;
    dv.setUint16(o, f32ToF16(d), true);
    for (let j = 0; j < GGML_QK; j++) {
      const v = fr(x[base + j] * id);
      dv.setInt8(o + 2 + j, Math.sign(v) * Math.round(Math.abs(v)));  // roundf: half away from zero
    }
  }
  return out;
}

/** x [n] f32 (n a multiple of 32) -> Q4_1 blocks, as quantize_row_q4_1_ref */
export function quantizeQ4_1(x: Float32Array): Uint8Array {
  if (x.length % GGML_QK) throw new RangeError(`quantizeQ4_1: length ${x.length} is not a multiple of ${GGML_QK}`);
  const nb = x.length / GGML_QK, out = new Uint8Array(nb * 20), dv = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    const o = b * 20, base = b * GGML_QK;
    let min = Infinity, max = -Infinity;
    for (let j = 0; j < GGML_QK; j++) { const v = x[base + j]; if (v < min) min = v; if (v > max) max = v; }
    const d = fr((max - min) / 15), id = d ? fr(1 / d) : 0;
    dv.setUint16(o, f32ToF16(d), true);
    dv.setUint16(o + 2, f32ToF16(min), true);
    for (let j = 0; j < GGML_QK / 2; j++) {
      const lo = Math.min(15, Math.trunc(fr(fr(fr(x[base + j] - min) * id) + 0.5)));
      const hi = Math.min(15, Math.trunc(fr(fr(fr(x[base + j + 16] - min) * id) + 0.5)));
      out[o + 4 + j] = lo | (hi << 4);
    }
  }
  return out;
}

/** Group-wise affine INT4 weight, group size 32 along each row: w = scale·q + offset.
 * For W [out, in]: codes[r·in + c] in 0..15, scales/offsets[(r·in + c) / 32]. */
export interface GroupwiseInt4 {
  bits: 4;
  groupSize: 32;
  codes: Uint8Array;
  scales: Float32Array;
  offsets: Float32Array;
}

/** A group-wise INT4 weight -> Q4_1 blocks with d = fp16(scale), m = fp16(offset)
 * and the codes unchanged: exact up to the fp16 rounding of d and m. */
export function groupwiseToQ4_1(g: GroupwiseInt4, numel: number, what = 'weight'): Uint8Array {
  checkGroupwise(g, numel, what);
  const nb = numel / GGML_QK, out = new Uint8Array(nb * 20), dv = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    const o = b * 20, base = b * GGML_QK;
    dv.setUint16(o, f32ToF16(g.scales[b]), true);
    dv.setUint16(o + 2, f32ToF16(g.offsets[b]), true);
    for (let j = 0; j < GGML_QK / 2; j++) out[o + 4 + j] = g.codes[base + j] | (g.codes[base + j + 16] << 4);
  }
  return out;
}

function checkGroupwise(g: GroupwiseInt4, numel: number, what: string): void {
  if (typeof g !== 'object' || g === null) throw new TypeError(`${what}: groupwise weight must be an object {bits, groupSize, codes, scales, offsets}`);
  if (g.bits !== 4) throw new RangeError(`${what}: groupwise weight has bits ${String(g.bits)}; only 4-bit weights map onto Q4_1`);
  if (g.groupSize !== GGML_QK) throw new RangeError(`${what}: groupwise weight has group size ${String(g.groupSize)}; Q4_1 blocks hold exactly ${GGML_QK} values`);
  if (!(g.codes instanceof Uint8Array) || g.codes.length !== numel) {
    throw new RangeError(`${what}: groupwise codes must be a Uint8Array of ${numel} (one code per element), got ${g.codes?.constructor?.name} of ${g.codes?.length}`);
  }
  for (const k of ['scales', 'offsets'] as const) {
    const a = g[k];
    if (!(a instanceof Float32Array) || a.length !== numel / GGML_QK) {
      throw new RangeError(`${what}: groupwise ${k} must be a Float32Array of ${numel / GGML_QK} (one per group of ${GGML_QK}), got ${a?.constructor?.name} of ${a?.length}`);
    }
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i]) || Math.abs(a[i]) > 65504) throw new RangeError(`${what}: groupwise ${k}[${i}] = ${a[i]} is not a finite fp16 value (|x| <= 65504)`);
    }
  }
  for (let i = 0; i < numel; i++) if (g.codes[i] > 15) throw new RangeError(`${what}: groupwise codes[${i}] = ${g.codes[i]} is not a 4-bit code (0..15)`);
}

/** Q8_0 blocks -> f32 values (x = d·q) */
export function dequantizeQ8_0(bytes: Uint8Array, numel: number): Float32Array {
  const out = new Float32Array(numel), dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < numel / GGML_QK; b++) {
    const d = f16ToF32(dv.getUint16(b * 34, true));
    for (let j = 0; j < GGML_QK; j++) out[b * GGML_QK + j] = d * dv.getInt8(b * 34 + 2 + j);
  }
  return out;
}

/** Q4_1 blocks -> f32 values (x = d·q + m; low nibble j, high nibble j+16) */
export function dequantizeQ4_1(bytes: Uint8Array, numel: number): Float32Array {
  const out = new Float32Array(numel), dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < numel / GGML_QK; b++) {
    const o = b * 20, d = f16ToF32(dv.getUint16(o, true)), m = f16ToF32(dv.getUint16(o + 2, true));
    for (let j = 0; j < GGML_QK / 2; j++) {
      const q = bytes[o + 4 + j];
      out[b * GGML_QK + j] = d * (q & 0xf) + m;
      out[b * GGML_QK + j + 16] = d * (q >> 4) + m;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// RoPE row order

/** For a projection with `heads` heads of size D: perm[newRow] = oldRow, taking
 * HF rotate-half order to llama.cpp's adjacent pairs (new 2i+j = old j·D/2+i). */
export function ropeRowPermutation(heads: number, D: number): Int32Array {
  const perm = new Int32Array(heads * D), h2 = D / 2;
  for (let h = 0; h < heads; h++) for (let i = 0; i < h2; i++) for (let j = 0; j < 2; j++) perm[h * D + 2 * i + j] = h * D + j * h2 + i;
  return perm;
}

/** rows [perm.length, rowLen] reordered: out row r = in row perm[r] */
export function permuteRows<T extends Float32Array | Uint8Array>(x: T, rowLen: number, perm: Int32Array): T {
  const out = new (x.constructor as new (n: number) => T)(x.length);
  for (let r = 0; r < perm.length; r++) out.set(x.subarray(perm[r] * rowLen, (perm[r] + 1) * rowLen), r * rowLen);
  return out;
}

// ---------------------------------------------------------------------------
// Writer

export type GgufWeightType = 'f16' | 'q8_0' | 'q4_1';
const WEIGHT_TYPES: readonly GgufWeightType[] = ['f16', 'q8_0', 'q4_1'];

export interface ExportGgufOptions {
  /** storage of the 2-D weights (norms are always F32) */
  type: GgufWeightType;
  /** the model's tokenizer; the byte tokenizer (ByteTokenizer) is supported */
  tokenizer: Tokenizer;
  /** general.name (default 'tunebench') */
  name?: string;
  /** a weight whose row length is not a multiple of 32 cannot be Q8_0/Q4_1:
   * 'error' (default) refuses the export naming every such tensor; 'f16'
   * writes those tensors as F16 (llama.cpp's converter falls back the same way) */
  indivisible?: 'error' | 'f16';
  /** weights given as group-wise INT4 (group 32), by Hugging Face parameter
   * name (e.g. model.layers.0.self_attn.q_proj.weight): written as exact Q4_1
   * blocks in place of the model's own weight. Requires type 'q4_1'. */
  groupwise?: (name: string) => GroupwiseInt4 | undefined;
  /** a model with a sliding window (Mistral) is refused unless this is true:
   * llama.cpp's `llama` architecture, which Mistral is written as (as
   * llama.cpp's converter does), attends to every earlier position */
  fullAttention?: boolean;
  /** storage of token_embd and output (the head; with tied embeddings
   * llama.cpp uses token_embd for it) whatever `type` is: 'f16' (default),
   * the model's values up to fp16 rounding, or 'q8_0' on request (half the
   * bytes; its error is measured and returned in the summary). They are never
   * written as Q4_1: 4-bit round-to-nearest of the head changes the model's
   * predictions. */
  embeddings?: GgufEmbeddingType;
  /** a model whose vocab_size exceeds the byte tokenizer's 259 ids (a
   * published shape with random weights, timed for speed): true writes ids
   * 259..vocab_size-1 as unused tokens ('<unused259>', ..., token type UNUSED)
   * so that llama.cpp's vocabulary is as large as the model's embedding and
   * head. Text still tokenizes to byte tokens only; the extra ids are reached
   * by token id (or generated). Default false: such a model is refused. */
  padVocabulary?: boolean;
}

export type GgufEmbeddingType = 'f16' | 'q8_0';
const EMBEDDING_TYPES: readonly GgufEmbeddingType[] = ['f16', 'q8_0'];

/** How far a written tensor is from the model's f32 values. */
export interface GgufTensorError {
  /** max |written - model| */
  maxAbs: number;
  /** root mean square of (written - model) */
  rms: number;
  /** rms / root mean square of the model's values */
  relRms: number;
}

/** llama.cpp's architecture for a config, and whether its RoPE rotates
 * adjacent pairs (LLAMA_ROPE_TYPE_NORM: q/k rows permuted on export) or HF's
 * halves (NEOX: rows as they are). Throws naming what llama.cpp cannot run. */
export function ggufArchitecture(cfg: LlamaConfig, opts: { fullAttention?: boolean } = {}): { arch: 'llama' | 'qwen2' | 'qwen3'; permute: boolean } {
  const type = cfg.modelType ?? 'llama';
  const window = cfg.slidingWindow ?? null;
  if (window !== null && window < cfg.maxPositionEmbeddings && !opts.fullAttention) {
    throw new Error(`exportGguf: the model attends within a sliding window of ${window} positions (${type} sliding_window), and llama.cpp's llama architecture, which ${type} exports as, has none: past ${window} tokens llama.cpp would compute something else; pass fullAttention: true to export it anyway (as llama.cpp's own converter does)`);
  }
  switch (type) {
    case 'llama':
    case 'mistral':
      if (cfg.qkvBias !== cfg.oBias) throw new Error(`exportGguf: ${type} with biases on ${cfg.qkvBias ? 'q, k, v but not o' : 'o only'} has no llama.cpp architecture`);
      return { arch: 'llama', permute: true };
    case 'qwen2':
      if (cfg.oBias || !cfg.qkvBias) throw new Error('exportGguf: llama.cpp\'s qwen2 architecture has biases on q, k and v and none on o_proj; this model has others');
      return { arch: 'qwen2', permute: false };
    case 'qwen3':
      if (cfg.qkvBias || cfg.oBias) throw new Error('exportGguf: llama.cpp\'s qwen3 architecture has no projection biases; this qwen3 model has attention_bias true');
      return { arch: 'qwen3', permute: false };
  }
}

export interface GgufExportSummary {
  path: string;
  bytes: number;
  /** `error`: measured for token_embd and output (the tensors the embeddings option stores) */
  tensors: { name: string; type: string; ne: number[]; from: string; groupwise: boolean; error?: GgufTensorError }[];
}

interface PlannedTensor {
  name: string;
  ne: number[];
  type: GgmlTypeInfo;
  from: string;
  groupwise: boolean;
  bytes: number;
  produce: () => Uint8Array;
  error?: GgufTensorError;
}

/** f32 values as ggml `type` bytes: F32, F16, Q8_0 or Q4_1 */
function encodeAs(x: Float32Array, type: GgmlTypeInfo): Uint8Array {
  if (type.name === 'F32') return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  if (type.name === 'F16') { const h = new Uint16Array(x.length); for (let i = 0; i < x.length; i++) h[i] = f32ToF16(x[i]); return new Uint8Array(h.buffer); }
  if (type.name === 'Q8_0') return quantizeQ8_0(x);
  if (type.name === 'Q4_1') return quantizeQ4_1(x);
  throw new Error(`exportGguf: no encoder for ${type.name}`);
}

/** ggml `type` bytes back to f32 (F32, F16, Q8_0, Q4_1) */
function decodeAs(raw: Uint8Array, numel: number, type: GgmlTypeInfo): Float32Array {
  switch (type.name) {
    case 'F32': return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + numel * 4));
    case 'F16': { const h = new Uint16Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + numel * 2)), out = new Float32Array(numel); for (let i = 0; i < numel; i++) out[i] = f16ToF32(h[i]); return out; }
    case 'Q8_0': return dequantizeQ8_0(raw, numel);
    case 'Q4_1': return dequantizeQ4_1(raw, numel);
    default: throw new Error(`exportGguf: no decoder for ${type.name}`);
  }
}

/** The error of storing `x` as `written` (same length). */
export function tensorError(x: Float32Array, written: Float32Array): GgufTensorError {
  let maxAbs = 0, se = 0, sx = 0;
  for (let i = 0; i < x.length; i++) {
    const d = written[i] - x[i];
    maxAbs = Math.max(maxAbs, Math.abs(d));
    se += d * d;
    sx += x[i] * x[i];
  }
  const rms = Math.sqrt(se / Math.max(1, x.length));
  return { maxAbs, rms, relRms: sx > 0 ? rms / Math.sqrt(sx / x.length) : 0 };
}

class ByteWriter {
  private buf = new Uint8Array(1 << 16);
  private dv = new DataView(this.buf.buffer);
  length = 0;
  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }
  u32(v: number): void { this.ensure(4); this.dv.setUint32(this.length, v, true); this.length += 4; }
  i32(v: number): void { this.ensure(4); this.dv.setInt32(this.length, v, true); this.length += 4; }
  u64(v: number): void { this.ensure(8); this.dv.setBigUint64(this.length, BigInt(v), true); this.length += 8; }
  f32(v: number): void { this.ensure(4); this.dv.setFloat32(this.length, v, true); this.length += 4; }
  u8(v: number): void { this.ensure(1); this.buf[this.length++] = v; }
  bytes(b: Uint8Array): void { this.ensure(b.length); this.buf.set(b, this.length); this.length += b.length; }
  string(s: string): void { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.bytes(b); }
  pad(alignment: number): void { while (this.length % alignment) this.u8(0); }
  result(): Uint8Array { return this.buf.subarray(0, this.length); }
}

type WriterKv =
  | { type: 'u32' | 'i32' | 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: 'string'; value: string[] }
  | { type: 'array'; itemType: 'i32' | 'f32'; value: number[] };

function writeKv(w: ByteWriter, key: string, kv: WriterKv): void {
  w.string(key);
  w.u32(VALUE_TYPES.indexOf(kv.type));
  switch (kv.type) {
    case 'u32': w.u32(kv.value); break;
    case 'i32': w.i32(kv.value); break;
    case 'f32': w.f32(kv.value); break;
    case 'bool': w.u8(kv.value ? 1 : 0); break;
    case 'string': w.string(kv.value); break;
    case 'array':
      w.u32(VALUE_TYPES.indexOf(kv.itemType));
      w.u64(kv.value.length);
      for (const v of kv.value) {
        if (kv.itemType === 'string') w.string(v as string);
        else if (kv.itemType === 'i32') w.i32(v as number);
        else w.f32(v as number);
      }
      break;
  }
}

/**
 * GPT-2's byte-to-unicode map (openai/gpt-2 encoder.py bytes_to_unicode): the
 * printable Latin-1 bytes stand for themselves, the other 68 bytes map to
 * U+0100.. in order. llama.cpp's BPE vocabulary (tokenizer.ggml.model 'gpt2')
 * spells byte-level tokens this way and maps them back when decoding.
 */
export function gpt2ByteToUnicode(): string[] {
  const keep = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(keep(b) ? b : 256 + extra++));
  return out;
}

/** The token text of the byte tokenizer's specials in the GGUF vocabulary. */
export const GGUF_BYTE_SPECIALS = { [BYTE_BOS]: '<s>', [BYTE_EOS]: '</s>', [BYTE_PAD]: '<pad>' } as const;

/**
 * The byte tokenizer as a llama.cpp vocabulary. We write it as a BPE ('gpt2')
 * vocabulary with no merges: ids 0..255 are the byte tokens spelled with
 * GPT-2's byte-to-unicode map (token_type NORMAL = 1), 256..258 are <s>, </s>,
 * <pad> (CONTROL = 3; llama_token_type in llama.cpp's llama-vocab). With no
 * merges, llama.cpp's BPE tokenizer turns any text into its UTF-8 bytes, one
 * token each, which is exactly ByteTokenizer.encode, and decoding maps the
 * byte tokens back to bytes. (A SentencePiece 'llama' vocabulary of <0xXX>
 * byte tokens would not do: llama.cpp's SPM path replaces spaces with U+2581
 * before tokenizing, which would become three byte tokens.)
 */
function byteVocabKvs(tokenizer: Tokenizer, config: LlamaConfig, padVocabulary = false): [string, WriterKv][] {
  if (tokenizer.name !== 'byte' || tokenizer.vocabSize !== BYTE_VOCAB_SIZE || tokenizer.bos !== BYTE_BOS || tokenizer.eos !== BYTE_EOS || tokenizer.pad !== BYTE_PAD) {
    throw new Error(`exportGguf: only the byte tokenizer (ByteTokenizer) can be written to GGUF for now, got '${tokenizer.name}' with vocabulary ${tokenizer.vocabSize}; a tokenizer.json needs its own mapping (BPE merges or SentencePiece scores)`);
  }
  if (config.vocabSize !== BYTE_VOCAB_SIZE && !(padVocabulary && config.vocabSize > BYTE_VOCAB_SIZE)) {
    throw new Error(`exportGguf: the byte tokenizer has ${BYTE_VOCAB_SIZE} tokens but the model's vocab_size is ${config.vocabSize}${config.vocabSize > BYTE_VOCAB_SIZE ? ' (padVocabulary: true writes the extra ids as unused tokens)' : ''}`);
  }
  const tokens = gpt2ByteToUnicode();
  const types = new Array<number>(256).fill(1);
  for (const id of [BYTE_BOS, BYTE_EOS, BYTE_PAD] as const) { tokens.push(GGUF_BYTE_SPECIALS[id]); types.push(3); }
  // padding ids: UNUSED (5, llama_token_type), never produced by tokenizing text
  for (let id = BYTE_VOCAB_SIZE; id < config.vocabSize; id++) { tokens.push(`<unused${id}>`); types.push(5); }
  return [
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: 'default' }],
    ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'array', itemType: 'i32', value: types }],
    ['tokenizer.ggml.scores', { type: 'array', itemType: 'f32', value: new Array<number>(tokens.length).fill(0) }],
    ['tokenizer.ggml.merges', { type: 'array', itemType: 'string', value: [] }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: BYTE_BOS }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: BYTE_EOS }],
    ['tokenizer.ggml.padding_token_id', { type: 'u32', value: BYTE_PAD }],
    // our batching starts every sequence with BOS and never appends EOS to a prompt
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
  ];
}

/** The weight [out, in] of a Linear as f32, or an error when the layer is not
 * a plain (dense or quantized) frozen base, e.g. LoRA with unmerged adapters. */
function linearWeight(layer: LinearLayer): Float32Array {
  if (!isFrozenBase(layer) || layer.parameters().length !== 1) {
    throw new Error(`exportGguf: ${layer.name} is a ${layer.constructor.name} with ${layer.parameters().length} parameters; merge its adapters first (e.g. mergeAndUnload) so it is one dense or quantized weight`);
  }
  const t = layer.toDense();
  try { return t.toFloat32(); } finally { t.dispose(); }
}

// ---------------------------------------------------------------------------
// Scaled RoPE (nn/rope_scaling.ts) in llama.cpp's terms, as its HF converter
// writes them:
//   linear  llama.rope.scaling.type "linear", llama.rope.scaling.factor
//   yarn    llama.rope.scaling.type "yarn", .factor, .original_context_length;
//           llama.cpp applies YaRN's defaults (beta_fast 32, beta_slow 1,
//           truncated correction range, attention factor 0.1 ln(factor) + 1),
//           so a config that departs from them is refused
//   llama3  the tensor rope_freqs.weight [D/2] f32: llama.cpp divides base
//           frequency i by entry i, so entry i = base[i] / inv[i] (1 for the
//           high frequencies, factor for the low ones, the blend between)
//   dynamic (NTK) has no GGUF form in llama.cpp: refused.

/** The GGUF keys and rope_freqs tensor of a config's scaled RoPE; throws naming what llama.cpp cannot express. */
function ggufRopeScaling(cfg: LlamaConfig, arch: string): { kvs: [string, WriterKv][]; ropeFreqs?: Float32Array } {
  const s = cfg.ropeScaling;
  if (!s) return { kvs: [] };
  const refuse = (why: string): never => {
    throw new Error(`exportGguf: rope_scaling ${s.type} (factor ${s.factor}) ${why}; llama.cpp would compute a different model, so no file was written`);
  };
  switch (s.type) {
    case 'linear':
      return { kvs: [[`${arch}.rope.scaling.type`, { type: 'string', value: 'linear' }], [`${arch}.rope.scaling.factor`, { type: 'f32', value: s.factor }]] };
    case 'yarn': {
      if (!(s.factor > 1)) refuse('has a factor <= 1, where llama.cpp\'s YaRN attention factor (0.1 ln(factor) + 1) differs from 1');
      if ((s.betaFast ?? 32) !== 32 || (s.betaSlow ?? 1) !== 1) refuse(`sets beta_fast ${s.betaFast ?? 32} / beta_slow ${s.betaSlow ?? 1}; llama.cpp's GGUF loader uses 32 / 1`);
      if (s.truncate === false) refuse('sets truncate false; llama.cpp always truncates the correction range');
      const m = yarnAttentionScale(s), want = 0.1 * Math.log(s.factor) + 1;
      if (Math.abs(m - want) > 1e-6 * want) refuse(`has attention factor ${m} (attention_factor / mscale), llama.cpp applies ${want}`);
      return {
        kvs: [
          [`${arch}.rope.scaling.type`, { type: 'string', value: 'yarn' }],
          [`${arch}.rope.scaling.factor`, { type: 'f32', value: s.factor }],
          [`${arch}.rope.scaling.original_context_length`, { type: 'u32', value: s.originalMaxPositionEmbeddings! }],
        ],
      };
    }
    case 'llama3': {
      if (arch !== 'llama') refuse(`is Llama 3's, carried by a rope_freqs tensor that only llama.cpp's llama architecture reads (this model exports as ${arch})`);
      const base = ropeInvFreqBase(cfg), inv = ropeFrequencies(cfg)!.invFreq;
      return { kvs: [], ropeFreqs: Float32Array.from(base, (b, i) => b / inv[i]) };
    }
    case 'dynamic':
      return refuse('is dynamic NTK scaling, which GGUF cannot carry (llama.cpp has no dynamic NTK)');
  }
}

/**
 * Writes `model` as a GGUF v3 file llama.cpp loads as architecture `llama`
 * (Llama, Mistral), `qwen2` or `qwen3` (ggufArchitecture).
 * Tensors (llama.cpp names): token_embd, blk.N.{attn_norm, attn_q, attn_k,
 * attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm and,
 * for an untied head, output. A tied head writes no output.weight: llama.cpp's
 * loaders then use token_embd for the head, as the HF converter's output.
 * Biases as blk.N.attn_{q,k,v,output}.bias (F32; q and k permuted like their
 * rows under `llama`), Qwen3's q/k norms as blk.N.attn_{q,k}_norm.weight, and
 * for a head_dim other than hidden / heads, <arch>.attention.{key,value}_length.
 * Storage: norms F32 (exact); token_embd and output F16 (opts.embeddings,
 * default; or Q8_0, error in the summary), whatever opts.type is; the
 * projections opts.type, except group-wise ones (Q4_1 with the model's codes).
 * A scaled RoPE adds its keys or rope_freqs (ggufRopeScaling), or is refused.
 * The file is written atomically.
 */
export function exportGguf(model: LlamaModel, path: string, opts: ExportGgufOptions): GgufExportSummary {
  if (typeof opts !== 'object' || opts === null) throw new TypeError('exportGguf: options { type, tokenizer } are required');
  if (!WEIGHT_TYPES.includes(opts.type)) throw new RangeError(`exportGguf: type must be one of ${WEIGHT_TYPES.join(', ')}, got ${JSON.stringify(opts.type)}`);
  const indivisible = opts.indivisible ?? 'error';
  if (indivisible !== 'error' && indivisible !== 'f16') throw new RangeError(`exportGguf: indivisible must be 'error' or 'f16', got ${JSON.stringify(indivisible)}`);
  const embeddings = opts.embeddings ?? 'f16';
  if (!EMBEDDING_TYPES.includes(embeddings)) {
    throw new RangeError(`exportGguf: embeddings (the storage of token_embd and output) must be one of ${EMBEDDING_TYPES.join(', ')}, got ${JSON.stringify(opts.embeddings)}`);
  }
  const cfg = model.config, D = headDim(cfg);
  const { arch, permute } = ggufArchitecture(cfg, { fullAttention: opts.fullAttention });
  const ropeScaling = ggufRopeScaling(cfg, arch);
  const vocab = byteVocabKvs(opts.tokenizer, cfg, opts.padVocabulary === true);
  const weightType = TYPE_BY_NAME.get(opts.type.toUpperCase())!;
  const embeddingType = TYPE_BY_NAME.get(embeddings.toUpperCase())!;
  const f16 = TYPE_BY_NAME.get('F16')!, f32 = TYPE_BY_NAME.get('F32')!;

  const planned: PlannedTensor[] = [];
  const indivisibleNames: string[] = [];
  const add1d = (name: string, from: string, get: () => Float32Array, n: number) => {
    planned.push({ name, ne: [n], type: f32, from, groupwise: false, bytes: n * 4, produce: () => encodeAs(get(), f32) });
  };
  // `embedding`: token_embd / output, stored as embeddingType and measured
  const add2d = (name: string, from: string, out: number, inn: number, get: () => Float32Array, perm?: Int32Array, embedding = false) => {
    let type = embedding ? embeddingType : weightType;
    const gw = embedding ? undefined : opts.groupwise?.(from);
    if (gw !== undefined && opts.type !== 'q4_1') {
      throw new Error(`exportGguf: ${from} is given as group-wise INT4, which is written as Q4_1 blocks; export with type 'q4_1' (got '${opts.type}')`);
    }
    if (type.block > 1 && inn % type.block !== 0) {
      if (gw !== undefined || indivisible === 'error') { indivisibleNames.push(`${from} (row length ${inn})`); return; }
      type = f16;
    }
    const bytes = (out * inn / type.block) * type.bytes;
    const produce = gw !== undefined
      ? () => {
        checkGroupwise(gw, out * inn, from);
        const g: GroupwiseInt4 = perm
          ? { ...gw, codes: permuteRows(gw.codes, inn, perm), scales: permuteRows(gw.scales, inn / GGML_QK, perm), offsets: permuteRows(gw.offsets, inn / GGML_QK, perm) }
          : gw;
        return groupwiseToQ4_1(g, out * inn, from);
      }
      : () => { const x = get(); return encodeAs(perm ? permuteRows(x, inn, perm) : x, type); };
    const t: PlannedTensor = { name, ne: [inn, out], type, from, groupwise: gw !== undefined, bytes, produce };
    if (embedding) {
      t.produce = () => {
        const x = get(), data = encodeAs(x, type);
        t.error = tensorError(x, decodeAs(data, x.length, type));
        return data;
      };
    }
    planned.push(t);
  };

  const C = cfg.hiddenSize, I = cfg.intermediateSize;
  const ropeFreqs = ropeScaling.ropeFreqs;
  if (ropeFreqs) add1d('rope_freqs.weight', 'rope_scaling (llama3)', () => ropeFreqs, D / 2);
  add2d('token_embd.weight', model.embed.name, cfg.vocabSize, C, () => model.embed.value.toFloat32(), undefined, true);
  const permQ = permute ? ropeRowPermutation(cfg.numHeads, D) : undefined, permK = permute ? ropeRowPermutation(cfg.numKvHeads, D) : undefined;
  model.blocks.forEach((b, i) => {
    const L = b.linears, blk = `blk.${i}`, E = b.extras;
    const bias = (n: 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj', to: string, perm?: Int32Array) => {
      const p = E.bias[n];
      if (p) add1d(`${blk}.${to}.bias`, p.name, () => (perm ? permuteRows(p.value.toFloat32(), 1, perm) : p.value.toFloat32()), p.value.numel);
    };
    add1d(`${blk}.attn_norm.weight`, b.ln1.name, () => b.ln1.value.toFloat32(), C);
    add2d(`${blk}.attn_q.weight`, `${L.q_proj.name}.weight`, cfg.numHeads * D, C, () => linearWeight(L.q_proj), permQ);
    bias('q_proj', 'attn_q', permQ);
    add2d(`${blk}.attn_k.weight`, `${L.k_proj.name}.weight`, cfg.numKvHeads * D, C, () => linearWeight(L.k_proj), permK);
    bias('k_proj', 'attn_k', permK);
    add2d(`${blk}.attn_v.weight`, `${L.v_proj.name}.weight`, cfg.numKvHeads * D, C, () => linearWeight(L.v_proj));
    bias('v_proj', 'attn_v');
    add2d(`${blk}.attn_output.weight`, `${L.o_proj.name}.weight`, C, cfg.numHeads * D, () => linearWeight(L.o_proj));
    bias('o_proj', 'attn_output');
    if (E.qNorm && E.kNorm) {
      const qn = E.qNorm, kn = E.kNorm;
      add1d(`${blk}.attn_q_norm.weight`, qn.name, () => qn.value.toFloat32(), D);
      add1d(`${blk}.attn_k_norm.weight`, kn.name, () => kn.value.toFloat32(), D);
    }
    add1d(`${blk}.ffn_norm.weight`, b.ln2.name, () => b.ln2.value.toFloat32(), C);
    add2d(`${blk}.ffn_gate.weight`, `${L.gate_proj.name}.weight`, I, C, () => linearWeight(L.gate_proj));
    add2d(`${blk}.ffn_up.weight`, `${L.up_proj.name}.weight`, I, C, () => linearWeight(L.up_proj));
    add2d(`${blk}.ffn_down.weight`, `${L.down_proj.name}.weight`, C, I, () => linearWeight(L.down_proj));
  });
  add1d('output_norm.weight', model.norm.name, () => model.norm.value.toFloat32(), C);
  if (model.lmHead) { const head = model.lmHead; add2d('output.weight', head.name, cfg.vocabSize, C, () => head.value.toFloat32(), undefined, true); }
  if (indivisibleNames.length) {
    const types = [...new Set([weightType, ...(embeddings === 'q8_0' ? [embeddingType] : [])].filter((t) => t.block > 1).map((t) => t.name))].join(' and ');
    throw new Error(`exportGguf: ${types} blocks hold ${GGML_QK} values of a row, and these weights have rows that ${GGML_QK} does not divide: ${indivisibleNames.join(', ')}; export as 'f16' (embeddings 'f16'), or pass indivisible: 'f16' to write just those as F16${opts.groupwise ? ' (a group-wise weight cannot fall back)' : ''}`);
  }

  const kvs: [string, WriterKv][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.name', { type: 'string', value: opts.name ?? 'tunebench' }],
    ['general.alignment', { type: 'u32', value: GGUF_ALIGNMENT }],
    ['general.file_type', { type: 'u32', value: FILE_TYPE[opts.type] }],
    [`${arch}.context_length`, { type: 'u32', value: cfg.maxPositionEmbeddings }],
    [`${arch}.embedding_length`, { type: 'u32', value: C }],
    [`${arch}.block_count`, { type: 'u32', value: cfg.numLayers }],
    [`${arch}.feed_forward_length`, { type: 'u32', value: I }],
    [`${arch}.attention.head_count`, { type: 'u32', value: cfg.numHeads }],
    [`${arch}.attention.head_count_kv`, { type: 'u32', value: cfg.numKvHeads }],
    // a head_dim of its own (Qwen3): llama.cpp takes it from the key/value lengths
    ...(D !== C / cfg.numHeads ? [
      [`${arch}.attention.key_length`, { type: 'u32', value: D }],
      [`${arch}.attention.value_length`, { type: 'u32', value: D }],
    ] as [string, WriterKv][] : []),
    [`${arch}.rope.dimension_count`, { type: 'u32', value: D }],
    [`${arch}.rope.freq_base`, { type: 'f32', value: cfg.ropeTheta }],
    ...ropeScaling.kvs,
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: cfg.rmsNormEps }],
    [`${arch}.vocab_size`, { type: 'u32', value: cfg.vocabSize }],
    ...vocab,
  ];

  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(planned.length);
  w.u64(kvs.length);
  for (const [k, v] of kvs) writeKv(w, k, v);
  let offset = 0;
  for (const t of planned) {
    w.string(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(t.type.id);
    w.u64(offset);
    offset += Math.ceil(t.bytes / GGUF_ALIGNMENT) * GGUF_ALIGNMENT;
  }
  w.pad(GGUF_ALIGNMENT);
  const header = w.result();
  const zeros = new Uint8Array(GGUF_ALIGNMENT);
  function* chunks(): Iterable<Uint8Array> {
    yield header;
    for (const t of planned) {
      const data = t.produce();
      if (data.byteLength !== t.bytes) throw new Error(`exportGguf: internal size mismatch for ${t.name}: ${data.byteLength} bytes, planned ${t.bytes}`);
      yield data;
      const pad = (GGUF_ALIGNMENT - (t.bytes % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      if (pad) yield zeros.subarray(0, pad);
    }
  }
  writeFileAtomic(path, chunks());
  return {
    path, bytes: header.length + offset,
    tensors: planned.map((t) => ({ name: t.name, type: t.type.name, ne: t.ne, from: t.from, groupwise: t.groupwise, ...(t.error ? { error: t.error } : {}) })),
  };
}

// ---------------------------------------------------------------------------
// Reader

export interface GgufTensorInfo {
  name: string;
  /** ggml order: ne[0] fastest */
  ne: number[];
  /** row-major shape (ne reversed), e.g. [out, in] */
  shape: number[];
  type: string;
  typeId: number;
  /** relative to the data area */
  offset: number;
  bytes: number;
}

export interface GgufFile {
  path: string;
  version: number;
  alignment: number;
  metadata: Map<string, GgufKv>;
  tensors: GgufTensorInfo[];
  /** absolute file offset of the data area */
  dataOffset: number;
  fileBytes: number;
  /** the tensor's values as f32 (F32, F16, Q8_0, Q4_1), read from the file */
  read(name: string): Float32Array;
  /** the tensor's raw bytes */
  readRaw(name: string): Uint8Array;
}

const MAX_ARRAY_DEPTH = 8;
const MAX_DIMS = 4;  // GGML_MAX_DIMS

/** Reads bytes of the header on demand, refusing reads past the end of file. */
class HeaderCursor {
  pos = 0;
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  constructor(private readonly fd: number, readonly size: number, private readonly path: string) {}

  private take(n: number, what: string): number {
    if (this.pos + n > this.size) throw new Error(`${this.path}: truncated GGUF file: ${what} needs ${n} bytes at offset ${this.pos}, the file has ${this.size}`);
    if (this.pos < this.bufStart || this.pos + n > this.bufStart + this.buf.length) {
      const len = Math.min(this.size - this.pos, Math.max(n, 1 << 20));
      this.buf = Buffer.alloc(len);
      let got = 0;
      while (got < len) {
        const r = readSync(this.fd, this.buf, got, len - got, this.pos + got);
        if (r <= 0) throw new Error(`${this.path}: read failed at offset ${this.pos + got} (the file shrank while reading?)`);
        got += r;
      }
      this.bufStart = this.pos;
    }
    const at = this.pos - this.bufStart;
    this.pos += n;
    return at;
  }
  // take() may replace the buffer, so it runs before this.buf is read
  u8(what: string): number { const at = this.take(1, what); return this.buf[at]; }
  i8(what: string): number { const at = this.take(1, what); return this.buf.readInt8(at); }
  u16(what: string): number { const at = this.take(2, what); return this.buf.readUInt16LE(at); }
  i16(what: string): number { const at = this.take(2, what); return this.buf.readInt16LE(at); }
  u32(what: string): number { const at = this.take(4, what); return this.buf.readUInt32LE(at); }
  i32(what: string): number { const at = this.take(4, what); return this.buf.readInt32LE(at); }
  f32(what: string): number { const at = this.take(4, what); return this.buf.readFloatLE(at); }
  f64(what: string): number { const at = this.take(8, what); return this.buf.readDoubleLE(at); }
  u64big(what: string): bigint { const at = this.take(8, what); return this.buf.readBigUInt64LE(at); }
  i64(what: string): bigint { const at = this.take(8, what); return this.buf.readBigInt64LE(at); }
  /** a u64 that must be a safe integer no larger than `max` */
  u64(what: string, max = Number.MAX_SAFE_INTEGER): number {
    const at = this.pos, v = this.u64big(what);
    if (v > BigInt(max)) throw new Error(`${this.path}: ${what} at offset ${at} is ${v}, more than the ${max} this file can hold`);
    return Number(v);
  }
  string(what: string): string {
    const n = this.u64(`length of ${what}`, this.size - this.pos - 8);
    if (n === 0) return '';
    const at = this.take(n, what);
    return this.buf.toString('utf8', at, at + n);
  }
}

function readValue(c: HeaderCursor, type: GgufValueType, what: string, depth: number): GgufKv {
  switch (type) {
    case 'u8': return { type, value: c.u8(what) };
    case 'i8': return { type, value: c.i8(what) };
    case 'u16': return { type, value: c.u16(what) };
    case 'i16': return { type, value: c.i16(what) };
    case 'u32': return { type, value: c.u32(what) };
    case 'i32': return { type, value: c.i32(what) };
    case 'f32': return { type, value: c.f32(what) };
    case 'f64': return { type, value: c.f64(what) };
    case 'u64': return { type, value: c.u64big(what) };
    case 'i64': return { type, value: c.i64(what) };
    case 'bool': {
      const at = c.pos, b = c.u8(what);
      if (b > 1) throw new Error(`bad GGUF bool ${b} for ${what} at offset ${at} (must be 0 or 1)`);
      return { type, value: b === 1 };
    }
    case 'string': return { type, value: c.string(what) };
    case 'array': {
      if (depth >= MAX_ARRAY_DEPTH) throw new Error(`${what}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
      const itemType = valueType(c, `element type of ${what}`);
      // every element takes at least one byte: a count beyond the file is corrupt
      const n = c.u64(`length of ${what}`, c.size - c.pos);
      const value: (GgufScalar | GgufKv)[] = new Array(n);
      for (let i = 0; i < n; i++) {
        const v = readValue(c, itemType, `${what}[${i}]`, depth + 1);
        value[i] = v.type === 'array' ? v : v.value;
      }
      return { type: 'array', itemType, value };
    }
  }
}

function valueType(c: HeaderCursor, what: string): GgufValueType {
  const at = c.pos, t = c.u32(what);
  if (t >= VALUE_TYPES.length) throw new Error(`unknown GGUF value type ${t} for ${what} at offset ${at} (known: 0..${VALUE_TYPES.length - 1})`);
  return VALUE_TYPES[t];
}

/** Parses a GGUF file's header and tensor infos, checking every field against
 * the spec and the file size; tensor data is read on demand by read(name). */
export function readGguf(path: string): GgufFile {
  const fd = openRegularFile(path, 'GGUF file');
  let size: number;
  const c = (() => { size = fstatSync(fd).size; return new HeaderCursor(fd, size, path); })();
  const fail = (msg: string): never => { throw new Error(`${path}: ${msg}`); };
  let version = 0, alignment = GGUF_ALIGNMENT, dataOffset = 0;
  const metadata = new Map<string, GgufKv>();
  const tensors: GgufTensorInfo[] = [];
  try {
    if (size! < 4) fail(`not a GGUF file: ${size!} bytes`);
    const magic = c.u32('magic');
    if (magic !== GGUF_MAGIC) fail(`not a GGUF file: magic is 0x${magic.toString(16).padStart(8, '0')}, expected "GGUF" (0x${GGUF_MAGIC.toString(16)})`);
    version = c.u32('version');
    if (version !== 2 && version !== 3) fail(`GGUF version ${version} is not supported (2 and 3 are: version 1 used 32-bit counts)`);
    // a tensor info takes at least 24 bytes, a kv at least 13: larger counts are corrupt
    const nTensors = c.u64('tensor_count', Math.floor(size! / 24));
    const nKv = c.u64('metadata_kv_count', Math.floor(size! / 13));
    for (let i = 0; i < nKv; i++) {
      const at = c.pos, key = c.string(`metadata key ${i}`);
      if (metadata.has(key)) fail(`metadata key '${key}' appears twice (second at offset ${at})`);
      const type = valueType(c, `metadata '${key}'`);
      try {
        metadata.set(key, readValue(c, type, `metadata '${key}'`, 0));
      } catch (e) {
        throw (e as Error).message.startsWith(path) ? e : new Error(`${path}: ${(e as Error).message}`);
      }
    }
    const al = metadata.get('general.alignment');
    if (al !== undefined) {
      if (al.type !== 'u32' || !Number.isInteger(al.value) || (al.value as number) === 0 || ((al.value as number) & ((al.value as number) - 1)) !== 0) {
        fail(`general.alignment must be a u32 power of two, got ${al.type} ${String(al.value)}`);
      }
      alignment = al.value as number;
    }
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      const name = c.string(`name of tensor ${i}`);
      if (names.has(name)) fail(`tensor '${name}' appears twice`);
      names.add(name);
      const nDims = c.u32(`n_dims of '${name}'`);
      if (nDims < 1 || nDims > MAX_DIMS) fail(`tensor '${name}' has ${nDims} dimensions (1..${MAX_DIMS} allowed)`);
      const ne: number[] = [];
      let numel = 1;
      for (let d = 0; d < nDims; d++) {
        const v = c.u64(`ne[${d}] of '${name}'`);
        if (v < 1) fail(`tensor '${name}' has dimension ne[${d}] = 0`);
        numel *= v;
        if (numel > Number.MAX_SAFE_INTEGER) fail(`tensor '${name}' has more elements than a file can hold`);
        ne.push(v);
      }
      const typeAt = c.pos, typeId = c.u32(`type of '${name}'`);
      const info = TYPE_BY_ID.get(typeId);
      if (!info) fail(`tensor '${name}' has ggml type ${typeId} at offset ${typeAt}, which this reader does not know (known: ${TYPE_LIST.map((t) => `${t.name}=${t.id}`).join(', ')})`);
      if (ne[0] % info!.block) fail(`tensor '${name}' (${info!.name}) has a row of ${ne[0]} values, not a multiple of its block of ${info!.block}`);
      const offset = c.u64(`offset of '${name}'`);
      if (offset % alignment) fail(`tensor '${name}' starts at data offset ${offset}, not a multiple of the alignment ${alignment}`);
      tensors.push({ name, ne, shape: [...ne].reverse(), type: info!.name, typeId, offset, bytes: (numel / info!.block) * info!.bytes });
    }
    dataOffset = Math.ceil(c.pos / alignment) * alignment;
    const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
    let end = 0, prev = '';
    for (const t of sorted) {
      if (t.offset < end) fail(`tensors '${prev}' and '${t.name}' overlap in the data area`);
      end = t.offset + t.bytes;
      prev = t.name;
      if (dataOffset + end > size!) fail(`truncated GGUF file: tensor '${t.name}' ends at byte ${dataOffset + end}, the file has ${size!}`);
    }
  } finally {
    closeSync(fd);
  }
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const readRaw = (name: string): Uint8Array => {
    const t = byName.get(name);
    if (!t) throw new Error(`${path}: no tensor '${name}' (the file has ${tensors.length}: ${tensors.slice(0, 4).map((x) => x.name).join(', ')}${tensors.length > 4 ? ', ...' : ''})`);
    const out = new Uint8Array(t.bytes);
    const f = openRegularFile(path, 'GGUF file');
    try {
      let got = 0;
      while (got < t.bytes) {
        const r = readSync(f, out, got, t.bytes - got, dataOffset + t.offset + got);
        if (r <= 0) throw new Error(`${path}: truncated while reading tensor '${name}' (the file changed since it was opened?)`);
        got += r;
      }
    } finally {
      closeSync(f);
    }
    return out;
  };
  const read = (name: string): Float32Array => {
    const raw = readRaw(name), t = byName.get(name)!;
    const numel = t.ne.reduce((a, b) => a * b, 1);
    switch (t.type) {
      case 'F32': return new Float32Array(raw.buffer, 0, numel);
      case 'F16': { const h = new Uint16Array(raw.buffer, 0, numel), out = new Float32Array(numel); for (let i = 0; i < numel; i++) out[i] = f16ToF32(h[i]); return out; }
      case 'Q8_0': return dequantizeQ8_0(raw, numel);
      case 'Q4_1': return dequantizeQ4_1(raw, numel);
      default: throw new Error(`${path}: tensor '${name}' is ${t.type}; this reader dequantizes F32, F16, Q8_0 and Q4_1 only`);
    }
  };
  return { path, version, alignment, metadata, tensors, dataOffset, fileBytes: size!, read, readRaw };
}

/** A metadata value as a plain scalar (throws naming the key when absent or an array). */
export function ggufScalar(file: GgufFile, key: string): GgufScalar {
  const kv = file.metadata.get(key);
  if (!kv) throw new Error(`${file.path}: no metadata '${key}'`);
  if (kv.type === 'array') throw new Error(`${file.path}: metadata '${key}' is an array`);
  return kv.value;
}

/** A metadata array's values (throws naming the key when absent or not an array). */
export function ggufArray(file: GgufFile, key: string): (GgufScalar | GgufKv)[] {
  const kv = file.metadata.get(key);
  if (!kv) throw new Error(`${file.path}: no metadata '${key}'`);
  if (kv.type !== 'array') throw new Error(`${file.path}: metadata '${key}' is a ${kv.type}, not an array`);
  return kv.value;
}
