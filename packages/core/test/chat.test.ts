// Chat rows: rendering with a model's chat template (ChatML and Llama 3
// style templates written here, a template whose prefixes are not stable,
// the built-in default), targets on the assistant turns only, padding and
// packing, and every bad row or template refused naming file:line.
import { test } from 'node:test';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  ByteTokenizer, ChatTemplate, DEFAULT_CHAT_TEMPLATE, HfTokenizer, chatDataset, encodeChat, gpt2ByteToUnicode, packChats, padChats,
  prepareDataset, readJsonl, type ChatMessage, type ChatRow, type Tokenizer, type TokenRows,
} from '../src/index.js';

const I = -100;
const b = (s: string) => [...Buffer.from(s, 'utf8')];

let tmp: string | null = null;
function tmpFile(name: string, content: string): string {
  tmp ??= mkdtempSync(join(tmpdir(), 'tb-chat-'));
  const f = join(tmp, name);
  writeFileSync(f, content);
  return f;
}
function tmpDir(name: string, files: Record<string, string>): string {
  tmp ??= mkdtempSync(join(tmpdir(), 'tb-chat-'));
  const d = join(tmp, name);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  for (const [f, text] of Object.entries(files)) writeFileSync(join(d, f), text);
  return d;
}
process.on('exit', () => { if (tmp) rmSync(tmp, { recursive: true, force: true }); });

// A byte-level tokenizer.json (GPT-2 byte alphabet, no merges): byte v has
// id v, so plain text encodes to its UTF-8 bytes and the expected ids are
// easy to write; the added tokens are the chat markers of both templates.
const ADDED = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'];
const ID: Record<string, number> = Object.fromEntries(ADDED.map((t, k) => [t, 256 + k]));
function markerTokenizerJson(): Record<string, unknown> {
  const byteChars = gpt2ByteToUnicode();
  const vocab: Record<string, number> = {};
  for (let v = 0; v < 256; v++) vocab[byteChars[v]] = v;
  for (const t of ADDED) vocab[t] = ID[t];
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: ADDED.map((content) => ({ id: ID[content], content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}

// ChatML, as Qwen2-style models write it: a default system turn when the
// conversation has none.
const CHATML = [
  "{%- for message in messages -%}",
  "{%- if loop.first and messages[0]['role'] != 'system' -%}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}{%- endif -%}",
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}",
  "{%- endfor -%}",
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
].join('');

// Llama 3 style: BOS first, a header per turn, the content trimmed, <|eot_id|>.
const LLAMA3 = [
  "{%- for message in messages -%}",
  "{%- set turn = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' -%}",
  "{%- if loop.index0 == 0 -%}{%- set turn = bos_token + turn -%}{%- endif -%}",
  "{{- turn -}}",
  "{%- endfor -%}",
  "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}",
].join('');

function modelDir(name: string, config: Record<string, unknown>): string {
  return tmpDir(name, { 'tokenizer.json': JSON.stringify(markerTokenizerJson()), 'tokenizer_config.json': JSON.stringify(config) });
}

/** The ids the mask marks as targets, in order. */
function targetIds(ids: number[], mask: Uint8Array): number[] {
  return ids.filter((_, t) => mask[t]);
}

const CONVO: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: '2+2?' },
  { role: 'assistant', content: '4' },
];

