// Fused LoRA linear (frozen base + low-rank adapter), forward and backward.
//   x, xa [N, in] f32 (xa: the adapter's input, x or dropout(x)); W [out, in]
//   frozen: f32, bf16 or a quantized weight (dequantized inside the GEMM); A [r, in] f32; B [out, r] f32; scale = alpha/r (or /sqrt(r))
//   forward:  u = xa A^T [N, r] (keep for backward); y = x W^T + scale u B^T [N, out]
//   backward: dB += scale dy^T u; dA += (scale dy B)^T xa (accumulated)
//             dx = dy W + (scale dy B) A   (written, or accumulated into dxInto);
//             with `dxa` the adapter part is written there instead (dropout)
// On the CPU or CUDA (all tensors on one device); a quantized W is CPU-only for now.
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import { type WeightOperand, checkQuantized, isQuantized, nativeOperand } from '../quant/quant4.js';
import type { Tensor } from '../tensor.js';
import type { Device } from '../dtype.js';
import { checkFinite, checkShape, checkTensorOn, outTensor, sameDevice } from './check.js';

type H = NativeTensorHandle;
type ForwardFn = (x: H, xa: H, W: H | object, A: H, B: H, scale: number, y: H, u: H, N: number, inF: number, outF: number, r: number) => void;
type BackwardFn = (dy: H, xa: H, W: H | object, A: H, B: H, u: H, scale: number, dx: H, accumulate: boolean,
                   dA: H | null, dB: H | null, dxa: H | null, N: number, inF: number, outF: number, r: number) => void;
let fwd: ForwardFn | undefined, bwd: BackwardFn | undefined;

// The device of a LoRA call: every tensor's (a quantized W is CPU-only for now).
function loraDevice(op: string, W: WeightOperand, tensors: Record<string, Tensor | undefined>): Device {
  const device = sameDevice(op, isQuantized(W) ? tensors : { ...tensors, W });
  if (isQuantized(W) && device !== 'cpu') {
    throw new Error(`${op}: a quantized 'W' with ${device} tensors is not supported yet; pass a dense f32 or bf16 W on ${device}`);
  }
  return device;
}

function checkAdapter(op: string, x: Tensor, W: WeightOperand, A: Tensor, B: Tensor): { N: number; inF: number; outF: number; r: number } {
  if (isQuantized(W)) checkQuantized(op, 'W', W);
  else checkTensorOn(op, 'W', W, ['f32', 'bf16'], 2);
  checkTensorOn(op, 'A', A, ['f32'], 2);
  checkTensorOn(op, 'B', B, ['f32'], 2);
  const [outF, inF] = W.shape, r = A.shape[0];
  checkShape(op, 'A', A, [r, inF]);
  checkShape(op, 'B', B, [outF, r]);
  if (x.shape.length !== 2 || x.shape[1] !== inF) throw new RangeError(`${op}: input must be [N, ${inF}], got [${x.shape.join(', ')}]`);
  return { N: x.shape[0], inF, outF, r };
}

export function loraForward(x: Tensor, xa: Tensor, W: WeightOperand, A: Tensor, B: Tensor, scale: number,
                            opts: { y?: Tensor; u?: Tensor; category?: Category } = {}): { y: Tensor; u: Tensor } {
  const op = 'loraForward';
  checkTensorOn(op, 'x', x, ['f32'], 2);
  checkTensorOn(op, 'xa', xa, ['f32'], 2);
  checkShape(op, 'xa', xa, x.shape);
  checkFinite(op, 'scale', scale);
  const { N, inF, outF, r } = checkAdapter(op, x, W, A, B);
  const device = loraDevice(op, W, { x, xa, A, B });
  const y = outTensor(op, 'y', opts.y, [N, outF], { category: opts.category, device });
  const u = outTensor(op, 'u', opts.u, [N, r], { category: opts.category, device });
  fwd ??= nativeFn<ForwardFn>('lora_forward');
  fwd(x.handle, xa.handle, nativeOperand(W), A.handle, B.handle, scale, y.handle, u.handle, N, inF, outF, r);
  return { y, u };
}

