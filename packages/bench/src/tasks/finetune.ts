// Train a model on prepared token rows with the shared Trainer, and report
// speed. Used by every task and method so runs differ only where they must.
import { type Device, type LlamaModel, type OptimizerFactory, type ScheduleConfig, type StepStats, type TokenRows, TokenDataSource, Trainer, synchronize } from '@tunebench/core';

export interface FinetuneOptions {
  steps: number;
  batchSize: number;
  lr: number;
  schedule?: 'constant' | 'cosine';
  warmupSteps?: number;
  gradAccumulation?: number;
  maxGradNorm?: number | null;
  weightDecay?: number;
  seed?: number;
  /** the method's optimizer, given the weight decay (default: fp32 AdamW) */
  optimizer?: (weightDecay: number) => OptimizerFactory;
  /** called after every optimizer step (its time is left out of the run's speed) */
  onStep?: (s: StepStats) => void;
  /** the model's device (default cpu): on cuda the stream is synchronised
   * before the clock starts and after every step, so that a step's time
   * includes its queued kernels (the wait is added to its optimizer time) */
  device?: Device;
}

export interface FinetuneResult {
  steps: StepStats[];
  ms: number;
  /** input positions per second over the whole run, padding included (B * T
   * per micro-batch): the padded figure, comparable with earlier records */
  tokensPerSecond: number;
  /** real (non-padding) input tokens per second over the whole run: what a
   * packed or padded run actually trains on */
  realTokensPerSecond: number;
  finalLoss: number;
}

/** The trainer settings finetune() uses, defaults filled in (peers redo a run with exactly these). */
export function resolveFinetuneOptions(o: FinetuneOptions): { schedule: ScheduleConfig; gradAccumulation: number; maxGradNorm: number | null; weightDecay: number; seed: number } {
  return {
    schedule: { kind: o.schedule ?? 'cosine', lr: o.lr, warmupSteps: o.warmupSteps ?? Math.min(10, Math.floor(o.steps / 10)), totalSteps: o.steps },
    gradAccumulation: o.gradAccumulation ?? 1,
    maxGradNorm: o.maxGradNorm === undefined ? 1.0 : o.maxGradNorm,
    weightDecay: o.weightDecay ?? 0.0,
    seed: o.seed ?? 0,
  };
}

export function finetune(model: LlamaModel, rows: TokenRows, o: FinetuneOptions): FinetuneResult {
  const run = finetuneSteps(model, rows, o);
  for (;;) {
    const next = run.next();
    if (next.done) return next.value;
  }
}

/** finetune() one optimizer step per next(), for a caller that does
 * something between steps (the runner lets the event loop turn, so that a
 * Ctrl-C handler runs). return() ends it early; the trainer is disposed. */
export function* finetuneSteps(model: LlamaModel, rows: TokenRows, o: FinetuneOptions): Generator<StepStats, FinetuneResult, void> {
  const f = resolveFinetuneOptions(o);
  const data = new TokenDataSource(rows, { batchSize: o.batchSize, seed: f.seed });
  const trainer = new Trainer(model, data, {
    schedule: f.schedule, gradAccumulation: f.gradAccumulation, maxGradNorm: f.maxGradNorm, seed: f.seed,
    ...(o.optimizer ? { optimizerFactory: o.optimizer(f.weightDecay) } : { optimizer: { weightDecay: f.weightDecay } }),
  });
  const steps: StepStats[] = [];
  const device = o.device ?? 'cpu';
  synchronize(device);
  const t0 = performance.now();
  let callbackMs = 0;  // held-out evaluations and progress lines are not training time
  try {
    for (let i = 0; i < o.steps; i++) {
      const s = trainer.trainStep();
      if (device !== 'cpu') {
        // the optimizer's kernels may still be queued when trainStep returns
        const w0 = performance.now();
        synchronize(device);
        const waited = performance.now() - w0;
        s.ms.optimizer += waited;
        s.ms.total += waited;
      }
      steps.push(s);
      // the callback and whatever the consumer does between steps (the
      // runner's held-out scoring, its turn of the event loop) is not training time
      const tc = performance.now();
      o.onStep?.(s);
      yield s;
      callbackMs += performance.now() - tc;
    }
  } finally {
    trainer.dispose();
  }
  const ms = performance.now() - t0 - callbackMs;
  const tokens = steps.reduce((a, s) => a + s.tokens, 0), real = steps.reduce((a, s) => a + s.realTokens, 0);
  return { steps, ms, tokensPerSecond: (tokens * 1000) / ms, realTokensPerSecond: (real * 1000) / ms, finalLoss: steps.length ? steps[steps.length - 1].loss : NaN };
}

/** A text bar of `width` cells for a fraction in [0, 1]. */
export function progressBar(fraction: number, width = 20): string {
  const f = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0));
  const full = Math.round(f * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}

/** A one-line progress printer: a rewritten line with a bar on a terminal, a plain line every `every` steps otherwise. */
export function progressPrinter(label: string, total: number, every = 10): (s: StepStats) => void {
  const tty = process.stderr.isTTY;
  const t0 = performance.now();
  let tokens = 0;
  return (s) => {
    tokens += s.realTokens;
    const elapsed = (performance.now() - t0) / 1000;
    const tps = tokens / Math.max(elapsed, 1e-9);
    const eta = ((total - s.step) * elapsed) / s.step;
    const line = `${label} step ${s.step}/${total} loss ${s.loss.toFixed(4)} ${Math.round(tps)} real tok/s ETA ${eta.toFixed(0)}s`;
    if (tty) process.stderr.write(`\r${progressBar(s.step / total)} ${line}\x1b[K${s.step === total ? '\n' : ''}`);
    else if (s.step % every === 0 || s.step === total || s.step === 1) process.stderr.write(`${line}\n`);
  };
}
