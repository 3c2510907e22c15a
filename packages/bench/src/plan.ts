// `tunebench plan`: peak memory by category for a training step, predicted
// from the model config, the method, batch and sequence length without
// running anything. The formulas follow what the code allocates (see
// nn/llama.ts, the kernels' workspaces and the trainer); a test compares
// them with measured peaks.
import { CATEGORIES, type Category, type CheckpointingMode, type LlamaConfig, headDim, isCheckpointed, modelTensorShapes } from '@tunebench/core';

/** What the planner needs to know of a method; each method plugin gives it
 * (methods.ts), so the planner names no method. */
export interface PlanMethod {
  /** every weight trains in f32 (full fine-tuning); else the base is frozen */
  trainsBase?: boolean;
  /** bytes of one frozen projection weight [out, in] (default bf16: 2 * out * in) */
  frozenLinearBytes?: (out: number, inF: number) => number;
  /** LoRA rank of the adapters on every projection (none: no adapters) */
  adapterRank?: number;
  /** QA-LoRA's pooled adapters: A is [r, in / adapterPoolSize], and forward
   * keeps the pooled input [N, in / adapterPoolSize] for backward */
  adapterPoolSize?: number;
  /** optimizer state bytes of a trainable tensor of n elements (default fp32 AdamW: 8 n) */
  optimizerBytes?: (n: number) => number;
  /** scratch bytes a projection's GEMM adds beyond the packing buffers (e.g. an expanded double-quantized absmax) */
  linearExtraWorkspace?: (out: number, inF: number) => number;
  /** the token embedding (and an untied LM head) trains in f32 beside a frozen base (LoRA trainEmbeddings) */
  trainsEmbeddings?: boolean;
}

export type Plan = Record<Category, number> & { total: number };

const F32 = 4, BF16 = 2, I32 = 4;

/** Bytes per category at the peak of one training step (all micro-batches of
 * gradAccumulation are held at once, as the trainer does). */
