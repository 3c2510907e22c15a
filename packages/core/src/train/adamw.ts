// AdamW over a set of parameters: fp32 state (exp_avg, exp_avg_sq) per
// trainable parameter, counted as `optimizer` memory.
import { adamwStep } from '../ops/optim.js';
import { Tensor } from '../tensor.js';
import type { Parameter } from '../nn/module.js';

export interface AdamWConfig {
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** decay 1-D parameters (norm weights) too; default false, as is usual for LLaMA fine-tuning */
  decayNorms?: boolean;
}

export class AdamW {
  readonly params: Parameter[];
  readonly config: Required<AdamWConfig>;
  private m: Tensor[];
  private v: Tensor[];
  /** optimizer steps taken */
  stepCount = 0;

  constructor(params: readonly Parameter[], config: AdamWConfig = {}) {
    this.params = params.filter((p) => p.grad !== null);
    if (this.params.length === 0) throw new Error('AdamW: no trainable parameters (every parameter is frozen)');
    this.config = { betas: config.betas ?? [0.9, 0.999], eps: config.eps ?? 1e-8, weightDecay: config.weightDecay ?? 0.01, decayNorms: config.decayNorms ?? false };
    this.m = this.params.map((p) => Tensor.zeros(p.value.shape, { category: 'optimizer' }));
    this.v = this.params.map((p) => Tensor.zeros(p.value.shape, { category: 'optimizer' }));
  }

  /** One update of every trainable parameter with the gradients they hold. */
  step(lr: number): void {
    this.stepCount++;
    const [beta1, beta2] = this.config.betas;
    this.params.forEach((p, i) => {
      const decay = p.value.shape.length > 1 || this.config.decayNorms ? this.config.weightDecay : 0;
      adamwStep(p.value, p.grad!, this.m[i], this.v[i], { lr, beta1, beta2, eps: this.config.eps, weightDecay: decay, step: this.stepCount });
    });
  }

  /** State tensors by name (exp_avg.<param>, exp_avg_sq.<param>), owned by the optimizer. */
  stateTensors(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.params.forEach((p, i) => {
      out.set(`exp_avg.${p.name}`, this.m[i]);
      out.set(`exp_avg_sq.${p.name}`, this.v[i]);
    });
    return out;
  }

  /** Copy state saved by stateTensors() back in (shapes must match). */
  loadState(tensors: Map<string, Tensor>, stepCount: number): void {
    const problems: string[] = [];
    this.params.forEach((p, i) => {
      for (const [prefix, dst] of [['exp_avg', this.m[i]], ['exp_avg_sq', this.v[i]]] as const) {
        const src = tensors.get(`${prefix}.${p.name}`);
        if (!src) { problems.push(`${prefix}.${p.name} is missing`); continue; }
        if (src.dtype !== 'f32' || src.numel !== dst.numel) { problems.push(`${prefix}.${p.name} is ${src.dtype} [${src.shape.join(', ')}], expected f32 [${dst.shape.join(', ')}]`); continue; }
        (dst.data() as Float32Array).set(src.data() as Float32Array);
      }
    });
    if (problems.length) throw new Error(`optimizer state: ${problems.join('; ')}`);
    if (!Number.isInteger(stepCount) || stepCount < 0) throw new Error(`optimizer state: step count ${stepCount} is not an integer >= 0`);
    this.stepCount = stepCount;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
