// Dense linear layer: y = x · W^T, W [out, in] (no bias, as in LLaMA).
// W is f32 when trained (full fine-tuning) or frozen in f32 or bf16.
import { matmul } from '../ops/gemm.js';
import type { Tensor } from '../tensor.js';
import type { LinearLayer, Parameter } from './module.js';

export class DenseLinear implements LinearLayer {
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

  clearSaved(): void {
    this.savedInput = null;
  }

  dispose(): void {
    this.savedInput = null;
    this.weight.value.dispose();
    this.weight.grad?.dispose();
  }
}
