// LLaMA-architecture decoder, forward and backward written by hand.
//
//   ids [B, T] -> x0 = embed(ids)                                   [N, C], N = B*T
//   per block:  h1 = rms(x) ; q,k,v = Lq,Lk,Lv(h1) (+ bq, bk, bv with qkvBias)
//               q,k = rms per head (qkNorm) ; rope(q), rope(k)
//               a = attention(q, k, v) (causal, GQA; inside its segment when
//                   the batch is packed; the last slidingWindow positions
//                   only, with a window) ; x2 = x + Lo(a) (+ bo with oBias)
//   rope positions: the batch's (restarting per packed example), else 0..T-1
//               h2 = rms(x2) ; m = swiglu(Lgate(h2), Lup(h2)) ; x' = x2 + Ldown(m)
//   hf = rms(x_L) ; loss = cross_entropy(hf · W_head^T, targets)    (fused, chunked)
//
// Forward keeps, by name, what backward needs. Gradient rule: parameter
// gradients accumulate (micro-batches add up); activation gradients are
// written, except the residual stream's, which accumulates.
// Every projection is a LinearLayer (module.ts) so methods can replace it.
import { attentionBackward, attentionDecode, attentionForward, checkSegments } from '../ops/attention.js';
import { crossEntropyBackward, crossEntropyForward } from '../ops/cross_entropy.js';
import { addInPlace, fill } from '../ops/elementwise.js';
import { embeddingBackward, embeddingForward } from '../ops/embedding.js';
import { matmul } from '../ops/gemm.js';
import { rmsnorm, rmsnormBackward } from '../ops/rmsnorm.js';
import { rope, ropeBackward } from '../ops/rope.js';
import { swiglu, swigluBackward } from '../ops/swiglu.js';
import type { Device } from '../dtype.js';
import { Tensor, copyRows, hostValues } from '../tensor.js';
import { Rng } from '../util/rng.js';
import { type LlamaConfig, attentionWindow, headDim, validateConfig } from './config.js';
import { type RopeFrequencies, ropeFrequencies, ropePositionLimit, ropePositionLimitText } from './rope_scaling.js';
import { DenseLinear } from './linear.js';
import { type LinearLayer, type Parameter, moveParameter } from './module.js';

export const LINEAR_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LinearName = (typeof LINEAR_NAMES)[number];
/** The projections that carry a bias in some architectures (config qkvBias, oBias). */
export type BiasedName = 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj';

/** Which attention projections of a config carry a bias. Biases are
 * parameters of the block, not of the LinearLayer: they train under full
 * fine-tuning and stay as they are (frozen, never quantized) when a method
 * replaces the projection. */
export function biasedProjections(config: LlamaConfig): BiasedName[] {
  return [...(config.qkvBias ? ['q_proj', 'k_proj', 'v_proj'] as const : []), ...(config.oBias ? ['o_proj'] as const : [])];
}

/** The per-block parameters of the architecture switches (absent in Llama). */
export interface BlockExtras {
  /** projection biases by projection name, [out] each */
  bias: Partial<Record<BiasedName, Parameter>>;
  /** per-head RMSNorm weights of q and k, [headDim] (qkNorm) */
  qNorm: Parameter | null;
  kNorm: Parameter | null;
}

export interface WeightOptions {
  /** storage of the weights: f32 (default) or bf16 (frozen only) */
  dtype?: 'f32' | 'bf16';
  /** allocate gradients and count the weights as trainable (full fine-tuning); default true */
  trainable?: boolean;
}

/** Builds a projection's layer from its weight [out, in] (module name, e.g.
 * model.layers.0.mlp.up_proj). Owns the weight from then on: it may keep it,
 * or quantize it and free it. */
export type LinearFactory = (name: string, weight: Tensor) => LinearLayer;

export interface FromTensorsOptions {
  /** train every weight (default true) */
  trainable?: boolean;
  /** builds each projection as its weight is taken (frozen models only) */
  linear?: LinearFactory;
  /** projections built already, by module name (their weights are then absent from the tensors) */
  linears?: ReadonlyMap<string, LinearLayer>;
}

/**
 * Activation checkpointing: which blocks keep only their input during a
 * training forward and recompute the rest in backward.
 *   'off'      every block keeps what its backward needs (default)
 *   'block'    every block is recomputed
 *   'every:k'  blocks 0, k, 2k, ... are recomputed
 * The recomputation runs the same kernels in the same order on the same
 * input (dropout replays its random stream), so losses and gradients are
 * bit-identical to 'off' on the CPU.
 */
export type CheckpointingMode = 'off' | 'block' | `every:${number}`;

/** Parses 'off' | 'block' | 'every:<k>' (k a positive integer); throws naming what is accepted. */
export function parseCheckpointing(s: unknown): CheckpointingMode {
  if (s === 'off' || s === 'block') return s;
  if (typeof s === 'string') {
    const m = /^every:(\d+)$/.exec(s);
    if (m && Number(m[1]) >= 1 && Number(m[1]) <= 1e6) return `every:${Number(m[1])}`;
  }
  throw new Error(`checkpointing must be 'off', 'block' or 'every:<k>' with k a positive integer, got ${JSON.stringify(s)}`);
}

/** Whether block i of a model is recomputed under `mode`. */
export function isCheckpointed(mode: CheckpointingMode, i: number): boolean {
  if (mode === 'off') return false;
  if (mode === 'block') return true;
  return i % Number(mode.slice(6)) === 0;
}

