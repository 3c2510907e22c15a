// PEFT adapter directories made hostile (issue 11): each is refused with an
// Error naming the file and the problem (or, for a pattern that would
// backtrack, matched in linear time), and the model is left as it was.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { LlamaModel, Tensor, memory, preset, writeSafetensors } from '@tunebench/core';
import { PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, loadAdapter, loraLayers } from '../src/index.js';
import { randomValues } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const lit = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
const Q = 'base_model.model.model.layers.0.self_attn.q_proj';
const V = 'base_model.model.model.layers.1.self_attn.v_proj';

const CONFIG = {
  alpha_pattern: {}, base_model_name_or_path: null, bias: 'none', exclude_modules: null, fan_in_fan_out: false, inference_mode: true,
  init_lora_weights: true, layers_pattern: null, layers_to_transform: null, lora_alpha: 4, lora_dropout: 0, modules_to_save: null,
  peft_type: 'LORA', r: 2, rank_pattern: {}, revision: null, target_modules: ['q_proj', 'v_proj'], task_type: 'CAUSAL_LM',
  use_dora: false, use_rslora: false,
};

type Tensors = Record<string, number[]>;
/** q_proj of layer 0 adapted with r = 2 (tiny: hidden 64, kv 32). */
const Q_ONLY: Tensors = { [`${Q}.lora_A.weight`]: [2, 64], [`${Q}.lora_B.weight`]: [64, 2] };

function writeAdapter(dir: string, config: Record<string, unknown>, tensors: Tensors): void {
  writeFileSync(join(dir, PEFT_CONFIG_FILE), JSON.stringify(config));
  const map = new Map(Object.entries(tensors).map(([n, shape], i) => [n, Tensor.from(randomValues(shape[0] * shape[1], i + 1, 0.1), shape)]));
  writeSafetensors(join(dir, PEFT_WEIGHTS_FILE), map, { metadata: { format: 'pt' } });
  for (const t of map.values()) t.dispose();
}

/** Loading `config` + `tensors` into a frozen tiny model fails with a message
 * naming `file` ('config' or 'weights') and matching `re`; the model keeps no
 * adapter and nothing leaks. */
