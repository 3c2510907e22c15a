// AdamW over a set of parameters: fp32 state (exp_avg, exp_avg_sq) per
// trainable parameter, counted as `optimizer` memory, on the parameter's
// device. On CUDA the whole step is one launch (adamwStepMulti); on the CPU
// one adamwStep per parameter. With `paged` (CUDA only) the state is CUDA
// managed memory counted as `optimizer_host`, moved to the GPU for each step
// and back to the host after it.
import { adamwStep, adamwStepMulti, prefetch } from '../ops/optim.js';
import { Tensor, copyInto } from '../tensor.js';
import type { Parameter } from '../nn/module.js';
import type { Optimizer } from './optimizer.js';

export interface AdamWConfig {
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** decay 1-D parameters (norm weights) too; default false, as is usual for LLaMA fine-tuning */
  decayNorms?: boolean;
  /** paged state (default false): CUDA managed memory (`optimizer_host`),
   * prefetched to the GPU for each step and back to the host after it. CUDA
   * parameters only: on the CPU there is nothing to page. */
  paged?: boolean;
}

/** The config with every default filled in (shared by AdamW and AdamW8bit). */
export function adamwDefaults(config: AdamWConfig = {}): Required<AdamWConfig> {
  return {
    betas: config.betas ?? [0.9, 0.999], eps: config.eps ?? 1e-8, weightDecay: config.weightDecay ?? 0.01, decayNorms: config.decayNorms ?? false,
    paged: config.paged ?? false,
  };
}

/** The memory category of optimizer state: `optimizer_host` when paged, after
 * checking that paging is possible (every parameter on CUDA). */
export function stateCategory(who: string, params: readonly Parameter[], config: Required<AdamWConfig>): 'optimizer' | 'optimizer_host' {
  if (typeof config.paged !== 'boolean') throw new TypeError(`${who}: paged must be a boolean`);
  if (!config.paged) return 'optimizer';
  const off = params.find((p) => p.value.device !== 'cuda');
  if (off) throw new Error(`${who}: paged optimizer state is CUDA managed memory; parameter ${off.name} is on ${off.value.device}, where there is nothing to page`);
  return 'optimizer_host';
}

/** Moves paged state to `device` (no-op for state that is not paged). */
export function pageState(tensors: Iterable<Tensor>, device: 'cpu' | 'cuda'): void {
  for (const t of tensors) prefetch(t, device);
}

/** Weight decay for one parameter: 1-D ones (norm weights) only with decayNorms. */
export function weightDecayFor(p: Parameter, config: Required<AdamWConfig>): number {
  return p.value.shape.length > 1 || config.decayNorms ? config.weightDecay : 0;
}

/** Checks `given` against the optimizer's own state tensors (`own`, by name)
 * and copies it in only when every tensor is present with the same dtype and
 * shape and nothing unknown is there: a refused state leaves `own` untouched. */
export function copyOptimizerState(own: Map<string, Tensor>, given: Map<string, Tensor>, stepCount: number): void {
  const problems: string[] = [];
  for (const [name, dst] of own) {
    const src = given.get(name);
    if (!src) { problems.push(`${name} is missing`); continue; }
    const sameShape = src.shape.length === dst.shape.length && src.shape.every((d, i) => d === dst.shape[i]);
    if (src.dtype !== dst.dtype || !sameShape) problems.push(`${name} is ${src.dtype} [${src.shape.join(', ')}], expected ${dst.dtype} [${dst.shape.join(', ')}]`);
  }
  for (const name of given.keys()) if (!own.has(name)) problems.push(`${name} is not state of this optimizer`);
  if (!Number.isInteger(stepCount) || stepCount < 0) problems.push(`step count ${stepCount} is not an integer >= 0`);
  if (problems.length) throw new Error(`optimizer state: ${problems.join('; ')}`);
  // same dtype and shape on both sides (checked above); any devices
  for (const [name, dst] of own) copyInto(dst, given.get(name)!);
}

export class AdamW implements Optimizer {
  readonly name = 'adamw' as const;
  readonly params: Parameter[];
  readonly config: Required<AdamWConfig>;
  private m: Tensor[];
  private v: Tensor[];
  /** optimizer steps taken */
  stepCount = 0;

  constructor(params: readonly Parameter[], config: AdamWConfig = {}) {
    this.params = params.filter((p) => p.grad !== null);
    if (this.params.length === 0) throw new Error('AdamW: no trainable parameters (every parameter is frozen)');
    this.config = adamwDefaults(config);
    const category = stateCategory('AdamW', this.params, this.config);
    this.m = this.params.map((p) => Tensor.zeros(p.value.shape, { category, device: p.value.device }));
    this.v = this.params.map((p) => Tensor.zeros(p.value.shape, { category, device: p.value.device }));
  }

  /** One update of every trainable parameter with the gradients they hold. */
  step(lr: number): void {
    this.stepCount++;
    const [beta1, beta2] = this.config.betas;
    if (this.params.every((p) => p.value.device === 'cuda')) {
      const paged = this.config.paged;
      if (paged) pageState([...this.m, ...this.v], 'cuda');
      adamwStepMulti(this.params.map((p, i) => ({ param: p.value, grad: p.grad!, m: this.m[i], v: this.v[i], weightDecay: weightDecayFor(p, this.config) })),
        { lr, beta1, beta2, eps: this.config.eps, step: this.stepCount });
      if (paged) pageState([...this.m, ...this.v], 'cpu');
      return;
    }
    this.params.forEach((p, i) => {
      adamwStep(p.value, p.grad!, this.m[i], this.v[i], { lr, beta1, beta2, eps: this.config.eps, weightDecay: weightDecayFor(p, this.config), step: this.stepCount });
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

  /** Copy state saved by stateTensors() back in; every tensor is checked
   * (dtype and shape) before anything is copied. */
  loadState(tensors: Map<string, Tensor>, stepCount: number): void {
    copyOptimizerState(this.stateTensors(), tensors, stepCount);
    this.stepCount = stepCount;
  }

  /** Bytes of optimizer state held: two f32 tensors per trainable parameter. */
  stateBytes(): number {
    let n = 0;
    for (const t of [...this.m, ...this.v]) n += t.bytes;
    return n;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
