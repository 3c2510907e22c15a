// Property-based fuzzing of the file readers: from a valid file made here,
// fast-check (fixed seed, bounded count) makes mutated copies; a child
// process (fuzz_child.mjs) loads them one by one. Each case must be a correct
// load or a clean error: an Error naming the file (the suite file, the model
// or adapter directory) that is not an internal one. A crash, a signal, a
// hang (no progress for FUZZ_HANG_MS, default 10 s; the child is killed and
// restarted from the next case) or an internal message fails the test, naming
// the reader, the mutation and the message, and keeps the case's files for
// replay: node --max-old-space-size=512 packages/bench/test/fuzz_child.mjs <case dir>/case.json
// Case 0 of each reader is the valid base input, which must load.
//
// FUZZ_SEED, FUZZ_CASES (cases per reader, default 100) and FUZZ_HANG_MS
// override the defaults; FUZZ_LOG=<file> appends every case's outcome to it
// as JSON lines (to see what the mutations reach).
import { after, before, test } from 'node:test';
import { spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { copyFileSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { LlamaModel, Tensor, preset, saveHfModel, writeSafetensors } from '@tunebench/core';
import { prepareLora, saveAdapter } from '@tunebench/lora';

const HERE = dirname(fileURLToPath(import.meta.url));
const CHILD = join(HERE, 'fuzz_child.mjs');
const SEED = Number(process.env.FUZZ_SEED ?? 20261130);
const CASES = Number(process.env.FUZZ_CASES ?? 100);
const HANG_MS = Number(process.env.FUZZ_HANG_MS ?? 10_000);
const NODE_FLAGS = ['--max-old-space-size=512', '--stack-size=984'];
const INTERNAL = /Cannot read properties|is not a function|is not iterable|Maximum call stack|undefined is not|Invalid regular expression|of undefined|of null/;

/** JSON documents of any shape, edited in place. */
type J = any; // eslint-disable-line @typescript-eslint/no-explicit-any
const clone = <T>(v: T): T => (v === undefined ? v : JSON.parse(JSON.stringify(v)));
/** A value for a message: JSON (strings quoted), long strings cut. */
const short = (v: unknown, n = 300): string => {
  const s = v === undefined ? 'undefined' : JSON.stringify(v, (_k, x) => (typeof x === 'string' && x.length > 60 ? `${x.slice(0, 60)}...(${x.length} chars)` : x));
  return s.length > n ? `${s.slice(0, n)}...` : s;
};
const deep = (d: number): string => '['.repeat(d) + ']'.repeat(d);

// ---------------------------------------------------------------------------
// Values

/** Values a field is replaced with: wrong types, out-of-range numbers, nesting. */
const POOL: unknown[] = [
  0, -1, 1.5, 1e12, 1e308, -1e308, 'NaN', 'Infinity', '5', '', null, true, false, [], {}, [[1, [2, [3]]]], [[[[]]]], { a: [{}] },
  2 ** 53, 2 ** 31, -0.5, 'x'.repeat(200), [1, 2], ['q_proj'],
];
const poolArb = fc.constantFrom(...POOL).map(clone);
const valueArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: poolArb },
  { weight: 1, arbitrary: fc.integer({ min: -3, max: 300 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
);
/** Keys added where a reader does not expect them. */
const keyArb = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', '', ' ', 'x'.repeat(300)));

/** Patterns for the fields PEFT reads as regular expressions. */
const CATASTROPHIC = [
  '(.*)*x', '(a+)+$', '(', ')', '\\1', '(a)\\1', '(?P<n>q)(?P=n)', '(?P<n>', '(?=q)', '(?<!a)b', '[', '[z-a]', '*', '+q', 'a{2,1}',
  '(?i)q_proj', '.*', 'q_proj|v_proj', '\\', '((((a*)*)*)*)*y', '(x+x+)+y', '^$', '\u0000', '[^]', '(?<n>a)\\k<n>', 'q_proj',
  'model\\.layers\\.0\\..*', '.*\\.(q|v)_proj', 'a'.repeat(20000), '\\p{L}', '[\\d-z]', '{', '}', '(?:', 'x**', '.*q_proj', 'layers',
];
const regexUnit = fc.constantFrom(...'().*+?[]{}|^$\\-_qvpojlayersmd0:=!<>P'.split(''));
const regexArb = fc.oneof(fc.constantFrom(...CATASTROPHIC), fc.string({ unit: regexUnit, maxLength: 24 }));

// ---------------------------------------------------------------------------
// safetensors files as bytes

interface St { header: Record<string, J>; data: Buffer }
function stSplit(bytes: Buffer): St {
  const n = Number(bytes.readBigUInt64LE(0));
  return { header: JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')), data: bytes.subarray(8 + n) };
}
function stJoin(header: Buffer | string, data: Buffer, lengthField?: bigint): Buffer {
  let h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header;
  if (lengthField === undefined && h.length % 8) h = Buffer.concat([h, Buffer.alloc(8 - (h.length % 8), 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthField ?? BigInt(h.length));
  return Buffer.concat([prefix, h, data]);
}
const tensorNames = (h: Record<string, J>): string[] => Object.keys(h).filter((k) => k !== '__metadata__');

/** Edits of one tensor's entry that keep its byte length: the file stays a
 * valid safetensors file, its contents are wrong for the reader. */
const sameBytesEdit = fc.constantFrom('I32', 'U32', 'U8x4', 'F16x2', 'BF16x2', 'reverse', 'flat', 'unsqueeze', 'F64half');
function applySameBytes(entry: J, edit: string): void {
  const shape: number[] = entry.shape;
  const numel = shape.reduce((a, b) => a * b, 1);
  switch (edit) {
    case 'I32': case 'U32': entry.dtype = edit; break;
    case 'U8x4': entry.dtype = 'U8'; entry.shape = [numel * 4]; break;
    case 'F16x2': entry.dtype = 'F16'; entry.shape = [...shape.slice(0, -1), (shape.at(-1) ?? 1) * 2]; break;
    case 'BF16x2': entry.dtype = 'BF16'; entry.shape = [numel * 2]; break;
    case 'reverse': entry.shape = [...shape].reverse(); break;
    case 'flat': entry.shape = [numel]; break;
    case 'unsqueeze': entry.shape = [1, ...shape]; break;
    case 'F64half': if (numel % 2 === 0) { entry.dtype = 'F64'; entry.shape = [numel / 2]; } break;
  }
}

// ---------------------------------------------------------------------------
// Cases

interface Case {
  i: number;
  reader: string;
  /** what the reader is given: a file, or a directory for hf / adapter / tokenizer */
  path: string;
  /** the case's directory (its files, kept when it fails) */
  dir: string;
  mutation: string;
  optimizer?: string;
}
interface Result { i: number; outcome: string; message: string; isError?: boolean; name?: string; ms?: number; maxRssKiB?: number }

let root = '';
const base: Record<string, J> = {};

before(() => {
  root = mkdtempSync(join(tmpdir(), 'tunebench-fuzz-'));
  const b = join(root, 'base');
  mkdirSync(b);

  // safetensors: one tensor of each common dtype, and metadata
  const st = join(b, 'plain.safetensors');
  const ts = {
    a: Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]), b: Tensor.from([1, -2, 3.5, 0], [4], { dtype: 'bf16' }),
    c: Tensor.from([7, -8], [1, 2], { dtype: 'i32' }), d: Tensor.from([1, 2, 3], [3], { dtype: 'u8' }),
    e: Tensor.from(Uint16Array.from([0x3800, 0x3c00, 0x4000, 0x4400]), [2, 2], { dtype: 'f16' }), z: Tensor.zeros([0, 3]),
  };
  writeSafetensors(st, ts, { metadata: { format: 'pt', note: 'fuzz base' } });
  for (const t of Object.values(ts)) t.dispose();
  base.safetensors = readFileSync(st);

  // a Hugging Face LlamaForCausalLM directory of the tiny preset
  const hf = join(b, 'hf');
  const model = LlamaModel.init(preset('tiny'), { seed: 1, dtype: 'bf16', trainable: false });
  saveHfModel(model, hf);
  model.dispose();
  base.hfDir = hf;
  base.hfConfig = JSON.parse(readFileSync(join(hf, 'config.json'), 'utf8'));

  // a PEFT adapter on the tiny preset (the child loads it into the same model)
  const ad = join(b, 'adapter');
  const frozen = LlamaModel.init(preset('tiny'), { seed: 5, dtype: 'bf16', trainable: false });
  prepareLora(frozen, { r: 4, alpha: 8, targets: ['q_proj', 'v_proj'], seed: 1 });
  saveAdapter(frozen, ad);
  frozen.dispose();
  base.adapterConfig = JSON.parse(readFileSync(join(ad, 'adapter_config.json'), 'utf8'));
  base.adapterWeights = readFileSync(join(ad, 'adapter_model.safetensors'));

  base.tokenizer = bpeTokenizerJson();
  base.tokenizerConfig = { bos_token: '<s>', eos_token: { content: '</s>' }, pad_token: '<pad>' };

  // checkpoints of the child's small trainer, written by the child
  for (const opt of ['adamw', 'adamw8bit']) {
    const p = join(b, `ckpt-${opt}.safetensors`);
    const r = spawnSync(process.execPath, [CHILD, '--make-checkpoint', p, opt], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`making the base checkpoint failed: ${r.stderr}`);
    base[`ckpt-${opt}`] = readFileSync(p);
  }

  const jsonl = join(b, 'data.jsonl');
  writeFileSync(jsonl, '{"prompt": "a", "completion": "b"}\n');
  base.suite = {
    name: 'fuzz', base: { preset: 'tiny', pretrainSteps: 10 }, tasks: ['spam', 'adapt', 'jsonl'], dataset: jsonl,
    methods: [
      { name: 'full', lr: 3e-4, label: 'full' },
      { name: 'lora', r: 8, alpha: 16, lr: 2e-3, label: 'lora-r8', checkpointing: 'every:2' },
      { name: 'qlora', r: 8, alpha: 16, lr: 2e-3, label: 'qlora-r8', options: { blockSize: 64, init: 'kaiming' } },
    ],
    shared: { steps: 10, batchSize: 2, seqLen: 32, seed: 0, schedule: 'cosine', warmupSteps: 1, maxTrain: 10, maxTest: 10, checkpointing: 'block' },
    peers: { tfjs: { methods: ['full'], tasks: ['spam'], steps: 3 }, pytorch: { tasks: ['spam'], threads: 1 } },
    kernels: false, decodeShape: 'none',
  };
});

after(() => {
  if (root && !failedAny) rmSync(root, { recursive: true, force: true });
  else if (root) console.log(`fuzz: inputs kept in ${root}`);
});

// A byte-level BPE tokenizer.json (as in core's data_tokenizer.test.ts).
function bpeTokenizerJson(): Record<string, J> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2, '<pad>': 3 };
  for (const t of ['h', 'e', 'l', 'o', 'w', 'r', 'd', 'Ġ', '!', 'he', 'll', 'hell', 'hello', 'Ġw', 'or', 'Ġwor', 'ld', 'Ġworld']) vocab[t] = Object.keys(vocab).length;
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>'), special(3, '<pad>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab,
      merges: ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'o r', 'Ġw or', 'l d', 'Ġwor ld'],
    },
  };
}

