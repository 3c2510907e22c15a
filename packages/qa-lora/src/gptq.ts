// GPTQ checkpoints (the AutoGPTQ / GPTQModel layout) as QA-LoRA's INT-N
// base, and an INT-N model written back in that layout.
//
// A GPTQ model directory: config.json with quantization_config
// { quant_method: "gptq", bits, group_size, sym, desc_act, checkpoint_format }
// (or the same keys in quantize_config.json), and per quantized projection
// <module> of out x in (W [out, in]), b = bits, G = group_size (-1: G = in),
// n_g = ceil(in / G):
//   <module>.qweight  I32 [in·b/32, out]  the codes q[i, o], packed along the input dim
//   <module>.qzeros   I32 [n_g, out·b/32] the zero points z[g, o], packed along the output dim
//   <module>.scales   F16 [n_g, out]      s[g, o]
//   <module>.g_idx    I32 [in]            the group of each input column
// Packing, every width alike (for 3 bits this is the layout whose codes
// cross 32-bit words): the values of one column of qweight (one row of
// qzeros) form one bit stream, value k at stream bits [k·b, k·b + b), stream
// bit t being bit (t mod 32) of word floor(t / 32), least significant first.
// Architectures: config.json is read as the dense loader reads it
// (configFromHf: model_type llama, mistral, qwen2, qwen3 and their keys;
// what it refuses, it refuses here by the same key), so the tensors beside
// the quantized projections are the architecture's own, in its shapes
// (head_dim included): Qwen2's q/k/v_proj.bias and those of attention_bias
// load as the block's bias parameters, Qwen3's self_attn.{q,k}_norm.weight as
// its per-head norms, all frozen and never quantized (as QA-LoRA keeps them on
// a dense base); Mistral's sliding_window is the config's. A bias the
// architecture does not have is accepted only all zero (some exporters write
// one for every projection); a non-zero one is refused, naming the tensor.
// Zero points: checkpoint_format "gptq" (v1, AutoGPTQ's and the default)
// stores z − 1 modulo 2^b, read back as (stored + 1) mod 2^b; "gptq_v2"
// (GPTQModel) stores z as it is. The weight is
//   W[o, i] = s[g_idx[i], o] · (q[i, o] − z[g_idx[i], o]).
//
// Loaded as core's INT-N (W = scale · q + offset over groups of L
// consecutive columns) with scale = s and offset = −s · z, exactly: an fp16
// scale times an integer below 2^8 needs at most 19 significant bits, so the
// offset, s · q and their f32 sum s · (q − z) are all exact in f32. L is the
// largest of 16, 32, 64, 128 that divides both G and in (a GPTQ group wider
// than 128 columns, or G = -1, is split with its scale and zero repeated).
// desc_act with a permuted g_idx (act-order: groups of scattered columns) is
// refused: the INT-N kernels and QA-LoRA's pooling need groups of
// consecutive columns. A g_idx that is floor(i / G) loads whatever desc_act
// says (AutoGPTQ's static_groups).
//
// Written back (saveGptqModel): the config with its model_type and keys
// (configToHf), the biases and q/k norms under their names next to the
// projections' qweight, qzeros, scales and g_idx. Each scale must be an fp16
// value and its offset equal to −scale · z for an integer z in
// [0, 2^b − 1]. The GPTQ base itself always is; after QA-LoRA's merge
// (offset + delta, delta real) a group is exact only where delta / scale is
// an integer. Elsewhere the zero point
// must be rounded (zeroPoints: 'round'), which moves every weight of the
// group by scale · (round(z') − z'), at most scale / 2 (more where z' falls
// outside [0, 2^b − 1] and is clamped); the measured error is returned and
// written to gptq_export.json. saveQaloraModel (files.ts) stays exact.
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  DenseLinear, HF_CONFIG_FILE, HF_WEIGHTS_FILE, HF_WEIGHTS_INDEX_FILE, INTN_BITS, IntNLinear, type IntNBits, type IntNGroupSize, type LinearLayer,
  type LlamaConfig, LlamaModel, type QuantizedIntN, Tensor, configFromHf, configToHf, f16ToF32, f32ToF16, hostValues, intnBytes, modelTensorShapes, parseJson,
  readSafetensors, readSafetensorsHeader, readTextFile, writeJsonAtomic, writeSafetensors,
} from '@tunebench/core';

export const GPTQ_QUANT_METHOD = 'gptq';
/** "gptq": v1 zero points (stored z − 1); "gptq_v2": stored as they are */
export type GptqFormat = 'gptq' | 'gptq_v2';
export const GPTQ_FORMATS: readonly GptqFormat[] = ['gptq', 'gptq_v2'];
/** AutoGPTQ's separate quantization file (older checkpoints) */
export const GPTQ_QUANTIZE_CONFIG_FILE = 'quantize_config.json';
/** what saveGptqModel measured, next to the weights */
export const GPTQ_EXPORT_REPORT_FILE = 'gptq_export.json';

/** The quantization_config of a GPTQ checkpoint, as this loader reads it. */
export interface GptqSpec {
  bits: IntNBits;
  /** input columns per group; -1: one group per row */
  groupSize: number;
  sym: boolean;
  descAct: boolean;
  format: GptqFormat;
}

