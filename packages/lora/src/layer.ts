// LoraLinear: a frozen base projection plus one or more low-rank adapters.
//
//   y = x W^T + s * (dropout(x) A^T) B^T      W [out, in] frozen: any FrozenBase
//                                             (dense f32/bf16, or quantized: the
//                                             kernels dequantize it while packing)
//                                             A [r, in], B [out, r] f32, s = alpha/r
//
// Several adapters can sit over one base: `active` picks the one used by
// forward/backward, and `setRowAdapters` assigns an adapter to each batch row
// so one pass over the base weights serves many adapters (inference).
// merge()/unmerge() fold s*B*A into W and back out through one
// deltaWeight(), so the two cannot disagree.
//
// Pooled adapters (QA-LoRA, Xu et al. 2023; PEFT's use_qalora): with a pool
// size L the adapter reads the input averaged over each group of L
// consecutive features, times in/L, so A is [r, in/L]:
//
//   y = x W^T + s * (P(dropout(x)) A^T) B^T,   P(x)[n, g] = in/L * mean_{j<L} x[n, g*L + j]
//
// P is linear, P(x) = x P^T with P [in/L, in] holding (in/L)/L on a group's
// columns, so the adapter's weight delta is s*B*A*P: constant over each group
// of L input columns, which is what lets it fold into a group-wise quantized
// base's offsets (pooledDelta).
import {
  DenseLinear, type Device, type FrozenBase, type LinearLayer, type Parameter, Rng, type RngState, Tensor, addInPlace, bf16ToF32, copyInto,
  f32ToBf16, groupPoolBackward, groupPoolForward, hostValues, loraBackward, loraDeltaRows, loraForward, matmul, moveParameter,
} from '@tunebench/core';
import { type LoraConfig, loraScale } from './config.js';

export interface Adapter {
  readonly name: string;
  readonly r: number;
  readonly alpha: number;
  readonly rslora: boolean;
  readonly scale: number;
  readonly dropout: number;
  /** QA-LoRA group size L: the adapter reads the input pooled over groups of
   * L features (times in/L); null = plain LoRA */
  readonly poolSize: number | null;
  /** [r, in], or [r, in/L] when pooled */
  readonly A: Parameter;
  /** [out, r] */
  readonly B: Parameter;
}

export type AdapterOptions = Pick<LoraConfig, 'r' | 'alpha' | 'rslora' | 'dropout' | 'init' | 'seed'> & {
  trainable?: boolean;
  /** QA-LoRA group size L (must divide in_features); omit (or null) for plain LoRA */
  poolSize?: number | null;
};

interface Saved {
  adapter: Adapter;
  /** what A reads: x or dropout(x) [N, in]; pooled adapters: P(x or dropout(x)) [N, in/L] */
  xa: Tensor;
  /** whether xa is ours to free (not the caller's x) */
  ownsXa: boolean;
  /** dropout keep-mask [N, in] already scaled by 1/(1-p); null without dropout */
  mask: Tensor | null;
  u: Tensor;
}

export class LoraLinear implements LinearLayer {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly base: FrozenBase;
  readonly adapters = new Map<string, Adapter>();
  /** adapter used by forward/backward; null = base only */
  active: string | null = null;
  /** adapter currently folded into the base weight */
  private mergedName: string | null = null;
  private rows: { adapters: (string | null)[]; tokensPerRow: number } | null = null;
  private saved: Saved | null = null;
  private baseSaved = false;
  private unloaded = false;
  private dropoutRng: Rng;
  training = true;

  /** base: the frozen layer being adapted (its weight must have no gradient) */
  constructor(base: FrozenBase, seed = 0) {
    if (base.parameters().some((p) => p.grad !== null)) throw new Error(`${base.name}: LoRA needs a frozen base weight, this one is trainable`);
    this.base = base;
    this.name = base.name;
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.dropoutRng = new Rng(seed ^ 0x5eed);
  }