function refused(config: Record<string, unknown>, tensors: Tensors, file: 'config' | 'weights', re: RegExp): void {
  const dir = mkdtempSync(join(tmpdir(), 'tb-peft-robust-'));
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  try {
    writeAdapter(dir, config, tensors);
    const live = memory.snapshot().cpu.liveTotal;
    assert.throws(() => loadAdapter(model, dir), (e: Error) => {
      assert.match(e.message, lit(join(dir, file === 'config' ? PEFT_CONFIG_FILE : PEFT_WEIGHTS_FILE)));
      assert.match(e.message, re);
      return true;
    });
    assert.equal(loraLayers(model).length, 0, 'no adapter left behind');
    assert.equal(memory.snapshot().cpu.liveTotal, live, 'nothing leaked');
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the well-formed adapter loads (the control for the cases below)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-peft-robust-'));
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  try {
    writeAdapter(dir, CONFIG, Q_ONLY);
    assert.deepEqual(loadAdapter(model, dir).modules, ['model.layers.0.self_attn.q_proj']);
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('target_modules "(.*)*x" (catastrophic backtracking for a backtracking engine) is matched in linear time: refused where it selects nothing, loaded where "(.*)*q_proj" selects', () => {
  // in a child process with a timeout: a backtracking match would hold the thread for minutes
  const root = mkdtempSync(join(tmpdir(), 'tb-peft-robust-'));
  try {
    const none = join(root, 'none'), some = join(root, 'some');
    mkdirSync(none); mkdirSync(some);
    writeAdapter(none, { ...CONFIG, target_modules: '(.*)*x' }, Q_ONLY);
    writeAdapter(some, { ...CONFIG, target_modules: '(.*)*q_proj' }, Q_ONLY);
    const lora = pathToFileURL(join(here, '..', 'src', 'index.ts')).href;
    const script = `
      import { LlamaModel, preset } from '@tunebench/core';
      import { loadAdapter } from ${JSON.stringify(lora)};
      const out = {};
      for (const d of ${JSON.stringify([none, some])}) {
        const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
        try { out[d] = { modules: loadAdapter(model, d).modules }; } catch (e) { out[d] = { error: e.message }; }
        model.dispose();
      }
      console.log(JSON.stringify(out));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, cwd: join(here, '..') });
    assert.equal(r.signal, null, `the match finished (no backtracking): ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, { error?: string; modules?: string[] }>;
    assert.match(out[none].error ?? '', lit(join(none, PEFT_WEIGHTS_FILE)));
    assert.match(out[none].error ?? '', /model\.layers\.0\.self_attn\.q_proj has tensors but target_modules "\(\.\*\)\*x" does not select it/);
    assert.deepEqual(out[some], { modules: ['model.layers.0.self_attn.q_proj'] });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('layers_pattern "(" is refused with a clear message naming the key and the file', () => {
  // wrapped: the key, the pattern as written, and that it is not a valid regular expression
  refused({ ...CONFIG, layers_to_transform: [0], layers_pattern: '(' }, Q_ONLY, 'config', /layers_pattern "\(": .* is not a valid regular expression \(/);
});

test('a layers_pattern error is not a raw SyntaxError', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-peft-robust-'));
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  try {
    writeAdapter(dir, { ...CONFIG, layers_to_transform: [0], layers_pattern: '(' }, Q_ONLY);
    assert.throws(() => loadAdapter(model, dir), (e: Error) => {
      assert.ok(!(e instanceof SyntaxError), 'an Error of the loader, not the RegExp constructor\'s SyntaxError');
      assert.doesNotMatch(e.message, /^Invalid regular expression/);
      return true;
    });
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a backreference in target_modules is refused with a clear message', () => {
  refused({ ...CONFIG, target_modules: '.*(q)_proj\\1' }, Q_ONLY, 'config',
    /target_modules ".*\(q\)_proj\\\\1" is not a regular expression this loader can use .*needs backtracking \(backreferences or lookarounds\)/);
});

test('a Python named backreference (?P=name) in target_modules is refused with a clear message', () => {
  refused({ ...CONFIG, target_modules: '.*(?P<p>q)_proj(?P=p)?' }, Q_ONLY, 'config', /target_modules .* needs backtracking \(backreferences or lookarounds\)/);
});

test('a lookahead in a rank_pattern key is refused with a clear message', () => {
  refused({ ...CONFIG, rank_pattern: { '(?=q)q_proj': 2 } }, Q_ONLY, 'config', /rank_pattern key "\(\?=q\)q_proj" is not a regular expression this loader can use .*needs backtracking/);
});

for (const alpha of [0, -8]) {
  test(`lora_alpha ${alpha} is refused`, () => {
    refused({ ...CONFIG, lora_alpha: alpha }, Q_ONLY, 'config', new RegExp(`lora_alpha must be a positive number, got ${alpha}`));
  });
}

test('alpha_pattern 0 is refused', () => {
  refused({ ...CONFIG, alpha_pattern: { 'layers.0.self_attn.q_proj': 0 } }, Q_ONLY, 'config', /alpha_pattern\["layers\.0\.self_attn\.q_proj"\] must be a positive number, got 0/);
});

test('an adapter file with tensors of two segments on one module (lora_A.weight and lora_A.other.weight) is refused', () => {
  // one of the two would silently win
  refused(CONFIG, { ...Q_ONLY, [`${Q}.lora_A.other.weight`]: [2, 64] }, 'weights',
    /model\.layers\.0\.self_attn\.q_proj has two lora_A tensors \(.*q_proj\.lora_A(\.other)?\.weight, .*q_proj\.lora_A(\.other)?\.weight\)/);
});

test('an adapter file with tensors of two adapter names on different modules (lora_A.default / lora_A.other) is refused', () => {
  refused(CONFIG, {
    [`${Q}.lora_A.default.weight`]: [2, 64], [`${Q}.lora_B.default.weight`]: [64, 2],
    [`${V}.lora_A.other.weight`]: [2, 64], [`${V}.lora_B.other.weight`]: [32, 2],
  }, 'weights', /the tensors belong to more than one adapter \((default, other|other, default)\); a PEFT file holds one/);
});

test('adapter_config.json nested 100,000 deep is refused naming the file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-peft-robust-'));
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  try {
    writeAdapter(dir, CONFIG, Q_ONLY);
    writeFileSync(join(dir, PEFT_CONFIG_FILE), `{"peft_type":"LORA","x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    assert.throws(() => loadAdapter(model, dir), (e: Error) => {
      assert.ok(!(e instanceof RangeError), e.message);
      assert.match(e.message, lit(join(dir, PEFT_CONFIG_FILE)));
      assert.match(e.message, /nested deeper than 64 levels/);
      return true;
    });
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a FIFO or a directory named adapter_model.safetensors / adapter_config.json is refused naming the path, without hanging', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-peft-robust-'));
  try {
    const fifoW = join(dir, 'w'), fifoC = join(dir, 'c'), dirW = join(dir, 'dw'), dirC = join(dir, 'dc');
    for (const d of [fifoW, fifoC, dirW, dirC]) mkdirSync(d);
    writeAdapter(fifoW, CONFIG, Q_ONLY);
    rmSync(join(fifoW, PEFT_WEIGHTS_FILE));
    execFileSync('mkfifo', [join(fifoW, PEFT_WEIGHTS_FILE)]);
    writeAdapter(fifoC, CONFIG, Q_ONLY);
    rmSync(join(fifoC, PEFT_CONFIG_FILE));
    execFileSync('mkfifo', [join(fifoC, PEFT_CONFIG_FILE)]);
    writeAdapter(dirW, CONFIG, Q_ONLY);
    rmSync(join(dirW, PEFT_WEIGHTS_FILE));
    mkdirSync(join(dirW, PEFT_WEIGHTS_FILE));
    writeAdapter(dirC, CONFIG, Q_ONLY);
    rmSync(join(dirC, PEFT_CONFIG_FILE));
    mkdirSync(join(dirC, PEFT_CONFIG_FILE));
    const lora = pathToFileURL(join(here, '..', 'src', 'index.ts')).href;
    const script = `
      import { LlamaModel, preset } from '@tunebench/core';
      import { loadAdapter } from ${JSON.stringify(lora)};
      const out = {};
      for (const d of ${JSON.stringify([fifoW, fifoC, dirW, dirC])}) {
        const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
        try { loadAdapter(model, d); out[d] = 'loaded'; } catch (e) { out[d] = e.message; }
        model.dispose();
      }
      console.log(JSON.stringify(out));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, cwd: join(here, '..') });
    assert.equal(r.signal, null, `the loader returned (no hang): ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, string>;
    assert.match(out[fifoW], new RegExp(`${lit(join(fifoW, PEFT_WEIGHTS_FILE)).source}: is not a regular file`));
    assert.match(out[fifoC], new RegExp(`${lit(join(fifoC, PEFT_CONFIG_FILE)).source}: is not a regular file`));
    assert.match(out[dirW], new RegExp(`${lit(join(dirW, PEFT_WEIGHTS_FILE)).source}: is a directory`));
    assert.match(out[dirC], new RegExp(`${lit(join(dirC, PEFT_CONFIG_FILE)).source}: is a directory`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
