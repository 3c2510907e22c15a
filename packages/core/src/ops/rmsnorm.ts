// rmsnorm (Llama RMSNorm), fp32 compute, on the CPU or CUDA (all tensors on one device):
//   forward:  x [N, C] f32, weight [C] f32 or bf16 (a frozen bf16 weight is
//             widened inside the kernel) -> y [N, C] f32, rstd [N] f32
//             rstd = 1 / sqrt(mean(x^2, last axis) + eps);  y = x * rstd * weight
//   backward: dy [N, C], x [N, C], weight [C], rstd [N] (from forward)
//             -> dx [N, C] f32 WRITTEN; dweight [C] f32 ACCUMULATED (+=) when
//             given (leave it out for a frozen weight)
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkShape, checkTensorOn, outTensor, sameDevice } from './check.js';

type ForwardFn = (x: NativeTensorHandle, weight: NativeTensorHandle, y: NativeTensorHandle, rstd: NativeTensorHandle,
                  N: number, C: number, eps: number) => void;
type BackwardFn = (dy: NativeTensorHandle, x: NativeTensorHandle, weight: NativeTensorHandle, rstd: NativeTensorHandle,
                   dx: NativeTensorHandle, dweight: NativeTensorHandle | null, N: number, C: number) => void;

let fwd: ForwardFn | undefined, bwd: BackwardFn | undefined;

export interface RmsNormOptions {
  /** added to mean(x^2) before the square root; default 1e-6, must be > 0 */
  eps?: number;
  /** where to write y ([N, C] f32); may be x itself when no backward is needed */
  out?: Tensor;
  /** where to write rstd ([N] f32) */
  rstd?: Tensor;
  /** memory category of the tensors this call allocates (default activation) */
  category?: Category;
}

export interface RmsNormResult {
  y: Tensor;
  /** 1 / sqrt(mean(x^2) + eps) per row, kept for the backward pass */
  rstd: Tensor;
}

function checkEps(op: string, eps: number): void {
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps <= 0) {
    throw new RangeError(`${op}: 'eps' must be a positive finite number, got ${eps}`);
  }
}

/** x [N, C] f32, weight [C] f32|bf16 -> { y [N, C] f32, rstd [N] f32 } */
export function rmsnorm(x: Tensor, weight: Tensor, opts: RmsNormOptions = {}): RmsNormResult {
  const op = 'rmsnorm';
  checkTensorOn(op, 'x', x, ['f32'], 2);
  checkTensorOn(op, 'weight', weight, ['f32', 'bf16'], 1);
  const [N, C] = x.shape;
  checkShape(op, 'weight', weight, [C]);
  const eps = opts.eps ?? 1e-6;
  checkEps(op, eps);
  if (C === 0) throw new RangeError(`${op}: 'x' has shape [${N}, 0]; C must be at least 1`);
  const device = sameDevice(op, { x, weight });
  const y = outTensor(op, 'out', opts.out, [N, C], { category: opts.category, device });
  const rstd = outTensor(op, 'rstd', opts.rstd, [N], { category: opts.category, device });
  fwd ??= nativeFn<ForwardFn>('rmsnorm_forward');
  fwd(x.handle, weight.handle, y.handle, rstd.handle, N, C, eps);
  return { y, rstd };
}

export interface RmsNormBackwardOptions {
  /** [C] f32: the weight gradient, ACCUMULATED (+=). Omit for a frozen weight. */
  dweight?: Tensor;
  /** where to write dx ([N, C] f32); may be dy itself */
  dx?: Tensor;
  category?: Category;
}

export interface RmsNormBackwardResult {
  /** written */
  dx: Tensor;
  /** the tensor passed in opts.dweight, accumulated into */
  dweight?: Tensor;
}

/** dy [N, C], x [N, C], weight [C], rstd [N] -> dx [N, C] (written), dweight [C] (+=) */
export function rmsnormBackward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor,
                                opts: RmsNormBackwardOptions = {}): RmsNormBackwardResult {
  const op = 'rmsnormBackward';
  checkTensorOn(op, 'x', x, ['f32'], 2);
  const [N, C] = x.shape;
  checkTensorOn(op, 'dy', dy, ['f32'], 2);
  checkShape(op, 'dy', dy, [N, C]);
  checkTensorOn(op, 'weight', weight, ['f32', 'bf16'], 1);
  checkShape(op, 'weight', weight, [C]);
  checkTensorOn(op, 'rstd', rstd, ['f32'], 1);
  checkShape(op, 'rstd', rstd, [N]);
  if (C === 0) throw new RangeError(`${op}: 'x' has shape [${N}, 0]; C must be at least 1`);
  if (opts.dweight !== undefined) {
    checkTensorOn(op, 'dweight', opts.dweight, ['f32'], 1);
    checkShape(op, 'dweight', opts.dweight, [C]);
  }
  const device = sameDevice(op, { x, dy, weight, rstd, dweight: opts.dweight });
  const dx = outTensor(op, 'dx', opts.dx, [N, C], { category: opts.category, device });
  bwd ??= nativeFn<BackwardFn>('rmsnorm_backward');
  bwd(dy.handle, x.handle, weight.handle, rstd.handle, dx.handle, opts.dweight?.handle ?? null, N, C);
  return opts.dweight ? { dx, dweight: opts.dweight } : { dx };
}