const PARTS = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;
type Part = typeof PARTS[number];
const FLOAT_DTYPES = new Set(['F16', 'BF16', 'F32']);
const INTN_L: readonly IntNGroupSize[] = [128, 64, 32, 16];
const HARMLESS_EXTRA = /(^|\.)rotary_emb\.inv_freq$/;
const LINEAR = /^(model\.layers\.\d+\.(?:self_attn|mlp)\.(?:q|k|v|o|gate|up|down)_proj)\.weight$/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;
const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
function list(problems: string[], max = 20): string {
  return problems.length <= max ? problems.join('; ') : `${problems.slice(0, max).join('; ')}; ... and ${problems.length - max} more`;
}

/** The checkpoint's quantization_config (checked), refusing what this loader cannot read exactly, by key. */
export function gptqSpecOf(qc: unknown, where: string): GptqSpec {
  if (!isObject(qc)) throw new Error(`${where}: quantization_config must be an object`);
  const problems: string[] = [];
  if (qc.quant_method !== GPTQ_QUANT_METHOD) problems.push(`quant_method is ${JSON.stringify(qc.quant_method)}, not "gptq"`);
  const bits = qc.bits as IntNBits;
  if (!INTN_BITS.includes(bits)) problems.push(`bits must be one of ${INTN_BITS.join(', ')}, got ${JSON.stringify(qc.bits)}`);
  const groupSize = qc.group_size === undefined ? 128 : qc.group_size;  // transformers' GPTQConfig default
  if (!(typeof groupSize === 'number' && Number.isInteger(groupSize) && (groupSize === -1 || groupSize >= 1))) {
    problems.push(`group_size must be -1 or a positive integer, got ${JSON.stringify(qc.group_size)}`);
  }
  const bool = (k: string, fallback: boolean): boolean => {
    const v = qc[k];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') { problems.push(`${k} must be true or false, got ${JSON.stringify(v)}`); return fallback; }
    return v;
  };
  const sym = bool('sym', true), descAct = bool('desc_act', false);
  // transformers and optimum say checkpoint_format; GPTQModel's own files say format
  const fmtKey = qc.checkpoint_format !== undefined ? 'checkpoint_format' : 'format';
  const fmt = qc[fmtKey] ?? 'gptq';
  if (!GPTQ_FORMATS.includes(fmt as GptqFormat)) {
    problems.push(`${fmtKey} ${JSON.stringify(fmt)} is not supported (only "gptq" and "gptq_v2": the ${JSON.stringify(fmt)} layout packs its codes differently; convert the checkpoint back to the gptq format)`);
  }
  if (qc.is_marlin_format === true) problems.push('is_marlin_format true is not supported (Marlin repacks the codes; use the gptq-format checkpoint)');
  if (qc.pack_dtype !== undefined && qc.pack_dtype !== 'int32') problems.push(`pack_dtype ${JSON.stringify(qc.pack_dtype)} is not supported (only "int32" words)`);
  if (qc.lm_head === true) problems.push('lm_head true is not supported (a quantized lm_head; QA-LoRA quantizes the projections of the blocks only)');
  if (isObject(qc.dynamic) && Object.keys(qc.dynamic).length > 0) {
    problems.push('dynamic (per-module bits or group sizes) is not supported: one bits and group_size for every projection');
  }
  if (problems.length) throw new Error(`${where}: quantization_config: ${list(problems)}`);
  return { bits, groupSize: groupSize as number, sym, descAct, format: fmt as GptqFormat };
}

/** The transformers class a config loads as (LlamaForCausalLM, Qwen2ForCausalLM, ...). */
function archClass(config: LlamaConfig): string {
  return (configToHf(config).architectures as string[])[0];
}

/** Why a projection of this config has no bias, for the error on a non-zero one in the file. */
function noBias(config: LlamaConfig, tensor: string): string {
  const type = config.modelType ?? 'llama', cls = archClass(config);
  if (/\.mlp\./.test(tensor)) return `${cls} has no bias on the MLP projections (mlp_bias is not supported)`;
  if (type === 'qwen2') return `${cls} has biases on q_proj, k_proj and v_proj only`;
  if (type === 'mistral') return `${cls} has no projection biases`;
  return `${cls} with attention_bias false has no projection biases (with attention_bias true it has one on each of q_proj, k_proj, v_proj and o_proj)`;
}

/** The INT-N group width that holds GPTQ groups of `groupSize` (-1: the row) exactly, or null. */
export function intnGroupFor(groupSize: number, inFeatures: number): IntNGroupSize | null {
  const G = groupSize === -1 ? inFeatures : groupSize;
  return INTN_L.find((L) => G % L === 0 && inFeatures % L === 0) ?? null;
}

interface ConfigFiles { configPath: string; raw: Record<string, unknown>; qc: unknown; qcWhere: string }

function readConfigs(root: string): ConfigFiles {
  const configPath = join(root, HF_CONFIG_FILE);
  if (!existsSync(configPath)) throw new Error(`${root}: no ${HF_CONFIG_FILE}`);
  const raw = parseJson(readTextFile(configPath, HF_CONFIG_FILE), configPath);
  if (!isObject(raw)) throw new Error(`${configPath}: config is not a JSON object`);
  if (raw.quantization_config !== undefined && raw.quantization_config !== null) return { configPath, raw, qc: raw.quantization_config, qcWhere: configPath };
  const qPath = join(root, GPTQ_QUANTIZE_CONFIG_FILE);
  if (existsSync(qPath)) {
    const q = parseJson(readTextFile(qPath, GPTQ_QUANTIZE_CONFIG_FILE), qPath);
    // AutoGPTQ's quantize_config.json may leave quant_method out: the file itself says GPTQ
    return { configPath, raw, qc: isObject(q) ? { quant_method: GPTQ_QUANT_METHOD, ...q } : q, qcWhere: qPath };
  }
  return { configPath, raw, qc: undefined, qcWhere: configPath };
}

