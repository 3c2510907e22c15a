// Datasets: JSONL files (one JSON object per line) or rows in memory.
//
//   {"text": string}                          language modelling
//   {"prompt": string, "completion": string}  supervised: loss on the completion only
//   {"messages": [{"role", "content"}, ...]}  chat: rendered with a chat
//                                             template, loss on the assistant
//                                             turns only (chat.ts)
//
// One file holds one kind: the first row decides it, or the caller sets it
// (ReadJsonlOptions.format). Other keys on a row (and on a message) are
// ignored (ids, metadata). Blank lines are skipped. Every problem is an Error
// naming `file:line`.
import { openRegularFile } from '../util/files.js';
import { checkJsonDepth } from '../util/json.js';
import { closeSync, existsSync, readSync } from 'node:fs';

export interface TextRow { text: string }
export interface SftRow { prompt: string; completion: string }

/** The roles a chat message may have. */
export const CHAT_ROLES = ['system', 'user', 'assistant'] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];
export interface ChatMessage { role: ChatRole; content: string }
/** A conversation: at least one assistant message; every content a
 * non-blank string. `where` names the row in later errors (a template that
 * fails on it): `file:line` for a file, `source[i]` for rows in memory. */
export interface ChatRow { messages: ChatMessage[]; where?: string }

export type Dataset =
  | { kind: 'text'; source: string; rows: TextRow[] }
  | { kind: 'sft'; source: string; rows: SftRow[] }
  | { kind: 'chat'; source: string; rows: ChatRow[] };

export type DatasetKind = Dataset['kind'];
export const DATASET_KINDS: readonly DatasetKind[] = ['text', 'sft', 'chat'];

const KIND_WORDS: Record<DatasetKind, string> = {
  text: 'a {"text"} row', sft: 'a {"prompt", "completion"} row', chat: 'a {"messages"} (chat) row',
};

type ParsedRow = { kind: 'text'; row: TextRow } | { kind: 'sft'; row: SftRow } | { kind: 'chat'; row: ChatRow };

/** Checks a chat row's "messages"; `where` names the row. */
function parseMessages(v: unknown, where: string): ChatMessage[] {
  if (!Array.isArray(v)) throw new Error(`${where}: "messages" must be an array of {"role", "content"} objects, got ${typeName(v)}`);
  if (v.length === 0) throw new Error(`${where}: "messages" is empty (a chat row needs at least one assistant message, usually after a user message)`);
  const out: ChatMessage[] = [];
  v.forEach((m, k) => {
    const at = `${where}: messages[${k}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new Error(`${at} must be an object {"role", "content"}, got ${typeName(m)}`);
    const o = m as Record<string, unknown>;
    if (!('role' in o)) throw new Error(`${at} has no "role" (one of ${CHAT_ROLES.join(', ')})`);
    if (typeof o.role !== 'string') throw new Error(`${at}: "role" must be a string (one of ${CHAT_ROLES.join(', ')}), got ${typeName(o.role)}`);
    if (!(CHAT_ROLES as readonly string[]).includes(o.role)) {
      throw new Error(`${at}: unknown role ${JSON.stringify(o.role).slice(0, 60)} (a message's role is one of ${CHAT_ROLES.join(', ')})`);
    }
    if (!('content' in o)) throw new Error(`${at} (${o.role}) has no "content" (a string)`);
    if (typeof o.content !== 'string') throw new Error(`${at} (${o.role}): "content" must be a string, got ${typeName(o.content)}`);
    if (o.content.trim() === '') throw new Error(`${at} (${o.role}): "content" is empty; give the message its text or leave the message out`);
    out.push({ role: o.role as ChatRole, content: o.content });
  });
  if (!out.some((m) => m.role === 'assistant')) {
    throw new Error(`${where}: no assistant message (the loss is on the assistant turns, so a chat row needs at least one)`);
  }
  return out;
}

