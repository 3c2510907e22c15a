// @tunebench/bench: tasks, suites, runner and reports.

export {
  BROWN_DEFAULT_HELD_OUT,
  BROWN_GENRES,
  BROWN_GENRE_LETTERS,
  BROWN_SHORT_NAMES,
  brownDir,
  brownSplit,
  countByGenre,
  detokenizeBrown,
  isBrownGenre,
  loadBrown,
  splitTagged,
  type BrownDoc,
  type BrownGenre,
  type BrownSplit,
  type BrownSplitOptions,
} from './tasks/brown.js';
export {
  SPAM_FOLDERS,
  countBy,
  decodeHeader,
  decodeQuotedPrintable,
  decodeTransfer,
  dedupeSpam,
  htmlToText,
  loadSpam,
  parseEmail,
  spamDir,
  spamExample,
  spamSplit,
  truncate,
  type LoadSpamOptions,
  type ParsedEmail,
  type SpamExample,
  type SpamLabel,
  type SpamSplitOptions,
} from './tasks/spam.js';
export { hash53, seededOrder, stratifiedSplit, type Fractions, type ThreeWaySplit } from './tasks/split.js';
export { finetune, progressBar, progressPrinter, resolveFinetuneOptions, type FinetuneOptions, type FinetuneResult } from './tasks/finetune.js';
export {
  pretrainBase, loadBase, brownData, defaultCacheDir, PRETRAIN_DEFAULTS, type PretrainOptions, type PretrainResult, type BrownData,
} from './tasks/pretrain.js';
export { adaptData, evaluateAdapt, evenRows, FORGETTING_ROWS, type AdaptData, type AdaptMetrics } from './tasks/adapt.js';
export { spamData, evaluateSpam, SPAM_LABELS, type SpamData, type SpamDataOptions, type SpamMetrics } from './tasks/spam_task.js';
export { jsonlData, evaluateJsonl, labelOf, MAX_LABELS, type JsonlData, type JsonlOptions, type JsonlMetrics } from './tasks/jsonl_task.js';
export * from './record.js';
export * from './suite.js';
export { lossAgreement, LOSS_AGREEMENT } from './peers/agreement.js';
export {
  runSuite, SuiteInterrupted, readResults, readKernels, KERNELS_FILE, runId, runSeeds, withRunSeed, peerRunId, peersFor, referenceKernelMs, provenance, type RunnerOptions,
  JOB_KINDS, type Job, type JobKind, type JobPlan, type PlanOptions, planJobs, describePlan, type Shard, parseShard, assignShards, shardJobs, shardUnits, shardLabel,
  shardSuffix, type ShardManifest, suiteHash, refuseWhatCannotRun,
} from './runner.js';
export { mergeShards, type MergeResult } from './jobs/merge.js';
export { cpuWorkers, cudaWorkers, parseDevices, runParallel, type WorkerSpec, type ParallelOptions } from './jobs/workers.js';
export * from './stats/outcomes.js';
export * from './stats/bootstrap.js';
export * from './stats/learned.js';
export { measureKernels, type KernelBenchOptions, type KernelReport, type KernelRow, KERNEL_REPORT_FORMAT } from '@tunebench/core';
export * from './check.js';
export * from './report/index.js';
export { planMemory, type Plan, type PlanMethod } from './plan.js';
export { registerMethod, methodPlugin, methodNames, planFor, optimizerStateBytes, decodeTokensPerSecond, type MethodPlugin, type DeployContext, type KernelCase } from './methods.js';
export { capturePeerInput, type PeerInput, type PeerOutcome, type PeerImpl, type PeerWeight } from './peers/input.js';
export { loadTfjs, runTfjsPeer, type TfjsBackend, type TfjsBackendName } from './peers/tfjs.js';
export { runTorchPeer, torchUnavailable, TORCH_SCRIPT } from './peers/pytorch.js';
export {
  decodeRows, decodeShapeModel, decodePrompt, ggufForms, loadLlamaCpp, tokenAgreement, DEFAULT_DECODE_SHAPE, DECODE_NEW_TOKENS, DECODE_PROMPT_TOKENS, DECODE_REPEATS,
  type DecodeRowOptions, type LlamaCppLib, type LlamaCppLoader,
} from './decode_rows.js';