  addAdapter(name: string, o: AdapterOptions): Adapter {
    if (this.adapters.has(name)) throw new Error(`${this.name}: adapter '${name}' already exists`);
    if (!Number.isInteger(o.r) || o.r < 1) throw new Error(`${this.name}: adapter '${name}': r must be a positive integer, got ${o.r}`);
    const poolSize = o.poolSize ?? null;
    checkPoolSize(`${this.name}: adapter '${name}'`, this.inFeatures, poolSize);
    const trainable = o.trainable ?? true;
    // A's input width: in, or in/L pooled features
    const aIn = poolSize === null ? this.inFeatures : this.inFeatures / poolSize;
    // A: kaiming-uniform with a = sqrt(5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); gaussian: N(0, 1/r). B: zeros.
    const rng = new Rng(hashSeed(o.seed, this.name, name));
    const av = new Float32Array(o.r * aIn);
    if (o.init === 'gaussian') for (let i = 0; i < av.length; i++) av[i] = rng.normal() / Math.sqrt(o.r);
    else { const bound = 1 / Math.sqrt(aIn); for (let i = 0; i < av.length; i++) av[i] = (2 * rng.next() - 1) * bound; }
    const category = trainable ? 'trainable' : 'frozen', device = this.device;
    const A = Tensor.from(av, [o.r, aIn], { category, device });
    const B = Tensor.zeros([this.outFeatures, o.r], { category, device });
    const grad = (t: Tensor) => (trainable ? Tensor.zeros(t.shape, { category: 'grad', device }) : null);
    const adapter: Adapter = {
      name, r: o.r, alpha: o.alpha, rslora: o.rslora, scale: loraScale(o), dropout: o.dropout, poolSize,
      A: { name: `${this.name}.lora_A.${name}.weight`, value: A, grad: grad(A) },
      B: { name: `${this.name}.lora_B.${name}.weight`, value: B, grad: grad(B) },
    };
    this.adapters.set(name, adapter);
    if (this.active === null) this.active = name;
    return adapter;
  }

  /** where the layer's weights are (the base's device) */
  get device(): Device {
    return this.base.weight.value.device;
  }

  /** Moves the base and every adapter (values and gradients) to `device`. */
  to(device: Device): void {
    this.clearSaved();
    this.base.to(device);
    for (const a of this.adapters.values()) { moveParameter(a.A, device); moveParameter(a.B, device); }
  }

  deleteAdapter(name: string): void {
    const a = this.adapter(name);
    if (this.mergedName === name) throw new Error(`${this.name}: unmerge adapter '${name}' before deleting it`);
    for (const p of [a.A, a.B]) { p.value.dispose(); p.grad?.dispose(); }
    this.adapters.delete(name);
    if (this.active === name) this.active = null;
  }

  adapter(name: string): Adapter {
    const a = this.adapters.get(name);
    if (!a) throw new Error(`${this.name}: no adapter named '${name}' (have: ${[...this.adapters.keys()].join(', ') || 'none'})`);
    return a;
  }

  /** One adapter per batch row (null = base only), for a mixed batch of
   * [rows * tokensPerRow] tokens. Pass null to go back to `active`. Inference only. */
  setRowAdapters(adapters: (string | null)[] | null, tokensPerRow = 0): void {
    if (adapters === null) { this.rows = null; return; }
    for (const a of adapters) if (a !== null) this.adapter(a);
    if (!Number.isInteger(tokensPerRow) || tokensPerRow < 1) throw new Error(`${this.name}: tokensPerRow must be a positive integer`);
    this.rows = { adapters: [...adapters], tokensPerRow };
  }

  randomState(): RngState {
    return this.dropoutRng.state();
  }

  setRandomState(state: unknown): void {
    this.dropoutRng = new Rng(state as RngState);
  }

  // x [N, in] -> y [N, out]
  forward(x: Tensor): Tensor {
    this.clearSaved();
    if (this.rows) return this.forwardRows(x);
    const a = this.active === null || this.mergedName !== null ? null : this.adapter(this.active);
    if (!a) {
      this.baseSaved = true;
      return this.base.forward(x);
    }
    let xa = x, mask: Tensor | null = null;
    if (this.training && a.dropout > 0) {
      if (x.device === 'cpu') {
        mask = Tensor.zeros(x.shape, { category: 'activation' });
        xa = Tensor.zeros(x.shape, { category: 'activation' });
        const mv = mask.data() as Float32Array, xv = x.data() as Float32Array, av = xa.data() as Float32Array;
        const keep = 1 / (1 - a.dropout);
        for (let i = 0; i < mv.length; i++) { mv[i] = this.dropoutRng.next() < a.dropout ? 0 : keep; av[i] = xv[i] * mv[i]; }
      } else {
        // the same mask from the same stream, computed on the host and copied over
        ({ mask, xa } = this.dropoutOnHost(x, a.dropout));
      }
    }
    if (a.poolSize !== null) return this.forwardPooled(x, xa, mask, a);
    const { y, u } = loraForward(x, xa, this.base.weightOperand, a.A.value, a.B.value, a.scale);
    this.saved = { adapter: a, xa, ownsXa: mask !== null, mask, u };
    return y;
  }

