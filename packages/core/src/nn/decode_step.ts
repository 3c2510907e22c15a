// A generated token in one native call: decode_plan_step runs, per block, the
// work of decode_block (norm, q/k/v, RoPE, KV-cache append, attention over the
// cache, o, norm, SwiGLU MLP, both residual adds), then that of decode_head
// (final norm, LM head, argmax). The residual row, the scratch and the logits
// are allocated once per generation and reused for every token; every operand
// is parsed once, into the plan (decode_plan), which holds its tensors'
// storage until dispose().
//
// It covers the plain LLaMA block on the CPU for one sequence, with dense
// (f32 / bf16), INT-N or 4-bit projections. Anything else (another device, a
// batch, adapters or other layer types, a configuration field this path does
// not know) makes FusedDecoder.create return null and the caller keeps the
// op-by-op path (LlamaModel.hidden + logits), which gives the same values to
// float rounding (test/decode_kernels.test.ts).
import { bf16ToF32 } from '../dtype.js';
import { type NativeTensorHandle, native, nativeFn } from '../native.js';
import { intnConstants16, intnNativeOperand } from '../quant/intn.js';
import { nativeOperand } from '../quant/quant4.js';
import { Tensor } from '../tensor.js';
import { type LlamaConfig, headDim } from './config.js';
import { DenseLinear, IntNLinear, Quant4Linear } from './linear.js';
import { KVCache, LINEAR_NAMES, LlamaModel } from './llama.js';

type H = NativeTensorHandle;
const decodeBlock = nativeFn<(x: H, ln1: H, ln2: H, wq: object, wk: object, wv: object, wo: object, wg: object, wu: object, wd: object,
  kc: H, vc: H, scratch: H, C: number, I: number, Hq: number, Hkv: number, D: number, Tmax: number, pos: number,
  eps: number, theta: number, scale: number, activations: DecodeActivations) => void>('decode_block');
const decodeHead = nativeFn<(x: H, norm: H, w: object, logits: H, C: number, V: number, eps: number, activations: DecodeActivations) => number>('decode_head');
type Plan = object;
const decodePlan = nativeFn<(blocks: unknown[][], x: H, scratch: H, logits: H, norm: H, head: object, C: number, I: number, Hq: number, Hkv: number,
  D: number, Tmax: number, V: number, eps: number, theta: number, scale: number, activations: DecodeActivations) => Plan>('decode_plan');
const decodePlanStep = nativeFn<(plan: Plan, pos: number) => number>('decode_plan_step');
const decodePlanRelease = nativeFn<(plan: Plan) => void>('decode_plan_release');

/** What the decode GEMVs multiply the quantized (INT-N, NF4/FP4) weights with:
 * 'f32' the activations as they are; 'i16' each activation row quantized to
 * int16 per weight group or block (round to nearest, step 1/32767 of the
 * block's largest |x|; the 4-bit table held to 1/16383) and integer dot
 * products straight from the packed codes, which is faster where the build
 * has AVX-512 with VBMI (elsewhere, and for dense weights, 'f32' runs);
 * 'i8' the INT-N (2, 3, 4, 8 bits) and NF4/FP4 projections' activations
 * quantized to int8 per group or block (step 1/127 of its largest |x|, as
 * llama.cpp's Q8 activations; the 4-bit code book's magnitudes held to 1/255
 * of the largest) and u8 x s8 dot products where the build has AVX-512 with
 * VNNI (NF4/FP4: and BITALG), a coarser rounding for speed; every other
 * projection as 'i16'. Both integer paths compute w . x^ exactly for the
 * rounded x^ (INT-N offsets multiply x^'s group sums), as llama.cpp's
 * quantized dot products do. generate() and FusedDecoder default to 'i16';
 * the bench's decode figures to the fastest built (fastestDecodeActivations). */
export type DecodeActivations = 'f32' | 'i16' | 'i8';

/** Whether this build has the 'i16' decode path (AVX-512 with VBMI). */
export const decodeI16Available = (): boolean => (native as unknown as { decodeI16?: boolean }).decodeI16 === true;
/** Whether this build has the 'i8' decode path for INT2, INT3, INT4 and INT8 (AVX-512 with VBMI and VNNI). */
export const decodeI8Available = (): boolean => (native as unknown as { decodeI8?: boolean }).decodeI8 === true;
/** Whether this build's 'i8' decode path also covers NF4/FP4 weights (AVX-512 with VBMI, VNNI and BITALG). */
export const decodeI8Q4Available = (): boolean => (native as unknown as { decodeI8Q4?: boolean }).decodeI8Q4 === true;

/** What the quantized projections multiply in this build when `requested`
 * is asked for: 'i8' runs as 'i16' where the build lacks it, 'i16' as 'f32'.
 * (Within a build that has 'i8', NF4/FP4 projections still run it as 'i16'
 * without decodeI8Q4Available(), and a projection whose shape a path does not
 * take runs the next one; dense projections always multiply x as it is.) */
