// The GGUF export is the model: a merged QA-LoRA INT4 g32 directory exported
// by `tunebench gguf` (exportModelDir) and run by llama.cpp itself
// (node-llama-cpp 3.21.1, its prebuilt CPU binary, build 'never', one thread),
// on a 255-token Brown passage, against our model loaded from that directory
// (what the bench evaluates). Skipped with the reason when node-llama-cpp
// cannot load.
//
// Three comparisons, on the log-probability of each next token of the passage
// and on the top-1 token at each of the 255 positions:
//   - the export alone: our model vs our model rebuilt from the file's own
//     weights (no llama.cpp): within 0.05, top-1 the same at >= 254/255.
//     With token_embd (the tied head) requantized to Q4_1, as before, this
//     model gives 0.45 and 231/255 here.
//   - F16 file in llama.cpp vs ours: within 0.05, >= 254/255.
//   - Q4_1 file in llama.cpp vs ours: llama.cpp's Q4_1 matmuls quantize the
//     activations to 8-bit blocks (Q8_1), which on this model moves its
//     log-probs by 0.07 against the file's own weights and turns 2 top-1
//     tokens (both printed). Asserted: no further than that arithmetic puts
//     llama.cpp from the file's weights, plus the export's own bound.
//
// The model is not trivial: a tiny base pretrained briefly on Brown news
// text, loaded as QA-LoRA INT4 g32 (RTN), its adapters trained on more of it,
// merged into the offsets and saved (saveQaloraModel).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ArrayDataSource, ByteTokenizer, IntNLinear, LlamaModel, Tensor, Trainer, asLlamaTokens, f16ToF32, f32ToF16, modelFromGguf,
  nextTokenLogProbs as logProbs, preset, readGguf, saveHfModel, tryLoadLlamaCpp,
} from '@tunebench/core';
import { loadQaloraMerged, loadQaloraModel, mergeQalora, saveQaloraModel } from '@tunebench/qa-lora';
import { exportModelDir } from '../src/commands/gguf.js';
import { loadBrown } from '../src/tasks/brown.js';

type Token = import('node-llama-cpp').Token;
const asTokens = asLlamaTokens;
const { lib, unavailable } = await tryLoadLlamaCpp({ maxThreads: 1 });

const tok = new ByteTokenizer();
const cfg = preset('tiny');
const LP_TOL = 0.05, MIN_AGREE = 254;

/** Training rows of T tokens (and their next tokens) cut from byte-encoded text. */
function rowsOf(text: string, n: number, T: number, start = 0): { ids: Int32Array; targets: Int32Array }[] {
  const bytes = tok.encode(text);
  return Array.from({ length: n }, (_, r) => {
    const o = start + r * T;
    if (o + T + 1 > bytes.length) throw new Error(`the training text has ${bytes.length} bytes, row ${r} needs ${o + T + 1}`);
    return { ids: Int32Array.from(bytes.slice(o, o + T)), targets: Int32Array.from(bytes.slice(o + 1, o + T + 1)) };
  });
}

function trainSteps(model: LlamaModel, rows: { ids: Int32Array; targets: Int32Array }[], steps: number, lr: number, batch: number): number {
  const trainer = new Trainer(model, new ArrayDataSource(rows, batch, 1, true), { schedule: { kind: 'constant', lr, warmupSteps: 0, totalSteps: steps } });
  let loss = NaN;
  try { for (let i = 0; i < steps; i++) loss = trainer.trainStep().loss; } finally { trainer.dispose(); }
  return loss;
}


