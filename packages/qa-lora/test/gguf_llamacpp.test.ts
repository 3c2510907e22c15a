// The merged QA-LoRA model (INT4 g32, adapters folded into the offsets)
// exported as Q4_1 GGUF and run by llama.cpp itself (node-llama-cpp 3.21.1,
// its prebuilt CPU binary, build 'never', as in core's gguf_llamacpp test).
// Kept apart because it needs that native library; skipped with the reason
// when it cannot load.
//
// Compared: llama.cpp's next-token log-probabilities after every prompt token
// vs our merged model's (the file's weights are ours up to fp16 d and m,
// qalora.test.ts), and its greedy continuation vs our argmax.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  ByteTokenizer, type GgufFile, type LlamaConfig, LlamaModel, Tensor, exportGguf, generate, headDim, modelTensorShapes, readGguf, ropeRowPermutation,
} from '@tunebench/core';
import { groupwiseOf, mergeQalora, prepareQalora } from '../src/index.js';
import { tempDir, textRows, tinyModel, train } from './helpers.js';

type NodeLlamaCpp = typeof import('node-llama-cpp');
type Token = import('node-llama-cpp').Token;
const asTokens = (ids: readonly number[]) => ids as unknown as Token[];
let lib: { mod: NodeLlamaCpp; llama: Awaited<ReturnType<NodeLlamaCpp['getLlama']>> } | null = null;
let unavailable = '';
try {
  const mod = await import('node-llama-cpp');
  const llama = await mod.getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, progressLogs: false, logLevel: mod.LlamaLogLevel.error, maxThreads: 1 });
  lib = { mod, llama };
} catch (e) {
  unavailable = `node-llama-cpp could not load its prebuilt CPU binary: ${(e as Error).message}`;
}

const tok = new ByteTokenizer();
const prompt = [256, ...tok.encode('Once upon a time, ')];

/** log-softmax of the logits after every token of `ids` */
function logProbs(model: LlamaModel, ids: readonly number[]): Float64Array[] {
  const idsT = Tensor.from(Int32Array.from(ids), [1, ids.length], { dtype: 'i32' });
  const h = model.hidden(idsT), logits = model.logits(h);
  const V = model.config.vocabSize, lv = logits.data() as Float32Array, out: Float64Array[] = [];
  for (let t = 0; t < ids.length; t++) {
    const row = lv.subarray(t * V, (t + 1) * V);
    let m = -Infinity, s = 0;
    for (const x of row) m = Math.max(m, x);
    for (const x of row) s += Math.exp(x - m);
    out.push(Float64Array.from(row, (x) => x - m - Math.log(s)));
  }
  for (const t of [idsT, h, logits]) t.dispose();
  return out;
}

/** Our model with the file's (dequantized) weights, for what llama.cpp should compute:
 * the projections are ours up to fp16 d and m, the embeddings ours rounded to fp16. */
function modelFromGguf(file: GgufFile, cfg: LlamaConfig): LlamaModel {
  const part: Record<string, string> = {
    input_layernorm: 'attn_norm', post_attention_layernorm: 'ffn_norm', 'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
    'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
  };
  const ggufName = (hf: string) => {
    if (hf === 'model.embed_tokens.weight') return 'token_embd.weight';
    if (hf === 'model.norm.weight') return 'output_norm.weight';
    const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(hf)!;
    return `blk.${m[1]}.${part[m[2]]}.weight`;
  };
  const tensors = new Map<string, Tensor>(), D = headDim(cfg);
  for (const [hf, shape] of modelTensorShapes(cfg)) {
    let v = file.read(ggufName(hf));
    const perm = hf.endsWith('q_proj.weight') ? ropeRowPermutation(cfg.numHeads, D) : hf.endsWith('k_proj.weight') ? ropeRowPermutation(cfg.numKvHeads, D) : null;
    if (perm) {  // llama.cpp's row order back to HF's: out[perm[r]] = file[r]
      const u = new Float32Array(v.length), n = shape[1];
      for (let r = 0; r < perm.length; r++) u.set(v.subarray(r * n, (r + 1) * n), perm[r] * n);
      v = u;
    }
    tensors.set(hf, Tensor.from(v, shape, { category: 'frozen' }));
  }
  return LlamaModel.fromTensors(cfg, tensors, { trainable: false });
}