/** Whether a model directory is a GPTQ checkpoint (quantization_config.quant_method "gptq"). */
export function isGptqDir(dir: string): boolean {
  const root = resolve(dir);
  try {
    const { qc } = readConfigs(root);
    return isObject(qc) && qc.quant_method === GPTQ_QUANT_METHOD;
  } catch {
    return false;
  }
}

/** The safetensors files of a model directory and, when sharded, the file of each tensor. */
function weightFiles(root: string): { files: string[]; sourceOf: Map<string, string> } {
  const sourceOf = new Map<string, string>();
  const indexPath = join(root, HF_WEIGHTS_INDEX_FILE);
  if (existsSync(indexPath)) {
    const index = parseJson(readTextFile(indexPath, HF_WEIGHTS_INDEX_FILE), indexPath);
    if (!isObject(index) || !isObject(index.weight_map)) throw new Error(`${indexPath}: no "weight_map" object`);
    const problems: string[] = [];
    for (const [name, f] of Object.entries(index.weight_map)) {
      if (typeof f !== 'string' || !/^(?!\.\.?$)[^/\\\0]+$/.test(f)) { problems.push(`weight_map[${JSON.stringify(name)}] is not a file name in the directory: ${JSON.stringify(f)}`); continue; }
      sourceOf.set(name, join(root, f));
    }
    const files = [...new Set(sourceOf.values())].sort();
    for (const f of files) if (!existsSync(f)) problems.push(`shard ${f} is missing`);
    if (problems.length) throw new Error(`${indexPath}: ${list(problems)}`);
    return { files, sourceOf };
  }
  if (existsSync(join(root, HF_WEIGHTS_FILE))) return { files: [join(root, HF_WEIGHTS_FILE)], sourceOf };
  // AutoGPTQ names its single file after the model (e.g. gptq_model-4bit-128g.safetensors)
  const st = readdirSync(root).filter((f) => f.endsWith('.safetensors') && statSync(join(root, f)).isFile());
  if (st.length === 1) return { files: [join(root, st[0])], sourceOf };
  throw new Error(`${root}: no ${HF_WEIGHTS_FILE} or ${HF_WEIGHTS_INDEX_FILE}${st.length > 1 ? ` and ${st.length} other .safetensors files (${st.join(', ')}): which one holds the model is ambiguous` : ''}`);
}

/** The shapes a GPTQ projection's tensors must have, or why the projection cannot be one. */
function expectedParts(spec: GptqSpec, out: number, inF: number): { shapes: Record<Part, number[]>; groups: number } | string {
  const b = spec.bits, G = spec.groupSize === -1 ? inF : spec.groupSize;
  if ((inF * b) % 32 !== 0) return `${inF} input features do not fill whole 32-bit words of ${b}-bit codes`;
  if ((out * b) % 32 !== 0) return `${out} output features do not fill whole 32-bit words of ${b}-bit zero points`;
  const groups = Math.ceil(inF / G);
  return { groups, shapes: { qweight: [(inF * b) / 32, out], qzeros: [groups, (out * b) / 32], scales: [groups, out], g_idx: [inF] } };
}

/** One GPTQ projection's tensors (qweight, qzeros I32; scales f32 (converted); g_idx I32 or absent). */
export interface GptqParts { qweight: Tensor; qzeros: Tensor; scales: Tensor; g_idx?: Tensor }

/**
 * One GPTQ projection [out, in] as core's INT-N weight (see the file comment):
 * codes repacked row-major, scale = s, offset = −s · z, for every INT-N group
 * of L columns inside GPTQ group g. Every inconsistency is an error naming
 * the tensor. The parts are left to the caller.
 */
