// From datasets to model batches: rows of seqLen token ids and next-token
// targets (IGNORE_INDEX = -100 masks a position), a shuffling DataSource
// for training with a saveable position, and in-order batches for evaluation.
//
// Packing (text datasets): every text becomes [BOS] + tokens + [EOS] (a
// special the tokenizer lacks is left out) and the texts are concatenated
// into one stream s. Row k is the window s[kT .. kT+T] of T+1 tokens:
// ids = s[kT .. kT+T-1], targets = s[kT+1 .. kT+T]. Consecutive windows
// share one token (the last target of a row is the first input of the next),
// so every token of the stream except the first is a target exactly once
// until the tail. The tail, the last L-1-W*T tokens that do not fill a
// window, is dropped (counted in stats.droppedTailTokens). A document
// boundary can fall inside a row: attention is not reset there (the usual
// packing trade-off; BOS/EOS mark the boundary).
//
// Padding (prompt/completion datasets): seq = [BOS] + prompt + completion +
// [EOS], at most T+1 tokens; ids = seq[0 .. min(n, T)-1] then PAD up to T;
// targets[t] = seq[t+1] where seq[t+1] is a completion token or the EOS,
// -100 everywhere else (prompt, the last real position, padding). When seq is
// longer than T+1 the prompt loses tokens from its left (BOS stays at
// position 0) so that the completion survives; if the completion + EOS alone
// do not fit, the whole prompt goes and the completion is cut at its end
// (EOS first). Both are counted in the stats.
import { Tensor } from '../tensor.js';
import type { Batch } from '../nn/llama.js';
import type { DataSource } from '../train/data_source.js';
import { IGNORE_INDEX } from '../train/trainer.js';
import { Rng, type RngState } from '../util/rng.js';
import type { Dataset, SftRow, TextRow } from './jsonl.js';
import type { Tokenizer } from './tokenizer.js';

export interface PrepareStats {
  /** 'pack' (text) or 'pad' (prompt/completion) */
  mode: 'pack' | 'pad';
  /** dataset rows (texts or examples) read */
  examples: number;
  /** rows of seqLen produced */
  rows: number;
  /** positions holding a real (non-pad) input token */
  inputTokens: number;
  /** positions with a target (not -100) */
  targetTokens: number;
  /** pack: length of the token stream (specials included) */
  streamTokens: number;
  /** pack: tokens after the last full window, never used as targets */
  droppedTailTokens: number;
  /** pad: examples whose prompt lost tokens from its left */
  promptTruncated: number;
  /** pad: prompt tokens dropped in all */
  droppedPromptTokens: number;
  /** pad: examples whose completion (+EOS) was cut at its end */
  completionTruncated: number;
  /** pad: completion and EOS tokens dropped in all */
  droppedCompletionTokens: number;
  /** pad: rows with no target at all (e.g. empty completion and no EOS) */
  rowsWithoutTargets: number;
}

function emptyStats(mode: 'pack' | 'pad'): PrepareStats {
  return {
    mode, examples: 0, rows: 0, inputTokens: 0, targetTokens: 0, streamTokens: 0, droppedTailTokens: 0,
    promptTruncated: 0, droppedPromptTokens: 0, completionTruncated: 0, droppedCompletionTokens: 0, rowsWithoutTargets: 0,
  };
}

/** Prepared rows: row i is ids/targets[i*seqLen .. (i+1)*seqLen). */
export class TokenRows {
  constructor(
    readonly seqLen: number,
    readonly ids: Int32Array,
    readonly targets: Int32Array,
    /** the id written at padding positions (inputs of padded rows) */
    readonly padId: number,
    readonly stats: PrepareStats,
  ) {
    if (!Number.isInteger(seqLen) || seqLen < 1) throw new Error(`TokenRows: seqLen must be a positive integer, got ${seqLen}`);
    if (ids.length !== targets.length || ids.length % seqLen !== 0) {
      throw new Error(`TokenRows: ${ids.length} ids and ${targets.length} targets are not whole rows of ${seqLen}`);
    }
  }

  get numRows(): number { return this.ids.length / this.seqLen; }

  /** views of row i (no copy) */
  row(i: number): { ids: Int32Array; targets: Int32Array } {
    if (!Number.isInteger(i) || i < 0 || i >= this.numRows) throw new RangeError(`TokenRows.row: ${i} is not in [0, ${this.numRows})`);
    const T = this.seqLen;
    return { ids: this.ids.subarray(i * T, (i + 1) * T), targets: this.targets.subarray(i * T, (i + 1) * T) };
  }

