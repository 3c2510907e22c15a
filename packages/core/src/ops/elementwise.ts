// Elementwise helpers: y += alpha * x (same shape, f32), fill, and the group
// mean pooling of QA-LoRA's adapter input (forward and backward). On the CPU
// or CUDA: all tensors of one call on one device.
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkShape, checkTensorOn, outTensor, sameDevice } from './check.js';

type AxpyFn = (y: NativeTensorHandle, x: NativeTensorHandle, alpha: number, n: number) => void;
type FillFn = (x: NativeTensorHandle, value: number) => void;
let axpyFn: AxpyFn | undefined;
let fillFn: FillFn | undefined;

/** y [..] += alpha * x [..]  (f32, same shape). Returns y. */
export function addInPlace(y: Tensor, x: Tensor, alpha = 1): Tensor {
  checkTensorOn('addInPlace', 'y', y, ['f32']);
  checkTensorOn('addInPlace', 'x', x, ['f32']);
  checkShape('addInPlace', 'x', x, y.shape);
  checkFinite('addInPlace', 'alpha', alpha);
  sameDevice('addInPlace', { y, x });
  axpyFn ??= nativeFn<AxpyFn>('axpy');
  axpyFn(y.handle, x.handle, alpha, y.numel);
  return y;
}

/** x = value everywhere (f32). Returns x. */
export function fill(x: Tensor, value: number): Tensor {
  checkTensorOn('fill', 'x', x, ['f32']);
  if (typeof value !== 'number') throw new TypeError(`fill: value must be a number, got ${typeof value}`);
  fillFn ??= nativeFn<FillFn>('fill');
  fillFn(x.handle, value);
  return x;
}

type GroupPoolForwardFn = (x: NativeTensorHandle, p: NativeTensorHandle, N: number, inF: number, L: number, scale: number) => void;
type GroupPoolBackwardFn = (dp: NativeTensorHandle, dx: NativeTensorHandle, N: number, inF: number, L: number, scale: number, accumulate: boolean) => void;
let poolFwd: GroupPoolForwardFn | undefined;
let poolBwd: GroupPoolBackwardFn | undefined;

function checkGroupSize(op: string, inF: number, groupSize: number): void {
  if (!Number.isInteger(groupSize) || groupSize < 1) throw new RangeError(`${op}: group size must be a positive integer, got ${groupSize}`);
  if (inF % groupSize !== 0) throw new RangeError(`${op}: ${inF} input features are not a whole number of groups of ${groupSize}`);
}

/** p [N, in/L] = scale * (mean of each group of L consecutive columns of x [N, in]), f32.
 *  QA-LoRA's adapter input with scale = in/L. Written into `out` when given. */
export function groupPoolForward(x: Tensor, groupSize: number, opts: { scale?: number; out?: Tensor; category?: Category } = {}): Tensor {
  const op = 'groupPoolForward';
  checkTensorOn(op, 'x', x, ['f32'], 2);
  const [N, inF] = x.shape;
  checkGroupSize(op, inF, groupSize);
  const scale = opts.scale ?? 1;
  checkFinite(op, 'scale', scale);
  const p = outTensor(op, 'out', opts.out, [N, inF / groupSize], { category: opts.category, device: x.device });
  poolFwd ??= nativeFn<GroupPoolForwardFn>('group_pool_forward');
  poolFwd(x.handle, p.handle, N, inF, groupSize, scale);
  return p;
}

/** dx [N, in] = scale/L * dp [N, in/L] spread over each group: the gradient of
 *  groupPoolForward. Written into a new tensor, or accumulated into `dxInto`. */
export function groupPoolBackward(dp: Tensor, groupSize: number, opts: { scale?: number; dxInto?: Tensor; category?: Category } = {}): Tensor {
  const op = 'groupPoolBackward';
  checkTensorOn(op, 'dp', dp, ['f32'], 2);
  if (!Number.isInteger(groupSize) || groupSize < 1) throw new RangeError(`${op}: group size must be a positive integer, got ${groupSize}`);
  const [N, G] = dp.shape, inF = G * groupSize;
  const scale = opts.scale ?? 1;
  checkFinite(op, 'scale', scale);
  const dx = outTensor(op, 'dxInto', opts.dxInto, [N, inF], { category: opts.category, device: dp.device });
  poolBwd ??= nativeFn<GroupPoolBackwardFn>('group_pool_backward');
  poolBwd(dp.handle, dx.handle, N, inF, groupSize, scale, opts.dxInto !== undefined);
  return dx;
}