export function gptqToIntN(module: string, parts: GptqParts, spec: GptqSpec, shape: readonly [number, number]): QuantizedIntN {
  const [out, inF] = shape;
  const exp = expectedParts(spec, out, inF);
  if (typeof exp === 'string') throw new Error(`${module}: ${exp}`);
  const L = intnGroupFor(spec.groupSize, inF);
  if (L === null) {
    throw new Error(`${module}: group_size ${spec.groupSize} with ${inF} input features: the INT-N base needs groups of 16, 32, 64 or 128 consecutive columns that tile each GPTQ group and the row`);
  }
  const b = spec.bits, mask = (1 << b) - 1, G = spec.groupSize === -1 ? inF : spec.groupSize;
  const want: Record<Part, string> = { qweight: 'i32', qzeros: 'i32', scales: 'f32', g_idx: 'i32' };
  for (const p of PARTS) {
    const t = parts[p];
    if (t === undefined) { if (p === 'g_idx') continue; throw new Error(`${module}.${p} is missing`); }
    if (t.dtype !== want[p]) throw new Error(`${module}.${p} is ${t.dtype}, expected ${p === 'scales' ? 'f32 (the F16 scales converted when read)' : 'i32 (I32 in the file)'}`);
    if (!same(t.shape, exp.shapes[p])) {
      throw new Error(`${module}.${p} has shape ${shapeStr(t.shape)}; a ${b}-bit projection of ${inF} -> ${out} with group_size ${spec.groupSize} needs ${shapeStr(exp.shapes[p])}`);
    }
  }
  // the group of every column must be floor(i / G): groups of consecutive columns
  const gi = parts.g_idx ? hostValues(parts.g_idx) as Int32Array : null;
  if (gi) {
    let permuted = -1;
    for (let i = 0; i < inF; i++) {
      const g = gi[i];
      if (g < 0 || g >= exp.groups) throw new Error(`${module}.g_idx[${i}] is ${g}, outside the ${exp.groups} group(s) of group_size ${spec.groupSize}: the tensor is corrupt`);
      if (g !== Math.floor(i / G) && permuted < 0) permuted = i;
    }
    if (permuted >= 0) {
      throw new Error(`${module}.g_idx puts input column ${permuted} in group ${gi[permuted]}, not ${Math.floor(permuted / G)}: an act-order checkpoint (desc_act ${spec.descAct}) ` +
        'whose groups are scattered columns is not supported (the INT-N kernels and QA-LoRA\'s pooled adapters need groups of consecutive columns); quantize with desc_act=false, or with static_groups=true');
    }
  } else if (spec.descAct) {
    throw new Error(`${module}.g_idx is missing and desc_act is true: the group of each input column is unknown`);
  }
  const s = hostValues(parts.scales) as Float32Array;
  for (let k = 0; k < s.length; k++) {
    if (!Number.isFinite(s[k])) throw new Error(`${module}.scales[${Math.floor(k / out)}, ${k % out}] is ${s[k]}; refusing a non-finite scale`);
  }
  const qw = hostValues(parts.qweight) as Int32Array, qz = hostValues(parts.qzeros) as Int32Array;
  const numel = out * inF;
  const codes = Tensor.zeros([Math.ceil((numel * b) / 8)], { dtype: 'u8', category: 'frozen' });
  const scales = Tensor.zeros([out, inF / L], { category: 'frozen' });
  const offsets = Tensor.zeros([out, inF / L], { category: 'frozen' });
  try {
    const dst = codes.data() as Uint8Array;
    // q[i, o]: bits [i·b, i·b + b) of column o's stream; stored at element o·in + i of ours
    for (let i = 0; i < inF; i++) {
      const t = i * b, w = t >>> 5, sh = t & 31, spill = sh + b > 32;
      const row = w * out, next = row + out;
      for (let o = 0; o < out; o++) {
        let v = qw[row + o] >>> sh;
        if (spill) v |= qw[next + o] << (32 - sh);
        v &= mask;
        const e = (o * inF + i) * b, byte = e >>> 3, bs = e & 7;
        dst[byte] |= v << bs;
        if (bs + b > 8) dst[byte + 1] |= v >>> (8 - bs);
      }
    }
    const zw = (out * b) / 32, sc = scales.data() as Float32Array, off = offsets.data() as Float32Array, per = inF / L;
    let inexact = 0;
    for (let g = 0; g < exp.groups; g++) {
      for (let o = 0; o < out; o++) {
        const t = o * b, w = t >>> 5, sh = t & 31;
        let raw = qz[g * zw + w] >>> sh;
        if (sh + b > 32) raw |= qz[g * zw + w + 1] << (32 - sh);
        raw &= mask;
        const z = spec.format === 'gptq' ? (raw + 1) & mask : raw;
        const scale = s[g * out + o];
        const offset = z === 0 ? 0 : Math.fround(-(scale * z));
        if (offset !== -(scale * z)) inexact++;  // only an f32 scale with more than 16 significant bits
        // the INT-N groups inside GPTQ group g
        const j0 = (g * G) / L, j1 = Math.min(((g + 1) * G) / L, per);
        for (let j = j0; j < j1; j++) { sc[o * per + j] = scale; off[o * per + j] = offset; }
      }
    }
    const q: QuantizedIntN = {
      kind: 'intn', bits: b, groupSize: L, shape: [out, inF], numel, codes, scales, offsets, quantizer: 'gptq', bytes: intnBytes([out, inF], b, L),
    };
    if (inexact) q.note = `${inexact} zero point(s) times an f32 scale are not exact in f32 (scales stored wider than fp16); offsets rounded once`;
    return q;
  } catch (e) {
    for (const t of [codes, scales, offsets]) t.dispose();
    throw e;
  }
}

export interface LoadGptqOptions {
  /** dtype of the tensors that are not quantized (embeddings, norms, lm_head, unquantized projections): default 'f32' (an fp16 file loads exactly) */
  dtype?: 'f32' | 'bf16';
}

export interface LoadedGptq {
  /** frozen: IntNLinear for every quantized projection, DenseLinear for any the checkpoint left unquantized */
  model: LlamaModel;
  spec: GptqSpec;
  /** the INT-N group width the projections are held with (see intnGroupFor) */
  groupSize: IntNGroupSize;
  /** projections the checkpoint stores unquantized (their .weight) */
  dense: string[];
  /** what departs from the checkpoint as written (e.g. a GPTQ group split into INT-N groups) */
  notes: string[];
  files: string[];
}

/** A GPTQ checkpoint as read from its config and file headers (no tensor read yet). */
interface GptqPlan {
  root: string;
  config: LlamaConfig;
  spec: GptqSpec;
  files: string[];
  found: Map<string, { file: string; dtype: string; shape: number[] }>;
  used: Set<string>;
  /** quantized projections and their [out, in] */
  quantized: Map<string, [number, number]>;
  dense: string[];
  /** biases the architecture does not have (accepted all zero only) */
  biases: string[];
  /** the INT-N group width every projection is held with */
  L: IntNGroupSize;
}

