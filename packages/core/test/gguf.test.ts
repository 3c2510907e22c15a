// GGUF export and reader, without llama.cpp (gguf_llamacpp.test.ts loads the
// files in llama.cpp itself): header and metadata round trip, block layouts
// against values recomputed here, exact Q4_1 from group-wise INT4, the RoPE
// row order, and bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BYTE_VOCAB_SIZE, ByteTokenizer, GGUF_ALIGNMENT, type GroupwiseInt4, type LlamaConfig, LlamaModel, exportGguf,
  f16ToF32, f32ToF16, ggufArray, ggufScalar, gpt2ByteToUnicode, headDim, modelTensorShapes, preset, quantizeQ8_0, readGguf, ropeRowPermutation,
  tensorError, Tensor, quantizeIntN, dequantizeIntN, disposeQuantized, groupwiseToQ4_1, dequantizeQ4_1,
} from '../src/index.js';
import { ggufNameOf, logProbs, modelFromGguf, unpermuteRows } from './gguf_helpers.js';
import { rng } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tb-gguf-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const tok = new ByteTokenizer();

/** Nearest fp16 value (ties to even), computed with powers of two rather than bits. */
function fp16Round(x: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const ulp = 2 ** Math.max(e - 10, -24);
  const q = a / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const v = r * ulp;
  return Math.sign(x) * (v > 65504 ? Infinity : v);
}

function model(cfg: LlamaConfig, seed: number): LlamaModel {
  return LlamaModel.init(cfg, { seed, std: 0.1, trainable: false });
}