export function decodeActivationsBuilt(requested: DecodeActivations): DecodeActivations {
  if (requested === 'i8' && !decodeI8Available()) requested = 'i16';
  if (requested === 'i16' && !decodeI16Available()) requested = 'f32';
  return requested;
}

/** The fastest activations this build has: 'i8' (AVX-512 with VBMI and VNNI), else 'i16' (VBMI), else 'f32'. */
export const fastestDecodeActivations = (): DecodeActivations => decodeActivationsBuilt('i8');

export interface FusedDecoderOptions {
  /** default 'i16' (see DecodeActivations) */
  activations?: DecodeActivations;
}

// The configuration fields this path implements, each with the values it
// implements it for (architecture switches only in their plain-Llama
// setting); a field not listed here, or another value, declines the path.
const any = (): boolean => true;
const absentOr = (...ok: unknown[]) => (v: unknown): boolean => v === undefined || ok.includes(v);
const PLAIN_CONFIG: Readonly<Record<string, (v: unknown, c: LlamaConfig) => boolean>> = {
  vocabSize: any, hiddenSize: any, intermediateSize: any, numLayers: any, numHeads: any, numKvHeads: any, rmsNormEps: any,
  ropeTheta: any, maxPositionEmbeddings: any, tieWordEmbeddings: any,
  ropeScaling: absentOr(null),
  modelType: absentOr('llama'),
  headDim: (v, c) => v === undefined || v === c.hiddenSize / c.numHeads,
  qkvBias: absentOr(false),
  oBias: absentOr(false),
  qkNorm: absentOr(false),
  slidingWindow: absentOr(null),
};

const PLAIN_LAYERS = new Set<unknown>([DenseLinear.prototype, IntNLinear.prototype, Quant4Linear.prototype]);

/** Why the fused decode step cannot run this model and cache, or null when it can. */
export function fusedDecodeUnsupported(model: LlamaModel, cache: KVCache): string | null {
  if (Object.getPrototypeOf(model) !== LlamaModel.prototype) return 'not a plain LlamaModel';
  if (model.device !== 'cpu' || cache.device !== 'cpu') return 'not on the CPU';
  if (cache.batch !== 1) return 'more than one sequence';
  const cfg = model.config as unknown as Record<string, unknown>;
  const extra = Object.keys(cfg).filter((k) => !PLAIN_CONFIG[k]?.(cfg[k], model.config));
  if (extra.length > 0) return `configuration fields or values it does not implement: ${extra.map((k) => `${k}=${JSON.stringify(cfg[k])}`).join(', ')}`;
  const dtypeOk = (t: Tensor) => t.dtype === 'f32' || t.dtype === 'bf16';
  if (!dtypeOk(model.embed.value) || !dtypeOk(model.norm.value) || (model.lmHead && !dtypeOk(model.lmHead.value))) return 'embedding, norm or head not f32/bf16';
  for (const b of model.blocks) {
    if (!dtypeOk(b.ln1.value) || !dtypeOk(b.ln2.value)) return 'norm weights not f32/bf16';
    for (const n of LINEAR_NAMES) {
      const l = b.linears[n];
      if (!PLAIN_LAYERS.has(Object.getPrototypeOf(l))) return `${l.name} is not a plain dense or quantized linear layer`;
      if (l instanceof DenseLinear && !dtypeOk(l.weight.value)) return `${l.name} weight not f32/bf16`;
    }
  }
  return null;
}

export class FusedDecoder {
  /** logits of the last step (valid until the next step) */
  readonly logits: Float32Array;
  private readonly x: Tensor;        // [2C]: the residual row, then the head's normed row
  private readonly scratch: Tensor;
  private readonly logitsT: Tensor;
  private readonly ops: object[][];  // per block: q, k, v, o, gate, up, down operands
  private readonly headOp: object;
  private readonly embedValues: Float32Array | Uint16Array;
  private readonly plan: Plan;
  private disposed = false;

  /** what the quantized projections multiply (see DecodeActivations) */
  readonly activations: DecodeActivations;
  /** fp16 group constants of INT-N projections, built for this decoder (intnConstants16) */
  private readonly constants: Tensor[] = [];
  /** how many INT-N projections read fp16 copies of their group constants */
  get fp16Constants(): number { return this.constants.length; }