/** The config, quantization_config and tensor headers of a GPTQ directory, every problem named before anything is read. */
function planGptq(dir: string): GptqPlan {
  const root = resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`${root}: not a directory`);
  const { configPath, raw, qc, qcWhere } = readConfigs(root);
  if (!isObject(qc) || qc.quant_method !== GPTQ_QUANT_METHOD) {
    throw new Error(`${configPath}: not a GPTQ checkpoint (quantization_config.quant_method "gptq" is required, got ${isObject(qc) ? JSON.stringify(qc.quant_method) : 'no quantization_config'})`);
  }
  const spec = gptqSpecOf(qc, qcWhere);
  const { quantization_config: _q, ...plain } = raw;
  const config = configFromHf(plain, configPath);
  const shapes = modelTensorShapes(config);
  const { files, sourceOf } = weightFiles(root);

  // headers first: every problem named before anything is read
  const found = new Map<string, { file: string; dtype: string; shape: number[] }>();
  for (const f of files) {
    for (const e of readSafetensorsHeader(f).tensors) {
      if (sourceOf.size && sourceOf.get(e.name) !== f) continue;
      found.set(e.name, { file: f, dtype: e.dtype, shape: e.shape });
    }
  }
  const problems: string[] = [];
  for (const [name, f] of sourceOf) if (!found.has(name)) problems.push(`${name} is mapped to ${f} but not in it`);
  const used = new Set<string>();
  const quantized = new Map<string, [number, number]>(), dense: string[] = [], biases: string[] = [];
  let L: IntNGroupSize | null = null;
  for (const [name, shape] of shapes) {
    const m = LINEAR.exec(name);
    const plainTensor = found.get(name);
    if (m && !plainTensor) {
      const module = m[1], [out, inF] = shape;
      const exp = expectedParts(spec, out, inF);
      if (typeof exp === 'string') { problems.push(`${module}: ${exp}`); continue; }
      const l = intnGroupFor(spec.groupSize, inF);
      if (l === null) problems.push(`${module}: group_size ${spec.groupSize} with ${inF} input features is not a whole number of INT-N groups of 16, 32, 64 or 128 columns`);
      else L = L === null ? l : (Math.min(L, l) as IntNGroupSize);
      for (const p of PARTS) {
        const n = `${module}.${p}`, got = found.get(n);
        used.add(n);
        if (!got) { if (p !== 'g_idx' || spec.descAct) problems.push(`${n} is missing`); continue; }
        const wantDtype = p === 'scales' ? FLOAT_DTYPES.has(got.dtype) : got.dtype === 'I32';
        if (!wantDtype) problems.push(`${n} has dtype ${got.dtype}, expected ${p === 'scales' ? 'F16 (or BF16, F32)' : 'I32'}`);
        if (!same(got.shape, exp.shapes[p])) problems.push(`${n} has shape ${shapeStr(got.shape)}; ${spec.bits}-bit ${inF} -> ${out} with group_size ${spec.groupSize} needs ${shapeStr(exp.shapes[p])}`);
      }
      // a bias the architecture has (Qwen2's q/k/v, attention_bias) is one of the
      // config's tensors, read below as it is (frozen, not quantized); any other
      // is accepted only all zero (some exporters write one for every projection)
      const bias = shapes.has(`${module}.bias`) ? undefined : found.get(`${module}.bias`);
      if (bias) {
        used.add(`${module}.bias`);
        if (!FLOAT_DTYPES.has(bias.dtype) || !same(bias.shape, [out])) problems.push(`${module}.bias has dtype ${bias.dtype} and shape ${shapeStr(bias.shape)}, expected a float [${out}]`);
        else biases.push(`${module}.bias`);
      }
      quantized.set(module, [out, inF]);
      continue;
    }
    if (!plainTensor) { problems.push(`${name} is missing`); continue; }
    used.add(name);
    if (!FLOAT_DTYPES.has(plainTensor.dtype)) problems.push(`${name} has dtype ${plainTensor.dtype}, expected a float (F16, BF16, F32)`);
    if (!same(plainTensor.shape, shape)) problems.push(`${name} has shape ${shapeStr(plainTensor.shape)}, config implies ${shapeStr(shape)}`);
    if (m) dense.push(m[1]);
  }
  if (found.has('lm_head.qweight')) problems.push('lm_head.qweight: a quantized lm_head is not supported (only the projections of the blocks)');
  const unexpected = [...found.keys()].filter((n) => !used.has(n) && !HARMLESS_EXTRA.test(n) && n !== 'lm_head.qweight' &&
    !(config.tieWordEmbeddings && n.startsWith('lm_head.')));
  if (unexpected.length) problems.push(`unexpected tensors (not part of a GPTQ ${archClass(config)} with this config): ${unexpected.join(', ')}`);
  if (quantized.size === 0) problems.push('no projection is quantized (no <module>.qweight found)');
  if (problems.length) throw new Error(`${root}: ${list(problems)}`);

  return { root, config, spec, files, found, used, quantized, dense, biases, L: L! };
}

/** What a GPTQ checkpoint loads as, from its config and file headers only (nothing is dequantized). */
export interface GptqInfo {
  /** the model's config, as loadGptqModel reads it */
  config: LlamaConfig;
  spec: GptqSpec;
  /** the INT-N group width the projections are held with (LoadedGptq.groupSize) */
  groupSize: IntNGroupSize;
  /** projections the checkpoint stores unquantized */
  dense: string[];
}

/** What loadGptqModel would make of a directory (bits, groups, config), checked as it checks them, without reading the weights. */
export function inspectGptqModel(dir: string): GptqInfo {
  const p = planGptq(dir);
  return { config: p.config, spec: p.spec, groupSize: p.L, dense: p.dense };
}

