// `adapt`: fine-tune the base on Brown genre(s) it never saw. Metrics: loss
// and perplexity on the held-out genre's test documents, and forgetting: how
// much the loss on the base genres' validation text rose.
import { type LlamaModel, TokenRows, epochBatches, evaluateLoss, packTexts, rowLogLikelihoods } from '@tunebench/core';
import { type TextOutcomes, textLoss, textOutcomes } from '../stats/outcomes.js';
import type { BrownData } from './pretrain.js';
import { seededOrder } from './split.js';

export interface AdaptData {
  train: TokenRows;
  test: TokenRows;
  baseValidation: TokenRows;
  genres: string[];
  /** when asked for: the held-out genre's training documents split in two,
   * for the learning-rate search (train on `train`, score on `validation`) */
  tune?: { train: TokenRows; validation: TokenRows; documents: number };  // validation: at most maxValidationRows rows
}

export function adaptData(brown: BrownData, seqLen: number, o: { validationFraction?: number; maxValidationRows?: number; seed?: number } = {}): AdaptData {
  const { split, tokenizer } = brown;
  let tune: AdaptData['tune'];
  if (o.validationFraction) {
    const f = o.validationFraction;
    if (!(f > 0 && f < 1)) throw new Error(`adapt: validationFraction must be in (0, 1), got ${f}`);
    const docs = seededOrder(split.heldOut.train, (d) => d.id, o.seed ?? 0);
    const nVal = Math.max(1, Math.round(docs.length * f));
    let validation = packTexts(tokenizer, docs.slice(0, nVal).map((d) => d.text), seqLen, 'brown:held-out validation');
    const cap = o.maxValidationRows;
    if (cap !== undefined && validation.numRows > cap) {
      // the first rows only: scoring every candidate on all of them would cost more than its training
      const T = validation.seqLen;
      validation = new TokenRows(T, validation.ids.slice(0, cap * T), validation.targets.slice(0, cap * T), validation.padId,
        { ...validation.stats, rows: cap, inputTokens: cap * T, targetTokens: cap * T });
    }
    tune = {
      train: packTexts(tokenizer, docs.slice(nVal).map((d) => d.text), seqLen, 'brown:held-out train minus validation'),
      validation, documents: nVal,
    };
  }
  return {
    ...(tune ? { tune } : {}),
    train: packTexts(tokenizer, split.heldOut.train.map((d) => d.text), seqLen, 'brown:held-out train'),
    test: packTexts(tokenizer, split.heldOut.test.map((d) => d.text), seqLen, 'brown:held-out test'),
    baseValidation: evenRows(brown.validation.seqLen === seqLen ? brown.validation : packTexts(tokenizer, split.validation.map((d) => d.text), seqLen, 'brown:validation'), FORGETTING_ROWS),
    genres: split.heldOut.genres,
  };
}

/** Rows of the base genres' validation text that forgetting is measured on:
 * evenly spaced over all of it. All of it (about 2,300 rows of 256 bytes,
 * 4,600 of 128) made every evaluation of an adapt run, and a QLoRA run has
 * ten (before, after and eight deployable models), cost minutes. */
export const FORGETTING_ROWS = 256;

/** At most `max` rows of `rows`, evenly spaced (all of them when there are no more). */
export function evenRows(rows: TokenRows, max: number): TokenRows {
  if (rows.numRows <= max) return rows;
  const T = rows.seqLen;
  const picked = Array.from({ length: max }, (_, i) => Math.floor((i * rows.numRows) / max));
  const gather = (a: Int32Array) => {
    const out = new Int32Array(max * T);
    picked.forEach((r, i) => out.set(a.subarray(r * T, (r + 1) * T), i * T));
    return out;
  };
  const targets = gather(rows.targets);
  return new TokenRows(T, gather(rows.ids), targets, rows.padId, { ...rows.stats, rows: max, inputTokens: max * T, targetTokens: targets.reduce((n, t) => n + (t >= 0 ? 1 : 0), 0) }, {
    ...(rows.segments && rows.positions ? { segments: gather(rows.segments), positions: gather(rows.positions) } : {}),
    ...(rows.lengths ? { lengths: Int32Array.from(picked, (r) => rows.lengths![r]) } : {}),
  });
}

export interface AdaptMetrics {
  adaptLoss: number;
  adaptPerplexity: number;
  baseLoss: number;
  /** per held-out test row: summed NLL and target tokens (adaptLoss is their ratio of sums) */
  outcomes: TextOutcomes;
}

/** Held-out genre loss and perplexity (from per-row sums, so that the intervals resample exactly what the figure sums), and the base genres' loss. */
export function evaluateAdapt(model: LlamaModel, data: AdaptData, batchSize: number): AdaptMetrics {
  const outcomes = heldOutOutcomes(model, data.test, batchSize);
  const adaptLoss = textLoss(outcomes);
  const b = evaluateLoss(model, epochBatches(data.baseValidation, batchSize));
  return { adaptLoss, adaptPerplexity: Math.exp(adaptLoss), baseLoss: b.loss, outcomes };
}

/** Per-row summed NLL and target counts of evaluation rows. */
export function heldOutOutcomes(model: LlamaModel, rows: TokenRows, batchSize: number): TextOutcomes {
  const counts: number[] = [];
  const ll = rowLogLikelihoods(model, epochBatches(rows, batchSize), counts).slice(0, rows.numRows);
  return textOutcomes(ll, counts.slice(0, rows.numRows));
}
