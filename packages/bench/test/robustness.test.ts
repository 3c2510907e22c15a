// Suite files and CLI options made hostile (issue 11): each is refused by the
// CLI with exit code 2 and a message naming the key and the problem, before
// anything is created (--out does not appear) or removed (an existing
// results.jsonl stays as it was).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configToHf, preset } from '@tunebench/core';
import { loadSuiteFile } from '../src/suite.js';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');

function cli(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(pkg, 'src', 'cli.ts'), ...args], { cwd: pkg, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A suite that validates (tiny preset, one LoRA run, a few steps, no peers, no kernels). */
function goodSuite(): Record<string, any> {
  return {
    name: 'robust', base: { preset: 'tiny', pretrainSteps: 10 }, tasks: ['spam'],
    methods: [{ name: 'lora', lr: 2e-3, label: 'lora-r8', r: 8, alpha: 16 }],
    shared: { steps: 4, batchSize: 2, seqLen: 32, seed: 0, schedule: 'constant', warmupSteps: 0, maxTrain: 8, maxTest: 8 },
    kernels: false,
  };
}

const scratch = mkdtempSync(join(tmpdir(), 'tb-bench-robust-'));
process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));
let n = 0;

/** Writes the suite (an object, or raw text), runs the CLI on it with a fresh
 * --out that must not exist afterwards, and expects exit 2 and `want`. */
function refused(suite: unknown, want: RegExp): void {
  const dir = join(scratch, `case-${n++}`);
  mkdirSync(dir);
  const file = join(dir, 'suite.json');
  writeFileSync(file, typeof suite === 'string' ? suite : JSON.stringify(suite));
  const out = join(dir, 'out');
  const r = cli('--suite', file, '--out', out);
  assert.equal(r.code, 2, `exit ${r.code}\n${r.err}`);
  assert.match(r.err, want);
  assert.match(r.err, /Run with --help/);
  assert.doesNotMatch(r.err, /suite \S+: \d+ task/, 'nothing ran');
  assert.equal(existsSync(out), false, '--out was not created');
}

/** The same with an --out that exists and holds a results.jsonl: left exactly as it was. */
function refusedKeepingResults(suite: unknown, want: RegExp): void {
  const dir = join(scratch, `case-${n++}`);
  const out = join(dir, 'out');
  mkdirSync(out, { recursive: true });
  const results = join(out, 'results.jsonl');
  const content = `${JSON.stringify({ id: 'spam/lora-r8/earlier', status: 'ok' })}\n`;
  writeFileSync(results, content);
  const mtime = statSync(results).mtimeMs;
  const file = join(dir, 'suite.json');
  writeFileSync(file, JSON.stringify(suite));
  const r = cli('--suite', file, '--out', out);
  assert.equal(r.code, 2, `exit ${r.code}\n${r.err}`);
  assert.match(r.err, want);
  assert.deepEqual(readdirSync(out), ['results.jsonl'], 'nothing created in --out');
  assert.equal(readFileSync(results, 'utf8'), content, 'results.jsonl untouched');
  assert.equal(statSync(results).mtimeMs, mtime, 'results.jsonl not rewritten');
}

const edit = (f: (s: Record<string, any>) => void): Record<string, any> => { const s = goodSuite(); f(s); return s; };

test('the control suite validates (each case below differs from it by one edit)', () => {
  const file = join(scratch, 'good.json');
  writeFileSync(file, JSON.stringify(goodSuite()));
  assert.equal(loadSuiteFile(file).name, 'robust');
});

test('suite: unknown base.preset is refused', () => {
  refused(edit((s) => { s.base.preset = 'gpt-5'; }), /base\.preset: must be a preset: tiny, mini, small/);
});

for (const v of [-5, 1.5, '5', 1e12]) {
  test(`suite: base.pretrainSteps ${JSON.stringify(v)} is refused`, () => {
    refused(edit((s) => { s.base.pretrainSteps = v; }), /base\.pretrainSteps: /);
  });
}

test('suite: base.hfDir that does not exist is refused', () => {
  refused(edit((s) => { s.base = { hfDir: join(scratch, 'no-such-model') }; }), /base\.hfDir .*no-such-model has no config\.json/);
});

test('suite: base.hfDir that is a file, not a directory, is refused', () => {
  const f = join(scratch, 'model-file');
  writeFileSync(f, 'x');
  refused(edit((s) => { s.base = { hfDir: f }; }), /base\.hfDir .*model-file has no config\.json/);
});

test('suite: base.hfDir that is not a string, or empty, is refused', () => {
  refused(edit((s) => { s.base = { hfDir: 42 }; }), /base\.hfDir: /);
  refused(edit((s) => { s.base = { hfDir: '' }; }), /base\.hfDir: /);
});

test('suite: base.hfDir whose config.json is refused by the loader (1e7 layers) is refused before anything runs', () => {
  const model = join(scratch, 'huge-model');
  mkdirSync(model);
  writeFileSync(join(model, 'config.json'), JSON.stringify({ ...configToHf(preset('tiny')), num_hidden_layers: 1e7 }));
  refused(edit((s) => { s.base = { hfDir: model }; }), /base\.hfDir: .*huge-model\/config\.json: (num_hidden_layers|numLayers) 10000000 exceeds the limit of 1024/);
});

