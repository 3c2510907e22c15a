// GGUF export of the architectures beyond Llama: Qwen2 (q/k/v biases) as
// llama.cpp's `qwen2`, Qwen3 (q/k norms, its own head_dim) as `qwen3`, Llama
// with attention_bias and Mistral as `llama`. The file's names, metadata and
// values are checked on every machine; where node-llama-cpp's prebuilt CPU
// binary loads (see gguf_llamacpp.test.ts), llama.cpp runs each export and
// its next-token log-probabilities are compared with ours.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BYTE_VOCAB_SIZE, ByteTokenizer, type LlamaConfig, LlamaModel, asLlamaTokens, exportGguf, f16ToF32, f32ToF16, maxLogProbDiff, readGguf, ropeRowPermutation,
  tryLoadLlamaCpp,
} from '../src/index.js';
import { logProbs } from './gguf_helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tb-gguf-arch-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

type Token = import('node-llama-cpp').Token;
const asTokens = asLlamaTokens;
const { lib, unavailable } = await tryLoadLlamaCpp({ maxThreads: 1 });

const base = { vocabSize: BYTE_VOCAB_SIZE, hiddenSize: 64, intermediateSize: 128, numLayers: 2, ropeTheta: 10000, maxPositionEmbeddings: 128 };
const CASES: { name: string; arch: string; cfg: LlamaConfig; fullAttention?: boolean }[] = [
  { name: 'qwen2', arch: 'qwen2', cfg: { ...base, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, tieWordEmbeddings: true, modelType: 'qwen2', qkvBias: true } },
  { name: 'qwen3', arch: 'qwen3', cfg: { ...base, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, tieWordEmbeddings: false, modelType: 'qwen3', headDim: 32, qkNorm: true } },
  { name: 'llama with attention_bias', arch: 'llama', cfg: { ...base, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-5, tieWordEmbeddings: false, qkvBias: true, oBias: true } },
  // a window longer than the prompt: llama.cpp (no window) and we agree there
  { name: 'mistral', arch: 'llama', cfg: { ...base, numHeads: 4, numKvHeads: 1, rmsNormEps: 1e-5, tieWordEmbeddings: false, modelType: 'mistral', slidingWindow: 48 }, fullAttention: true },
];

const tok = new ByteTokenizer();
const prompt = [256, ...tok.encode('The sliding fox, the biased dog.')];

function randomModel(cfg: LlamaConfig): LlamaModel {
  const m = LlamaModel.init(cfg, { seed: 77, std: 0.15, trainable: false });
  let k = 0;
  for (const p of m.parameters()) {
    if (p.value.shape.length !== 1) continue;
    const v = p.value.data() as Float32Array;
    for (let i = 0; i < v.length; i++) v[i] += 0.3 * Math.sin(++k * 1.3);
  }
  return m;
}

