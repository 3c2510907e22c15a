// swiglu (the Llama MLP gate), fp32 compute, elementwise:
//   forward:  gate [N, F] f32, up [N, F] f32 -> out [N, F] f32
//             out = silu(gate) * up,  silu(g) = g * sigmoid(g)
//   backward: dout, gate, up [N, F] -> { dgate, dup } [N, F] f32, both WRITTEN
//             dgate = dout * up * s * (1 + g * (1 - s)),  dup = dout * silu(g)
// sigmoid is evaluated from exp(-|g|), so any finite gate gives finite results.
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkShape, checkTensorOn, outTensor, sameDevice } from './check.js';

type ForwardFn = (gate: NativeTensorHandle, up: NativeTensorHandle, out: NativeTensorHandle, n: number) => void;
type BackwardFn = (dout: NativeTensorHandle, gate: NativeTensorHandle, up: NativeTensorHandle,
                   dgate: NativeTensorHandle, dup: NativeTensorHandle, n: number) => void;

let fwd: ForwardFn | undefined, bwd: BackwardFn | undefined;

export interface SwigluOptions {
  /** where to write out ([N, F] f32); may be gate or up itself */
  out?: Tensor;
  /** memory category of a newly allocated result (default activation) */
  category?: Category;
}

/** gate [N, F] f32, up [N, F] f32 -> silu(gate) * up [N, F] f32 */
export function swiglu(gate: Tensor, up: Tensor, opts: SwigluOptions = {}): Tensor {
  const op = 'swiglu';
  checkTensorOn(op, 'gate', gate, ['f32'], 2);
  checkTensorOn(op, 'up', up, ['f32'], 2);
  checkShape(op, 'up', up, gate.shape);
  const device = sameDevice(op, { gate, up });
  const out = outTensor(op, 'out', opts.out, gate.shape, { category: opts.category, device });
  fwd ??= nativeFn<ForwardFn>('swiglu_forward');
  fwd(gate.handle, up.handle, out.handle, gate.numel);
  return out;
}

export interface SwigluBackwardOptions {
  /** where to write dgate ([N, F] f32) */
  dgate?: Tensor;
  /** where to write dup ([N, F] f32); must not be dgate */
  dup?: Tensor;
  category?: Category;
}

/** dout, gate, up [N, F] f32 -> { dgate, dup } [N, F] f32, both written */
export function swigluBackward(dout: Tensor, gate: Tensor, up: Tensor,
                               opts: SwigluBackwardOptions = {}): { dgate: Tensor; dup: Tensor } {
  const op = 'swigluBackward';
  checkTensorOn(op, 'gate', gate, ['f32'], 2);
  checkTensorOn(op, 'up', up, ['f32'], 2);
  checkTensorOn(op, 'dout', dout, ['f32'], 2);
  checkShape(op, 'up', up, gate.shape);
  checkShape(op, 'dout', dout, gate.shape);
  const device = sameDevice(op, { gate, up, dout });
  if (opts.dgate !== undefined && opts.dgate === opts.dup) throw new Error(`${op}: 'dgate' and 'dup' must be different tensors`);
  const dgate = outTensor(op, 'dgate', opts.dgate, gate.shape, { category: opts.category, device });
  const dup = outTensor(op, 'dup', opts.dup, gate.shape, { category: opts.category, device });
  bwd ??= nativeFn<BackwardFn>('swiglu_backward');
  bwd(dout.handle, gate.handle, up.handle, dgate.handle, dup.handle, gate.numel);
  return { dgate, dup };
}
