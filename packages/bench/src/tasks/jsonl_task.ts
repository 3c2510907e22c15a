// Any user JSONL file as a task: {"text"} rows are language modelling,
// {"prompt", "completion"} rows supervised. Metrics: loss and perplexity on
// a held-out part (or a separate eval file), plus label accuracy and macro
// F1 when the completions come from a small label set.
import {
  type Dataset, type LlamaModel, type SftRow, type TokenRows, type Tokenizer, classify, epochBatches, evaluateLoss,
  padExamples, prepareDataset, readJsonl, rowLogLikelihoods,
} from '@tunebench/core';
import { hash53 } from './split.js';

/** Completions count as labels when there are at most this many distinct ones. */
export const MAX_LABELS = 16;

export interface JsonlData {
  kind: Dataset['kind'];
  train: TokenRows;
  eval: TokenRows;
  /** label strings, when the completions form a small set */
  labels: string[] | null;
  /** candidate rows (one per label per eval example) and the true label index */
  candidates: TokenRows | null;
  truth: number[];
  counts: { train: number; eval: number };
}

export interface JsonlOptions {
  seqLen: number;
  seed?: number;
  /** share of rows held out for evaluation when no evalFile is given (default 0.1) */
  evalFraction?: number;
  evalFile?: string;
  /** prompt/completion training rows: 'pack' (default, padding-free) or 'pad'; evaluation always pads */
  packing?: 'pack' | 'pad';
}

export function jsonlData(file: string, tok: Tokenizer, o: JsonlOptions): JsonlData {
  const ds = readJsonl(file);
  let trainDs: Dataset, evalDs: Dataset;
  if (o.evalFile) {
    evalDs = readJsonl(o.evalFile);
    if (evalDs.kind !== ds.kind) throw new Error(`${o.evalFile}: holds ${evalDs.kind} rows but ${file} holds ${ds.kind} rows`);
    trainDs = ds;
  } else {
    const frac = o.evalFraction ?? 0.1;
    if (!(frac > 0 && frac < 1)) throw new Error(`evalFraction must be in (0, 1), got ${frac}`);
    const held = (i: number) => hash53(`${i}`, o.seed ?? 0) / 2 ** 53 < frac;
    const rows = ds.rows as readonly unknown[];
    const tr = rows.filter((_, i) => !held(i)), ev = rows.filter((_, i) => held(i));
    if (ev.length === 0 || tr.length === 0) throw new Error(`${file}: ${rows.length} rows are too few to hold out ${Math.round(frac * 100)}% for evaluation; pass an eval file`);
    trainDs = { ...ds, rows: tr } as Dataset;
    evalDs = { ...ds, source: `${ds.source} (held out)`, rows: ev } as Dataset;
  }
  let labels: string[] | null = null, candidates: TokenRows | null = null, truth: number[] = [];
  if (ds.kind === 'sft') {
    const distinct = [...new Set((ds.rows as SftRow[]).map((r) => r.completion))].sort();
    if (distinct.length >= 2 && distinct.length <= MAX_LABELS) {
      labels = distinct;
      const evalRows = evalDs.rows as SftRow[];
      truth = evalRows.map((r) => distinct.indexOf(r.completion));
      if (truth.some((t) => t < 0)) { labels = null; truth = []; }
      else candidates = padExamples(tok, evalRows.flatMap((r) => distinct.map((completion) => ({ prompt: r.prompt, completion }))), o.seqLen, `${file}: label candidates`);
    }
  }
  return {
    kind: ds.kind,
    train: prepareDataset(trainDs, tok, o.seqLen, { packing: o.packing ?? 'pack' }),
    // one example per row, so eval batches can be cut to their longest row (dynamic padding)
    eval: prepareDataset(evalDs, tok, o.seqLen, { packing: 'pad' }),
    labels, candidates, truth,
    counts: { train: trainDs.rows.length, eval: evalDs.rows.length },
  };
}

export interface JsonlMetrics {
  loss: number;
  perplexity: number;
  accuracy?: number;
  macroF1?: number;
}

export function evaluateJsonl(model: LlamaModel, data: JsonlData, batchSize: number): JsonlMetrics {
  const l = evaluateLoss(model, epochBatches(data.eval, batchSize));
  const out: JsonlMetrics = { loss: l.loss, perplexity: l.perplexity };
  if (data.labels && data.candidates) {
    const L = data.labels.length;
    const ll = rowLogLikelihoods(model, epochBatches(data.candidates, batchSize)).slice(0, data.candidates.numRows);
    const scores = data.truth.map((_, i) => ll.slice(i * L, (i + 1) * L));
    const r = classify(scores, data.truth, L);
    out.accuracy = r.accuracy;
    out.macroF1 = r.macroF1;
  }
  return out;
}