test('f32ToF16 rounds to nearest even and inverts f16ToF32 on every half value', () => {
  const pins: [number, number][] = [
    [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [2 ** -24, 0x0001], [2 ** -25, 0x0000],
    [3 * 2 ** -25, 0x0002], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [2 ** -14, 0x0400], [Infinity, 0x7c00],
  ];
  for (const [x, h] of pins) assert.equal(f32ToF16(x), h, `f32ToF16(${x})`);
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
  for (let h = 0; h < 0x10000; h++) {
    const x = f16ToF32(h);
    if (!Number.isNaN(x)) assert.equal(f32ToF16(x), h === 0x8000 ? 0x8000 : h, `half 0x${h.toString(16)}`);
  }
  const r = rng(7);
  for (let i = 0; i < 20000; i++) {
    const x = Math.fround(r.normal() * 2 ** Math.floor(r.next() * 40 - 26));
    assert.equal(f16ToF32(f32ToF16(x)), fp16Round(x), `x = ${x}`);
  }
});

test('header, metadata and tensor infos round trip; tied head writes no output.weight', () => {
  const cfg = preset('tiny'), m = model(cfg, 1), path = join(dir, 'tiny-f16.gguf');
  const summary = exportGguf(m, path, { type: 'f16', tokenizer: tok, name: 'tiny test' });
  const f = readGguf(path);
  assert.equal(f.version, 3);
  assert.equal(f.fileBytes, summary.bytes);
  assert.equal(f.alignment, GGUF_ALIGNMENT);
  assert.equal(f.dataOffset % GGUF_ALIGNMENT, 0);
  const want: Record<string, unknown> = {
    'general.architecture': 'llama', 'general.name': 'tiny test', 'general.file_type': 1,
    'llama.context_length': cfg.maxPositionEmbeddings, 'llama.embedding_length': cfg.hiddenSize, 'llama.block_count': cfg.numLayers,
    'llama.feed_forward_length': cfg.intermediateSize, 'llama.attention.head_count': cfg.numHeads,
    'llama.attention.head_count_kv': cfg.numKvHeads, 'llama.rope.dimension_count': headDim(cfg), 'llama.vocab_size': cfg.vocabSize,
    'llama.rope.freq_base': Math.fround(cfg.ropeTheta), 'llama.attention.layer_norm_rms_epsilon': Math.fround(cfg.rmsNormEps),
    'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.bos_token_id': 256, 'tokenizer.ggml.eos_token_id': 257,
    'tokenizer.ggml.padding_token_id': 258,
  };
  for (const [k, v] of Object.entries(want)) assert.equal(ggufScalar(f, k), v, k);
  assert.equal(f.metadata.get('llama.block_count')!.type, 'u32');
  assert.equal(f.metadata.get('llama.rope.freq_base')!.type, 'f32');
  const tokens = ggufArray(f, 'tokenizer.ggml.tokens'), types = ggufArray(f, 'tokenizer.ggml.token_type');
  assert.equal(f.metadata.get('tokenizer.ggml.tokens')!.type, 'array');
  assert.equal(tokens.length, BYTE_VOCAB_SIZE);
  assert.deepEqual(tokens.slice(256), ['<s>', '</s>', '<pad>']);
  assert.equal(tokens[65], 'A');     // printable bytes stand for themselves
  assert.equal(tokens[32], '\u0120'); // space is GPT-2's 'Ġ'
  assert.equal(tokens[10], '\u010a'); // newline is 'Ċ'
  assert.equal(new Set(gpt2ByteToUnicode()).size, 256);
  assert.deepEqual(types.slice(250), [1, 1, 1, 1, 1, 1, 3, 3, 3]);
  assert.deepEqual(ggufArray(f, 'tokenizer.ggml.merges'), []);

  const names = [...modelTensorShapes(cfg).keys()].map(ggufNameOf);
  assert.deepEqual(f.tensors.map((t) => t.name).sort(), names.sort());
  assert.ok(!names.includes('output.weight'));
  for (const t of f.tensors) {
    assert.equal(t.offset % GGUF_ALIGNMENT, 0, t.name);
    assert.equal(t.type, t.ne.length === 1 ? 'F32' : 'F16', t.name);
  }
  const q = f.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!;
  assert.deepEqual(q.ne, [cfg.hiddenSize, cfg.hiddenSize]);
  const down = f.tensors.find((t) => t.name === 'blk.1.ffn_down.weight')!;
  assert.deepEqual(down.ne, [cfg.intermediateSize, cfg.hiddenSize]);  // ne[0] = in features

  // values: F16 of ours, q/k in llama.cpp's pair order
  const params = new Map(m.parameters().map((p) => [p.name, p.value.toFloat32()]));
  const emb = params.get('model.embed_tokens.weight')!, embFile = f.read('token_embd.weight');
  for (let i = 0; i < emb.length; i++) assert.equal(embFile[i], fp16Round(emb[i]));
  const k = params.get('model.layers.1.self_attn.k_proj.weight')!, kFile = f.read('blk.1.attn_k.weight');
  const D = headDim(cfg), C = cfg.hiddenSize;
  // head h, pair i: file rows 2i, 2i+1 are HF rows i, i + D/2
  for (let h = 0; h < cfg.numKvHeads; h++) for (let i = 0; i < D / 2; i++) for (let c = 0; c < C; c++) {
    assert.equal(kFile[(h * D + 2 * i) * C + c], fp16Round(k[(h * D + i) * C + c]));
    assert.equal(kFile[(h * D + 2 * i + 1) * C + c], fp16Round(k[(h * D + D / 2 + i) * C + c]));
  }
  assert.deepEqual(f.read('blk.0.attn_norm.weight'), params.get('model.layers.0.input_layernorm.weight'));

  // untied: output.weight is written, F16 like token_embd in a quantized export
  const cfgU = { ...cfg, tieWordEmbeddings: false }, mU = model(cfgU, 2), pathU = join(dir, 'untied.gguf');
  const sU = exportGguf(mU, pathU, { type: 'q8_0', tokenizer: tok });
  const fU = readGguf(pathU);
  assert.equal(fU.tensors.find((t) => t.name === 'output.weight')?.type, 'F16');
  assert.equal(fU.tensors.find((t) => t.name === 'token_embd.weight')?.type, 'F16');
  assert.equal(fU.tensors.find((t) => t.name === 'blk.0.attn_q.weight')?.type, 'Q8_0');
  assert.equal(ggufScalar(fU, 'general.file_type'), 7);
  const head = mU.lmHead!.value.toFloat32(), headFile = fU.read('output.weight');
  for (let i = 0; i < head.length; i++) assert.equal(headFile[i], fp16Round(head[i]), `output.weight[${i}]`);
  // the error of the embeddings is measured: fp16 rounding, at most half an fp16 step of the largest value
  for (const name of ['token_embd.weight', 'output.weight']) {
    const e = sU.tensors.find((t) => t.name === name)!.error!;
    assert.ok(e.maxAbs > 0 && e.maxAbs <= 2 ** -11 * 2, `${name} max error ${e.maxAbs}`);
    assert.ok(e.relRms > 0 && e.relRms < 2 ** -11, `${name} relative rms error ${e.relRms}`);
  }
  assert.ok(sU.tensors.filter((t) => t.error).length === 2, 'only the embeddings carry an error record');
  // Q8_0 embeddings on request
  const s8 = exportGguf(mU, pathU, { type: 'q4_1', tokenizer: tok, embeddings: 'q8_0' });
  const f8 = readGguf(pathU);
  for (const name of ['token_embd.weight', 'output.weight']) assert.equal(f8.tensors.find((t) => t.name === name)?.type, 'Q8_0', name);
  assert.equal(f8.tensors.find((t) => t.name === 'blk.0.attn_q.weight')?.type, 'Q4_1');
  const e8 = s8.tensors.find((t) => t.name === 'output.weight')!.error!, e8File = tensorError(head, f8.read('output.weight'));
  assert.deepEqual(e8, e8File, 'the recorded error is that of the values in the file');
  assert.ok(e8.relRms > 1e-3 && e8.relRms < 1e-2, `Q8_0 relative rms error ${e8.relRms}`);
  assert.throws(() => exportGguf(mU, pathU, { type: 'q4_1', tokenizer: tok, embeddings: 'q4_1' as never }), /embeddings \(the storage of token_embd and output\) must be one of f16, q8_0, got "q4_1"/);
  m.dispose(); mU.dispose();
});

test('RoPE: adjacent-pair rotation of permuted rows gives the same q·k as rotate-half', () => {
  const D = 16, r = rng(3), theta = 10000, perm = ropeRowPermutation(1, D);
  const q = Float64Array.from({ length: D }, () => r.normal()), k = Float64Array.from({ length: D }, () => r.normal());
  const inv = (i: number) => theta ** (-(2 * i) / D);
  const halves = (x: Float64Array, p: number) => {  // HF: pairs (i, i + D/2)
    const y = new Float64Array(D);
    for (let i = 0; i < D / 2; i++) { const c = Math.cos(p * inv(i)), s = Math.sin(p * inv(i)); y[i] = x[i] * c - x[i + D / 2] * s; y[i + D / 2] = x[i + D / 2] * c + x[i] * s; }
    return y;
  };
  const pairs = (x: Float64Array, p: number) => {  // llama.cpp NORM: pairs (2i, 2i + 1)
    const y = new Float64Array(D);
    for (let i = 0; i < D / 2; i++) { const c = Math.cos(p * inv(i)), s = Math.sin(p * inv(i)); y[2 * i] = x[2 * i] * c - x[2 * i + 1] * s; y[2 * i + 1] = x[2 * i + 1] * c + x[2 * i] * s; }
    return y;
  };
  const permute = (x: Float64Array) => Float64Array.from(perm, (old) => x[old]);
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i], 0);
  for (const [pq, pk] of [[5, 2], [17, 17], [40, 3]]) {
    const want = dot(halves(q, pq), halves(k, pk)), got = dot(pairs(permute(q), pq), pairs(permute(k), pk));
    assert.ok(Math.abs(want - got) < 1e-12, `positions ${pq},${pk}: ${got} vs ${want}`);
  }
});