/** Every path to a value of `v` (object keys and array indexes). */
function pathsOf(v: J, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  if (v !== null && typeof v === 'object') {
    for (const k of Array.isArray(v) ? v.keys() : Object.keys(v)) {
      out.push([...prefix, k]);
      pathsOf(v[k], [...prefix, k], out);
    }
  }
  return out;
}
function valueAt(obj: J, path: (string | number)[]): J {
  let o = obj;
  for (const k of path) o = o?.[k];
  return o;
}
const parentOf = (obj: J, path: (string | number)[]): J => valueAt(obj, path.slice(0, -1));
const isObj = (v: unknown): v is Record<string, J> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A JSON document mutated by ops on paths: set, delete, add a key. */
type PathOp = { op: 'set'; at: number; value: unknown } | { op: 'del'; at: number } | { op: 'add'; at: number; key: string; value: unknown };
const pathOpsArb = (value: fc.Arbitrary<unknown>) => fc.array(fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('set' as const), at: fc.nat(), value }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('del' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('add' as const), at: fc.nat(), key: keyArb, value }) },
), { minLength: 1, maxLength: 3 });
function applyPathOps(doc: J, ops: PathOp[]): J {
  for (const o of ops) {
    const paths = pathsOf(doc);
    if (o.op === 'add') {
      const objects = [[], ...paths].filter((p) => isObj(valueAt(doc, p)));
      const target = valueAt(doc, objects[o.at % objects.length]);
      Object.defineProperty(target, o.key, { value: clone(o.value), enumerable: true, writable: true, configurable: true });
      continue;
    }
    if (!paths.length) continue;
    const p = paths[o.at % paths.length];
    const parent = parentOf(doc, p), k = p.at(-1)!;
    if (o.op === 'set') parent[k] = clone(o.value);
    else if (Array.isArray(parent)) parent.splice(k as number, 1);
    else delete parent[k];
  }
  return doc;
}
const describeOps = (doc: J, ops: PathOp[]): string => {
  const parts: string[] = [];
  let d = clone(doc);
  for (const o of ops) {
    const paths = pathsOf(d);
    const objects = [[], ...paths].filter((q) => isObj(valueAt(d, q)));
    const p = o.op === 'add' ? `${objects[o.at % objects.length].join('.') || '(top)'}.${short(o.key, 40)}` : paths.length ? paths[o.at % paths.length].join('.') : '-';
    parts.push(o.op === 'del' ? `del ${p}` : `${o.op} ${p} = ${short((o as { value: unknown }).value, 80)}`);
    d = applyPathOps(d, [o]);
  }
  return parts.join('; ');
};

