// Tokenizers: the built-in byte-level one (no files, vocabulary of
// BYTE_VOCAB_SIZE) and a wrapper around @huggingface/tokenizers for a model
// directory's tokenizer.json.
//
// encode() never adds special tokens: the batching code (batching.ts) places
// BOS/EOS/PAD itself, the same way for every tokenizer.
import { readFileSync, statSync } from 'node:fs';
import { checkJsonDepth } from '../util/json.js';
import { join } from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { BYTE_VOCAB_SIZE } from '../nn/config.js';

export interface Tokenizer {
  /** ids are in [0, vocabSize) */
  readonly vocabSize: number;
  /** beginning-of-sequence id, or null when the tokenizer has none */
  readonly bos: number | null;
  /** end-of-sequence id, or null when the tokenizer has none */
  readonly eos: number | null;
  /** padding id, or null when the tokenizer has none */
  readonly pad: number | null;
  /** text -> ids, without special tokens */
  encode(text: string): number[];
  /** ids -> text; special tokens are skipped */
  decode(ids: ArrayLike<number>): string;
  /** for reports: 'byte' or 'hf:<dir>' */
  readonly name: string;
  /** Token texts that stand for one id each in rendered chat text (chat.ts):
   * BOS/EOS and, for a tokenizer file, its added tokens. Absent: none. */
  specialTokens?(): ReadonlyMap<string, number>;
}

// ---------------------------------------------------------------------------
// Byte-level tokenizer

export const BYTE_BOS = 256;
export const BYTE_EOS = 257;
export const BYTE_PAD = 258;
/** The texts of the byte tokenizer's BOS and EOS in rendered chat text (chat.ts). */
export const BYTE_BOS_TEXT = '<s>';
export const BYTE_EOS_TEXT = '</s>';

/** Ids 0..255 are the UTF-8 bytes of the text; 256 BOS, 257 EOS, 258 PAD.
 * encode: lone surrogates become U+FFFD (TextEncoder's rule).
 * decode: specials and ids outside [0, 259) are skipped; invalid UTF-8
 * becomes U+FFFD (never throws); a leading U+FEFF is kept. */
export class ByteTokenizer implements Tokenizer {
  readonly vocabSize = BYTE_VOCAB_SIZE;
  readonly bos = BYTE_BOS;
  readonly eos = BYTE_EOS;
  readonly pad = BYTE_PAD;
  readonly name = 'byte';
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  encode(text: string): number[] {
    return Array.from(this.encoder.encode(text));
  }

  decode(ids: ArrayLike<number>): string {
    const bytes = new Uint8Array(ids.length);
    let n = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (Number.isInteger(id) && id >= 0 && id < 256) bytes[n++] = id;
    }
    return this.decoder.decode(bytes.subarray(0, n));
  }

  /** '<s>' is BOS and '</s>' EOS in rendered chat text (plain encode() keeps them as bytes). */
  specialTokens(): ReadonlyMap<string, number> {
    return new Map([[BYTE_BOS_TEXT, BYTE_BOS], [BYTE_EOS_TEXT, BYTE_EOS]]);
  }
}

if (BYTE_PAD + 1 !== BYTE_VOCAB_SIZE) throw new Error('ByteTokenizer: specials do not match BYTE_VOCAB_SIZE');

// ---------------------------------------------------------------------------
// Hugging Face tokenizer.json

export const HF_TOKENIZER_FILE = 'tokenizer.json';
export const HF_TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';

/** The part of @huggingface/tokenizers' Tokenizer used here (its published
 * types do not resolve under NodeNext, so they are restated). */