  /** positions with a target, over all rows */
  targetTokens(): number { return countTargets(this.targets); }

  private fp: string | null = null;
  /** FNV-1a hash of ids and targets (8 hex digits + shape): recognises the
   * same prepared data when a checkpoint is restored */
  fingerprint(): string {
    if (this.fp === null) {
      let h = 0x811c9dc5;
      const mix = (a: Int32Array) => {
        for (let i = 0; i < a.length; i++) { h ^= a[i]; h = Math.imul(h, 0x01000193); }
      };
      mix(this.ids); mix(this.targets);
      this.fp = `${this.numRows}x${this.seqLen}:${(h >>> 0).toString(16).padStart(8, '0')}`;
    }
    return this.fp;
  }
}

/** Positions that carry a target (not IGNORE_INDEX). */
export function countTargets(targets: Tensor | Int32Array): number {
  const v = targets instanceof Tensor ? targets.data() as Int32Array : targets;
  let n = 0;
  for (let i = 0; i < v.length; i++) if (v[i] !== IGNORE_INDEX) n++;
  return n;
}

/** Tokens of the texts (no specials), e.g. for corpus statistics. */
export function countTokens(tok: Tokenizer, texts: Iterable<string>): number {
  let n = 0;
  for (const t of texts) n += tok.encode(t).length;
  return n;
}

/** The id used for padding: the tokenizer's PAD, else its EOS, else 0. Pad
 * inputs only ever sit after the real tokens (right padding) and carry no
 * target, so under causal attention their value cannot change the loss. */
export function padIdOf(tok: Tokenizer): number {
  return tok.pad ?? tok.eos ?? 0;
}

function checkSeqLen(seqLen: number, where: string): void {
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new Error(`${where}: seqLen must be a positive integer, got ${seqLen}`);
}

function encodeChecked(tok: Tokenizer, text: string, where: string): number[] {
  const ids = tok.encode(text);
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= tok.vocabSize) {
      throw new Error(`${where}: tokenizer ${tok.name} produced id ${id}, outside its vocabulary [0, ${tok.vocabSize})`);
    }
  }
  return ids;
}

/** Packs texts into rows of seqLen (see the top of this file). Throws when
 * the stream is shorter than one window (seqLen + 1 tokens). */
export function packTexts(tok: Tokenizer, texts: Iterable<string | TextRow>, seqLen: number, source = 'texts'): TokenRows {
  checkSeqLen(seqLen, `packTexts(${source})`);
  const stats = emptyStats('pack');
  let stream = new Int32Array(1024), L = 0;
  const push = (id: number) => {
    if (L === stream.length) { const s = new Int32Array(stream.length * 2); s.set(stream); stream = s; }
    stream[L++] = id;
  };
  for (const t of texts) {
    const text = typeof t === 'string' ? t : t.text;
    if (tok.bos !== null) push(tok.bos);
    for (const id of encodeChecked(tok, text, `${source}[${stats.examples}]`)) push(id);
    if (tok.eos !== null) push(tok.eos);
    stats.examples++;
  }
  const T = seqLen;
  if (L < T + 1) throw new Error(`packTexts(${source}): ${stats.examples} text(s) give ${L} tokens, fewer than one window of seqLen + 1 = ${T + 1}`);
  const W = Math.floor((L - 1) / T);
  const ids = new Int32Array(W * T), targets = new Int32Array(W * T);
  for (let k = 0; k < W; k++) {
    ids.set(stream.subarray(k * T, k * T + T), k * T);
    targets.set(stream.subarray(k * T + 1, k * T + T + 1), k * T);
  }
  Object.assign(stats, { rows: W, inputTokens: W * T, targetTokens: W * T, streamTokens: L, droppedTailTokens: L - 1 - W * T });
  return new TokenRows(T, ids, targets, padIdOf(tok), stats);
}

/** Pads prompt/completion examples into rows of seqLen with the prompt
 * masked (see the top of this file). One row per example. */