/** The f32 values of a model parameter (the tensor's own host memory, writable). */
function paramValues(m: LlamaModel, name: string): Float32Array {
  const p = m.parameters().find((x) => x.name === name);
  if (!p) throw new Error(`no parameter ${name}`);
  return p.value.data() as Float32Array;
}

test('Q8_0 and Q4_1 values match a re-computation of the ggml blocks; Q4_1 nibble order', () => {
  const cfg = preset('tiny'), m = model(cfg, 4);
  // v_proj: a projection whose rows keep their order (q and k are permuted for RoPE)
  const emb = paramValues(m, 'model.layers.0.self_attn.v_proj.weight').slice();
  for (const type of ['q8_0', 'q4_1'] as const) {
    const path = join(dir, `tiny-${type}.gguf`);
    exportGguf(m, path, { type, tokenizer: tok });
    const f = readGguf(path), got = f.read('blk.0.attn_v.weight');
    assert.equal(f.tensors.find((t) => t.name === 'blk.0.attn_v.weight')!.type, type.toUpperCase());
    let worst = 0;
    for (let b = 0; b < emb.length / 32; b++) {
      const x = emb.subarray(b * 32, b * 32 + 32);
      if (type === 'q8_0') {
        const d = Math.fround(Math.max(...x.map(Math.abs)) / 127), dh = fp16Round(d);
        for (let j = 0; j < 32; j++) {
          const v = Math.fround(x[j] * Math.fround(1 / d)), q = Math.sign(v) * Math.round(Math.abs(v));
          assert.equal(got[b * 32 + j] + 0, Math.fround(dh * q) + 0, `q8_0 block ${b} value ${j}`);  // + 0: -0 and 0 alike
          worst = Math.max(worst, Math.abs(got[b * 32 + j] - x[j]) / dh);
        }
      } else {
        const min = Math.min(...x), max = Math.max(...x), d = Math.fround((max - min) / 15);
        const dh = fp16Round(d), mh = fp16Round(min);
        for (let j = 0; j < 32; j++) {
          const q = Math.min(15, Math.floor(Math.fround(Math.fround(Math.fround(x[j] - min) * Math.fround(1 / d)) + 0.5)));
          assert.equal(got[b * 32 + j], Math.fround(Math.fround(dh * q) + mh), `q4_1 block ${b} value ${j}`);
        }
      }
    }
    // half a step, plus the fp16 rounding of d (relative 2^-11) times |q| <= 127
    if (type === 'q8_0') assert.ok(worst <= 0.5 + 127 * 2 ** -11, `q8_0 error ${worst} steps`);
  }
  // Q8_0 embeddings (on request) are the same blocks
  const e8 = join(dir, 'tiny-e8.gguf'), embV = m.embed.value.toFloat32();
  exportGguf(m, e8, { type: 'q4_1', tokenizer: tok, embeddings: 'q8_0' });
  assert.deepEqual(readGguf(e8).readRaw('token_embd.weight'), quantizeQ8_0(embV));
  // nibble order, read from the raw bytes of one Q4_1 block: values 0..31 along a row
  const ramp: LlamaConfig = { ...cfg };
  const mr = model(ramp, 5);
  const ev = paramValues(mr, 'model.layers.0.self_attn.v_proj.weight');
  for (let j = 0; j < 32; j++) ev[j] = j;
  const path = join(dir, 'ramp.gguf');
  exportGguf(mr, path, { type: 'q4_1', tokenizer: tok });
  const raw = readGguf(path).readRaw('blk.0.attn_v.weight').subarray(0, 20);
  const dv = new DataView(raw.buffer, raw.byteOffset);
  assert.equal(dv.getUint16(0, true), f32ToF16(31 / 15));  // d first
  assert.equal(dv.getUint16(2, true), 0);                  // then m = min = 0
  for (let j = 0; j < 16; j++) {
    const code = (x: number) => Math.min(15, Math.floor(x * Math.fround(1 / Math.fround(31 / 15)) + 0.5));
    assert.equal(raw[4 + j] & 0xf, code(j), `low nibble of qs[${j}] is element ${j}`);
    assert.equal(raw[4 + j] >> 4, code(j + 16), `high nibble of qs[${j}] is element ${j + 16}`);
  }
  m.dispose(); mr.dispose();
});