export interface LoraBackwardOptions {
  /** accumulate dx into this tensor instead of writing a new one */
  dxInto?: Tensor;
  /** [r, in] and [out, r] f32 gradients, accumulated; omit for a frozen adapter */
  dA?: Tensor;
  dB?: Tensor;
  /** write the adapter's input gradient here instead of adding it to dx */
  dxa?: Tensor;
  category?: Category;
}

export function loraBackward(dy: Tensor, xa: Tensor, W: WeightOperand, A: Tensor, B: Tensor, u: Tensor, scale: number,
                             opts: LoraBackwardOptions = {}): Tensor {
  const op = 'loraBackward';
  checkTensorOn(op, 'dy', dy, ['f32'], 2);
  checkTensorOn(op, 'xa', xa, ['f32'], 2);
  checkTensorOn(op, 'u', u, ['f32'], 2);
  checkFinite(op, 'scale', scale);
  const { N, inF, outF, r } = checkAdapter(op, xa, W, A, B);
  checkShape(op, 'dy', dy, [N, outF]);
  checkShape(op, 'u', u, [N, r]);
  if (opts.dA) { checkTensorOn(op, 'dA', opts.dA, ['f32']); checkShape(op, 'dA', opts.dA, A.shape); }
  if (opts.dB) { checkTensorOn(op, 'dB', opts.dB, ['f32']); checkShape(op, 'dB', opts.dB, B.shape); }
  if (opts.dxa) { checkTensorOn(op, 'dxa', opts.dxa, ['f32']); checkShape(op, 'dxa', opts.dxa, [N, inF]); }
  const device = loraDevice(op, W, { dy, xa, A, B, u, dA: opts.dA, dB: opts.dB, dxa: opts.dxa });
  const dx = outTensor(op, 'dxInto', opts.dxInto, [N, inF], { category: opts.category, device });
  bwd ??= nativeFn<BackwardFn>('lora_backward');
  bwd(dy.handle, xa.handle, nativeOperand(W), A.handle, B.handle, u.handle, scale, dx.handle, opts.dxInto !== undefined,
      opts.dA?.handle ?? null, opts.dB?.handle ?? null, opts.dxa?.handle ?? null, N, inF, outF, r);
  return dx;
}

type DeltaRowsFn = (x: H, A: H, B: H, scale: number, y: H, rowBegin: number, rows: number, inF: number, outF: number, r: number) => void;
let deltaRows: DeltaRowsFn | undefined;

/** y[rowBegin, rowBegin + rows) += scale * (x[rows] A^T) B^T, in place.
 *  x [N, in], y [N, out] f32; A [r, in], B [out, r] f32. */
export function loraDeltaRows(x: Tensor, A: Tensor, B: Tensor, scale: number, y: Tensor, rowBegin: number, rows: number): void {
  const op = 'loraDeltaRows';
  checkTensorOn(op, 'x', x, ['f32'], 2);
  checkTensorOn(op, 'y', y, ['f32'], 2);
  checkTensorOn(op, 'A', A, ['f32'], 2);
  checkTensorOn(op, 'B', B, ['f32'], 2);
  checkFinite(op, 'scale', scale);
  const [N, inF] = x.shape, r = A.shape[0], outF = B.shape[0];
  checkShape(op, 'A', A, [r, inF]);
  checkShape(op, 'B', B, [outF, r]);
  checkShape(op, 'y', y, [N, outF]);
  if (!Number.isInteger(rowBegin) || !Number.isInteger(rows) || rowBegin < 0 || rows < 0 || rowBegin + rows > N) {
    throw new RangeError(`${op}: rows [${rowBegin}, ${rowBegin + rows}) are not inside [0, ${N})`);
  }
  sameDevice(op, { x, A, B, y });
  deltaRows ??= nativeFn<DeltaRowsFn>('lora_delta_rows');
  deltaRows(x.handle, A.handle, B.handle, scale, y.handle, rowBegin, rows, inF, outF, r);
}
