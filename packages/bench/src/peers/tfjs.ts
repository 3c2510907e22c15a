// The TensorFlow.js peer: what a TypeScript user would pick instead of
// tunebench. The same LLaMA (core's tfjs reference model, written in tfjs
// ops), the same initial weights, batches and learning rates, trained the
// way a tfjs user would: tf.variableGrads, global-norm clipping, tf.train.adam
// (with weight decay 0, AdamW and Adam are the same update). The pure-JS cpu
// backend: TensorFlow.js's native backend cannot be installed here.
//
// Memory: tfjs's own count of tensor bytes (tf.profile's peakBytes) on the
// last step, above what existed before the weights were made; that step is
// left out of the timing (profiling slows it).
import type * as TF from '@tensorflow/tfjs';
import { tfjsLlamaLoss } from '@tunebench/core/reference/tfjs-llama';
import type { PeerInput, PeerOutcome } from './input.js';

/** tfjs, without its one-time console advice to install the native Node backend (which cannot install here). */
async function loadTfjs(): Promise<typeof TF> {
  const warn = console.warn;
  console.warn = (...a: unknown[]) => { if (!/running TensorFlow\.js in Node\.js/.test(String(a[0]))) warn(...a); };
  try {
    const tf = await import('@tensorflow/tfjs');
    await tf.setBackend('cpu');
    await tf.ready();
    tf.tensor([0]).dispose();  // the advice comes with the backend's first tensor
    return tf;
  } finally {
    console.warn = warn;
  }
}

export async function runTfjsPeer(input: PeerInput, o: { onStep?: (step: number, loss: number, ms: number) => void } = {}): Promise<PeerOutcome> {
  const steps = input.batches.length;
  if (steps < 3) throw new Error(`the TensorFlow.js peer needs at least 3 steps (one warm-up, one timed, one profiled), got ${steps}`);
  const tf = await loadTfjs();
  const bytesBefore = tf.memory().numBytes;
  const B = input.batchSize, T = input.seqLen;
  const trainableNames = new Set(input.lora
    ? input.weights.filter((w) => /\.lora_[AB]\.weight$/.test(w.name)).map((w) => w.name)
    : input.weights.map((w) => w.name));
  const P = new Map<string, TF.Tensor>();
  for (const w of input.weights) {
    const t = tf.tensor(w.data, w.shape, 'float32');
    if (trainableNames.has(w.name)) { P.set(w.name, tf.variable(t, true, w.name)); t.dispose(); }
    else P.set(w.name, t);
  }
  const vars = [...trainableNames].map((n) => P.get(n) as TF.Variable);
  const lora = input.lora ? { scale: input.lora.scale, targets: new Set(input.lora.targets) } : undefined;
  const optimizer = tf.train.adam(input.lrs[0], input.betas[0], input.betas[1], input.eps);
  const losses: number[] = [], stepMs: number[] = [];
  let peakBytes: number | null = null;
  try {
    for (let s = 0; s < steps; s++) {
      const { ids, targets, segments, positions } = input.batches[s];
      const count = targets.reduce((a, t) => a + (t === -100 ? 0 : 1), 0);
      const step = () => {
        const loss = tf.tidy(() => {
          const { value, grads } = tf.variableGrads(() => tfjsLlamaLoss(tf, input.cfg, P, ids, targets, B, T, lora, { segments, positions }).div(Math.max(count, 1)) as TF.Scalar, vars);
          let scaled: TF.NamedTensorMap = grads;
          if (input.maxGradNorm !== null) {
            const norm = tf.sqrt(tf.addN(Object.values(grads).map((g) => tf.sum(tf.square(g))))).dataSync()[0];
            const coef = Math.min(1, input.maxGradNorm / (norm + 1e-6));
            if (coef < 1) scaled = Object.fromEntries(Object.entries(grads).map(([k, g]) => [k, g.mul(coef)]));
          }
          // the schedule: tfjs optimizers read their learning rate at every update
          (optimizer as unknown as { learningRate: number }).learningRate = input.lrs[s];
          optimizer.applyGradients(scaled as Parameters<typeof optimizer.applyGradients>[0]);
          return value;
        });
        const v = loss.dataSync()[0];
        loss.dispose();
        return v;
      };
      const t0 = performance.now();
      let loss: number;
      if (s === steps - 1) {
        let v = NaN;
        const info = await tf.profile(() => { v = step(); return [] as TF.Tensor[]; });
        loss = v;
        peakBytes = info.peakBytes - bytesBefore;
      } else loss = step();
      const ms = performance.now() - t0;
      losses.push(loss);
      stepMs.push(ms);
      o.onStep?.(s + 1, loss, ms);
      if (!Number.isFinite(loss)) break;
    }
  } finally {
    optimizer.dispose();
    for (const t of P.values()) t.dispose();
  }
  return {
    impl: 'tensorflow.js', losses, stepMs: stepMs.slice(0, steps - 1), timedFrom: 1, peakBytes,
    memorySource: 'tfjs tensor bytes at their peak (tf.profile), last step',
    detail: `@tensorflow/tfjs ${tf.version.tfjs}, ${tf.getBackend()} backend`,
  };
}