/** llama.cpp's next-token log-probabilities after every token of `ids` */
async function llamaCppLogProbs(path: string, ids: readonly number[]): Promise<Float64Array[]> {
  const model = await lib!.llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({ contextSize: cfg.maxPositionEmbeddings, threads: 1, batchSize: cfg.maxPositionEmbeddings });
    try {
      const res = await ctx.getSequence().controlledEvaluate(asTokens(ids).map((x) => [x, { generateNext: { probabilities: true } }] as [Token, { generateNext: { probabilities: true } }]));
      return res.map((r) => {
        const row = new Float64Array(cfg.vocabSize).fill(-Infinity);
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


function fileLogProbs(path: string, ids: readonly number[]): Float64Array[] {
  const m = modelFromGguf(readGguf(path), cfg);
  try { return logProbs(m, ids); } finally { m.dispose(); }
}

const argmax = (row: Float64Array) => row.reduce((best, x, i) => (x > row[best] ? i : best), 0);

/** `target`: max |log p llama.cpp - ours| of the passage's next tokens; `any`: over every
 * token either gives p > 1e-4; `agree`: positions where the top-1 tokens are the same */
function compare(cpp: Float64Array[], ours: Float64Array[], targets: readonly number[]): { target: number; any: number; agree: number; disagreeAt: number[] } {
  let target = 0, any = 0;
  const disagreeAt: number[] = [];
  for (let i = 0; i < ours.length; i++) {
    target = Math.max(target, Math.abs(ours[i][targets[i]] - cpp[i][targets[i]]));
    for (let v = 0; v < ours[i].length; v++) {
      if (Math.max(ours[i][v], cpp[i][v]) > Math.log(1e-4)) any = Math.max(any, Math.abs(ours[i][v] - cpp[i][v]));
    }
    if (argmax(cpp[i]) !== argmax(ours[i])) disagreeAt.push(i);
  }
  return { target, any, agree: ours.length - disagreeAt.length, disagreeAt };
}

test('llama.cpp predicts a 255-token Brown passage as the merged QA-LoRA INT4 g32 model does (Q4_1 and F16 exports)', { skip: lib ? false : unavailable, timeout: 600_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-gguf-brown-'));
  try {
    const docs = loadBrown();
    const passageDoc = docs.find((d) => d.id === 'cr09')!;  // humor; never trained on
    const trainText = docs.filter((d) => d.genre === 'a').slice(0, 8).map((d) => d.text).join('\n\n');
    // 255 positions: after BOS and each of the passage's first 254 bytes, the next byte is the target
    const text = tok.encode(passageDoc.text.replace(/\s+/g, ' ').trim()).slice(0, 255);
    const passage = [256, ...text.slice(0, 254)], targets = text;
    assert.equal(passage.length, 255);
    assert.equal(targets.length, 255);

    // a tiny base pretrained on news text, saved as a Hugging Face directory
    const base = LlamaModel.init(cfg, { seed: 3, std: 0.02 });
    let loss: number;
    try {
      loss = trainSteps(base, rowsOf(trainText, 64, 64), 150, 3e-3, 8);
      saveHfModel(base, join(dir, 'base'), { dtype: 'f32' });
    } finally {
      base.dispose();
    }
    // QA-LoRA INT4 g32 on it, adapters trained on other news text, merged and saved
    const { model: q } = loadQaloraModel(join(dir, 'base'), { bits: 4, groupSize: 32, quantizer: 'rtn', r: 8, alpha: 16 });
    let qloss: number, offsetChange: number;
    try {
      qloss = trainSteps(q, rowsOf(trainText, 32, 64, 64 * 64 + 1), 40, 2e-3, 8);
      offsetChange = mergeQalora(q).maxOffsetChange;
      saveQaloraModel(q, join(dir, 'merged'));
    } finally {
      q.dispose();
    }
    assert.ok(offsetChange > 0, 'the adapters moved the offsets');
    t.diagnostic(`base loss ${loss.toFixed(3)} after 150 steps; QA-LoRA loss ${qloss.toFixed(3)} after 40; merge moved offsets by up to ${offsetChange.toExponential(2)}`);

    // the model the bench evaluates: read back from the directory
    const ours = loadQaloraMerged(join(dir, 'merged'));
    let lpOurs: Float64Array[];
    let denseProj: Float32Array;
    let denseEmbed: Float32Array;
    try {
      lpOurs = logProbs(ours, passage);
      const downProj = ours.blocks[1].linears.down_proj;
      assert.ok(downProj instanceof IntNLinear, 'the merged model has INT-N projections');
      const d = downProj.toDense();
      try { denseProj = d.toFloat32(); } finally { d.dispose(); }
      denseEmbed = ours.embed.value.toFloat32();
    } finally {
      ours.dispose();
    }
    const confident = lpOurs.filter((row) => Math.exp(Math.max(...row)) > 0.5).length;
    t.diagnostic(`our top-1 probability exceeds 0.5 at ${confident}/255 positions`);

    // Q4_1: the default for a merged INT4 g32 directory
    const q41 = exportModelDir({ model: join(dir, 'merged'), out: join(dir, 'q4_1.gguf') });
    assert.equal(q41.type, 'q4_1');
    const types = new Map(q41.summary.tensors.map((x) => [x.name, x.type]));
    assert.equal(types.get('token_embd.weight'), 'F16', 'token_embd (also the tied head) is F16');
    assert.equal(types.has('output.weight'), false, 'tied: no output.weight');
    assert.equal(q41.summary.tensors.filter((x) => x.groupwise && x.type === 'Q4_1').length, 7 * cfg.numLayers, 'every projection is its INT4 groups');
    const embErr = q41.summary.tensors.find((x) => x.name === 'token_embd.weight')!.error!;
    assert.ok(embErr.relRms < 1e-3, `token_embd F16 relative rms error ${embErr.relRms}`);
    const file = readGguf(join(dir, 'q4_1.gguf')), embFile = file.read('token_embd.weight');
    for (let i = 0; i < denseEmbed.length; i++) assert.equal(embFile[i], f16ToF32(f32ToF16(denseEmbed[i])), `token_embd[${i}] is the model's value rounded to fp16`);
    const fileQ = compare(fileLogProbs(join(dir, 'q4_1.gguf'), passage), lpOurs, targets);
    t.diagnostic(`q4_1, the export alone (our model with the file's weights): max |log p - ours| of the next tokens ${fileQ.target.toExponential(2)}, of any token with p > 1e-4 ${fileQ.any.toExponential(2)}; top-1 agrees at ${fileQ.agree}/255`);
    assert.ok(fileQ.target < LP_TOL && fileQ.any < LP_TOL, `q4_1 file's weights: log-prob difference ${fileQ.target} / ${fileQ.any} (bound ${LP_TOL})`);
    assert.ok(fileQ.agree >= MIN_AGREE, `q4_1 file's weights: top-1 agreement ${fileQ.agree}/255 (at least ${MIN_AGREE})`);
    const cppRaw = await llamaCppLogProbs(join(dir, 'q4_1.gguf'), passage);
    const cppQ = compare(cppRaw, lpOurs, targets);
    const cppSame = compare(cppRaw, fileLogProbs(join(dir, 'q4_1.gguf'), passage), targets);
    t.diagnostic(`q4_1 in llama.cpp: max |log p llama.cpp - ours| of the next tokens ${cppQ.target.toExponential(2)}, of any token with p > 1e-4 ${cppQ.any.toExponential(2)}; top-1 agrees at ${cppQ.agree}/255${cppQ.disagreeAt.length ? ` (differs at ${cppQ.disagreeAt.join(', ')})` : ''}`);
    t.diagnostic(`q4_1 in llama.cpp vs the file's own weights (llama.cpp's 8-bit activations alone): next tokens ${cppSame.target.toExponential(2)}, any token ${cppSame.any.toExponential(2)}; top-1 agrees at ${cppSame.agree}/255`);
    assert.ok(cppQ.target <= cppSame.target + fileQ.target + 1e-9, `q4_1: llama.cpp is ${cppQ.target} from ours, more than its ${cppSame.target} from the file's weights plus the export's ${fileQ.target}`);
    assert.ok(cppQ.agree >= cppSame.agree - (255 - fileQ.agree), `q4_1: top-1 agreement with ours ${cppQ.agree}/255, with the file's weights ${cppSame.agree}/255`);
    // what llama.cpp's arithmetic measured on this model (0.068, 253/255), with room
    assert.ok(cppQ.target < 0.15, `q4_1: log-prob difference ${cppQ.target} on the passage's next tokens`);
    assert.ok(cppQ.agree >= 250, `q4_1: top-1 agreement ${cppQ.agree}/255`);

    // F16: the INT4 weights dequantized exactly (scale·code + offset), rounded to fp16
    const f16 = exportModelDir({ model: join(dir, 'merged'), out: join(dir, 'f16.gguf'), type: 'f16' });
    assert.ok(f16.summary.tensors.every((x) => (x.ne.length === 1 ? x.type === 'F32' : x.type === 'F16') && !x.groupwise));
    const down = readGguf(join(dir, 'f16.gguf')).read('blk.1.ffn_down.weight');
    for (let i = 0; i < denseProj.length; i++) assert.equal(down[i], f16ToF32(f32ToF16(denseProj[i])), `ffn_down[${i}] is the dequantized weight rounded to fp16`);
    const cppF = compare(await llamaCppLogProbs(join(dir, 'f16.gguf'), passage), lpOurs, targets);
    t.diagnostic(`f16: max |log p llama.cpp - ours| of the next tokens ${cppF.target.toExponential(2)}, of any token with p > 1e-4 ${cppF.any.toExponential(2)}; top-1 agrees at ${cppF.agree}/255`);
    assert.ok(cppF.target < LP_TOL, `f16: log-prob difference ${cppF.target} on the passage's next tokens`);
    assert.ok(cppF.agree >= MIN_AGREE, `f16: top-1 agreement ${cppF.agree}/255`);

    // q8_0 on a merged INT4 model would requantize it: refused, nothing written
    assert.throws(() => exportModelDir({ model: join(dir, 'merged'), out: join(dir, 'q8.gguf'), type: 'q8_0' }), /q8_0 would requantize it/);

    // Q8_0 embeddings on request: smaller, and the error is recorded
    const e8 = exportModelDir({ model: join(dir, 'merged'), out: join(dir, 'q4_1-e8.gguf'), embeddings: 'q8_0' });
    const e8emb = e8.summary.tensors.find((x) => x.name === 'token_embd.weight')!;
    assert.equal(e8emb.type, 'Q8_0');
    assert.ok(e8emb.error && e8emb.error.relRms > embErr.relRms && e8emb.error.relRms < 2e-2, `Q8_0 embeddings relative rms error ${e8emb.error?.relRms}`);
    assert.ok(e8.notes.some((n) => /^token_embd\.weight: Q8_0, max \|error\| \S+, relative rms error \S+$/.test(n)), e8.notes.join('\n'));
    const cpp8 = compare(await llamaCppLogProbs(join(dir, 'q4_1-e8.gguf'), passage), lpOurs, targets);
    t.diagnostic(`q4_1 with Q8_0 embeddings (relative rms error ${e8emb.error!.relRms.toExponential(2)}): max |log p llama.cpp - ours| of the next tokens ${cpp8.target.toExponential(2)}, of any token with p > 1e-4 ${cpp8.any.toExponential(2)}; top-1 agrees at ${cpp8.agree}/255`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await lib?.llama.dispose();
  }
});