/** Whole-document replacements of a JSON file. */
const WHOLE_JSON = ['', '{', '[]', 'null', '"x"', '5', '{}', '{"a": 1} trailing', '\uFEFF{}', deep(70), deep(100_000), `{"a": ${deep(63)}}`, '{"a": 1, "a": 2}', '\u0000'];

/** Writes the cases of one reader: case 0 is the valid base file, unmutated. */
function makeCases<T>(
  reader: string, arb: fc.Arbitrary<T>, seedOffset: number, write: (m: T | null, dir: string) => Omit<Case, 'i' | 'reader' | 'dir'>, files: string[],
): Case[] {
  // a few cases put something that is not a regular file where a file is read
  type Special = { special: 'directory' | 'fifo' | 'missing' | 'symlink-loop' | 'empty'; file: string };
  const specialArb: fc.Arbitrary<Special> = fc.record({ special: fc.constantFrom('directory' as const, 'fifo' as const, 'missing' as const, 'symlink-loop' as const, 'empty' as const), file: fc.constantFrom(...files) });
  const mutations = fc.sample(fc.oneof({ weight: 15, arbitrary: arb.map((m) => ({ m })) }, { weight: 1, arbitrary: specialArb }), { seed: SEED + seedOffset, numRuns: CASES - 1 });
  const cases: Case[] = [];
  [null, ...mutations].forEach((g, i) => {
    const dir = join(root, reader, String(i));
    mkdirSync(dir, { recursive: true });
    if (g === null || 'm' in g) { cases.push({ i, reader, dir, ...write(g ? g.m : null, dir) }); return; }
    const c: Case = { i, reader, dir, ...write(null, dir) };
    const f = join(dir, g.file);
    rmSync(f, { force: true });
    if (g.special === 'directory') mkdirSync(f);
    else if (g.special === 'fifo') { if (spawnSync('mkfifo', [f]).status !== 0) writeFileSync(f, ''); }
    else if (g.special === 'symlink-loop') symlinkSync(f, f);
    else if (g.special === 'empty') writeFileSync(f, '');
    c.mutation = `${g.special} in place of ${g.file}`;
    cases.push(c);
  });
  return cases;
}

// ---- safetensors

type StMutation =
  | { kind: 'flip'; flips: { at: number; xor: number }[] }
  | { kind: 'truncate'; keep: number }
  | { kind: 'hlen'; delta: string }
  | { kind: 'edit'; tensor: number; field: 'dtype' | 'shape' | 'data_offsets' | 'entry' | 'extra' | 'rename' | 'metadata' | 'same-bytes' | 'add'; value: unknown }
  | { kind: 'raw'; text: string };
const offsetsArb = fc.oneof(
  fc.constantFrom('overlap', 'swap', 'past-end', 'shift+1', 'shift-1', 'negative', 'fractional', 'strings', 'one', 'three', 'huge'),
  poolArb,
);
type StField = Extract<StMutation, { kind: 'edit' }>['field'];
const nameArb = fc.oneof(fc.constantFrom('__metadata__', '__proto__', 'constructor', 'toString', '', 'a', 'x'.repeat(1000), 'é\u0000'), fc.string({ maxLength: 8 }));
const stEdits: [StField, fc.Arbitrary<unknown>][] = [
  ['dtype', fc.oneof(poolArb, fc.constantFrom('F64', 'BOOL', 'F4', 'F6_E2M3', 'F8_E5M2', 'I16', 'U64', 'f32', 'F32 ', 'toString', '__proto__', 'constructor'))],
  ['shape', fc.oneof(poolArb, fc.array(fc.oneof(fc.nat(8), fc.constantFrom(2 ** 53, 2 ** 60, 1e308, -1, 1.5, '2', null, [], 0)), { maxLength: 4 }))],
  ['data_offsets', offsetsArb],
  ['entry', poolArb],
  ['extra', poolArb],
  ['rename', nameArb],
  ['metadata', fc.oneof(poolArb, fc.string({ maxLength: 8 }))],
  ['same-bytes', sameBytesEdit],
  ['add', nameArb],
];
const stArb: fc.Arbitrary<StMutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), flips: fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 4 }) }),
  fc.record({ kind: fc.constant('truncate' as const), keep: fc.nat() }),
  fc.record({ kind: fc.constant('hlen' as const), delta: fc.oneof(fc.integer({ min: -24, max: 24 }).map(String), fc.constantFrom('2147483648', '4294967296', '9007199254740993', '9223372036854775808', '100000001', '-9999')) }),
  { weight: 4, arbitrary: fc.oneof(...stEdits.map(([field, value]) => fc.record({ kind: fc.constant('edit' as const), tensor: fc.nat(), field: fc.constant(field), value }))) },
  fc.record({
    kind: fc.constant('raw' as const),
    text: fc.constantFrom('duplicate', 'deep63', 'deep64', 'deep65', 'deep100000', 'trailing', 'trailing-brace', 'nul-pad', 'not-object', 'empty', 'bom', 'invalid-utf8', 'dup-metadata', 'many-dims', 'many-tensors', 'big-metadata'),
  }),
);
function writeSt(m: StMutation | null, dir: string): { path: string; mutation: string } {
  const path = join(dir, 'model.safetensors');
  writeFileSync(path, mutateSt(base.safetensors, m));
  return { path, mutation: m ? short(m) : 'none (the valid base file)' };
}
function mutateSt(bytes: Buffer, m: StMutation | null): Buffer {
  if (!m) return bytes;
  const { header, data } = stSplit(bytes);
  const headerText = bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0)));
  switch (m.kind) {
    case 'flip': {
      const out = Buffer.from(bytes);
      for (const f of m.flips) out[f.at % out.length] ^= f.xor;
      return out;
    }
    case 'truncate': return bytes.subarray(0, m.keep % bytes.length);
    case 'hlen': return stJoin(headerText, data, BigInt.asUintN(64, BigInt(headerText.length) + BigInt(m.delta)));
    case 'edit': {
      const names = tensorNames(header);
      const name = names[m.tensor % names.length];
      const e = header[name];
      const v = clone(m.value);
      const [b0, e0] = e.data_offsets;
      switch (m.field) {
        case 'dtype': e.dtype = v; break;
        case 'shape': e.shape = v; break;
        case 'data_offsets': {
          const total = data.length;
          const table: Record<string, unknown> = {
            overlap: [Math.max(0, b0 - 2), e0 - 2], swap: [e0, b0], 'past-end': [b0, total + 4], 'shift+1': [b0 + 1, e0 + 1], 'shift-1': [b0 - 1, e0 - 1],
            negative: [-4, e0], fractional: [b0 + 0.5, e0], strings: [String(b0), String(e0)], one: [b0], three: [b0, e0, e0], huge: [b0, 2 ** 60],
          };
          e.data_offsets = typeof v === 'string' && v in table ? table[v] : v;
          break;
        }
        case 'entry': header[name] = v; break;
        case 'extra': e.extra = v; break;
        case 'rename': delete header[name]; header[typeof v === 'string' ? v : JSON.stringify(v)] = e; break;
        case 'metadata': header.__metadata__ = typeof v === 'object' && v !== null && !Array.isArray(v) ? { ...header.__metadata__, x: v } : v; break;
        case 'same-bytes': applySameBytes(e, typeof v === 'string' ? v : 'flat'); break;
        case 'add': header[String(v)] = { dtype: 'F32', shape: [0], data_offsets: [0, 0] }; break;
      }
      return stJoin(JSON.stringify(header), data);
    }
    case 'raw': {
      const text = headerText.toString('utf8').trimEnd();
      const first = tensorNames(header)[0];
      const body = text.slice(1, -1);
      const raw: Record<string, () => Buffer | string> = {
        duplicate: () => `{${body},${JSON.stringify(first)}:${JSON.stringify(header[first])}}`,
        'dup-metadata': () => `{"__metadata__":{"a":"1","a":"2"},${body.replace(/"__metadata__":\{[^}]*\},?/, '')}}`,
        deep63: () => `{"x":${deep(62)},${body}}`, deep64: () => `{"x":${deep(63)},${body}}`, deep65: () => `{"x":${deep(64)},${body}}`,
        deep100000: () => `{"x":${deep(100_000)},${body}}`,
        trailing: () => `${text}garbage`, 'trailing-brace': () => `${text}}`, 'not-object': () => '[1,2,3]', empty: () => '',
        bom: () => `\uFEFF${text}`,
        // valid files at the edges: a shape of 100,000 dimensions of 1, 100,000 empty tensors, 5 MB of metadata
        'many-dims': () => JSON.stringify({ ...header, [first]: { ...header[first], shape: [...header[first].shape, ...Array<number>(100_000).fill(1)] } }),
        'many-tensors': () => JSON.stringify({ ...header, ...Object.fromEntries(Array.from({ length: 100_000 }, (_, k) => [`z${k}`, { dtype: 'F32', shape: [0], data_offsets: [0, 0] }])) }),
        'big-metadata': () => JSON.stringify({ ...header, __metadata__: { big: 'x'.repeat(5 << 20) } }),
        'nul-pad': () => Buffer.concat([Buffer.from(text), Buffer.alloc(7)]),
        'invalid-utf8': () => Buffer.concat([Buffer.from(text.slice(0, -1)), Buffer.from([0x2c, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31]), Buffer.from('}')]),
      };
      const h = raw[m.text]();
      return stJoin(typeof h === 'string' ? Buffer.from(h) : h, data, typeof h === 'string' ? undefined : BigInt(h.length));
    }
  }
}

