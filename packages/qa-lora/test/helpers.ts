// Shared test helpers: tiny models, seeded toy data, training steps, logits.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArrayDataSource, LlamaModel, Tensor, Trainer, preset } from '@tunebench/core';

export { relativeError as relErr } from '@tunebench/core';

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'tunebench-qalora-'));
}

/** A frozen random tiny model (hidden 64, intermediate 192: every input width divides by 16..64). */
export function tinyModel(seed = 3): LlamaModel {
  return LlamaModel.init(preset('tiny'), { seed, std: 0.15, trainable: false });
}

export type Row = { ids: Int32Array; targets: Int32Array };

/** Rows of a toy language: each row counts up from a start token. */
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

/** Token rows of byte text, for GPTQ calibration. */
export function textRows(n: number, T: number): Int32Array[] {
  const text = 'The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ';
  return Array.from({ length: n }, (_, r) => Int32Array.from({ length: T }, (_, t) => text.charCodeAt((r * 13 + t) % text.length)));
}

/** Trains `steps` steps on a fixed batch of counting rows; returns the losses. */
export function train(model: LlamaModel, steps: number, lr = 1e-2): number[] {
  const rows = countingRows(4, 16);
  const trainer = new Trainer(model, new ArrayDataSource(rows, rows.length, 0, false), {
    schedule: { kind: 'constant', lr, warmupSteps: 0, totalSteps: steps },
  });
  try {
    return Array.from({ length: steps }, () => trainer.trainStep().loss);
  } finally {
    trainer.dispose();
  }
}

/** Logits [B*T, V] of a fixed batch. */
export function logitsOf(model: LlamaModel, B = 3, T = 16): Float32Array {
  const ids = Tensor.from(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 11) % 259), [B, T], { dtype: 'i32' });
  const h = model.hidden(ids);
  const l = model.logits(h);
  try {
    return l.toFloat32();
  } finally {
    for (const t of [h, l, ids]) t.dispose();
  }
}
