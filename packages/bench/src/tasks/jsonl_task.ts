// Any user JSONL file as a task: {"text"} rows are language modelling,
// {"prompt", "completion"} rows supervised, {"messages"} rows chat
// (rendered with the model's chat template, loss on the assistant turns).
// Metrics: loss and perplexity on a held-out part (or a separate eval file),
// on the completions / assistant tokens, plus label accuracy and macro F1
// when the completions (chat: the last assistant turns) come from a small
// label set.
import {
  type ChatRow, ChatTemplate, type Dataset, type DatasetKind, type LlamaModel, type SftRow, type TokenRows, type Tokenizer, classify, epochBatches,
  lastAssistantContent, padChats, padExamples, prepareDataset, readJsonl, rowLogLikelihoods, withLastAssistant,
} from '@tunebench/core';
import { hash53 } from './split.js';
import { labelScores } from './spam_task.js';
import { heldOutOutcomes } from './adapt.js';
import { type Outcomes, labelOutcomes, textLoss } from '../stats/outcomes.js';

/** Completions (chat: last assistant turns) count as labels when there are at most this many distinct ones. */
export const MAX_LABELS = 16;

/** What label accuracy compares: a prompt/completion row's completion, a chat row's last assistant content. */
export function labelOf(kind: DatasetKind, row: unknown): string | null {
  if (kind === 'sft') return (row as SftRow).completion;
  if (kind === 'chat') return lastAssistantContent((row as ChatRow).messages);
  return null;
}

export interface JsonlData {
  kind: Dataset['kind'];
  train: TokenRows;
  eval: TokenRows;
  /** label strings, when the completions form a small set */
  labels: string[] | null;
  /** candidate rows (one per label per eval example) and the true label index */
  candidates: TokenRows | null;
  truth: number[];
  /** with labels: the eval share of the training data's most frequent label (what always answering it scores) */
  majorityBaseline?: number;
  counts: { train: number; eval: number };
  /** when asked for: the training rows split in two for the learning-rate
   * search (train on `train`, score on `eval`/`candidates`), never the eval part */
  tune?: { train: TokenRows; eval: TokenRows; candidates: TokenRows | null; truth: number[]; examples: number };
}

export interface JsonlOptions {
  seqLen: number;
  seed?: number;
  /** share of rows held out for evaluation when no evalFile is given (default 0.1) */
  evalFraction?: number;
  evalFile?: string;
  /** also split off this share of the training rows (at most maxValidation) for the learning-rate search */
  validationFraction?: number;
  maxValidation?: number;
  /** prompt/completion and chat training rows: 'pack' (default, padding-free) or 'pad'; evaluation always pads */
  packing?: 'pack' | 'pad';
  /** the rows' kind: 'auto' (default: the first row decides) or text, sft, chat (every row must be it) */
  format?: DatasetKind | 'auto';
  /** chat rows: the template (default: modelDir's tokenizer_config.json chat_template, else the built-in default) */
  chatTemplate?: ChatTemplate;
  /** chat rows: the model directory whose chat template renders them */
  modelDir?: string;
}

