// `adapt`: fine-tune the base on Brown genre(s) it never saw. Metrics: loss
// and perplexity on the held-out genre's test documents, and forgetting: how
// much the loss on the base genres' validation text rose.
import { type LlamaModel, type TokenRows, epochBatches, evaluateLoss, packTexts } from '@tunebench/core';
import type { BrownData } from './pretrain.js';

export interface AdaptData {
  train: TokenRows;
  test: TokenRows;
  baseValidation: TokenRows;
  genres: string[];
}

export function adaptData(brown: BrownData, seqLen: number): AdaptData {
  const { split, tokenizer } = brown;
  return {
    train: packTexts(tokenizer, split.heldOut.train.map((d) => d.text), seqLen, 'brown:held-out train'),
    test: packTexts(tokenizer, split.heldOut.test.map((d) => d.text), seqLen, 'brown:held-out test'),
    baseValidation: brown.validation.seqLen === seqLen ? brown.validation : packTexts(tokenizer, split.validation.map((d) => d.text), seqLen, 'brown:validation'),
    genres: split.heldOut.genres,
  };
}

export interface AdaptMetrics {
  adaptLoss: number;
  adaptPerplexity: number;
  baseLoss: number;
}

export function evaluateAdapt(model: LlamaModel, data: AdaptData, batchSize: number): AdaptMetrics {
  const a = evaluateLoss(model, epochBatches(data.test, batchSize));
  const b = evaluateLoss(model, epochBatches(data.baseValidation, batchSize));
  return { adaptLoss: a.loss, adaptPerplexity: a.perplexity, baseLoss: b.loss };
}
