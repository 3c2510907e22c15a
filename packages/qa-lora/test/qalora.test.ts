import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ByteTokenizer, IntNLinear, type IntNBits, Tensor, dequantizeIntN, exportGguf, f32ToF16, f16ToF32, headDim, intnBytes, preset, quantizeIntN,
  loadHfModel, readGguf, ropeRowPermutation, saveHfModel,
} from '@tunebench/core';
import { LoraLinear, loraLayers } from '@tunebench/lora';
import {
  captureInputs, groupwiseOf, withRequantizedIntN, loadQaloraMerged, loadQaloraModel, mergeQalora, prepareQalora, qaloraConfig, saveQaloraModel, unpackIntNCodes, withMergedQalora,
} from '../src/index.js';
import { logitsOf, relErr, tempDir, textRows, tinyModel, train } from './helpers.js';

const calibration = textRows(4, 32);

function intnLayers(model: ReturnType<typeof tinyModel>): Map<string, IntNLinear> {
  const out = new Map<string, IntNLinear>();
  for (const [n, l] of model.linears()) {
    const base = l instanceof LoraLinear ? l.base : l;
    assert.ok(base instanceof IntNLinear, `${n} is INT-N`);
    out.set(n, base);
  }
  return out;
}

for (const bits of [2, 3, 4, 8] as IntNBits[]) {
  test(`INT${bits}: merging trained adapters into the offsets computes what the adapted model did (codes and scales unchanged)`, (t) => {
    const model = tinyModel();
    try {
      const res = prepareQalora(model, { bits, groupSize: 32, quantizer: 'gptq', r: 4, alpha: 8 }, { calibration });
      assert.equal(res.bits, bits);
      assert.equal(res.calibrationTokens, 4 * 32);
      const layers = intnLayers(model);
      assert.equal(res.quantizedBytes, [...layers.values()].reduce((a, l) => a + intnBytes(l.quantized.shape, bits, 32), 0));
      assert.equal(loraLayers(model).length, 14, 'every projection adapted');
      for (const l of loraLayers(model)) assert.equal(l.adapter('default').poolSize, 32);
      const losses = train(model, 3);
      assert.ok(losses[2] < losses[0], `training moves: ${losses.join(', ')}`);
      let maxB = 0;
      for (const l of loraLayers(model)) for (const v of l.adapter('default').B.value.data() as Float32Array) maxB = Math.max(maxB, Math.abs(v));
      assert.ok(maxB > 1e-3, `B trained away from zero (max |B| ${maxB})`);
      const before = logitsOf(model);
      const snap = new Map([...layers].map(([n, l]) => [n, {
        codes: Uint8Array.from(l.quantized.codes.data() as Uint8Array), scales: Float32Array.from(l.quantized.scales.data() as Float32Array),
        offsets: Float32Array.from(l.quantized.offsets.data() as Float32Array),
      }]));
      // the non-destructive form first: same result, model left as it was
      const viaWith = withMergedQalora(model, () => logitsOf(model));
      assert.deepEqual(logitsOf(model), before, 'withMergedQalora restores the adapted model');
      const merged = mergeQalora(model);
      assert.equal(merged.layers, 14);
      assert.equal(merged.bytes, res.quantizedBytes, 'the merged model is the same size as the base');
      assert.equal(loraLayers(model).length, 0, 'no adapter branch left');
      assert.ok(model.parameters().every((p) => p.grad === null), 'nothing trainable left');
      let offsetsMoved = 0;
      for (const [n, l] of model.linears()) {
        assert.ok(l instanceof IntNLinear, `${n} is a plain IntNLinear after merging`);
        const s = snap.get(n)!;
        assert.deepEqual(l.quantized.codes.data(), s.codes, `${n}: codes unchanged`);
        assert.deepEqual(l.quantized.scales.data(), s.scales, `${n}: scales unchanged`);
        const off = l.quantized.offsets.data() as Float32Array;
        for (let i = 0; i < off.length; i++) if (off[i] !== s.offsets[i]) offsetsMoved++;
      }
      assert.ok(offsetsMoved > 0, 'the deltas went into the offsets');
      const after = logitsOf(model);
      const d = relErr(after, before), dw = relErr(viaWith, before);
      t.diagnostic(`INT${bits} g32 GPTQ: merged vs unmerged logits, max|diff|/max|ref| = ${d.toExponential(2)} (withMerged ${dw.toExponential(2)}); max |offset change| ${merged.maxOffsetChange.toExponential(2)}`);
      // the merged path sums the delta into f32 offsets before the GEMM instead of a separate low-rank branch: only f32 rounding
      assert.ok(d < 1e-4, `merged vs unmerged ${d}`);
      assert.ok(dw < 1e-4, `withMerged vs unmerged ${dw}`);
    } finally {
      model.dispose();
    }
  });
}

