// Chat rows ({"messages": [...]}) as training examples: rendered to text by
// a chat template (Jinja, run by @huggingface/jinja), tokenized with the
// model's tokenizer, and a target mask that keeps the assistant turns only.
//
// The template: a model directory's tokenizer_config.json "chat_template"
// (a string, or a list of {name, template} of which the one named "default"
// is used), or DEFAULT_CHAT_TEMPLATE for a base without one (the built-in
// presets). It is rendered with `messages`, `add_generation_prompt` and the
// special-token texts bos_token, eos_token, pad_token, unk_token (from the
// tokenizer config; for the default template, the tokenizer's own BOS/EOS
// texts), as transformers renders it.
//
// The assistant spans. Render the whole conversation once, and for each
// assistant message i the prefix before it with the generation prompt
// (messages[:i], add_generation_prompt) and the prefix through it
// (messages[:i+1]). When both are prefixes of the whole rendering, the span
// is the text between them, trailing whitespace left out: the assistant
// content and what the template closes the turn with (ChatML's <|im_end|>,
// Llama 3's <|eot_id|>, the default template's EOS). Templates whose prefix
// renders are not prefixes of the whole (one that moves the system message
// to the last user turn, say) are handled by rendering the conversation with
// each assistant content replaced by a marker: when putting the contents
// back gives exactly the whole rendering, each span is its content plus an
// end-of-turn token that follows it (after optional whitespace). When
// neither works (the template rewrites the assistant content) the row is an
// error that says so.
//
// Tokenization: the rendered text is cut at the special-token texts (the
// tokenizer's specialTokens(): BOS/EOS and a tokenizer file's added tokens),
// each becoming its id, and at the edges of the assistant spans; each piece
// in between is encoded on its own (as prompt and completion are). A message
// whose content holds a special-token text gets that token, as with any
// tokenizer that matches added tokens in text.
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import type { ChatMessage } from './jsonl.js';
import { HF_TOKENIZER_CONFIG_FILE, type Tokenizer } from './tokenizer.js';
import { checkJsonDepth } from '../util/json.js';

/** The template of a base without one: a role header line, the content, the
 * tokenizer's EOS and a newline per message, after the BOS:
 *
 *   <s><|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n
 *
 * (with the byte tokenizer, <s> and </s> are its BOS and EOS ids). The
 * generation prompt is "<|assistant|>\n", so an assistant turn's targets are
 * its content and the EOS. */
export const DEFAULT_CHAT_TEMPLATE =
  "{{- bos_token -}}" +
  "{%- for message in messages -%}" +
  "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}" +
  "{{- raise_exception('unknown role ' + message['role'] + ': the default template takes system, user and assistant') -}}" +
  "{%- endif -%}" +
  "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' -}}" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}";

/** The special-token variables a template is rendered with. */
export type ChatSpecials = Partial<Record<'bos_token' | 'eos_token' | 'pad_token' | 'unk_token', string>>;

export interface ChatTemplateOptions {
  /** names the template in errors: a tokenizer_config.json path or 'the default chat template' */
  source?: string;
  /** bos_token, eos_token, ... as the template sees them */
  specials?: ChatSpecials;
  /** further texts that end a turn, for the marker fallback (a config's added tokens) */
  markers?: readonly string[];
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A special token in tokenizer_config.json: a string or {content}. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

export class ChatTemplate {
  readonly source: string;
  readonly text: string;
  readonly specials: ChatSpecials;
  readonly markers: readonly string[];
  private readonly compiled: Template;

  /** Parses the template; a template that does not parse is an Error naming `source`. */
  constructor(text: string, opts: ChatTemplateOptions = {}) {
    this.source = opts.source ?? 'chat template';
    if (typeof text !== 'string' || text.trim() === '') throw new Error(`${this.source}: the chat template must be a non-empty string`);
    this.text = text;
    this.specials = { ...(opts.specials ?? {}) };
    this.markers = [...new Set([...Object.values(this.specials), ...(opts.markers ?? [])].filter((m): m is string => typeof m === 'string' && m.trim() !== ''))];
    let compiled: Template;
    try {
      compiled = new Template(text);
    } catch (e) {
      throw new Error(`${this.source}: the chat template does not parse: ${message(e)}`);
    }
    this.compiled = compiled;
  }

