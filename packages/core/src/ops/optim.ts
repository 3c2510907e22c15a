// Optimizer kernels: AdamW (fp32 and blockwise 8-bit state) and global
// gradient-norm clipping.
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Device } from '../dtype.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkShape, checkTensorOn, sameDevice } from './check.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** 1-based step number, for bias correction */
  step: number;
}

type AdamwFn = (p: NativeTensorHandle, g: NativeTensorHandle, m: NativeTensorHandle, v: NativeTensorHandle,
                lr: number, b1: number, b2: number, eps: number, wd: number, step: number) => void;

interface AdamHyper { lr: number; b1: number; b2: number; eps: number; wd: number; step: number }

/** Defaults filled in and every hyperparameter checked, for both AdamW kernels. */
function adamHyper(op: string, opts: AdamWOptions): AdamHyper {
  const b1 = opts.beta1 ?? 0.9, b2 = opts.beta2 ?? 0.999, eps = opts.eps ?? 1e-8, wd = opts.weightDecay ?? 0.01;
  checkFinite(op, 'lr', opts.lr);
  checkFinite(op, 'weightDecay', wd);
  checkFinite(op, 'eps', eps);
  if (!(b1 >= 0 && b1 < 1)) throw new RangeError(`${op}: beta1 must be in [0, 1), got ${b1}`);
  if (!(b2 >= 0 && b2 < 1)) throw new RangeError(`${op}: beta2 must be in [0, 1), got ${b2}`);
  if (!Number.isInteger(opts.step) || opts.step < 1) throw new RangeError(`${op}: step must be an integer >= 1, got ${opts.step}`);
  return { lr: opts.lr, b1, b2, eps, wd, step: opts.step };
}

/** One AdamW step in place, as torch.optim.AdamW (decoupled weight decay).
 * param, grad, m, v: same shape, f32, on one device (CPU or CUDA).
 * Defaults: betas (0.9, 0.999), eps 1e-8, weightDecay 0.01. */
export function adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void {
  const op = 'adamwStep';
  checkTensorOn(op, 'param', param, ['f32']);
  for (const [name, t] of [['grad', grad], ['m', m], ['v', v]] as const) {
    checkTensorOn(op, name, t, ['f32']);
    checkShape(op, name, t, param.shape);
  }
  sameDevice(op, { param, grad, m, v });
  const h = adamHyper(op, opts);
  nativeFn<AdamwFn>('adamw_step')(param.handle, grad.handle, m.handle, v.handle, h.lr, h.b1, h.b2, h.eps, h.wd, h.step);
}

/** One tensor of adamwStepMulti: its own weight decay, the other hyperparameters shared. */
export interface AdamWGroupEntry {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  weightDecay: number;
}

type AdamwMultiFn = (p: NativeTensorHandle[], g: NativeTensorHandle[], m: NativeTensorHandle[], v: NativeTensorHandle[],
                     wd: number[], lr: number, b1: number, b2: number, eps: number, step: number) => void;

/** adamwStep over many tensors in one native call (on CUDA one kernel launch
 * for all of them; on the CPU the same loop as calling adamwStep per tensor).
 * Every tensor f32, each entry's four of one shape, all on one device.
 * opts.weightDecay is ignored: each entry carries its own. */
export function adamwStepMulti(entries: readonly AdamWGroupEntry[], opts: AdamWOptions): void {
  const op = 'adamwStepMulti';
  const all: Record<string, Tensor> = {};
  entries.forEach((e, k) => {
    checkTensorOn(op, `params[${k}]`, e.param, ['f32']);
    for (const [name, t] of [['grads', e.grad], ['ms', e.m], ['vs', e.v]] as const) {
      checkTensorOn(op, `${name}[${k}]`, t, ['f32']);
      checkShape(op, `${name}[${k}]`, t, e.param.shape);
    }
    checkFinite(op, `weightDecays[${k}]`, e.weightDecay);
    Object.assign(all, { [`params[${k}]`]: e.param, [`grads[${k}]`]: e.grad, [`ms[${k}]`]: e.m, [`vs[${k}]`]: e.v });
  });
  sameDevice(op, all);
  const h = adamHyper(op, { ...opts, weightDecay: 0 });
  nativeFn<AdamwMultiFn>('adamw_step_multi')(entries.map((e) => e.param.handle), entries.map((e) => e.grad.handle),
    entries.map((e) => e.m.handle), entries.map((e) => e.v.handle), entries.map((e) => e.weightDecay), h.lr, h.b1, h.b2, h.eps, h.step);
}

/** Elements per absmax block of the 8-bit optimizer state (bitsandbytes' blockwise optimizers use 256). */
export const ADAMW8BIT_BLOCK_SIZE = 256;

/** Absmax blocks of a parameter with `numel` elements. */
export function adamw8bitBlocks(numel: number): number {
  return Math.ceil(numel / ADAMW8BIT_BLOCK_SIZE);
}