for (const c of CASES) {
  test(`${c.name}: exported as llama.cpp's ${c.arch} with its biases, norms and key lengths`, () => {
    const model = randomModel(c.cfg);
    try {
      const path = join(dir, `${c.name.replace(/\W+/g, '_')}.gguf`);
      exportGguf(model, path, { type: 'f16', tokenizer: tok, fullAttention: c.fullAttention });
      const f = readGguf(path);
      assert.equal(f.metadata.get('general.architecture')?.value, c.arch);
      assert.equal(f.metadata.get(`${c.arch}.block_count`)?.value, 2);
      const D = c.cfg.headDim ?? c.cfg.hiddenSize / c.cfg.numHeads;
      if (c.cfg.headDim) assert.equal(f.metadata.get(`${c.arch}.attention.key_length`)?.value, D);
      else assert.equal(f.metadata.get(`${c.arch}.attention.key_length`), undefined);
      const names = new Set(f.tensors.map((t) => t.name));
      const b0 = model.blocks[0];
      // q: rows as they are for the NEOX-RoPE qwen architectures, pair order under llama
      const perm = c.arch === 'llama' ? ropeRowPermutation(c.cfg.numHeads, D) : null;
      // (F16 weights: compared with our values rounded to f16; biases and norms are F32, exact)
      const qw = Float32Array.from(b0.linears.q_proj.parameters()[0].value.toFloat32(), (x) => f16ToF32(f32ToF16(x)));
      const got = f.read('blk.0.attn_q.weight'), C = c.cfg.hiddenSize;
      for (let r = 0; r < c.cfg.numHeads * D; r++) {
        const src = perm ? perm[r] : r;
        assert.deepEqual(got.subarray(r * C, (r + 1) * C), qw.subarray(src * C, (src + 1) * C), `attn_q row ${r}`);
      }
      for (const [n, to] of [['q_proj', 'attn_q'], ['k_proj', 'attn_k'], ['v_proj', 'attn_v'], ['o_proj', 'attn_output']] as const) {
        const p = b0.extras.bias[n];
        assert.equal(names.has(`blk.0.${to}.bias`), !!p, `${to}.bias ${p ? 'written' : 'absent'}`);
        if (!p) continue;
        const v = p.value.toFloat32(), g = f.read(`blk.0.${to}.bias`);
        const pm = c.arch === 'llama' && (n === 'q_proj' || n === 'k_proj') ? ropeRowPermutation(n === 'q_proj' ? c.cfg.numHeads : c.cfg.numKvHeads, D) : null;
        assert.deepEqual(g, pm ? Float32Array.from(pm, (src) => v[src]) : v, `${to}.bias values`);
      }
      assert.equal(names.has('blk.1.attn_q_norm.weight'), !!c.cfg.qkNorm);
      if (c.cfg.qkNorm) assert.deepEqual(f.read('blk.1.attn_k_norm.weight'), model.blocks[1].extras.kNorm!.value.toFloat32());
      assert.equal(names.has('output.weight'), !c.cfg.tieWordEmbeddings);
    } finally {
      model.dispose();
    }
  });
}

test('GGUF export refuses what llama.cpp cannot run, by name', () => {
  const mistral = randomModel(CASES[3].cfg);
  try {
    assert.throws(() => exportGguf(mistral, join(dir, 'x.gguf'), { type: 'f16', tokenizer: tok }),
      /sliding window of 48 positions \(mistral sliding_window\).*pass fullAttention: true/);
  } finally {
    mistral.dispose();
  }
  const q3b = randomModel({ ...CASES[1].cfg, qkvBias: true, oBias: true });
  try {
    assert.throws(() => exportGguf(q3b, join(dir, 'y.gguf'), { type: 'f16', tokenizer: tok }), /llama\.cpp's qwen3 architecture has no projection biases/);
  } finally {
    q3b.dispose();
  }
});


for (const c of CASES) {
  // f16 weights: llama.cpp's CPU matmul rounds activations to f16; the llama
  // export of gguf_llamacpp.test.ts stays under 1e-2 against the f32 original
  test(`llama.cpp runs the ${c.name} export (f16) as our model computes it`, { skip: lib ? false : unavailable }, async (t) => {
    const model = randomModel(c.cfg);
    try {
      const path = join(dir, `${c.name.replace(/\W+/g, '_')}-f16.gguf`);
      exportGguf(model, path, { type: 'f16', tokenizer: tok, fullAttention: c.fullAttention });
      const m = await lib!.llama.loadModel({ modelPath: path });
      try {
        const ctx = await m.createContext({ contextSize: 128, threads: 1, batchSize: 64 });
        try {
          const seq = ctx.getSequence();
          const res = await seq.controlledEvaluate((prompt as unknown as Token[]).map((x) => [x, { generateNext: { probabilities: true } }] as [Token, { generateNext: { probabilities: true } }]));
          const lp = res.map((r) => {
            const row = new Float64Array(c.cfg.vocabSize).fill(-Infinity);
            for (const [token, p] of r!.next.probabilities!) row[token as unknown as number] = Math.log(p);
            return row;
          });
          const d = maxLogProbDiff(lp, logProbs(model, prompt));
          t.diagnostic(`${c.name}: max |log p llama.cpp - ours| = ${d.toExponential(2)}`);
          assert.ok(d < 3e-2, `${c.name}: ${d}`);
        } finally {
          await ctx.dispose();
        }
      } finally {
        await m.dispose();
      }
    } finally {
      model.dispose();
    }
  });
}

test('cleanup', { skip: lib ? false : unavailable }, async () => {
  await lib!.llama.dispose();
});
