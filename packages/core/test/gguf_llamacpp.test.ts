// The exported GGUF run by llama.cpp itself (node-llama-cpp 3.21.1, its
// prebuilt CPU binary from the npm package @node-llama-cpp/linux-x64; never
// built or downloaded: build 'never'). Kept apart from gguf.test.ts because it
// needs that native library; when it cannot load, the tests are skipped with
// the reason.
//
// What is compared, per weight type, on a random tiny model (fixed seed):
//   - llama.cpp's next-token log-probabilities after every prompt token vs
//     ours from the same (dequantized) weights: isolates the export (names,
//     RoPE row order, hyperparameters, vocabulary). llama.cpp's CPU path
//     rounds activations to f16 (F16 weights) or quantizes them to 8 bits
//     (Q8_0/Q4_1 weights) inside its matmuls, hence per-type tolerances.
//   - the same vs our original f32 model: adds the weights' quantization error.
//   - greedy continuations, token for token.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer, LlamaModel, asLlamaTokens, exportGguf, generate, maxLogProbDiff, preset, readGguf, tryLoadLlamaCpp } from '../src/index.js';
import { logProbs, modelFromGguf } from './gguf_helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tb-gguf-llama-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

type Token = import('node-llama-cpp').Token;
const asTokens = asLlamaTokens;
const { lib, unavailable } = await tryLoadLlamaCpp({ maxThreads: 1 });

const tok = new ByteTokenizer();
const cfg = preset('tiny');
// std 0.15: far from uniform outputs, so greedy tokens are not near-ties
const ours = LlamaModel.init(cfg, { seed: 2024, std: 0.15, trainable: false });
const prompt = [256, ...tok.encode('Once upon a time, ')];