/** ||X Wᵀ - X deq(Q)ᵀ||_F / ||X Wᵀ||_F */
function layerError(X: Tensor, W: Float32Array, deq: Float32Array, out: number): number {
  const x = X.data() as Float32Array, [n, inF] = X.shape;
  let num = 0, den = 0;
  for (let r = 0; r < n; r++) for (let o = 0; o < out; o++) {
    let y = 0, yq = 0;
    for (let i = 0; i < inF; i++) { const xv = x[r * inF + i]; y += xv * W[o * inF + i]; yq += xv * deq[o * inF + i]; }
    num += (y - yq) ** 2; den += y * y;
  }
  return Math.sqrt(num / den);
}

test('GPTQ gives a lower layer-output error than RTN on the calibration inputs of real projections', (t) => {
  const model = tinyModel(5);
  const names = ['model.layers.1.self_attn.q_proj', 'model.layers.1.mlp.down_proj'];
  const { inputs, tokens } = captureInputs(model, textRows(8, 64), names);
  try {
    assert.equal(tokens, 8 * 64);
    for (const name of names) {
      const l = model.linears().get(name) as unknown as { weight: { value: Tensor } };
      const W = l.weight.value, X = inputs.get(name)!;
      assert.deepEqual(X.shape, [tokens, W.shape[1]]);
      const w = W.toFloat32();
      for (const bits of [2, 3, 4] as IntNBits[]) {
        const qr = quantizeIntN(W, { bits, groupSize: 32 }), qg = quantizeIntN(W, { bits, groupSize: 32, quantizer: 'gptq', calibration: X });
        const dr = dequantizeIntN(qr), dg = dequantizeIntN(qg);
        const er = layerError(X, w, dr.data() as Float32Array, W.shape[0]), eg = layerError(X, w, dg.data() as Float32Array, W.shape[0]);
        t.diagnostic(`${name} INT${bits} g32: relative layer-output error RTN ${er.toFixed(4)}, GPTQ ${eg.toFixed(4)} (${((1 - eg / er) * 100).toFixed(1)}% lower)`);
        assert.ok(eg < er, `${name} INT${bits}: GPTQ ${eg} vs RTN ${er}`);
        for (const q of [qr, qg]) { q.codes.dispose(); q.scales.dispose(); q.offsets.dispose(); }
        dr.dispose(); dg.dispose();
      }
    }
  } finally {
    for (const X of inputs.values()) X.dispose();
    model.dispose();
  }
});