export function padExamples(tok: Tokenizer, examples: readonly SftRow[], seqLen: number, source = 'examples'): TokenRows {
  checkSeqLen(seqLen, `padExamples(${source})`);
  if (examples.length === 0) throw new Error(`padExamples(${source}): no examples`);
  const T = seqLen, pad = padIdOf(tok);
  const stats = emptyStats('pad');
  const ids = new Int32Array(examples.length * T).fill(pad), targets = new Int32Array(examples.length * T).fill(IGNORE_INDEX);
  const lead = tok.bos !== null ? 1 : 0, room = T + 1 - lead;
  examples.forEach((ex, r) => {
    const where = `${source}[${r}]`;
    let prompt = encodeChecked(tok, ex.prompt, where);
    let tail = encodeChecked(tok, ex.completion, where);
    if (tok.eos !== null) tail.push(tok.eos);
    if (prompt.length + tail.length > room) {
      const keepPrompt = Math.max(0, room - tail.length);
      if (keepPrompt < prompt.length) { stats.promptTruncated++; stats.droppedPromptTokens += prompt.length - keepPrompt; }
      prompt = prompt.slice(prompt.length - keepPrompt);
      if (tail.length > room) { stats.completionTruncated++; stats.droppedCompletionTokens += tail.length - room; tail = tail.slice(0, room); }
    }
    const seq = lead ? [tok.bos!, ...prompt, ...tail] : [...prompt, ...tail];
    const n = seq.length, first = lead + prompt.length; // seq[first..] are targets
    const o = r * T;
    const nIn = Math.min(n, T);
    for (let t = 0; t < nIn; t++) ids[o + t] = seq[t];
    let count = 0;
    for (let t = Math.max(0, first - 1); t + 1 < n; t++) { targets[o + t] = seq[t + 1]; count++; }
    stats.inputTokens += nIn;
    stats.targetTokens += count;
    if (count === 0) stats.rowsWithoutTargets++;
  });
  stats.examples = stats.rows = examples.length;
  return new TokenRows(T, ids, targets, pad, stats);
}

/** Packs a text dataset or pads a prompt/completion one. */
export function prepareDataset(ds: Dataset, tok: Tokenizer, seqLen: number): TokenRows {
  return ds.kind === 'text' ? packTexts(tok, ds.rows, seqLen, ds.source) : padExamples(tok, ds.rows, seqLen, ds.source);
}

// ---------------------------------------------------------------------------
// Batches

/** A batch from evaluation order: rows [firstRow, firstRow + realRows) of
 * the data, then filler rows (PAD inputs, all targets -100) up to B. */
export interface EvalBatch extends Batch {
  firstRow: number;
  realRows: number;
}

function batchTensors(B: number, T: number): { ids: Tensor; targets: Tensor; iv: Int32Array; tv: Int32Array } {
  const ids = Tensor.zeros([B, T], { dtype: 'i32' }), targets = Tensor.zeros([B, T], { dtype: 'i32' });
  return { ids, targets, iv: ids.data() as Int32Array, tv: targets.data() as Int32Array };
}

/** Every row once, in order, batchSize rows at a time; the last batch keeps
 * its shape and fills the missing rows with PAD inputs and -100 targets.
 * The caller owns (and disposes) each batch's tensors. */
export function* epochBatches(rows: TokenRows, batchSize: number): Generator<EvalBatch> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`epochBatches: batchSize must be a positive integer, got ${batchSize}`);
  const T = rows.seqLen, N = rows.numRows;
  for (let first = 0; first < N; first += batchSize) {
    const real = Math.min(batchSize, N - first);
    const { ids, targets, iv, tv } = batchTensors(batchSize, T);
    iv.set(rows.ids.subarray(first * T, (first + real) * T));
    tv.set(rows.targets.subarray(first * T, (first + real) * T));
    if (real < batchSize) { iv.fill(rows.padId, real * T); tv.fill(IGNORE_INDEX, real * T); }
    yield { ids, targets, firstRow: first, realRows: real };
  }
}

export interface TokenDataSourceOptions {
  batchSize: number;
  /** seeds the shuffle (default 0) */
  seed?: number;
  /** reshuffle every epoch (default true); false keeps the data's order */
  shuffle?: boolean;
}

/** The saved position of a TokenDataSource (JSON). The epoch's order is not
 * stored: it is recomputed from the RNG state taken before its shuffle. */
export interface TokenDataSourceState {
  format: 'tunebench-data';
  version: 1;
  fingerprint: string;
  shuffle: boolean;
  epoch: number;
  cursor: number;
  epochRng: RngState;
}