// ---- config.json

const HF_KEYS = [
  'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'rms_norm_eps',
  'rope_theta', 'max_position_embeddings', 'tie_word_embeddings', 'model_type', 'head_dim', 'rope_scaling', 'hidden_act', 'attention_bias',
  'mlp_bias', 'rope_parameters', 'architectures', 'torch_dtype',
];
type KeyOp = { op: 'set'; key: string; value: unknown } | { op: 'del'; key: string } | { op: 'add'; key: string; value: unknown };
type JsonMutation = { kind: 'ops'; ops: KeyOp[] } | { kind: 'whole'; text: string } | { kind: 'dup'; key: string; value: unknown };
const keyOpsArb = (keys: string[], value: fc.Arbitrary<unknown>): fc.Arbitrary<KeyOp[]> => fc.array(fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('set' as const), key: fc.constantFrom(...keys), value }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('del' as const), key: fc.constantFrom(...keys) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('add' as const), key: keyArb, value }) },
), { minLength: 1, maxLength: 3 });
const jsonMutationArb = (keys: string[], value: fc.Arbitrary<unknown>): fc.Arbitrary<JsonMutation> => fc.oneof(
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('ops' as const), ops: keyOpsArb(keys, value) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('whole' as const), text: fc.constantFrom(...WHOLE_JSON) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dup' as const), key: fc.constantFrom(...keys), value }) },
);
function applyJsonMutation(doc: J, m: JsonMutation | null): string {
  if (!m) return JSON.stringify(doc, null, 2);
  if (m.kind === 'whole') return m.text;
  // the key twice, the second time with the new value (JSON.parse keeps the last)
  if (m.kind === 'dup') return `${JSON.stringify(doc).slice(0, -1)}, ${JSON.stringify(m.key)}: ${JSON.stringify(m.value)}}`;
  const d = clone(doc);
  for (const o of m.ops) {
    if (o.op === 'del') delete d[o.key];
    else Object.defineProperty(d, o.key, { value: clone(o.value), enumerable: true, writable: true, configurable: true });
  }
  return JSON.stringify(d, null, 2);
}
const hfValueArb = fc.oneof(
  { weight: 6, arbitrary: valueArb },
  { weight: 1, arbitrary: fc.record({ rope_type: fc.oneof(fc.constant('default'), poolArb), rope_theta: fc.oneof(fc.constant(10000), poolArb) }) },
  { weight: 1, arbitrary: fc.constantFrom(1, 2, 4, 16, 32, 63, 64, 128, 259, 1 << 22, (1 << 22) + 1, 1e-5, 0.2) },
);
/** A sharded-style index over the single weights file, with some entries changed. */
type HfMutation = JsonMutation | { kind: 'index'; entries: { tensor: number; value: unknown }[]; whole: string | null };
const hfArb: fc.Arbitrary<HfMutation> = fc.oneof(
  { weight: 6, arbitrary: jsonMutationArb(HF_KEYS, hfValueArb) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('index' as const),
      entries: fc.array(fc.record({
        tensor: fc.nat(),
        value: fc.oneof(poolArb, fc.constantFrom('../model.safetensors', '/etc/passwd', 'model.safetensors/', '.', '..', 'nope.safetensors', 'config.json', 'model.safetensors\u0000', '', '__proto__', 'model.safetensors.index.json')),
      }), { maxLength: 3 }),
      whole: fc.option(fc.constantFrom(...WHOLE_JSON, '{"weight_map": []}', '{"weight_map": {"__proto__": "model.safetensors"}}', '{"weight_map": null}'), { freq: 4 }),
    }),
  },
);
function writeHf(m: HfMutation | null, dir: string): { path: string; mutation: string } {
  if (m?.kind === 'index') {
    const names = tensorNames(stSplit(readFileSync(join(base.hfDir, 'model.safetensors'))).header);
    const weightMap: Record<string, unknown> = Object.fromEntries(names.map((n) => [n, 'model.safetensors']));
    for (const e of m.entries) weightMap[names[e.tensor % names.length]] = clone(e.value);
    writeFileSync(join(dir, 'model.safetensors.index.json'), m.whole ?? JSON.stringify({ metadata: { total_size: 1 }, weight_map: weightMap }));
  }
  writeFileSync(join(dir, 'config.json'), applyJsonMutation(base.hfConfig, m?.kind === 'index' ? null : m));
  try {
    linkSync(join(base.hfDir, 'model.safetensors'), join(dir, 'model.safetensors'));
  } catch {
    copyFileSync(join(base.hfDir, 'model.safetensors'), join(dir, 'model.safetensors'));
  }
  return { path: dir, mutation: m ? short(m) : 'none (the valid base directory)' };
}

