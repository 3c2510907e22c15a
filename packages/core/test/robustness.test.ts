// Files we do not control, made hostile (issue 11): every one is refused with
// an Error naming the file (or the key) and the problem, at once, without
// hanging, exhausting memory or changing what it was to be loaded into.
// safetensors, config.json / loadHfModel, tokenizer.json, JSONL, checkpoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  ArrayDataSource, CONFIG_LIMITS, HfTokenizer, LlamaModel, Tensor, Trainer, configFromHf, configToHf, loadCheckpoint, loadHfModel,
  makeOptimizer, memory, preset, readJsonl, readSafetensors, readSafetensorsHeader, saveCheckpoint, writeSafetensors,
  type OptimizerName,
} from '../src/index.js';
import { JSONL_MAX_LINE_BYTES } from '../src/data/jsonl.js';

const here = dirname(fileURLToPath(import.meta.url));
const tempDir = (): string => mkdtempSync(join(tmpdir(), 'tb-robust-'));
/** `s` as a RegExp matching it literally. */
const lit = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

// ---------------------------------------------------------------------------
// safetensors crafted byte by byte

/** u64 header length + header text + data. `len` overrides the length field. */
function rawSafetensors(path: string, header: string, data: Buffer, len?: number): void {
  const h = Buffer.from(header, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(len ?? h.length));
  writeFileSync(path, Buffer.concat([prefix, h, data]));
}

/** A header nested `depth` levels deep inside a tensor entry. */
function deepHeader(depth: number): string {
  return `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":${'['.repeat(depth)}${']'.repeat(depth)}}}`;
}