/** Training batches over prepared rows: batchSize rows per batch, every row
 * once per epoch in an order shuffled from the seed (xoshiro128**
 * Fisher-Yates, one RNG stream across epochs). A batch that reaches the end
 * of an epoch continues with the next epoch's first rows, so every batch is
 * full. */
export class TokenDataSource implements DataSource {
  readonly rows: TokenRows;
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  /** epochs started before the current one */
  private epochNo = 0;
  private cursor = 0;
  private order: number[] = [];
  private rng: Rng;
  private epochRng: RngState;

  constructor(rows: TokenRows, opts: TokenDataSourceOptions) {
    if (rows.numRows === 0) throw new Error('TokenDataSource: no rows');
    if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) throw new Error(`TokenDataSource: batchSize must be a positive integer, got ${opts.batchSize}`);
    this.rows = rows;
    this.batchSize = opts.batchSize;
    this.seed = opts.seed ?? 0;
    this.shuffle = opts.shuffle ?? true;
    this.rng = new Rng(this.seed);
    this.epochRng = this.rng.state();
    this.startEpoch();
  }

  /** the epoch the next row comes from (0-based) */
  get epoch(): number { return this.epochNo; }
  /** rows of the current epoch already handed out */
  get position(): number { return this.cursor; }

  private startEpoch(): void {
    this.epochRng = this.rng.state();
    this.order = Array.from({ length: this.rows.numRows }, (_, i) => i);
    if (this.shuffle) this.rng.shuffle(this.order);
    this.cursor = 0;
  }

  /** the row indices of the current epoch, in order (a copy) */
  epochOrder(): number[] { return [...this.order]; }

  next(): Batch {
    const B = this.batchSize, T = this.rows.seqLen;
    const { ids, targets, iv, tv } = batchTensors(B, T);
    for (let b = 0; b < B; b++) {
      if (this.cursor >= this.order.length) { this.epochNo++; this.startEpoch(); }
      const r = this.order[this.cursor++];
      iv.set(this.rows.ids.subarray(r * T, (r + 1) * T), b * T);
      tv.set(this.rows.targets.subarray(r * T, (r + 1) * T), b * T);
    }
    return { ids, targets };
  }

  state(): TokenDataSourceState {
    return {
      format: 'tunebench-data', version: 1, fingerprint: this.rows.fingerprint(), shuffle: this.shuffle,
      epoch: this.epochNo, cursor: this.cursor, epochRng: [...this.epochRng] as RngState,
    };
  }

  restore(state: unknown): void {
    const s = state as Partial<TokenDataSourceState> | null;
    const where = 'TokenDataSource.restore';
    if (!s || typeof s !== 'object' || s.format !== 'tunebench-data') throw new Error(`${where}: not a saved TokenDataSource position: ${JSON.stringify(state)?.slice(0, 200)}`);
    if (s.version !== 1) throw new Error(`${where}: position format version ${s.version} is not supported (this build reads 1)`);
    if (s.fingerprint !== this.rows.fingerprint()) {
      throw new Error(`${where}: the position was saved for other data (fingerprint ${s.fingerprint}, this data ${this.rows.fingerprint()}): different dataset, tokenizer or seqLen?`);
    }
    if (s.shuffle !== this.shuffle) throw new Error(`${where}: the position was saved with shuffle=${s.shuffle}, this source has shuffle=${this.shuffle}`);
    if (!Number.isInteger(s.epoch) || s.epoch! < 0) throw new Error(`${where}: bad epoch ${s.epoch}`);
    if (!Number.isInteger(s.cursor) || s.cursor! < 0 || s.cursor! > this.rows.numRows) throw new Error(`${where}: bad cursor ${s.cursor} for ${this.rows.numRows} rows`);
    if (!Array.isArray(s.epochRng)) throw new Error(`${where}: the saved position has no RNG state`);
    this.rng = new Rng(s.epochRng as RngState); // checks the four words
    this.startEpoch();
    this.epochNo = s.epoch!;
    this.cursor = s.cursor!;
  }

  /** This data once, in order, for evaluation (see epochBatches); does not
   * move the training position. */
  epochBatches(batchSize = this.batchSize): Generator<EvalBatch> {
    return epochBatches(this.rows, batchSize);
  }
}