// ---- adapter_config.json + adapter_model.safetensors

const ADAPTER_KEYS = [
  'r', 'lora_alpha', 'lora_dropout', 'use_rslora', 'bias', 'fan_in_fan_out', 'use_dora', 'target_modules', 'exclude_modules',
  'layers_to_transform', 'layers_pattern', 'rank_pattern', 'alpha_pattern', 'modules_to_save', 'init_lora_weights', 'peft_type',
  'task_type', 'base_model_name_or_path', 'lora_bias', 'layer_replication', 'use_qalora', 'target_parameters',
];
const adapterValueArb = fc.oneof(
  { weight: 4, arbitrary: valueArb },
  { weight: 2, arbitrary: regexArb },
  { weight: 2, arbitrary: fc.array(regexArb, { maxLength: 3 }) },
  { weight: 2, arbitrary: fc.dictionary(regexArb, fc.oneof(poolArb, fc.integer({ min: 1, max: 8 })), { maxKeys: 3 }) },
  { weight: 1, arbitrary: fc.array(fc.oneof(fc.integer({ min: -1, max: 3 }), poolArb), { maxLength: 3 }) },
);
type AdapterMutation = { config: JsonMutation | null; weights: { tensor: number; edit: string } | null };
const adapterArb: fc.Arbitrary<AdapterMutation> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ config: jsonMutationArb(ADAPTER_KEYS, adapterValueArb), weights: fc.constant(null) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      config: fc.constant(null),
      weights: fc.record({
        tensor: fc.nat(),
        edit: fc.oneof(sameBytesEdit, fc.constantFrom('rename:default', 'rename:layer7', 'rename:magnitude', 'rename:garbage', 'rename:o_proj', 'rename:embed')),
      }),
    }),
  },
);
function writeAdapter(m: AdapterMutation | null, dir: string): { path: string; mutation: string } {
  writeFileSync(join(dir, 'adapter_config.json'), applyJsonMutation(base.adapterConfig, m?.config ?? null));
  let weights: Buffer = base.adapterWeights;
  if (m?.weights) {
    const { header, data } = stSplit(weights);
    const names = tensorNames(header);
    const name = names[m.weights.tensor % names.length];
    const e = header[name];
    const renames: Record<string, string> = {
      'rename:default': name.replace(/\.weight$/, '.default.weight'),
      'rename:layer7': name.replace(/layers\.\d+/, 'layers.7'),
      'rename:magnitude': name.replace(/lora_[AB]\.weight$/, 'lora_magnitude_vector'),
      'rename:garbage': `${name}.x`,
      'rename:o_proj': name.replace(/[qv]_proj/, 'o_proj'),
      'rename:embed': 'base_model.model.model.embed_tokens.lora_A.weight',
    };
    if (m.weights.edit in renames) { delete header[name]; header[renames[m.weights.edit]] = e; } else applySameBytes(e, m.weights.edit);
    weights = stJoin(JSON.stringify(header), data);
  }
  writeFileSync(join(dir, 'adapter_model.safetensors'), weights);
  return { path: dir, mutation: m ? short(m) : 'none (the valid base directory)' };
}

// ---- tokenizer.json

const POST_PROCESSORS: unknown[] = [
  null, {}, { type: 'TemplateProcessing' }, { type: 'TemplateProcessing', single: [], pair: [], special_tokens: {} },
  { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<zz>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: {} },
  { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: { '<s>': { id: '<s>', ids: [1e12], tokens: ['<s>'] } } },
  { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }], pair: [], special_tokens: { '<s>': { id: '<s>', ids: [], tokens: [] } } },
  { type: 'TemplateProcessing', single: 5, pair: 'x', special_tokens: [] },
  { type: 'TemplateProcessing', single: [{ Sequence: { id: 'Q', type_id: 0 } }], pair: [], special_tokens: {} },
  { type: 'BertProcessing', sep: ['</s>', 2], cls: ['<s>', 1] }, { type: 'BertProcessing', sep: ['</s>', 99999], cls: [] },
  { type: 'RobertaProcessing', sep: ['</s>', 2], cls: ['<s>', 1], trim_offsets: true, add_prefix_space: false },
  { type: 'RobertaProcessing' }, { type: 'ByteLevel', trim_offsets: true }, { type: 'Sequence', processors: [{ type: 'ByteLevel' }, { type: 'Nope' }] },
  { type: 'Sequence', processors: 5 }, { type: 'Sequence' }, { type: 'Unknown' }, { type: 5 }, [], 'TemplateProcessing',
];
const COMPONENTS: unknown[] = [
  null, {}, { type: 'Nope' }, { type: 'Split', pattern: { Regex: '(.*)*x' }, behavior: 'Isolated', invert: false },
  { type: 'Split', pattern: { Regex: '(' }, behavior: 'Isolated', invert: false }, { type: 'Split', pattern: { String: ' ' }, behavior: 'Nope' },
  { type: 'Sequence', pretokenizers: 5 }, { type: 'Sequence', normalizers: [{ type: 'NFC' }, null] }, { type: 'Replace', pattern: { Regex: '\\1' }, content: 'x' },
  { type: 'Split', pattern: { Regex: '(a+)+$' }, behavior: 'Removed', invert: false },
  { type: 'Metaspace', replacement: '', prepend_scheme: 'always' }, { type: 'ByteLevel' }, { type: 'Whitespace' }, [], 'ByteLevel',
];
type TokMutation =
  | { kind: 'vocab-id'; token: number; value: unknown }
  | { kind: 'vocab-add'; token: string; value: unknown }
  | { kind: 'vocab'; value: unknown }
  | { kind: 'merges'; value: unknown }
  | { kind: 'post_processor' | 'normalizer' | 'pre_tokenizer' | 'decoder'; value: unknown }
  | { kind: 'added_tokens'; value: unknown[] }
  | { kind: 'model'; key: string; value: unknown }
  | { kind: 'config'; value: unknown }
  | { kind: 'whole'; text: string };
