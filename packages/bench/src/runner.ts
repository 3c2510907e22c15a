// The runner: plans a suite as a list of jobs (jobs/plan.ts), then executes
// them one after another (or a shard of them), appending each finished job's
// record to the results file at once (a crash or Ctrl-C loses no finished
// run), and going on when a run does not fit, diverges or fails. An aborted
// signal (the CLI's Ctrl-C) stops the run in progress after its current
// training step, records nothing of it, and ends with SuiteInterrupted.
// Resume is "skip the ids already recorded".
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { type Device, writeJsonAtomic } from '@tunebench/core';
import type { RunRecord } from './record.js';
import type { Suite } from './suite.js';
import { adaptData } from './tasks/adapt.js';
import { jsonlData } from './tasks/jsonl_task.js';
import { brownData } from './tasks/pretrain.js';
import { spamData } from './tasks/spam_task.js';
import { DEFAULT_MAX_VALIDATION } from './tune.js';
import { taskTokenizer } from './tokenizer.js';
import { type JobContext, SuiteInterrupted, appendRecord, promptCharsOf, provenance, readResults } from './jobs/common.js';
import { KERNELS_FILE, kernelsJob } from './jobs/kernels.js';
import { peerJob } from './jobs/peer.js';
import { type Job, type JobPlan, planJobs } from './jobs/plan.js';
import { type TaskData, baseJob, runJob } from './jobs/run.js';
import { type Shard, shardJobs, shardLabel, shardSuffix } from './jobs/shard.js';
import { shapeJob, shapePeerJob } from './jobs/shape.js';

export {
  SuiteInterrupted, readResults, runId, runSeeds, withRunSeed, peerRunId, peersFor, referenceKernelMs, provenance, shapeRunId, promptCharsOf,
  checkpointingOf, warmupStepsOf,
} from './jobs/common.js';
export { KERNELS_FILE, readKernels } from './jobs/kernels.js';
export { JOB_KINDS, type Job, type JobKind, type JobPlan, type PlanOptions, planJobs, describePlan } from './jobs/plan.js';
export { type Shard, parseShard, assignShards, shardJobs, shardUnits, shardLabel, shardSuffix } from './jobs/shard.js';

export interface RunnerOptions {
  /** reports/<name> */
  outDir: string;
  /** skip runs already in the results file */
  resume?: boolean;
  /** do only the runs with these ids (timing a run again) */
  only?: Set<string>;
  /** progress lines per run (default true) */
  progress?: boolean;
  /** learning rates by run id: used as they are, without a search (timing a run again) */
  lrs?: Map<string, number>;
  log?: (line: string) => void;
  /** aborted: stop after the current training step (see SuiteInterrupted) */
  signal?: AbortSignal;
  /** where the runs train (default cpu); resolve 'auto' first (core's resolveDevice) */
  device?: Device;
  /** run one shard of the plan: results go to results.shard-<i>-of-<n>.jsonl beside a manifest (merge them with mergeShards) */
  shard?: Shard;
  /** where pretrained bases are cached (default $TUNEBENCH_CACHE or <repo>/.tunebench-cache); safe for several processes at once */
  cacheDir?: string;
  /** the machine's memory for the planner's check (default os.totalmem on the CPU) */
  machineBytes?: number;
}

/** A shard's manifest: what it was given and what it could not run. */
export interface ShardManifest {
  format: 'tunebench-shard/1';
  suite: string;
  /** sha256 of the suite's JSON: every setting the shards must share */
  suiteHash: string;
  commit: string;
  shard: { index: number; of: number };
  /** every job id of the plan, in order */
  planned: string[];
  /** the ids this shard was given (the pretraining it needs included) */
  jobs: string[];
  /** given but not run, with why (a peer with no PyTorch here, a peer whose run failed) */
  notRun: { id: string; reason: string }[];
  finished: boolean;
}

export const suiteHash = (suite: Suite): string => createHash('sha256').update(JSON.stringify(suite)).digest('hex');

const GIB = 2 ** 30;

/** The planner's refusals, before any folder is created: a base whose pretraining cannot fit this machine. */
export function refuseWhatCannotRun(plan: JobPlan, device: Device, machineBytes = totalmem()): void {
  if (device !== 'cpu') return;  // on a GPU each run is checked against the free device memory as it starts
  for (const j of plan.jobs) {
    if (j.kind === 'pretrain' && j.plannedBytes > machineBytes) {
      throw new Error(`${j.id}: pretraining needs ${(j.plannedBytes / GIB).toFixed(1)} GiB (planned peak), this machine has ${(machineBytes / GIB).toFixed(1)} GiB: use base.hfDir (a checkpoint to start from) or a smaller preset`);
    }
  }
}

/** The tasks' data, prepared before anything is written: a dataset that cannot be used fails here. */
export function prepareData(suite: Suite): TaskData {
  const sh = suite.shared;
  const tok = taskTokenizer(suite.base.hfDir);
  const data: TaskData = {};
  // validation parts (never the test split) for the learning-rate search and the held-out curves
  const maxValidation = suite.tuneLr ? suite.tuneLr.maxValidation ?? DEFAULT_MAX_VALIDATION : undefined;
  const validationFraction = suite.tuneLr ? 0.1 : undefined;
  if (suite.tasks.includes('spam')) data.spam = spamData(tok, { seqLen: sh.seqLen, maxChars: promptCharsOf(suite), seed: sh.seed, maxTrain: sh.maxTrain, maxTest: sh.maxTest, maxValidation, packing: sh.packing });
  if (suite.tasks.includes('adapt')) data.adapt = adaptData(brownData(sh.seqLen, sh.seed, tok), sh.seqLen, { validationFraction, maxValidationRows: maxValidation, seed: sh.seed });
  if (suite.tasks.includes('jsonl')) data.jsonl = jsonlData(suite.dataset!, tok, { seqLen: sh.seqLen, seed: sh.seed, validationFraction, maxValidation, packing: sh.packing, format: suite.datasetFormat, modelDir: suite.base.hfDir });
  return data;
}

