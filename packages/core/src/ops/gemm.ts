// matmul: C [M, N] = alpha * op(A) [M, K] * op(B) [K, N] + beta * C
//   A: [M, K] (or [K, M] with transA), f32 or bf16
//   B: [K, N] (or [N, K] with transB), f32, bf16 or a quantized weight (a
//      frozen bf16 or 4-bit weight is widened or dequantized panel by panel
//      inside the kernel, never whole)
//   C: f32. beta = 0 overwrites C; beta = 1 accumulates (gradients).
// Every operand (each part of a quantized B too) on one device: the CPU
// kernel, or on CUDA the bf16 tensor-core kernel (operands rounded to bf16,
// fp32 accumulation; a few rows times a quantized x Wᵀ take the decode kernel).
import type { Category } from '../dtype.js';
import { native, nativeFn } from '../native.js';
import { type WeightOperand, checkQuantized, isQuantized, nativeOperand, weightTensors } from '../quant/quant4.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkTensorOn, fmtShape, outTensor, sameDevice } from './check.js';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  beta?: number;
  out?: Tensor;
  category?: Category;
  /** run the reference instead: the unblocked kernel on the CPU (tests),
   * cuBLASLt with bf16 operands on CUDA (benchmarks; an error when the
   * library is not found, see cublasLtStatus) */
  reference?: boolean;
}

export function matmul(a: Tensor, b: WeightOperand, opts: MatmulOptions = {}): Tensor {
  const op = 'matmul';
  checkTensorOn(op, 'a', a, ['f32', 'bf16'], 2);
  if (isQuantized(b)) checkQuantized(op, 'b', b);
  else checkTensorOn(op, 'b', b, ['f32', 'bf16'], 2);
  const device = sameDevice(op, { a, ...weightTensors('b', b) });
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1, beta = opts.beta ?? 0;
  checkFinite(op, 'alpha', alpha);
  checkFinite(op, 'beta', beta);
  const [ar, ac] = a.shape, [br, bc] = b.shape;
  const M = transA ? ac : ar, K = transA ? ar : ac;
  const Kb = transB ? bc : br, N = transB ? br : bc;
  if (K !== Kb) {
    throw new RangeError(`${op}: inner dimensions differ: op(a) is ${fmtShape([M, K])} (a ${fmtShape(a.shape)}${transA ? ', transposed' : ''}), op(b) is ${fmtShape([Kb, N])} (b ${fmtShape(b.shape)}${transB ? ', transposed' : ''})`);
  }
  if (beta !== 0 && opts.out === undefined) throw new Error(`${op}: beta = ${beta} needs an 'out' tensor to accumulate into`);
  const c = outTensor(op, 'out', opts.out, [M, N], { category: opts.category, device });
  native.gemm(transA, transB, M, N, K, alpha, a.handle, ac, nativeOperand(b) as never, bc, beta, c.handle, N, opts.reference ?? false);
  return c;
}

/** Name of the micro-kernel this build uses. */
export function gemmKernel(): string {
  return native.gemmKernel;
}

/** "" when cuBLASLt (the CUDA reference GEMM, loaded at run time) is
 * available, else why not; loads it on first call. */
export function cublasLtStatus(): string {
  return nativeFn<() => string>('cublaslt_status')();
}
