// The tunebench command: --help, the plan subcommand, every bad option
// refused with a clear message (exit 2) before anything runs, and Ctrl-C in
// the middle of a suite.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');

function cli(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(pkg, 'src', 'cli.ts'), ...args], { cwd: pkg, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('--help explains every option with examples', () => {
  const r = cli('--help');
  assert.equal(r.code, 0, r.err);
  for (const o of ['--suite', '--methods', '--tasks', '--model', '--dataset', '--peers', '--device', '--out', '--resume', '--check', '--update-baseline', '--packing', '--tune-lr', '--dataset-format', '--decode-shape', '--decode-activations']) {
    assert.match(r.out, new RegExp(`\\n  ${o}\\b`), `--help lists ${o}`);
  }
  assert.match(r.out, /Examples:/);
});

test('gguf exports a model directory for llama.cpp, and refuses what it cannot write', async () => {
  const { LlamaModel, preset, readGguf, saveHfModel } = await import('@tunebench/core');
  const dir = mkdtempSync(join(tmpdir(), 'tb-gguf-cli-'));
  const model = LlamaModel.init(preset('tiny'), { seed: 3 });
  try { saveHfModel(model, join(dir, 'model'), { dtype: 'f32' }); } finally { model.dispose(); }
  const r = cli('gguf', '--model', join(dir, 'model'), '--type', 'q8_0', '--out', join(dir, 'm.gguf'));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /m\.gguf: \d+ tensors, \d+ bytes, q8_0/);
  const g = readGguf(join(dir, 'm.gguf'));
  assert.equal(g.metadata.get('general.architecture')?.value, 'llama');
  assert.ok(g.tensors.some((t) => t.name === 'blk.0.attn_q.weight'));
  assert.equal(g.tensors.find((t) => t.name === 'token_embd.weight')?.type, 'F16', 'embeddings F16 in a quantized export');
  assert.match(r.out, /token_embd\.weight: F16, max \|error\| \S+, relative rms error \S+/);
  const e8 = cli('gguf', '--model', join(dir, 'model'), '--type', 'q8_0', '--embeddings', 'q8_0', '--out', join(dir, 'e8.gguf'));
  assert.equal(e8.code, 0, e8.err);
  assert.match(e8.out, /token_embd\.weight: Q8_0, max \|error\| \S+, relative rms error \S+/);
  assert.equal(readGguf(join(dir, 'e8.gguf')).tensors.find((t) => t.name === 'token_embd.weight')?.type, 'Q8_0');
  const badE = cli('gguf', '--model', join(dir, 'model'), '--embeddings', 'q4_1', '--out', join(dir, 'x.gguf'));
  assert.equal(badE.code, 2);
  assert.match(badE.err, /--embeddings must be f16 or q8_0, got 'q4_1'/);
  const bad = cli('gguf', '--model', join(dir, 'model'), '--type', 'q5_0', '--out', join(dir, 'x.gguf'));
  assert.equal(bad.code, 2);
  assert.match(bad.err, /--type must be f16, q8_0 or q4_1, got 'q5_0'/);
  const none = cli('gguf', '--model', join(dir, 'nothing'), '--out', join(dir, 'x.gguf'));
  assert.equal(none.code, 2);
  assert.match(none.err, /has no config\.json/);
  assert.ok(!existsSync(join(dir, 'x.gguf')), 'nothing written on a refused export');
  rmSync(dir, { recursive: true, force: true });
});

test('plan predicts memory by category without running', () => {
  const r = cli('plan', '--model', 'tinyllama-1.1b', '--method', 'lora16', '--batch', '4', '--seq', '1024');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /predicted peak memory of one training step: tinyllama-1\.1b, lora16, batch 4 x seq 1024/);
  for (const c of ['frozen', 'trainable', 'grad', 'optimizer', 'activation', 'workspace', 'total']) assert.match(r.out, new RegExp(`^${c}\\s+\\d+\\.\\d$`, 'm'));
  const bad = cli('plan', '--model', 'nope');
  assert.equal(bad.code, 2);
  assert.match(bad.err, /'nope' is neither a preset .* nor a directory with config\.json/);
});

