// The per-run record: one JSON object per finished run, appended to
// reports/<name>/results.jsonl as soon as the run ends. Every output (CSV,
// summary.md, report.html, the regression check) is computed from these.
// Methods added later (QLoRA, QA-LoRA) fill the same fields, plus
// `deployable` rows for the models they produce.
import type { Category, DecodeActivations } from '@tunebench/core';
import type { TuningRecord } from './tune.js';
import type { Outcomes } from './stats/outcomes.js';

export type RunStatus = 'ok' | 'oom' | 'diverged' | 'error';

/** How a deployable model holds its projection weights: what the decode rows
 * (decode_rows.ts) rebuild at the suite's decode shape, and which GGUF form it has. */
export type DeployWeights =
  | { kind: 'bf16' }
  | { kind: 'intn'; bits: 2 | 3 | 4 | 8; groupSize: 16 | 32 | 64 | 128 }
  | { kind: '4bit'; format: string; blockSize: number };

/** One decode comparison of a deployable's format: our generate() and
 * llama.cpp (node-llama-cpp's prebuilt CPU build) on the same weights, the
 * same prompt ids and threads, greedy, at the suite's decode shape
 * (decode_rows.ts). Speeds are the best of `repeats` interleaved runs. */
export interface DecodeRow {
  /** the GGUF storage llama.cpp ran (the projections; embeddings F16), or null: no GGUF form */
  format: 'F16' | 'Q8_0' | 'Q4_1' | null;
  /** the file holds our model's weights (up to fp16 rounding of values, or of block scales and offsets); false: requantized for llama.cpp */
  exact: boolean;
  /** the decode shape (a model preset, random weights) */
  shape: string;
  /** how our side held the projections, e.g. 'bf16', 'INT4 g32 (RTN)' */
  weights: string;
  /** ok: every figure below; unavailable: node-llama-cpp could not load (ours still timed);
   * no-gguf: this format has no GGUF form (ours timed alone); error: statusText says what failed */
  status: 'ok' | 'unavailable' | 'no-gguf' | 'error';
  /** why a figure is missing, or what is approximate */
  statusText?: string;
  threads: number;
  promptTokens: number;
  newTokens: number;
  /** timed runs per side, interleaved (ours, llama.cpp, ours, ...); the best of each kept */
  repeats: number;
  /** what our quantized projections multiply in the decode steps (generate's decodeActivations) */
  activations?: DecodeActivations;
  ours?: { decodeTokensPerSecond: number; prefillTokensPerSecond: number };
  llamaCpp?: { decodeTokensPerSecond: number; prefillTokensPerSecond: number; version: string };
  /** ours / llama.cpp (the best run of each) */
  ratioDecode?: number;
  ratioPrefill?: number;
  /** the lowest and highest of the rounds' own ratios (round i: our run i / llama.cpp's run i,
   * timed one after the other): the spread a difference must clear to be a finding */
  ratioDecodeRange?: [number, number];
  ratioPrefillRange?: [number, number];
  /** positions of the newTokens greedy tokens where both generated the same token */
  tokensAgree?: number;
  /** the first position where they differ (newTokens: never); after it the two continue from different text */
  firstDivergence?: number;
  /** positions where llama.cpp's greedy token, given the prompt and our tokens before it, is ours
   * (teacher-forced: one difference does not carry on to the next positions) */
  teacherForcedAgree?: number;
}

export interface DeployableRow {
  /** e.g. 'merged bf16', 'merged + requantized NF4', 'QA-LoRA merged INT4' */
  kind: string;
  bits: number;
  bytes: number;
  metrics: Record<string, number>;
  decodeTokensPerSecond?: number;
  /** what decodeTokensPerSecond's quantized projections multiplied (generate's decodeActivations; absent: 'i16') */
  decodeActivations?: DecodeActivations;
  /** an exact deployable (QA-LoRA's merge): the largest |metric - the trained run's metric| */
  vsTrained?: { maxAbsMetricDiff: number };
  /** per-example outcomes of its evaluation (the same test items as the trained run) */
  outcomes?: Outcomes;
  /** how it holds its projections (the decode rows rebuild this at the decode shape) */
  weights?: DeployWeights;
  /** our decode beside llama.cpp's at the suite's decode shape, one row per GGUF form (decode_rows.ts) */
  llamaCpp?: DecodeRow[];
}

