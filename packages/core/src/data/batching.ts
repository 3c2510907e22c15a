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
//
// Example packing (prompt/completion datasets, padding-free): each example is
// truncated exactly as padding does (seq of n <= T+1 tokens), then occupies
// n-1 consecutive positions of a row: ids = seq[0 .. n-2], targets as padding
// gives them (the last token, the EOS, is only ever a target: as an input it
// would predict nothing). Rows carry per-token segment ids (0, 1, ... per
// example in the row; the unfilled tail is padding with the next id of its
// own, PAD inputs and -100 targets) and RoPE positions that restart at 0 at
// each example and at the padding tail. With the model's segment-aware
// attention, every example's loss and gradients are those it gets alone in a
// padded row. Placement policy: first fit, in input order (or a seeded
// shuffle of it): an example goes into the first row that still has room for
// it, else opens a new row; so rows hold examples in placement order and
// earlier rows fill first. Examples without any target are left out.
//
// Chat datasets ({"messages"} rows, chat.ts): each conversation is rendered
// by the chat template and tokenized, with targets on the assistant turns
// only (their content and end-of-turn token); BOS/EOS come from the template,
// not from here. It is then padded or packed exactly as a prompt/completion
// example, where "prompt" is everything before the last assistant turn and
// "completion" the rest: a conversation longer than T+1 tokens loses tokens
// from its left (a leading BOS stays), earlier assistant targets with them,
// so that the last assistant turn survives; if that turn and what follows do
// not fit alone, they are cut at the end.
//
// Dynamic padding (evaluation): a batch of padded rows can be cut to its
// longest row's real length rounded up to a multiple of 8 (never above
// seqLen); the positions cut hold only PAD inputs and -100 targets, so under
// causal attention the loss is unchanged.
import { Tensor } from '../tensor.js';
import type { Batch } from '../nn/llama.js';
import type { DataSource } from '../train/data_source.js';
import { IGNORE_INDEX } from '../train/trainer.js';
import { Rng, type RngState } from '../util/rng.js';
import type { ChatRow, Dataset, SftRow, TextRow } from './jsonl.js';
import type { Tokenizer } from './tokenizer.js';
import { ChatTemplate, encodeChat } from './chat.js';

export interface PrepareStats {
  /** 'pack' (text stream), 'pad' (one prompt/completion example per row) or
   * 'pack-examples' (prompt/completion examples packed, padding-free) */
  mode: PrepareMode;
  /** dataset rows (texts or examples) read */
  examples: number;
  /** rows of seqLen produced */
  rows: number;
  /** positions holding a real (non-pad) input token */
  inputTokens: number;
  /** positions holding padding (rows * seqLen - inputTokens) */
  paddingTokens: number;
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
  /** pad: rows with no target at all (e.g. empty completion and no EOS);
   * pack-examples: examples with no target, left out of the rows */
  rowsWithoutTargets: number;
}

export type PrepareMode = 'pack' | 'pad' | 'pack-examples';

function emptyStats(mode: PrepareMode): PrepareStats {
  return {
    mode, examples: 0, rows: 0, inputTokens: 0, paddingTokens: 0, targetTokens: 0, streamTokens: 0, droppedTailTokens: 0,
    promptTruncated: 0, droppedPromptTokens: 0, completionTruncated: 0, droppedCompletionTokens: 0, rowsWithoutTargets: 0,
  };
}

/** Per-token extras of packed example rows (same layout as ids). */
export interface TokenRowsExtras {
  /** segment ids: contiguous non-decreasing runs per row, padding its own */
  segments?: Int32Array;
  /** RoPE positions, restarting at 0 at each segment */
  positions?: Int32Array;
  /** real (non-padding) input tokens of each row; padding sits after them
   * in padded rows (absent: every position is real) */
  lengths?: Int32Array;
}

/** Prepared rows: row i is ids/targets[i*seqLen .. (i+1)*seqLen) (and the
 * same slice of segments/positions when the rows are packed examples). */
export class TokenRows {
  readonly segments: Int32Array | undefined;
  readonly positions: Int32Array | undefined;
  readonly lengths: Int32Array | undefined;