test('ChatML template from tokenizer_config.json: exact text, ids with the markers as their tokens, targets on assistant content + <|im_end|>', () => {
  const dir = modelDir('chatml', { chat_template: CHATML, eos_token: '<|im_end|>', pad_token: '<|endoftext|>', bos_token: null });
  const tok = HfTokenizer.fromDir(dir);
  const t = ChatTemplate.fromDir(dir)!;
  assert.equal(t.specials.eos_token, '<|im_end|>');
  const e = encodeChat(tok, t, CONVO, 'x.jsonl:1');
  assert.equal(e.text,
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n'
    + '<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n');
  const S = ID['<|im_start|>'], E = ID['<|im_end|>'];
  assert.deepEqual(e.ids, [
    S, ...b('system\nBe brief.'), E, ...b('\n'), S, ...b('user\nHi'), E, ...b('\n'), S, ...b('assistant\n'), ...b('Hello!'), E, ...b('\n'),
    S, ...b('user\n2+2?'), E, ...b('\n'), S, ...b('assistant\n'), ...b('4'), E, ...b('\n'),
  ]);
  assert.deepEqual(targetIds(e.ids, e.mask), [...b('Hello!'), E, ...b('4'), E]);
  // the masked positions are exactly the two assistant runs (contiguous), nothing of the headers
  const firstT = e.mask.indexOf(1);
  assert.deepEqual(e.ids.slice(firstT - 10, firstT), b('assistant\n'));
  assert.equal(e.ids[e.lastStart], b('4')[0]);
  // no system message: the template's own default system turn, still outside the targets
  const e2 = encodeChat(tok, t, CONVO.slice(1, 3), 'x.jsonl:2');
  assert.ok(e2.text.startsWith('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi'));
  assert.deepEqual(targetIds(e2.ids, e2.mask), [...b('Hello!'), E]);
  // label candidates: the last turn only
  const e3 = encodeChat(tok, t, CONVO, 'x.jsonl:1', { lastAssistantOnly: true });
  assert.deepEqual(targetIds(e3.ids, e3.mask), [...b('4'), E]);
  assert.deepEqual(e3.ids, e.ids);
});

test('Llama 3 style template: bos_token from the config, trimmed content, targets on content + <|eot_id|>', () => {
  const dir = modelDir('llama3', { chat_template: LLAMA3, bos_token: '<|begin_of_text|>', eos_token: { content: '<|eot_id|>', special: true } });
  const tok = HfTokenizer.fromDir(dir);
  const t = ChatTemplate.fromDir(dir)!;
  const msgs: ChatMessage[] = [
    { role: 'system', content: 'You answer in one word.' },
    { role: 'user', content: 'Capital of France?' },
    { role: 'assistant', content: ' Paris. ' },
    { role: 'user', content: 'And of Italy?' },
    { role: 'assistant', content: 'Rome.' },
  ];
  const e = encodeChat(tok, t, msgs, 'y.jsonl:3');
  const H = (role: string) => [ID['<|start_header_id|>'], ...b(role), ID['<|end_header_id|>'], ...b('\n\n')];
  const EOT = ID['<|eot_id|>'];
  assert.equal(e.text,
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou answer in one word.<|eot_id|>'
    + '<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>'
    + '<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>'
    + '<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>'
    + '<|start_header_id|>assistant<|end_header_id|>\n\nRome.<|eot_id|>');
  assert.deepEqual(e.ids, [
    ID['<|begin_of_text|>'], ...H('system'), ...b('You answer in one word.'), EOT, ...H('user'), ...b('Capital of France?'), EOT,
    ...H('assistant'), ...b('Paris.'), EOT, ...H('user'), ...b('And of Italy?'), EOT, ...H('assistant'), ...b('Rome.'), EOT,
  ]);
  assert.deepEqual(targetIds(e.ids, e.mask), [...b('Paris.'), EOT, ...b('Rome.'), EOT]);
  // padded rows: the targets are the next tokens where the mask is set; BOS is never one
  const rows = padChats(tok, [{ messages: msgs }], 128, 'y', { template: t });
  const r = rows.row(0);
  const want: number[] = [];
  for (let k = 0; k + 1 < e.ids.length; k++) want.push(e.mask[k + 1] ? e.ids[k + 1] : I);
  assert.deepEqual([...r.targets.subarray(0, want.length)], want);
  assert.deepEqual([...r.ids.subarray(0, e.ids.length)], e.ids);
  assert.equal(rows.stats.targetTokens, b('Paris.').length + b('Rome.').length + 2);
});