  /** The template in a parsed tokenizer_config.json, or null when it has
   * none. `file` names it in errors. */
  static fromTokenizerConfig(config: unknown, file = HF_TOKENIZER_CONFIG_FILE): ChatTemplate | null {
    if (!isObject(config)) throw new Error(`${file}: expected a JSON object`);
    const raw = config.chat_template;
    if (raw === undefined || raw === null) return null;
    let text: string;
    let source = file;
    if (typeof raw === 'string') text = raw;
    else if (Array.isArray(raw)) {
      const named = raw.filter((t): t is { name: string; template: unknown } => isObject(t) && typeof t.name === 'string');
      if (named.length !== raw.length) throw new Error(`${file}: "chat_template" is a list, so each entry must be {"name": string, "template": string}`);
      const d = named.find((t) => t.name === 'default');
      if (!d) throw new Error(`${file}: "chat_template" lists no template named "default" (it has ${named.map((t) => JSON.stringify(t.name)).join(', ') || 'none'})`);
      if (typeof d.template !== 'string') throw new Error(`${file}: the "default" chat template must be a string, got ${typeof d.template}`);
      text = d.template;
      source = `${file} (chat_template "default")`;
    } else {
      throw new Error(`${file}: "chat_template" must be a string or a list of {"name", "template"}, got ${typeof raw}`);
    }
    const specials: ChatSpecials = {};
    for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
      const t = tokenText(config[k]);
      if (t !== undefined) specials[k] = t;
    }
    const markers: string[] = [];
    if (isObject(config.added_tokens_decoder)) {
      for (const t of Object.values(config.added_tokens_decoder)) { const c = tokenText(t); if (c !== undefined) markers.push(c); }
    }
    return new ChatTemplate(text, { source, specials, markers });
  }

  /** The template of a model directory's tokenizer_config.json, or null
   * when the file is absent or has no "chat_template". */
  static fromDir(dir: string): ChatTemplate | null {
    const file = join(dir, HF_TOKENIZER_CONFIG_FILE);
    let text: string;
    try {
      if (!statSync(file).isFile()) throw new Error('not a regular file');
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new Error(`${file}: cannot read: ${message(e)}`);
    }
    let config: unknown;
    try {
      checkJsonDepth(text, file);
      config = JSON.parse(text);
    } catch (e) {
      throw new Error(message(e).startsWith(file) ? message(e) : `${file}: malformed JSON: ${message(e)}`);
    }
    return ChatTemplate.fromTokenizerConfig(config, file);
  }

  /** DEFAULT_CHAT_TEMPLATE with the tokenizer's BOS and EOS texts (empty
   * when the tokenizer has none, or no text for it). */
  static default(tok: Tokenizer): ChatTemplate {
    const specials: ChatSpecials = { bos_token: '', eos_token: '' };
    for (const [text, id] of tok.specialTokens?.() ?? []) {
      if (id === tok.bos && !specials.bos_token) specials.bos_token = text;
      if (id === tok.eos && !specials.eos_token) specials.eos_token = text;
    }
    return new ChatTemplate(DEFAULT_CHAT_TEMPLATE, { source: 'the default chat template', specials });
  }

  /** The template of a model directory when it has one, else the default. */
  static forModel(dir: string | null | undefined, tok: Tokenizer): ChatTemplate {
    return (dir ? ChatTemplate.fromDir(dir) : null) ?? ChatTemplate.default(tok);
  }

  /** The rendered text; the template's own error (raise_exception's message,
   * an undefined variable) is thrown as it is, for the caller to place. */
  render(messages: readonly ChatMessage[], addGenerationPrompt = false): string {
    const out = this.compiled.render({
      ...this.specials,
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      add_generation_prompt: addGenerationPrompt,
    });
    if (typeof out !== 'string') throw new Error(`the template rendered ${typeof out}, not text`);
    return out;
  }
}

/** A conversation rendered, tokenized and masked. */
export interface EncodedChat {
  /** the rendered text */
  text: string;
  ids: number[];
  /** mask[t] = 1: ids[t] is a target (an assistant token) */
  mask: Uint8Array;
  /** the first token of the last assistant span */
  lastStart: number;
}

