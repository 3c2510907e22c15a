// Cross-entropy fused with the LM-head logits (the N x V logits are never
// materialised: tokens are taken in chunks, one chunk x V logits block at a
// time, in a workspace).
//   h       [N, C] f32       final hidden states
//   w       [V, C] f32|bf16  LM head / tied embedding: logits = h · w^T
//   targets [N]    i32       class per token; ignoreIndex (default -100) -> ignored
// On the CPU or CUDA (all tensors on one device; on CUDA the targets are
// copied to the host to be checked and to list the non-ignored tokens).
import type { Category, Device } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkPositiveInt, checkShape, checkTensorOn, fmtShape, outTensor, sameDevice } from './check.js';

export interface CrossEntropyOptions {
  /** targets equal to this are ignored (no loss, no gradient); default -100 */
  ignoreIndex?: number;
  /** tokens per logits chunk; the workspace holds chunkTokens x V f32.
   * Default: crossEntropyDefaultChunk(V) (256, fewer for vocabularies over ~64K). */
  chunkTokens?: number;
}

export interface CrossEntropyForwardOptions extends CrossEntropyOptions {
  /** [N] f32 outputs to write into (else new tensors) */
  losses?: Tensor;
  lse?: Tensor;
  /** category of new outputs; default 'activation' */
  category?: Category;
}

export interface CrossEntropyForwardResult {
  /** [N] f32 per-token loss (lse - logit[target]); 0 for ignored tokens */
  losses: Tensor;
  /** [N] f32 log-sum-exp of each logits row, for the backward; 0 for ignored tokens (never computed) */
  lse: Tensor;
  /** total loss over non-ignored tokens (summed in double) */
  sum: number;
  /** number of non-ignored tokens */
  count: number;
}

export interface CrossEntropyBackwardOptions extends CrossEntropyOptions {
  /** [N, C] f32 to write dh into (else a new tensor) */
  dh?: Tensor;
  /** [V, C] f32 LM-head gradient, ACCUMULATED (+=); omit for a frozen head */
  dw?: Tensor;
  /** category of a new dh; default 'activation' */
  category?: Category;
}

export interface CrossEntropyBackwardResult {
  /** [N, C] f32 dLoss/dh, written (=); zero rows for ignored tokens */
  dh: Tensor;
  /** the `dw` passed in, with dLoss/dw added; undefined when none was passed */
  dw?: Tensor;
}

/** The default chunk: 256 tokens, capped so the chunk's logits stay within
 * 64 MiB (V > 65536), never below 32. Measured at C = 512, V = 32000 on the CPU:
 * chunk 64 runs ~1.5x slower than 256 (w is repacked once per chunk and dw
 * read-modified-written once per chunk), 512 only ~10% faster than 256 for
 * twice the memory (256 x 32000 x 4 B = 31 MiB, against 500 MiB for N = 4096
 * full logits). */
export function crossEntropyDefaultChunk(V: number): number {
  return Math.max(32, Math.min(256, Math.floor((64 * 2 ** 20) / (4 * Math.max(V, 1)))));
}

type ForwardFn = (h: NativeTensorHandle, w: NativeTensorHandle, targets: NativeTensorHandle, N: number, C: number,
                  V: number, ignoreIndex: number, chunkTokens: number, losses: NativeTensorHandle,
                  lse: NativeTensorHandle) => { sum: number; count: number };
type BackwardFn = (h: NativeTensorHandle, w: NativeTensorHandle, targets: NativeTensorHandle, N: number, C: number,
                   V: number, ignoreIndex: number, chunkTokens: number, lse: NativeTensorHandle, scale: number,
                   dh: NativeTensorHandle, dw: NativeTensorHandle | null) => void;

let forwardFn: ForwardFn | null = null;
let backwardFn: BackwardFn | null = null;

interface CeDims { N: number; C: number; V: number; ignoreIndex: number; chunkTokens: number; device: Device }