/** Loads a GPTQ checkpoint directory as a frozen model whose projections are INT-N, exactly (see the file comment). */
export function loadGptqModel(dir: string, opts: LoadGptqOptions = {}): LoadedGptq {
  const dtype = opts.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new TypeError(`${resolve(dir)}: dtype must be 'f32' or 'bf16', got ${JSON.stringify(dtype)}`);
  const { root, config, spec, files, found, used, quantized, dense, biases, L } = planGptq(dir);
  const notes: string[] = [];
  const G = spec.groupSize;
  if (G !== L) notes.push(`GPTQ groups of ${G === -1 ? 'a whole row' : `${G} columns`} are held as INT-N groups of ${L} columns (scale and zero point repeated; the weights are the same)`);
  const tensors = new Map<string, Tensor>();
  const linears = new Map<string, LinearLayer>();
  const pending = new Map<string, Partial<Record<Part, Tensor>>>();
  const disposeAll = () => {
    for (const t of tensors.values()) t.dispose();
    for (const l of linears.values()) l.dispose();
    for (const p of pending.values()) for (const t of Object.values(p)) t?.dispose();
  };
  const partOf = (n: string): [string, Part] | null => {
    const dot = n.lastIndexOf('.');
    const module = n.slice(0, dot), p = n.slice(dot + 1) as Part;
    return quantized.has(module) && (PARTS as readonly string[]).includes(p) ? [module, p] : null;
  };
  try {
    for (const f of files) {
      // the GPTQ parts in f32 (scales f16 -> f32 is exact), the plain tensors as asked
      const parts = readSafetensors(f, { filter: (n) => used.has(n) && found.get(n)?.file === f && partOf(n) !== null, category: 'workspace', convert: { to: 'f32' } }).tensors;
      for (const [n, t] of parts) {
        const [module, part] = partOf(n)!;
        const p = pending.get(module) ?? {};
        p[part] = t;
        pending.set(module, p);
      }
      const rest = readSafetensors(f, { filter: (n) => used.has(n) && found.get(n)?.file === f && partOf(n) === null, category: 'frozen', convert: { to: dtype } }).tensors;
      for (const [n, t] of rest) tensors.set(n, t);
      for (const n of biases) {
        const t = tensors.get(n);
        if (!t) continue;
        tensors.delete(n);
        const v = t.toFloat32();
        t.dispose();
        const nz = v.findIndex((x) => x !== 0);
        if (nz >= 0) throw new Error(`${root}: ${n}[${nz}] is ${v[nz]}: ${noBias(config, n)} (only an all-zero one is accepted)`);
      }
      // every projection whose parts are all read (they may span shards)
      for (const [module, p] of pending) {
        if (!p.qweight || !p.qzeros || !p.scales || (found.has(`${module}.g_idx`) && !p.g_idx)) continue;
        pending.delete(module);
        try {
          const q = gptqToIntN(module, p as GptqParts, spec, quantized.get(module)!);
          if (q.note) notes.push(`${module}: ${q.note}`);
          // every projection with the same INT-N group width (the smallest any row needs)
          linears.set(module, new IntNLinear(module, q.groupSize === L ? q : regroup(q, L)));
        } finally {
          for (const t of Object.values(p)) t?.dispose();
        }
      }
    }
    if (pending.size) throw new Error(`${root}: the tensors of ${[...pending.keys()].join(', ')} changed while loading`);
    for (const m of dense) {
      const w = tensors.get(`${m}.weight`)!;
      tensors.delete(`${m}.weight`);
      linears.set(m, new DenseLinear(m, w, null));
    }
    if (dense.length) notes.push(`unquantized in the checkpoint (kept dense): ${dense.join(', ')}`);
    const model = LlamaModel.fromTensors(config, tensors, { trainable: false, linears });
    return { model, spec, groupSize: L, dense, notes, files };
  } catch (e) {
    disposeAll();
    throw e;
  }
}

/** The same weight with narrower INT-N groups (scale and offset repeated): exact. */
function regroup(q: QuantizedIntN, L: IntNGroupSize): QuantizedIntN {
  const [out, inF] = q.shape, k = q.groupSize / L, from = inF / q.groupSize, to = inF / L;
  const s = q.scales.data() as Float32Array, o = q.offsets.data() as Float32Array;
  const scales = Tensor.zeros([out, to], { category: 'frozen' }), offsets = Tensor.zeros([out, to], { category: 'frozen' });
  const ns = scales.data() as Float32Array, no = offsets.data() as Float32Array;
  for (let r = 0; r < out; r++) for (let j = 0; j < to; j++) { ns[r * to + j] = s[r * from + Math.floor(j / k)]; no[r * to + j] = o[r * from + Math.floor(j / k)]; }
  q.scales.dispose();
  q.offsets.dispose();
  return { ...q, groupSize: L, scales, offsets, bytes: intnBytes([out, inF], q.bits, L) };
}

// ---------------------------------------------------------------------------
// Writing back

export interface SaveGptqOptions {
  /** zero-point convention of the file (default "gptq", v1: what transformers and AutoGPTQ read by default) */
  format?: GptqFormat;
  /**
   * Groups whose offset is not −scale · (an integer zero point in [0, 2^b − 1]) with an
   * fp16 scale (after QA-LoRA's merge: nearly all of them):
   *   'exact' (default) refuses to write, naming the first such projection;
   *   'round' rounds the zero point (and the scale to fp16), and reports the error.
   */
  zeroPoints?: 'exact' | 'round';
  /** GPTQ group_size to write: a multiple of the INT-N groups whose scales and zero points repeat, or -1 (default: the INT-N group width) */
  groupSize?: number;
}

