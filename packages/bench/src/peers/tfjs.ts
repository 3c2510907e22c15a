// The TensorFlow.js peer: what a TypeScript user would pick instead of
// tunebench. The same LLaMA (core's tfjs reference model, written in tfjs
// ops), the same initial weights, batches and learning rates, trained the
// way a tfjs user would: tf.variableGrads, global-norm clipping, tf.train.adam
// (with weight decay 0, AdamW and Adam are the same update).
//
// Backend: the fastest one that installs from the npm registry here,
// @tensorflow/tfjs-backend-wasm (XNNPACK compiled to WebAssembly, SIMD where
// the runtime validates it; the .wasm files are read from the installed
// package, never fetched). tfjs-node (libtensorflow) cannot install here.
// The wasm backend runs one thread in Node: tfjs 4.22 reports no thread
// support when IS_NODE, and forcing the flag fails because it hands
// Emscripten a blob: URL for the worker script, which Node's worker_threads
// refuse (ERR_WORKER_PATH), although Node 20 has SharedArrayBuffer, workers
// and wasm threads. When wasm cannot initialise the peer falls back to the
// pure-JS cpu backend and says why; the cpu backend stays the gradient
// oracle of the tests (core's tests use it).
//
// Memory: tfjs's own count of tensor bytes (tf.profile's peakBytes) on the
// last step, above what existed before the weights were made; that step is
// left out of the timing (profiling slows it).
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';
import { tfjsLlamaLoss } from '@tunebench/core/reference/tfjs-llama';
import type { PeerInput, PeerOutcome } from './input.js';
import { registerWasmKernels } from './tfjs_wasm_kernels.js';

export type TfjsBackendName = 'wasm' | 'cpu';

/** The backend a peer run got, in words for its record. */
export interface TfjsBackend {
  tf: typeof TF;
  name: TfjsBackendName;
  /** e.g. 'tensorflow.js 4.22.0 wasm (simd, 1 thread)' */
  detail: string;
  /** why wasm was not used, when it was asked for and the cpu backend runs instead */
  fallback?: string;
}

/** The folder holding the installed wasm backend's .wasm files (a path, so nothing is fetched). */
function wasmFolder(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + '/';
}

let wasmInit: Promise<string | null> | null = null;
/** Registers and initialises the wasm backend once per process; null when it works, else why not. */
function initWasm(tf: typeof TF): Promise<string | null> {
  wasmInit ??= (async () => {
    try {
      const wasm = await import('@tensorflow/tfjs-backend-wasm');
      wasm.setWasmPaths(wasmFolder());
      registerWasmKernels(tf);
      // tfjs swallows the initialisation error and answers false; keep its message
      const errors: string[] = [];
      const warn = console.warn;
      console.warn = (...a: unknown[]) => { errors.push(a.map(String).join(' ')); };
      let ok: boolean;
      try { ok = await tf.setBackend('wasm'); } finally { console.warn = warn; }
      return ok ? null : `tf.setBackend('wasm') failed${errors.length ? `: ${errors.join(' | ').slice(0, 300)}` : ''}`;
    } catch (e) {
      return (e as Error).message;
    }
  })();
  return wasmInit;
}

/** tfjs on the asked backend (wasm by default, the cpu backend when wasm cannot start), without
 * its one-time console advice to install the native Node backend (which cannot install here). */
export async function loadTfjs(want: TfjsBackendName = 'wasm'): Promise<TfjsBackend> {
  const warn = console.warn;
  console.warn = (...a: unknown[]) => { if (!/running TensorFlow\.js in Node\.js/.test(String(a[0]))) warn(...a); };
  try {
    const tf = await import('@tensorflow/tfjs');
    let fallback: string | undefined;
    if (want === 'wasm') {
      const why = await initWasm(tf);
      if (why === null) {
        await tf.setBackend('wasm');
        await tf.ready();
        const wasm = await import('@tensorflow/tfjs-backend-wasm');
        const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
        const threads = wasm.getThreadsCount();
        return { tf, name: 'wasm', detail: `tensorflow.js ${tf.version.tfjs} wasm (${simd ? 'simd' : 'no simd'}, ${threads} thread${threads === 1 ? '' : 's'})` };
      }
      fallback = `the wasm backend could not start (${why}); using the cpu backend`;
      console.error(`TensorFlow.js peer: ${fallback}`);
    }
    await tf.setBackend('cpu');
    await tf.ready();
    tf.tensor([0]).dispose();  // the advice comes with the backend's first tensor
    return { tf, name: 'cpu', detail: `tensorflow.js ${tf.version.tfjs} cpu (pure JS, 1 thread)${fallback ? `; ${fallback}` : ''}`, fallback };
  } finally {
    console.warn = warn;
  }
}

/** backend: 'wasm' (default; the cpu backend if wasm cannot start) or 'cpu'. */
export async function runTfjsPeer(input: PeerInput, o: { onStep?: (step: number, loss: number, ms: number) => void; backend?: TfjsBackendName } = {}): Promise<PeerOutcome> {
  const steps = input.batches.length;
  if (steps < 3) throw new Error(`the TensorFlow.js peer needs at least 3 steps (one warm-up, one timed, one profiled), got ${steps}`);
  const { tf, detail } = await loadTfjs(o.backend ?? 'wasm');
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
    detail,
  };
}
