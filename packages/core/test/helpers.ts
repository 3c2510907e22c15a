// Shared test helpers: the tfjs reference (cpu backend), seeded random data,
// and a relative-error comparison.
import * as tf from '@tensorflow/tfjs';
import assert from 'node:assert/strict';
import { Tensor, relativeError } from '../src/index.js';

let ready: Promise<void> | null = null;
/** tfjs on its pure-JS cpu backend, the independent reference for gradients. */
export async function tfjs(): Promise<typeof tf> {
  if (!ready) ready = tf.setBackend('cpu').then((ok) => { if (!ok) throw new Error('tfjs cpu backend unavailable'); });
  await ready;
  return tf;
}

/** Fresh random inputs each run (seed printed so a failure can be replayed). */
export function rng(seed = (Math.random() * 2 ** 31) >>> 0): { next: () => number; normal: () => number; seed: number } {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
  const normal = () => {
    const u = Math.max(next(), 1e-12), v = next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
  return { next, normal, seed };
}

export function randn(n: number, r: ReturnType<typeof rng>, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r.normal() * scale;
  return a;
}

export function tensorOf(values: Float32Array, shape: number[], opts: Parameters<typeof Tensor.from>[2] = {}): Tensor {
  return Tensor.from(values, shape, opts);
}

/** max |a - b| / max |b|: one relative error for a whole tensor. */
export const relErr = relativeError;

export function assertClose(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number, seed?: number): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${name}: relative error ${e.toExponential(3)} > ${tol}${seed !== undefined ? ` (seed ${seed})` : ''}`);
}

/** Rows of a toy language: each row counts up from a start token, so the next
 * token is predictable and the loss can fall far. */
export function countingRows(n: number, T: number, vocab: number, seed = 1): { ids: Int32Array; targets: Int32Array }[] {
  const rows = [];
  for (let r = 0; r < n; r++) {
    const ids = new Int32Array(T), targets = new Int32Array(T);
    const start = (r * 37 + seed * 11) % vocab;
    for (let t = 0; t < T; t++) { ids[t] = (start + t) % vocab; targets[t] = (start + t + 1) % vocab; }
    rows.push({ ids, targets });
  }
  return rows;
}