export interface GptqExportReport {
  format: GptqFormat;
  bits: number;
  groupSize: number;
  /** every projection was written without changing a weight */
  exact: boolean;
  /** INT-N groups written / groups whose zero point (or scale) had to be rounded */
  groups: number;
  roundedGroups: number;
  /** ... of them, zero points clamped into [0, 2^b − 1] */
  clampedGroups: number;
  /** max |written weight − model weight| over every weight (0 when exact) */
  maxAbsWeightError: number;
  /** max |z' − round(z')| (before clamping), in units of the group's scale */
  maxZeroPointFraction: number;
  /** per projection, where it is not exact */
  projections: Record<string, { roundedGroups: number; maxAbsWeightError: number }>;
}

/** Packs values (< 2^b) as the GPTQ bit stream: value k of stream s at bits [k·b, k·b + b) of words[s · stride + floor(t / 32) · step]. */
function packStream(words: Int32Array, value: number, b: number, k: number, base: number, step: number): void {
  const t = k * b, w = t >>> 5, sh = t & 31;
  words[base + w * step] |= value << sh;
  if (sh + b > 32) words[base + (w + 1) * step] |= value >>> (32 - sh);
}

function codeAt(bytes: Uint8Array, b: number, e: number): number {
  const bit = e * b, i = bit >>> 3, s = bit & 7;
  const word = bytes[i] | ((i + 1 < bytes.length ? bytes[i + 1] : 0) << 8);
  return (word >>> s) & ((1 << b) - 1);
}

/** One INT-N weight in the GPTQ layout, with what writing it changed. */
export function intnToGptq(module: string, q: QuantizedIntN, opts: SaveGptqOptions = {}): {
  tensors: Map<string, Tensor>; sym: boolean; roundedGroups: number; clampedGroups: number; maxAbsWeightError: number; maxZeroPointFraction: number;
} {
  const format = opts.format ?? 'gptq', mode = opts.zeroPoints ?? 'exact';
  const [out, inF] = q.shape, L = q.groupSize, b = q.bits, maxq = (1 << b) - 1, per = inF / L;
  const G = opts.groupSize === undefined ? L : opts.groupSize === -1 ? inF : opts.groupSize;
  if (!Number.isInteger(G) || G < L || G % L !== 0) {
    throw new Error(`${module}: groupSize ${opts.groupSize} must be -1 or a multiple of the INT-N groups (${L} columns)`);
  }
  const exp = expectedParts({ bits: b, groupSize: G, sym: false, descAct: false, format }, out, inF);
  if (typeof exp === 'string') throw new Error(`${module}: cannot be written as GPTQ: ${exp}`);
  const k = G / L, groups = exp.groups;
  const sc = hostValues(q.scales) as Float32Array, off = hostValues(q.offsets) as Float32Array, codes = hostValues(q.codes) as Uint8Array;
  // one (fp16 scale, integer zero point) per INT-N group, and whether it is exact
  const s16 = new Uint16Array(out * per), zp = new Int32Array(out * per);
  let rounded = 0, clamped = 0, maxFrac = 0, maxErr = 0;
  for (let o = 0; o < out; o++) {
    for (let j = 0; j < per; j++) {
      const at = o * per + j, s = sc[at], h = f32ToF16(s), sh = f16ToF32(h);
      const zReal = sh === 0 ? 0 : -off[at] / sh;
      let z = Math.round(zReal);
      maxFrac = Math.max(maxFrac, Math.abs(zReal - z));
      if (z < 0 || z > maxq || !Number.isFinite(z)) { z = Math.min(maxq, Math.max(0, Number.isFinite(z) ? z : 0)); clamped++; }
      s16[at] = h;
      zp[at] = z;
      const exact = sh === s && off[at] === (z === 0 ? 0 : -(sh * z));
      if (exact) continue;
      rounded++;
      // every weight of the group: the model's f32 value vs the one written
      for (let i = j * L; i < (j + 1) * L; i++) {
        const c = codeAt(codes, b, o * inF + i);
        const mine = Math.fround(Math.fround(s * c) + off[at]);
        maxErr = Math.max(maxErr, Math.abs(sh * (c - z) - mine));
      }
    }
  }
  if (rounded && mode === 'exact') {
    throw new Error(`${module}: ${rounded} of ${out * per} groups have an offset that is not −scale · (an integer zero point in 0..${maxq}) with an fp16 scale ` +
      `(max |zero point − nearest integer| ${maxFrac.toPrecision(3)}), as after a QA-LoRA merge: the GPTQ layout would change their weights by up to ${maxErr.toPrecision(3)}; ` +
      "pass zeroPoints: 'round' to write them rounded (the error is reported), or save the exact INT-N model with saveQaloraModel");
  }
  // the GPTQ groups: their INT-N groups must agree
  for (let o = 0; o < out; o++) {
    for (let g = 0; g < groups; g++) {
      const j0 = g * k, j1 = Math.min(j0 + k, per);
      for (let j = j0 + 1; j < j1; j++) {
        if (s16[o * per + j] !== s16[o * per + j0] || zp[o * per + j] !== zp[o * per + j0]) {
          throw new Error(`${module}: row ${o} has different scales or zero points inside GPTQ group ${g} (${G} columns); write with groupSize ${L} (or leave groupSize out)`);
        }
      }
    }
  }
  const qweight = Tensor.zeros(exp.shapes.qweight, { dtype: 'i32', category: 'workspace' });
  const qzeros = Tensor.zeros(exp.shapes.qzeros, { dtype: 'i32', category: 'workspace' });
  const scales = Tensor.zeros(exp.shapes.scales, { dtype: 'f16', category: 'workspace' });
  const gIdx = Tensor.zeros([inF], { dtype: 'i32', category: 'workspace' });
  const qw = qweight.data() as Int32Array, qz = qzeros.data() as Int32Array, ss = scales.data() as Uint16Array, gi = gIdx.data() as Int32Array;
  let sym = true;
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) packStream(qw, codeAt(codes, b, o * inF + i), b, i, o, out);
    for (let g = 0; g < groups; g++) {
      const at = o * per + g * k, z = zp[at];
      if (z !== 1 << (b - 1)) sym = false;
      packStream(qz, format === 'gptq' ? (z - 1) & maxq : z, b, o, g * ((out * b) / 32), 1);
      ss[g * out + o] = s16[at];
    }
  }
  for (let i = 0; i < inF; i++) gi[i] = Math.floor(i / G);
  const tensors = new Map([[`${module}.qweight`, qweight], [`${module}.qzeros`, qzeros], [`${module}.scales`, scales], [`${module}.g_idx`, gIdx]]);
  return { tensors, sym, roundedGroups: rounded, clampedGroups: clamped, maxAbsWeightError: maxErr, maxZeroPointFraction: maxFrac };
}

