// The same LLaMA written with @tensorflow/tfjs ops: the independent
// reference of the whole-model gradient test, and the TensorFlow.js peer of
// the training-step benchmark. Returns the summed loss over non-ignored
// targets; P maps Hugging Face parameter names to tensors (variables when
// training).
import type * as TF from '@tensorflow/tfjs';
import { type LlamaConfig, headDim } from '../src/index.js';

export function tfjsLlamaLoss(tf: typeof TF, cfg: LlamaConfig, P: Map<string, TF.Tensor>, ids: Int32Array,
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