test('chat_template as a list: the one named "default"; none named so, or one that does not parse, is an error naming the file', () => {
  const list = [{ name: 'tool_use', template: '{{ 1 }}' }, { name: 'default', template: CHATML }];
  const t = ChatTemplate.fromTokenizerConfig({ chat_template: list, eos_token: '<|im_end|>' }, 'cfg.json')!;
  assert.equal(t.text, CHATML);
  assert.match(t.source, /cfg\.json \(chat_template "default"\)/);
  assert.throws(() => ChatTemplate.fromTokenizerConfig({ chat_template: [{ name: 'tool_use', template: 'x' }] }, 'cfg.json'),
    /^Error: cfg\.json: "chat_template" lists no template named "default" \(it has "tool_use"\)/);
  assert.throws(() => ChatTemplate.fromTokenizerConfig({ chat_template: 7 }, 'cfg.json'), /cfg\.json: "chat_template" must be a string or a list/);
  assert.throws(() => ChatTemplate.fromTokenizerConfig({ chat_template: '{% for m in messages %}{{ m.content }' }, 'cfg.json'), /^Error: cfg\.json: the chat template does not parse: /);
  assert.equal(ChatTemplate.fromTokenizerConfig({ eos_token: '</s>' }, 'cfg.json'), null, 'no template: null (the caller uses the default)');
  const noConfig = tmpDir('no-config', {});
  assert.equal(ChatTemplate.fromDir(noConfig), null);
  assert.equal(ChatTemplate.forModel(noConfig, new ByteTokenizer()).text, DEFAULT_CHAT_TEMPLATE);
});

test('default template (built-in presets, byte tokenizer): role headers, <s>/</s> as BOS/EOS ids, targets on content + EOS', () => {
  const tok = new ByteTokenizer();
  const t = ChatTemplate.default(tok);
  assert.deepEqual(t.specials, { bos_token: '<s>', eos_token: '</s>' });
  assert.equal(t.render(CONVO.slice(0, 3)), '<s><|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n');
  assert.equal(t.render(CONVO.slice(0, 2), true), '<s><|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n');
  const e = encodeChat(tok, t, CONVO.slice(1, 3), 'd');
  assert.deepEqual(e.ids, [256, ...b('<|user|>\nHi'), 257, 10, ...b('<|assistant|>\n'), ...b('Hello!'), 257, 10]);
  assert.deepEqual(targetIds(e.ids, e.mask), [...b('Hello!'), 257]);
  // the same through prepareDataset (no template given: the default) and padded rows
  const rows = prepareDataset(chatDataset([CONVO.slice(1, 3)]), tok, 40, { packing: 'pad' });
  const ids = [256, ...b('<|user|>\nHi'), 257, 10, ...b('<|assistant|>\n'), ...b('Hello!'), 257, 10];
  const targets = ids.slice(1).map((id, k) => (k + 1 >= 1 + 11 + 2 + 14 ? id : I));
  targets[targets.length - 1] = I;  // the newline after EOS is not a target
  assert.deepEqual([...rows.row(0).ids], [...ids, ...Array(40 - ids.length).fill(258)]);
  assert.deepEqual([...rows.row(0).targets], [...targets, ...Array(40 - targets.length).fill(I)]);
});

test('a template whose prefix renders are not prefixes of the whole (system text on the last user turn) still gives exact spans', () => {
  // Mistral-like: the system message is put into the last user turn; so
  // messages[:i] puts it elsewhere than the whole conversation does
  const MOVING = [
    "{%- set ns = namespace(last=-1) -%}",
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}",
    "{{- bos_token -}}",
    "{%- for m in messages -%}",
    "{%- if m['role'] == 'user' -%}",
    "{%- if loop.index0 == ns.last and messages[0]['role'] == 'system' -%}{{- '[INST] ' + messages[0]['content'] + '\\n\\n' + m['content'] + ' [/INST]' -}}",
    "{%- else -%}{{- '[INST] ' + m['content'] + ' [/INST]' -}}{%- endif -%}",
    "{%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'] + eos_token -}}{%- endif -%}",
    "{%- endfor -%}",
  ].join('');
  const tok = new ByteTokenizer();
  const t = new ChatTemplate(MOVING, { source: 'moving.json', specials: { bos_token: '<s>', eos_token: '</s>' } });
  // the prefix render for the first answer is not a prefix of the whole
  assert.ok(!t.render(CONVO).startsWith(t.render(CONVO.slice(0, 2), true)));
  const e = encodeChat(tok, t, CONVO, 'm');
  assert.equal(e.text, '<s>[INST] Hi [/INST] Hello!</s>[INST] Be brief.\n\n2+2? [/INST] 4</s>');
  assert.deepEqual(targetIds(e.ids, e.mask), [...b('Hello!'), 257, ...b('4'), 257]);
});