test('group-wise INT4 (group 32) is written as exact Q4_1 blocks, up to fp16 rounding of scale and offset', (t) => {
  const cfg = preset('tiny'), m = model(cfg, 6), r = rng(11);
  const shapes = modelTensorShapes(cfg);
  const given = new Map<string, GroupwiseInt4>();
  for (const [name, shape] of shapes) {
    if (shape.length !== 2 || name === 'model.embed_tokens.weight') continue;
    const n = shape[0] * shape[1];
    const codes = Uint8Array.from({ length: n }, () => Math.floor(r.next() * 16));
    // scales/offsets of a QA-LoRA-like merged weight: small, of both signs for the offset
    const scales = Float32Array.from({ length: n / 32 }, () => 0.002 + 0.02 * r.next());
    const offsets = Float32Array.from({ length: n / 32 }, () => 0.1 * r.normal());
    given.set(name, { bits: 4, groupSize: 32, codes, scales, offsets });
  }
  const path = join(dir, 'groupwise.gguf');
  const summary = exportGguf(m, path, { type: 'q4_1', tokenizer: tok, groupwise: (n) => given.get(n) });
  assert.equal(summary.tensors.filter((x) => x.groupwise).length, given.size);
  const f = readGguf(path);
  let maxErr = 0, maxBound = 0;
  for (const [name, g] of given) {
    const shape = shapes.get(name)!;
    let file = f.read(ggufNameOf(name));
    const D = headDim(cfg);
    if (name.includes('q_proj')) file = unpermuteRows(file, shape[1], ropeRowPermutation(cfg.numHeads, D));
    if (name.includes('k_proj')) file = unpermuteRows(file, shape[1], ropeRowPermutation(cfg.numKvHeads, D));
    for (let i = 0; i < file.length; i++) {
      const gi = i >> 5, q = g.codes[i];
      const exact = g.scales[gi] * q + g.offsets[gi];  // the weight the caller meant (double)
      assert.equal(file[i], Math.fround(Math.fround(fp16Round(g.scales[gi]) * q) + fp16Round(g.offsets[gi])), `${name}[${i}]`);
      maxErr = Math.max(maxErr, Math.abs(file[i] - exact));
      // fp16 rounding is at most half an ulp of d and m each
      const bound = Math.abs(fp16Round(g.scales[gi]) - g.scales[gi]) * q + Math.abs(fp16Round(g.offsets[gi]) - g.offsets[gi]);
      maxBound = Math.max(maxBound, bound);
    }
  }
  t.diagnostic(`max |file - (scale·q + offset)| = ${maxErr.toExponential(3)} (fp16 rounding bound ${maxBound.toExponential(3)}) over ${given.size} weights`);
  assert.ok(maxErr <= maxBound + 1e-6, `${maxErr} > ${maxBound}`);
  // offsets up to ~0.4 have an fp16 half-ulp of 1.2e-4, scales ~0.02 times q <= 15 add 1.1e-4
  assert.ok(maxErr > 0 && maxErr < 5e-4, `max error ${maxErr}`);
  m.dispose();
});

