// Elementwise helpers: y += alpha * x (same shape, f32), and fill.
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkShape, checkTensor } from './check.js';

type AxpyFn = (y: NativeTensorHandle, x: NativeTensorHandle, alpha: number, n: number) => void;
type FillFn = (x: NativeTensorHandle, value: number) => void;
let axpyFn: AxpyFn | undefined;
let fillFn: FillFn | undefined;

/** y [..] += alpha * x [..]  (f32, same shape). Returns y. */
export function addInPlace(y: Tensor, x: Tensor, alpha = 1): Tensor {
  checkTensor('addInPlace', 'y', y, ['f32']);
  checkTensor('addInPlace', 'x', x, ['f32']);
  checkShape('addInPlace', 'x', x, y.shape);
  checkFinite('addInPlace', 'alpha', alpha);
  axpyFn ??= nativeFn<AxpyFn>('axpy');
  axpyFn(y.handle, x.handle, alpha, y.numel);
  return y;
}

/** x = value everywhere (f32). Returns x. */
export function fill(x: Tensor, value: number): Tensor {
  checkTensor('fill', 'x', x, ['f32']);
  if (typeof value !== 'number') throw new TypeError(`fill: value must be a number, got ${typeof value}`);
  fillFn ??= nativeFn<FillFn>('fill');
  fillFn(x.handle, value);
  return x;
}