export interface RunRecord {
  /** unique within a suite: task/method/settings (a peer's: task/method@impl/settings) */
  id: string;
  suite: string;
  task: string;
  method: string;
  /** who trained: tunebench (absent means tunebench), or a peer redoing a run of ours */
  impl?: 'tunebench' | 'tensorflow.js' | 'pytorch';
  /** a peer's record: the id of our run it redid (same weights, batches, learning rates) */
  peerOf?: string;
  /** a deployable model's row (deployableRecords): the id of the trained run it was built from */
  deployableOf?: string;
  /** a deployable row: its kind ('merged bf16', ...), bits per projection weight, decode speed */
  deployable_?: { kind: string; bits: number; decodeTokensPerSecond?: number; llamaCpp?: DecodeRow[] };
  /** everything that shaped the run (steps, batch, seq, lr, r, alpha, ...) */
  settings: Record<string, string | number | boolean>;
  status: RunStatus;
  /** why the run did not finish (status != ok) */
  error?: string;
  /** bytes the failed allocation asked for (status oom) */
  oomBytes?: number;
  /** status oom without running: the planner's peak (plan.ts) exceeded the
   * device memory free before the run */
  fit?: { plannedBytes: number; freeBytes: number; ran: false };
  /** optimizer step at which the loss stopped being finite (status diverged) */
  divergedAtStep?: number;
  /** task metrics: accuracy, macroF1, evalLoss, perplexity, adaptPerplexity, forgetting, ... */
  metrics: Record<string, number>;
  /** per-example outcomes of the evaluation behind `metrics` (labels: truth,
   * prediction, label log-likelihoods; text: NLL and tokens per sequence):
   * every interval and paired comparison is computed from these */
  outcomes?: Outcomes;
  /** the same evaluation of the run's starting point (the prepared model
   * before its first step): did the run leave it? (stats/learned.ts) */
  untrained?: { metrics: Record<string, number>; outcomes: Outcomes };
  memory: {
    /** highest simultaneous tracked bytes during training */
    peakTotal: number;
    peak: Record<Category, number>;
    /** process resident set (bytes) right after training, model still loaded:
     * everything the process holds (V8 heap, data, the allocator's cache, malloc's
     * free pages), not what the run needs; see cachedBytes and peakTotal */
    rssBytes?: number;
    /** freed blocks the allocator kept for reuse at that moment (part of
     * rssBytes, not of the tracked peaks); given back between runs */
    cachedBytes?: number;
    /** device memory in use (cudaMemGetInfo: total - free) right after
     * training, model still loaded, GPU backend only: absent on the CPU.
     * Records of the CPU backend written before rssBytes existed hold the
     * process resident set here: read them with rssBytesOf() */
    deviceBytes?: number;
    /** GPU backend: bytes the caching pool held from the driver right after
     * training, and at most during the run (the tracked peaks above count
     * the bytes requested; the pool rounds blocks up and keeps freed ones) */
    reservedBytes?: number;
    reservedPeakBytes?: number;
    /** GPU backend: the device's free and total bytes (cudaMemGetInfo) right after training */
    deviceFreeBytes?: number;
    deviceTotalBytes?: number;
    /** what peakTotal measures when it is not tunebench's tracked bytes (peers) */
    source?: string;
    /** predicted by `tunebench plan`, when available */
    predicted?: Record<Category, number> & { total: number };
  };
  speed: {
    /** input positions per second over the training steps, padding included
     * (batch x seqLen per step): the padded figure */
    tokensPerSecond: number;
    /** real (non-padding) input tokens per second over the training steps;
     * absent in records from before packing (and for peers) */
    realTokensPerSecond?: number;
    /** mean milliseconds per optimizer step, and its split (null where an
     * implementation cannot split them: TensorFlow.js's variableGrads) */
    msPerStep: { forward: number | null; backward: number | null; optimizer: number | null; total: number };
    /** median milliseconds of the steps after the warm-up ones: robust to a
     * busy moment of the machine; the regression check compares this */
    medianStepMs?: number;
    /** input tokens per step / medianStepMs */
    steadyTokensPerSecond?: number;
    /** first and third quartiles of the timed steps' milliseconds (how widely they spread) */
    stepQuartilesMs?: [number, number];
  };
  trainableParameters: number;
  totalParameters: number;
  /** bytes of what the method saves (adapter files, or the whole model) */
  fileBytes: number;
  /** training loss per optimizer step */
  lossCurve: number[];
  /** what the run trained on: optimizer steps, rows drawn (steps x batch), those rows as epochs of the training rows, and real (non-padding) input tokens */
  budget?: { steps: number; rows: number; epochs: number; realTokens: number };
  /** the learning-rate search that chose settings.lr (suites with tuneLr) */
  tuning?: TuningRecord;
  /** the validation score before training (step 0) and at evenly spaced steps of the run: is the method still improving when the budget ends? */
  evalCurve?: { metric: string; higherIsBetter: boolean; points: { step: number; value: number }[] };
  deployable?: DeployableRow[];
  /** GPU backend: why the deployable models could not be built (the trained run's result stands) */
  deployableError?: string;
  /** reference kernel time (ms, median) measured just before this run, to normalise speed across machines */
  referenceMs: number;
  /** the same reference kernel timed right after the run: a load that came or went during it shows here */
  referenceAfterMs?: number;
  provenance: {
    commit: string;
    packages: Record<string, string>;
    backend: 'cpu' | 'cuda';
    /** 'cpu', or the GPU's name and compute capability ("NVIDIA H100 80GB HBM3 (sm 9.0)") */
    device: string;
    /** GPU backend: the driver and runtime versions and the device's memory */
    cuda?: { name?: string; capability?: string; sms?: number; totalBytes?: number; driverVersion?: number; runtimeVersion?: number };
    cpu: string;
    gemm: string;
    seed: number;
    node: string;
    /** the machine that ran it (os.hostname) */
    host?: string;
    /** a sharded suite: this record's shard, "i/n" (1-based) */
    shard?: string;
    /** several workers on one machine: which one ran it (0-based), and how many shared the machine */
    worker?: { index: number; of: number; threads?: number };
  };
  startedAt: string;
  durationMs: number;
}