test('a template that rewrites the assistant content, or fails on a row, is an error naming file:line and the reason', () => {
  const tok = new ByteTokenizer();
  const UPPER = "{%- for m in messages -%}{{- m['role'] + ': ' + (m['content'] | upper if m['role'] == 'assistant' else m['content']) + '\\n' -}}{%- endfor -%}";
  const upper = new ChatTemplate(UPPER, { source: 'upper.json' });
  assert.throws(() => encodeChat(tok, upper, CONVO.slice(1, 3), 'f.jsonl:4'),
    /^Error: f\.jsonl:4: cannot find the assistant turns in the chat template's rendering \(upper\.json\): .*changes assistant message 1's content/);
  const STRICT = "{%- if messages[0]['role'] != 'user' -%}{{- raise_exception('Conversations must start with a user message') -}}{%- endif -%}"
    + "{%- for m in messages -%}{{- m['content'] -}}{%- endfor -%}";
  const dir = modelDir('strict', { chat_template: STRICT });
  const f = tmpFile('strict.jsonl', [
    JSON.stringify({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }),
    '',
    JSON.stringify({ messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }),
  ].join('\n'));
  const ds = readJsonl(f);
  assert.equal(ds.kind, 'chat');
  assert.throws(() => prepareDataset(ds, tok, 64, { chatTemplate: ChatTemplate.fromDir(dir)! }),
    (e: Error) => e.message === `${f}:3: the chat template (${join(dir, 'tokenizer_config.json')}) failed on this row: Conversations must start with a user message`);
});

test('bad chat rows: each is an error naming file:line and the problem', () => {
  const ok = JSON.stringify({ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }] });
  const cases: [string, string, RegExp][] = [
    ['role.jsonl', `${ok}\n{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]}\n`, /:2: messages\[1\]: unknown role "tool" \(a message's role is one of system, user, assistant\)/],
    ['norole.jsonl', '{"messages": [{"content": "q"}]}\n', /:1: messages\[0\] has no "role"/],
    ['empty.jsonl', `${ok}\n${ok}\n{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}\n`, /:3: messages\[1\] \(assistant\): "content" is empty/],
    ['blank.jsonl', '{"messages": [{"role": "user", "content": "  \\n"}, {"role": "assistant", "content": "a"}]}\n', /:1: messages\[0\] \(user\): "content" is empty/],
    ['ctype.jsonl', '{"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, {"role": "assistant", "content": "a"}]}\n', /:1: messages\[0\] \(user\): "content" must be a string, got an array/],
    ['cnull.jsonl', '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null}]}\n', /:1: messages\[1\] \(assistant\): "content" must be a string, got null/],
    ['noassist.jsonl', `${ok}\n{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}\n`, /:2: no assistant message/],
    ['notarray.jsonl', '{"messages": {"role": "user", "content": "q"}}\n', /:1: "messages" must be an array of \{"role", "content"\} objects, got object/],
    ['emptyarr.jsonl', '{"messages": []}\n', /:1: "messages" is empty/],
    ['msgtype.jsonl', '{"messages": ["hi"]}\n', /:1: messages\[0\] must be an object \{"role", "content"\}, got string/],
    ['both.jsonl', '{"messages": [], "prompt": "p", "completion": "c"}\n', /:1: a row has either "messages" \(chat\), "text" or "prompt"\/"completion", not several/],
    ['mixed.jsonl', `${ok}\n\n{"prompt": "p", "completion": "c"}\n`, /:3: a \{"prompt", "completion"\} row, but the dataset started with a \{"messages"\} \(chat\) row \(.*mixed\.jsonl:1\)/],
    ['mixed2.jsonl', `{"text": "t"}\n${ok}\n`, /:2: a \{"messages"\} \(chat\) row, but the dataset started with a \{"text"\} row/],
  ];
  for (const [name, content, re] of cases) {
    const f = tmpFile(name, content);
    assert.throws(() => readJsonl(f), (e: Error) => {
      assert.ok(e.message.startsWith(`${f}:`), `${name}: message does not start with the file: ${e.message}`);
      assert.match(e.message, re, name);
      return true;
    });
  }
  // the format set explicitly: every row must be of it
  const sft = tmpFile('sft.jsonl', '{"prompt": "p", "completion": "c"}\n');
  assert.throws(() => readJsonl(sft, { format: 'chat' }), /sft\.jsonl:1: a \{"prompt", "completion"\} row, but the format was set to chat/);
  assert.throws(() => readJsonl(sft, { format: 'nope' as never }), /format must be auto, text, sft \(prompt\/completion\) or chat/);
  const chat = tmpFile('chat.jsonl', `${ok}\n`);
  assert.deepEqual(readJsonl(chat, { format: 'chat' }), {
    kind: 'chat', source: chat, rows: [{ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }], where: `${chat}:1` }],
  });
  assert.equal(readJsonl(chat, { format: 'auto' }).kind, 'chat');
  // extra keys on rows and messages are ignored
  const extra = tmpFile('extra.jsonl', '{"id": 3, "messages": [{"role": "user", "content": "q", "name": "x"}, {"role": "assistant", "content": "a"}]}\n');
  assert.deepEqual((readJsonl(extra).rows[0] as ChatRow).messages, [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }]);
});