test('a model rebuilt from the F16 file computes what ours computes', () => {
  const cfg = preset('tiny'), m = model(cfg, 8), path = join(dir, 'rebuild.gguf');
  exportGguf(m, path, { type: 'f16', tokenizer: tok });
  const m2 = modelFromGguf(readGguf(path), cfg);
  const ids = [256, ...tok.encode('The quick brown fox')];
  const a = logProbs(m, ids), b = logProbs(m2, ids);
  let worst = 0;
  for (let t = 0; t < a.length; t++) for (let v = 0; v < a[t].length; v++) worst = Math.max(worst, Math.abs(a[t][v] - b[t][v]));
  // only the weights' fp16 rounding differs (relative 2^-11 per weight)
  assert.ok(worst < 2e-2, `max |log p| difference ${worst}`);
  m.dispose(); m2.dispose();
});

test('bad input: unsupported type, indivisible rows, group-wise misuse, foreign tokenizer', () => {
  const cfg = preset('tiny'), m = model(cfg, 9), path = join(dir, 'bad.gguf');
  assert.throws(() => exportGguf(m, path, { type: 'q4_0' as never, tokenizer: tok }), /type must be one of f16, q8_0, q4_1, got "q4_0"/);
  assert.throws(() => exportGguf(m, path, { type: 'f16', tokenizer: { ...tok, name: 'hf:x', vocabSize: 32000 } as never }), /only the byte tokenizer/);
  const gw: GroupwiseInt4 = { bits: 4, groupSize: 32, codes: new Uint8Array(64 * 64), scales: new Float32Array(128), offsets: new Float32Array(128) };
  const only = (name: string, g: GroupwiseInt4) => (n: string) => (n === name ? g : undefined);
  const q0 = 'model.layers.0.self_attn.q_proj.weight';
  assert.throws(() => exportGguf(m, path, { type: 'q8_0', tokenizer: tok, groupwise: only(q0, gw) }), /written as Q4_1 blocks; export with type 'q4_1'/);
  assert.throws(() => exportGguf(m, path, { type: 'q4_1', tokenizer: tok, groupwise: only(q0, { ...gw, codes: new Uint8Array(64 * 64).fill(16) }) }), /codes\[0\] = 16 is not a 4-bit code/);
  assert.throws(() => exportGguf(m, path, { type: 'q4_1', tokenizer: tok, groupwise: only(q0, { ...gw, scales: new Float32Array(3) }) }), /scales must be a Float32Array of 128/);
  assert.throws(() => exportGguf(m, path, { type: 'q4_1', tokenizer: tok, groupwise: only(q0, { ...gw, groupSize: 64 as 32 }) }), /group size 64/);
  assert.throws(() => exportGguf(m, path, { type: 'q4_1', tokenizer: tok, groupwise: only(q0, { ...gw, offsets: new Float32Array(128).fill(1e5) }) }), /not a finite fp16 value/);
  m.dispose();

  // hidden 48: rows of 48 cannot be cut into blocks of 32
  const odd: LlamaConfig = { ...cfg, hiddenSize: 48, intermediateSize: 96, numHeads: 4, numKvHeads: 2 };
  const mo = model(odd, 10);
  assert.throws(() => exportGguf(mo, path, { type: 'q4_1', tokenizer: tok }), /Q4_1 blocks hold 32 values of a row.*model\.layers\.0\.self_attn\.q_proj\.weight \(row length 48\)/);
  assert.throws(() => exportGguf(mo, path, { type: 'f16', tokenizer: tok, embeddings: 'q8_0' }), /Q8_0 blocks hold 32 values of a row.*: model\.embed_tokens\.weight \(row length 48\);/);
  const s = exportGguf(mo, path, { type: 'q8_0', tokenizer: tok, indivisible: 'f16' });
  const types = new Map(s.tensors.map((x) => [x.name, x.type]));
  assert.equal(types.get('blk.0.attn_q.weight'), 'F16');
  assert.equal(types.get('blk.0.ffn_down.weight'), 'Q8_0');  // rows of 96
  assert.deepEqual(readGguf(path).tensors.map((x) => x.type), s.tensors.map((x) => x.type));
  exportGguf(mo, path, { type: 'f16', tokenizer: tok });  // F16 needs no blocks
  mo.dispose();
});