const idArb = fc.oneof({ weight: 4, arbitrary: poolArb }, { weight: 1, arbitrary: fc.constantFrom(0, 3, 21, 22, 4194303, 4194304, 100000, 2 ** 32) });
const addedTokenArb = fc.oneof(
  poolArb,
  fc.record({ id: idArb, content: fc.oneof(fc.constantFrom('<new>', '<s>', 'hello', '', 'Ġ'), poolArb) }),
  fc.record({ id: fc.integer({ min: 0, max: 30 }), content: fc.constantFrom('<new>', '<s>', 'x'), special: fc.oneof(fc.boolean(), poolArb), normalized: fc.oneof(fc.boolean(), poolArb) }),
);
const tokArb: fc.Arbitrary<TokMutation> = fc.oneof(
  fc.record({ kind: fc.constant('vocab-id' as const), token: fc.nat(), value: idArb }),
  fc.record({ kind: fc.constant('vocab-add' as const), token: keyArb, value: idArb }),
  fc.record({ kind: fc.constant('vocab' as const), value: fc.oneof(poolArb, fc.constant(['a', 'b']), fc.constant([['a', 0], ['b', 1]])) }),
  fc.record({ kind: fc.constant('merges' as const), value: fc.oneof(poolArb, fc.array(fc.oneof(fc.constantFrom('h e', 'a', 'x y z', 'zz qq', ' ', 'h  e'), poolArb), { maxLength: 4 }), fc.constant([['h', 'e'], ['l', 'l']])) }),
  fc.record({ kind: fc.constantFrom('post_processor' as const, 'normalizer' as const, 'pre_tokenizer' as const, 'decoder' as const), value: fc.oneof(fc.constantFrom(...POST_PROCESSORS, ...COMPONENTS).map(clone), poolArb) }),
  fc.record({ kind: fc.constant('added_tokens' as const), value: fc.array(addedTokenArb, { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('model' as const), key: fc.constantFrom('type', 'unk_token', 'dropout', 'byte_fallback', 'fuse_unk', 'continuing_subword_prefix'), value: fc.oneof(poolArb, fc.constantFrom('BPE', 'WordPiece', 'Unigram', 'WordLevel', 'Nope', '<zz>', '<unk>')) }),
  fc.record({ kind: fc.constant('config' as const), value: fc.oneof(poolArb, fc.record({ bos_token: fc.oneof(poolArb, fc.constantFrom('<s>', '<zz>')), eos_token: fc.oneof(poolArb, fc.constant({ content: 5 })) })) }),
  fc.record({ kind: fc.constant('whole' as const), text: fc.constantFrom(...WHOLE_JSON) }),
);
function writeTok(m: TokMutation | null, dir: string): { path: string; mutation: string } {
  const t = clone(base.tokenizer);
  let config: unknown = base.tokenizerConfig;
  let text: string | null = null;
  if (m) {
    switch (m.kind) {
      case 'vocab-id': { const toks = Object.keys(t.model.vocab); t.model.vocab[toks[m.token % toks.length]] = m.value; break; }
      case 'vocab-add': Object.defineProperty(t.model.vocab, m.token, { value: m.value, enumerable: true, writable: true, configurable: true }); break;
      case 'vocab': t.model.vocab = m.value; break;
      case 'merges': t.model.merges = m.value; break;
      case 'added_tokens': t.added_tokens = m.value.length && m.value.length % 2 ? [...t.added_tokens, ...m.value] : m.value; break;
      case 'model': t.model[m.key] = m.value; break;
      case 'config': config = m.value; break;
      case 'whole': text = m.text; break;
      default: t[m.kind] = m.value;
    }
  }
  writeFileSync(join(dir, 'tokenizer.json'), text ?? JSON.stringify(t));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return { path: dir, mutation: m ? short(m) : 'none (the valid base directory)' };
}

// ---- JSONL

type Line = { kind: 'json' | 'text'; s: string } | { kind: 'bytes'; b: number[] };
type JsonlMutation = { bom: boolean; crlf: boolean; trailing: boolean; lines: Line[] };
const LINE_CONSTANTS = [
  '', ' ', '\r', '{"text": "a"}\r', '\uFEFF{"text":"x"}', '{"text": "\\ud800"}', '{"text":1}', '{"prompt":"a"}', '{"completion":"a"}',
  '{"text":"a","prompt":"b"}', '{"__proto__": {"text": "x"}}', '{"text": "a", "text": 5}', deep(65), deep(100_000), '{"text": "a"} x',
  '{"prompt": "p", "completion": "c", "extra": [1, {"a": null}]}', 'null', '[]', '"text"', '{}', '{"constructor": "x"}', '\u2028',
  // chat rows: the reader checks them, the child also renders them with the default template
  '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', '{"messages": "x"}', '{"messages": null}', '{"messages": []}',
  '{"messages": [{"role": "assistant", "content": "</s><s>"}]}', '{"messages": [{"role": "user", "content": "\\ue000"}, {"role": "assistant", "content": "\\ue0010\\ue001"}]}',
  '{"messages": [{"role": "assistant", "content": "{{ raise_exception(1) }}"}], "text": "t"}', '{"messages": [{"role": "__proto__", "content": "x"}]}',
];
const messageArb = fc.record({
  role: fc.oneof({ weight: 4, arbitrary: fc.constantFrom('system', 'user', 'assistant') }, { weight: 1, arbitrary: fc.constantFrom('tool', '', 'Assistant', 'constructor') }),
  content: fc.oneof({ weight: 4, arbitrary: fc.string({ maxLength: 12 }) }, { weight: 1, arbitrary: fc.constantFrom('', ' ', null, 3, ['a'], '<s>', '</s>', '{% if %}', '\ue000') }),
}, { requiredKeys: [] });
const lineArb: fc.Arbitrary<Line> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ text: fc.string({ maxLength: 20 }) }).map((o) => ({ kind: 'json' as const, s: JSON.stringify(o) })) },
  { weight: 3, arbitrary: fc.record({ prompt: fc.string({ maxLength: 10 }), completion: fc.string({ maxLength: 10 }) }).map((o) => ({ kind: 'json' as const, s: JSON.stringify(o) })) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => ({ kind: 'json' as const, s: JSON.stringify(v) })) },
  { weight: 3, arbitrary: fc.array(messageArb, { maxLength: 5 }).map((messages) => ({ kind: 'json' as const, s: JSON.stringify({ messages }) })) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }).map((s) => ({ kind: 'text' as const, s })) },
  { weight: 2, arbitrary: fc.constantFrom(...LINE_CONSTANTS).map((s) => ({ kind: 'text' as const, s })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 24 }).map((b) => ({ kind: 'bytes' as const, b: [...b] })) },
  { weight: 1, arbitrary: fc.constantFrom([0xff], [0xc3], [0xed, 0xa0, 0x80], [0xef, 0xbb, 0xbf], [0x7b, 0x22, 0x74, 0x65, 0x78, 0x74, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d]).map((b) => ({ kind: 'bytes' as const, b: [...b] })) },
);
const jsonlArb: fc.Arbitrary<JsonlMutation> = fc.record({
  bom: fc.boolean(), crlf: fc.boolean(), trailing: fc.boolean(), lines: fc.array(lineArb, { minLength: 0, maxLength: 6 }),
});
function writeJsonl(m: JsonlMutation | null, dir: string): { path: string; mutation: string } {
  const path = join(dir, 'data.jsonl');
  const mm = m ?? { bom: false, crlf: false, trailing: true, lines: [{ kind: 'json', s: '{"text": "hello"}' }, { kind: 'json', s: '{"text": "world"}' }] };
  const nl = Buffer.from(mm.crlf ? '\r\n' : '\n');
  const parts: Buffer[] = mm.bom ? [Buffer.from([0xef, 0xbb, 0xbf])] : [];
  mm.lines.forEach((l, k) => {
    if (k) parts.push(nl);
    parts.push(l.kind === 'bytes' ? Buffer.from(l.b) : Buffer.from(l.s, 'utf8'));
  });
  if (mm.trailing) parts.push(nl);
  writeFileSync(path, Buffer.concat(parts));
  return { path, mutation: m ? short(m, 500) : 'none (a valid two-line file)' };
}

