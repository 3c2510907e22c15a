// The training loop shared by every method: micro-batches with gradient
// accumulation, global gradient clipping, an optimizer (AdamW by default, fp32
// or 8-bit state), a learning-rate schedule.
// It trains whatever parameters of the model have gradients, so full
// fine-tuning and the adapter methods use the same loop.
import { clipGradNorm } from '../ops/optim.js';
import { type LlamaModel, disposeBatch } from '../nn/llama.js';
import { hostValues } from '../tensor.js';
import { Rng, type RngState } from '../util/rng.js';
import { AdamW, type AdamWConfig } from './adamw.js';
import type { Optimizer, OptimizerFactory } from './optimizer.js';
import type { DataSource } from './data_source.js';
import { type ScheduleConfig, learningRate, validateSchedule } from './schedule.js';

export const IGNORE_INDEX = -100;

export interface TrainerConfig {
  schedule: ScheduleConfig;
  /** micro-batches per optimizer step (default 1) */
  gradAccumulation?: number;
  /** clip the global gradient norm to this (default 1.0; null turns clipping off) */
  maxGradNorm?: number | null;
  /** config of the default optimizer, the fp32 AdamW (not with optimizerFactory) */
  optimizer?: AdamWConfig;
  /** builds the optimizer from the model's parameters, e.g. makeOptimizer('adamw8bit', config);
   * default: the fp32 AdamW with `optimizer` */
  optimizerFactory?: OptimizerFactory;
  /** seeds the trainer's own random stream (saved in checkpoints) */
  seed?: number;
}

export interface StepStats {
  /** optimizer steps done, this one included */
  step: number;
  /** mean loss over this step's target tokens */
  loss: number;
  /** target tokens in this step (all micro-batches) */
  targetTokens: number;
  /** input positions processed in this step, padding included (B * T per
   * micro-batch): the padded figure */
  tokens: number;
  /** non-padding input tokens of this step (each batch's realTokens, else
   * all its positions): throughput over real tokens counts these */
  realTokens: number;
  lr: number;
  /** global gradient norm before clipping */
  gradNorm: number;
  ms: { forward: number; backward: number; optimizer: number; total: number };
}

/** The loss or the gradients stopped being finite. */
export class DivergedError extends Error {
  constructor(readonly step: number, readonly loss: number, readonly gradNorm: number) {
    super(`training diverged at step ${step}: loss ${loss}, gradient norm ${gradNorm}`);
    this.name = 'DivergedError';
  }
}

export class Trainer {
  readonly model: LlamaModel;
  readonly data: DataSource;
  readonly config: Required<Omit<TrainerConfig, 'optimizer' | 'optimizerFactory'>> & { optimizer: AdamWConfig };
  readonly optimizer: Optimizer;
  rng: Rng;
  /** optimizer steps done */
  step = 0;

  constructor(model: LlamaModel, data: DataSource, config: TrainerConfig) {
    validateSchedule(config.schedule);
    const accum = config.gradAccumulation ?? 1;
    if (!Number.isInteger(accum) || accum < 1) throw new Error(`trainer: gradAccumulation must be a positive integer, got ${accum}`);
    // the factory carries its own config: refusing both keeps one of them from being silently ignored
    if (config.optimizerFactory && config.optimizer) {
      throw new Error("trainer: pass either optimizer (AdamW config) or optimizerFactory, not both; give the config to the factory (makeOptimizer(kind, config))");
    }
    const clip = config.maxGradNorm === undefined ? 1.0 : config.maxGradNorm;
    if (clip !== null && !(clip > 0)) throw new Error(`trainer: maxGradNorm must be > 0 or null, got ${clip}`);
    this.config = { schedule: { ...config.schedule }, gradAccumulation: accum, maxGradNorm: clip, optimizer: config.optimizer ?? {}, seed: config.seed ?? 0 };
    this.model = model;
    this.data = data;
    this.optimizer = config.optimizerFactory ? config.optimizerFactory(model.parameters()) : new AdamW(model.parameters(), this.config.optimizer);
    this.rng = new Rng(this.config.seed);
  }

  /** One optimizer step over gradAccumulation micro-batches. The loss is the
   * mean over every target token of the step: each micro-batch's gradient is
   * scaled by 1 / (target tokens of all micro-batches), not by 1 / accum. */
  trainStep(): StepStats {
    const t0 = performance.now();
    const batches = Array.from({ length: this.config.gradAccumulation }, () => this.data.next());
    let targetTokens = 0, tokens = 0, realTokens = 0;
    for (const b of batches) {
      const tv = hostValues(b.targets) as Int32Array;
      for (let i = 0; i < tv.length; i++) if (tv[i] !== IGNORE_INDEX) targetTokens++;
      tokens += b.ids.numel;
      realTokens += b.realTokens ?? b.ids.numel;
    }
    const ms = { forward: 0, backward: 0, optimizer: 0, total: 0 };
    let lossSum = 0;
    try {
      if (targetTokens === 0) throw new Error(`trainer: step ${this.step + 1} has no target tokens in its ${batches.length} micro-batch(es)`);
      this.model.zeroGrad();
      for (const b of batches) {
        const f0 = performance.now();
        const r = this.model.forward(b, { training: true });
        const f1 = performance.now();
        this.model.backward(1 / targetTokens);
        ms.forward += f1 - f0;
        ms.backward += performance.now() - f1;
        lossSum += r.lossSum;
      }
    } finally {
      for (const b of batches) disposeBatch(b);
    }
    const loss = lossSum / targetTokens;
    const o0 = performance.now();
    const grads = this.optimizer.params.map((p) => p.grad!);
    // with clipping off, an infinite limit only measures the norm
    const gradNorm = clipGradNorm(grads, this.config.maxGradNorm ?? Infinity);
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) throw new DivergedError(this.step + 1, loss, gradNorm);
    const lr = learningRate(this.config.schedule, this.step);
    this.optimizer.step(lr);
    this.step++;
    ms.optimizer = performance.now() - o0;
    ms.total = performance.now() - t0;
    return { step: this.step, loss, targetTokens, tokens, realTokens, lr, gradNorm, ms };
  }

  /** Used by loadCheckpoint: continue counting from a saved step. */
  restoreProgress(step: number, rngState: RngState): void {
    if (!Number.isInteger(step) || step < 0) throw new Error(`trainer: saved step ${step} is not an integer >= 0`);
    this.step = step;
    this.rng = new Rng(rngState);
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