const rowsOf = (r: TokenRows) => Array.from({ length: r.numRows }, (_, i) => ({ ids: [...r.row(i).ids], targets: [...r.row(i).targets] }));

test('packing conversations: each keeps the targets it has alone in a padded row; segments and positions restart', () => {
  const tok: Tokenizer = new ByteTokenizer();
  const convos: ChatMessage[][] = [
    [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }],
    [{ role: 'user', content: 'cc' }, { role: 'assistant', content: 'd' }, { role: 'user', content: 'e' }, { role: 'assistant', content: 'ff' }],
    [{ role: 'system', content: 's' }, { role: 'user', content: 'g' }, { role: 'assistant', content: 'h' }],
  ];
  const ds = chatDataset(convos);
  const T = 96;
  const padded = prepareDataset(ds, tok, T, { packing: 'pad' });
  const packed = prepareDataset(ds, tok, T, { packing: 'pack' });
  assert.equal(packed.stats.mode, 'pack-examples');
  assert.ok(packed.numRows < padded.numRows, `${packed.numRows} packed rows for ${padded.numRows} conversations`);
  assert.equal(packed.stats.targetTokens, padded.stats.targetTokens);
  // every conversation's (ids, targets) as a segment of a packed row equals its padded row's real part
  const segs: { ids: number[]; targets: number[] }[] = [];
  for (let r = 0; r < packed.numRows; r++) {
    const row = packed.row(r);
    const len = packed.rowLength(r);
    let start = 0;
    for (let t = 1; t <= len; t++) {
      if (t === len || row.segments![t] !== row.segments![t - 1]) {
        assert.equal(row.positions![start], 0);
        segs.push({ ids: [...row.ids.subarray(start, t)], targets: [...row.targets.subarray(start, t)] });
        start = t;
      }
    }
  }
  const alone = rowsOf(padded).map((p, i) => {
    const n = padded.rowLength(i) - 1;  // the last token (the final newline) is only a target in packing
    return { ids: p.ids.slice(0, n), targets: p.targets.slice(0, n) };
  });
  assert.deepEqual(segs, alone);
  // the two assistant turns of the second conversation are both targets
  const second = alone[1].targets.filter((x) => x !== I);
  assert.deepEqual(second, [...b('d'), 257, ...b('ff'), 257]);
});