test('safetensors: a header value nested 100,000 deep is refused by readSafetensors with the file named, no stack overflow', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'deep.safetensors');
    rawSafetensors(file, deepHeader(100_000), Buffer.alloc(4));
    for (const read of [() => readSafetensors(file), () => readSafetensorsHeader(file)]) {
      assert.throws(read, (e: Error) => {
        assert.ok(!(e instanceof RangeError), `not a stack overflow: ${e.message}`);
        assert.match(e.message, lit(file));
        assert.match(e.message, /nested deeper than 64 levels/);
        return true;
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: header length one short over the space padding (tensors would shift a byte) is refused', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'ok.safetensors');
    const t = Tensor.from(Float32Array.from([1, 2, 3]), [3]);
    writeSafetensors(file, { w: t });
    t.dispose();
    const bytes = readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    const header = bytes.subarray(8, 8 + n).toString('utf8');
    assert.equal(n % 8, 0, 'the writer pads the header to a multiple of 8');
    assert.match(header, / $/, 'this header ends in padding spaces (the case the issue describes)');
    assert.deepEqual([...(readSafetensors(file).tensors.get('w')!.data() as Float32Array)], [1, 2, 3], 'the intact file reads');
    // the same file with N - 1: the header still parses, the data area starts a byte early
    const shifted = join(dir, 'shifted.safetensors');
    const copy = Buffer.from(bytes);
    copy.writeBigUInt64LE(BigInt(n - 1), 0);
    writeFileSync(shifted, copy);
    assert.throws(() => readSafetensors(shifted), (e: Error) => {
      assert.match(e.message, lit(shifted));
      assert.match(e.message, /fill 12 bytes of the data area but the file holds 13 after the header: 1 unaccounted byte/);
      return true;
    });
    assert.throws(() => readSafetensorsHeader(shifted), /unaccounted byte/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: a tensor name twice in the header is refused naming the key', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'dup.safetensors');
    rawSafetensors(file, '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', Buffer.alloc(8));
    assert.throws(() => readSafetensors(file), (e: Error) => {
      assert.match(e.message, lit(file));
      assert.match(e.message, /the key "w" appears twice/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: overlapping data offsets are refused naming both tensors', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'overlap.safetensors');
    rawSafetensors(file, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', Buffer.alloc(12));
    assert.throws(() => readSafetensors(file), (e: Error) => {
      assert.match(e.message, lit(file));
      assert.match(e.message, /tensor "b" \[4, 12\) overlaps tensor "a" \[0, 8\)/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: a gap between tensors is refused', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'gap.safetensors');
    rawSafetensors(file, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}', Buffer.alloc(20));
    assert.throws(() => readSafetensors(file), (e: Error) => {
      assert.match(e.message, lit(file));
      assert.match(e.message, /tensor "b" starts at data byte 12 but the previous tensor ends at 8: a gap/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: a directory passed where the file belongs is refused naming the path', () => {
  const dir = tempDir();
  try {
    const sub = join(dir, 'model.safetensors');
    mkdirSync(sub);
    assert.throws(() => readSafetensors(sub), new RegExp(`${lit(sub).source}: is a directory, expected a safetensors file`));
    assert.throws(() => readSafetensorsHeader(sub), /is a directory/);
    assert.throws(() => readJsonl(dir), new RegExp(`${lit(dir).source}.*is a directory`));
    // a model directory whose weights "file" is a directory
    writeFileSync(join(dir, 'config.json'), JSON.stringify(configToHf(preset('tiny'))));
    assert.throws(() => loadHfModel(dir), new RegExp(`${lit(sub).source}: is a directory`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a FIFO named model.safetensors (or config.json, tokenizer.json, a JSONL file) is refused without hanging', () => {
  // run in a child process: a loader that opened the FIFO would block its
  // thread for good, which no in-process timeout could interrupt
  const dir = tempDir();
  try {
    const model = join(dir, 'model');
    mkdirSync(model);
    writeFileSync(join(model, 'config.json'), JSON.stringify(configToHf(preset('tiny'))));
    execFileSync('mkfifo', [join(model, 'model.safetensors')]);
    const cfgDir = join(dir, 'cfg');
    mkdirSync(cfgDir);
    execFileSync('mkfifo', [join(cfgDir, 'config.json'), join(cfgDir, 'tokenizer.json'), join(cfgDir, 'data.jsonl')]);
    const src = pathToFileURL(join(here, '..', 'src', 'index.ts')).href;
    const script = `
      import { loadHfModel, readSafetensors, readSafetensorsHeader, readJsonl, HfTokenizer } from ${JSON.stringify(src)};
      const cases = {
        readSafetensors: () => readSafetensors(${JSON.stringify(join(model, 'model.safetensors'))}),
        readSafetensorsHeader: () => readSafetensorsHeader(${JSON.stringify(join(model, 'model.safetensors'))}),
        loadHfModel: () => loadHfModel(${JSON.stringify(model)}),
        configJson: () => loadHfModel(${JSON.stringify(cfgDir)}),
        tokenizer: () => HfTokenizer.fromDir(${JSON.stringify(cfgDir)}),
        readJsonl: () => readJsonl(${JSON.stringify(join(cfgDir, 'data.jsonl'))}),
      };
      const out = {};
      for (const [k, f] of Object.entries(cases)) { try { f(); out[k] = 'loaded'; } catch (e) { out[k] = e.message; } }
      console.log(JSON.stringify(out));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, cwd: join(here, '..') });
    assert.equal(r.signal, null, `the loaders returned (no hang): ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, string>;
    const fifo = /is not a regular file \(a FIFO, socket or device\?\)/;
    for (const k of ['readSafetensors', 'readSafetensorsHeader', 'loadHfModel']) {
      assert.match(out[k], lit(join(model, 'model.safetensors')), k);
      assert.match(out[k], fifo, k);
    }
    assert.match(out.configJson, lit(join(cfgDir, 'config.json')));
    assert.match(out.configJson, fifo);
    assert.match(out.tokenizer, lit(join(cfgDir, 'tokenizer.json')));
    assert.match(out.tokenizer, /not a regular file/);
    assert.match(out.readJsonl, lit(join(cfgDir, 'data.jsonl')));
    assert.match(out.readJsonl, fifo);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// config.json and loadHfModel

/** A model directory holding only this config.json (the loader must refuse it before looking for weights). */
function configDir(dir: string, edit: Record<string, unknown>): string {
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...configToHf(preset('tiny')), ...edit }));
  return join(dir, 'config.json');
}

for (const layers of [1e7, 1e9, 1e6]) {
  test(`config.json: num_hidden_layers ${layers} is refused at once naming the key and the limit`, () => {
    const dir = tempDir();
    try {
      const path = configDir(dir, { num_hidden_layers: layers });
      const heap = process.memoryUsage().heapUsed;
      const check = (e: Error) => {
        assert.match(e.message, lit(path));
        assert.match(e.message, new RegExp(`(num_hidden_layers|numLayers) ${layers} exceeds the limit of ${CONFIG_LIMITS.numLayers}`));
        return true;
      };
      assert.throws(() => configFromHf(JSON.parse(readFileSync(path, 'utf8')), path), check);
      assert.throws(() => loadHfModel(dir), check);
      assert.ok(process.memoryUsage().heapUsed - heap < 64 << 20, 'no heap growth with the claimed layer count');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('config.json: max_position_embeddings 1e308 is refused', () => {
  const dir = tempDir();
  try {
    const path = configDir(dir, { max_position_embeddings: 1e308 });
    assert.throws(() => loadHfModel(dir), (e: Error) => {
      assert.match(e.message, lit(path));
      assert.match(e.message, new RegExp(`(max_position_embeddings|maxPositionEmbeddings) 1e\\+308 exceeds the limit of ${CONFIG_LIMITS.maxPositionEmbeddings}`));
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('config.json: rms_norm_eps 1e308 is refused', () => {
  const dir = tempDir();
  try {
    const path = configDir(dir, { rms_norm_eps: 1e308 });
    assert.throws(() => loadHfModel(dir), (e: Error) => {
      assert.match(e.message, lit(path));
      assert.match(e.message, /(rms_norm_eps|rmsNormEps) must be a positive number no larger than 0\.1, got 1e\+308/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('config.json nested 100,000 deep is refused naming the file', () => {
  const dir = tempDir();
  try {
    const path = join(dir, 'config.json');
    writeFileSync(path, `{"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    assert.throws(() => loadHfModel(dir), (e: Error) => {
      assert.ok(!(e instanceof RangeError), e.message);
      assert.match(e.message, lit(path));
      assert.match(e.message, /nested deeper than/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('loadHfModel: a model.safetensors whose header is nested 100,000 deep is refused naming the file', () => {
  const dir = tempDir();
  try {
    writeFileSync(join(dir, 'config.json'), JSON.stringify(configToHf(preset('tiny'))));
    const file = join(dir, 'model.safetensors');
    rawSafetensors(file, deepHeader(100_000), Buffer.alloc(4));
    const live = memory.snapshot().cpu.liveTotal;
    assert.throws(() => loadHfModel(dir), (e: Error) => {
      assert.ok(!(e instanceof RangeError), e.message);
      assert.match(e.message, lit(file));
      assert.match(e.message, /nested deeper than 64 levels/);
      return true;
    });
    assert.equal(memory.snapshot().cpu.liveTotal, live, 'nothing allocated');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// tokenizer.json

function wordLevelJson(edit: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
    model: { type: 'WordLevel', vocab: { '[UNK]': 0, hello: 1, world: 2 }, unk_token: '[UNK]' },
    ...edit,
  };
}

test('tokenizer.json: a well-formed file loads (the control for the cases below)', () => {
  const tok = HfTokenizer.fromJson(wordLevelJson());
  assert.deepEqual(tok.encode('hello world'), [1, 2]);
});

test('tokenizer.json: a TemplateProcessing post_processor without its fields is refused at load, not in encode()', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'tokenizer.json');
    writeFileSync(file, JSON.stringify(wordLevelJson({ post_processor: { type: 'TemplateProcessing' } })));
    assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => {
      assert.match(e.message, lit(file));
      assert.match(e.message, /could not build a working tokenizer/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const id of [-1, 1e12]) {
  test(`tokenizer.json: token id ${id} is refused (in the vocabulary and in added_tokens)`, () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'tokenizer.json');
      const base = wordLevelJson();
      const vocab = { ...(base.model as { vocab: Record<string, number> }).vocab, bad: id };
      writeFileSync(file, JSON.stringify({ ...base, model: { ...(base.model as object), vocab } }));
      assert.throws(() => HfTokenizer.fromDir(dir), (e: Error) => {
        assert.match(e.message, lit(file));
        assert.match(e.message, new RegExp(`token ids must be integers from 0 to \\d+: vocab token "bad" has id ${JSON.stringify(id)}`));
        return true;
      });
      const added = [{ id, content: '<x>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }];
      writeFileSync(file, JSON.stringify(wordLevelJson({ added_tokens: added })));
      assert.throws(() => HfTokenizer.fromDir(dir), new RegExp(`${lit(file).source}: token ids must be .*added token "<x>" has id ${JSON.stringify(id)}`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

// ---------------------------------------------------------------------------
// JSONL

test('JSONL: a line over the limit is refused with its line number (within one read chunk)', () => {
  const dir = tempDir();
  try {
    assert.equal(JSONL_MAX_LINE_BYTES, 64 << 20, 'the default limit');
    const file = join(dir, 'data.jsonl');
    const row = (n: number) => JSON.stringify({ text: 'x'.repeat(n) });
    writeFileSync(file, [row(10), '', row(2000), row(10)].join('\n') + '\n');
    assert.throws(() => readJsonl(file, { maxLineBytes: 1024 }), new RegExp(`${lit(file).source}:3: line longer than 1024 bytes; refusing it`));
    assert.equal(readJsonl(file, { maxLineBytes: 4096 }).rows.length, 3, 'under the limit it reads');
    // the last line, without its newline
    writeFileSync(file, [row(10), row(2000)].join('\n'));
    assert.throws(() => readJsonl(file, { maxLineBytes: 1024 }), new RegExp(`${lit(file).source}:2: line longer than 1024 bytes`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('JSONL: a line over the limit spanning several read chunks is refused with its line number before it is joined', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'data.jsonl');
    writeFileSync(file, `${JSON.stringify({ text: 'a' })}\n${JSON.stringify({ text: 'y'.repeat(3 << 20) })}\n`);
    assert.throws(() => readJsonl(file, { maxLineBytes: 3 << 19 }), new RegExp(`${lit(file).source}:2: line longer than 1572864 bytes`));
    assert.throws(() => readJsonl(file, { maxLineBytes: 2 << 20 }), new RegExp(`${lit(file).source}:2: line longer than 2 MiB`));
    assert.equal(readJsonl(file).rows.length, 2, 'the default limit takes it');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('JSONL: a row nested 100,000 deep is refused with its line number', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'data.jsonl');
    writeFileSync(file, `{"text":"a"}\n{"text":"b","x":${'['.repeat(100_000)}${']'.repeat(100_000)}}\n`);
    assert.throws(() => readJsonl(file), new RegExp(`${lit(file).source}:2: JSON nested deeper than 64 levels`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// Checkpoints: refused, and the trainer bit-identical afterwards

function countingRows(n: number, T: number): { ids: Int32Array; targets: Int32Array }[] {
  return Array.from({ length: n }, (_, r) => {
    const ids = new Int32Array(T), targets = new Int32Array(T);
    for (let t = 0; t < T; t++) { ids[t] = (r * 37 + t) % 259; targets[t] = (r * 37 + t + 1) % 259; }
    return { ids, targets };
  });
}

function makeTrainer(optimizer: OptimizerName = 'adamw', seed = 3): { model: LlamaModel; trainer: Trainer; dispose: () => void } {
  const model = LlamaModel.init(preset('tiny'), { seed });
  const trainer = new Trainer(model, new ArrayDataSource(countingRows(6, 8), 2, seed), {
    schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 10 }, optimizerFactory: makeOptimizer(optimizer), seed,
  });
  return { model, trainer, dispose: () => { trainer.dispose(); model.dispose(); } };
}

/** Everything a checkpoint may change, copied. */
function snapshot(t: Trainer): unknown {
  const bytes = (x: Tensor) => { const v = x.data(); return Buffer.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)).toString('base64'); };
  return {
    params: t.model.parameters().map((p) => [p.name, p.value.dtype, p.value.shape, bytes(p.value)]),
    optim: [...t.optimizer.stateTensors()].map(([n, x]) => [n, x.dtype, x.shape, bytes(x)]),
    optimStep: t.optimizer.stepCount, step: t.step, rng: t.rng.state(), data: JSON.stringify(t.data.state()),
  };
}

/** A checkpoint at `dir/good.safetensors` from a trainer 3 steps in, and a
 * trainer 1 step in (different weights, state, step, data position) to load into. */
function checkpointFixture(dir: string, saveWith: OptimizerName = 'adamw', loadWith: OptimizerName = 'adamw') {
  const src = makeTrainer(saveWith, 5);
  for (let i = 0; i < 3; i++) src.trainer.trainStep();
  const good = join(dir, 'good.safetensors');
  saveCheckpoint(src.trainer, good);
  src.dispose();
  const dst = makeTrainer(loadWith, 3);
  dst.trainer.trainStep();
  // so that a change half applied (the data position, say) would show
  const saved = JSON.parse(readSafetensorsHeader(good).metadata.state);
  assert.notEqual(JSON.stringify(saved.data), JSON.stringify(dst.trainer.data.state()), 'the data positions differ');
  assert.notDeepEqual(saved.rng, dst.trainer.rng.state(), 'the random states differ');
  return { good, dst };
}

/** A copy of checkpoint `src` with its tensors and state edited. */
function editCheckpoint(src: string, dst: string, edit: { state?: (s: Record<string, unknown>) => unknown; tensors?: (t: Map<string, Tensor>) => void }): void {
  const { tensors, metadata } = readSafetensors(src, { category: 'workspace' });
  try {
    const state = JSON.parse(metadata.state);
    const newState = edit.state ? edit.state(state) : state;
    edit.tensors?.(tensors);
    writeSafetensors(dst, tensors, { metadata: { ...metadata, state: typeof newState === 'string' ? newState : JSON.stringify(newState) } });
  } finally {
    for (const t of tensors.values()) if (!t.disposed) t.dispose();
  }
}

/** Loads `path` into the trainer, expects the path and `re` in the message,
 * and checks nothing changed and nothing leaked. */
function refusedUnchanged(trainer: Trainer, path: string, re: RegExp): void {
  const before = snapshot(trainer);
  const live = memory.snapshot().cpu.liveTotal;
  assert.throws(() => loadCheckpoint(trainer, path), (e: Error) => {
    assert.match(e.message, lit(path));
    assert.match(e.message, re);
    return true;
  });
  assert.deepEqual(snapshot(trainer), before, 'the trainer is bit-identical after the refusal');
  assert.equal(memory.snapshot().cpu.liveTotal, live, 'nothing leaked');
}

/** Transposes a 2-D f32 tensor in the map (same size, wrong shape). */
function transpose(tensors: Map<string, Tensor>, name: string): void {
  const t = tensors.get(name)!;
  const [r, c] = t.shape;
  assert.notEqual(r, c, `${name} is not square`);
  const v = t.data() as Float32Array, out = new Float32Array(v.length);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = v[i * c + j];
  tensors.set(name, Tensor.from(out, [c, r]));
  t.dispose();
}

test('checkpoint: the untouched fixture loads (the control for the cases below)', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    loadCheckpoint(dst.trainer, good);
    assert.equal(dst.trainer.step, 3);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: state metadata null is refused and the trainer is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    editCheckpoint(good, bad, { state: () => 'null' });
    refusedUnchanged(dst.trainer, bad, /state metadata is not a JSON object/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: a missing RNG state is refused and the trainer is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    editCheckpoint(good, bad, { state: (s) => { delete s.rng; return s; } });
    refusedUnchanged(dst.trainer, bad, /state\.rng must be the trainer's random state/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: a data position without its RNG state is refused and the trainer is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    editCheckpoint(good, bad, { state: (s) => { delete (s.data as Record<string, unknown>).rng; return s; } });
    refusedUnchanged(dst.trainer, bad, /state\.data: ArrayDataSource\.restore: the saved position has no random state/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: a refused data position names the checkpoint file and the trainer is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    editCheckpoint(good, bad, { state: (s) => ({ ...s, data: { ...(s.data as object), cursor: -1 } }) });
    refusedUnchanged(dst.trainer, bad, /state\.data: ArrayDataSource\.restore: the saved position does not fit this data/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: optimizerStep 1e20 is refused and the trainer is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    editCheckpoint(good, bad, { state: (s) => ({ ...s, optimizerStep: 1e20 }) });
    refusedUnchanged(dst.trainer, bad, /state\.optimizerStep must be an integer from 0 to 1000000000000, got 100000000000000000000/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: a transposed parameter of the right size is refused and the trainer is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    const name = 'model.model.layers.0.self_attn.k_proj.weight';
    editCheckpoint(good, bad, { tensors: (t) => transpose(t, name) });
    refusedUnchanged(dst.trainer, bad, new RegExp(`${lit(name).source} is f32 \\[64, 32\\], expected f32 \\[32, 64\\]`));
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: a transposed optimizer state tensor of the right size is refused and the trainer (data position included) is unchanged', () => {
  const dir = tempDir();
  const { good, dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'bad.safetensors');
    const name = 'optim.exp_avg_sq.model.layers.1.mlp.down_proj.weight';
    editCheckpoint(good, bad, { tensors: (t) => transpose(t, name) });
    refusedUnchanged(dst.trainer, bad, /exp_avg_sq\.model\.layers\.1\.mlp\.down_proj\.weight/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const [saveWith, loadWith] of [['adamw8bit', 'adamw'], ['adamw', 'adamw8bit']] as const) {
  test(`checkpoint: a checkpoint of ${saveWith} loaded into a trainer using ${loadWith} is refused and the trainer is unchanged`, () => {
    const dir = tempDir();
    const { good, dst } = checkpointFixture(dir, saveWith, loadWith);
    try {
      refusedUnchanged(dst.trainer, good, new RegExp(`holds state of optimizer '${saveWith}', this trainer uses '${loadWith}'`));
      // the same without the optimizer's name (as older checkpoints are read: 'adamw'): the state tensors still do not fit
      const bad = join(dir, 'bad.safetensors');
      editCheckpoint(good, bad, { state: (s) => { delete s.optimizer; return s; } });
      refusedUnchanged(dst.trainer, bad, saveWith === 'adamw8bit' ? /exp_avg/ : /optimizer 'adamw'/);
    } finally {
      dst.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('checkpoint: a header nested 100,000 deep is refused naming the file and the trainer is unchanged', () => {
  const dir = tempDir();
  const { dst } = checkpointFixture(dir);
  try {
    const bad = join(dir, 'deep.safetensors');
    rawSafetensors(bad, deepHeader(100_000), Buffer.alloc(4));
    refusedUnchanged(dst.trainer, bad, /nested deeper than 64 levels/);
  } finally {
    dst.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
