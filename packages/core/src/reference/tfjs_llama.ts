// The same LLaMA written with @tensorflow/tfjs ops: the independent
// reference of the whole-model gradient test, and the TensorFlow.js peer of
// the benchmarks (what a TypeScript user would write instead). Returns the
// summed loss over non-ignored targets; P maps Hugging Face parameter names
// to tensors (variables when training). With `lora`, every projection named
// in it gains the adapter: y = x W^T + scale * (x A^T) B^T, A and B read
// from P as `<linear>.lora_A.weight` and `<linear>.lora_B.weight`.
// The config's architecture switches are honoured, written independently of
// nn/llama.ts: `<proj>.bias` added after q/k/v (qkvBias) and o (oBias), a
// per-head RMSNorm of q and k before RoPE (qkNorm, `self_attn.{q,k}_norm.weight`),
// headDim, and a sliding-window mask (slidingWindow: key s visible to query t
// iff t - slidingWindow < s <= t).
//
// Only types are imported from tfjs: the caller passes the module, so the
// core does not depend on tfjs at run time (it is reached through the
// subpath export '@tunebench/core/reference/tfjs-llama').
import type * as TF from '@tensorflow/tfjs';
import { type LlamaConfig, attentionWindow, headDim } from '../nn/config.js';

export interface TfjsLora {
  /** alpha / r (or alpha / sqrt(r) with rsLoRA) */
  scale: number;
  /** linear module names with an adapter, e.g. 'model.layers.0.self_attn.q_proj' */
  targets: ReadonlySet<string>;
}

/** Packed batches: per-token segment ids and RoPE positions, [B*T] each
 * (the conventions of Batch in nn/llama.ts). Query t attends key s iff
 * s <= t and segments[s] == segments[t] in the same row. */
export interface TfjsPacking {
  segments?: Int32Array;
  positions?: Int32Array;
}

/** A scaled RoPE given as its table: inverse frequencies (D/2) in place of
 * 1/theta^(2i/D), and a factor multiplying cos and sin (default 1). The
 * caller computes them (the tests, from the published formulas). */
export interface TfjsRope {
  invFreq: Float32Array | readonly number[];
  attentionScale?: number;
}

export function tfjsLlamaLoss(tf: typeof TF, cfg: LlamaConfig, P: Map<string, TF.Tensor>, ids: Int32Array,
                       targets: Int32Array, B: number, T: number, lora?: TfjsLora, packing: TfjsPacking = {},
                       rope?: TfjsRope): TF.Scalar {
  const logp = tf.logSoftmax(tfjsLlamaLogits(tf, cfg, P, ids, B, T, lora, packing, rope));   // [N, V]
  const valid = Array.from(targets, (t) => (t === -100 ? 0 : 1));
  const safeTargets = tf.tensor1d(Array.from(targets, (t) => (t === -100 ? 0 : t)), 'int32');
  const picked = tf.sum(tf.mul(logp, tf.oneHot(safeTargets, cfg.vocabSize)), 1);
  return tf.sum(picked.mul(tf.tensor1d(valid))).neg() as TF.Scalar;
}

