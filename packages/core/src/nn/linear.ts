// Dense linear layer: y = x · W^T, W [out, in] (no bias, as in LLaMA).
// W is f32 when trained (full fine-tuning) or frozen in f32 or bf16.
import type { Device } from '../dtype.js';
import { matmul } from '../ops/gemm.js';
import { type QuantizedIntN, checkIntN, dequantizeIntN, disposeIntN } from '../quant/intn.js';
import { type Quantized4bit, type QuantizedWeight, checkQuantized, disposeQuantized, dequantize4bit, moveQuantized } from '../quant/quant4.js';
import { Tensor } from '../tensor.js';
import { type FrozenBase, type LinearLayer, type Parameter, moveParameter } from './module.js';

export class DenseLinear implements LinearLayer, FrozenBase {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Parameter;
  private savedInput: Tensor | null = null;

  /** weight: [out, in]; grad: [out, in] f32 when trained, else null */
  constructor(name: string, weight: Tensor, grad: Tensor | null) {
    if (weight.shape.length !== 2) throw new RangeError(`${name}: weight must be [out, in], got [${weight.shape.join(', ')}]`);
    if (grad && (grad.dtype !== 'f32' || grad.shape[0] !== weight.shape[0] || grad.shape[1] !== weight.shape[1])) {
      throw new RangeError(`${name}: grad must be f32 [${weight.shape.join(', ')}]`);
    }
    if (grad && weight.dtype !== 'f32') throw new TypeError(`${name}: a trained weight must be f32 (got ${weight.dtype})`);
    this.name = name;
    this.outFeatures = weight.shape[0];
    this.inFeatures = weight.shape[1];
    this.weight = { name: `${name}.weight`, value: weight, grad };
  }

  // x [N, in] -> y [N, out]
  forward(x: Tensor): Tensor {
    if (x.shape.length !== 2 || x.shape[1] !== this.inFeatures) {
      throw new RangeError(`${this.name}: input must be [N, ${this.inFeatures}], got [${x.shape.join(', ')}]`);
    }
    this.savedInput = x;
    return matmul(x, this.weight.value, { transB: true });
  }

  // dy [N, out] -> dx [N, in] (written, or accumulated into dxInto); dW += dy^T x
  backward(dy: Tensor, dxInto?: Tensor): Tensor {
    const x = this.savedInput;
    if (!x) throw new Error(`${this.name}: backward called without a forward`);
    if (this.weight.grad) matmul(dy, x, { transA: true, out: this.weight.grad, beta: 1 });
    const dx = dxInto ? matmul(dy, this.weight.value, { out: dxInto, beta: 1 }) : matmul(dy, this.weight.value);
    this.savedInput = null;
    return dx;
  }

  parameters(): Parameter[] {
    return [this.weight];
  }

  /** FrozenBase: the weight tensor itself (f32 or bf16). A frozen base only
   * when the weight has no gradient; LoRA checks that. */
  get weightOperand(): Tensor {
    return this.weight.value;
  }

  get weightBytes(): number {
    return this.weight.value.bytes;
  }

  toDense(): Tensor {
    const w = this.weight.value;
    return Tensor.from(w.toFloat32(), w.shape, { category: 'workspace', device: w.device });
  }

  clearSaved(): void {
    this.savedInput = null;
  }

  to(device: Device): void {
    this.savedInput = null;
    moveParameter(this.weight, device);
  }

  dispose(): void {
    this.savedInput = null;
    this.weight.value.dispose();
    this.weight.grad?.dispose();
  }
}

/** What a frozen layer over a quantized weight does, whatever the format:
 * y = x · deq(W)^T, dx = dy · deq(W), nothing for W; the GEMM dequantizes
 * while packing (the dense weight never exists). Subclasses check their
 * format and say how to dequantize and free it. */
abstract class QuantizedLinear<Q extends QuantizedWeight> implements FrozenBase {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Parameter;
  readonly quantized: Q;
  private savedInput: Tensor | null = null;

