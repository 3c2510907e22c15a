// `spam`: SpamAssassin mail as prompt -> ' spam' / ' ham'. Training is
// supervised (loss on the completion only); the metric compares the two
// labels' log-likelihoods for every test message: accuracy and macro F1.
import {
  type LlamaModel, type TokenRows, type Tokenizer, classify, epochBatches, packExamples, padExamples, rowLogLikelihoods,
} from '@tunebench/core';
import { type SpamExample, dedupeSpam, loadSpam, spamSplit } from './spam.js';
import { seededOrder } from './split.js';

export const SPAM_LABELS = [' ham', ' spam'] as const;

export interface SpamData {
  train: TokenRows;
  /** two rows per test example: prompt + ' ham', prompt + ' spam' */
  testCandidates: TokenRows;
  testLabels: number[];
  counts: { train: number; validation: number; test: number };
  /** accuracy of always answering the training split's majority label */
  majorityBaseline: number;
  /** label candidates of (a seeded subset of) the validation split, when
   * asked for: never the test split; the learning-rate search scores on it */
  validation?: { candidates: TokenRows; labels: number[]; majorityBaseline: number };
}

export interface SpamDataOptions {
  seqLen: number;
  /** prompt budget in characters (default: 2 * seqLen, about what fits in bytes) */
  maxChars?: number;
  seed?: number;
  /** use at most this many training examples (stratified order kept); default all */
  maxTrain?: number;
  /** use at most this many test examples; default all */
  maxTest?: number;
  /** also prepare this many validation examples (seeded subset of the validation split); default none */
  maxValidation?: number;
  /** training rows: 'pack' (default; several examples per row, padding-free) or 'pad' (one per row).
   * The test candidates are always padded (one row per candidate, scored per row, dynamic padding). */
  packing?: 'pack' | 'pad';
}

export function spamData(tok: Tokenizer, o: SpamDataOptions): SpamData {
  const examples = dedupeSpam(loadSpam({ maxChars: o.maxChars ?? 2 * o.seqLen }));
  const split = spamSplit(examples, { seed: o.seed ?? 0 });
  // the splits come grouped by folder: subsets are taken from a seeded order so
  // they keep both labels in about their proportions
  const subset = (xs: SpamExample[], n: number | undefined) => (n ? seededOrder(xs, (e) => e.id, o.seed ?? 0).slice(0, n) : xs);
  const train = subset(split.train, o.maxTrain);
  const test = subset(split.test, o.maxTest);
  const label = (e: SpamExample) => (e.label === 'spam' ? 1 : 0);
  const candidates = test.flatMap((e) => SPAM_LABELS.map((completion) => ({ prompt: e.prompt, completion })));
  const trainSpam = train.filter((e) => e.label === 'spam').length;
  const majority = trainSpam * 2 > train.length ? 1 : 0;
  let validation: SpamData['validation'];
  if (o.maxValidation) {
    const val = subset(split.validation, o.maxValidation);
    validation = {
      candidates: padExamples(tok, val.flatMap((e) => SPAM_LABELS.map((completion) => ({ prompt: e.prompt, completion }))), o.seqLen, 'spam:validation candidates'),
      labels: val.map(label),
      majorityBaseline: val.filter((e) => label(e) === majority).length / val.length,
    };
  }
  return {
    train: (o.packing ?? 'pack') === 'pack'
      ? packExamples(tok, train.map((e) => ({ prompt: e.prompt, completion: e.completion })), o.seqLen, 'spam:train')
      : padExamples(tok, train.map((e) => ({ prompt: e.prompt, completion: e.completion })), o.seqLen, 'spam:train'),
    testCandidates: padExamples(tok, candidates, o.seqLen, 'spam:test candidates'),
    testLabels: test.map(label),
    counts: { train: train.length, validation: split.validation.length, test: test.length },
    majorityBaseline: test.filter((e) => label(e) === majority).length / test.length,
    ...(validation ? { validation } : {}),
  };
}

export interface SpamMetrics {
  accuracy: number;
  macroF1: number;
  confusion: number[][];
  examples: number;
}

export function evaluateSpam(model: LlamaModel, data: SpamData, batchSize: number): SpamMetrics {
  return scoreSpam(model, data.testCandidates, data.testLabels, batchSize);
}

/** Accuracy and macro F1 of label candidates (two rows per example: ' ham', ' spam'). */
export function scoreSpam(model: LlamaModel, candidates: TokenRows, labels: number[], batchSize: number): SpamMetrics {
  const ll = rowLogLikelihoods(model, epochBatches(candidates, batchSize)).slice(0, candidates.numRows);
  const scores = labels.map((_, i) => [ll[2 * i], ll[2 * i + 1]]);
  const r = classify(scores, labels, SPAM_LABELS.length);
  return { accuracy: r.accuracy, macroF1: r.macroF1, confusion: r.confusion, examples: labels.length };
}