test('a conversation longer than the row loses its start, the last assistant turn kept (BOS stays)', () => {
  const tok = new ByteTokenizer();
  const long: ChatMessage[] = [
    { role: 'user', content: 'x'.repeat(60) },
    { role: 'assistant', content: 'first' },
    { role: 'user', content: 'y'.repeat(20) },
    { role: 'assistant', content: 'last' },
  ];
  const rows = padChats(tok, [{ messages: long }], 48);
  const r = rowsOf(rows)[0];
  assert.equal(r.ids[0], 256, 'BOS kept at position 0');
  assert.equal(rows.stats.promptTruncated, 1);
  assert.ok(rows.stats.droppedPromptTokens > 60);
  const targets = r.targets.filter((x) => x !== I);
  assert.deepEqual(targets, [...b('last'), 257], 'the first answer went with the cut, the last answer stayed');
  // the tail alone too long: cut at its end
  const tight = padChats(tok, [{ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'z'.repeat(40) }] }], 16);
  assert.equal(tight.stats.completionTruncated, 1);
  assert.equal(rowsOf(tight)[0].ids[0], 256);
  assert.deepEqual(rowsOf(tight)[0].targets.filter((x) => x !== I), b('z'.repeat(16)));
});

test('property: for random conversations the targets are exactly each assistant content and its end-of-turn token', () => {
  const tok = new ByteTokenizer();
  const EOS = 257;
  // contents: any text with something besides whitespace, without the marker texts ('<' starts every one here)
  const content = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 12 }).filter((s) => s.trim() !== '' && !s.includes('<') && !/[\uE000\uE001]/.test(s));
  const message = fc.record({ role: fc.constantFrom('system' as const, 'user' as const, 'assistant' as const), content });
  const convo = fc.tuple(fc.array(message, { maxLength: 6 }), content).map(([ms, last]) => [...ms, { role: 'assistant' as const, content: last }]);
  const def = ChatTemplate.default(tok);
  fc.assert(fc.property(convo, (msgs) => {
    const e = encodeChat(tok, def, msgs, 'p');
    const want = msgs.filter((m) => m.role === 'assistant').flatMap((m) => [...b(m.content), EOS]);
    assert.deepEqual(targetIds(e.ids, e.mask), want);
    // and the whole rendering is the tokens: bytes, with <s>/</s> as BOS/EOS
    assert.equal(tok.decode(e.ids), e.text.replaceAll('<s>', '').replaceAll('</s>', ''));
  }), { seed: 7, numRuns: 300 });
  // the marker fallback (the system text moves to the last user turn): same targets, found by locating each content
  const MOVING = [
    "{%- set ns = namespace(last=-1) -%}",
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}",
    "{{- bos_token -}}",
    "{%- for m in messages -%}",
    "{%- if m['role'] == 'user' -%}",
    "{%- if loop.index0 == ns.last -%}{{- '[INST] ' + messages[0]['content'] + '\\n\\n' + m['content'] + ' [/INST]' -}}",
    "{%- else -%}{{- '[INST] ' + m['content'] + ' [/INST]' -}}{%- endif -%}",
    "{%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'] + eos_token -}}{%- endif -%}",
    "{%- endfor -%}",
  ].join('');
  const moving = new ChatTemplate(MOVING, { source: 'moving', specials: { bos_token: '<s>', eos_token: '</s>' } });
  const turns = fc.tuple(content, fc.array(fc.tuple(content, content), { minLength: 2, maxLength: 4 }))
    .map(([sys, qa]) => [{ role: 'system' as const, content: sys }, ...qa.flatMap(([q, a]) => [{ role: 'user' as const, content: q }, { role: 'assistant' as const, content: a }])]);
  fc.assert(fc.property(turns, (msgs) => {
    const e = encodeChat(tok, moving, msgs, 'p');
    assert.deepEqual(targetIds(e.ids, e.mask), msgs.filter((m) => m.role === 'assistant').flatMap((m) => [...b(m.content), EOS]));
  }), { seed: 8, numRuns: 200 });
});
