// The tokenizer the tasks use with a base model: the base's own
// tokenizer.json (a Hugging Face checkpoint brought with --model / base.hfDir)
// when its directory has one, else the byte tokenizer (the built-in presets,
// which are pretrained on bytes, and checkpoints without a tokenizer file).
// With a pretrained checkpoint, byte ids would index embedding rows that mean
// other tokens, so the tasks would measure how fast it relearns from noise.
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ByteTokenizer, HF_TOKENIZER_CONFIG_FILE, HF_TOKENIZER_FILE, HfTokenizer, type Tokenizer } from '@tunebench/core';

const BYTE = new ByteTokenizer();
const loaded = new Map<string, Tokenizer>();

/** Whether `baseDir` has a tokenizer file the tasks will use. */
export function hasOwnTokenizer(baseDir: string | null | undefined): baseDir is string {
  return !!baseDir && existsSync(join(baseDir, HF_TOKENIZER_FILE));
}

/** The tasks' tokenizer for a base directory (loaded once per directory and
 * version of its files); throws saying what is wrong with a tokenizer file
 * that cannot be used. */
export function taskTokenizer(baseDir?: string | null): Tokenizer {
  if (!hasOwnTokenizer(baseDir)) return BYTE;
  const version = (f: string) => { try { const st = statSync(join(baseDir, f)); return `${st.size}:${st.mtimeMs}`; } catch { return '-'; } };
  const key = `${baseDir}\0${version(HF_TOKENIZER_FILE)}\0${version(HF_TOKENIZER_CONFIG_FILE)}`;
  let t = loaded.get(key);
  if (!t) {
    t = HfTokenizer.fromDir(baseDir);
    loaded.set(key, t);
  }
  return t;
}

/** The record's setting for a run on this base: {} with the byte tokenizer
 * (records as before), else { tokenizer: 'hf:<dir>' }. */
export function tokenizerSetting(baseDir?: string | null): { tokenizer?: string } {
  return hasOwnTokenizer(baseDir) ? { tokenizer: taskTokenizer(baseDir).name } : {};
}

/** The largest id a tokenizer gives: its vocabulary's last, or an added token's above it. */
export function maxTokenId(tok: Tokenizer): number {
  let top = tok.vocabSize - 1;
  for (const id of tok.specialTokens?.().values() ?? []) top = Math.max(top, id);
  return top;
}