/**
 * Writes a model whose projections are IntNLinear (a GPTQ base as loaded,
 * or after mergeQalora) as a GPTQ checkpoint directory: config.json with
 * quantization_config, model.safetensors, and gptq_export.json with what
 * writing changed (see the file comment for where it cannot stay exact).
 */
export function saveGptqModel(model: LlamaModel, dir: string, opts: SaveGptqOptions = {}): GptqExportReport & { files: string[] } {
  const format = opts.format ?? 'gptq';
  if (!GPTQ_FORMATS.includes(format)) throw new Error(`saveGptqModel: format must be "gptq" or "gptq_v2", got ${JSON.stringify(format)}`);
  if (opts.zeroPoints !== undefined && opts.zeroPoints !== 'exact' && opts.zeroPoints !== 'round') throw new Error(`saveGptqModel: zeroPoints must be 'exact' or 'round', got ${JSON.stringify(opts.zeroPoints)}`);
  const root = resolve(dir);
  const plain = new Map<string, Tensor>();
  const made: Tensor[] = [];
  let bits: number | null = null, L: number | null = null, groupSize: number | null = null, sym = true;
  const report: GptqExportReport = {
    format, bits: 0, groupSize: 0, exact: true, groups: 0, roundedGroups: 0, clampedGroups: 0, maxAbsWeightError: 0, maxZeroPointFraction: 0, projections: {},
  };
  try {
    const all = new Map<string, Tensor>();
    for (const p of model.parameters()) {
      if (p.grad) throw new Error(`saveGptqModel: ${p.name} is trainable; merge the adapters first (mergeQalora)`);
      const q = p.quantized;
      if (!q) { plain.set(p.name, p.value); continue; }
      if (q.kind !== 'intn') throw new Error(`saveGptqModel: ${p.name} is a ${q.kind} weight; the GPTQ layout holds INT-N weights only`);
      if (bits !== null && (q.bits !== bits || q.groupSize !== L)) {
        throw new Error(`saveGptqModel: ${p.name} is INT${q.bits} g${q.groupSize}, other projections are INT${bits} g${L} (one quantization_config per model)`);
      }
      bits = q.bits; L = q.groupSize;
      const module = p.name.slice(0, -'.weight'.length);
      const r = intnToGptq(module, q, opts);
      for (const [n, t] of r.tensors) { all.set(n, t); made.push(t); }
      sym &&= r.sym;
      groupSize = opts.groupSize ?? q.groupSize;
      report.groups += q.shape[0] * (q.shape[1] / q.groupSize);
      report.roundedGroups += r.roundedGroups;
      report.clampedGroups += r.clampedGroups;
      report.maxAbsWeightError = Math.max(report.maxAbsWeightError, r.maxAbsWeightError);
      report.maxZeroPointFraction = Math.max(report.maxZeroPointFraction, r.maxZeroPointFraction);
      if (r.roundedGroups) report.projections[module] = { roundedGroups: r.roundedGroups, maxAbsWeightError: r.maxAbsWeightError };
    }
    if (bits === null) throw new Error('saveGptqModel: the model has no INT-N projections');
    for (const [n, t] of plain) all.set(n, t);
    report.bits = bits;
    report.groupSize = groupSize!;
    report.exact = report.roundedGroups === 0;
    mkdirSync(root, { recursive: true });
    const config = configToHf(model.config);
    config.torch_dtype = 'float16';
    config.quantization_config = {
      quant_method: GPTQ_QUANT_METHOD, bits, group_size: groupSize, desc_act: false, sym, static_groups: false, true_sequential: true,
      checkpoint_format: format,
    };
    const weights = join(root, HF_WEIGHTS_FILE);
    writeSafetensors(weights, all, { metadata: { format: 'pt' } });
    writeJsonAtomic(join(root, HF_CONFIG_FILE), config);
    writeJsonAtomic(join(root, GPTQ_EXPORT_REPORT_FILE), report);
    return { ...report, files: [weights, join(root, HF_CONFIG_FILE), join(root, GPTQ_EXPORT_REPORT_FILE)] };
  } finally {
    for (const t of made) t.dispose();
  }
}
