// `spam`: SpamAssassin mail as prompt -> ' spam' / ' ham'. Training is
// supervised (loss on the completion only); the metric compares the two
// labels' log-likelihoods for every test message: accuracy and macro F1.
import {
  type LlamaModel, type TokenRows, type Tokenizer, classify, epochBatches, packExamples, padExamples, rowLogLikelihoods,
} from '@tunebench/core';
import { type SpamExample, dedupeSpam, loadSpam, spamSplit } from './spam.js';
import { seededOrder } from './split.js';
import { type LabelOutcomes, labelOutcomes } from '../stats/outcomes.js';

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
  /** accuracy when each label is scored by its mean log-likelihood per token */
  accuracyPerToken: number;
  confusion: number[][];
  examples: number;
  /** per test example: truth, prediction and label log-likelihoods (for intervals) */
  outcomes: LabelOutcomes;
}

export function evaluateSpam(model: LlamaModel, data: SpamData, batchSize: number): SpamMetrics {
  return scoreSpam(model, data.testCandidates, data.testLabels, batchSize);
}

/** Accuracy and macro F1 of label candidates (two rows per example: ' ham', ' spam'),
 * each label scored by the summed log-likelihood of its tokens and the EOS;
 * accuracyPerToken scores by the mean per token instead (see labelScores). */
export function scoreSpam(model: LlamaModel, candidates: TokenRows, labels: number[], batchSize: number): SpamMetrics {
  const counts: number[] = [];
  const ll = rowLogLikelihoods(model, epochBatches(candidates, batchSize), counts).slice(0, candidates.numRows);
  const scores = labelScores(ll, labels.length, SPAM_LABELS.length);
  const r = classify(scores, labels, SPAM_LABELS.length);
  const perToken = classify(labelScores(ll, labels.length, SPAM_LABELS.length, counts), labels, SPAM_LABELS.length);
  return {
    accuracy: r.accuracy, macroF1: r.macroF1, accuracyPerToken: perToken.accuracy, confusion: r.confusion, examples: labels.length,
    outcomes: labelOutcomes(labels, r.predictions, SPAM_LABELS.length, scores),
  };
}

/** scores[example][label] from one candidate row per label per example:
 * the summed log-likelihood (the probability of the whole label, which is
 * what the comparison asks: labels of different lengths compete on equal
 * terms), or with `counts` the mean per target token (what some evaluation
 * harnesses call normalised accuracy: it favours labels whose later tokens
 * are near-certain, e.g. the longer of ' male' / ' female'). */
export function labelScores(ll: readonly number[], examples: number, numLabels: number, counts?: readonly number[]): number[][] {
  return Array.from({ length: examples }, (_, i) => Array.from({ length: numLabels }, (_, j) => {
    const k = i * numLabels + j;
    return counts ? ll[k] / Math.max(counts[k], 1) : ll[k];
  }));
}