export interface Batch {
  /** [B, T] i32 token ids */
  ids: Tensor;
  /** [B, T] i32 next-token targets; ignoreIndex (-100) masks a position */
  targets: Tensor;
  /** [B, T] i32 segment ids of packed rows (several examples per row):
   * attention stays inside a segment; ids are contiguous, non-decreasing runs
   * per row, padding has its own (see ops/attention.ts). Absent: one segment
   * per row. */
  segments?: Tensor;
  /** [B, T] i32 RoPE position of each token (restarting at 0 at each packed
   * example), each in [0, max_position_embeddings) (further under rope
   * scaling: ropePositionLimit). Absent: 0..T-1 per row. */
  positions?: Tensor;
  /** non-padding input tokens of the batch (throughput counts these);
   * absent: all B * T */
  realTokens?: number;
}

/** Disposes every tensor of a batch (ids, targets, segments, positions). */
export function disposeBatch(b: Batch): void {
  b.ids.dispose();
  b.targets.dispose();
  b.segments?.dispose();
  b.positions?.dispose();
}

export interface ForwardResult {
  /** summed loss over the non-ignored targets of this batch */
  lossSum: number;
  /** number of non-ignored targets */
  count: number;
  /** per batch row (with rowLosses): summed loss and target count */
  rows?: { lossSum: Float64Array; count: Int32Array };
}