async function llamaCppRun(path: string, continuation: number) {
  const model = await lib!.llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({ contextSize: 128, threads: 1, batchSize: 64 });
    try {
      const seq = ctx.getSequence();
      const res = await seq.controlledEvaluate(asTokens(prompt).map((t) => [t, { generateNext: { probabilities: true } }] as [Token, { generateNext: { probabilities: true } }]));
      const lp = res.map((r) => {
        const row = new Float64Array(cfg.vocabSize).fill(-Infinity);
        for (const [token, p] of r!.next.probabilities!) row[token as unknown as number] = Math.log(p);
        return row;
      });
      await seq.clearHistory();
      const greedy: number[] = [];
      for await (const t of seq.evaluate(asTokens(prompt), { temperature: 0 })) {
        greedy.push(t as unknown as number);
        if (greedy.length === continuation) break;
      }
      return { lp, greedy, vocab: model.tokenize('héllo wörld\n') as unknown as number[], text: model.detokenize(asTokens(tok.encode('a b\nc'))) };
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}


// Tolerances on max |log p| differences (tokens with p > 1e-4), measured on
// this model with node-llama-cpp 3.21.1 (printed as diagnostics):
//   f16   vs same weights 6.8e-3, vs f32 original 8.6e-3: llama.cpp's CPU
//         matmul rounds activations to f16 (relative 2^-11)
//   q8_0  vs same weights 1.1e-1, vs original 1.2e-1: llama.cpp quantizes
//         activations to Q8_0 blocks (relative ~1/254) for the dot products
//   q4_1  vs same weights 1.3e-1 (the activations go through Q8_1 likewise),
//         vs original 1.5: the 4-bit projections of a random model, not the
//         export (token_embd is F16 in both: 2.2 when it was Q4_1 too)
// Bounds sit about 3x above. Greedy: every token llama.cpp picks must be our
// own argmax up to the same-weights tolerance (random-model outputs have
// near-ties, where an exact token match would test noise).
const TOL = {
  f16: { sameWeights: 2e-2, original: 3e-2 },
  q8_0: { sameWeights: 0.3, original: 0.4 },
  q4_1: { sameWeights: 0.4, original: 6 },
} as const;

/** how far below our argmax llama.cpp's greedy picks fall, teacher-forced on its sequence */
function greedyGap(model: LlamaModel, greedy: number[]): number {
  const seq = [...prompt, ...greedy], lp = logProbs(model, seq);
  let worst = 0;
  for (let i = 0; i < greedy.length; i++) {
    const row = lp[prompt.length - 1 + i];
    worst = Math.max(worst, Math.max(...row) - row[greedy[i]]);
  }
  return worst;
}

for (const type of ['f16', 'q8_0', 'q4_1'] as const) {
  test(`llama.cpp runs the ${type} export as our model computes it`, { skip: lib ? false : unavailable }, async (t) => {
    const path = join(dir, `tiny-${type}.gguf`);
    exportGguf(ours, path, { type, tokenizer: tok });
    const N = 24;
    const cpp = await llamaCppRun(path, N);
    const same = modelFromGguf(readGguf(path), cfg);
    try {
      const lpSame = logProbs(same, prompt), lpOurs = logProbs(ours, prompt);
      const dSame = maxLogProbDiff(cpp.lp, lpSame), dOurs = maxLogProbDiff(cpp.lp, lpOurs);
      const gSame = generate(same, prompt, { maxNewTokens: N }).tokens, gOurs = generate(ours, prompt, { maxNewTokens: N }).tokens;
      const agree = (a: number[], b: number[]) => a.filter((x, i) => x === b[i]).length;
      t.diagnostic(`${type}: max |log p llama.cpp - ours(same weights)| = ${dSame.toExponential(2)}, vs ours(f32 original) = ${dOurs.toExponential(2)}; greedy ${N} tokens agree with same-weights ${agree(cpp.greedy, gSame)}/${N}, with original ${agree(cpp.greedy, gOurs)}/${N}`);
      assert.deepEqual(cpp.vocab, tok.encode('héllo wörld\n'), 'llama.cpp tokenizes text into our byte ids');
      assert.equal(cpp.text, 'a b\nc', 'llama.cpp detokenizes our byte ids');
      assert.ok(dSame < TOL[type].sameWeights, `${type}: ${dSame} vs same weights`);
      assert.ok(dOurs < TOL[type].original, `${type}: ${dOurs} vs original`);
      const gap = greedyGap(same, cpp.greedy);
      t.diagnostic(`${type}: llama.cpp's greedy picks are at most ${gap.toExponential(2)} nats below our argmax (same weights)`);
      assert.ok(gap <= TOL[type].sameWeights, `${type}: a greedy pick ${gap} nats below our argmax`);
      assert.equal(cpp.greedy[0], gSame[0], 'first greedy token');
    } finally {
      same.dispose();
    }
  });
}

// Scaled RoPE: llama.cpp reads our linear / yarn keys and the llama3
// rope_freqs tensor as our model computes them, over 100 positions (past the
// original context of llama3 and yarn); the same weights with plain RoPE
// would be far off.
async function llamaCppLogProbs(path: string, ids: number[], V: number): Promise<Float64Array[]> {
  const model = await lib!.llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({ contextSize: 128, threads: 1, batchSize: 128 });
    try {
      const res = await ctx.getSequence().controlledEvaluate(asTokens(ids).map((t) => [t, { generateNext: { probabilities: true } }] as [Token, { generateNext: { probabilities: true } }]));
      return res.map((r) => {
        const row = new Float64Array(V).fill(-Infinity);
        for (const [token, p] of r!.next.probabilities!) row[token as unknown as number] = Math.log(p);
        return row;
      });
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}

const scaledBase = { ...cfg, hiddenSize: 64, intermediateSize: 128, numHeads: 4, numKvHeads: 2, maxPositionEmbeddings: 128 };
const SCALED: { name: string; ropeScaling: NonNullable<typeof cfg.ropeScaling> }[] = [
  { name: 'llama3', ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 32 } },
  { name: 'linear', ropeScaling: { type: 'linear', factor: 4 } },
  { name: 'yarn', ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32 } },
];
for (const v of SCALED) {
  test(`llama.cpp runs the ${v.name} rope scaling of an f16 export as our model computes it`, { skip: lib ? false : unavailable }, async (t) => {
    const path = join(dir, `scaled-${v.name}.gguf`);
    const scaledCfg = { ...scaledBase, ropeScaling: v.ropeScaling };
    const m = LlamaModel.init(scaledCfg, { seed: 7, std: 0.15, trainable: false });
    exportGguf(m, path, { type: 'f16', tokenizer: tok });
    const ids = [256, ...tok.encode('The quick brown fox jumps over the lazy dog; the lazy dog sleeps on, and the fox runs far away.')].slice(0, 100);
    const cpp = await llamaCppLogProbs(path, ids, scaledCfg.vocabSize);
    const same = modelFromGguf(readGguf(path), scaledCfg);
    const { ropeScaling: _s, ...plainCfg } = scaledCfg;
    const plain = modelFromGguf(readGguf(path), plainCfg);
    try {
      const d = maxLogProbDiff(cpp, logProbs(same, ids)), dPlain = maxLogProbDiff(cpp, logProbs(plain, ids));
      t.diagnostic(`${v.name}: max |log p llama.cpp - ours| = ${d.toExponential(2)} over ${ids.length} positions; with plain RoPE ${dPlain.toExponential(2)}`);
      assert.ok(d < TOL.f16.sameWeights, `${v.name}: ${d} vs same weights`);
      assert.ok(dPlain > 5 * TOL.f16.sameWeights, `${v.name}: plain RoPE is only ${dPlain} away: the test would not see a missing scaling`);
    } finally {
      same.dispose();
      plain.dispose();
      m.dispose();
    }
  });
}

test('cleanup', { skip: lib ? false : unavailable }, async () => {
  ours.dispose();
  await lib!.llama.dispose();
});