// core's gguf_llamacpp test measured 1.3e-1 for Q4_1 against the same weights
// (llama.cpp quantizes activations to Q8_1 in its dot products) and bounds it
// at 0.4; the merged model's weights are the same kind of Q4_1 blocks.
const TOL = 0.4;

test('llama.cpp runs the merged QA-LoRA INT4 g32 model (Q4_1) as our merged model computes it', { skip: lib ? false : unavailable }, async (t) => {
  const dir = tempDir();
  const ours = tinyModel(2024);
  try {
    prepareQalora(ours, { bits: 4, groupSize: 32, quantizer: 'gptq', r: 4, alpha: 8 }, { calibration: textRows(4, 32) });
    train(ours, 3);
    mergeQalora(ours);
    const path = join(dir, 'qalora-q4_1.gguf');
    exportGguf(ours, path, { type: 'q4_1', tokenizer: tok, groupwise: groupwiseOf(ours) });
    const N = 16;
    const model = await lib!.llama.loadModel({ modelPath: path });
    let lp: Float64Array[], greedy: number[] = [];
    try {
      const ctx = await model.createContext({ contextSize: 128, threads: 1, batchSize: 64 });
      try {
        const seq = ctx.getSequence();
        const res = await seq.controlledEvaluate(asTokens(prompt).map((x) => [x, { generateNext: { probabilities: true } }] as [Token, { generateNext: { probabilities: true } }]));
        lp = res.map((r) => {
          const row = new Float64Array(ours.config.vocabSize).fill(-Infinity);
          for (const [token, p] of r!.next.probabilities!) row[token as unknown as number] = Math.log(p);
          return row;
        });
        await seq.clearHistory();
        for await (const x of seq.evaluate(asTokens(prompt), { temperature: 0 })) {
          greedy.push(x as unknown as number);
          if (greedy.length === N) break;
        }
      } finally {
        await ctx.dispose();
      }
    } finally {
      await model.dispose();
    }
    const same = modelFromGguf(readGguf(path), ours.config);
    const mine = logProbs(same, prompt);
    let worst = 0;
    for (let i = 0; i < mine.length; i++) for (let v = 0; v < mine[i].length; v++) {
      if (Math.max(mine[i][v], lp[i][v]) > Math.log(1e-4)) worst = Math.max(worst, Math.abs(mine[i][v] - lp[i][v]));
    }
    const oursGreedy = generate(same, prompt, { maxNewTokens: N }).tokens;
    // how far below our argmax llama.cpp's picks fall, teacher-forced on its sequence
    const forced = logProbs(same, [...prompt, ...greedy]);
    same.dispose();
    let gap = 0;
    for (let i = 0; i < greedy.length; i++) { const row = forced[prompt.length - 1 + i]; gap = Math.max(gap, Math.max(...row) - row[greedy[i]]); }
    t.diagnostic(`max |log p llama.cpp - ours (merged INT4 projections, the file's F16 embeddings)| = ${worst.toExponential(2)}; greedy ${N} tokens agree ${greedy.filter((x, i) => x === oursGreedy[i]).length}/${N}; llama.cpp's picks at most ${gap.toExponential(2)} nats below our argmax`);
    assert.ok(worst < TOL, `log-prob difference ${worst}`);
    assert.ok(gap <= TOL, `a greedy pick ${gap} nats below our argmax`);
    assert.equal(greedy[0], oursGreedy[0], 'first greedy token');
  } finally {
    ours.dispose();
    rmSync(dir, { recursive: true, force: true });
    await lib!.llama.dispose();
  }
});
