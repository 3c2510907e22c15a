// The whole model against an independent implementation of the same LLaMA
// written with @tensorflow/tfjs ops: loss and every parameter gradient.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type * as TF from '@tensorflow/tfjs';
import { LlamaModel, type LlamaConfig, Tensor, headDim, memory, preset } from '../src/index.js';
import { relErr, rng, tfjs } from './helpers.js';

// tfjs reference: returns the summed loss over non-ignored targets.
function referenceLoss(tf: typeof TF, cfg: LlamaConfig, P: Map<string, TF.Tensor>, ids: Int32Array,
                       targets: Int32Array, B: number, T: number): TF.Scalar {
  const C = cfg.hiddenSize, D = headDim(cfg), Hq = cfg.numHeads, Hkv = cfg.numKvHeads, N = B * T;
  const p = (n: string) => P.get(n)!;
  const rms = (x: TF.Tensor2D, w: TF.Tensor) => x.mul(tf.rsqrt(x.square().mean(1, true).add(cfg.rmsNormEps))).mul(w) as TF.Tensor2D;
  const lin = (x: TF.Tensor2D, w: TF.Tensor) => tf.matMul(x, w as TF.Tensor2D, false, true);
  // rotary tables, HF LlamaRotaryEmbedding: inv_freq = 1 / theta^(2i/D), emb = cat(freqs, freqs)
  const inv = tf.div(1, tf.pow(cfg.ropeTheta, tf.range(0, D, 2, 'float32').div(D)));
  const pos = tf.range(0, T, 1, 'float32');
  const freqs = tf.outerProduct(pos, inv as TF.Tensor1D);
  const emb = tf.concat([freqs, freqs], 1);              // [T, D]
  const cos = emb.cos().reshape([1, T, 1, D]), sin = emb.sin().reshape([1, T, 1, D]);
  const rotateHalf = (x: TF.Tensor4D) => {
    const [x1, x2] = tf.split(x, 2, 3);
    return tf.concat([x2.neg(), x1], 3);
  };
  const applyRope = (x: TF.Tensor4D) => x.mul(cos).add(rotateHalf(x).mul(sin)) as TF.Tensor4D;
  const mask = tf.linalg.bandPart(tf.ones([T, T]), -1, 0);  // lower triangle incl. diagonal
  const negMask = tf.sub(1, mask).mul(-1e9).reshape([1, 1, T, T]);
  const group = Hq / Hkv;
  const kvIndex = tf.tensor1d(Array.from({ length: Hq }, (_, h) => Math.floor(h / group)), 'int32');

  let x = tf.gather(p('model.embed_tokens.weight'), tf.tensor1d(ids, 'int32')) as TF.Tensor2D;  // [N, C]
  for (let i = 0; i < cfg.numLayers; i++) {
    const pre = `model.layers.${i}`;
    const h1 = rms(x, p(`${pre}.input_layernorm.weight`));
    const q = applyRope(lin(h1, p(`${pre}.self_attn.q_proj.weight`)).reshape([B, T, Hq, D]));
    const k = applyRope(lin(h1, p(`${pre}.self_attn.k_proj.weight`)).reshape([B, T, Hkv, D]));
    const v = lin(h1, p(`${pre}.self_attn.v_proj.weight`)).reshape([B, T, Hkv, D]);
    const qh = q.transpose([0, 2, 1, 3]);                                     // [B, Hq, T, D]
    const kh = tf.gather(k.transpose([0, 2, 1, 3]), kvIndex, 1);             // repeat_kv
    const vh = tf.gather(v.transpose([0, 2, 1, 3]), kvIndex, 1);
    const scores = tf.matMul(qh, kh, false, true).mul(1 / Math.sqrt(D)).add(negMask);
    const att = tf.matMul(tf.softmax(scores), vh).transpose([0, 2, 1, 3]).reshape([N, C]) as TF.Tensor2D;
    const x2 = x.add(lin(att, p(`${pre}.self_attn.o_proj.weight`))) as TF.Tensor2D;
    const h2 = rms(x2, p(`${pre}.post_attention_layernorm.weight`));
    const g = lin(h2, p(`${pre}.mlp.gate_proj.weight`)), u = lin(h2, p(`${pre}.mlp.up_proj.weight`));
    const m = g.mul(tf.sigmoid(g)).mul(u) as TF.Tensor2D;
    x = x2.add(lin(m, p(`${pre}.mlp.down_proj.weight`))) as TF.Tensor2D;
  }
  const hf = rms(x, p('model.norm.weight'));
  const head = cfg.tieWordEmbeddings ? p('model.embed_tokens.weight') : p('lm_head.weight');
  const logp = tf.logSoftmax(lin(hf, head));                                 // [N, V]
  const valid = Array.from(targets, (t) => (t === -100 ? 0 : 1));
  const safeTargets = tf.tensor1d(Array.from(targets, (t) => (t === -100 ? 0 : t)), 'int32');
  const picked = tf.sum(tf.mul(logp, tf.oneHot(safeTargets, cfg.vocabSize)), 1);
  return tf.sum(picked.mul(tf.tensor1d(valid))).neg() as TF.Scalar;
}