  constructor(
    readonly seqLen: number,
    readonly ids: Int32Array,
    readonly targets: Int32Array,
    /** the id written at padding positions (inputs of padded rows) */
    readonly padId: number,
    readonly stats: PrepareStats,
    extras: TokenRowsExtras = {},
  ) {
    if (!Number.isInteger(seqLen) || seqLen < 1) throw new Error(`TokenRows: seqLen must be a positive integer, got ${seqLen}`);
    if (ids.length !== targets.length || ids.length % seqLen !== 0) {
      throw new Error(`TokenRows: ${ids.length} ids and ${targets.length} targets are not whole rows of ${seqLen}`);
    }
    for (const [name, a] of [['segments', extras.segments], ['positions', extras.positions]] as const) {
      if (a !== undefined && a.length !== ids.length) throw new Error(`TokenRows: ${name} has ${a.length} entries, ids ${ids.length}`);
    }
    if ((extras.segments === undefined) !== (extras.positions === undefined)) {
      throw new Error('TokenRows: packed rows need both segments and positions');
    }
    const R = ids.length / seqLen;
    if (extras.lengths !== undefined) {
      if (extras.lengths.length !== R) throw new Error(`TokenRows: lengths has ${extras.lengths.length} entries for ${R} rows`);
      for (const n of extras.lengths) if (n < 0 || n > seqLen) throw new Error(`TokenRows: a row length ${n} is outside [0, ${seqLen}]`);
    }
    this.segments = extras.segments;
    this.positions = extras.positions;
    this.lengths = extras.lengths;
  }

  get numRows(): number { return this.ids.length / this.seqLen; }

  /** whether rows hold several examples (segments and positions per token) */
  get packed(): boolean { return this.segments !== undefined; }

  /** real (non-padding) input tokens of row i */
  rowLength(i: number): number { return this.lengths ? this.lengths[i] : this.seqLen; }

  /** views of row i (no copy) */
  row(i: number): { ids: Int32Array; targets: Int32Array; segments?: Int32Array; positions?: Int32Array } {
    if (!Number.isInteger(i) || i < 0 || i >= this.numRows) throw new RangeError(`TokenRows.row: ${i} is not in [0, ${this.numRows})`);
    const T = this.seqLen, a = i * T, b = (i + 1) * T;
    const r: ReturnType<TokenRows['row']> = { ids: this.ids.subarray(a, b), targets: this.targets.subarray(a, b) };
    if (this.segments && this.positions) { r.segments = this.segments.subarray(a, b); r.positions = this.positions.subarray(a, b); }
    return r;
  }

  /** positions with a target, over all rows */
  targetTokens(): number { return countTargets(this.targets); }

