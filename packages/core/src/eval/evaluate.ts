// Evaluation: token-weighted loss and perplexity over batches, and label
// accuracy by comparing the log-likelihoods of candidate completions.
import { type Batch, type LlamaModel, disposeBatch } from '../nn/llama.js';

export interface LossResult {
  /** mean loss per target token */
  loss: number;
  perplexity: number;
  targetTokens: number;
}

/** Token-weighted mean loss over batches (the batches are disposed). */
export function evaluateLoss(model: LlamaModel, batches: Iterable<Batch>): LossResult {
  let sum = 0, count = 0;
  for (const b of batches) {
    try {
      const r = model.forward(b, { training: false });
      sum += r.lossSum;
      count += r.count;
    } finally {
      disposeBatch(b);
    }
  }
  if (count === 0) throw new Error('evaluateLoss: no target tokens in the evaluation data');
  const loss = sum / count;
  return { loss, perplexity: Math.exp(loss), targetTokens: count };
}

/** Summed log-likelihood of each row's targets (rows of all batches, in
 * order; the batches are disposed). Rows with no targets get NaN. When
 * `counts` is given, each row's number of targets is appended to it (to
 * score per token instead). */
export function rowLogLikelihoods(model: LlamaModel, batches: Iterable<Batch>, counts?: number[]): number[] {
  const out: number[] = [];
  for (const b of batches) {
    try {
      const r = model.forward(b, { training: false, rowLosses: true });
      for (let i = 0; i < r.rows!.lossSum.length; i++) {
        out.push(r.rows!.count[i] === 0 ? NaN : -r.rows!.lossSum[i]);
        counts?.push(r.rows!.count[i]);
      }
    } finally {
      disposeBatch(b);
    }
  }
  return out;
}

export interface ClassificationResult {
  accuracy: number;
  macroF1: number;
  /** confusion[true][predicted] */
  confusion: number[][];
  predictions: number[];
}

/** Accuracy and macro F1 from scores[example][label] (higher = more likely). */
export function classify(scores: number[][], truth: number[], numLabels: number): ClassificationResult {
  if (scores.length !== truth.length) throw new Error(`classify: ${scores.length} score rows for ${truth.length} examples`);
  if (scores.length === 0) throw new Error('classify: no examples');
  const confusion = Array.from({ length: numLabels }, () => new Array<number>(numLabels).fill(0));
  const predictions = scores.map((row) => row.reduce((best, v, j) => (v > row[best] ? j : best), 0));
  predictions.forEach((p, i) => confusion[truth[i]][p]++);
  const correct = predictions.filter((p, i) => p === truth[i]).length;
  let f1sum = 0;
  for (let c = 0; c < numLabels; c++) {
    const tp = confusion[c][c];
    const fp = confusion.reduce((s, row, t) => s + (t === c ? 0 : row[c]), 0);
    const fn = confusion[c].reduce((s, v, p) => s + (p === c ? 0 : v), 0);
    f1sum += tp === 0 ? 0 : (2 * tp) / (2 * tp + fp + fn);
  }
  return { accuracy: correct / truth.length, macroF1: f1sum / numLabels, confusion, predictions };
}
