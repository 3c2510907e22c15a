// What a peer implementation (TensorFlow.js, PyTorch) needs to redo one of
// our runs exactly: the model config, the initial weights (Hugging Face
// names; LoRA A and B as `<linear>.lora_A.weight` / `.lora_B.weight`), the
// token batches our trainer drew, in order, and the learning rate of every
// step. Captured from the model just before our training starts, so both
// sides start from the same numbers and see the same data.
import {
  type LlamaConfig, type LlamaModel, type ScheduleConfig, type TokenRows, TokenDataSource, disposeBatch, learningRate, quant4Absmax, quant4Table,
} from '@tunebench/core';
import { loraLayers } from '@tunebench/lora';

export type PeerImpl = 'tensorflow.js' | 'pytorch';

export interface PeerWeight {
  name: string;
  /** the logical shape */
  shape: number[];
  /** the values; for a 4-bit weight, its fp32 absmax per block (see quant4) */
  data: Float32Array;
  /** a frozen 4-bit weight (QLoRA): packed codes, two per byte, the even
   * element in the high nibble; value = table[code] * data[element / blockSize].
   * A peer dequantizes it before each matmul, as PyTorch users do. */
  quant4?: { format: string; blockSize: number; packed: Uint8Array; table: Float32Array };
}

export interface PeerInput {
  cfg: LlamaConfig;
  weights: PeerWeight[];
  /** LoRA: scale alpha/r and the projections that carry an adapter */
  lora?: { scale: number; targets: string[] };
  /** [batchSize * seqLen] each, row-major; packed rows add per-token segment
   * ids and RoPE positions (query t attends key s iff s <= t and both have
   * the same segment id; see Batch in @tunebench/core) */
  batches: { ids: Int32Array; targets: Int32Array; segments?: Int32Array; positions?: Int32Array }[];
  batchSize: number;
  seqLen: number;
  /** learning rate of each of the batches' steps */
  lrs: number[];
  /** global gradient-norm clipping, null for none */
  maxGradNorm: number | null;
  weightDecay: number;
  betas: [number, number];
  eps: number;
}

/** What a peer measured. */
export interface PeerOutcome {
  impl: PeerImpl;
  /** loss of every step done (a non-finite one ends the run) */
  losses: number[];
  /** wall milliseconds of every step done */
  stepMs: number[];
  /** steps before this index are warm-up, left out of the speed */
  timedFrom: number;
  /** milliseconds per step split, where the implementation allows it */
  phases?: { forward: number; backward: number; optimizer: number };
  /** the peer's own memory figure and what it measures */
  peakBytes: number | null;
  memorySource: string;
  /** version, backend, threads */
  detail: string;
  /** what trained on the peer's side, e.g. 'transformers + peft, bf16 autocast' (GPU runs) */
  stack?: string;
}

const ADAPTER_NAME = /\.lora_([AB])\.[^.]+\.weight$/;

/** Captures a peer input from the model (before training) and the rows the trainer will draw from. */
export function capturePeerInput(model: LlamaModel, rows: TokenRows, o: {
  steps: number; batchSize: number; seed: number; schedule: ScheduleConfig; maxGradNorm: number | null; weightDecay: number;
}): PeerInput {
  const weights: PeerWeight[] = model.parameters().map((p) => {
    const name = p.name.replace(ADAPTER_NAME, '.lora_$1.weight');
    const q = p.quantized;
    if (!q) return { name, shape: [...p.value.shape], data: p.value.toFloat32() };
    if (q.kind !== 'quant4') throw new Error(`capturePeerInput: ${p.name} is an INT-N weight; peer inputs carry dense and 4-bit weights only`);
    return {
      name, shape: [...q.shape], data: quant4Absmax(q),
      quant4: { format: q.format, blockSize: q.blockSize, packed: (q.packed.data() as Uint8Array).slice(), table: quant4Table(q.format) },
    };
  });
  const layers = loraLayers(model);
  let lora: PeerInput['lora'];
  if (layers.length) {
    const adapters = layers.map((l) => l.adapter(l.active!));
    const scale = adapters[0].scale;
    if (adapters.some((a) => a.scale !== scale || a.dropout !== 0)) throw new Error('peers: LoRA adapters with different scales or dropout are not supported');
    lora = { scale, targets: layers.map((l) => l.name) };
  }
  // the same source, seed and batch size as the trainer: the same batches in the same order
  const data = new TokenDataSource(rows, { batchSize: o.batchSize, seed: o.seed });
  const batches: PeerInput['batches'] = [];
  for (let s = 0; s < o.steps; s++) {
    const b = data.next();
    const captured: PeerInput['batches'][number] = { ids: (b.ids.data() as Int32Array).slice(), targets: (b.targets.data() as Int32Array).slice() };
    if (b.segments && b.positions) {
      captured.segments = (b.segments.data() as Int32Array).slice();
      captured.positions = (b.positions.data() as Int32Array).slice();
    }
    batches.push(captured);
    disposeBatch(b);
  }
  return {
    cfg: model.config, weights, lora, batches, batchSize: o.batchSize, seqLen: rows.seqLen,
    lrs: batches.map((_, s) => learningRate(o.schedule, s)),
    maxGradNorm: o.maxGradNorm, weightDecay: o.weightDecay, betas: [0.9, 0.999], eps: 1e-8,
  };
}