  private constructor(private readonly model: LlamaModel, private readonly cache: KVCache, opts: FusedDecoderOptions) {
    const act = opts.activations ?? 'i16';
    if (act !== 'f32' && act !== 'i16' && act !== 'i8') throw new Error(`FusedDecoder: activations must be 'f32', 'i16' or 'i8', got ${JSON.stringify(act)}`);
    this.activations = act;
    const cfg = model.config, C = cfg.hiddenSize, D = headDim(cfg);
    this.x = Tensor.zeros([2 * C], { category: 'activation' });
    this.scratch = Tensor.zeros([C + 2 * cfg.numHeads * D + 2 * cfg.intermediateSize + cache.maxLength + D], { category: 'activation' });
    this.logitsT = Tensor.zeros([cfg.vocabSize], { category: 'activation' });
    this.logits = this.logitsT.data() as Float32Array;
    this.ops = model.blocks.map((b) => LINEAR_NAMES.map((n) => {
      const l = b.linears[n] as DenseLinear | IntNLinear | Quant4Linear;
      if (l instanceof IntNLinear && act !== 'f32') {
        // fp16 copies of the group constants where they are exact (the same values, fewer bytes per token)
        const c = intnConstants16(l.quantized, { category: 'workspace' });
        if (c) { this.constants.push(c.tensor); return intnNativeOperand(l.quantized, c); }
      }
      return nativeOperand(l instanceof DenseLinear ? l.weight.value : l.quantized);
    }));
    this.headOp = nativeOperand((model.lmHead ?? model.embed).value);
    this.embedValues = model.embed.value.data() as Float32Array | Uint16Array;
    // every operand parsed once: a step is then one native call (decode_plan_step)
    this.plan = decodePlan(model.blocks.map((b, i) => [b.ln1.value.handle, b.ln2.value.handle, ...this.ops[i], cache.k[i].handle, cache.v[i].handle]),
      this.x.handle, this.scratch.handle, this.logitsT.handle, model.norm.value.handle, this.headOp, C, cfg.intermediateSize, cfg.numHeads,
      cfg.numKvHeads, D, cache.maxLength, cfg.vocabSize, cfg.rmsNormEps, cfg.ropeTheta, 1 / Math.sqrt(D), act);
  }

  /** A decoder for this model and cache, or null when the fused path does not cover them. */
  static create(model: LlamaModel, cache: KVCache, opts: FusedDecoderOptions = {}): FusedDecoder | null {
    return fusedDecodeUnsupported(model, cache) === null ? new FusedDecoder(model, cache, opts) : null;
  }

  /** Feeds `token` at position cache.length (appending its keys and values);
   * returns the argmax of the next-token logits, which are left in `logits`. */
  step(token: number): number {
    const pos = this.embedToken(token);
    const next = decodePlanStep(this.plan, pos);
    this.cache.length = pos + 1;
    return next;
  }

  /** Checks the token and the cache, writes the token's embedding into x; returns its position. */
  private embedToken(token: number): number {
    if (this.disposed) throw new Error('FusedDecoder.step: this decoder was disposed (its plan released); make a new one');
    const { model, cache } = this, cfg = model.config, C = cfg.hiddenSize;
    if (!Number.isInteger(token) || token < 0 || token >= cfg.vocabSize) throw new RangeError(`FusedDecoder.step: token ${token} is outside [0, ${cfg.vocabSize})`);
    const pos = cache.length;
    if (pos >= cache.maxLength) throw new RangeError(`FusedDecoder.step: the cache is full (${cache.maxLength} positions)`);
    const xv = this.x.data() as Float32Array, e = this.embedValues, base = token * C;
    if (e instanceof Float32Array) xv.set(e.subarray(base, base + C));
    else for (let i = 0; i < C; i++) xv[i] = bf16ToF32(e[base + i]);
    return pos;
  }

  /** The same step through one decode_block call per block and decode_head,
   * each parsing its operands (what step did before the plan; kept for tests
   * and bench:decode-step). */
  stepByBlock(token: number): number {
    const { model, cache } = this, cfg = model.config, C = cfg.hiddenSize, D = headDim(cfg);
    const pos = this.embedToken(token);
    const scale = 1 / Math.sqrt(D);
    model.blocks.forEach((b, i) => {
      const o = this.ops[i];
      decodeBlock(this.x.handle, b.ln1.value.handle, b.ln2.value.handle, o[0], o[1], o[2], o[3], o[4], o[5], o[6],
        cache.k[i].handle, cache.v[i].handle, this.scratch.handle, C, cfg.intermediateSize, cfg.numHeads, cfg.numKvHeads, D,
        cache.maxLength, pos, cfg.rmsNormEps, cfg.ropeTheta, scale, this.activations);
    });
    cache.length = pos + 1;
    return decodeHead(this.x.handle, model.norm.value.handle, this.headOp, this.logitsT.handle, C, cfg.vocabSize, cfg.rmsNormEps, this.activations);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    decodePlanRelease(this.plan);
    for (const t of [this.x, this.scratch, this.logitsT, ...this.constants]) t.dispose();
  }
}
