// Side by side with llama.cpp: loading node-llama-cpp's prebuilt CPU build
// (never a build or a download), our model's next-token log-probabilities,
// and our model rebuilt from a GGUF file's own (dequantized) weights, which
// is what llama.cpp should compute. Used by the GGUF tests of every package
// and by the bench's decode rows.
import { headDim } from '../nn/config.js';
import type { LlamaConfig } from '../nn/config.js';
import { ropeRowPermutation } from '../io/gguf.js';
import type { GgufFile } from '../io/gguf.js';
import { LlamaModel, modelTensorShapes } from '../nn/llama.js';
import { Tensor } from '../tensor.js';

export type NodeLlamaCpp = typeof import('node-llama-cpp');

/** node-llama-cpp and its Llama (the prebuilt CPU binary). */
export interface LlamaCppLib {
  mod: NodeLlamaCpp;
  llama: Awaited<ReturnType<NodeLlamaCpp['getLlama']>>;
  /** llama.cpp's release and node-llama-cpp's build type, as it reports them */
  version: string;
}

const loaded = new Map<number, Promise<LlamaCppLib>>();

/** node-llama-cpp with its prebuilt CPU binary, once per process and maxThreads
 * (0: each context takes the threads it asks for); rejects saying why it
 * could not load. */
export function loadLlamaCpp(opts: { maxThreads?: number } = {}): Promise<LlamaCppLib> {
  const maxThreads = opts.maxThreads ?? 1;
  let p = loaded.get(maxThreads);
  if (!p) {
    p = (async () => {
      let mod: NodeLlamaCpp;
      try {
        mod = await import('node-llama-cpp');
      } catch (e) {
        throw new Error(`node-llama-cpp is not installed (${(e as Error).message.split('\n')[0]}); pnpm install puts it in place`);
      }
      try {
        const llama = await mod.getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, progressLogs: false, logLevel: mod.LlamaLogLevel.error, maxThreads });
        return { mod, llama, version: `llama.cpp ${llama.llamaCppRelease.release} (node-llama-cpp ${llama.buildType})` };
      } catch (e) {
        throw new Error(`node-llama-cpp could not load its prebuilt CPU binary for ${process.platform}-${process.arch}: ${(e as Error).message.split('\n')[0]}`);
      }
    })();
    loaded.set(maxThreads, p);
  }
  return p;
}

/** loadLlamaCpp, or null and why (tests skip with the reason). */
export async function tryLoadLlamaCpp(opts: { maxThreads?: number } = {}): Promise<{ lib: LlamaCppLib | null; unavailable: string }> {
  try {
    return { lib: await loadLlamaCpp(opts), unavailable: '' };
  } catch (e) {
    return { lib: null, unavailable: (e as Error).message };
  }
}

/** node-llama-cpp brands token ids; ours are plain numbers. */
export const asLlamaTokens = (ids: readonly number[]): import('node-llama-cpp').Token[] => ids as unknown as import('node-llama-cpp').Token[];

/** log-softmax of our model's logits after every token of `ids`: [ids.length][vocab], float64. */
export function nextTokenLogProbs(model: LlamaModel, ids: readonly number[]): Float64Array[] {
  const idsT = Tensor.from(Int32Array.from(ids), [1, ids.length], { dtype: 'i32' });
  const h = model.hidden(idsT), logits = model.logits(h);
  const V = model.config.vocabSize, lv = logits.toFloat32(), out: Float64Array[] = [];
  for (let t = 0; t < ids.length; t++) {
    const row = lv.subarray(t * V, (t + 1) * V);
    let m = -Infinity, s = 0;
    for (const x of row) m = Math.max(m, x);
    for (const x of row) s += Math.exp(x - m);
    const lse = m + Math.log(s);
    out.push(Float64Array.from(row, (x) => x - lse));
  }
  for (const t of [idsT, h, logits]) t.dispose();
  return out;
}

/** max over positions and tokens with p > floor (in either) of |log p_a - log p_b| */
export function maxLogProbDiff(a: Float64Array[], b: Float64Array[], floor = 1e-4): number {
  let worst = 0;
  const lf = Math.log(floor);
  for (let t = 0; t < a.length; t++) for (let v = 0; v < a[t].length; v++) {
    if (Math.max(a[t][v], b[t][v]) > lf) worst = Math.max(worst, Math.abs(a[t][v] - b[t][v]));
  }
  return worst;
}

/** HF parameter name -> GGUF tensor name (llama.cpp's llama naming), written
 * apart from the exporter so the tests that use it check the exporter. */
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
  if (!part[m[2]]) throw new Error(`no GGUF name for ${hf}`);
  return `blk.${m[1]}.${part[m[2]]}.weight`;
}

/** rows in llama.cpp's rotary pair order back to HF's halves: out[perm[r]] = x[r] */
export function unpermuteRows(x: Float32Array, rowLen: number, perm: Int32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < perm.length; r++) out.set(x.subarray(r * rowLen, (r + 1) * rowLen), perm[r] * rowLen);
  return out;
}

/** Our plain Llama model with a GGUF file's weights (dequantized to f32, q/k
 * rows back in HF order): what llama.cpp should compute from that file. */
export function modelFromGguf(file: GgufFile, cfg: LlamaConfig): LlamaModel {
  const tensors = new Map<string, Tensor>();
  const D = headDim(cfg);
  if (cfg.tieWordEmbeddings && file.tensors.some((t) => t.name === 'output.weight')) throw new Error('modelFromGguf: a tied model whose file has an output.weight');
  try {
    for (const [hf, shape] of modelTensorShapes(cfg)) {
      let v = file.read(ggufNameOf(hf));
      if (hf.endsWith('q_proj.weight')) v = unpermuteRows(v, shape[1], ropeRowPermutation(cfg.numHeads, D));
      if (hf.endsWith('k_proj.weight')) v = unpermuteRows(v, shape[1], ropeRowPermutation(cfg.numKvHeads, D));
      tensors.set(hf, Tensor.from(v, shape, { category: 'frozen' }));
    }
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  }
  return LlamaModel.fromTensors(cfg, tensors, { trainable: false });
}
