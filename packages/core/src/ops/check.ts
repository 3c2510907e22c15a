// Shape and dtype checks shared by the typed ops. Each throws an Error naming
// the op, the argument and what was expected, before native code runs.
import type { DType, Device } from '../dtype.js';
import { Tensor, type TensorOptions } from '../tensor.js';

export function fmtShape(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/** A tensor argument of an op that has only a CPU kernel. */
export function checkTensor(op: string, name: string, t: unknown, dtypes: readonly DType[], rank?: number): Tensor {
  const x = checkTensorOn(op, name, t, dtypes, rank);
  if (x.device !== 'cpu') throw new Error(`${op}: '${name}' is on ${x.device}; this op has only a CPU kernel (copy it with .to('cpu'))`);
  return x;
}

/** A tensor argument of an op with kernels on every device; pair it with
 * sameDevice() over all of the op's tensors. */
export function checkTensorOn(op: string, name: string, t: unknown, dtypes: readonly DType[], rank?: number): Tensor {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: '${name}' must be a Tensor, got ${t === null ? 'null' : typeof t}`);
  if (t.disposed) throw new Error(`${op}: '${name}' was disposed`);
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

/** The device of all the given tensors (undefined entries skipped), or an
 * error naming the two that differ. */
export function sameDevice(op: string, tensors: Record<string, Tensor | undefined>): Device {
  let first: string | undefined, dev: Device = 'cpu';
  for (const [name, t] of Object.entries(tensors)) {
    if (t === undefined) continue;
    if (first === undefined) { first = name; dev = t.device; continue; }
    if (t.device !== dev) {
      throw new Error(`${op}: '${name}' is on ${t.device} but '${first}' is on ${dev}: all operands must be on one device (Tensor.to)`);
    }
  }
  return dev;
}

/** `out` if given (checked, also its device when opts.device is given), else
 * a new zeroed tensor on opts.device (default cpu). */
export function outTensor(op: string, name: string, out: Tensor | undefined, shape: readonly number[],
                          opts: TensorOptions = {}): Tensor {
  if (out === undefined) return Tensor.zeros(shape, { dtype: 'f32', category: 'activation', ...opts });
  if (opts.device === undefined) checkTensor(op, name, out, [opts.dtype ?? 'f32']);
  else {
    checkTensorOn(op, name, out, [opts.dtype ?? 'f32']);
    if (out.device !== opts.device) throw new Error(`${op}: '${name}' is on ${out.device}, the inputs on ${opts.device}`);
  }
  checkShape(op, name, out, shape);
  return out;
}
