// Embedding lookup.
//   ids     [N]    i32       token ids in [0, V)
//   weight  [V, C] f32|bf16  embedding table
//   out     [N, C] f32       out[i] = weight[ids[i]]
// On the CPU or CUDA (all tensors on one device; on CUDA the ids are copied
// to the host to be checked, and grouped there for the backward).
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkShape, checkTensorOn, fmtShape, outTensor, sameDevice } from './check.js';

export interface EmbeddingOptions {
  /** [N, C] f32 to write into (else a new tensor) */
  out?: Tensor;
  /** category of a new output; default 'activation' */
  category?: Category;
}

type ForwardFn = (ids: NativeTensorHandle, weight: NativeTensorHandle, N: number, V: number, C: number,
                  out: NativeTensorHandle) => void;
type BackwardFn = (dout: NativeTensorHandle, ids: NativeTensorHandle, N: number, V: number, C: number,
                   dweight: NativeTensorHandle) => void;

let forwardFn: ForwardFn | null = null;
let backwardFn: BackwardFn | null = null;

/** out [N, C] f32 = weight[ids] (bf16 rows widened). An id outside [0, V)
 * throws a RangeError naming its position; nothing is read out of bounds. */
export function embeddingForward(ids: Tensor, weight: Tensor, opts: EmbeddingOptions = {}): Tensor {
  const op = 'embeddingForward';
  checkTensorOn(op, 'ids', ids, ['i32'], 1);
  checkTensorOn(op, 'weight', weight, ['f32', 'bf16'], 2);
  const N = ids.shape[0], [V, C] = weight.shape;
  if (opts.out !== undefined && opts.out === weight) throw new Error(`${op}: 'out' must not be 'weight' itself`);
  const device = sameDevice(op, { ids, weight });
  const out = outTensor(op, 'out', opts.out, [N, C], { category: opts.category, device });
  forwardFn ??= nativeFn<ForwardFn>('embedding_forward');
  try {
    forwardFn(ids.handle, weight.handle, N, V, C, out.handle);
  } catch (e) {
    if (opts.out === undefined) out.dispose();
    throw e;
  }
  return out;
}

/** dweight [V, C] f32 += scatter-add of dout [N, C] rows at ids [N]
 * (ACCUMULATED: repeated ids add up, and so do repeated calls). Pass a
 * dweight in the 'grad' category. Returns dweight. */
export function embeddingBackward(dout: Tensor, ids: Tensor, dweight: Tensor): Tensor {
  const op = 'embeddingBackward';
  checkTensorOn(op, 'dout', dout, ['f32'], 2);
  checkTensorOn(op, 'ids', ids, ['i32'], 1);
  checkTensorOn(op, 'dweight', dweight, ['f32'], 2);
  const [N, C] = dout.shape, V = dweight.shape[0];
  if (ids.shape[0] !== N) {
    throw new RangeError(`${op}: 'ids' has ${ids.shape[0]} entries but dout ${fmtShape(dout.shape)} has ${N} rows`);
  }
  checkShape(op, 'dweight', dweight, [V, C]);
  if (dweight === dout) throw new Error(`${op}: 'dweight' must not be 'dout' itself`);
  sameDevice(op, { dout, ids, dweight });
  backwardFn ??= nativeFn<BackwardFn>('embedding_backward');
  backwardFn(dout.handle, ids.handle, N, V, C, dweight.handle);
  return dweight;
}
