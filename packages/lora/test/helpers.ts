import * as tf from '@tensorflow/tfjs';

let ready: Promise<void> | null = null;
/** tfjs on its pure-JS cpu backend, the independent reference for gradients. */
export async function tfjs(): Promise<typeof tf> {
  if (!ready) ready = tf.setBackend('cpu').then((ok) => { if (!ok) throw new Error('tfjs cpu backend unavailable'); });
  await ready;
  return tf;
}

/** max |a - b| / max |b| */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / (den + 1e-30);
}

export function randomValues(n: number, seed: number, scale = 1): Float32Array {
  let s = (seed >>> 0) || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}
