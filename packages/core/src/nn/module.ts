// The pieces every layer shares: named parameters with their gradients.
import type { Device } from '../dtype.js';
import type { QuantizedWeight, WeightOperand } from '../quant/quant4.js';
import type { Tensor } from '../tensor.js';

/** A named parameter. Trainable iff `grad` is set; gradients accumulate (+=). */
export interface Parameter {
  /** Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight */
  readonly name: string;
  /** the values; for a quantized weight, its packed codes (see `quantized`) */
  value: Tensor;
  grad: Tensor | null;
  /** set when the parameter is a frozen quantized weight: `value` is then its
   * packed codes, and this holds the whole weight (shape, constants, bytes) */
  quantized?: QuantizedWeight;
}

/** Logical element count of a parameter (a quantized weight counts its values, not its bytes). */
export function parameterNumel(p: Parameter): number {
  return p.quantized ? p.quantized.numel : p.value.numel;
}

/** Moves a dense parameter's value and gradient to `device` (each a copy
 * there, the old tensor disposed; nothing happens to a tensor already there).
 * A quantized parameter is moved by its layer, which owns the whole weight. */
export function moveParameter(p: Parameter, device: Device): void {
  if (p.quantized) throw new Error(`${p.name}: a quantized weight is moved by its layer (to(device)), not as a parameter`);
  p.value = p.value.moveTo(device);
  if (p.grad) p.grad = p.grad.moveTo(device);
}

/** Bytes a parameter's stored value holds (exact for quantized weights). */
export function parameterBytes(p: Parameter): number {
  return p.quantized ? p.quantized.bytes : p.value.bytes;
}

/**
 * The Linear contract: every projection of the model is one of these, so a
 * method (LoRA, QLoRA, QA-LoRA) replaces targeted layers with its own without
 * touching the model code.
 *
 *   forward(x [N, in]) -> y [N, out]     keeps a reference to x for backward
 *   backward(dy [N, out], dxInto?) -> dx [N, in]
 *       dx is written into a new tensor, or ACCUMULATED into dxInto when
 *       given (two projections reading the same input add their gradients);
 *       gradients of trained parameters ACCUMULATE.
 *   to(device)  moves every tensor the layer owns (weights, gradients, a
 *       quantized weight's codes and constants, adapters) to `device`: each a
 *       copy there with the old one disposed, nothing done for what is there
 *       already. Parameter objects stay the same (their value/grad change),
 *       so an optimizer must be built after the move. Everything forward and
 *       backward allocate is on the device of their input.
 */
export interface LinearLayer {
  /** module name without the parameter suffix, e.g. model.layers.0.mlp.up_proj */
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  forward(x: Tensor): Tensor;
  backward(dy: Tensor, dxInto?: Tensor): Tensor;
  /** set by the model before each forward: false turns dropout off */
  training?: boolean;
  /** every parameter, trainable or frozen */
  parameters(): Parameter[];
  /** drop the reference kept for backward */
  clearSaved(): void;
  /** the state of any random stream forward draws from (dropout), so that a
   * recomputed forward (activation checkpointing) draws the same numbers */
  randomState?(): unknown;
  setRandomState?(state: unknown): void;
  /** move what the layer owns to `device` (see above); drops saved state */
  to(device: Device): void;
  /** free the memory this layer owns */
  dispose(): void;
}

/**
 * The frozen-base contract: a Linear layer whose weight does not train and
 * which other layers (LoRA and its quantized variants) wrap. It hands the
 * kernels its weight operand, a dense tensor or a quantized weight, which
 * they read in place (a quantized one is dequantized inside the GEMM).
 */
export interface FrozenBase extends LinearLayer {
  /** the weight parameter, frozen (grad null); quantized weights set `quantized` */
  readonly weight: Parameter;
  /** the weight operand [out, in] the kernels take */
  readonly weightOperand: WeightOperand;
  /** exact bytes of the stored weight and its constants */
  readonly weightBytes: number;
  /** the weight as a new f32 [out, in] tensor (merging, export, tests) */
  toDense(): Tensor;
}

export function isFrozenBase(layer: unknown): layer is FrozenBase {
  return typeof layer === 'object' && layer !== null && 'weightOperand' in layer && typeof (layer as FrozenBase).toDense === 'function';
}

export function trainable(params: readonly Parameter[]): Parameter[] {
  return params.filter((p) => p.grad !== null);
}
