// Shared test helpers: the tfjs reference (cpu backend), seeded data, tiny
// models and their losses, temporary directories.
import * as tf from '@tensorflow/tfjs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArrayDataSource, type LlamaModel, Quant4Linear, Tensor, Trainer, type OptimizerFactory } from '@tunebench/core';

let ready: Promise<void> | null = null;
/** tfjs on its pure-JS cpu backend, the independent reference for gradients. */
export async function tfjs(): Promise<typeof tf> {
  if (!ready) ready = tf.setBackend('cpu').then((ok) => { if (!ok) throw new Error('tfjs cpu backend unavailable'); });
  await ready;
  return tf;
}

/** max |a - b| / max |b| (core's measure) */
export { relativeError as relErr } from '@tunebench/core';

/** ||a - b||_F / ||b||_F */
export function froRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
  return Math.sqrt(num / den);
}

/** ||a - b||_F */
export function froDist(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
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

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'tunebench-qlora-'));
}

export type Row = { ids: Int32Array; targets: Int32Array };

/** Rows of a toy language: each row counts up from a start token (core's train test). */
export function countingRows(n: number, T: number, vocab = 259, seed = 1): Row[] {
  const rows: Row[] = [];
  for (let r = 0; r < n; r++) {
    const ids = new Int32Array(T), targets = new Int32Array(T);
    const start = (r * 37 + seed * 11) % vocab;
    for (let t = 0; t < T; t++) { ids[t] = (start + t) % vocab; targets[t] = (start + t + 1) % vocab; }
    rows.push({ ids, targets });
  }
  return rows;
}

/** A fixed evaluation batch [B, T]. */
export function fixedBatch(B = 3, T = 16): { ids: Tensor; targets: Tensor } {
  const ids = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 11) % 259), [B, T], { dtype: 'i32' });
  const targets = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 48) % 259), [B, T], { dtype: 'i32' });
  return { ids, targets };
}

/** Mean loss of rows (or of the fixed batch), inference. */
export function meanLoss(model: LlamaModel, rows?: Row[]): number {
  let ids: Tensor, targets: Tensor;
  if (rows) {
    const B = rows.length, T = rows[0].ids.length;
    ids = Tensor.zeros([B, T], { dtype: 'i32' });
    targets = Tensor.zeros([B, T], { dtype: 'i32' });
    rows.forEach((r, i) => { (ids.data() as Int32Array).set(r.ids, i * T); (targets.data() as Int32Array).set(r.targets, i * T); });
  } else {
    ({ ids, targets } = fixedBatch());
  }
  try {
    const { lossSum, count } = model.forward({ ids, targets }, { training: false });
    return lossSum / count;
  } finally {
    ids.dispose(); targets.dispose();
  }
}

/** Logits [B*T, V] of the fixed batch. */
export function logitsOf(model: LlamaModel): Float32Array {
  const { ids, targets } = fixedBatch();
  const h = model.hidden(ids);
  const l = model.logits(h);
  try {
    return l.toFloat32();
  } finally {
    for (const t of [h, l, ids, targets]) t.dispose();
  }
}

/** Trains `steps` steps on a fixed batch of counting rows; returns the losses. */
export function train(model: LlamaModel, steps: number, opts: { lr?: number; optimizerFactory?: OptimizerFactory; rows?: Row[] } = {}): number[] {
  const rows = opts.rows ?? countingRows(4, 16);
  const trainer = new Trainer(model, new ArrayDataSource(rows, rows.length, 0, false), {
    schedule: { kind: 'constant', lr: opts.lr ?? 1e-2, warmupSteps: 0, totalSteps: steps },
    ...(opts.optimizerFactory ? { optimizerFactory: opts.optimizerFactory } : {}),
  });
  try {
    return Array.from({ length: steps }, () => trainer.trainStep().loss);
  } finally {
    trainer.dispose();
  }
}

/** Copies of every stored byte of a quantized weight (codes and constants). */
export function quantSnapshot(l: Quant4Linear): { packed: Uint8Array; absmax: Float32Array | null; dqCodes: Uint8Array | null; dqScales: Float32Array | null; offset: number | null } {
  const q = l.quantized;
  return {
    packed: Uint8Array.from(q.packed.data() as Uint8Array),
    absmax: q.absmax ? Float32Array.from(q.absmax.data() as Float32Array) : null,
    dqCodes: q.dq ? Uint8Array.from(q.dq.codes.data() as Uint8Array) : null,
    dqScales: q.dq ? Float32Array.from(q.dq.scales.data() as Float32Array) : null,
    offset: q.dq ? q.dq.offset : null,
  };
}