function linearPrefix(layer: number, n: LinearName): string {
  const group = n === 'gate_proj' || n === 'up_proj' || n === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${group}.${n}`;
}

/** Batch positions: i32 [B, T], each in [0, maxPositions). */
function checkPositions(positions: Tensor, B: number, T: number, maxPositions: number, cfg: LlamaConfig): void {
  if (!(positions instanceof Tensor) || positions.dtype !== 'i32' || positions.shape.length !== 2 || positions.shape[0] !== B || positions.shape[1] !== T) {
    const got = positions instanceof Tensor ? `${positions.dtype} [${positions.shape.join(', ')}]` : typeof positions;
    throw new Error(`forward: batch positions must be i32 [${B}, ${T}] like ids, got ${got}`);
  }
  const v = hostValues(positions) as Int32Array;
  for (let i = 0; i < v.length; i++) {
    if (v[i] < 0 || v[i] >= maxPositions) {
      throw new Error(`forward: batch position ${v[i]} (row ${Math.floor(i / T)}, token ${i % T}) is outside [0, ${cfg.ropeScaling ? ropePositionLimitText(cfg) : `max_position_embeddings = ${maxPositions}`})`);
    }
  }
}

/** The length a batch covers: its largest position + 1 (T without positions). */
function batchSeqLen(batch: Batch, T: number): number {
  if (!batch.positions) return T;
  const v = hostValues(batch.positions) as Int32Array;
  let m = 0;
  for (let i = 0; i < v.length; i++) if (v[i] > m) m = v[i];
  return m + 1;
}

/** y [N, out] += bias [out] on every row, as a rank-1 GEMM ones [N, 1] x bias [1, out]
 * (exact on the CPU; on CUDA the GEMM reads the bias rounded to bf16, as it
 * reads every weight). */
function addBias(y: Tensor, bias: Tensor, ones: Tensor): void {
  matmul(ones, bias.reshape([1, bias.numel]), { out: y, beta: 1 });
}

/** dbias [out] += the column sums of dy [N, out] (ones [N, 1]). */
function biasBackward(dy: Tensor, bias: Parameter, ones: Tensor): void {
  if (!bias.grad) return;
  matmul(ones, dy, { transA: true, out: bias.grad.reshape([1, bias.grad.numel]), beta: 1 });
}

function param(name: string, value: Tensor, trainable: boolean): Parameter {
  return { name, value, grad: trainable ? Tensor.zeros(value.shape, { category: 'grad', device: value.device }) : null };
}

/** An i32 activation tensor on `device` filled by `fill`: written in place on
 * the CPU, built on the host and copied over elsewhere. */
function intTensor(shape: readonly number[], device: Device, fill: (v: Int32Array) => void): Tensor {
  if (device === 'cpu') {
    const t = Tensor.zeros(shape, { dtype: 'i32', category: 'activation' });
    fill(t.data() as Int32Array);
    return t;
  }
  const v = new Int32Array(shape.reduce((a, b) => a * b, 1));
  fill(v);
  return Tensor.from(v, shape, { dtype: 'i32', category: 'activation', device });
}

/** Runs fn on a CPU tensor: t itself, or a host copy freed afterwards (checks that read values). */
function onHost<T>(t: Tensor, fn: (h: Tensor) => T): T {
  if (t.device === 'cpu') return fn(t);
  const h = t.to('cpu', { category: 'workspace' });
  try { return fn(h); } finally { h.dispose(); }
}

class LlamaBlock {
  readonly index: number;
  readonly ln1: Parameter;
  readonly ln2: Parameter;
  readonly linears: Record<LinearName, LinearLayer>;
  readonly extras: BlockExtras;
  private saved: Record<string, Tensor> | null = null;

  constructor(index: number, ln1: Parameter, ln2: Parameter, linears: Record<LinearName, LinearLayer>,
              extras: BlockExtras = { bias: {}, qNorm: null, kNorm: null }) {
    this.index = index;
    this.ln1 = ln1;
    this.ln2 = ln2;
    this.linears = linears;
    this.extras = extras;
  }

  /** extras' parameters in state_dict order: each bias after its projection, then q_norm, k_norm */
  private extraParameters(): Parameter[] {
    const e = this.extras, p: Parameter[] = [];
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const) if (e.bias[n]) p.push(e.bias[n]!);
    if (e.qNorm) p.push(e.qNorm);
    if (e.kNorm) p.push(e.kNorm);
    return p;
  }

  // x [N, C] -> x' [N, C] (new). Keeps what backward needs when training.
  // With a KV cache (inference): the new keys/values are appended at
  // cache.length; a first call attends among its own T tokens, later calls
  // (T = 1) attend over the cache.
  // freqs: the scaled RoPE's table and attention scale (nn/rope_scaling.ts); absent: plain RoPE
  forward(x: Tensor, positions: Tensor, cfg: LlamaConfig, B: number, T: number, training: boolean,
          cache?: { k: Tensor; v: Tensor; length: number }, segments?: Tensor, freqs?: RopeFrequencies): Tensor {
    const D = headDim(cfg), N = B * T;
    const L = this.linears, E = this.extras;
    const window = attentionWindow(cfg);
    const { y: h1, rstd: rstd1 } = rmsnorm(x, this.ln1.value, { eps: cfg.rmsNormEps });
    const q = L.q_proj.forward(h1), k = L.k_proj.forward(h1), v = L.v_proj.forward(h1);
    // architecture extras: biases (a ones column for the rank-1 GEMMs), per-head q/k norms
    const extra: Record<string, Tensor> = {};
    const ones = E.bias.q_proj || E.bias.k_proj || E.bias.v_proj || E.bias.o_proj
      ? fill(Tensor.zeros([N, 1], { category: 'activation', device: x.device }), 1) : null;
    if (ones) extra.ones = ones;
    if (E.bias.q_proj) addBias(q, E.bias.q_proj.value, ones!);
    if (E.bias.k_proj) addBias(k, E.bias.k_proj.value, ones!);
    if (E.bias.v_proj) addBias(v, E.bias.v_proj.value, ones!);
    let q4: Tensor, k4: Tensor;
    if (E.qNorm && E.kNorm) {
      // RMSNorm of each head's D values: q [N, Hq*D] seen as [N*Hq, D]; q and k (pre-norm) kept for backward
      const qn = rmsnorm(q.reshape([N * cfg.numHeads, D]), E.qNorm.value, { eps: cfg.rmsNormEps });
      const kn = rmsnorm(k.reshape([N * cfg.numKvHeads, D]), E.kNorm.value, { eps: cfg.rmsNormEps });
      Object.assign(extra, { qPre: q, kPre: k, qRstd: qn.rstd, kRstd: kn.rstd });
      q4 = qn.y.reshape([B, T, cfg.numHeads, D]);
      k4 = kn.y.reshape([B, T, cfg.numKvHeads, D]);
    } else {
      q4 = q.reshape([B, T, cfg.numHeads, D]);
      k4 = k.reshape([B, T, cfg.numKvHeads, D]);
    }
    const v4 = v.reshape([B, T, cfg.numKvHeads, D]);
    rope(q4, positions, { theta: cfg.ropeTheta, ...freqs, out: q4 });
    rope(k4, positions, { theta: cfg.ropeTheta, ...freqs, out: k4 });
    let att: Tensor, lse: Tensor;
    if (cache) {
      writeCache(cache.k, k4, cache.length);
      writeCache(cache.v, v4, cache.length);
      if (cache.length === 0) ({ out: att, lse } = attentionForward(q4, k4, v4, { window }));
      else {
        if (T !== 1) throw new Error('forward with a filled KV cache takes one new token per sequence');
        att = attentionDecode(q4, cache.k, cache.v, cache.length + 1, { window });
        lse = Tensor.zeros([0], { device: q4.device });
      }
    } else {
      ({ out: att, lse } = attentionForward(q4, k4, v4, { segments, window }));
    }
    const att2 = att.reshape([N, cfg.numHeads * D]);
    const o = L.o_proj.forward(att2);
    if (E.bias.o_proj) addBias(o, E.bias.o_proj.value, ones!);
    const x2 = o;  // x2 = x + o, in o's memory
    addInPlace(x2, x);
    const { y: h2, rstd: rstd2 } = rmsnorm(x2, this.ln2.value, { eps: cfg.rmsNormEps });
    const g = L.gate_proj.forward(h2), u = L.up_proj.forward(h2);
    const m = swiglu(g, u);
    const out = L.down_proj.forward(m);
    addInPlace(out, x2);
    if (training) {
      this.saved = { x, h1, rstd1, q4, k4, v4, att, lse, att2, x2, h2, rstd2, g, u, m, ...extra };
    } else {
      for (const t of [h1, rstd1, q, k, q4, k4, v, att, lse, x2, h2, rstd2, g, u, m, ...Object.values(extra)]) t.dispose();
      for (const n of LINEAR_NAMES) L[n].clearSaved();
    }
    return out;
  }

  // dres [N, C]: gradient of the block output; on return it holds the
  // gradient of the block input (the residual stream accumulates in place).
  backward(dres: Tensor, positions: Tensor, cfg: LlamaConfig, segments?: Tensor, freqs?: RopeFrequencies): void {
    const s = this.saved;
    if (!s) throw new Error(`model.layers.${this.index}: backward called without a training forward`);
    const L = this.linears, E = this.extras;
    const N = dres.shape[0], D = headDim(cfg);
    // MLP branch
    const dm = L.down_proj.backward(dres);
    const { dgate, dup } = swigluBackward(dm, s.g, s.u);
    dm.dispose();
    const dh2 = L.gate_proj.backward(dgate);
    L.up_proj.backward(dup, dh2);
    dgate.dispose(); dup.dispose();
    const { dx: dx2 } = rmsnormBackward(dh2, s.x2, this.ln2.value, s.rstd2, { dweight: this.ln2.grad ?? undefined, dx: dh2 });
    addInPlace(dres, dx2);
    dh2.dispose();
    // attention branch
    if (E.bias.o_proj) biasBackward(dres, E.bias.o_proj, s.ones);
    const datt2 = L.o_proj.backward(dres);
    const datt = datt2.reshape(s.att.shape);
    const window = attentionWindow(cfg);
    const { dq, dk, dv } = attentionBackward(datt, s.q4, s.k4, s.v4, s.att, s.lse, { segments, window });
    datt2.dispose();
    ropeBackward(dq, positions, { theta: cfg.ropeTheta, ...freqs, out: dq });
    ropeBackward(dk, positions, { theta: cfg.ropeTheta, ...freqs, out: dk });
    if (E.qNorm && E.kNorm) {  // through the per-head norms, in place
      const dq2 = dq.reshape([N * cfg.numHeads, D]), dk2 = dk.reshape([N * cfg.numKvHeads, D]);
      rmsnormBackward(dq2, s.qPre.reshape(dq2.shape), E.qNorm.value, s.qRstd, { dweight: E.qNorm.grad ?? undefined, dx: dq2 });
      rmsnormBackward(dk2, s.kPre.reshape(dk2.shape), E.kNorm.value, s.kRstd, { dweight: E.kNorm.grad ?? undefined, dx: dk2 });
    }
    if (E.bias.q_proj) biasBackward(dq.reshape([N, dq.numel / N]), E.bias.q_proj, s.ones);
    if (E.bias.k_proj) biasBackward(dk.reshape([N, dk.numel / N]), E.bias.k_proj, s.ones);
    if (E.bias.v_proj) biasBackward(dv.reshape([N, dv.numel / N]), E.bias.v_proj, s.ones);
    const dh1 = L.q_proj.backward(dq.reshape([N, dq.numel / N]));
    L.k_proj.backward(dk.reshape([N, dk.numel / N]), dh1);
    L.v_proj.backward(dv.reshape([N, dv.numel / N]), dh1);
    dq.dispose(); dk.dispose(); dv.dispose();
    const { dx: dx1 } = rmsnormBackward(dh1, s.x, this.ln1.value, s.rstd1, { dweight: this.ln1.grad ?? undefined, dx: dh1 });
    addInPlace(dres, dx1);
    dh1.dispose();
    this.releaseSaved();
  }

  to(device: Device): void {
    this.releaseSaved();
    for (const n of LINEAR_NAMES) this.linears[n].to(device);
    moveParameter(this.ln1, device);
    moveParameter(this.ln2, device);
    for (const p of this.extraParameters()) moveParameter(p, device);
  }

  /** The random states of the block's linears (dropout), in LINEAR_NAMES order. */
  randomStates(): unknown[] {
    return LINEAR_NAMES.map((n) => this.linears[n].randomState?.());
  }

  setRandomStates(states: readonly unknown[]): void {
    LINEAR_NAMES.forEach((n, k) => { if (states[k] !== undefined) this.linears[n].setRandomState?.(states[k]); });
  }

  releaseSaved(): void {
    if (!this.saved) return;
    const { x: _input, ...owned } = this.saved;  // x belongs to the model's residual list
    for (const t of Object.values(owned)) t.dispose();
    this.saved = null;
    for (const n of LINEAR_NAMES) this.linears[n].clearSaved();
  }

  /** In state_dict order: each projection (a bias right after its own), q_norm, k_norm, then the two norms. */
  parameters(): Parameter[] {
    const p: Parameter[] = [];
    const E = this.extras;
    for (const n of LINEAR_NAMES) {
      p.push(...this.linears[n].parameters());
      const b = n === 'q_proj' || n === 'k_proj' || n === 'v_proj' || n === 'o_proj' ? E.bias[n] : undefined;
      if (b) p.push(b);
      if (n === 'o_proj') { if (E.qNorm) p.push(E.qNorm); if (E.kNorm) p.push(E.kNorm); }
    }
    p.push(this.ln1, this.ln2);
    return p;
  }

  dispose(): void {
    this.releaseSaved();
    for (const n of LINEAR_NAMES) this.linears[n].dispose();
    for (const p of [this.ln1, this.ln2, ...this.extraParameters()]) { p.value.dispose(); p.grad?.dispose(); }
  }
}

export class LlamaModel {
  readonly config: LlamaConfig;
  readonly embed: Parameter;
  readonly blocks: LlamaBlock[];
  readonly norm: Parameter;
  /** the LM head; null when tied to the embedding */
  readonly lmHead: Parameter | null;
  private state: {
    ids: Tensor; targets: Tensor; positions: Tensor; segments: Tensor | undefined; residuals: Tensor[];
    /** the forward's scaled-RoPE table (undefined: plain RoPE) */
    freqs: RopeFrequencies | undefined;
    /** the batch's ids and targets copied to the model's device (none on the CPU) */
    uploaded: Tensor[];
    hf: Tensor; rstdF: Tensor; lse: Tensor; losses: Tensor; B: number; T: number;
    /** per recomputed block: the random states its linears started from */
    replay: Map<number, unknown[]>;
  } | null = null;
  private checkpointMode: CheckpointingMode = 'off';

  /** Activation checkpointing of training forwards (see CheckpointingMode). */
  get checkpointing(): CheckpointingMode {
    return this.checkpointMode;
  }

  set checkpointing(mode: CheckpointingMode) {
    this.checkpointMode = parseCheckpointing(mode);
  }

  private constructor(config: LlamaConfig, embed: Parameter, blocks: LlamaBlock[], norm: Parameter, lmHead: Parameter | null) {
    this.config = config;
    this.embed = embed;
    this.blocks = blocks;
    this.norm = norm;
    this.lmHead = lmHead;
  }

  /** A model built from tensors named as in Hugging Face checkpoints (the
   * names of hfTensorShapes). Takes ownership of the tensors. Weights that
   * train must be f32. */
  static fromTensors(config: LlamaConfig, tensors: Map<string, Tensor>, opts: FromTensorsOptions = {}): LlamaModel {
    validateConfig(config);
    const trainable = opts.trainable ?? true;
    if ((opts.linear || opts.linears?.size) && trainable) throw new Error('model tensors: prebuilt or factory-built projections need a frozen model (trainable: false)');
    const built: LinearLayer[] = [];
    const take = (name: string, shape: number[]): Tensor => {
      const t = tensors.get(name);
      if (!t) throw new Error(`model tensors: '${name}' is missing`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new Error(`model tensors: '${name}' has shape [${t.shape.join(', ')}], the config implies [${shape.join(', ')}]`);
      }
      if (trainable && t.dtype !== 'f32') throw new Error(`model tensors: '${name}' is ${t.dtype}; trained weights must be f32`);
      return t;
    };
    const C = config.hiddenSize, D = headDim(config), I = config.intermediateSize;
    const shapes: Record<LinearName, [number, number]> = {
      q_proj: [config.numHeads * D, C], k_proj: [config.numKvHeads * D, C], v_proj: [config.numKvHeads * D, C],
      o_proj: [C, config.numHeads * D], gate_proj: [I, C], up_proj: [I, C], down_proj: [C, I],
    };
    const embed = param('model.embed_tokens.weight', take('model.embed_tokens.weight', [config.vocabSize, C]), trainable);
    const blocks: LlamaBlock[] = [];
    for (let i = 0; i < config.numLayers; i++) {
      const ln1 = param(`model.layers.${i}.input_layernorm.weight`, take(`model.layers.${i}.input_layernorm.weight`, [C]), trainable);
      const ln2 = param(`model.layers.${i}.post_attention_layernorm.weight`, take(`model.layers.${i}.post_attention_layernorm.weight`, [C]), trainable);
      const linears = {} as Record<LinearName, LinearLayer>;
      for (const n of LINEAR_NAMES) {
        const prefix = linearPrefix(i, n);
        const pre = opts.linears?.get(prefix);
        if (pre) {
          if (pre.outFeatures !== shapes[n][0] || pre.inFeatures !== shapes[n][1]) {
            throw new Error(`model tensors: prebuilt ${prefix} is ${pre.inFeatures} -> ${pre.outFeatures}, the config implies ${shapes[n][1]} -> ${shapes[n][0]}`);
          }
          linears[n] = pre;
          continue;
        }
        const w = take(`${prefix}.weight`, shapes[n]);
        if (opts.linear) {
          tensors.delete(`${prefix}.weight`);  // the factory owns it now
          let layer: LinearLayer;
          try {
            layer = opts.linear(prefix, w);
          } catch (e) {
            w.dispose();
            for (const l of built) l.dispose();
            throw e;
          }
          built.push(layer);
          linears[n] = layer;
        } else {
          linears[n] = new DenseLinear(prefix, w, trainable ? Tensor.zeros(w.shape, { category: 'grad', device: w.device }) : null);
        }
      }
      const extras: BlockExtras = { bias: {}, qNorm: null, kNorm: null };
      for (const n of biasedProjections(config)) {
        extras.bias[n] = param(`${linearPrefix(i, n)}.bias`, take(`${linearPrefix(i, n)}.bias`, [shapes[n][0]]), trainable);
      }
      if (config.qkNorm) {
        extras.qNorm = param(`model.layers.${i}.self_attn.q_norm.weight`, take(`model.layers.${i}.self_attn.q_norm.weight`, [D]), trainable);
        extras.kNorm = param(`model.layers.${i}.self_attn.k_norm.weight`, take(`model.layers.${i}.self_attn.k_norm.weight`, [D]), trainable);
      }
      blocks.push(new LlamaBlock(i, ln1, ln2, linears, extras));
    }
    const norm = param('model.norm.weight', take('model.norm.weight', [C]), trainable);
    const lmHead = config.tieWordEmbeddings ? null : param('lm_head.weight', take('lm_head.weight', [config.vocabSize, C]), trainable);
    return new LlamaModel(config, embed, blocks, norm, lmHead);
  }

  /** Random initialisation as transformers does for LLaMA: matrices ~ N(0, std^2)
   * (std = initializer_range, 0.02), norm weights 1, biases 0. Deterministic for a seed. */
  static init(config: LlamaConfig, opts: WeightOptions & { seed?: number; std?: number } = {}): LlamaModel {
    validateConfig(config);
    const dtype = opts.dtype ?? 'f32', trainable = opts.trainable ?? true;
    if (trainable && dtype !== 'f32') throw new Error('LlamaModel.init: trained weights must be f32');
    const rng = new Rng(opts.seed ?? 0), std = opts.std ?? 0.02;
    const category = trainable ? 'trainable' : 'frozen';
    const tensors = new Map<string, Tensor>();
    for (const [name, shape] of modelTensorShapes(config)) {
      const vals = new Float32Array(shape.reduce((a, b) => a * b, 1));
      if (shape.length === 1) vals.fill(name.endsWith('.bias') ? 0 : 1);
      else for (let i = 0; i < vals.length; i++) vals[i] = rng.normal() * std;
      tensors.set(name, Tensor.from(vals, shape, { dtype, category }));
    }
    return LlamaModel.fromTensors(config, tensors, { trainable });
  }

  /** The device the model's weights are on (where forward runs). */
  get device(): Device {
    return this.embed.value.device;
  }

  /** Moves every parameter, gradient and frozen weight (quantized ones with
   * their constants, adapters included) to `device`: each a copy there and
   * the old tensor disposed. A no-op returning the model when it is there
   * already. Drops what a training forward kept. Build the optimizer after
   * moving (its state goes where the parameters are). Batches may stay on
   * the CPU: forward copies their tensors over. */
  to(device: Device): this {
    if (device === this.device && this.parameters().every((p) => p.value.device === device)) return this;
    this.releaseState();
    for (const b of this.blocks) b.to(device);
    moveParameter(this.embed, device);
    moveParameter(this.norm, device);
    if (this.lmHead) moveParameter(this.lmHead, device);
    return this;
  }

  /** All parameters, in checkpoint order. */
  parameters(): Parameter[] {
    const p: Parameter[] = [this.embed];
    for (const b of this.blocks) p.push(...b.parameters());
    p.push(this.norm);
    if (this.lmHead) p.push(this.lmHead);
    return p;
  }

  /** Every Linear of the model by module name (model.layers.{i}.self_attn.q_proj ...). */
  linears(): Map<string, LinearLayer> {
    const m = new Map<string, LinearLayer>();
    for (const b of this.blocks) for (const n of LINEAR_NAMES) m.set(b.linears[n].name, b.linears[n]);
    return m;
  }

  /** Replace one Linear (methods plug in here). Returns the layer it replaced,
   * which the caller now owns. */
  replaceLinear(name: string, layer: LinearLayer): LinearLayer {
    for (const b of this.blocks) {
      for (const n of LINEAR_NAMES) {
        const old = b.linears[n];
        if (old.name !== name) continue;
        if (layer.inFeatures !== old.inFeatures || layer.outFeatures !== old.outFeatures) {
          throw new Error(`replaceLinear(${name}): the new layer is ${layer.inFeatures} -> ${layer.outFeatures}, the model needs ${old.inFeatures} -> ${old.outFeatures}`);
        }
        b.linears[n] = layer;
        return old;
      }
    }
    throw new Error(`replaceLinear: no linear layer named '${name}' (e.g. ${[...this.linears().keys()].slice(0, 3).join(', ')}, ...)`);
  }

  /** Loss of one batch. With training, keeps what backward needs. */
  forward(batch: Batch, opts: { training?: boolean; rowLosses?: boolean } = {}): ForwardResult {
    const training = opts.training ?? true;
    const cfg = this.config;
    const { ids, targets } = batch;
    if (ids.dtype !== 'i32' || ids.shape.length !== 2) throw new Error(`forward: ids must be i32 [B, T], got ${ids.dtype} [${ids.shape.join(', ')}]`);
    if (targets.dtype !== 'i32' || targets.shape.length !== 2 || targets.shape[0] !== ids.shape[0] || targets.shape[1] !== ids.shape[1]) {
      throw new Error(`forward: targets must be i32 [${ids.shape.join(', ')}] like ids, got ${targets.dtype} [${targets.shape.join(', ')}]`);
    }
    const [B, T] = ids.shape;
    const maxPositions = ropePositionLimit(cfg);
    if (T > maxPositions) throw new Error(`forward: sequence length ${T} exceeds ${ropePositionLimitText(cfg)}`);
    if (batch.segments !== undefined) onHost(batch.segments, (s) => checkSegments('forward', s, B, T));
    if (batch.positions !== undefined) checkPositions(batch.positions, B, T, maxPositions, cfg);
    if (this.state) this.releaseState();
    for (const b of this.blocks) for (const n of LINEAR_NAMES) if ('training' in b.linears[n]) b.linears[n].training = training;
    const N = B * T, device = this.device;
    const positions = intTensor([N], device, (pv) => {
      if (batch.positions) pv.set(hostValues(batch.positions) as Int32Array);
      else for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) pv[b * T + t] = t;
    });
    // the model's own copy: the batch's tensors may be disposed before backward
    let segments: Tensor | undefined;
    if (batch.segments) {
      const src = batch.segments;
      segments = intTensor([B, T], device, (sv) => sv.set(hostValues(src) as Int32Array));
    }
    // ids and targets on the model's device (copies when the batch is elsewhere)
    const uploaded: Tensor[] = [];
    const onDevice = (t: Tensor): Tensor => {
      if (t.device === device) return t;
      const c = t.to(device);
      uploaded.push(c);
      return c;
    };
    const ids1 = onDevice(ids).reshape([N]), targets1 = onDevice(targets).reshape([N]);
    const freqs = ropeFrequencies(cfg, cfg.ropeScaling?.type === 'dynamic' ? batchSeqLen(batch, T) : undefined);
    let x = embeddingForward(ids1, this.embed.value);
    const residuals: Tensor[] = [x];
    const replay = new Map<number, unknown[]>();
    this.blocks.forEach((block, i) => {
      // a checkpointed block runs as in inference (nothing kept but its
      // input, which is the residual list's) and is recomputed in backward
      const recompute = training && isCheckpointed(this.checkpointMode, i);
      if (recompute) replay.set(i, block.randomStates());
      const next = block.forward(x, positions, cfg, B, T, training && !recompute, undefined, segments, freqs);
      if (training) residuals.push(next);
      else x.dispose();
      x = next;
    });
    const { y: hf, rstd: rstdF } = rmsnorm(x, this.norm.value, { eps: cfg.rmsNormEps });
    const head = this.lmHead ? this.lmHead.value : this.embed.value;
    const ce = crossEntropyForward(hf, head, targets1);
    let rows: ForwardResult['rows'];
    if (opts.rowLosses) {
      rows = { lossSum: new Float64Array(B), count: new Int32Array(B) };
      const lv = hostValues(ce.losses) as Float32Array, tv = hostValues(targets) as Int32Array;
      for (let i = 0; i < N; i++) {
        if (tv[i] === -100) continue;
        rows.lossSum[Math.floor(i / T)] += lv[i];
        rows.count[Math.floor(i / T)]++;
      }
    }
    if (training) {
      this.state = { ids: ids1, targets: targets1, positions, segments, residuals, freqs, uploaded, hf, rstdF, lse: ce.lse, losses: ce.losses, B, T, replay };
    } else {
      for (const t of [positions, x, hf, rstdF, ce.lse, ce.losses, ...uploaded]) t.dispose();
      segments?.dispose();
    }
    return { lossSum: ce.sum, count: ce.count, rows };
  }

  /** Final-normed hidden states [B*T, C] of ids [B, T] (inference). With a
   * cache, the tokens continue the cached sequences: positions start at
   * cache.length, and after the first call T must be 1. */
  hidden(ids: Tensor, cache?: KVCache): Tensor {
    const cfg = this.config;
    if (ids.dtype !== 'i32' || ids.shape.length !== 2) throw new Error(`hidden: ids must be i32 [B, T], got ${ids.dtype} [${ids.shape.join(', ')}]`);
    const [B, T] = ids.shape;
    const start = cache ? cache.length : 0;
    if (cache && cache.batch !== B) throw new Error(`hidden: the cache holds ${cache.batch} sequences, ids has ${B}`);
    const device = this.device;
    if (cache && cache.device !== device) throw new Error(`hidden: the KV cache is on ${cache.device}, the model on ${device} (new KVCache(config, batch, maxLength, model.device))`);
    if (start + T > (cache ? cache.maxLength : ropePositionLimit(cfg))) {
      throw new Error(`hidden: ${start + T} positions exceed the ${cache ? `cache length ${cache.maxLength}` : ropePositionLimitText(cfg)}`);
    }
    if (this.state) this.releaseState();
    for (const b of this.blocks) for (const n of LINEAR_NAMES) if ('training' in b.linears[n]) b.linears[n].training = false;
    const N = B * T;
    const positions = intTensor([N], device, (pv) => {
      for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) pv[b * T + t] = start + t;
    });
    // dynamic scaling: the table of this call's length (as a KV-cache decode step sees it)
    const freqs = ropeFrequencies(cfg, start + T);
    const idsD = ids.device === device ? ids : ids.to(device);
    let x: Tensor;
    try {
      x = embeddingForward(idsD.reshape([N]), this.embed.value);
    } finally {
      if (idsD !== ids) idsD.dispose();
    }
    this.blocks.forEach((block, i) => {
      const next = block.forward(x, positions, cfg, B, T, false, cache ? { k: cache.k[i], v: cache.v[i], length: start } : undefined, undefined, freqs);
      x.dispose();
      x = next;
    });
    if (cache) cache.length += T;
    const { y, rstd } = rmsnorm(x, this.norm.value, { eps: cfg.rmsNormEps });
    for (const t of [x, rstd, positions]) t.dispose();
    return y;
  }

  /** Logits [rows, V] of hidden states [rows, C]. */
  logits(hidden: Tensor): Tensor {
    return matmul(hidden, (this.lmHead ?? this.embed).value, { transB: true });
  }

  /** Gradients of scale * lossSum, ACCUMULATED into the parameters' grads.
   * For a mean over the targets of all micro-batches, scale = 1 / total count. */
  backward(scale: number): void {
    const s = this.state;
    if (!s) throw new Error('backward: call forward with training first');
    if (!Number.isFinite(scale)) throw new Error(`backward: scale must be finite, got ${scale}`);
    const cfg = this.config;
    const head = this.lmHead ?? this.embed;
    const { dh } = crossEntropyBackward(s.hf, head.value, s.targets, s.lse, scale, { dw: head.grad ?? undefined });
    const xL = s.residuals[s.residuals.length - 1];
    rmsnormBackward(dh, xL, this.norm.value, s.rstdF, { dweight: this.norm.grad ?? undefined, dx: dh });
    const dres = dh;  // gradient of the residual stream, accumulated in place
    for (let i = this.blocks.length - 1; i >= 0; i--) {
      const states = s.replay.get(i);
      if (states) {
        // recompute the block's forward from its kept input, keeping what backward needs
        this.blocks[i].setRandomStates(states);
        this.blocks[i].forward(s.residuals[i], s.positions, cfg, s.B, s.T, true, undefined, s.segments, s.freqs).dispose();
      }
      this.blocks[i].backward(dres, s.positions, cfg, s.segments, s.freqs);
    }
    if (this.embed.grad) embeddingBackward(dres, s.ids, this.embed.grad);
    dres.dispose();
    this.releaseState();
  }

  zeroGrad(): void {
    for (const p of this.parameters()) if (p.grad) fill(p.grad, 0);
  }

  /** Parameters by name (for saving). The tensors stay owned by the model. */
  namedTensors(): Map<string, Tensor> {
    const m = new Map<string, Tensor>();
    for (const p of this.parameters()) {
      if (p.quantized) throw new Error(`${p.name} is a quantized weight; save such a model with its method's writer (e.g. @tunebench/qlora saveQuantizedModel), or dequantize it first`);
      m.set(p.name, p.value);
    }
    return m;
  }

  private releaseState(): void {
    const s = this.state;
    if (!s) return;
    for (const b of this.blocks) b.releaseSaved();
    for (const t of [s.positions, ...s.residuals, s.hf, s.rstdF, s.lse, s.losses, ...s.uploaded]) t.dispose();
    s.segments?.dispose();
    this.state = null;
  }

  dispose(): void {
    this.releaseState();
    for (const b of this.blocks) b.dispose();
    for (const p of [this.embed, this.norm, ...(this.lmHead ? [this.lmHead] : [])]) { p.value.dispose(); p.grad?.dispose(); }
  }
}

