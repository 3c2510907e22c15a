// Shape and dtype checks shared by the typed ops. Each throws an Error naming
// the op, the argument and what was expected, before native code runs.
import type { DType } from '../dtype.js';
import { Tensor, type TensorOptions } from '../tensor.js';

export function fmtShape(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

export function checkTensor(op: string, name: string, t: unknown, dtypes: readonly DType[], rank?: number): Tensor {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: '${name}' must be a Tensor, got ${t === null ? 'null' : typeof t}`);
  if (t.disposed) throw new Error(`${op}: '${name}' was disposed`);
  if (t.device !== 'cpu') throw new Error(`${op}: '${name}' is on ${t.device}; this op runs on the CPU backend`);
  if (!dtypes.includes(t.dtype)) throw new TypeError(`${op}: '${name}' has dtype ${t.dtype}, expected ${dtypes.join(' or ')}`);
  if (rank !== undefined && t.shape.length !== rank) {
    throw new RangeError(`${op}: '${name}' must have rank ${rank}, got shape ${fmtShape(t.shape)}`);
  }
  return t;
}

export function checkShape(op: string, name: string, t: Tensor, want: readonly number[]): void {
  if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
    throw new RangeError(`${op}: '${name}' has shape ${fmtShape(t.shape)}, expected ${fmtShape(want)}`);
  }
}

export function checkPositiveInt(op: string, name: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new RangeError(`${op}: '${name}' must be a positive integer, got ${v}`);
}

export function checkFinite(op: string, name: string, v: number): void {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new RangeError(`${op}: '${name}' must be a finite number, got ${v}`);
}

/** `out` if given (checked), else a new zeroed tensor. */
export function outTensor(op: string, name: string, out: Tensor | undefined, shape: readonly number[],
                          opts: TensorOptions = {}): Tensor {
  if (out === undefined) return Tensor.zeros(shape, { dtype: 'f32', category: 'activation', ...opts });
  checkTensor(op, name, out, [opts.dtype ?? 'f32']);
  checkShape(op, name, out, shape);
  return out;
}