  private fp: string | null = null;
  /** FNV-1a hash of ids and targets, then segments and positions of packed
   * rows (8 hex digits + shape): recognises the same prepared data when a
   * checkpoint is restored */
  fingerprint(): string {
    if (this.fp === null) {
      let h = 0x811c9dc5;
      const mix = (a: Int32Array) => {
        for (let i = 0; i < a.length; i++) { h ^= a[i]; h = Math.imul(h, 0x01000193); }
      };
      mix(this.ids); mix(this.targets);
      if (this.segments) mix(this.segments);
      if (this.positions) mix(this.positions);
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

/** An example as tokens: mask[t] = 1 when seq[t] is a target (predicted
 * from position t - 1; mask[0] is never used). */
interface Encoded { seq: number[]; mask: Uint8Array }

/** Cuts seq = lead + prompt + tail (the tail from `tailStart`) to at most T+1
 * tokens as the top of this file says, counting what goes in stats. */
function fitExample(seq: number[], mask: Uint8Array, lead: number, tailStart: number, T: number, stats: PrepareStats): Encoded {
  if (seq.length <= T + 1) return { seq, mask };
  const room = T + 1 - lead;
  const promptLen = tailStart - lead;
  let tailEnd = seq.length;
  const tailLen = tailEnd - tailStart;
  const keepPrompt = Math.max(0, Math.min(promptLen, room - tailLen));
  if (keepPrompt < promptLen) { stats.promptTruncated++; stats.droppedPromptTokens += promptLen - keepPrompt; }
  if (tailLen > room) { stats.completionTruncated++; stats.droppedCompletionTokens += tailLen - room; tailEnd = tailStart + room; }
  const keep = (a: number, b: number) => ({ ids: seq.slice(a, b), m: mask.subarray(a, b) });
  const parts = [keep(0, lead), keep(tailStart - keepPrompt, tailStart), keep(tailStart, tailEnd)];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.ids.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p.m, o); o += p.ids.length; }
  return { seq: parts.flatMap((p) => p.ids), mask: out };
}

/** One example as a token sequence of at most T+1 tokens ([BOS] + prompt +
 * completion + [EOS], truncated as the top of this file says; truncation is
 * counted in stats). */
function encodeExample(tok: Tokenizer, ex: SftRow, T: number, where: string, stats: PrepareStats): Encoded {
  const lead = tok.bos !== null ? 1 : 0;
  const prompt = encodeChecked(tok, ex.prompt, where);
  const tail = encodeChecked(tok, ex.completion, where);
  if (tok.eos !== null) tail.push(tok.eos);
  const seq = lead ? [tok.bos!, ...prompt, ...tail] : [...prompt, ...tail];
  const first = lead + prompt.length;
  const mask = new Uint8Array(seq.length).fill(1, first);
  return fitExample(seq, mask, lead, first, T, stats);
}

export interface ChatPrepareOptions {
  /** the chat template (default: ChatTemplate.default(tok), the built-in one) */
  template?: ChatTemplate;
  /** targets on each conversation's last assistant turn only (label candidates) */
  lastAssistantOnly?: boolean;
}

/** One conversation as a token sequence of at most T+1 tokens (see the top of this file). */
function encodeChatExample(tok: Tokenizer, row: ChatRow, template: ChatTemplate, T: number, where: string, stats: PrepareStats,
                           lastOnly: boolean): Encoded {
  const e = encodeChat(tok, template, row.messages, row.where ?? where, { lastAssistantOnly: lastOnly });
  const lead = tok.bos !== null && e.ids[0] === tok.bos && e.lastStart > 0 ? 1 : 0;
  return fitExample(e.ids, e.mask, lead, e.lastStart, T, stats);
}

/** Positions with a target in an encoded example (mask[0] is never one). */
function hasTarget(e: Encoded): boolean {
  for (let t = 1; t < e.seq.length; t++) if (e.mask[t]) return true;
  return false;
}

/** One row per example (see the top of this file). */
function padEncoded(count: number, encodeAt: (i: number, stats: PrepareStats) => Encoded, T: number, pad: number): TokenRows {
  const stats = emptyStats('pad');
  const ids = new Int32Array(count * T).fill(pad), targets = new Int32Array(count * T).fill(IGNORE_INDEX);
  const lengths = new Int32Array(count);
  for (let r = 0; r < count; r++) {
    const { seq, mask } = encodeAt(r, stats);
    const n = seq.length;
    const o = r * T;
    const nIn = Math.min(n, T);
    for (let t = 0; t < nIn; t++) ids[o + t] = seq[t];
    let c = 0;
    for (let t = 0; t + 1 < n; t++) if (mask[t + 1]) { targets[o + t] = seq[t + 1]; c++; }
    lengths[r] = nIn;
    stats.inputTokens += nIn;
    stats.targetTokens += c;
    if (c === 0) stats.rowsWithoutTargets++;
  }
  stats.examples = stats.rows = count;
  stats.paddingTokens = stats.rows * T - stats.inputTokens;
  return new TokenRows(T, ids, targets, pad, stats, { lengths });
}

/** Pads prompt/completion examples into rows of seqLen with the prompt
 * masked (see the top of this file). One row per example. */
export function padExamples(tok: Tokenizer, examples: readonly SftRow[], seqLen: number, source = 'examples'): TokenRows {
  checkSeqLen(seqLen, `padExamples(${source})`);
  if (examples.length === 0) throw new Error(`padExamples(${source}): no examples`);
  return padEncoded(examples.length, (r, stats) => encodeExample(tok, examples[r], seqLen, `${source}[${r}]`, stats), seqLen, padIdOf(tok));
}

/** Pads conversations into rows of seqLen, one per row, with targets on the
 * assistant turns only (see the top of this file). */
export function padChats(tok: Tokenizer, rows: readonly ChatRow[], seqLen: number, source = 'chats', opts: ChatPrepareOptions = {}): TokenRows {
  checkSeqLen(seqLen, `padChats(${source})`);
  if (rows.length === 0) throw new Error(`padChats(${source}): no conversations`);
  const template = opts.template ?? ChatTemplate.default(tok);
  return padEncoded(rows.length, (r, stats) => encodeChatExample(tok, rows[r], template, seqLen, `${source}[${r}]`, stats, opts.lastAssistantOnly ?? false), seqLen, padIdOf(tok));
}

export interface PackExamplesOptions {
  /** shuffle the examples with this seed before placing them (default: input order) */
  seed?: number;
}

/** Several examples per row, first fit (see the top of this file). */
function packEncoded(count: number, encodeAt: (i: number, stats: PrepareStats) => Encoded, T: number, pad: number, where: string,
                     opts: PackExamplesOptions): TokenRows {
  if (opts.seed !== undefined && !Number.isInteger(opts.seed)) throw new Error(`${where}: seed must be an integer, got ${opts.seed}`);
  const stats = emptyStats('pack-examples');
  const order = Array.from({ length: count }, (_, i) => i);
  if (opts.seed !== undefined) new Rng(opts.seed).shuffle(order);
  // First fit through a max-tree over the rows' free room (leaf r = room left
  // in row r; rows not opened yet have T): the leftmost leaf with room >= L
  // is the first open row that fits, else the next new row.
  let size = 1;
  while (size < count) size *= 2;
  const tree = new Int32Array(2 * size).fill(T);
  const firstFit = (L: number): number => {
    let i = 1;
    while (i < size) i = tree[2 * i] >= L ? 2 * i : 2 * i + 1;
    return i - size;
  };
  const take = (r: number, L: number) => {
    let i = r + size;
    tree[i] -= L;
    for (i >>= 1; i >= 1; i >>= 1) tree[i] = Math.max(tree[2 * i], tree[2 * i + 1]);
  };
  const placed: { r: number; e: Encoded }[] = [];
  let numRows = 0;
  for (const k of order) {
    const e = encodeAt(k, stats);
    const L = e.seq.length - 1;  // inputs seq[0 .. n-2]; the last token is only a target
    if (L < 1 || !hasTarget(e)) { stats.rowsWithoutTargets++; continue; }
    const r = firstFit(L);
    take(r, L);
    numRows = Math.max(numRows, r + 1);
    placed.push({ r, e });
  }
  stats.examples = count;
  if (numRows === 0) throw new Error(`${where}: none of the ${count} example(s) has a target token`);
  const ids = new Int32Array(numRows * T).fill(pad), targets = new Int32Array(numRows * T).fill(IGNORE_INDEX);
  const segments = new Int32Array(numRows * T), positions = new Int32Array(numRows * T);
  const used = new Int32Array(numRows), nextSeg = new Int32Array(numRows);
  for (const { r, e: { seq, mask } } of placed) {
    const o = r * T + used[r], L = seq.length - 1, id = nextSeg[r]++;
    for (let t = 0; t < L; t++) {
      ids[o + t] = seq[t];
      segments[o + t] = id;
      positions[o + t] = t;
      if (mask[t + 1]) { targets[o + t] = seq[t + 1]; stats.targetTokens++; }
    }
    used[r] += L;
  }
  for (let r = 0; r < numRows; r++) {  // the padding tail: a segment of its own, positions from 0
    for (let t = used[r]; t < T; t++) { segments[r * T + t] = nextSeg[r]; positions[r * T + t] = t - used[r]; }
    stats.inputTokens += used[r];
  }
  stats.rows = numRows;
  stats.paddingTokens = numRows * T - stats.inputTokens;
  return new TokenRows(T, ids, targets, pad, stats, { segments, positions, lengths: used });
}

/** Packs prompt/completion examples into rows of seqLen, several per row,
 * with per-token segments and positions (see the top of this file for the
 * layout and the first-fit placement policy). */
export function packExamples(tok: Tokenizer, examples: readonly SftRow[], seqLen: number, source = 'examples',
                             opts: PackExamplesOptions = {}): TokenRows {
  checkSeqLen(seqLen, `packExamples(${source})`);
  if (examples.length === 0) throw new Error(`packExamples(${source}): no examples`);
  return packEncoded(examples.length, (e, stats) => encodeExample(tok, examples[e], seqLen, `${source}[${e}]`, stats), seqLen, padIdOf(tok),
    `packExamples(${source})`, opts);
}

/** Packs conversations into rows of seqLen, several per row, with targets
 * on the assistant turns only (as packExamples places examples). */
export function packChats(tok: Tokenizer, rows: readonly ChatRow[], seqLen: number, source = 'chats',
                          opts: PackExamplesOptions & ChatPrepareOptions = {}): TokenRows {
  checkSeqLen(seqLen, `packChats(${source})`);
  if (rows.length === 0) throw new Error(`packChats(${source}): no conversations`);
  const template = opts.template ?? ChatTemplate.default(tok);
  return packEncoded(rows.length, (e, stats) => encodeChatExample(tok, rows[e], template, seqLen, `${source}[${e}]`, stats, opts.lastAssistantOnly ?? false),
    seqLen, padIdOf(tok), `packChats(${source})`, opts);
}

export interface PrepareDatasetOptions {
  /** prompt/completion and chat datasets: 'pack' (several examples per row, padding-free;
   * the default, for training) or 'pad' (one example per row; evaluation and
   * per-example scoring need this). Text datasets are always a packed stream. */
  packing?: 'pack' | 'pad';
  /** packExamples' placement seed */
  seed?: number;
  /** chat datasets: the template (default: ChatTemplate.default(tok)) */
  chatTemplate?: ChatTemplate;
}

/** Packs a text dataset; packs (default) or pads a prompt/completion or chat one. */
export function prepareDataset(ds: Dataset, tok: Tokenizer, seqLen: number, opts: PrepareDatasetOptions = {}): TokenRows {
  const packing = opts.packing ?? 'pack';
  if (packing !== 'pack' && packing !== 'pad') throw new Error(`prepareDataset(${ds.source}): packing must be 'pack' or 'pad', got ${String(packing)}`);
  if (ds.kind === 'text') return packTexts(tok, ds.rows, seqLen, ds.source);
  if (ds.kind === 'chat') {
    const o = { template: opts.chatTemplate };
    return packing === 'pack' ? packChats(tok, ds.rows, seqLen, ds.source, { ...o, seed: opts.seed }) : padChats(tok, ds.rows, seqLen, ds.source, o);
  }
  return packing === 'pack' ? packExamples(tok, ds.rows, seqLen, ds.source, { seed: opts.seed }) : padExamples(tok, ds.rows, seqLen, ds.source);
}

// ---------------------------------------------------------------------------
// Batches

/** A batch from evaluation order: rows [firstRow, firstRow + realRows) of
 * the data, then filler rows (PAD inputs, all targets -100) up to B. */
export interface EvalBatch extends Batch {
  firstRow: number;
  realRows: number;
}

/** Dynamic padding: the batch length for rows whose longest real length is
 * `longest`: rounded up to a multiple of 8 (at least 8), at most seqLen. */
export function dynamicLength(longest: number, seqLen: number): number {
  return Math.min(seqLen, Math.max(8, Math.ceil(longest / 8) * 8));
}

/** Copies rows (data indices, -1 = a filler row) into a [B, L] batch, L <=
 * seqLen (the first L positions of each row), with segments and positions
 * when the rows are packed, and the count of real input tokens. */
function gatherBatch(rows: TokenRows, picks: readonly number[], L: number): Batch {
  const B = picks.length, T = rows.seqLen;
  const ids = Tensor.zeros([B, L], { dtype: 'i32' }), targets = Tensor.zeros([B, L], { dtype: 'i32' });
  const iv = ids.data() as Int32Array, tv = targets.data() as Int32Array;
  const packed = rows.segments !== undefined && rows.positions !== undefined;
  const segments = packed ? Tensor.zeros([B, L], { dtype: 'i32' }) : undefined;
  const positions = packed ? Tensor.zeros([B, L], { dtype: 'i32' }) : undefined;
  const sv = segments?.data() as Int32Array | undefined, pv = positions?.data() as Int32Array | undefined;
  let realTokens = 0;
  picks.forEach((r, b) => {
    if (r < 0) {  // filler: PAD inputs, no targets, one segment at positions 0..L-1
      iv.fill(rows.padId, b * L, (b + 1) * L);
      tv.fill(IGNORE_INDEX, b * L, (b + 1) * L);
      if (pv) for (let t = 0; t < L; t++) pv[b * L + t] = t;
      return;
    }
    iv.set(rows.ids.subarray(r * T, r * T + L), b * L);
    tv.set(rows.targets.subarray(r * T, r * T + L), b * L);
    if (sv && pv) {
      sv.set(rows.segments!.subarray(r * T, r * T + L), b * L);
      pv.set(rows.positions!.subarray(r * T, r * T + L), b * L);
    }
    realTokens += Math.min(L, rows.rowLength(r));
  });
  const batch: Batch = { ids, targets, realTokens };
  if (segments && positions) { batch.segments = segments; batch.positions = positions; }
  return batch;
}

export interface EpochBatchesOptions {
  /** cut each batch to its longest row's real length rounded up to a
   * multiple of 8 (never above seqLen); default true. Rows without recorded
   * lengths (text packing) are always full. */
  dynamicPadding?: boolean;
}

/** Every row once, in order, batchSize rows at a time; the last batch keeps
 * its row count and fills the missing rows with PAD inputs and -100 targets.
 * The caller owns (and disposes, see disposeBatch) each batch's tensors. */
export function* epochBatches(rows: TokenRows, batchSize: number, opts: EpochBatchesOptions = {}): Generator<EvalBatch> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`epochBatches: batchSize must be a positive integer, got ${batchSize}`);
  const T = rows.seqLen, N = rows.numRows, dynamic = opts.dynamicPadding ?? true;
  for (let first = 0; first < N; first += batchSize) {
    const real = Math.min(batchSize, N - first);
    const picks = Array.from({ length: batchSize }, (_, b) => (b < real ? first + b : -1));
    let L = T;
    if (dynamic && rows.lengths) {
      let longest = 0;
      for (let b = 0; b < real; b++) longest = Math.max(longest, rows.lengths[first + b]);
      L = dynamicLength(longest, T);
    }
    yield { ...gatherBatch(rows, picks, L), firstRow: first, realRows: real };
  }
}