function checkInputs(op: string, h: Tensor, w: Tensor, targets: Tensor, opts: CrossEntropyOptions): CeDims {
  checkTensorOn(op, 'h', h, ['f32'], 2);
  checkTensorOn(op, 'w', w, ['f32', 'bf16'], 2);
  checkTensorOn(op, 'targets', targets, ['i32'], 1);
  const [N, C] = h.shape, [V, Cw] = w.shape;
  if (Cw !== C) {
    throw new RangeError(`${op}: hidden sizes differ: h is ${fmtShape(h.shape)} (C = ${C}) but w is ${fmtShape(w.shape)} (C = ${Cw}); w must be [V, C]`);
  }
  if (C === 0) throw new RangeError(`${op}: hidden size C is 0 (h ${fmtShape(h.shape)})`);
  if (V === 0) throw new RangeError(`${op}: vocabulary size V is 0 (w ${fmtShape(w.shape)})`);
  if (targets.shape[0] !== N) {
    throw new RangeError(`${op}: 'targets' has ${targets.shape[0]} entries but h has ${N} tokens (h ${fmtShape(h.shape)})`);
  }
  const ignoreIndex = opts.ignoreIndex ?? -100;
  if (!Number.isInteger(ignoreIndex) || ignoreIndex < -(2 ** 31) || ignoreIndex >= 2 ** 31) {
    throw new RangeError(`${op}: 'ignoreIndex' must be an int32, got ${ignoreIndex}`);
  }
  const chunkTokens = opts.chunkTokens ?? crossEntropyDefaultChunk(V);
  checkPositiveInt(op, 'chunkTokens', chunkTokens);
  const device = sameDevice(op, { h, w, targets });
  return { N, C, V, ignoreIndex, chunkTokens, device };
}

/** Per-token cross-entropy of softmax(h · w^T) against targets. Targets outside
 * [0, V) that are not ignoreIndex throw a RangeError naming the position. */
export function crossEntropyForward(h: Tensor, w: Tensor, targets: Tensor,
                                    opts: CrossEntropyForwardOptions = {}): CrossEntropyForwardResult {
  const op = 'crossEntropyForward';
  const d = checkInputs(op, h, w, targets, opts);
  if (opts.losses !== undefined && opts.losses === opts.lse) throw new Error(`${op}: 'losses' and 'lse' must be different tensors`);
  const losses = outTensor(op, 'losses', opts.losses, [d.N], { category: opts.category, device: d.device });
  let lse: Tensor;
  try {
    lse = outTensor(op, 'lse', opts.lse, [d.N], { category: opts.category, device: d.device });
  } catch (e) {
    if (opts.losses === undefined) losses.dispose();
    throw e;
  }
  forwardFn ??= nativeFn<ForwardFn>('cross_entropy_forward');
  try {
    const { sum, count } = forwardFn(h.handle, w.handle, targets.handle, d.N, d.C, d.V, d.ignoreIndex, d.chunkTokens,
                                     losses.handle, lse.handle);
    return { losses, lse, sum, count };
  } catch (e) {
    if (opts.losses === undefined) losses.dispose();
    if (opts.lse === undefined) lse.dispose();
    throw e;
  }
}

/** Gradients of  scale * sum_i loss_i  (non-ignored i): dh written, dw accumulated.
 * `lse` is the forward's. For a mean loss pass scale = 1 / count; with gradient
 * accumulation, 1 / (target tokens over all micro-batches). */
export function crossEntropyBackward(h: Tensor, w: Tensor, targets: Tensor, lse: Tensor, scale: number,
                                     opts: CrossEntropyBackwardOptions = {}): CrossEntropyBackwardResult {
  const op = 'crossEntropyBackward';
  const d = checkInputs(op, h, w, targets, opts);
  checkTensorOn(op, 'lse', lse, ['f32'], 1);
  checkShape(op, 'lse', lse, [d.N]);
  checkFinite(op, 'scale', scale);
  if (opts.dw !== undefined) {
    checkTensorOn(op, 'dw', opts.dw, ['f32'], 2);
    checkShape(op, 'dw', opts.dw, [d.V, d.C]);
    if (opts.dw === w) throw new Error(`${op}: 'dw' must not be 'w' itself`);
  }
  if (opts.dh !== undefined && (opts.dh === h || opts.dh === opts.dw)) {
    throw new Error(`${op}: 'dh' must be a tensor of its own, not 'h' or 'dw'`);
  }
  sameDevice(op, { h, lse, dw: opts.dw });
  const dh = outTensor(op, 'dh', opts.dh, [d.N, d.C], { category: opts.category, device: d.device });
  backwardFn ??= nativeFn<BackwardFn>('cross_entropy_backward');
  try {
    backwardFn(h.handle, w.handle, targets.handle, d.N, d.C, d.V, d.ignoreIndex, d.chunkTokens, lse.handle, scale,
               dh.handle, opts.dw?.handle ?? null);
  } catch (e) {
    if (opts.dh === undefined) dh.dispose();
    throw e;
  }
  return { dh, dw: opts.dw };
}