  // Dropout of an input on another device: the mask and the masked input are
  // computed on a host copy of x (the CPU path's arithmetic, the same random
  // draws) and copied to x's device.
  private dropoutOnHost(x: Tensor, p: number): { mask: Tensor; xa: Tensor } {
    const xv = hostValues(x) as Float32Array;
    const mv = new Float32Array(xv.length), av = new Float32Array(xv.length);
    const keep = 1 / (1 - p);
    for (let i = 0; i < mv.length; i++) { mv[i] = this.dropoutRng.next() < p ? 0 : keep; av[i] = xv[i] * mv[i]; }
    const mask = Tensor.from(mv, x.shape, { category: 'activation', device: x.device });
    try {
      return { mask, xa: Tensor.from(av, x.shape, { category: 'activation', device: x.device }) };
    } catch (e) {
      mask.dispose();
      throw e;
    }
  }

  /** dxa *= mask elementwise, on any device (a host round trip off the CPU). */
  private applyMask(dxa: Tensor, mask: Tensor): void {
    if (dxa.device === 'cpu') {
      const dv = dxa.data() as Float32Array, mv = mask.data() as Float32Array;
      for (let i = 0; i < dv.length; i++) dv[i] *= mv[i];
      return;
    }
    const dv = hostValues(dxa) as Float32Array, mv = hostValues(mask) as Float32Array;
    for (let i = 0; i < dv.length; i++) dv[i] *= mv[i];
    const h = Tensor.from(dv, dxa.shape, { category: 'workspace' });
    try { copyInto(dxa, h); } finally { h.dispose(); }
  }

  // Pooled adapter: the base through its own layer (it keeps x), then
  // xp = P(xa) [N, in/L], u = xp A^T [N, r], y += s u B^T. Dropout (PEFT: on x, before pooling) is already in xa.
  private forwardPooled(x: Tensor, xa: Tensor, mask: Tensor | null, a: Adapter): Tensor {
    const L = a.poolSize!;
    const xp = groupPoolForward(xa, L, { scale: this.inFeatures / L, category: 'activation' });
    if (xa !== x) xa.dispose();
    const y = this.base.forward(x);
    const u = matmul(xp, a.A.value, { transB: true, category: 'activation' });
    matmul(u, a.B.value, { transB: true, alpha: a.scale, beta: 1, out: y });
    this.saved = { adapter: a, xa: xp, ownsXa: true, mask, u };
    return y;
  }

  // Pooled adapter, backward. Inputs: dy [N, out]; saved xp = P(xa) [N, in/L], u [N, r], mask [N, in] or null.
  //   dB += s dy^T u;  du = s dy B [N, r];  dA += du^T xp;  dxp = du A [N, in/L]
  //   dx = dy W (the base's backward) + P^T dxp (times the dropout mask), where
  //   P^T spreads each pooled gradient over its group times (in/L)/L
  private backwardPooled(s: Saved, dy: Tensor, dxInto?: Tensor): Tensor {
    const a = s.adapter, L = a.poolSize!;
    const dx = this.base.backward(dy, dxInto);
    if (a.B.grad) matmul(dy, s.u, { transA: true, alpha: a.scale, beta: 1, out: a.B.grad });
    const du = matmul(dy, a.B.value, { alpha: a.scale, category: 'workspace' });
    if (a.A.grad) matmul(du, s.xa, { transA: true, beta: 1, out: a.A.grad });
    const dxp = matmul(du, a.A.value, { category: 'workspace' });
    du.dispose();
    const scale = this.inFeatures / L;
    if (s.mask) {
      const dxa = groupPoolBackward(dxp, L, { scale, category: 'workspace' });
      this.applyMask(dxa, s.mask);
      addInPlace(dx, dxa);
      dxa.dispose();
    } else {
      groupPoolBackward(dxp, L, { scale, dxInto: dx });
    }
    dxp.dispose();
    return dx;
  }

