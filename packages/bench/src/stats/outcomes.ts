// Per-example outcomes of an evaluation, kept with the run so that every
// interval can be recomputed from the record and two methods compared on the
// same test items (stats/bootstrap.ts).
//   labels: one entry per test example: its true label, the predicted label
//           (argmax of the label scores) and each label's summed
//           log-likelihood (rounded: it is there to be read, the prediction
//           was taken at full precision)
//   text:   one entry per evaluated sequence (row): the summed negative
//           log-likelihood of its target tokens (nats) and their count;
//           loss = sum(nll) / sum(tokens), perplexity = exp(loss)

export interface LabelOutcomes {
  kind: 'labels';
  numLabels: number;
  truth: number[];
  pred: number[];
  /** [example][label] summed log-likelihood, rounded to 1e-3 */
  ll?: number[][];
}

export interface TextOutcomes {
  kind: 'text';
  /** summed NLL of each sequence's targets (nats, rounded to 1e-4) */
  nll: number[];
  /** target tokens of each sequence */
  tokens: number[];
}

/** What an evaluation kept: label outcomes for classification, text outcomes for loss/perplexity (a labelled JSONL task has both). */
export interface Outcomes {
  labels?: LabelOutcomes;
  text?: TextOutcomes;
}

const round = (x: number, q: number) => Math.round(x / q) * q;

export function labelOutcomes(truth: readonly number[], pred: readonly number[], numLabels: number, ll?: readonly (readonly number[])[]): LabelOutcomes {
  if (truth.length !== pred.length) throw new Error(`labelOutcomes: ${truth.length} labels for ${pred.length} predictions`);
  return {
    kind: 'labels', numLabels, truth: [...truth], pred: [...pred],
    ...(ll ? { ll: ll.map((row) => row.map((v) => (Number.isFinite(v) ? Number(round(v, 1e-3).toFixed(3)) : v))) } : {}),
  };
}

/** Text outcomes from per-row log-likelihoods (rowLogLikelihoods: -NLL, NaN for rows with no targets) and target counts; empty rows are left out. */
export function textOutcomes(rowLl: readonly number[], counts: readonly number[]): TextOutcomes {
  if (rowLl.length !== counts.length) throw new Error(`textOutcomes: ${rowLl.length} rows for ${counts.length} counts`);
  const nll: number[] = [], tokens: number[] = [];
  rowLl.forEach((ll, i) => {
    if (counts[i] === 0) return;
    nll.push(Number((-ll).toFixed(4)));
    tokens.push(counts[i]);
  });
  if (tokens.length === 0) throw new Error('textOutcomes: no target tokens in the evaluation data');
  return { kind: 'text', nll, tokens };
}

/** The loss (mean NLL per target token) of text outcomes, at full weight. */
export function textLoss(t: TextOutcomes): number {
  let s = 0, n = 0;
  for (let i = 0; i < t.nll.length; i++) { s += t.nll[i]; n += t.tokens[i]; }
  return s / n;
}
