// Optimizer kernels: AdamW and global gradient-norm clipping.
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkShape, checkTensor } from './check.js';

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

/** One AdamW step in place, as torch.optim.AdamW (decoupled weight decay).
 * param, grad, m, v: same shape, f32. Defaults: betas (0.9, 0.999), eps 1e-8, weightDecay 0.01. */
export function adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void {
  const op = 'adamwStep';
  checkTensor(op, 'param', param, ['f32']);
  for (const [name, t] of [['grad', grad], ['m', m], ['v', v]] as const) {
    checkTensor(op, name, t, ['f32']);
    checkShape(op, name, t, param.shape);
  }
  const b1 = opts.beta1 ?? 0.9, b2 = opts.beta2 ?? 0.999, eps = opts.eps ?? 1e-8, wd = opts.weightDecay ?? 0.01;
  checkFinite(op, 'lr', opts.lr);
  checkFinite(op, 'weightDecay', wd);
  checkFinite(op, 'eps', eps);
  if (!(b1 >= 0 && b1 < 1)) throw new RangeError(`${op}: beta1 must be in [0, 1), got ${b1}`);
  if (!(b2 >= 0 && b2 < 1)) throw new RangeError(`${op}: beta2 must be in [0, 1), got ${b2}`);
  if (!Number.isInteger(opts.step) || opts.step < 1) throw new RangeError(`${op}: step must be an integer >= 1, got ${opts.step}`);
  nativeFn<AdamwFn>('adamw_step')(param.handle, grad.handle, m.handle, v.handle, opts.lr, b1, b2, eps, wd, opts.step);
}

export interface ClipOptions {
  /** throw if the total norm is NaN or infinite (default false: return it, leave grads alone) */
  errorIfNonfinite?: boolean;
}

/** Global L2 norm over all grads; if above maxNorm, scale every grad by
 * maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping. */
export function clipGradNorm(grads: readonly Tensor[], maxNorm: number, opts: ClipOptions = {}): number {
  const op = 'clipGradNorm';
  if (!(maxNorm > 0)) throw new RangeError(`${op}: maxNorm must be > 0, got ${maxNorm}`);
  grads.forEach((g, i) => checkTensor(op, `grads[${i}]`, g, ['f32']));
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