/** Checks one parsed row; `where` names it in errors (file:line or source[i]). */
function parseRow(v: unknown, where: string): ParsedRow {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new Error(`${where}: expected a JSON object, got ${v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v}`);
  }
  const o = v as Record<string, unknown>;
  const hasText = 'text' in o, hasSft = 'prompt' in o || 'completion' in o, hasChat = 'messages' in o;
  if (hasChat && (hasText || hasSft)) throw new Error(`${where}: a row has either "messages" (chat), "text" or "prompt"/"completion", not several`);
  if (hasText && hasSft) throw new Error(`${where}: a row has either "text" or "prompt"/"completion", not both`);
  if (hasChat) return { kind: 'chat', row: { messages: parseMessages(o.messages, where), where } };
  if (hasText) {
    if (typeof o.text !== 'string') throw new Error(`${where}: "text" must be a string, got ${typeName(o.text)}`);
    return { kind: 'text', row: { text: o.text } };
  }
  if (hasSft) {
    for (const k of ['prompt', 'completion'] as const) {
      if (!(k in o)) throw new Error(`${where}: missing "${k}" (a supervised row has "prompt" and "completion")`);
      if (typeof o[k] !== 'string') throw new Error(`${where}: "${k}" must be a string, got ${typeName(o[k])}`);
    }
    return { kind: 'sft', row: { prompt: o.prompt as string, completion: o.completion as string } };
  }
  const keys = Object.keys(o);
  throw new Error(`${where}: expected {"text": string}, {"prompt": string, "completion": string} or {"messages": [{"role", "content"}, ...]}, got ${keys.length ? `keys ${keys.map((k) => JSON.stringify(k)).join(', ')}` : 'an empty object'}`);
}

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** Collects rows of one kind: the first row decides it, unless `format` set it. */
class RowCollector {
  kind: DatasetKind | null = null;
  firstWhere = '';
  text: TextRow[] = [];
  sft: SftRow[] = [];
  chat: ChatRow[] = [];

  constructor(private readonly format: DatasetKind | null = null) {}

  add(v: unknown, where: string): void {
    const r = parseRow(v, where);
    if (this.format !== null && r.kind !== this.format) {
      throw new Error(`${where}: ${KIND_WORDS[r.kind]}, but the format was set to ${this.format} (${KIND_WORDS[this.format]} on every line)`);
    }
    if (this.kind === null) { this.kind = r.kind; this.firstWhere = where; }
    else if (r.kind !== this.kind) {
      throw new Error(`${where}: ${KIND_WORDS[r.kind]}, but the dataset started with ${KIND_WORDS[this.kind]} (${this.firstWhere}); one dataset holds one kind`);
    }
    if (r.kind === 'text') this.text.push(r.row); else if (r.kind === 'sft') this.sft.push(r.row); else this.chat.push(r.row);
  }

  finish(source: string): Dataset {
    if (this.kind === null) throw new Error(`${source}: the dataset is empty (no rows)`);
    return this.kind === 'text' ? { kind: 'text', source, rows: this.text }
      : this.kind === 'sft' ? { kind: 'sft', source, rows: this.sft } : { kind: 'chat', source, rows: this.chat };
  }
}

/** A dataset format as a caller names it: a kind, or 'auto' (the first row decides). */
export function parseDatasetFormat(v: string | undefined, what = 'format'): DatasetKind | null {
  if (v === undefined || v === 'auto') return null;
  if ((DATASET_KINDS as readonly string[]).includes(v)) return v as DatasetKind;
  throw new Error(`${what} must be auto, text, sft (prompt/completion) or chat (messages), got ${JSON.stringify(v)}`);
}

/** The longest line a JSONL dataset may have. */
export const JSONL_MAX_LINE_BYTES = 64 << 20;

export interface ReadJsonlOptions {
  /** the longest line accepted, in bytes (default JSONL_MAX_LINE_BYTES) */
  maxLineBytes?: number;
  /** the kind every row must be ('auto' or absent: the first row decides) */
  format?: DatasetKind | 'auto';
}

/** Reads a JSONL dataset. The file is read in 1 MiB chunks and split on
 * '\n' bytes, so only one line's text is alive at a time beside the parsed
 * rows. CRLF line ends and a UTF-8 byte-order mark are accepted; invalid
 * UTF-8 and a line over the limit are errors naming the line. */