test('reader: corrupt and truncated files are clear errors', () => {
  const cfg = preset('tiny'), m = model(cfg, 12), path = join(dir, 'good.gguf');
  exportGguf(m, path, { type: 'q4_1', tokenizer: tok });
  m.dispose();
  const good = readFileSync(path), info = readGguf(path);
  const bad = join(dir, 'corrupt.gguf');
  const check = (label: string, bytes: Uint8Array, re: RegExp) => {
    writeFileSync(bad, bytes);
    assert.throws(() => readGguf(bad), re, label);
  };
  const patched = (at: number, f: (dv: DataView) => void) => { const b = Uint8Array.from(good); f(new DataView(b.buffer, at)); return b; };
  check('magic', patched(0, (dv) => dv.setUint32(0, 0x12345678, true)), /not a GGUF file: magic is 0x12345678/);
  check('version', patched(4, (dv) => dv.setUint32(0, 1, true)), /GGUF version 1 is not supported/);
  check('tensor count', patched(8, (dv) => dv.setBigUint64(0, 1n << 40n, true)), /tensor_count at offset 8 is 1099511627776/);
  check('empty', new Uint8Array(0), /not a GGUF file: 0 bytes/);
  check('header cut', good.subarray(0, 1000), /truncated GGUF file: .* needs \d+ bytes at offset \d+, the file has 1000/);
  check('data cut', good.subarray(0, good.length - 10), /truncated GGUF file: tensor '.*' ends at byte \d+, the file has \d+/);
  // first key 'general.architecture': its value type follows the 8-byte length and 20 bytes of text
  check('value type', patched(24 + 8 + 20, (dv) => dv.setUint32(0, 99, true)), /unknown GGUF value type 99 for metadata 'general.architecture'/);
  check('key length', patched(24, (dv) => dv.setBigUint64(0, 1n << 50n, true)), /length of metadata key 0 at offset 24 is \d+, more than/);
  // the last tensor info's offset field sits just before the header padding
  const last = info.tensors[info.tensors.length - 1];
  const headerEnd = good.indexOf(Buffer.from(last.name)) + last.name.length + 4 + 8 * last.ne.length + 4;
  check('misaligned', patched(headerEnd, (dv) => dv.setBigUint64(0, BigInt(last.offset + 4), true)), /not a multiple of the alignment 32/);
  check('overlap', patched(headerEnd, (dv) => dv.setBigUint64(0, 0n, true)), /overlap in the data area/);
  check('type', patched(headerEnd - 4, (dv) => dv.setUint32(0, 77, true)), /has ggml type 77 .* which this reader does not know/);
  assert.throws(() => readGguf(dir), /is a directory/);
  assert.throws(() => info.read('nope'), /no tensor 'nope'/);
});