export interface EncodeChatOptions {
  /** targets on the last assistant turn only (label candidates) */
  lastAssistantOnly?: boolean;
}

const SENTINEL_OPEN = '\uE000', SENTINEL_CLOSE = '\uE001';

/** Character spans [start, end) of the assistant turns in `full`, or a
 * reason why they cannot be found. */
function assistantSpans(t: ChatTemplate, messages: readonly ChatMessage[], full: string, markers: readonly string[]): [number, number][] | string {
  const assistants = messages.flatMap((m, i) => (m.role === 'assistant' ? [i] : []));
  const byPrefix = ((): [number, number][] | string => {
    const spans: [number, number][] = [];
    for (const i of assistants) {
      let p: string, q: string;
      try {
        p = t.render(messages.slice(0, i), true);
        q = t.render(messages.slice(0, i + 1), false);
      } catch (e) {
        return `rendering the messages before assistant message ${i} failed (${message(e)})`;
      }
      if (!full.startsWith(p) || !full.startsWith(q) || q.length < p.length) {
        return `the rendering of messages[0..${i}] is not the start of the whole conversation's rendering`;
      }
      let end = q.length;
      while (end > p.length && /\s/.test(full[end - 1])) end--;
      const region = full.slice(p.length, end), c = messages[i].content;
      if (!region.includes(c) && !region.includes(c.trim())) return `the text the template adds for assistant message ${i} does not hold its content`;
      if (spans.length && p.length < spans[spans.length - 1][1]) return `assistant message ${i} starts before the previous one ends`;
      spans.push([p.length, end]);
    }
    return spans;
  })();
  if (typeof byPrefix !== 'string') return byPrefix;

  // the marker fallback: each assistant content replaced by a marker the template passes through
  const bySentinel = ((): [number, number][] | string => {
    if (messages.some((m) => m.content.includes(SENTINEL_OPEN) || m.content.includes(SENTINEL_CLOSE))) return 'a message holds the private-use characters U+E000/U+E001';
    const sentinel = (k: number) => `${SENTINEL_OPEN}${k}${SENTINEL_CLOSE}`;
    let r: string;
    try {
      r = t.render(messages.map((m, i) => (m.role === 'assistant' ? { role: m.role, content: sentinel(assistants.indexOf(i)) } : m)), false);
    } catch (e) {
      return `rendering with markers for the assistant contents failed (${message(e)})`;
    }
    const spans: [number, number][] = [];
    let rPos = 0, fPos = 0;
    for (let k = 0; k < assistants.length; k++) {
      const at = r.indexOf(sentinel(k), rPos);
      if (at < 0 || r.indexOf(sentinel(k), at + 1) >= 0) return `the template does not place assistant message ${assistants[k]}'s content once, as it is`;
      const literal = r.slice(rPos, at);
      if (full.slice(fPos, fPos + literal.length) !== literal) return 'the template renders other text around the assistant contents when they change';
      fPos += literal.length;
      rPos = at + sentinel(k).length;
      const next = r.indexOf(SENTINEL_OPEN, rPos), after = r.slice(rPos, next < 0 ? r.length : next);
      const c = messages[assistants[k]].content;
      const chosen = [c, c.trim()].find((x) => full.startsWith(x, fPos) && full.startsWith(after, fPos + x.length));
      if (chosen === undefined) return `the template changes assistant message ${assistants[k]}'s content`;
      let end = fPos + chosen.length;
      // the end-of-turn token: a marker after optional whitespace
      let look = end;
      while (look < full.length && /\s/.test(full[look])) look++;
      const marker = markers.filter((m) => full.startsWith(m, look)).sort((a, b) => b.length - a.length)[0];
      if (marker !== undefined) end = look + marker.length;
      spans.push([fPos, end]);
      fPos += chosen.length;
    }
    if (r.slice(rPos) !== full.slice(fPos)) return 'the template renders other text after the assistant contents when they change';
    return spans;
  })();
  if (typeof bySentinel !== 'string') return bySentinel;
  return `${byPrefix}; and ${bySentinel}`;
}

const specialCache = new WeakMap<Tokenizer, Map<string, { text: string; id: number }[]>>();