// ---- checkpoints

type CkptMutation = { optimizer: 'adamw' | 'adamw8bit' } & (
  | { kind: 'state'; ops: PathOp[] }
  | { kind: 'state-raw'; text: string }
  | { kind: 'meta'; key: string; value: unknown }
  | { kind: 'tensor'; tensor: number; edit: string });
const ckptArb: fc.Arbitrary<CkptMutation> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ optimizer: fc.constantFrom('adamw' as const, 'adamw8bit' as const), kind: fc.constant('state' as const), ops: pathOpsArb(fc.oneof({ weight: 1, arbitrary: fc.constant(null) }, { weight: 5, arbitrary: valueArb })) }) },
  { weight: 1, arbitrary: fc.record({ optimizer: fc.constant('adamw' as const), kind: fc.constant('state-raw' as const), text: fc.constantFrom(...WHOLE_JSON) }) },
  { weight: 1, arbitrary: fc.record({ optimizer: fc.constant('adamw' as const), kind: fc.constant('meta' as const), key: fc.constantFrom('format', 'version', 'state', '__metadata__'), value: poolArb }) },
  { weight: 3, arbitrary: fc.record({ optimizer: fc.constantFrom('adamw' as const, 'adamw8bit' as const), kind: fc.constant('tensor' as const), tensor: fc.nat(), edit: fc.oneof(sameBytesEdit, fc.constantFrom('rename:suffix', 'rename:swap', 'rename:prefix')) }) },
);
function writeCkpt(m: CkptMutation | null, dir: string): { path: string; mutation: string; optimizer: string } {
  const path = join(dir, 'ckpt.safetensors');
  const optimizer = m?.optimizer ?? 'adamw';
  const bytes: Buffer = base[`ckpt-${optimizer}`];
  if (!m) { writeFileSync(path, bytes); return { path, mutation: 'none (the valid base checkpoint)', optimizer }; }
  const { header, data } = stSplit(bytes);
  const meta = header.__metadata__;
  let mutation = short(m);
  switch (m.kind) {
    case 'state': {
      const state = JSON.parse(meta.state);
      mutation = `${m.optimizer}: state ${describeOps(state, m.ops)}`;
      meta.state = JSON.stringify(applyPathOps(state, m.ops));
      break;
    }
    case 'state-raw': meta.state = m.text; break;
    case 'meta':
      if (m.key === '__metadata__') header.__metadata__ = m.value;
      else meta[m.key] = m.value;
      break;
    case 'tensor': {
      const names = tensorNames(header);
      const name = names[m.tensor % names.length];
      const e = header[name];
      mutation = `${m.optimizer}: tensor ${name}: ${m.edit}`;
      if (m.edit.startsWith('rename:')) {
        delete header[name];
        header[m.edit === 'rename:suffix' ? `${name}.x` : m.edit === 'rename:swap' ? name.replace(/^(model|optim)\./, (p) => (p === 'model.' ? 'optim.' : 'model.')) : name.replace(/^(model|optim)\./, '')] = e;
      } else applySameBytes(e, m.edit);
      break;
    }
  }
  writeFileSync(path, stJoin(JSON.stringify(header), data));
  return { path, mutation, optimizer };
}

// ---- suite files

const suiteValueArb = fc.oneof(
  { weight: 5, arbitrary: valueArb },
  { weight: 1, arbitrary: fc.constantFrom('..', '.', '../x', 'a b', 'full', 'lora', 'qlora', 'spam', 'jsonl', 'tiny', 'block', 'every:0', 'every:1.5', 'off', '/nonexistent', '/tmp', 'cosine', 'lora-r8', 'adamw8bit', 'nf4') },
  // paths made when the case is written: a model directory, a directory, the case's own suite file
  { weight: 1, arbitrary: fc.constantFrom('$HF_DIR', '$CASE_DIR', '$SUITE_FILE', { hfDir: '$HF_DIR' }, { hfDir: '$CASE_DIR' }, { preset: 'tiny', hfDir: '$HF_DIR' }, { hfDir: '$HF_DIR', pretrainSteps: 5 }) },
);
type SuiteMutation = { kind: 'ops'; ops: PathOp[] } | { kind: 'whole'; text: string };
const suiteArb: fc.Arbitrary<SuiteMutation> = fc.oneof(
  { weight: 9, arbitrary: fc.record({ kind: fc.constant('ops' as const), ops: pathOpsArb(suiteValueArb) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('whole' as const), text: fc.constantFrom(...WHOLE_JSON) }) },
);
function writeSuite(m: SuiteMutation | null, dir: string): { path: string; mutation: string } {
  const path = join(dir, 'suite.json');
  let text: string, mutation: string;
  if (!m) { text = JSON.stringify(base.suite); mutation = 'none (the valid base suite)'; }
  else if (m.kind === 'whole') { text = m.text; mutation = short(m); }
  else {
    mutation = describeOps(base.suite, m.ops);
    const paths: Record<string, string> = { $HF_DIR: base.hfDir, $CASE_DIR: dir, $SUITE_FILE: path };
    text = JSON.stringify(applyPathOps(clone(base.suite), m.ops), (_k, v) => (typeof v === 'string' && v in paths ? paths[v] : v));
  }
  writeFileSync(path, text);
  return { path, mutation };
}