  // dy [N, out] -> dx [N, in] (written, or accumulated into dxInto); dA, dB accumulate
  backward(dy: Tensor, dxInto?: Tensor): Tensor {
    if (this.baseSaved) {
      this.baseSaved = false;
      return this.base.backward(dy, dxInto);
    }
    const s = this.saved;
    if (!s) throw new Error(`${this.name}: backward called without a training forward`);
    const a = s.adapter;
    if (a.poolSize !== null) {
      try { return this.backwardPooled(s, dy, dxInto); } finally { this.clearSaved(); }
    }
    let dxa: Tensor | undefined;
    if (s.mask) dxa = Tensor.zeros(s.xa.shape, { category: 'workspace', device: s.xa.device });
    const dx = loraBackward(dy, s.xa, this.base.weightOperand, a.A.value, a.B.value, s.u, a.scale, {
      dxInto, dA: a.A.grad ?? undefined, dB: a.B.grad ?? undefined, dxa,
    });
    if (dxa && s.mask) {
      this.applyMask(dxa, s.mask);
      addInPlace(dx, dxa);
      dxa.dispose();
    }
    this.clearSaved();
    return dx;
  }

  // Mixed batch: one base pass, then each adapter's delta on its rows.
  private forwardRows(x: Tensor): Tensor {
    const { adapters, tokensPerRow } = this.rows!;
    const N = x.shape[0];
    if (N !== adapters.length * tokensPerRow) {
      throw new Error(`${this.name}: mixed batch of ${adapters.length} rows x ${tokensPerRow} tokens does not match ${N} input rows`);
    }
    if (this.mergedName !== null) throw new Error(`${this.name}: unmerge before serving a mixed batch`);
    const y = this.base.forward(x);
    this.base.clearSaved();
    // pooled adapters read P(x): pooled once per pool size, for all rows
    const pooled = new Map<number, Tensor>();
    try {
      // one native call per run of consecutive rows sharing an adapter
      for (let row = 0; row < adapters.length;) {
        const name = adapters[row];
        let end = row + 1;
        while (end < adapters.length && adapters[end] === name) end++;
        if (name !== null) {
          const a = this.adapter(name);
          let input = x;
          if (a.poolSize !== null) {
            const L = a.poolSize;
            if (!pooled.has(L)) pooled.set(L, groupPoolForward(x, L, { scale: this.inFeatures / L, category: 'workspace' }));
            input = pooled.get(L)!;
          }
          loraDeltaRows(input, a.A.value, a.B.value, a.scale, y, row * tokensPerRow, (end - row) * tokensPerRow);
        }
        row = end;
      }
    } finally {
      for (const t of pooled.values()) t.dispose();
    }
    return y;
  }

  /** The adapter's change of the weight as a new [out, in] f32 tensor: the
   * one computation merge and unmerge share. Plain: s * B * A. Pooled: s * B * A * P,
   * i.e. pooledDelta spread over each group of L input columns. */
  deltaWeight(name: string): Tensor {
    const a = this.adapter(name);
    if (a.poolSize === null) return matmul(a.B.value, a.A.value, { alpha: a.scale, category: 'workspace' });
    const ba = matmul(a.B.value, a.A.value, { alpha: a.scale, category: 'workspace' });
    // (s B A) P: each row of s B A [out, in/L] through P^T, which is the pooling's backward
    const delta = groupPoolBackward(ba, a.poolSize, { scale: this.inFeatures / a.poolSize, category: 'workspace' });
    ba.dispose();
    return delta;
  }

  /** Fold an adapter into the base weight (lossy when the base is bf16, as in
   * PEFT). Dense bases only: merging into a quantized base is its method's
   * business (e.g. @tunebench/qlora merges into bf16 or requantizes). */
  merge(name = this.active ?? ''): void {
    if (!(this.base instanceof DenseLinear)) {
      throw new Error(`${this.name}: cannot merge in place into a ${this.base.constructor.name} base; use the method's merge (e.g. @tunebench/qlora mergeQlora)`);
    }
    if (this.mergedName !== null) throw new Error(`${this.name}: adapter '${this.mergedName}' is already merged`);
    this.applyDelta(name, +1);
    this.mergedName = name;
  }

  unmerge(): void {
    if (this.mergedName === null) throw new Error(`${this.name}: nothing is merged`);
    this.applyDelta(this.mergedName, -1);
    this.mergedName = null;
  }

  get merged(): string | null {
    return this.mergedName;
  }