test('plan side by side: methods x checkpointing modes, and the largest batch that fits in each memory size', () => {
  const r = cli('plan', '--model', 'small', '--methods', 'full,lora8,qlora8', '--checkpointing', 'all', '--batch', '2', '--seq', '128');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^category\s+full off\s+full block\s+full every:2\s+lora-r8 off .* qlora-r8 every:2$/m);
  const act = r.out.split('\n').find((l) => l.startsWith('activation'))!.trim().split(/\s+/).slice(1).map(Number);
  assert.equal(act.length, 9);
  assert.ok(act[1] < act[2] && act[2] < act[0], `block < every:2 < off for full: ${act.join(', ')}`);
  const fit = cli('plan', '--model', 'llama-2-7b', '--methods', 'full,lora16,qlora16', '--seq', '2048', '--checkpointing', 'all', '--fit', '24,80');
  assert.equal(fit.code, 0, fit.err);
  assert.match(fit.out, /largest batch of 2048 tokens per row whose training step fits/);
  const row24 = fit.out.split('\n').find((l) => l.startsWith('24 GiB'))!;
  assert.match(row24, /does not fit/, 'full fine-tuning of a 7B model needs more than 24 GiB');
  const row80 = fit.out.split('\n').find((l) => l.startsWith('80 GiB'))!;
  const cells = row80.split(/\s{2,}/).slice(1);
  assert.equal(cells.length, 9);
  const rows = cells.map((c) => (c === 'does not fit' ? 0 : Number(c.split(' x ')[0])));
  assert.ok(rows[7] >= rows[6] && rows[6] > 0, `QLoRA with checkpointing fits at least as many rows as without: ${cells.join(' | ')}`);
  for (const [args, want] of [
    [['plan', '--model', 'tiny', '--checkpointing', 'sometimes'], /checkpointing must be 'off', 'block' or 'every:<k>'/],
    [['plan', '--model', 'tiny', '--fit', '0'], /--fit must list memory sizes in GiB/],
    [['plan', '--model', 'tiny', '--method', 'full', '--methods', 'lora8'], /--method or --methods, not both/],
  ] as [string[], RegExp][]) {
    const b = cli(...args);
    assert.equal(b.code, 2, args.join(' '));
    assert.match(b.err, want);
  }
});

