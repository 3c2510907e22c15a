// `tunebench jobs` (the plan of a suite) and `tunebench merge` (shards into one report).
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseCli } from '@tunebench/core';
import { readKernels } from '../jobs/kernels.js';
import { mergeShards } from '../jobs/merge.js';
import { describePlan, planJobs } from '../jobs/plan.js';
import { assignShards, parseShard } from '../jobs/shard.js';
import { writeReports } from '../report/index.js';
import { SUITE_OPTIONS, suiteFromArgs } from './suite_args.js';

const JOBS_HELP = `tunebench jobs — the plan of a suite: its jobs in order, what each needs, its planned peak memory and estimated cost.

Usage: pnpm bench -- jobs [--suite ci|cpu|gpu|FILE] [suite options] [--shards N] [--json]

  suite options   as for a run: --methods, --tasks, --model, --dataset, --peers, --seeds,
                  --tune-lr, --checkpointing, --device ... (see pnpm bench -- --help)
  --shards N      also show which of N shards (--shard i/N) runs each job
  --json          the plan as JSON (one object: suite, jobs, skipped)

Kinds: pretrain (the base, cached), run (a method on a task with a seed), peer (another
implementation redoes a run's first steps), shape (speed and memory at a published
shape), shape-peer (PyTorch at that shape), kernels (microbenchmarks).`;

export function jobsCommand(argv: string[]): never {
  const opt = parseCli({ ...SUITE_OPTIONS, json: { type: 'boolean', default: false }, shards: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false } }, JOBS_HELP, argv);
  const fail = (msg: string): never => { console.error(`tunebench jobs: ${msg}\nRun with --help for the options.`); process.exit(2); };
  const { suite } = suiteFromArgs(opt, fail);
  let plan!: ReturnType<typeof planJobs>;
  try { plan = planJobs(suite); } catch (e) { fail((e as Error).message); }
  let shardOf: Map<string, number> | undefined;
  if (opt.shards !== undefined) {
    const n = Number(opt.shards);
    if (!Number.isInteger(n) || n < 1 || n > 10000) fail(`--shards must be a whole number from 1 to 10000, got '${opt.shards}'`);
    shardOf = assignShards(plan, n);
  }
  if (opt.json) {
    const jobs = plan.jobs.map((j) => ({ ...j, ...(shardOf ? { shard: j.kind === 'pretrain' ? 'every shard that needs it' : shardOf.get(j.id) } : {}) }));
    process.stdout.write(`${JSON.stringify({ ...plan, jobs }, null, 2)}\n`);
  } else {
    let text = describePlan(plan);
    if (shardOf) {
      const n = Number(opt.shards);
      const per = Array.from({ length: n }, (_, i) => plan.jobs.filter((j) => shardOf!.get(j.id) === i + 1));
      const total = plan.jobs.reduce((s, j) => s + j.cost, 0) || 1;
      text += `\n\n${n} shard(s):\n${per.map((js, i) => `  ${i + 1}/${n}: ${js.length} job(s), ${((100 * js.reduce((s, j) => s + j.cost, 0)) / total).toFixed(1)}% of the cost: ${js.map((j) => j.id).join(', ') || '-'}`).join('\n')}`;
    }
    process.stdout.write(`${text}\n`);
  }
  process.exit(0);
}

const MERGE_HELP = `tunebench merge — the shards of one suite into one report.

Usage: pnpm bench -- merge OUT DIR [DIR...]

Reads shard-<i>-of-<n>.json and results.shard-<i>-of-<n>.jsonl in each DIR (the --out of
each shard; several shards may share one), checks that they are the shards of one plan
(same suite and settings, same commit, every shard once, every job once), and writes
OUT/results.jsonl, results.csv, summary.md, report.html and kernels.json.`;

export async function mergeCommand(argv: string[]): Promise<never> {
  let parsed: { values: { title?: string; help?: boolean }; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options: { title: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false } }, allowPositionals: true, strict: true });
  } catch (e) {
    console.error(`tunebench merge: ${(e as Error).message}\nRun with --help for the options.`);
    process.exit(2);
  }
  if (parsed.values.help) { console.log(MERGE_HELP); process.exit(0); }
  const opt = parsed.values;
  const [out, ...dirs] = parsed.positionals;
  if (!out || dirs.length === 0) { console.error('tunebench merge: give OUT and at least one DIR\nRun with --help for the options.'); process.exit(2); }
  try {
    const m = mergeShards(resolve(out), dirs.map((d) => resolve(d)));
    const suiteName = m.records[0]?.suite ?? 'merged';
    const paths = await writeReports(resolve(out), m.records, { title: opt.title ?? `tunebench — suite ${suiteName} (${m.shards} shards merged)`, kernels: readKernels(resolve(out)) });
    for (const x of m.notRun) console.error(`merge: ${x.id}: not run by its shard: ${x.reason}`);
    console.error(`merge: ${m.shards} shard(s), ${m.records.length} record(s) -> ${m.resultsPath}; report: ${paths.html}`);
    process.exit(0);
  } catch (e) {
    console.error(`tunebench merge: ${(e as Error).message}`);
    process.exit(1);
  }
}
