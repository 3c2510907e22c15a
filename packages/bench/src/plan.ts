// `tunebench plan`: peak memory by category for a training step, predicted
// from the model config, the method, batch and sequence length without
// running anything. The formulas follow what the code allocates (see
// nn/llama.ts, the kernels' workspaces and the trainer); a test compares
// them with measured peaks.
import { CATEGORIES, type Category, type LlamaConfig, headDim, parameterCount } from '@tunebench/core';

export interface PlanMethod {
  name: 'full' | 'lora';
  /** LoRA rank (all-linear targets) */
  r?: number;
}

export type Plan = Record<Category, number> & { total: number };

const F32 = 4, BF16 = 2, I32 = 4;

/** Bytes per category at the peak of one training step (all micro-batches of
 * gradAccumulation are held at once, as the trainer does). */
export function planMemory(c: LlamaConfig, method: PlanMethod, batch: number, seq: number, gradAccumulation = 1): Plan {
  const N = batch * seq, C = c.hiddenSize, F = c.intermediateSize, D = headDim(c);
  const q = c.numHeads * D, kv = c.numKvHeads * D, L = c.numLayers, V = c.vocabSize;
  const P = parameterCount(c);
  const plan = Object.fromEntries(CATEGORIES.map((k) => [k, 0])) as Record<Category, number>;

  // weights, gradients, optimizer state
  let adapterParams = 0;
  if (method.name === 'full') {
    plan.trainable = P * F32;
  } else {
    const r = method.r ?? 8;
    adapterParams = L * r * ((C + q) + (C + kv) * 2 + (q + C) + (C + F) * 2 + (F + C));
    plan.frozen = P * BF16;
    plan.trainable = adapterParams * F32;
  }
  plan.grad = plan.trainable;
  plan.optimizer = 2 * plan.trainable;

  // activations kept by forward, per block: h1, q, k, v, att, x2, h2, g, u, m, out
  // (+ rstd1, rstd2 [N], lse [N * Hq]; + LoRA's u = x A^T [N, r] per adapted projection)
  const perBlock = N * (3 * C + q + 2 * kv + q + C + 3 * F) * F32 + N * (2 + c.numHeads) * F32
    + (method.name === 'lora' ? 7 * N * (method.r ?? 8) * F32 : 0);
  // model level: ids + targets of every micro-batch, positions, embedding output,
  // final norm output and rstd, cross-entropy losses and lse
  const model = gradAccumulation * 2 * N * I32 + N * I32 + N * C * F32 + N * C * F32 + 3 * N * F32;
  const saved = L * perBlock + model;
  // The backward of the last block is where memory peaks: on top of
  // everything kept, the residual gradient dh [N, C] and, stage by stage,
  // the temporaries alive at once (activation) and the op's scratch
  // (workspace). Category peaks are the maxima over the stages; the total
  // is the largest stage sum, since the stages do not overlap.
  const chunk = Math.min(256, N);
  const lin = (i: number, o: number) => Math.max(gemmWorkspace(N, i, o), gemmWorkspace(o, i, N));  // dX, dW of a projection
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
  plan.workspace = Math.max(...stages.map(([, w]) => w), gemmWorkspace(N, F, C), gemmWorkspace(N, q, C));
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