/** The logits [B*T, V] of the same model. */
export function tfjsLlamaLogits(tf: typeof TF, cfg: LlamaConfig, P: Map<string, TF.Tensor>, ids: Int32Array,
                                B: number, T: number, lora?: TfjsLora, packing: TfjsPacking = {},
                                rope?: TfjsRope): TF.Tensor2D {
  const D = headDim(cfg), Hq = cfg.numHeads, Hkv = cfg.numKvHeads, N = B * T;
  const p = (n: string) => P.get(n)!;
  const rms = (x: TF.Tensor2D, w: TF.Tensor) => x.mul(tf.rsqrt(x.square().mean(1, true).add(cfg.rmsNormEps))).mul(w) as TF.Tensor2D;
  const dense = (x: TF.Tensor2D, w: TF.Tensor) => tf.matMul(x, w as TF.Tensor2D, false, true);
  const proj = (x: TF.Tensor2D, name: string) => {
    let y = dense(x, p(`${name}.weight`));
    if (P.has(`${name}.bias`)) y = y.add(p(`${name}.bias`)) as TF.Tensor2D;
    if (!lora?.targets.has(name)) return y;
    return y.add(dense(dense(x, p(`${name}.lora_A.weight`)) as TF.Tensor2D, p(`${name}.lora_B.weight`)).mul(lora.scale)) as TF.Tensor2D;
  };
  // per-head RMSNorm over the last axis of [B, T, H, D]
  const headNorm = (x: TF.Tensor4D, w: TF.Tensor) => x.mul(tf.rsqrt(x.square().mean(3, true).add(cfg.rmsNormEps))).mul(w) as TF.Tensor4D;
  const W = attentionWindow(cfg);
  const hidden = (i: number, j: number) => j > i || (W > 0 && i - j >= W);
  // rotary tables, HF LlamaRotaryEmbedding: inv_freq = 1 / theta^(2i/D), emb = cat(freqs, freqs)
  if (rope && rope.invFreq.length !== D / 2) throw new Error(`tfjsLlamaLoss: rope.invFreq has ${rope.invFreq.length} entries, expected D/2 = ${D / 2}`);
  const inv = rope ? tf.tensor1d(Float32Array.from(rope.invFreq), 'float32') : tf.div(1, tf.pow(cfg.ropeTheta, tf.range(0, D, 2, 'float32').div(D)));
  const m = rope?.attentionScale ?? 1;
  const { segments, positions } = packing;
  if (segments && segments.length !== N) throw new Error(`tfjsLlamaLoss: segments has ${segments.length} entries, expected B*T = ${N}`);
  if (positions && positions.length !== N) throw new Error(`tfjsLlamaLoss: positions has ${positions.length} entries, expected B*T = ${N}`);
  // per-token positions give per-row tables [B, T, 1, D]; dense ones one [1, T, 1, D]
  const pos = positions ? tf.tensor1d(Float32Array.from(positions), 'float32') : tf.range(0, T, 1, 'float32');
  const freqs = tf.outerProduct(pos as TF.Tensor1D, inv as TF.Tensor1D);
  const emb = tf.concat([freqs, freqs], 1);              // [T or B*T, D]
  const ropeShape: [number, number, number, number] = positions ? [B, T, 1, D] : [1, T, 1, D];
  const cos = emb.cos().mul(m).reshape(ropeShape), sin = emb.sin().mul(m).reshape(ropeShape);
  const rotateHalf = (x: TF.Tensor4D) => {
    const [x1, x2] = tf.split(x, 2, 3);
    return tf.concat([x2.neg(), x1], 3);
  };
  const applyRope = (x: TF.Tensor4D) => x.mul(cos).add(rotateHalf(x).mul(sin)) as TF.Tensor4D;
  let negMask: TF.Tensor;
  if (segments) {  // causal and same segment, per row: [B, 1, T, T]
    const bias = new Float32Array(B * T * T);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < T; j++) {
          if (hidden(i, j) || segments[b * T + j] !== segments[b * T + i]) bias[(b * T + i) * T + j] = -1e9;
        }
      }
    }
    negMask = tf.tensor4d(bias, [B, 1, T, T]);
  } else {
    const bias = new Float32Array(T * T);  // causal (and the window): [1, 1, T, T]
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) if (hidden(i, j)) bias[i * T + j] = -1e9;
    negMask = tf.tensor4d(bias, [1, 1, T, T]);
  }
  const group = Hq / Hkv;
  const kvIndex = tf.tensor1d(Array.from({ length: Hq }, (_, h) => Math.floor(h / group)), 'int32');

  let x = tf.gather(p('model.embed_tokens.weight'), tf.tensor1d(ids, 'int32')) as TF.Tensor2D;  // [N, C]
  for (let i = 0; i < cfg.numLayers; i++) {
    const pre = `model.layers.${i}`;
    const h1 = rms(x, p(`${pre}.input_layernorm.weight`));
    let q = proj(h1, `${pre}.self_attn.q_proj`).reshape([B, T, Hq, D]) as TF.Tensor4D;
    let k = proj(h1, `${pre}.self_attn.k_proj`).reshape([B, T, Hkv, D]) as TF.Tensor4D;
    if (cfg.qkNorm) {
      q = headNorm(q, p(`${pre}.self_attn.q_norm.weight`));
      k = headNorm(k, p(`${pre}.self_attn.k_norm.weight`));
    }
    q = applyRope(q);
    k = applyRope(k);
    const v = proj(h1, `${pre}.self_attn.v_proj`).reshape([B, T, Hkv, D]);
    const qh = q.transpose([0, 2, 1, 3]);                                     // [B, Hq, T, D]
    const kh = tf.gather(k.transpose([0, 2, 1, 3]), kvIndex, 1);             // repeat_kv
    const vh = tf.gather(v.transpose([0, 2, 1, 3]), kvIndex, 1);
    const scores = tf.matMul(qh, kh, false, true).mul(1 / Math.sqrt(D)).add(negMask);
    const att = tf.matMul(tf.softmax(scores), vh).transpose([0, 2, 1, 3]).reshape([N, Hq * D]) as TF.Tensor2D;
    const x2 = x.add(proj(att, `${pre}.self_attn.o_proj`)) as TF.Tensor2D;
    const h2 = rms(x2, p(`${pre}.post_attention_layernorm.weight`));
    const g = proj(h2, `${pre}.mlp.gate_proj`), u = proj(h2, `${pre}.mlp.up_proj`);
    const m = g.mul(tf.sigmoid(g)).mul(u) as TF.Tensor2D;
    x = x2.add(proj(m, `${pre}.mlp.down_proj`)) as TF.Tensor2D;
  }
  const hf = rms(x, p('model.norm.weight'));
  const head = cfg.tieWordEmbeddings ? p('model.embed_tokens.weight') : p('lm_head.weight');
  return dense(hf, head) as TF.Tensor2D;
}
