// Shards: a deterministic subset of a suite's jobs for one process of a
// scheduler's array (Slurm job arrays, Kubernetes Indexed Jobs). Jobs that
// depend on each other stay together (a peer with its run; the other seeds of
// a run with the first when a rate search is shared); the base's pretraining
// goes to every shard that needs it (it is cached: once per shard, or once in
// all with a shared --cache). Units are dealt out by estimated cost, largest
// first, each to the shard with the least so far (ties: the lower index).
import type { Job, JobPlan } from './plan.js';

export interface Shard {
  /** 1-based */
  index: number;
  of: number;
}

export const shardLabel = (s: Shard): string => `${s.index}/${s.of}`;
export const shardSuffix = (s: Shard): string => `shard-${s.index}-of-${s.of}`;

/** Parses `--shard i/n` (1 <= i <= n), or `auto`: from a Slurm job array
 * (SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT, and SLURM_ARRAY_TASK_MIN
 * when the array does not start at 0 or 1) or a Kubernetes Indexed Job
 * (JOB_COMPLETION_INDEX, 0-based, with TUNEBENCH_SHARDS or the job's completion
 * count passed as JOB_COMPLETIONS). */
export function parseShard(spec: string, env: NodeJS.ProcessEnv = process.env): Shard {
  if (spec === 'auto') {
    const int = (name: string): number | undefined => {
      const v = env[name];
      if (v === undefined || v === '') return undefined;
      if (!/^\d+$/.test(v)) throw new Error(`--shard auto: ${name}=${JSON.stringify(v)} is not a whole number`);
      return Number(v);
    };
    const slurmId = int('SLURM_ARRAY_TASK_ID');
    if (slurmId !== undefined) {
      const count = int('SLURM_ARRAY_TASK_COUNT');
      if (count === undefined) throw new Error('--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (submit with sbatch --array=0-<n-1>)');
      const min = int('SLURM_ARRAY_TASK_MIN') ?? 0;
      return checked({ index: slurmId - min + 1, of: count }, `SLURM_ARRAY_TASK_ID ${slurmId} (min ${min}) of ${count}`);
    }
    const k8s = int('JOB_COMPLETION_INDEX');
    if (k8s !== undefined) {
      const count = int('TUNEBENCH_SHARDS') ?? int('JOB_COMPLETIONS');
      if (count === undefined) throw new Error('--shard auto: JOB_COMPLETION_INDEX is set but neither TUNEBENCH_SHARDS nor JOB_COMPLETIONS gives the number of completions (set it to the Job\'s spec.completions)');
      return checked({ index: k8s + 1, of: count }, `JOB_COMPLETION_INDEX ${k8s} of ${count}`);
    }
    throw new Error('--shard auto: no scheduler index found (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX); give --shard i/n');
  }
  const m = /^(\d+)\/(\d+)$/.exec(spec);
  if (!m) throw new Error(`--shard: '${spec}' is not i/n (e.g. 1/4) or auto`);
  return checked({ index: Number(m[1]), of: Number(m[2]) }, spec);
}

function checked(s: Shard, from: string): Shard {
  if (!(s.of >= 1 && s.of <= 10000)) throw new Error(`--shard: ${from}: the number of shards must be 1 to 10000`);
  if (!(s.index >= 1 && s.index <= s.of)) throw new Error(`--shard: ${from}: shard ${s.index} is outside 1..${s.of}`);
  return s;
}

/** Groups of jobs that must run in one process: a job with everything that needs it, transitively (the pretraining excluded). */
export function shardUnits(plan: JobPlan): Job[][] {
  const byId = new Map(plan.jobs.map((j) => [j.id, j]));
  const root = new Map<string, string>();
  const find = (id: string): string => { let r = id; while (root.get(r) !== r) r = root.get(r)!; return r; };
  for (const j of plan.jobs) if (j.kind !== 'pretrain') root.set(j.id, j.id);
  for (const j of plan.jobs) {
    if (j.kind === 'pretrain') continue;
    for (const n of j.needs) {
      if (byId.get(n)?.kind === 'pretrain' || !root.has(n)) continue;
      const [a, b] = [find(j.id), find(n)];
      if (a !== b) root.set(a, b);
    }
  }
  const units = new Map<string, Job[]>();
  for (const j of plan.jobs) {
    if (j.kind === 'pretrain') continue;
    const r = find(j.id);
    units.set(r, [...(units.get(r) ?? []), j]);
  }
  return [...units.values()];
}

/** Every job's shard (1-based), dealt out by cost. */
export function assignShards(plan: JobPlan, of: number): Map<string, number> {
  const units = shardUnits(plan).map((jobs, order) => ({ jobs, order, cost: jobs.reduce((s, j) => s + j.cost, 0) }));
  units.sort((a, b) => b.cost - a.cost || a.order - b.order);
  const load = new Array<number>(of).fill(0);
  const out = new Map<string, number>();
  for (const u of units) {
    let best = 0;
    for (let i = 1; i < of; i++) if (load[i] < load[best]) best = i;
    load[best] += u.cost;
    for (const j of u.jobs) out.set(j.id, best + 1);
  }
  return out;
}

/** The jobs of one shard, in plan order; the pretraining where any of them needs it. */
export function shardJobs(plan: JobPlan, shard: Shard): Job[] {
  const at = assignShards(plan, shard.of);
  const mine = plan.jobs.filter((j) => j.kind !== 'pretrain' && at.get(j.id) === shard.index);
  const needed = new Set(mine.flatMap((j) => j.needs));
  return plan.jobs.filter((j) => (j.kind === 'pretrain' ? needed.has(j.id) : at.get(j.id) === shard.index));
}