  private applyDelta(name: string, sign: 1 | -1): void {
    if (!(this.base instanceof DenseLinear)) throw new Error(`${this.name}: in-place merge needs a dense base`);
    const delta = this.deltaWeight(name);
    const W = this.base.weight.value;
    if (W.dtype === 'f32') {
      addInPlace(W, delta, sign);
    } else if (W.device === 'cpu') {
      const wv = W.data() as Uint16Array, dv = delta.data() as Float32Array;
      for (let i = 0; i < wv.length; i++) wv[i] = f32ToBf16(bf16ToF32(wv[i]) + sign * dv[i]);
    } else {
      // the same bf16 rounding on host copies, written back
      const wv = hostValues(W) as Uint16Array, dv = hostValues(delta) as Float32Array;
      for (let i = 0; i < wv.length; i++) wv[i] = f32ToBf16(bf16ToF32(wv[i]) + sign * dv[i]);
      const h = Tensor.from(wv, W.shape, { dtype: 'bf16', category: 'workspace' });
      try { copyInto(W, h); } finally { h.dispose(); }
    }
    delta.dispose();
  }

  /** Merge the active adapter (unless one is merged already), free the
   * adapters and hand back the base layer, which the caller now owns. */
  mergeAndUnload(): FrozenBase {
    if (this.mergedName === null && this.active !== null) this.merge(this.active);
    this.clearSaved();
    for (const a of this.adapters.values()) for (const p of [a.A, a.B]) { p.value.dispose(); p.grad?.dispose(); }
    this.adapters.clear();
    this.mergedName = null;
    this.active = null;
    this.unloaded = true;
    return this.base;
  }

  parameters(): Parameter[] {
    const p: Parameter[] = [...this.base.parameters()];
    for (const a of this.adapters.values()) p.push(a.A, a.B);
    return p;
  }

  clearSaved(): void {
    if (this.saved) {
      const { xa, ownsXa, mask, u } = this.saved;
      if (ownsXa) xa.dispose();
      mask?.dispose();
      u.dispose();
      this.saved = null;
    }
    this.baseSaved = false;
    this.base.clearSaved();
  }

  dispose(): void {
    this.clearSaved();
    for (const a of this.adapters.values()) for (const p of [a.A, a.B]) { p.value.dispose(); p.grad?.dispose(); }
    this.adapters.clear();
    if (!this.unloaded) this.base.dispose();
  }
}

/** Checks a QA-LoRA pool size against a layer's input width (null = plain LoRA). */
export function checkPoolSize(where: string, inFeatures: number, poolSize: number | null): void {
  if (poolSize === null) return;
  if (typeof poolSize !== 'number' || !Number.isInteger(poolSize) || poolSize < 1) {
    throw new Error(`${where}: poolSize (QA-LoRA group size) must be a positive integer, got ${String(poolSize)}`);
  }
  if (inFeatures % poolSize !== 0) {
    throw new Error(`${where}: in_features ${inFeatures} is not divisible by poolSize ${poolSize} (QA-LoRA pools whole groups of input features)`);
  }
}

/**
 * The exact per-group weight delta of a pooled (QA-LoRA) adapter, f32 [out, in/L]:
 * adding delta[o, g] to W[o, i] for every i in group g (i / L = g) is the same
 * as running the adapter.
 *
 * Derivation: the adapter adds s * B A (in/L * mean_g x) to y, so for output o
 *   s * sum_g (B A)[o, g] * (in/L) * (1/L) * sum_{i in g} x_i = sum_i [s * (in/L) / L * (B A)[o, g(i)]] x_i,
 * i.e. W_eff[o, i] = W[o, i] + delta[o, g(i)] with delta = s * (in/L) / L * B A = s * in / L^2 * B A.
 *
 * A group-wise quantized base with one additive offset per (row, group) of L
 * input columns (QA-LoRA's point) takes it as is: offset[o, g] += delta[o, g].
 */
export function pooledDelta(layer: LoraLinear, adapterName: string): Float32Array {
  const a = layer.adapter(adapterName);
  if (a.poolSize === null) throw new Error(`${layer.name}: adapter '${adapterName}' is not pooled (no poolSize); its delta is deltaWeight(), [out, in]`);
  const c = a.scale * (layer.inFeatures / a.poolSize) / a.poolSize;
  const t = matmul(a.B.value, a.A.value, { alpha: c, category: 'workspace' });
  const out = (hostValues(t) as Float32Array).slice();
  t.dispose();
  return out;
}

function hashSeed(seed: number, ...parts: string[]): number {
  let h = (Math.floor(seed) ^ 0x811c9dc5) >>> 0;
  for (const s of parts) for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