async function compareWithTfjs(cfg: LlamaConfig, B: number, T: number): Promise<void> {
  const tf = await tfjs();
  const r = rng();
  const model = LlamaModel.init(cfg, { seed: r.seed, std: 0.1 });
  // perturb the norm weights so their gradients are not trivially symmetric
  for (const prm of model.parameters()) {
    if (prm.value.shape.length === 1) {
      const v = prm.value.data() as Float32Array;
      for (let i = 0; i < v.length; i++) v[i] = 1 + 0.2 * r.normal();
    }
  }
  const ids = new Int32Array(B * T), targets = new Int32Array(B * T);
  for (let i = 0; i < ids.length; i++) {
    ids[i] = Math.floor(r.next() * cfg.vocabSize);
    targets[i] = r.next() < 0.2 ? -100 : Math.floor(r.next() * cfg.vocabSize);
  }
  const idsT = Tensor.from(ids, [B, T], { dtype: 'i32' }), tgT = Tensor.from(targets, [B, T], { dtype: 'i32' });
  model.zeroGrad();
  const out = model.forward({ ids: idsT, targets: tgT });
  const scale = 1 / out.count;
  model.backward(scale);

  const names = model.parameters().map((p) => p.name);
  const vars = new Map<string, TF.Tensor>();
  for (const prm of model.parameters()) vars.set(prm.name, tf.tensor(prm.value.toFloat32(), [...prm.value.shape]));
  const f = (...xs: TF.Tensor[]) => {
    const P = new Map(names.map((n, i) => [n, xs[i]]));
    return referenceLoss(tf, cfg, P, ids, targets, B, T).mul(scale) as TF.Scalar;
  };
  const { value, grads } = tf.valueAndGrads(f)(names.map((n) => vars.get(n)!));
  const refLoss = (await value.data())[0] / scale;
  const lossErr = Math.abs(out.lossSum - refLoss) / Math.abs(refLoss);
  assert.ok(lossErr < 1e-4, `loss ${out.lossSum} vs tfjs ${refLoss}: relative error ${lossErr} (seed ${r.seed})`);
  let worst = { name: '', err: 0 };
  model.parameters().forEach((prm, i) => {
    const err = relErr(prm.grad!.toFloat32(), grads[i].dataSync());
    if (err > worst.err) worst = { name: prm.name, err };
    assert.ok(err < 1e-4, `gradient of ${prm.name}: relative error ${err.toExponential(2)} (seed ${r.seed})`);
  });
  assert.ok(worst.err > 0, 'gradients were compared');
  idsT.dispose(); tgT.dispose(); model.dispose();
  tf.disposeVariables();
}

test('tiny model (tied, GQA): loss and every gradient match a tfjs implementation', async () => {
  await compareWithTfjs(preset('tiny'), 2, 9);
});

test('untied LM head, 3 layers, MHA: loss and every gradient match tfjs', async () => {
  const cfg: LlamaConfig = { ...preset('tiny'), numLayers: 3, numKvHeads: 4, tieWordEmbeddings: false, vocabSize: 97, ropeTheta: 500000 };
  await compareWithTfjs(cfg, 3, 5);
});

test('forward without training keeps nothing; a training step frees all activations', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 3 });
  const ids = Tensor.zeros([2, 8], { dtype: 'i32' }), targets = Tensor.zeros([2, 8], { dtype: 'i32' });
  const base = memory.snapshot().cpu.live.activation;
  model.forward({ ids, targets }, { training: false });
  assert.equal(memory.snapshot().cpu.live.activation, base);
  const r = model.forward({ ids, targets });
  assert.ok(memory.snapshot().cpu.live.activation > base, 'training forward keeps activations');
  model.backward(1 / r.count);
  assert.equal(memory.snapshot().cpu.live.activation, base, 'backward releases them');
  assert.throws(() => model.backward(1), /call forward with training first/);
  ids.dispose(); targets.dispose(); model.dispose();
});

test('bad batches are rejected with clear errors', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 4 });
  const ids = Tensor.zeros([2, 8], { dtype: 'i32' });
  assert.throws(() => model.forward({ ids, targets: Tensor.zeros([2, 7], { dtype: 'i32' }) }), /targets must be i32 \[2, 8\]/);
  assert.throws(() => model.forward({ ids: Tensor.zeros([2, 8]), targets: ids }), /ids must be i32 \[B, T\]/);
  const long = Tensor.zeros([1, 300], { dtype: 'i32' });
  assert.throws(() => model.forward({ ids: long, targets: long }), /sequence length 300 exceeds max_position_embeddings 256/);
  const bad = Tensor.from([0, 1, 2, 999], [1, 4], { dtype: 'i32' });
  assert.throws(() => model.forward({ ids: bad, targets: Tensor.zeros([1, 4], { dtype: 'i32' }) }), /id 999 at position 3/);
  model.dispose();
});
