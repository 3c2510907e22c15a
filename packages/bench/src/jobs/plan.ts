// A suite is a list of jobs. planJobs turns a suite into that list,
// deterministically and in the order one process would run it: the base's
// pretraining, then per task, method and seed a training run followed by the
// peers that redo it, then the speed rows at published shapes and their
// PyTorch peers, then the kernel microbenchmarks. Each job carries what it
// needs (the base; the peer input its run captures), its planned peak memory
// (plan.ts, the same planner `tunebench plan` uses) and an estimated cost that
// shards balance. Executing a job is the business of its module (run.ts,
// peer.ts, shape.ts, kernels.ts); runner.ts walks the list.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type LlamaConfig, configFromHf, preset } from '@tunebench/core';
import { type MethodSpec, methodPlugin, parseMethods, planFor } from '../methods.js';
import { PRETRAIN_DEFAULTS } from '../tasks/pretrain.js';
import type { PeerName, ShapeRow, Suite, TaskName } from '../suite.js';
import { checkpointingOf, peerRunId, peersFor, runId, runSeeds, shapeRunId, withRunSeed } from './common.js';

export const JOB_KINDS = ['pretrain', 'run', 'peer', 'shape', 'shape-peer', 'kernels'] as const;
export type JobKind = (typeof JOB_KINDS)[number];

export interface Job {
  /** stable: a run's id is its record's id (results.jsonl) */
  id: string;
  kind: JobKind;
  /** ids of the jobs whose results this one uses: the base's pretraining, the run a peer redoes (its captured input), the first seed whose rate search the others reuse */
  needs: string[];
  /** the planned peak memory of the job's model and step, bytes (plan.ts); 0 where not planned */
  plannedBytes: number;
  /** estimated cost: floating-point operations of its training steps (6 per parameter and token for a trained weight, 4 for a frozen one), times a peer's slowness; a relative figure, for balancing shards */
  cost: number;
  /** one line: what the job does */
  what: string;
  task?: TaskName;
  method?: MethodSpec;
  /** the run's seed (adapter initialisation, data order) */
  seed?: number;
  peer?: PeerName;
  /** a peer's or shape row's steps */
  steps?: number;
  threads?: number;
  row?: ShapeRow;
}

export interface JobPlan {
  suite: string;
  jobs: Job[];
  /** peers that cannot redo a method, named once and never planned */
  skipped: { id: string; of: string; reason: string }[];
}

export interface PlanOptions {
  /** only these run/shape ids (and nothing else: no peers, no kernels) */
  only?: Set<string>;
}

/** How much slower than our run a peer's step is taken to be (TensorFlow.js's pure-JS backend is far slower). */
const PEER_SLOWNESS: Record<PeerName, number> = { tfjs: 40, pytorch: 1 };

/** The base model's configuration, without pretraining it. */
export function baseConfigOf(suite: Suite): LlamaConfig {
  if (suite.base.hfDir) {
    const path = join(suite.base.hfDir, 'config.json');
    return configFromHf(JSON.parse(readFileSync(path, 'utf8')), path);
  }
  return preset(suite.base.preset ?? 'tiny');
}

/** The pretraining job's id: the preset and its step count. */
export function pretrainJobId(suite: Suite): string | null {
  if (suite.base.hfDir) return null;
  const name = suite.base.preset ?? 'tiny';
  const steps = suite.base.pretrainSteps ?? (PRETRAIN_DEFAULTS[name] ?? PRETRAIN_DEFAULTS.small).steps;
  return `pretrain:${name}/steps${steps}`;
}

function paramsOf(cfg: LlamaConfig): number {
  const h = cfg.hiddenSize, layers = cfg.numLayers, kv = cfg.numKvHeads * (h / cfg.numHeads);
  const block = h * h * 2 + h * kv * 2 + 3 * h * cfg.intermediateSize;
  return layers * block + cfg.vocabSize * h * (cfg.tieWordEmbeddings ? 1 : 2);
}

/** FLOPs of `steps` steps of batch x seq tokens: every weight does forward and input-gradient work; trained ones also their weight gradient. */
function trainFlops(cfg: LlamaConfig, m: MethodSpec, steps: number, batch: number, seq: number): number {
  const perToken = m.name === 'full' || m.name === 'full-8bit' ? 6 : 4;
  return perToken * paramsOf(cfg) * steps * batch * seq;
}