test('suite: base.hfDir whose config.json is not JSON is refused before anything runs', () => {
  const model = join(scratch, 'broken-model');
  mkdirSync(model);
  writeFileSync(join(model, 'config.json'), '{"hidden_size": ');
  refusedKeepingResults(edit((s) => { s.base = { hfDir: model }; }), /base\.hfDir: .*broken-model\/config\.json.*not valid JSON/);
});

test('suite: a missing dataset is refused', () => {
  refused(edit((s) => { s.tasks = ['jsonl']; s.dataset = join(scratch, 'missing.jsonl'); }), /dataset: .*missing\.jsonl: no such JSONL dataset/);
});

test('suite: a dataset that is a directory is refused', () => {
  refused(edit((s) => { s.tasks = ['jsonl']; s.dataset = scratch; }), /dataset: .*is a directory, expected a JSONL dataset/);
});

test('suite: a dataset that is a FIFO is refused without hanging', () => {
  const fifo = join(scratch, 'fifo.jsonl');
  execFileSync('mkfifo', [fifo]);
  refused(edit((s) => { s.tasks = ['jsonl']; s.dataset = fifo; }), /dataset: .*fifo\.jsonl: is not a regular file/);
});

test('suite: a dataset whose rows are not valid JSONL is refused before anything runs, naming the line', () => {
  const bad = join(scratch, 'bad.jsonl');
  writeFileSync(bad, '{"text": "one"}\n{"text": \n');
  refusedKeepingResults(edit((s) => { s.tasks = ['jsonl']; s.dataset = bad; }), /dataset: .*bad\.jsonl:2: invalid JSON/);
});

test('suite: a chat dataset with a bad row, or of another kind than datasetFormat, is refused naming the line', () => {
  const bad = join(scratch, 'bad-chat.jsonl');
  const row = (role: string) => JSON.stringify({ messages: [{ role: 'user', content: 'q' }, { role, content: 'a' }] });
  writeFileSync(bad, `${row('assistant')}\n${row('tool')}\n`);
  refusedKeepingResults(edit((s) => { s.tasks = ['jsonl']; s.dataset = bad; }), /dataset: .*bad-chat\.jsonl:2: messages\[1\]: unknown role "tool"/);
  const text = join(scratch, 'text-rows.jsonl');
  writeFileSync(text, '{"text": "a"}\n');
  refused(edit((s) => { s.tasks = ['jsonl']; s.dataset = text; s.datasetFormat = 'chat'; }), /dataset: .*text-rows\.jsonl:1: a \{"text"\} row, but the format was set to chat/);
  refused(edit((s) => { s.tasks = ['jsonl']; s.dataset = text; s.datasetFormat = 'csv'; }), /datasetFormat: /);
});

test('suite: a chat dataset with a base whose chat template does not parse is refused; one that fails on a row stops the suite naming it', () => {
  const model = join(scratch, 'template-model');
  mkdirSync(model);
  writeFileSync(join(model, 'config.json'), JSON.stringify(configToHf(preset('tiny'))));
  writeFileSync(join(model, 'tokenizer_config.json'), JSON.stringify({ chat_template: '{% for m in messages %}{{ m.content }' }));
  const data = join(scratch, 'chat-rows.jsonl');
  const row = (first: string) => JSON.stringify({ messages: [{ role: first, content: 'q' }, { role: 'assistant', content: 'a' }] });
  writeFileSync(data, Array.from({ length: 20 }, (_, i) => row(i === 6 ? 'system' : 'user')).join('\n') + '\n');
  refused(edit((s) => { s.base = { hfDir: model }; s.tasks = ['jsonl']; s.dataset = data; }), /dataset: .*tokenizer_config\.json: the chat template does not parse/);
  writeFileSync(join(model, 'tokenizer_config.json'), JSON.stringify({
    chat_template: "{%- if messages[0]['role'] != 'user' -%}{{ raise_exception('the first message must be a user message') }}{%- endif -%}{%- for m in messages -%}{{ m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor -%}",
  }));
  const dir = join(scratch, `case-${n++}`);
  mkdirSync(dir);
  const file = join(dir, 'suite.json');
  writeFileSync(file, JSON.stringify(edit((s) => { s.base = { hfDir: model }; s.tasks = ['jsonl']; s.dataset = data; })));
  const out = join(dir, 'out');
  const r = cli('--suite', file, '--out', out);
  assert.equal(r.code, 1, `exit ${r.code}\n${r.err}`);
  assert.match(r.err, /the suite stopped: .*chat-rows\.jsonl:7: the chat template \(.*template-model\/tokenizer_config\.json\) failed on this row: the first message must be a user message/);
  assert.equal(existsSync(out), false, '--out was not created');
});