interface HfImpl {
  encode(text: string, opts: { add_special_tokens: boolean }): { ids: number[] };
  decode(ids: number[], opts: { skip_special_tokens: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_added_tokens_decoder(): Map<number, { content: string; special: boolean }>;
  model: { vocab: (string | undefined)[] };
}

export interface HfTokenizerOptions {
  /** override (or supply) the special tokens by their text, e.g. '<s>'; null = none */
  bosToken?: string | null;
  eosToken?: string | null;
  padToken?: string | null;
}

/** A Hugging Face fast-tokenizer file (tokenizer.json) run by
 * @huggingface/tokenizers. BOS/EOS/PAD come from tokenizer_config.json
 * (bos_token, eos_token, pad_token; strings or {content} objects) when the
 * file exists, or from the options; a missing one is null. */
/** Token ids a tokenizer file may use (vocabularies are ~256k at most). */
const MAX_TOKEN_ID = 1 << 22;

/** The library's own error is often an internal one ("x.split is not a
 * function"): say which component of the file it could not use instead,
 * found by building again without each optional component in turn. */
function libraryFailure(e: Error, full: Record<string, unknown>, cfg: Record<string, unknown>): string {
  const internal = /Cannot read propert|is not a function|is not iterable|of undefined|of null|undefined is not|Invalid regular expression/;
  if (!internal.test(e.message)) return e.message;
  for (const part of ['post_processor', 'decoder', 'pre_tokenizer', 'normalizer'] as const) {
    if (full[part] === null) continue;
    try {
      const t = new HfTokenizerImpl({ ...full, [part]: null }, cfg) as HfImpl;
      t.encode('a', { add_special_tokens: true });
      return `its "${part}" (${JSON.stringify((full[part] as { type?: unknown } | null)?.type ?? full[part])?.slice(0, 60)}) is malformed or not supported`;
    } catch { /* not this one */ }
  }
  return `its "model" (type ${JSON.stringify((full.model as { type?: unknown }).type)}) is malformed or does not match its vocabulary`;
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number | null;
  readonly pad: number | null;
  readonly name: string;
  private readonly impl: HfImpl;
  private readonly special: Set<number>;

  private constructor(impl: HfImpl, name: string, specials: { bos: number | null; eos: number | null; pad: number | null }) {
    this.impl = impl;
    this.name = name;
    this.vocabSize = impl.model.vocab.length;
    this.bos = specials.bos;
    this.eos = specials.eos;
    this.pad = specials.pad;
    this.special = new Set<number>();
    for (const [id, t] of impl.get_added_tokens_decoder()) if (t.special) this.special.add(id);
    for (const id of [this.bos, this.eos, this.pad]) if (id !== null) this.special.add(id);
  }

  /** Loads `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json`. */
  static fromDir(dir: string, opts: HfTokenizerOptions = {}): HfTokenizer {
    const file = join(dir, HF_TOKENIZER_FILE);
    const json = readJsonObject(file, true)!;
    const configFile = join(dir, HF_TOKENIZER_CONFIG_FILE);
    const config = readJsonObject(configFile, false) ?? {};
    return HfTokenizer.fromJson(json, config, { ...opts, name: `hf:${dir}`, file, configFile });
  }

  /** From parsed tokenizer.json / tokenizer_config.json objects. `file` and
   * `configFile` only name the sources in error messages. */
  static fromJson(
    tokenizerJson: unknown, tokenizerConfig: unknown = {},
    opts: HfTokenizerOptions & { name?: string; file?: string; configFile?: string } = {},
  ): HfTokenizer {
    const file = opts.file ?? HF_TOKENIZER_FILE, configFile = opts.configFile ?? HF_TOKENIZER_CONFIG_FILE;
    if (!isObject(tokenizerJson)) throw new Error(`${file}: expected a JSON object`);
    if (!isObject(tokenizerConfig)) throw new Error(`${configFile}: expected a JSON object`);
    const model = tokenizerJson.model;
    if (!isObject(model)) throw new Error(`${file}: no "model" object (is this a Hugging Face fast-tokenizer file?)`);
    if (!isObject(model.vocab) && !Array.isArray(model.vocab)) throw new Error(`${file}: "model" has no "vocab"`);
    if (model.type === 'BPE' && !Array.isArray(model.merges)) throw new Error(`${file}: BPE "model" has no "merges" array`);
    if (Array.isArray(model.merges)) {
      const bad = (model.merges as unknown[]).findIndex((m) => !(typeof m === 'string' || (Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string'))));
      if (bad >= 0) throw new Error(`${file}: model.merges[${bad}] must be a string "a b" or a pair of strings, got ${JSON.stringify((model.merges as unknown[])[bad])?.slice(0, 80)}`);
    }
    if (tokenizerJson.added_tokens !== undefined && !Array.isArray(tokenizerJson.added_tokens)) {
      throw new Error(`${file}: "added_tokens" must be an array`);
    }
    // ids far outside any vocabulary (negative, fractional, 1e12) would index
    // the embedding out of range later: refuse them here, naming the token
    const badIds: string[] = [];
    const checkId = (id: unknown, what: string) => {
      if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= MAX_TOKEN_ID) badIds.push(`${what} has id ${JSON.stringify(id)}`);
    };
    if (isObject(model.vocab)) for (const [tok, id] of Object.entries(model.vocab)) { checkId(id, `vocab token ${JSON.stringify(tok)}`); if (badIds.length > 5) break; }
    for (const t of (tokenizerJson.added_tokens as unknown[] | undefined) ?? []) {
      if (!isObject(t) || typeof t.content !== 'string') { badIds.push(`an added token is not {id, content}: ${JSON.stringify(t)?.slice(0, 80)}`); continue; }
      checkId(t.id, `added token ${JSON.stringify(t.content)}`);
    }
    if (badIds.length) throw new Error(`${file}: token ids must be integers from 0 to ${MAX_TOKEN_ID - 1}: ${badIds.slice(0, 5).join('; ')}`);
    // the library needs these keys present (null = component absent); real
    // files always have them, hand-written ones often do not
    const full: Record<string, unknown> = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [], ...tokenizerJson };
    const cfg: Record<string, unknown> = { ...tokenizerConfig };
    // the library reads special-token fields as plain strings
    for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
      const v = tokenContent(cfg[k]);
      if (v === undefined) delete cfg[k]; else cfg[k] = v;
    }
    // WordLevel-style models are run by the library's Legacy model, which
    // takes its unknown token from the config only
    if (cfg.unk_token === undefined && typeof model.unk_token === 'string') cfg.unk_token = model.unk_token;
    let impl: HfImpl;
    try {
      impl = new HfTokenizerImpl(full, cfg) as HfImpl;
      // a component the library accepts but cannot run (a TemplateProcessing
      // without its fields) fails only when used: try it now, not mid-run
      impl.encode('a', { add_special_tokens: true });
    } catch (e) {
      throw new Error(`${file}: @huggingface/tokenizers could not build a working tokenizer from it: ${libraryFailure(e as Error, full, cfg)}`);
    }
    const pick = (key: 'bos_token' | 'eos_token' | 'pad_token', override: string | null | undefined): number | null => {
      const token = override !== undefined ? override : tokenContent(tokenizerConfig[key]) ?? null;
      if (token === null) return null;
      const id = impl.token_to_id(token);
      if (id === undefined) {
        const from = override !== undefined ? 'the options' : configFile;
        throw new Error(`${file}: ${key} ${JSON.stringify(token)} (from ${from}) is not in the vocabulary`);
      }
      return id;
    };
    const specials = { bos: pick('bos_token', opts.bosToken), eos: pick('eos_token', opts.eosToken), pad: pick('pad_token', opts.padToken) };
    return new HfTokenizer(impl, opts.name ?? 'hf', specials);
  }

  /** Throws when a piece of the text is not in the vocabulary and the
   * tokenizer has no unknown token. */
  encode(text: string): number[] {
    const ids = this.impl.encode(text, { add_special_tokens: false }).ids;
    for (let i = 0; i < ids.length; i++) {
      if (!Number.isInteger(ids[i])) {
        const piece = (this.impl.encode(text, { add_special_tokens: false }) as unknown as { tokens: string[] }).tokens[i];
        throw new Error(`${this.name}: the text piece ${JSON.stringify(piece)} is not in the vocabulary and the tokenizer has no unknown token`);
      }
    }
    return ids;
  }

  /** Skips special tokens and ids the vocabulary does not have. */
  decode(ids: ArrayLike<number>): string {
    const keep: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (Number.isInteger(id) && id >= 0 && id < this.vocabSize && !this.special.has(id) && this.impl.id_to_token(id) !== undefined) keep.push(id);
    }
    if (keep.length === 0) return ''; // the library throws on an empty list
    return this.impl.decode(keep, { skip_special_tokens: true });
  }

  /** The token's id, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.impl.token_to_id(token);
  }

  /** The token's text, or undefined. */
  idToToken(id: number): string | undefined {
    return this.impl.id_to_token(id);
  }

  /** Every added token (special or not: the tokenizer matches each as one
   * unit) and BOS/EOS/PAD, by text. */
  specialTokens(): ReadonlyMap<string, number> {
    const m = new Map<string, number>();
    for (const [id, t] of this.impl.get_added_tokens_decoder()) if (t.content !== '') m.set(t.content, id);
    for (const id of [this.bos, this.eos, this.pad]) {
      const text = id === null ? undefined : this.impl.id_to_token(id);
      if (text !== undefined && text !== '' && !m.has(text)) m.set(text, id!);
    }
    return m;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A special token in tokenizer_config.json: a string, an AddedToken object
 * ({content: ...}), or null/absent. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

function readJsonObject(file: string, required: boolean): Record<string, unknown> | null {
  let text: string;
  try {
    if (!statSync(file).isFile()) throw new Error(statSync(file).isDirectory() ? 'is a directory, expected a file' : 'not a regular file (a FIFO, socket or device?)');
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !required) return null;
    throw new Error(code === 'ENOENT' ? `${file}: file not found` : `${file}: cannot read: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    checkJsonDepth(text, file);
    v = JSON.parse(text);
  } catch (e) {
    throw new Error((e as Error).message.startsWith(file) ? (e as Error).message : `${file}: malformed JSON: ${(e as Error).message}`);
  }
  if (!isObject(v)) throw new Error(`${file}: expected a JSON object, got ${Array.isArray(v) ? 'an array' : typeof v}`);
  return v;
}