/** Every parameter's Hugging Face name and shape, in transformers'
 * state_dict order (within a layer: q, k, v, o, each with its bias when the
 * config has one, q_norm and k_norm (qkNorm), gate, up, down, then the two norms). */
export function modelTensorShapes(config: LlamaConfig): Map<string, number[]> {
  const C = config.hiddenSize, D = headDim(config), I = config.intermediateSize;
  const m = new Map<string, number[]>();
  const biased = new Set(biasedProjections(config));
  m.set('model.embed_tokens.weight', [config.vocabSize, C]);
  for (let i = 0; i < config.numLayers; i++) {
    const attn: [BiasedName, number, number][] = [
      ['q_proj', config.numHeads * D, C], ['k_proj', config.numKvHeads * D, C], ['v_proj', config.numKvHeads * D, C], ['o_proj', C, config.numHeads * D],
    ];
    for (const [n, out, inn] of attn) {
      m.set(`${linearPrefix(i, n)}.weight`, [out, inn]);
      if (biased.has(n)) m.set(`${linearPrefix(i, n)}.bias`, [out]);
    }
    if (config.qkNorm) {
      m.set(`model.layers.${i}.self_attn.q_norm.weight`, [D]);
      m.set(`model.layers.${i}.self_attn.k_norm.weight`, [D]);
    }
    m.set(`${linearPrefix(i, 'gate_proj')}.weight`, [I, C]);
    m.set(`${linearPrefix(i, 'up_proj')}.weight`, [I, C]);
    m.set(`${linearPrefix(i, 'down_proj')}.weight`, [C, I]);
    m.set(`model.layers.${i}.input_layernorm.weight`, [C]);
    m.set(`model.layers.${i}.post_attention_layernorm.weight`, [C]);
  }
  m.set('model.norm.weight', [C]);
  if (!config.tieWordEmbeddings) m.set('lm_head.weight', [config.vocabSize, C]);
  return m;
}