export interface TokenDataSourceOptions {
  batchSize: number;
  /** seeds the shuffle (default 0) */
  seed?: number;
  /** reshuffle every epoch (default true); false keeps the data's order */
  shuffle?: boolean;
  /** cut each batch to its rows' longest real length (see dynamicLength);
   * default false (every batch [batchSize, seqLen]) */
  dynamicPadding?: boolean;
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
  readonly dynamicPadding: boolean;
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
    this.dynamicPadding = opts.dynamicPadding ?? false;
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

  /** The next batchSize rows; packed rows bring segments and positions, and
   * every batch says how many of its input tokens are real (realTokens). */
  next(): Batch {
    const picks: number[] = [];
    for (let b = 0; b < this.batchSize; b++) {
      if (this.cursor >= this.order.length) { this.epochNo++; this.startEpoch(); }
      picks.push(this.order[this.cursor++]);
    }
    let L = this.rows.seqLen;
    if (this.dynamicPadding && this.rows.lengths) L = dynamicLength(Math.max(...picks.map((r) => this.rows.lengths![r])), L);
    return gatherBatch(this.rows, picks, L);
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
  epochBatches(batchSize = this.batchSize, opts: EpochBatchesOptions = {}): Generator<EvalBatch> {
    return epochBatches(this.rows, batchSize, opts);
  }
}
