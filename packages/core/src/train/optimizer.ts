// The optimizer contract the Trainer and checkpoints work through, so the
// fp32 AdamW and the 8-bit one are interchangeable.
import type { Parameter } from '../nn/module.js';
import type { Tensor } from '../tensor.js';
import { AdamW, type AdamWConfig } from './adamw.js';
import { AdamW8bit } from './adamw8bit.js';

export type OptimizerName = 'adamw' | 'adamw8bit';
export const OPTIMIZER_NAMES: readonly OptimizerName[] = ['adamw', 'adamw8bit'];

export interface Optimizer {
  /** which optimizer this is; checkpoints record it */
  readonly name: OptimizerName;
  /** the trainable parameters it updates (those with a gradient) */
  readonly params: Parameter[];
  /** optimizer steps taken */
  stepCount: number;
  /** one update of every parameter with the gradients they hold */
  step(lr: number): void;
  /** state tensors by name, owned by the optimizer (what a checkpoint saves) */
  stateTensors(): Map<string, Tensor>;
  /** copy saved state back in; validates every tensor's dtype and shape before
   * copying anything, so a refused state leaves the optimizer unchanged */
  loadState(tensors: Map<string, Tensor>, stepCount: number): void;
  /** exact bytes of state held */
  stateBytes(): number;
  dispose(): void;
}

/** Builds an optimizer over a model's parameters (it keeps the trainable ones). */
export type OptimizerFactory = (params: readonly Parameter[]) => Optimizer;

/** A factory for the fp32 AdamW ('adamw') or the blockwise 8-bit one ('adamw8bit'). */
export function makeOptimizer(kind: OptimizerName, config: AdamWConfig = {}): OptimizerFactory {
  switch (kind) {
    case 'adamw': return (params) => new AdamW(params, config);
    case 'adamw8bit': return (params) => new AdamW8bit(params, config);
    default: throw new Error(`makeOptimizer: unknown optimizer '${String(kind)}' (known: ${OPTIMIZER_NAMES.join(', ')})`);
  }
}