test("an INT4 g32 weight quantized with constants 'f16' is exactly its Q4_1 blocks; with f32 constants it is not", () => {
  const r = rng(77);
  const [rows, cols] = [48, 128];
  const vals = new Float32Array(rows * cols);
  for (let i = 0; i < vals.length; i++) vals[i] = (r.next() * 2 - 1) * 0.05;
  const w = Tensor.from(vals, [rows, cols]);
  try {
    for (const constants of ['f16', 'f32'] as const) {
      const q = quantizeIntN(w, { bits: 4, groupSize: 32, constants });
      const packed = q.codes.data() as Uint8Array, codes = new Uint8Array(rows * cols);
      for (let e = 0; e < codes.length; e++) codes[e] = (packed[e >> 1] >> ((e & 1) * 4)) & 15;  // LSB first
      const g: GroupwiseInt4 = { bits: 4, groupSize: 32, codes, scales: Float32Array.from(q.scales.data() as Float32Array), offsets: Float32Array.from(q.offsets.data() as Float32Array) };
      const fromFile = dequantizeQ4_1(groupwiseToQ4_1(g, rows * cols), rows * cols);
      const ours = dequantizeIntN(q), ov = ours.data() as Float32Array;
      let differ = 0;
      for (let i = 0; i < ov.length; i++) if (fromFile[i] !== ov[i]) differ++;
      ours.dispose(); disposeQuantized(q);
      if (constants === 'f16') assert.equal(differ, 0, 'Q4_1 blocks of fp16 constants decode to our values bit for bit');
      else assert.ok(differ > 0, 'f32 constants are rounded by Q4_1 (else this test shows nothing)');
    }
  } finally {
    w.dispose();
  }
});