  /** q: the weight [out, in], owned by the layer from now on (checked by the subclass first) */
  protected constructor(name: string, q: Q, storage: Tensor) {
    this.name = name;
    this.quantized = q;
    [this.outFeatures, this.inFeatures] = q.shape;
    this.weight = { name: `${name}.weight`, value: storage, grad: null, quantized: q };
  }

  get weightOperand(): Q {
    return this.quantized;
  }

  /** the quantized weight's exact bytes (codes and their constants) */
  get weightBytes(): number {
    return this.quantized.bytes;
  }

  // x [N, in] -> y [N, out]
  forward(x: Tensor): Tensor {
    if (x.shape.length !== 2 || x.shape[1] !== this.inFeatures) {
      throw new RangeError(`${this.name}: input must be [N, ${this.inFeatures}], got [${x.shape.join(', ')}]`);
    }
    this.savedInput = x;
    return matmul(x, this.quantized, { transB: true });
  }

  // dy [N, out] -> dx [N, in] (written, or accumulated into dxInto); W is frozen
  backward(dy: Tensor, dxInto?: Tensor): Tensor {
    if (!this.savedInput) throw new Error(`${this.name}: backward called without a forward`);
    this.savedInput = null;
    return dxInto ? matmul(dy, this.quantized, { out: dxInto, beta: 1 }) : matmul(dy, this.quantized);
  }

  abstract toDense(): Tensor;

  protected abstract disposeWeight(): void;

  parameters(): Parameter[] {
    return [this.weight];
  }

  clearSaved(): void {
    this.savedInput = null;
  }

  /** Moves the codes and constants; the parameter's value follows the storage. */
  to(device: Device): void {
    this.savedInput = null;
    moveQuantized(this.quantized, device);
    this.weight.value = this.storage();
  }

  /** the tensor the weight parameter shows as its value (the packed codes) */
  protected abstract storage(): Tensor;

  dispose(): void {
    this.savedInput = null;
    this.disposeWeight();
  }
}

/** A frozen linear layer over a 4-bit quantized weight (NF4 / FP4, optional
 * double quantization): y = x · deq(W)^T; backward gives dx = dy · deq(W)
 * and nothing for W. The GEMM dequantizes while packing its panels, in both
 * directions, so the dense weight never exists. */
export class Quant4Linear extends QuantizedLinear<Quantized4bit> {
  /** q: the weight [out, in], owned by the layer from now on */
  constructor(name: string, q: Quantized4bit) {
    if ((q as { kind?: unknown })?.kind !== 'quant4') throw new TypeError(`${name}: Quant4Linear needs a 4-bit weight (an INT-N weight goes in IntNLinear)`);
    checkQuantized(name, 'weight', q);
    super(name, q, q.packed);
  }

  toDense(): Tensor {
    return dequantize4bit(this.quantized);
  }

  protected storage(): Tensor {
    return this.quantized.packed;
  }

  protected disposeWeight(): void {
    disposeQuantized(this.quantized);
  }
}

/** A frozen linear layer over a group-wise INT-N weight (QA-LoRA's base):
 * y = x · deq(W)^T; backward gives dx = dy · deq(W) and nothing for W. The
 * GEMM dequantizes while packing its panels (both directions), and for 1..16
 * rows of x the decode kernel dots one dequantized group at a time: the
 * dense weight never exists. */
export class IntNLinear extends QuantizedLinear<QuantizedIntN> {
  /** q: the weight [out, in], owned by the layer from now on */
  constructor(name: string, q: QuantizedIntN) {
    checkIntN(name, 'weight', q);
    super(name, q, q.codes);
  }

  toDense(): Tensor {
    return dequantizeIntN(this.quantized);
  }

  protected storage(): Tensor {
    return this.quantized.codes;
  }

  protected disposeWeight(): void {
    disposeIntN(this.quantized);
  }
}