export function planJobs(suite: Suite, o: PlanOptions = {}): JobPlan {
  const jobs: Job[] = [];
  const skipped: JobPlan['skipped'] = [];
  const sh = suite.shared;
  const cfg = baseConfigOf(suite);
  const only = o.only;
  const pretrain = pretrainJobId(suite);
  const wantsBase = suite.tasks.length > 0 && suite.methods.length > 0 && (!only || [...only].some((id) => !id.startsWith('shape:')));
  if (pretrain && wantsBase) {
    const d = PRETRAIN_DEFAULTS[suite.base.preset ?? 'tiny'] ?? PRETRAIN_DEFAULTS.small;
    const steps = suite.base.pretrainSteps ?? d.steps;
    const full: MethodSpec = { name: 'full', lr: d.lr, label: 'full' };
    jobs.push({
      id: pretrain, kind: 'pretrain', needs: [], steps, what: `pretrain the ${suite.base.preset ?? 'tiny'} base on Brown, ${steps} steps of ${d.batchSize} x ${d.seqLen} (cached once)`,
      plannedBytes: planFor(cfg, full, d.batchSize, d.seqLen, 1, 'off').total, cost: trainFlops(cfg, full, steps, d.batchSize, d.seqLen),
    });
  }
  const baseNeeds = pretrain && wantsBase ? [pretrain] : [];
  const seeds = runSeeds(suite);
  for (const task of suite.tasks) {
    for (const m of suite.methods) for (const seed of seeds) {
      const seeded = withRunSeed(suite, seed);
      const id = runId(task, m, seeded);
      if (only && !only.has(id)) continue;
      const first = runId(task, m, withRunSeed(suite, seeds[0]));
      const needs = [...baseNeeds, ...(suite.tuneLr && seed !== seeds[0] ? [first] : [])];
      const plannedBytes = planFor(cfg, m, sh.batchSize, sh.seqLen, 1, checkpointingOf(m, suite)).total;
      const cost = trainFlops(cfg, m, sh.steps, sh.batchSize, sh.seqLen);
      jobs.push({ id, kind: 'run', needs, plannedBytes, cost, task, method: m, seed, what: `${m.label} on ${task}, ${sh.steps} steps, seed ${seed}` });
      // peers redo the first seed only; a peer that cannot redo this method is named once and never planned
      if (only || seed !== seeds[0]) continue;
      for (const p of peersFor(task, m, seeded)) {
        const pid = peerRunId(task, m, seeded, p.peer, p.steps);
        const unsupported = methodPlugin(m.name).peerUnsupported?.(p.peer, m) ?? null;
        if (unsupported) { skipped.push({ id: pid, of: id, reason: unsupported }); continue; }
        jobs.push({
          id: pid, kind: 'peer', needs: [id], plannedBytes, cost: trainFlops(cfg, m, p.steps, sh.batchSize, sh.seqLen) * PEER_SLOWNESS[p.peer],
          task, method: m, seed, peer: p.peer, steps: p.steps, ...(p.threads !== undefined ? { threads: p.threads } : {}),
          what: `${p.peer} redoes the first ${p.steps} step(s) of ${id}`,
        });
      }
    }
  }
  for (const row of suite.shapes ?? []) {
    const rcfg = preset(row.preset);
    for (const m of parseMethods(row.methods.join(','))) {
      const id = shapeRunId(row, m);
      if (only && !only.has(id)) continue;
      const plannedBytes = planFor(rcfg, m, row.batchSize, row.seqLen, 1, m.checkpointing ?? row.checkpointing ?? 'off').total;
      const cost = trainFlops(rcfg, m, row.steps, row.batchSize, row.seqLen);
      jobs.push({ id, kind: 'shape', needs: [], plannedBytes, cost, method: m, row, steps: row.steps, what: `${m.label} at ${row.preset} shapes, ${row.steps} steps of ${row.batchSize} x ${row.seqLen} (random weights)` });
      if (only || !row.peers?.includes('pytorch')) continue;
      const pid = `${id}@pytorch`;
      const unsupported = methodPlugin(m.name).peerUnsupported?.('pytorch', m) ?? null;
      if (unsupported) { skipped.push({ id: pid, of: id, reason: unsupported }); continue; }
      jobs.push({ id: pid, kind: 'shape-peer', needs: [id], plannedBytes, cost, method: m, row, steps: row.steps, peer: 'pytorch', what: `PyTorch trains ${m.label} at ${row.preset} shapes` });
    }
  }
  if (suite.kernels !== false && !only) {
    jobs.push({ id: 'kernels', kind: 'kernels', needs: [], plannedBytes: 0, cost: 2 * paramsOf(cfg) * sh.batchSize * sh.seqLen * 50, what: `kernel microbenchmarks at the suite's shapes (hidden ${cfg.hiddenSize}, ${sh.batchSize} x ${sh.seqLen} tokens)` });
  }
  return { suite: suite.name, jobs, skipped };
}

/** The plan as a table for people (`tunebench jobs`). */
export function describePlan(plan: JobPlan): string {
  const gib = (b: number) => (b > 0 ? `${(b / 2 ** 30).toFixed(2)} GiB` : '-');
  const total = plan.jobs.reduce((s, j) => s + j.cost, 0);
  const lines = [`suite ${plan.suite}: ${plan.jobs.length} job(s)`, ''];
  const w = Math.max(2, ...plan.jobs.map((j) => j.id.length));
  lines.push(`${'id'.padEnd(w)}  ${'kind'.padEnd(10)}  ${'planned peak'.padStart(12)}  ${'cost'.padStart(6)}  needs`);
  for (const j of plan.jobs) {
    const share = total > 0 ? `${((100 * j.cost) / total).toFixed(1)}%` : '-';
    lines.push(`${j.id.padEnd(w)}  ${j.kind.padEnd(10)}  ${gib(j.plannedBytes).padStart(12)}  ${share.padStart(6)}  ${j.needs.join(', ') || '-'}`);
  }
  for (const s of plan.skipped) lines.push(`(not planned: ${s.id}: ${s.reason})`);
  lines.push('', 'cost: estimated training FLOPs as a share of the suite (peers weighted by their slowness); shards balance it.');
  return lines.join('\n');
}