/** Keys and values of every layer for `batch` sequences of up to `maxLength` tokens. */
export class KVCache {
  readonly k: Tensor[];
  readonly v: Tensor[];
  /** tokens cached per sequence */
  length = 0;

  /** device: where the keys and values live, the model's (default cpu) */
  constructor(config: LlamaConfig, readonly batch: number, readonly maxLength: number, readonly device: Device = 'cpu') {
    if (!Number.isInteger(batch) || batch < 1) throw new Error(`KVCache: batch must be a positive integer, got ${batch}`);
    const limit = ropePositionLimit(config);
    if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > limit) {
      throw new Error(`KVCache: maxLength must be in [1, ${limit}], got ${maxLength}`);
    }
    const shape = [batch, maxLength, config.numKvHeads, headDim(config)];
    this.k = Array.from({ length: config.numLayers }, () => Tensor.zeros(shape, { category: 'activation', device }));
    this.v = Array.from({ length: config.numLayers }, () => Tensor.zeros(shape, { category: 'activation', device }));
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}

// cache [B, Tmax, H, D] rows [at, at + T) <- x [B, T, H, D]
function writeCache(cache: Tensor, x: Tensor, at: number): void {
  const [B, T, H, D] = x.shape, Tmax = cache.shape[1];
  const row = H * D;
  if (cache.device !== 'cpu' || x.device !== 'cpu') {
    // B rows of T * H * D elements, copied on the device
    copyRows(x, 0, T * row, cache, at * row, Tmax * row, T * row, B);
    return;
  }
  const cv = cache.data() as Float32Array, xv = x.data() as Float32Array;
  for (let b = 0; b < B; b++) cv.set(xv.subarray(b * T * row, (b + 1) * T * row), (b * Tmax + at) * row);
}
