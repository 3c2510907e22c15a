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
  ByteTokenizer, asLlamaTokens, exportGguf, generate, modelFromGguf, nextTokenLogProbs as logProbs, readGguf, tryLoadLlamaCpp,
} from '@tunebench/core';
import { groupwiseOf, mergeQalora, prepareQalora } from '../src/index.js';
import { tempDir, textRows, tinyModel, train } from './helpers.js';

type Token = import('node-llama-cpp').Token;
const asTokens = asLlamaTokens;
const { lib, unavailable } = await tryLoadLlamaCpp({ maxThreads: 1 });

const tok = new ByteTokenizer();
const prompt = [256, ...tok.encode('Once upon a time, ')];



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
