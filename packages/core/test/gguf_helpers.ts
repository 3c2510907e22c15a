// Shared by the GGUF tests: a model rebuilt from a GGUF file (the inverse of
// exportGguf's naming and q/k row order) and the model's log-probabilities.
import {
  type GgufFile, type LlamaConfig, LlamaModel, Tensor, headDim, modelTensorShapes, ropeRowPermutation,
} from '../src/index.js';

/** HF parameter name -> GGUF tensor name, written independently of the exporter. */
export function ggufNameOf(hf: string): string {
  if (hf === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (hf === 'model.norm.weight') return 'output_norm.weight';
  if (hf === 'lm_head.weight') return 'output.weight';
  const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(hf);
  if (!m) throw new Error(`no GGUF name for ${hf}`);
  const part: Record<string, string> = {
    input_layernorm: 'attn_norm', post_attention_layernorm: 'ffn_norm',
    'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
    'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
  };
  return `blk.${m[1]}.${part[m[2]]}.weight`;
}

/** rows in llama.cpp's pair order back to HF halves: out[perm[r]] = x[r] */
export function unpermuteRows(x: Float32Array, rowLen: number, perm: Int32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < perm.length; r++) out.set(x.subarray(r * rowLen, (r + 1) * rowLen), perm[r] * rowLen);
  return out;
}

/** Our model with the file's (dequantized) weights: what llama.cpp should compute. */
export function modelFromGguf(file: GgufFile, cfg: LlamaConfig): LlamaModel {
  const tensors = new Map<string, Tensor>();
  const D = headDim(cfg);
  for (const [hf, shape] of modelTensorShapes(cfg)) {
    let v = file.read(ggufNameOf(hf));
    if (hf.endsWith('q_proj.weight')) v = unpermuteRows(v, shape[1], ropeRowPermutation(cfg.numHeads, D));
    if (hf.endsWith('k_proj.weight')) v = unpermuteRows(v, shape[1], ropeRowPermutation(cfg.numKvHeads, D));
    tensors.set(hf, Tensor.from(v, shape, { category: 'frozen' }));
  }
  if (cfg.tieWordEmbeddings && file.tensors.some((t) => t.name === 'output.weight')) throw new Error('tied model with an output.weight');
  return LlamaModel.fromTensors(cfg, tensors, { trainable: false });
}

/** log-softmax of the logits after every token of `ids`: [ids.length][V] */
export function logProbs(model: LlamaModel, ids: readonly number[]): Float64Array[] {
  const idsT = Tensor.from(Int32Array.from(ids), [1, ids.length], { dtype: 'i32' });
  const h = model.hidden(idsT);
  const logits = model.logits(h);
  const V = model.config.vocabSize, lv = logits.data() as Float32Array;
  const out: Float64Array[] = [];
  for (let t = 0; t < ids.length; t++) {
    const row = lv.subarray(t * V, (t + 1) * V);
    let m = -Infinity;
    for (const x of row) m = Math.max(m, x);
    let s = 0;
    for (const x of row) s += Math.exp(x - m);
    const lse = m + Math.log(s);
    out.push(Float64Array.from(row, (x) => x - lse));
  }
  for (const t of [idsT, h, logits]) t.dispose();
  return out;
}