test('CLI: --dataset-format other than auto, text, sft or chat is refused', () => {
  const r = cli('--dataset-format', 'csv', '--out', join(scratch, 'never'));
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /--dataset-format must be auto, text, sft or chat, got 'csv'/);
});

test('suite: methods[0].r 1e9 is refused', () => {
  refused(edit((s) => { s.methods[0].r = 1e9; }), /methods\[0\]\.r: .*(65536|too big)/i);
});

for (const key of ['steps', 'batchSize', 'seqLen'] as const) {
  test(`suite: shared.${key} 1e12 is refused`, () => {
    refused(edit((s) => { s.shared[key] = 1e12; }), new RegExp(`shared\\.${key}: .*(too big|<=)`, 'i'));
  });
}

for (const v of [-1, 1.5]) {
  test(`suite: shared.maxTrain ${v} is refused`, () => {
    refused(edit((s) => { s.shared.maxTrain = v; }), /shared\.maxTrain: /);
  });
}

test('suite: a task listed twice is refused', () => {
  refused(edit((s) => { s.tasks = ['spam', 'spam']; }), /tasks: lists a task twice/);
});

test('suite: a misspelled key gets "did you mean"', () => {
  refused(edit((s) => { s.shared.stpes = s.shared.steps; delete s.shared.steps; }), /shared: unknown key 'stpes' \(did you mean 'steps'\?\)/);
});

test('suite: a suite named ".." is refused (its reports would land outside reports/)', () => {
  refused(edit((s) => { s.name = '..'; }), /name: must not be \. or \.\./);
  refused(edit((s) => { s.name = '../x'; }), /name: must be a word/);
});

test('suite: methods [null] is refused', () => {
  refused(edit((s) => { s.methods = [null]; }), /methods\[0\]: /);
});

test('suite: a suite file nested 100,000 deep is refused naming the file', () => {
  refused(`{"name":"x","base":${'['.repeat(100_000)}${']'.repeat(100_000)}}`, /suite\.json: JSON nested deeper than 64 levels/);
});

test('suite: an existing results.jsonl is left untouched by a refused suite', () => {
  refusedKeepingResults(edit((s) => { s.shared.steps = 1e12; }), /shared\.steps: /);
  refusedKeepingResults(edit((s) => { s.methods = [null]; }), /methods\[0\]: /);
});

test('CLI: a dataset that validates but cannot be split stops the suite with exit 1 before --out is touched', () => {
  // one row: readJsonl takes it, holding out an evaluation part cannot
  const one = join(scratch, 'one-row.jsonl');
  writeFileSync(one, '{"text": "only row"}\n');
  const suite = edit((s) => { s.tasks = ['jsonl']; s.dataset = one; });
  const dir = join(scratch, `case-${n++}`);
  mkdirSync(dir);
  const file = join(dir, 'suite.json');
  writeFileSync(file, JSON.stringify(suite));
  const fresh = join(dir, 'fresh-out');
  const r = cli('--suite', file, '--out', fresh);
  assert.equal(r.code, 1, `exit ${r.code}\n${r.err}`);
  assert.match(r.err, /tunebench: the suite stopped: .*one-row\.jsonl: 1 rows are too few to hold out/);
  assert.doesNotMatch(r.err, /\n\s+at /, 'no stack trace');
  assert.doesNotMatch(r.err, /pretrain/, 'failed before a base was pretrained');
  assert.equal(existsSync(fresh), false, '--out was not created');
  const kept = join(dir, 'out');
  mkdirSync(kept);
  writeFileSync(join(kept, 'results.jsonl'), '{"id":"earlier"}\n');
  const again = cli('--suite', file, '--out', kept);
  assert.equal(again.code, 1, again.err);
  assert.equal(readFileSync(join(kept, 'results.jsonl'), 'utf8'), '{"id":"earlier"}\n', 'results.jsonl untouched');
});

test('CLI: a run that ends in an error makes the exit code non-zero', () => {
  // a model directory whose config is fine but whose weights are not: the
  // suite validates, the run starts and ends in an error
  const model = join(scratch, 'no-weights-model');
  mkdirSync(model);
  writeFileSync(join(model, 'config.json'), JSON.stringify(configToHf(preset('tiny'))));
  writeFileSync(join(model, 'model.safetensors'), Buffer.alloc(4));
  const data = join(scratch, 'rows.jsonl');
  writeFileSync(data, Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `row ${i} of the data` })).join('\n') + '\n');
  const dir = join(scratch, `case-${n++}`);
  mkdirSync(dir);
  const file = join(dir, 'suite.json');
  writeFileSync(file, JSON.stringify(edit((s) => { s.base = { hfDir: model }; s.tasks = ['jsonl']; s.dataset = data; })));
  const out = join(dir, 'out');
  const r = cli('--suite', file, '--out', out);
  assert.notEqual(r.code, 0, r.err);
  assert.notEqual(r.code, null, 'the CLI finished');
  assert.match(r.err, /1 run\(s\) ended in an error/);
  const rec = readFileSync(join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(rec.length, 1);
  assert.equal(rec[0].status, 'error');
  assert.match(rec[0].error, /model\.safetensors/);
});