export function planMemory(c: LlamaConfig, method: PlanMethod, batch: number, seq: number, gradAccumulation = 1,
                           checkpointing: CheckpointingMode = 'off'): Plan {
  const N = batch * seq, C = c.hiddenSize, F = c.intermediateSize, D = headDim(c);
  const q = c.numHeads * D, kv = c.numKvHeads * D, L = c.numLayers, V = c.vocabSize;
  const plan = Object.fromEntries(CATEGORIES.map((k) => [k, 0])) as Record<Category, number>;
  const optBytes = method.optimizerBytes ?? ((n: number) => 2 * n * F32);
  // the projections [out, in] of one block
  const linears: [number, number][] = [[q, C], [kv, C], [kv, C], [C, q], [F, C], [F, C], [C, F]];
  const r = method.adapterRank ?? 0;
  const pool = method.adapterPoolSize ?? 1;

  // weights, gradients, optimizer state
  if (method.trainsBase) {
    let opt = 0, n = 0;
    for (const [, shape] of modelTensorShapes(c)) { const k = shape.reduce((a, b) => a * b, 1); n += k; opt += optBytes(k); }
    plan.trainable = n * F32;
    plan.optimizer = opt;
  } else {
    const frozenLinear = method.frozenLinearBytes ?? ((o: number, i: number) => BF16 * o * i);
    const linearNames = /_proj\.weight$/;
    let other = 0;
    for (const [name, shape] of modelTensorShapes(c)) if (!linearNames.test(name)) other += shape.reduce((a, b) => a * b, 1);
    let embedParams = 0, opt = 0;
    if (method.trainsEmbeddings) {
      for (const [name, shape] of modelTensorShapes(c)) {
        if (name !== 'model.embed_tokens.weight' && name !== 'lm_head.weight') continue;
        const k = shape.reduce((a, b) => a * b, 1);
        embedParams += k;
        opt += optBytes(k);
      }
    }
    plan.frozen = (other - embedParams) * BF16 + L * linears.reduce((s, [o, i]) => s + frozenLinear(o, i), 0);
    let adapterParams = 0;
    if (r > 0) for (const [o, i] of linears) { adapterParams += L * r * (i / pool + o); opt += L * (optBytes(r * i / pool) + optBytes(o * r)); }
    plan.trainable = (adapterParams + embedParams) * F32;
    plan.optimizer = opt;
  }
  plan.grad = plan.trainable;

  // activations kept by forward, per block: h1, q, k, v, att, x2, h2, g, u, m, out
  // (+ rstd1, rstd2 [N], lse [N * Hq]; + LoRA's u = x A^T [N, r] per adapted projection)
  // architecture extras: q and k before their per-head norms and the norms' rstd
  // (qkNorm), the ones column of the bias GEMMs (qkvBias / oBias)
  const extras = (c.qkNorm ? N * (q + kv) + N * (c.numHeads + c.numKvHeads) : 0) + (c.qkvBias || c.oBias ? N : 0);
  const perBlock = N * (3 * C + q + 2 * kv + q + C + 3 * F) * F32 + N * (2 + c.numHeads) * F32 + extras * F32
    + 7 * N * r * F32
    + (r > 0 && method.adapterPoolSize ? N * linears.reduce((a, [, i]) => a + i / pool, 0) * F32 : 0);
  // model level: ids + targets of every micro-batch, positions, embedding output,
  // final norm output and rstd, cross-entropy losses and lse
  const model = gradAccumulation * 2 * N * I32 + N * I32 + N * C * F32 + N * C * F32 + 3 * N * F32;
  // activation checkpointing: a recomputed block keeps only its output (the
  // next block's input, part of the residual stream); during the backward of
  // the last block, if it is recomputed, its activations are back in full
  const blockOut = N * C * F32;
  let recomputed = 0;
  for (let i = 0; i < L; i++) if (isCheckpointed(checkpointing, i)) recomputed++;
  const saved = (L - recomputed) * perBlock + recomputed * blockOut + model
    + (isCheckpointed(checkpointing, L - 1) ? perBlock - blockOut : 0);
  // The backward of the last block is where memory peaks: on top of
  // everything kept, the residual gradient dh [N, C] and, stage by stage,
  // the temporaries alive at once (activation) and the op's scratch
  // (workspace). Category peaks are the maxima over the stages; the total
  // is the largest stage sum, since the stages do not overlap.
  const chunk = Math.min(256, N);
  const extra = method.linearExtraWorkspace ?? (() => 0);
  // dX, dW of a projection (a frozen one has no dW, but dX's panels are the larger anyway)
  const lin = (i: number, o: number) => Math.max(gemmWorkspace(N, i, o), gemmWorkspace(o, i, N)) + extra(o, i);
  const ceWs = chunk * V * F32 + Math.max(gemmWorkspace(chunk, V, C), gemmWorkspace(chunk, C, V), gemmWorkspace(V, C, chunk));
  const attnWs = c.numHeads * N * F32 + 2 * 11 * 64 * 64 * F32;  // row sums + per-thread tiles
  const dh = N * C * F32;
  const stages: [number, number][] = [
    [dh, ceWs],                                                   // cross-entropy backward
    [dh + N * F * F32, lin(F, C)],                                // down_proj backward
    [dh + 3 * N * F * F32, 0],                                    // SwiGLU backward
    [dh + 2 * N * F * F32 + N * C * F32, lin(C, F)],              // gate/up backward into dh2
    [dh + N * q * F32, lin(q, C)],                                // o_proj backward
    [dh + (2 * N * q + 2 * N * kv) * F32, attnWs],                // attention backward
    [dh + (N * q + 2 * N * kv + N * C) * F32, Math.max(lin(C, q), lin(C, kv))],  // q/k/v backward into dh1
  ];
  // forward GEMMs (inputs kept) are smaller than these stages and are left out
  plan.activation = saved + Math.max(...stages.map(([a]) => a));
  plan.workspace = Math.max(...stages.map(([, w]) => w), gemmWorkspace(N, F, C) + extra(F, C), gemmWorkspace(N, q, C) + extra(q, C));
  const weights = plan.frozen + plan.trainable + plan.grad + plan.optimizer + plan.optimizer_host;
  const total = weights + saved + Math.max(...stages.map(([a, w]) => a + w));
  return { ...plan, total };
}

/** Packing buffers of one GEMM (M x N x K), as cpu/gemm.cc sizes them with
 * the AVX-512 tile (MR 12, NR 32), KC 256, MC 384, NC 4096 and 2 threads. */
function gemmWorkspace(M: number, N: number, K: number, threads = 2): number {
  const MR = 12, NR = 32, KC = 256, MC = 384, NC = 4096;
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  const nt = M * N * K < 64 * 64 * 64 ? 1 : threads;
  const nc = Math.min(NC, Math.ceil(N / NR) * NR), kc = Math.min(KC, K), mc = Math.min(MC, Math.ceil(M / MR) * MR);
  return (nc * kc + mc * kc * nt) * F32;
}