type Adamw8bitFn = (p: NativeTensorHandle, g: NativeTensorHandle, mCodes: NativeTensorHandle, mAbsmax: NativeTensorHandle,
                    vCodes: NativeTensorHandle, vAbsmax: NativeTensorHandle, lr: number, b1: number, b2: number, eps: number,
                    wd: number, step: number, blockSize: number) => void;

/** One AdamW step in place with blockwise 8-bit state (bitsandbytes' AdamW8bit
 * scheme). Per block of 256 consecutive elements of the flattened parameter:
 * m = dynamicMap(true)[mCodes] * mAbsmax[block], v = dynamicMap(false)[vCodes] * vAbsmax[block];
 * the fp32 AdamW update (as adamwStep) runs on those, then m and v are
 * requantized to the nearest code against the block's new max |value|.
 *   param, grad: f32, same shape; mCodes, vCodes: u8, param's shape;
 *   mAbsmax, vAbsmax: f32 [ceil(numel / 256)]. All on one device (CPU or CUDA). */
export function adamw8bitStep(param: Tensor, grad: Tensor, mCodes: Tensor, mAbsmax: Tensor, vCodes: Tensor, vAbsmax: Tensor,
                              opts: AdamWOptions): void {
  const op = 'adamw8bitStep';
  checkTensorOn(op, 'param', param, ['f32']);
  checkTensorOn(op, 'grad', grad, ['f32']);
  checkShape(op, 'grad', grad, param.shape);
  const blocks = [adamw8bitBlocks(param.numel)];
  for (const [name, codes, absmax] of [['mCodes', mCodes, mAbsmax], ['vCodes', vCodes, vAbsmax]] as const) {
    checkTensorOn(op, name, codes, ['u8']);
    checkShape(op, name, codes, param.shape);
    const absName = name === 'mCodes' ? 'mAbsmax' : 'vAbsmax';
    checkTensorOn(op, absName, absmax, ['f32']);
    checkShape(op, absName, absmax, blocks);
  }
  sameDevice(op, { param, grad, mCodes, mAbsmax, vCodes, vAbsmax });
  const h = adamHyper(op, opts);
  nativeFn<Adamw8bitFn>('adamw8bit_step')(param.handle, grad.handle, mCodes.handle, mAbsmax.handle, vCodes.handle, vAbsmax.handle,
    h.lr, h.b1, h.b2, h.eps, h.wd, h.step, ADAMW8BIT_BLOCK_SIZE);
}

/** The 256-value dynamic quantization map of the 8-bit optimizer state
 * (bitsandbytes create_dynamic_map), sorted ascending; code i means value
 * map[i] * block absmax. signed: the first moment's map; unsigned: the second
 * moment's. A fresh copy of the native table on each call. */
export function dynamicMap(signed: boolean): Float32Array {
  if (typeof signed !== 'boolean') throw new TypeError(`dynamicMap: 'signed' must be a boolean, got ${typeof signed}`);
  return nativeFn<(signed: boolean) => Float32Array>('dynamic_map')(signed);
}

export interface ClipOptions {
  /** throw if the total norm is NaN or infinite (default false: return it, leave grads alone) */
  errorIfNonfinite?: boolean;
}

/** Global L2 norm over all grads; if above maxNorm, scale every grad by
 * maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
 * Grads f32 on any device (each tensor's sum of squares, in double, comes back to the host). */
export function clipGradNorm(grads: readonly Tensor[], maxNorm: number, opts: ClipOptions = {}): number {
  const op = 'clipGradNorm';
  if (!(maxNorm > 0)) throw new RangeError(`${op}: maxNorm must be > 0, got ${maxNorm}`);
  grads.forEach((g, i) => checkTensorOn(op, `grads[${i}]`, g, ['f32']));
  const sumsq = nativeFn<(x: NativeTensorHandle) => number>('grad_sumsq');
  const scale = nativeFn<(x: NativeTensorHandle, s: number) => void>('grad_scale');
  let total = 0;
  for (const g of grads) total += sumsq(g.handle);
  const norm = Math.sqrt(total);
  if (!Number.isFinite(norm)) {
    if (opts.errorIfNonfinite) throw new Error(`${op}: the total gradient norm is ${norm}; a NaN or infinite gradient reached the optimizer`);
    return norm;
  }
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) for (const g of grads) scale(g.handle, coef);
  return norm;
}

/** Paged optimizer state: migrate a managed tensor (category optimizer_host on
 * cuda, CUDA managed memory) to `device`, queued on the core's stream; the
 * optimizer moves its state to 'cuda' before a step and back to 'cpu' after.
 * Returns false (and does nothing) for tensors that are not managed. */
export function prefetch(t: Tensor, device: Device): boolean {
  checkTensorOn('prefetch', 't', t, ['f32', 'u8', 'bf16', 'f16', 'i32', 'i8', 'i64']);
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`prefetch: device must be 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  return nativeFn<(t: NativeTensorHandle, d: string) => boolean>('prefetch')(t.handle, device);
}