test('loadQaloraModel: RTN quantizes while loading, GPTQ calibrates on the dense base; both match prepareQalora on the same weights', () => {
  const dir = tempDir();
  const src = tinyModel(7);
  try {
    saveHfModel(src, dir, { dtype: 'f32' });
    for (const quantizer of ['rtn', 'gptq'] as const) {
      const cfg = { bits: 3 as const, groupSize: 16 as const, quantizer, r: 2, alpha: 4 };
      const opts = quantizer === 'gptq' ? { calibration } : {};
      const { model, result } = loadQaloraModel(dir, cfg, opts);
      const mem = loadHfModel(dir, { trainable: false });
      prepareQalora(mem, cfg, opts);
      try {
        assert.equal(result.quantizer, quantizer);
        assert.equal(result.targets.length, 14);
        const a = intnLayers(model), b = intnLayers(mem);
        for (const [n, l] of a) assert.deepEqual(l.quantized.codes.data(), b.get(n)!.quantized.codes.data(), `${quantizer} ${n}: same codes`);
        assert.deepEqual(logitsOf(model), logitsOf(mem));
      } finally {
        model.dispose(); mem.dispose();
      }
    }
  } finally {
    src.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the merged INT-N model saves as safetensors (codes, scales, offsets) and loads back computing the same', () => {
  const dir = tempDir();
  const model = tinyModel(9);
  try {
    prepareQalora(model, { bits: 3, groupSize: 16, quantizer: 'rtn', r: 4, alpha: 8 });
    train(model, 2);
    mergeQalora(model);
    const saved = saveQaloraModel(model, dir);
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    assert.equal(cfg.quantization_config.quant_method, 'tunebench_intn');
    assert.equal(cfg.quantization_config.bits, 3);
    assert.equal(cfg.quantization_config.group_size, 16);
    assert.equal(cfg.quantization_config.modules.length, 14);
    assert.ok(saved.bytes > 0);
    const back = loadQaloraMerged(dir);
    try {
      const a = intnLayers(model), b = intnLayers(back);
      for (const [n, l] of a) {
        const q = b.get(n)!.quantized;
        assert.equal(q.bits, 3);
        for (const k of ['codes', 'scales', 'offsets'] as const) assert.deepEqual(q[k].data(), l.quantized[k].data(), `${n}.${k}`);
      }
      assert.deepEqual(logitsOf(back), logitsOf(model), 'bit-identical logits');
    } finally {
      back.dispose();
    }
    // a tampered config is refused with a message naming the field
    cfg.quantization_config.bits = 5;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    assert.throws(() => loadQaloraMerged(dir), /quantization_config\.bits must be one of 2, 3, 4, 8, got 5/);
    delete cfg.quantization_config;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    assert.throws(() => loadQaloraMerged(dir), /not an INT-N model/);
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

function ggufName(hf: string): string {
  const m = /^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.weight$/.exec(hf)!;
  const part: Record<string, string> = { q_proj: 'attn_q', k_proj: 'attn_k', v_proj: 'attn_v', o_proj: 'attn_output', gate_proj: 'ffn_gate', up_proj: 'ffn_up', down_proj: 'ffn_down' };
  return `blk.${m[1]}.${part[m[3]]}.weight`;
}

const fp16 = (x: number) => f16ToF32(f32ToF16(x));

test('GGUF Q4_1 export of a merged INT4 g32 model is exact up to the fp16 rounding of scale and offset', (t) => {
  const dir = tempDir();
  const model = tinyModel(11);
  try {
    prepareQalora(model, { bits: 4, groupSize: 32, quantizer: 'gptq', r: 4, alpha: 8 }, { calibration });
    train(model, 3);
    mergeQalora(model);
    const path = join(dir, 'merged.gguf');
    const summary = exportGguf(model, path, { type: 'q4_1', tokenizer: new ByteTokenizer(), groupwise: groupwiseOf(model) });
    assert.equal(summary.tensors.filter((x) => x.groupwise).length, 14);
    const file = readGguf(path), cfg = preset('tiny'), D = headDim(cfg);
    // the embeddings (also the tied head) are the model's, rounded to fp16: never requantized to 4 bits
    assert.equal(file.tensors.find((x) => x.name === 'token_embd.weight')?.type, 'F16');
    const emb = model.embed.value.toFloat32(), embFile = file.read('token_embd.weight');
    for (let i = 0; i < emb.length; i++) assert.equal(embFile[i], fp16(emb[i]), `token_embd[${i}]`);
    let maxDiff = 0, maxBound = 0;
    for (const [name, l] of model.linears()) {
      const q = (l as IntNLinear).quantized, [out, inn] = q.shape;
      let v = file.read(ggufName(`${name}.weight`));
      const perm = name.endsWith('q_proj') ? ropeRowPermutation(cfg.numHeads, D) : name.endsWith('k_proj') ? ropeRowPermutation(cfg.numKvHeads, D) : null;
      if (perm) {  // back to HF row order: out[perm[r]] = file[r]
        const u = new Float32Array(v.length);
        for (let r = 0; r < out; r++) u.set(v.subarray(r * inn, (r + 1) * inn), perm[r] * inn);
        v = u;
      }
      const ours = dequantizeIntN(q), o = ours.data() as Float32Array;
      const codes = unpackIntNCodes(q), sc = q.scales.data() as Float32Array, off = q.offsets.data() as Float32Array;
      for (let i = 0; i < v.length; i++) {
        const g = (i / 32) | 0;
        maxDiff = Math.max(maxDiff, Math.abs(v[i] - o[i]));
        maxBound = Math.max(maxBound, Math.abs(fp16(sc[g]) - sc[g]) * codes[i] + Math.abs(fp16(off[g]) - off[g]));
        assert.equal(v[i], Math.fround(Math.fround(fp16(sc[g]) * codes[i]) + fp16(off[g])), `${name}[${i}]: the file holds our codes with fp16 d and m`);
      }
      ours.dispose();
    }
    t.diagnostic(`max |GGUF Q4_1 weight - ours| = ${maxDiff.toExponential(3)} over 14 projections (fp16 rounding bound of scale/offset ${maxBound.toExponential(3)})`);
    assert.ok(maxDiff <= maxBound + 1e-6, `${maxDiff} > ${maxBound}`);
    assert.throws(() => { const m2 = tinyModel(); prepareQalora(m2, { bits: 3, groupSize: 32, quantizer: 'rtn' }); mergeQalora(m2); try { groupwiseOf(m2); } finally { m2.dispose(); } }, /INT3 g32; GGUF's Q4_1 holds INT4 with groups of 32/);
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad options are clear errors', () => {
  assert.throws(() => qaloraConfig({ bits: 5 as 4 }), /bits must be one of 2, 3, 4, 8, got 5/);
  assert.throws(() => qaloraConfig({ groupSize: 24 as 32 }), /groupSize must be one of 16, 32, 64, 128, got 24/);
  assert.throws(() => qaloraConfig({ r: 0 }), /r must be a positive integer, got 0/);
  assert.throws(() => qaloraConfig({ quantizer: 'awq' as 'rtn' }), /quantizer must be 'rtn' or 'gptq', got "awq"/);
  assert.throws(() => qaloraConfig({ poolSize: 8 } as never), /poolSize is not an option/);
  const m = tinyModel();
  try {
    // tiny's projections read 64 or 192 features: 128 divides neither
    assert.throws(() => prepareQalora(m, { groupSize: 128, quantizer: 'rtn' }), /has 64 input features, not divisible by groupSize 128/);
    assert.throws(() => prepareQalora(m, { quantizer: 'gptq' }), /'gptq' needs calibration token rows/);
    assert.throws(() => prepareQalora(m, { quantizer: 'rtn' }, { calibration }), /calibration rows are only used by quantizer 'gptq'/);
    assert.throws(() => prepareQalora(m, { quantizer: 'gptq' }, { calibration: [[1, 2, 999]] }), /calibration row 0 holds token 999/);
    assert.throws(() => mergeQalora(m), /the model has no adapters/);
    assert.ok([...m.linears().values()].every((l) => !(l instanceof IntNLinear)), 'a refused call left the model dense');
  } finally {
    m.dispose();
  }
  const trainable = tinyModel();
  const t2 = (trainable.constructor as typeof import('@tunebench/core').LlamaModel).init(preset('tiny'), { seed: 1 });
  try {
    assert.throws(() => prepareQalora(t2, { quantizer: 'rtn' }), /the base model must be frozen/);
  } finally {
    trainable.dispose(); t2.dispose();
  }
});

test('withRequantizedIntN: a dense (e.g. merged bf16) model requantized to INT-N with RTN and GPTQ, then restored', (t) => {
  const model = tinyModel(13);
  try {
    const dense = logitsOf(model);
    const errs: Record<string, number> = {};
    for (const quantizer of ['rtn', 'gptq'] as const) {
      const logits = withRequantizedIntN(model, { bits: 3, groupSize: 32, quantizer, ...(quantizer === 'gptq' ? { calibration } : {}) }, (r) => {
        assert.equal(r.layers, 14);
        assert.equal(r.bytes, [...model.linears().values()].reduce((a, l) => a + intnBytes([l.outFeatures, l.inFeatures], 3, 32), 0));
        assert.ok([...model.linears().values()].every((l) => l instanceof IntNLinear));
        return logitsOf(model);
      });
      errs[quantizer] = relErr(logits, dense);
    }
    t.diagnostic(`INT3 g32 requantized logits vs dense: RTN ${errs.rtn.toExponential(2)}, GPTQ ${errs.gptq.toExponential(2)} (max|diff|/max|ref|)`);
    assert.ok(errs.rtn > 0 && errs.gptq > 0);
    assert.deepEqual(logitsOf(model), dense, 'the dense layers are back');
    assert.throws(() => withRequantizedIntN(model, { bits: 4, groupSize: 32, quantizer: 'gptq' }, () => 0), /'gptq' needs calibration token rows/);
  } finally {
    model.dispose();
  }
});
