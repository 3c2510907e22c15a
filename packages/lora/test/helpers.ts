import * as tf from '@tensorflow/tfjs';

let ready: Promise<void> | null = null;
/** tfjs on its pure-JS cpu backend, the independent reference for gradients. */
export async function tfjs(): Promise<typeof tf> {
  if (!ready) ready = tf.setBackend('cpu').then((ok) => { if (!ok) throw new Error('tfjs cpu backend unavailable'); });
  await ready;
  return tf;
}

/** max |a - b| / max |b| (core's measure) */
export { relativeError as relErr } from '@tunebench/core';

export function randomValues(n: number, seed: number, scale = 1): Float32Array {
  let s = (seed >>> 0) || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}
