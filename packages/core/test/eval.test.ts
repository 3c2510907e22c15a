import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  KVCache, LlamaModel, Tensor, attentionDecode, attentionForward, classify, evaluateLoss, generate, preset,
  rowLogLikelihoods,
} from '../src/index.js';
import { assertClose, randn, rng } from './helpers.js';

test('attentionDecode equals the last row of causal attention (GQA)', () => {
  const r = rng();
  const [B, T, Hq, Hkv, D] = [2, 11, 4, 2, 16];
  const q = Tensor.from(randn(B * T * Hq * D, r), [B, T, Hq, D]);
  const k = Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]), v = Tensor.from(randn(B * T * Hkv * D, r), [B, T, Hkv, D]);
  const { out, lse } = attentionForward(q, k, v);
  const qv = q.data() as Float32Array, qLast = new Float32Array(B * Hq * D);
  for (let b = 0; b < B; b++) qLast.set(qv.subarray(((b * T) + T - 1) * Hq * D, (b * T + T) * Hq * D), b * Hq * D);
  const cacheK = Tensor.zeros([B, T + 5, Hkv, D]), cacheV = Tensor.zeros([B, T + 5, Hkv, D]);
  for (let b = 0; b < B; b++) {
    (cacheK.data() as Float32Array).set((k.data() as Float32Array).subarray(b * T * Hkv * D, (b + 1) * T * Hkv * D), b * (T + 5) * Hkv * D);
    (cacheV.data() as Float32Array).set((v.data() as Float32Array).subarray(b * T * Hkv * D, (b + 1) * T * Hkv * D), b * (T + 5) * Hkv * D);
  }
  const q1 = Tensor.from(qLast, [B, 1, Hq, D]);
  const dec = attentionDecode(q1, cacheK, cacheV, T);
  const ov = out.data() as Float32Array, want = new Float32Array(B * Hq * D);
  for (let b = 0; b < B; b++) want.set(ov.subarray(((b * T) + T - 1) * Hq * D, (b * T + T) * Hq * D), b * Hq * D);
  assertClose('decode row', dec.data() as Float32Array, want, 1e-5, r.seed);
  for (const t of [q, k, v, out, lse, cacheK, cacheV, dec, q1]) t.dispose();
});

test('generation with the KV cache equals recomputing the whole sequence each step', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 4, std: 0.15, trainable: false });
  const prompt = [256, 72, 101, 108, 108, 111];
  for (const opts of [{ temperature: 0 }, { temperature: 0.8, topK: 20, seed: 9 }]) {
    const cached = generate(model, prompt, { maxNewTokens: 24, ...opts });
    const full = generate(model, prompt, { maxNewTokens: 24, ...opts, noCache: true });
    assert.deepEqual(cached.tokens, full.tokens, `tokens differ for ${JSON.stringify(opts)}`);
    assert.equal(cached.tokens.length, 24);
  }
  // logits step by step
  const cache = new KVCache(model.config, 1, 16);
  const seq = [256, 10, 20, 30, 40, 50, 60];
  const ids = (a: number[]) => Tensor.from(Int32Array.from(a), [1, a.length], { dtype: 'i32' });
  const run = (a: number[], c?: KVCache) => { const t = ids(a); const h = model.hidden(t, c); t.dispose(); return h; };
  run(seq.slice(0, 3), cache).dispose();
  for (let t = 3; t < seq.length; t++) {
    const hc = run([seq[t]], cache);
    const hf = run(seq.slice(0, t + 1));
    const C = model.config.hiddenSize;
    assertClose(`hidden at ${t}`, hc.data() as Float32Array, (hf.data() as Float32Array).subarray(t * C, (t + 1) * C), 1e-4);
    hc.dispose(); hf.dispose();
  }
  assert.equal(cache.length, seq.length);
  cache.dispose(); model.dispose();
});

test('generation rejects bad prompts and lengths', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  assert.throws(() => generate(model, [], { maxNewTokens: 3 }), /prompt is empty/);
  assert.throws(() => generate(model, [999], { maxNewTokens: 3 }), /prompt token 999 is outside \[0, 259\)/);
  assert.throws(() => generate(model, [1], { maxNewTokens: 1000 }), /exceed max_position_embeddings 256/);
  model.dispose();
});

test('evaluateLoss is the token-weighted mean; row log-likelihoods add up to it', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 5, trainable: false });
  const mk = (s: number) => {
    const ids = Tensor.from(Int32Array.from({ length: 24 }, (_, i) => (i * s + 1) % 259), [3, 8], { dtype: 'i32' });
    const tv = Int32Array.from({ length: 24 }, (_, i) => (i % 5 === 0 ? -100 : (i * s + 2) % 259));
    return { ids, targets: Tensor.from(tv, [3, 8], { dtype: 'i32' }) };
  };
  const b1 = mk(3), b2 = mk(7);
  const r1 = model.forward(b1, { training: false }), r2 = model.forward(b2, { training: false });
  const ev = evaluateLoss(model, [mk(3), mk(7)]);
  assert.ok(Math.abs(ev.loss - (r1.lossSum + r2.lossSum) / (r1.count + r2.count)) < 1e-9);
  assert.ok(Math.abs(ev.perplexity - Math.exp(ev.loss)) < 1e-9);
  const ll = rowLogLikelihoods(model, [mk(3), mk(7)]);
  assert.equal(ll.length, 6);
  assert.ok(Math.abs(-ll.reduce((a, b) => a + b, 0) - (r1.lossSum + r2.lossSum)) < 1e-3);
  for (const b of [b1, b2]) { b.ids.dispose(); b.targets.dispose(); }
  model.dispose();
});

test('classify: accuracy, macro F1 and the confusion matrix', () => {
  const scores = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]];
  const r = classify(scores, [0, 1, 1, 1], 2);
  assert.deepEqual(r.predictions, [0, 1, 0, 1]);
  assert.equal(r.accuracy, 0.75);
  assert.deepEqual(r.confusion, [[1, 0], [1, 2]]);
  // F1(class 0) = 2/(2+1) = 0.667, F1(class 1) = 4/(4+1) = 0.8
  assert.ok(Math.abs(r.macroF1 - (2 / 3 + 0.8) / 2) < 1e-12);
});