test('bad options and suite files are refused before anything runs, saying what to fix', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-cli-'));
  try {
    const cases: [string[], RegExp][] = [
      [['--suite', 'nope'], /--suite: 'nope' is neither a built-in suite \(ci, cpu, gpu\) nor a file/],
      [['--suite', 'ci', '--checkpointing', 'every:0'], /checkpointing must be 'off', 'block' or 'every:<k>'/],
      [['--suite', 'ci', '--methods', 'lora8@sometimes'], /'lora8@sometimes': checkpointing must be/],
      [['--suite', 'ci', '--methods', 'full,qlora'], /unknown method 'qlora' \(known: full, full-8bit, lora8, lora64, lora<r>, qlora8, qlora64, qlora<r>, qlora<r>-loftq, qlora<r>-8bit, qalora4, qalora3, qalora2, qalora<bits>\[-r<r>\]\[-rtn\]; add @block or @every:<k> for activation checkpointing\)/],
      [['--suite', 'ci', '--tasks', 'spam,translate'], /--tasks: unknown task 'translate'/],
      [['--suite', 'ci', '--peers', 'jax'], /--peers: unknown peer 'jax' \(known: tfjs, pytorch, or none\)/],
      [['--suite', 'ci', '--device', 'tpu'], /--device must be auto, cpu or cuda/],
      [['--suite', 'ci', '--packing', 'zip'], /--packing must be pack or pad, got 'zip'/],
      [['--suite', 'ci', '--decode-shape', 'qwen3-0.6b'], /--decode-shape must be none or a plain Llama preset \(tiny, mini, .*smollm-135m.*\), got 'qwen3-0\.6b'/],
      [['--suite', 'ci', '--decode-activations', 'i4'], /--decode-activations must be i16, f32, i8, got 'i4'/],
      [['--suite', 'ci', '--device', 'cuda'], /--device cuda: /],
      [['--suite', 'gpu'], /--suite gpu needs the CUDA backend \(/],
      [['--suite', 'ci', '--update-baseline'], /--update-baseline needs --check BASELINE/],
      [['--suite', 'ci', '--model', dir], /has no config\.json/],
      [['--suite', 'ci', '--dataset', join(dir, 'missing.jsonl')], /--dataset: .*missing\.jsonl does not exist/],
    ];
    const suiteFile = join(dir, 'bad.json');
    writeFileSync(suiteFile, JSON.stringify({ name: 'x', base: { preset: 'tiny' }, tasks: ['spam'], methods: [{ name: 'lora', lr: 1, label: 'a' }], shared: { steps: 0 } }));
    cases.push([['--suite', suiteFile], /shared\.steps: Too small: expected number to be >=1; shared\.batchSize: Invalid input: expected number, received undefined/]);
    const badPacking = join(dir, 'packing.json');
    writeFileSync(badPacking, JSON.stringify({ name: 'x', base: { preset: 'tiny' }, tasks: ['spam'], methods: [{ name: 'lora', lr: 1, label: 'a' }],
      shared: { steps: 2, batchSize: 2, seqLen: 16, seed: 0, schedule: 'constant', warmupSteps: 0, packing: 'zip' } }));
    cases.push([['--suite', badPacking], /shared\.packing: Invalid option: expected one of "pack"\|"pad"/]);
    const badActs = join(dir, 'acts.json');
    writeFileSync(badActs, JSON.stringify({ name: 'x', base: { preset: 'tiny' }, tasks: ['spam'], methods: [{ name: 'lora', lr: 1, label: 'a' }],
      shared: { steps: 2, batchSize: 2, seqLen: 16, seed: 0, schedule: 'constant', warmupSteps: 0 }, decodeActivations: 'int8' }));
    cases.push([['--suite', badActs], /decodeActivations: Invalid option: expected one of "i16"\|"f32"\|"i8"/]);
    const notJson = join(dir, 'broken.json');
    writeFileSync(notJson, '{ "name": ');
    cases.push([['--suite', notJson], /broken\.json: not valid JSON/]);
    for (const [args, want] of cases) {
      const out = join(dir, 'out');
      const r = cli(...args, '--out', out);
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}\n${r.err}`);
      assert.match(r.err, want, args.join(' '));
      assert.match(r.err, /Run with --help/);
      assert.doesNotMatch(r.err, /suite \w+: \d+ task/, `${args.join(' ')}: nothing ran`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** 30-step runs on the 300-step tiny base: the ci suite's sizes before it was set to make every method learn. */
const SHORT_SUITE = {
  name: 'short', base: { preset: 'tiny', pretrainSteps: 300 }, tasks: ['spam'],
  methods: [{ name: 'full', lr: 1e-3, label: 'full' }, { name: 'lora', r: 8, alpha: 16, lr: 3e-3, label: 'lora-r8' }],
  shared: { steps: 30, batchSize: 8, seqLen: 128, seed: 0, schedule: 'cosine', warmupSteps: 3, maxTrain: 400, maxTest: 200 },
  kernels: false,
};

test('Ctrl-C stops after the current training step: the finished runs kept and reported, exit 130, and --resume completes the suite', { timeout: 600_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-interrupt-'));
  try {
    // a short suite of its own (the ci suite's runs are long enough to learn, not to test Ctrl-C)
    const suiteFile = join(out, 'short.json');
    writeFileSync(suiteFile, JSON.stringify(SHORT_SUITE));
    const args = ['--suite', suiteFile, '--tasks', 'spam', '--peers', 'none', '--out', out];
    const child = spawn(process.execPath, ['--import', 'tsx', join(pkg, 'src', 'cli.ts'), ...args], { cwd: pkg, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    child.stdout.resume();
    const exited = new Promise<{ code: number | null; signal: string | null }>((res) => child.on('exit', (code, signal) => res({ code, signal })));
    // the first run's record appears, then Ctrl-C (the second run is under way)
    const results = join(out, 'results.jsonl');
    const lines = () => (existsSync(results) ? readFileSync(results, 'utf8').split('\n').filter(Boolean) : []);
    while (lines().length === 0) {
      if (child.exitCode !== null) assert.fail(`the suite ended before its first record: ${err}`);
      await sleep(50);
    }
    child.kill('SIGINT');
    const { code, signal } = await exited;
    assert.equal(signal, null, err);
    assert.equal(code, 130, err);
    assert.match(err, /Ctrl-C: stopping after the current training step/);
    assert.match(err, /spam\/lora-r8\/steps30-b8-t128-seed0: stopped after \d+ of 30 step\(s\); not recorded/);
    assert.match(err, /kept: 1 finished run\(s\) in .*results\.jsonl:\n {4}spam\/full\/steps30-b8-t128-seed0 \(ok\)/);
    const resume = err.match(/continue with \(from (.*)\):\n {2}(.*)\n/);
    assert.ok(resume, `the command to continue is printed: ${err}`);
    assert.match(resume[2], /--resume$/);
    // nothing half-done: only the finished run, with its memory figures named for what they are
    const kept = lines().map((l) => JSON.parse(l));
    assert.deepEqual(kept.map((r) => r.id), ['spam/full/steps30-b8-t128-seed0']);
    assert.ok(kept[0].memory.rssBytes > 0 && kept[0].memory.cachedBytes >= 0 && kept[0].memory.deviceBytes === undefined, JSON.stringify(kept[0].memory));
    // the reports of the finished run
    const csv = readFileSync(join(out, 'results.csv'), 'utf8').trim().split('\n');
    assert.equal(csv.length, 2);
    assert.match(csv[1], /^spam\/full\//);
    const summary = readFileSync(join(out, 'summary.md'), 'utf8');
    assert.match(summary, /^1 run: 1 ok$/m);
    assert.doesNotMatch(summary, /lora-r8/);
    assert.match(readFileSync(join(out, 'report.html'), 'utf8'), /\(interrupted\)/);

    // the printed command, as printed, finishes the suite
    const again = spawnSync('/bin/sh', ['-c', resume[2]], { cwd: resume[1], encoding: 'utf8', timeout: 300_000 });
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /spam\/full\/steps30-b8-t128-seed0: already in .* skipped \(--resume\)/);
    assert.deepEqual(lines().map((l) => JSON.parse(l).id), ['spam/full/steps30-b8-t128-seed0', 'spam/lora-r8/steps30-b8-t128-seed0']);
    assert.match(readFileSync(join(out, 'summary.md'), 'utf8'), /^2 runs: 2 ok$/m);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