export function jsonlData(file: string, tok: Tokenizer, o: JsonlOptions): JsonlData {
  const ds = readJsonl(file, { format: o.format });
  // read only for chat rows: a text or prompt/completion file does not depend on the model's template
  const chatTemplate = ds.kind === 'chat' ? o.chatTemplate ?? ChatTemplate.forModel(o.modelDir, tok) : undefined;
  const prep = (d: Dataset, packing: 'pack' | 'pad') => prepareDataset(d, tok, o.seqLen, { packing, chatTemplate });
  let trainDs: Dataset, evalDs: Dataset;
  if (o.evalFile) {
    evalDs = readJsonl(o.evalFile, { format: o.format });
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
  let labels: string[] | null = null;
  const supervised = ds.kind === 'sft' || ds.kind === 'chat';
  if (supervised) {
    const distinct = [...new Set((ds.rows as readonly unknown[]).map((r) => labelOf(ds.kind, r)!))].sort();
    if (distinct.length >= 2 && distinct.length <= MAX_LABELS) labels = distinct;
  }
  // one candidate row per label per example (chat: the conversation with its
  // last assistant turn set to the label, scored on that turn only), and each example's true label
  const candidatesOf = (rows: readonly unknown[], what: string): { candidates: TokenRows; truth: number[] } | null => {
    if (!labels) return null;
    const truth = rows.map((r) => labels!.indexOf(labelOf(ds.kind, r)!));
    if (truth.some((t) => t < 0)) return null;
    const candidates = ds.kind === 'chat'
      ? padChats(tok, (rows as ChatRow[]).flatMap((r) => labels!.map((l) => ({ messages: withLastAssistant(r.messages, l), ...(r.where ? { where: r.where } : {}) }))),
        o.seqLen, `${file}: ${what}`, { template: chatTemplate, lastAssistantOnly: true })
      : padExamples(tok, (rows as SftRow[]).flatMap((r) => labels!.map((completion) => ({ prompt: r.prompt, completion }))), o.seqLen, `${file}: ${what}`);
    return { candidates, truth };
  };
  const ev = supervised ? candidatesOf(evalDs.rows, 'label candidates') : null;
  if (!ev) labels = null;
  let tune: JsonlData['tune'];
  if (o.validationFraction) {
    const f = o.validationFraction;
    if (!(f > 0 && f < 1)) throw new Error(`validationFraction must be in (0, 1), got ${f}`);
    const rows = trainDs.rows as readonly unknown[];
    const max = o.maxValidation ?? Infinity;
    let nVal = 0;
    const held = rows.map((_, i) => {
      const h = nVal < max && hash53(`val:${i}`, o.seed ?? 0) / 2 ** 53 < f;
      if (h) nVal++;
      return h;
    });
    const tr = rows.filter((_, i) => !held[i]), va = rows.filter((_, i) => held[i]);
    if (va.length === 0 || tr.length === 0) throw new Error(`${file}: ${rows.length} training rows are too few to split off a validation part for the learning-rate search`);
    const vds = { ...ds, source: `${ds.source} (validation)`, rows: va } as Dataset;
    const vc = supervised && labels ? candidatesOf(va, 'validation label candidates') : null;
    tune = {
      train: prep({ ...ds, rows: tr } as Dataset, o.packing ?? 'pack'),
      eval: prep(vds, 'pad'),
      candidates: vc?.candidates ?? null, truth: vc?.truth ?? [], examples: va.length,
    };
  }
  let majorityBaseline: number | undefined;
  if (labels && ev) {
    const counts = labels.map((l) => (trainDs.rows as readonly unknown[]).filter((r) => labelOf(ds.kind, r) === l).length);
    const majority = counts.indexOf(Math.max(...counts));
    majorityBaseline = ev.truth.filter((t) => t === majority).length / ev.truth.length;
  }
  return {
    kind: ds.kind,
    ...(majorityBaseline !== undefined ? { majorityBaseline } : {}),
    train: prep(trainDs, o.packing ?? 'pack'),
    // one example per row, so eval batches can be cut to their longest row (dynamic padding)
    eval: prep(evalDs, 'pad'),
    labels, candidates: ev?.candidates ?? null, truth: ev?.truth ?? [],
    counts: { train: trainDs.rows.length, eval: evalDs.rows.length },
    ...(tune ? { tune } : {}),
  };
}

export interface JsonlMetrics {
  loss: number;
  perplexity: number;
  accuracy?: number;
  macroF1?: number;
  /** accuracy when each label is scored by its mean log-likelihood per token instead of the sum */
  accuracyPerToken?: number;
  /** per-example outcomes (for intervals): text for the loss, labels for accuracy */
  outcomes: Outcomes;
}

export function evaluateJsonl(model: LlamaModel, data: JsonlData, batchSize: number): JsonlMetrics {
  return scoreJsonl(model, { eval: data.eval, candidates: data.candidates, truth: data.truth, labels: data.labels }, batchSize);
}

/** Loss and perplexity of eval rows, plus accuracy and macro F1 of label candidates when there are labels. */
export function scoreJsonl(model: LlamaModel, d: { eval: TokenRows; candidates: TokenRows | null; truth: number[]; labels: string[] | null }, batchSize: number, o: { lossOnly?: boolean; labelsOnly?: boolean } = {}): JsonlMetrics {
  const out: JsonlMetrics = { loss: NaN, perplexity: NaN, outcomes: {} };
  if (!o.labelsOnly) {
    const text = heldOutOutcomes(model, d.eval, batchSize);
    out.outcomes.text = text;
    out.loss = textLoss(text); out.perplexity = Math.exp(out.loss);
  }
  if (d.labels && d.candidates && !o.lossOnly) {
    const L = d.labels.length;
    const counts: number[] = [];
    const ll = rowLogLikelihoods(model, epochBatches(d.candidates, batchSize), counts).slice(0, d.candidates.numRows);
    const scores = labelScores(ll, d.truth.length, L);
    const r = classify(scores, d.truth, L);
    out.outcomes.labels = labelOutcomes(d.truth, r.predictions, L, scores);
    out.accuracy = r.accuracy;
    out.macroF1 = r.macroF1;
    out.accuracyPerToken = classify(labelScores(ll, d.truth.length, L, counts), d.truth, L).accuracy;
  }
  return out;
}
