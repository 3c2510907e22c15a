// The pieces every layer shares: named parameters with their gradients.
import type { Tensor } from '../tensor.js';

/** A named parameter. Trainable iff `grad` is set; gradients accumulate (+=). */
export interface Parameter {
  /** Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight */
  readonly name: string;
  value: Tensor;
  grad: Tensor | null;
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
  /** free the memory this layer owns */
  dispose(): void;
}

export function trainable(params: readonly Parameter[]): Parameter[] {
  return params.filter((p) => p.grad !== null);
}