/** The process resident set of a run: memory.rssBytes, or, in a CPU-backend
 * record from before that field existed, memory.deviceBytes (which held it). */
export function rssBytesOf(r: Pick<RunRecord, 'memory' | 'provenance'>): number | undefined {
  const m = r.memory;
  if (m?.rssBytes !== undefined) return m.rssBytes;
  return r.provenance?.backend === 'cpu' && m?.source === undefined ? m?.deviceBytes : undefined;
}

/** A peer's record (TensorFlow.js, PyTorch), not one of ours. */
export function isPeer(r: Pick<RunRecord, 'impl'>): boolean {
  return r.impl !== undefined && r.impl !== 'tunebench';
}

/** The deployable models of a run as rows of their own (id '<run id>#<kind>'),
 * so that results.csv and the regression check treat them like trained runs:
 * metrics as evaluated on the deployed form, fileBytes = the model's
 * projection bytes, no training figures. */
export function deployableRecords(r: RunRecord): RunRecord[] {
  return (r.deployable ?? []).map((d) => ({
    ...r,
    id: `${r.id}#${d.kind.replace(/\s+/g, '-')}`,
    method: `${r.method} → ${d.kind}`,
    deployableOf: r.id,
    deployable_: { kind: d.kind, bits: d.bits, decodeTokensPerSecond: d.decodeTokensPerSecond, ...(d.llamaCpp ? { llamaCpp: d.llamaCpp } : {}) },
    metrics: d.metrics,
    outcomes: d.outcomes,
    fileBytes: d.bytes,
    speed: { tokensPerSecond: 0, msPerStep: { forward: null, backward: null, optimizer: null, total: 0 } },
    lossCurve: [],
    deployable: undefined,
  }));
}

/** Records with each run's deployable rows right after it. */
export function withDeployables(records: readonly RunRecord[]): RunRecord[] {
  return records.flatMap((r) => [r, ...deployableRecords(r)]);
}