export function readJsonl(file: string, opts: ReadJsonlOptions = {}): Dataset {
  const maxLine = opts.maxLineBytes ?? JSONL_MAX_LINE_BYTES;
  if (!Number.isSafeInteger(maxLine) || maxLine < 1) throw new RangeError(`readJsonl: maxLineBytes must be a positive integer, got ${maxLine}`);
  const tooLong = (line: number): Error => new Error(`${file}:${line}: line longer than ${maxLine % (1 << 20) === 0 ? `${maxLine >> 20} MiB` : `${maxLine} bytes`}; refusing it`);
  const rows = new RowCollector(parseDatasetFormat(opts.format));
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  let lineNo = 0;
  const handleLine = (bytes: Uint8Array): void => {
    lineNo++;
    const where = `${file}:${lineNo}`;
    let line: string;
    try {
      line = decoder.decode(bytes);
    } catch {
      throw new Error(`${where}: invalid UTF-8`);
    }
    if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1); // the file's byte-order mark
    if (line.trim() === '') return;
    let v: unknown;
    try {
      checkJsonDepth(line, where);
      v = JSON.parse(line);
    } catch (e) {
      throw new Error((e as Error).message.startsWith(where) ? (e as Error).message : `${where}: invalid JSON: ${(e as Error).message}`);
    }
    rows.add(v, where);
  };

  let fd: number;
  if (!existsSync(file)) throw new Error(`${file}: file not found`);
  try {
    fd = openRegularFile(file, 'JSONL dataset');
  } catch (e) {
    // openRegularFile's messages start with the path already (a directory, a FIFO)
    const msg = (e as Error).message;
    throw new Error(msg.startsWith(file) ? msg : `${file}: cannot open: ${msg}`);
  }
  try {
    const chunk = Buffer.allocUnsafe(1 << 20);
    // pieces of the unfinished line, copied out because `chunk` is reused
    // (a list, so a line longer than a chunk is joined once, not re-copied per chunk)
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, chunk, 0, chunk.length, null);
      } catch (e) {
        throw new Error(`${file}: cannot read: ${(e as Error).message}`);
      }
      if (n === 0) break;
      const buf = chunk.subarray(0, n);
      let start = 0;
      for (let nl = buf.indexOf(0x0a, start); nl !== -1; nl = buf.indexOf(0x0a, start)) {
        const head = buf.subarray(start, nl);
        if (pendingBytes + head.length > maxLine) throw tooLong(lineNo + 1);
        handleLine(pending.length ? Buffer.concat([...pending, head]) : head);
        pending = [];
        pendingBytes = 0;
        start = nl + 1;
      }
      if (start < n) {
        pending.push(Buffer.from(buf.subarray(start)));
        pendingBytes += n - start;
        // a line this long is not a dataset row (and past ~512 MB no string can hold it)
        if (pendingBytes > maxLine) throw tooLong(lineNo + 1);
      } else {
        pendingBytes = 0;
      }
    }
    if (pending.length) handleLine(Buffer.concat(pending));
  } finally {
    closeSync(fd);
  }
  return rows.finish(file);
}

/** A dataset from rows in memory ({text}, {prompt, completion} or
 * {messages} objects), checked like a file; `source` names it in errors
 * (`source[i]`). */
export function datasetFromRows(rows: readonly unknown[], source = 'rows', format?: DatasetKind | 'auto'): Dataset {
  if (!Array.isArray(rows)) throw new Error(`${source}: expected an array of rows`);
  const c = new RowCollector(parseDatasetFormat(format));
  rows.forEach((r, i) => c.add(r, `${source}[${i}]`));
  return c.finish(source);
}

/** A language-modelling dataset from texts. */
export function textDataset(texts: readonly string[], source = 'texts'): Dataset {
  return datasetFromRows(texts.map((text) => ({ text })), source);
}

/** A supervised dataset from prompt/completion pairs. */
export function sftDataset(pairs: readonly SftRow[], source = 'pairs'): Dataset {
  return datasetFromRows(pairs, source);
}

/** A chat dataset from conversations (each a list of {role, content} messages). */
export function chatDataset(conversations: readonly (readonly ChatMessage[])[], source = 'chats'): Dataset {
  return datasetFromRows(conversations.map((messages) => ({ messages })), source, 'chat');
}