export async function runSuite(suite: Suite, o: RunnerOptions): Promise<RunRecord[]> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const sh = suite.shared;
  const device = o.device ?? 'cpu';
  const plan = planJobs(suite, { only: o.only });
  refuseWhatCannotRun(plan, device, o.machineBytes);
  const jobs = o.shard ? shardJobs(plan, o.shard) : plan.jobs;
  const data = prepareData(suite);
  const suffix = o.shard ? `.${shardSuffix(o.shard)}` : '';
  const resultsPath = join(o.outDir, `results${suffix}.jsonl`);
  const kernelsPath = join(o.outDir, o.shard ? `kernels${suffix}.json` : KERNELS_FILE);
  const done = new Map(o.resume ? readResults(resultsPath).map((r) => [r.id, r]) : []);
  mkdirSync(o.outDir, { recursive: true });
  if (!o.resume && existsSync(resultsPath)) rmSync(resultsPath);
  if (!o.resume && o.shard && existsSync(kernelsPath)) rmSync(kernelsPath);

  const prov: RunRecord['provenance'] = { ...provenance(sh.seed, device), ...(o.shard ? { shard: shardLabel(o.shard) } : {}) };
  const manifestPath = o.shard ? join(o.outDir, `${shardSuffix(o.shard)}.json`) : null;
  const manifest: ShardManifest | null = o.shard ? {
    format: 'tunebench-shard/1', suite: suite.name, suiteHash: suiteHash(suite), commit: prov.commit, shard: { ...o.shard },
    planned: plan.jobs.map((j) => j.id), jobs: jobs.map((j) => j.id), notRun: [], finished: false,
  } : null;
  const writeManifest = () => { if (manifest && manifestPath) writeJsonAtomic(manifestPath, manifest); };
  writeManifest();

  const ctx: JobContext = {
    suite, device, outDir: o.outDir, resultsPath, kernelsPath, log, progress: o.progress ?? true, signal: o.signal, prov,
    baseDir: null, ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}), ...(o.machineBytes ? { machineBytes: o.machineBytes } : {}), data, done, peerInputs: new Map(), peerSteps: new Map(),
    searchedLr: new Map(), ...(o.lrs ? { lrs: o.lrs } : {}), notRun: [],
    record: (r) => { appendRecord(resultsPath, r); done.set(r.id, r); },
    stopIfAborted: (dropped = null) => {
      if (o.signal?.aborted || dropped) throw new SuiteInterrupted(resultsPath, readResults(resultsPath), dropped);
    },
  };
  // learning rates chosen by a search, per task/method label (reused by the other seeds)
  for (const r of done.values()) if (r.tuning) ctx.searchedLr.set(`${r.task}/${r.method}`, r.tuning.chosen);
  // what each run captures for its peers still to come
  for (const j of jobs) if (j.kind === 'peer' && !done.has(j.id)) ctx.peerSteps.set(j.needs[0], Math.max(ctx.peerSteps.get(j.needs[0]) ?? 0, j.steps!));
  // the base is needed when a run or a peer is still to do
  const needsBase = jobs.some((j) => (j.kind === 'run' && (!done.has(j.id) || ctx.peerSteps.has(j.id))) || (j.kind === 'peer' && !done.has(j.id)));
  if (needsBase || suite.base.hfDir) baseJob(ctx);
  ctx.stopIfAborted();
  const differing = suite.methods.map((m) => `${m.label}: lr ${m.lr}${m.r ? `, r ${m.r}, alpha ${m.alpha}` : ''}`).join('; ');
  log(`suite ${suite.name}${o.shard ? ` (shard ${shardLabel(o.shard)}: ${jobs.length} of ${plan.jobs.length} jobs)` : ''}: ${suite.tasks.length} task(s) x ${suite.methods.length} method(s); shared: ${sh.steps} steps, batch ${sh.batchSize}, seq ${sh.seqLen}, seed ${sh.seed}, ${sh.schedule} schedule; per method: ${differing}`);
  const mine = new Set(jobs.map((j) => j.id));
  for (const s of plan.skipped) if (mine.has(s.of)) log(`${s.id}: skipped: ${s.reason}`);

  const remaining = new Map<string, number>();  // a run's peers still to do here: its captured input is let go after the last
  for (const j of jobs) if (j.kind === 'peer') remaining.set(j.needs[0], (remaining.get(j.needs[0]) ?? 0) + 1);
  try {
    for (const job of jobs) {
      ctx.stopIfAborted();
      await execute(job, ctx, o.resume ?? false);
      if (job.kind === 'peer') {
        const left = (remaining.get(job.needs[0]) ?? 1) - 1;
        remaining.set(job.needs[0], left);
        if (left === 0) ctx.peerInputs.delete(job.needs[0]);
      }
    }
  } finally {
    if (manifest) { manifest.notRun = ctx.notRun; writeManifest(); }
  }
  ctx.stopIfAborted();
  if (manifest) { manifest.finished = true; writeManifest(); }
  return readResults(resultsPath);
}

export async function execute(job: Job, ctx: JobContext, resume: boolean): Promise<void> {
  switch (job.kind) {
    case 'pretrain': return;  // done before the others (baseJob), once
    case 'run': return runJob(job, ctx);
    case 'peer': return peerJob(job, ctx);
    case 'shape': return shapeJob(job, ctx);
    case 'shape-peer': return shapePeerJob(job, ctx);
    case 'kernels': return kernelsJob(ctx, resume);
  }
}