// ---------------------------------------------------------------------------
// Running cases in the child

interface Outcome extends Result { kind: 'ok' | 'clean' | 'other'; why?: string }

/** Runs `cases` in child processes (restarted after a crash or a hang). */
async function runInChild(cases: Case[], listFile: string): Promise<Map<number, Outcome>> {
  writeFileSync(listFile, JSON.stringify(cases));
  const results = new Map<number, Outcome>();
  let start = 0;
  while (start < cases.length) {
    const from = start;
    const child = spawn(process.execPath, [...NODE_FLAGS, CHILD, listFile, String(from)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000); });
    let last = Date.now(), next = from, hung = false;
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      let r: Result;
      try { r = JSON.parse(line); } catch { return; } // stray output of a library
      if (typeof r?.i !== 'number') return;
      results.set(r.i, classify(cases[r.i], r));
      next = r.i + 1;
      last = Date.now();
    });
    const timer = setInterval(() => {
      if (Date.now() - last > HANG_MS) { hung = true; child.kill('SIGKILL'); }
    }, 250);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => child.on('close', (c, s) => res([c, s])));
    clearInterval(timer);
    if (next === 0 && !hung) throw new Error(`the fuzz child failed before its first case (code ${code}, signal ${signal}): ${stderr}`);
    if (next < cases.length) {
      const c = cases[next];
      const why = hung ? `hang: no progress within ${HANG_MS} ms` : `child exited (code ${code}, signal ${signal}) during this case`;
      results.set(c.i, { i: c.i, outcome: hung ? 'hang' : 'crash', message: `${why}${stderr ? `; stderr: ${stderr.trim().slice(-1500)}` : ''}`, kind: 'other', why });
      start = next + 1;
    } else {
      start = cases.length;
      if (code !== 0) throw new Error(`fuzz child exited with code ${code} after the last case: ${stderr}`);
    }
  }
  return results;
}

function classify(c: Case, r: Result): Outcome {
  if (r.outcome === 'ok') return { ...r, kind: 'ok' };
  if (r.outcome === 'bad-ok') return { ...r, kind: 'other', why: 'loaded, but not correctly' };
  if (r.outcome !== 'error') return { ...r, kind: 'other', why: `outcome ${r.outcome}` };
  if (!r.isError) return { ...r, kind: 'other', why: 'threw something that is not an Error' };
  if (INTERNAL.test(r.message)) return { ...r, kind: 'other', why: 'internal error message' };
  if (!r.message.includes(c.path)) return { ...r, kind: 'other', why: `the message does not name ${c.path}` };
  return { ...r, kind: 'clean' };
}

let failedAny = false;

const READERS: { reader: string; make: () => Case[] }[] = [
  { reader: 'safetensors', make: () => makeCases('safetensors', stArb, 1, writeSt, ['model.safetensors']) },
  { reader: 'hf', make: () => makeCases('hf', hfArb, 2, writeHf, ['config.json', 'model.safetensors']) },
  { reader: 'adapter', make: () => makeCases('adapter', adapterArb, 3, writeAdapter, ['adapter_config.json', 'adapter_model.safetensors']) },
  { reader: 'tokenizer', make: () => makeCases('tokenizer', tokArb, 4, writeTok, ['tokenizer.json', 'tokenizer_config.json']) },
  { reader: 'jsonl', make: () => makeCases('jsonl', jsonlArb, 5, writeJsonl, ['data.jsonl']) },
  { reader: 'checkpoint', make: () => makeCases('checkpoint', ckptArb, 6, writeCkpt, ['ckpt.safetensors']) },
  { reader: 'suite', make: () => makeCases('suite', suiteArb, 7, writeSuite, ['suite.json']) },
];

for (const { reader, make } of READERS) {
  test(`fuzz ${reader}: every mutated file loads correctly or is refused with a clean error naming it`, async () => {
    const t0 = Date.now();
    const cases = make();
    const results = await runInChild(cases, join(root, reader, 'cases.json'));
    const count = { ok: 0, clean: 0, other: 0 };
    if (process.env.FUZZ_LOG) {
      // every case's outcome, for looking at what the fuzz reaches
      writeFileSync(process.env.FUZZ_LOG, cases.map((c) => `${JSON.stringify({ reader, i: c.i, mutation: c.mutation, ...results.get(c.i) })}\n`).join(''), { flag: 'a' });
    }
    const failures: string[] = [];
    for (const c of cases) {
      const r = results.get(c.i) ?? { i: c.i, outcome: 'missing', message: 'no result', kind: 'other' as const, why: 'no result' };
      count[r.kind]++;
      const caseDir = c.dir;
      if (c.i === 0 && r.kind !== 'ok') {
        failures.push(`${reader} #0 (the valid base input) did not load: ${r.message}`);
      }
      if (r.kind === 'other') {
        writeFileSync(join(caseDir, 'case.json'), JSON.stringify([c]));
        failures.push(`${reader} #${c.i}: ${r.why}\n    mutation: ${c.mutation}\n    message: ${r.message.length > 800 ? `${r.message.slice(0, 800)}...` : r.message}\n    input kept: ${c.path}\n    replay: node ${NODE_FLAGS.join(' ')} ${CHILD} ${join(caseDir, 'case.json')}`);
      } else if (c.i !== 0) {
        rmSync(caseDir, { recursive: true, force: true });
      }
    }
    const slowest = [...results.values()].reduce((m, r) => Math.max(m, r.ms ?? 0), 0);
    const peakRss = [...results.values()].reduce((m, r) => Math.max(m, r.maxRssKiB ?? 0), 0);
    console.log(`fuzz ${reader}: ${cases.length} cases, ${count.ok} ok, ${count.clean} clean error, ${count.other} other (seed ${SEED}, ${((Date.now() - t0) / 1000).toFixed(1)} s, slowest case ${slowest} ms, child peak RSS ${(peakRss / 1024).toFixed(0)} MiB)`);
    if (failures.length) {
      failedAny = true;
      throw new Error(`${failures.length} ${reader} case(s) failed:\n  ${failures.join('\n  ')}`);
    }
  });
}