/** The texts a rendering is cut at, each standing for one id, by first character. */
function specialIndex(tok: Tokenizer): Map<string, { text: string; id: number }[]> {
  const cached = specialCache.get(tok);
  if (cached) return cached;
  const byFirst = new Map<string, { text: string; id: number }[]>();
  for (const [text, id] of tok.specialTokens?.() ?? []) {
    if (text === '') continue;
    const list = byFirst.get(text[0]) ?? [];
    list.push({ text, id });
    byFirst.set(text[0], list);
  }
  for (const list of byFirst.values()) list.sort((a, b) => b.text.length - a.text.length);
  specialCache.set(tok, byFirst);
  return byFirst;
}

/** Token ids of `text`: special-token texts become their ids, the rest is encoded. */
function encodePiece(tok: Tokenizer, text: string, specials: Map<string, { text: string; id: number }[]>, out: number[]): void {
  let from = 0;
  const flush = (to: number) => { if (to > from) for (const id of tok.encode(text.slice(from, to))) out.push(id); };
  for (let i = 0; i < text.length;) {
    const hit = specials.get(text[i])?.find((s) => text.startsWith(s.text, i));
    if (hit) {
      flush(i);
      out.push(hit.id);
      i += hit.text.length;
      from = i;
    } else i++;
  }
  flush(text.length);
}

/** Renders one conversation with the template, finds its assistant spans,
 * tokenizes it and masks everything but the assistant tokens. Every error
 * starts with `where` (file:line) and names the template. */
export function encodeChat(tok: Tokenizer, template: ChatTemplate, messages: readonly ChatMessage[], where: string,
                           opts: EncodeChatOptions = {}): EncodedChat {
  if (!messages.some((m) => m.role === 'assistant')) throw new Error(`${where}: no assistant message (the loss is on the assistant turns, so a chat row needs at least one)`);
  let full: string;
  try {
    full = template.render(messages, false);
  } catch (e) {
    throw new Error(`${where}: the chat template (${template.source}) failed on this row: ${message(e)}`);
  }
  const specials = specialIndex(tok);
  const markers = [...new Set([...template.markers, ...[...specials.values()].flat().map((s) => s.text)])];
  const found = assistantSpans(template, messages, full, markers);
  if (typeof found === 'string') {
    throw new Error(`${where}: cannot find the assistant turns in the chat template's rendering (${template.source}): ${found}. `
      + 'The loss needs each assistant turn\'s tokens: use a template that renders the assistant content as it is');
  }
  const spans = opts.lastAssistantOnly ? found.slice(-1) : found;
  const ids: number[] = [];
  const targetRuns: [number, number][] = [];
  let pos = 0;
  try {
    for (const [s, e] of spans) {
      encodePiece(tok, full.slice(pos, s), specials, ids);
      const a = ids.length;
      encodePiece(tok, full.slice(s, e), specials, ids);
      targetRuns.push([a, ids.length]);
      pos = e;
    }
    encodePiece(tok, full.slice(pos), specials, ids);
  } catch (e) {
    throw new Error(`${where}: ${message(e)}`);
  }
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= tok.vocabSize) {
      throw new Error(`${where}: tokenizer ${tok.name} produced id ${id}, outside its vocabulary [0, ${tok.vocabSize})`);
    }
  }
  const mask = new Uint8Array(ids.length);
  for (const [a, b] of targetRuns) mask.fill(1, a, b);
  const last = targetRuns[targetRuns.length - 1];
  if (last[1] <= last[0]) throw new Error(`${where}: the last assistant turn has no tokens after rendering (${template.source})`);
  return { text: full, ids, mask, lastStart: last[0] };
}

/** The content of the last assistant message (what label accuracy compares). */
export function lastAssistantContent(messages: readonly ChatMessage[]): string {
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === 'assistant') return messages[i].content;
  throw new Error('lastAssistantContent: the conversation has no assistant message');
}

/** The conversation with its last assistant message's content replaced (a label candidate). */
export function withLastAssistant(messages: readonly ChatMessage[], content: string): ChatMessage[] {
  const out = messages.map((m) => ({ ...m }));
  for (let i = out.length - 1; i >= 0; i--) if (out[i].role === 'assistant') { out[i].content = content; return out; }
  throw new Error('withLastAssistant: the conversation has no assistant message');
}
