#!/usr/bin/env node
// tunebench: run a suite of fine-tuning runs side by side and write the report.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import { deviceName, native, parseCli } from '@tunebench/core';
import { type WorkerSpec, cpuWorkers, cudaWorkers, parseDevices, runParallel } from './jobs/workers.js';
import { runWorker } from './jobs/worker_main.js';
import { checkLearned, checkReport, fastestAttempt, readBaseline, speedOnly, writeBaseline } from './check.js';
import { SuiteInterrupted, parseShard, readKernels, runSuite, shardLabel, type Shard } from './runner.js';
import { ggufCommand } from './commands/gguf.js';
import { jobsCommand, mergeCommand } from './commands/jobs.js';
import { planCommand } from './commands/plan.js';
import { SUITE_OPTIONS, suiteFromArgs } from './commands/suite_args.js';
import { writeReports } from './report/index.js';

const HELP = `tunebench — full fine-tuning, LoRA and QLoRA side by side: memory, speed, accuracy.

Usage: pnpm bench [-- options]        (or: node packages/bench/dist/cli.js [options])
       pnpm bench -- plan --model PRESET_OR_HF_DIR --method M --batch B --seq T   (see plan --help)
       pnpm bench -- gguf --model DIR --out FILE.gguf [--type f16|q8_0|q4_1] [--embeddings f16|q8_0]   (see gguf --help)
       pnpm bench -- jobs [--suite X] [--shards N] [--json]     the suite's plan (see jobs --help)
       pnpm bench -- merge OUT DIR...                           shards into one report (see merge --help)

Options:
  --suite ci|cpu|gpu|FILE  runs to do (default: cpu; gpu needs the CUDA backend).
                           ci: mini base, about 8 minutes; cpu: small base, about 26;
                           gpu: a ~25M base pretrained on the GPU for accuracy rows,
                           then speed/memory rows at SmolLM-135M, TinyLlama-1.1B and
                           Llama-2-7B shapes (random weights) beside PyTorch;
                           FILE: a suite JSON file (format in README.md)
  --methods LIST           the methods to run, e.g. full,lora8,qlora64 (one the suite has
                           keeps its settings; others take their defaults). Tokens:
                           full, full-8bit (8-bit AdamW), lora<r>, qlora<r> (NF4 base,
                           double-quantized, blocks of 64), qlora<r>-loftq (LoftQ init),
                           qlora<r>-8bit (8-bit AdamW); other QLoRA options (format,
                           blockSize, doubleQuant) in a suite file; qalora<bits>
                           (QA-LoRA, bits 2|3|4|8: INT-N base in groups of 32, GPTQ,
                           pooled adapters r 8), qalora<bits>-r<r>, qalora<bits>-rtn
                           (round-to-nearest base); groupSize in a suite file
                           A row may add @block or @every:<k> (activation checkpointing),
                           e.g. --methods lora8,lora8@block
  --checkpointing MODE     activation checkpointing of every run: off (default), block
                           (each block recomputed in backward, only its input kept) or
                           every:<k> (blocks 0, k, 2k, ...); recorded in each run's settings
  --packing pack|pad       prompt/completion training rows: pack (default; several examples
                           per row, attention kept inside each, no padding) or pad (one
                           example per row); evaluation always pads, cut per batch
  --offload                keep the checkpointed block inputs in host memory: a GPU notion;
                           on the CPU backend it is the identity, and the record says so
  --tune-lr                choose each method's learning rate per task before its run:
                           short seeded runs at 1/3, 1 and 3 times its rate, scored on
                           validation data (never the test split) by the task's metric
                           (macro F1 with labels, else loss); the full run takes the best.
                           The grid, the scores and the choice are recorded and reported;
                           a suite file sets tuneLr { factors, steps, maxValidation,
                           evalPoints } and per-method lrGrid
  --tasks LIST             override the suite's tasks: spam, adapt, jsonl
  --model HF_DIR           a Hugging Face LlamaForCausalLM directory as the base
                           instead of the built-in pretrained one; the tasks use its
                           tokenizer.json when it has one (else the byte tokenizer)
  --dataset FILE.jsonl     your data as the 'jsonl' task: {"text"}, {"prompt","completion"} or
                           {"messages": [{"role","content"}, ...]} rows (chat: rendered with the
                           --model's chat_template, else a plain default; loss on assistant turns)
  --dataset-format F       auto (default: the first row decides), text, sft (prompt/completion)
                           or chat: every row must be of that kind
  --peers LIST|none        peers that redo some runs from the same weights and batches:
                           tfjs (TensorFlow.js, slow: a few steps), pytorch (needs a
                           python3 with torch; TUNEBENCH_PYTHON picks one). Default:
                           the suite's (ci and cpu: both, on the first task)
  --device auto|cpu|cuda   where runs train (default auto: cuda when this build has the
                           CUDA backend and a device is present, else cpu). On cuda
                           each model is prepared on the host and moved; memory is read
                           on the device (tracked bytes requested, the pool's reserved
                           bytes, cudaMemGetInfo); a run whose planned peak exceeds the
                           free device memory is recorded as not fitting, not run; the
                           PyTorch peer runs on the same device
  --decode-shape NAME|none the decode rows beside llama.cpp: each deployable's format (merged
                           bf16 -> GGUF F16 and Q8_0, INT4 g32 -> Q4_1, INT8 g32 -> Q8_0) rebuilt
                           at this preset with random weights; ours and llama.cpp (node-llama-cpp's
                           prebuilt CPU build) generate 128 greedy tokens from the same 32 prompt
                           ids with the same threads: prefill and decode tokens/s, their ratio,
                           greedy agreement. Default: the suite's (cpu: smollm-135m, ci: small,
                           gpu: none); none: no decode rows
  --decode-activations i16|f32|i8
                           what our decode steps' quantized projections multiply, for the
                           deployables' decode tokens/s and the decode rows: i8 (x rounded
                           to int8 per group, as llama.cpp's 8-bit activations), i16 (to
                           int16 per group: finer, slower) or f32 (x as it is). Default:
                           the fastest this build has (i8 with AVX-512 VNNI, else i16 with
                           VBMI, else f32); each row records what ran
  --out DIR                where results go (default reports/<suite name>)
  --resume                 keep runs already in DIR/results.jsonl and do the rest
  --shard i/n|auto         run shard i of n of the suite's jobs (balanced by estimated cost; a
                           peer stays with its run); results go to DIR/results.shard-i-of-n.jsonl
                           and a manifest, merged with 'merge'. auto: from a Slurm job array
                           (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) or a Kubernetes Indexed
                           Job (JOB_COMPLETION_INDEX with TUNEBENCH_SHARDS or JOB_COMPLETIONS)
  --parallel N             N worker processes share this machine's cores (TUNEBENCH_THREADS each
                           = cores / N), pulling jobs from one queue; their speed figures are
                           not comparable (the report marks them). Default: one job at a time
  --devices LIST|all       one worker per GPU (cuda:0,cuda:1,... or all), each pulling jobs
                           from one queue; a job goes to a GPU whose free memory holds its
                           planned peak; one process writes the records
  --cache DIR              where pretrained bases are kept (default $TUNEBENCH_CACHE or
                           .tunebench-cache); shards may share one: the first to finish keeps it
  --seeds N                repeat each run with N seeds (the suite's seed, +1, ...): adapter
                           initialisation and data order change, the data split does not;
                           tables show the mean, the between-seed spread and the bootstrap
                           interval (a suite file sets shared.seeds: [0, 1, 2])
  --check BASELINE         compare with a baseline; exit 1 naming each regression: a run
                           whose task metric (accuracy, perplexity) did not leave its
                           untrained interval, a metric worse than the baseline's by the
                           paired bootstrap interval of the difference, memory beyond 10%,
                           speed beyond 40% (a run timed while the machine was busy is
                           reported as not comparable instead)
  --update-baseline        write the baseline given by --check from this run
  -h, --help               this text

Outputs in DIR: results.jsonl (appended as each run finishes), results.csv,
summary.md, report.html.

Ctrl-C (or SIGTERM, as schedulers send) stops after the current training step:
the run it interrupts is not recorded, the reports of the finished runs are
written, and the command to continue (--resume) is printed; exit code 130. A
second Ctrl-C quits at once.

Examples:
  pnpm bench                                   the default suite
  pnpm bench -- --suite ci --check reports/baselines/ci.json
  pnpm bench -- --suite cpu --methods full,lora8 --tasks spam
  pnpm bench -- --dataset my.jsonl --tasks jsonl --methods lora8
  pnpm bench -- --suite cpu --peers none       without the TensorFlow.js and PyTorch peers`;


const rawArgs = process.argv.slice(2);
const args = rawArgs[0] === '--' ? rawArgs.slice(1) : rawArgs;
if (args[0] === 'gguf') ggufCommand(args.slice(1));
if (args[0] === 'plan') planCommand(args.slice(1));
if (args[0] === 'jobs') jobsCommand(args.slice(1));
if (args[0] === 'merge') await mergeCommand(args.slice(1));
// a worker process of --parallel / --devices (started by the coordinator)
if (args[0] === 'worker') { await runWorker(); process.exit(0); }

const opt = parseCli({
  ...SUITE_OPTIONS, out: { type: 'string' }, resume: { type: 'boolean', default: false },
  check: { type: 'string' }, 'update-baseline': { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
  shard: { type: 'string' }, cache: { type: 'string' }, parallel: { type: 'string' }, devices: { type: 'string' },
}, HELP, args);

function fail(msg: string): never {
  console.error(`tunebench: ${msg}\nRun with --help for the options.`);
  process.exit(2);
}

const { suite, device } = suiteFromArgs(opt, fail);
if (opt['update-baseline'] && !opt.check) fail('--update-baseline needs --check BASELINE (the file to write)');
let shard: Shard | undefined;
if (opt.shard !== undefined) {
  try { shard = parseShard(opt.shard); } catch (e) { fail((e as Error).message); }
  if (opt.check) fail('--check judges a whole suite: merge the shards first (tunebench merge), then check the merged results');
}
const cacheDir = opt.cache !== undefined ? join(resolve(opt.cache), 'base') : undefined;
// several workers on this machine: one per GPU (--devices), or the cores shared out (--parallel)
let workers: WorkerSpec[] | undefined;
if (opt.devices !== undefined || opt.parallel !== undefined) {
  if (opt.devices !== undefined && opt.parallel !== undefined) fail('give --devices (one worker per GPU) or --parallel (workers sharing the CPU), not both');
  if (shard) fail('--shard with several workers is not supported: run one process per shard, or drop --shard');
  if (opt.check) fail('--check times runs: it runs one job at a time; drop --parallel/--devices');
  const cores = cpus().length;
  if (opt.devices !== undefined) {
    if (device !== 'cuda') fail(`--devices needs the CUDA backend (the suite runs on ${device}); on the CPU use --parallel N`);
    // the fake device (a plumbing test) stands in for TUNEBENCH_FAKE_CUDA_DEVICES GPUs
    const count = process.env.TUNEBENCH_FAKE_CUDA === '1' ? Number(process.env.TUNEBENCH_FAKE_CUDA_DEVICES ?? 1) : native.cudaDevices();
    try { workers = cudaWorkers(parseDevices(opt.devices, count), cores); } catch (e) { fail((e as Error).message); }
  } else {
    const n = Number(opt.parallel);
    if (!Number.isInteger(n) || n < 1 || n > Math.max(1, cores)) fail(`--parallel must be a whole number from 1 to ${Math.max(1, cores)} (this machine's cores), got '${opt.parallel}'`);
    if (device !== 'cpu') fail('--parallel shares the CPU between workers; on GPUs use --devices');
    if (n > 1) workers = cpuWorkers(n, cores);
  }
}

const here = dirname(fileURLToPath(import.meta.url));
const outDir = resolve(opt.out ?? join(here, '..', '..', '..', 'reports', suite.name));

/** A word of a shell command, quoted where the shell would split or expand it. */
function shellWord(w: string): string {
  return /^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** This command again with --resume (and --out, so that it finds the same results). */
function resumeCommand(): string {
  const rest = args.filter((a) => a !== '--resume');
  const hasOut = rest.some((a) => a === '--out' || a.startsWith('--out='));
  return [process.execPath, ...process.execArgv, process.argv[1], ...rest, ...(hasOut ? [] : ['--out', outDir]), '--resume'].map(shellWord).join(' ');
}

/** After Ctrl-C: the reports of the finished runs, what was kept and dropped, how to go on; exit 130. */
async function stopInterrupted(e: SuiteInterrupted): Promise<never> {
  const lines = ['tunebench: interrupted (Ctrl-C).'];
  if (e.dropped) lines.push(`  ${e.dropped.id}: stopped after ${e.dropped.stepsDone} of ${e.dropped.steps} step(s); not recorded (--resume runs it again)`);
  lines.push(`  kept: ${e.records.length} finished run(s) in ${e.resultsPath}${e.records.length ? ':' : ''}`);
  for (const r of e.records) lines.push(`    ${r.id} (${r.status})`);
  if (!shard) {
    try {
      const paths = await writeReports(outDir, e.records, { title: `tunebench — suite ${suite.name} (interrupted)`, kernels: readKernels(outDir) });
      lines.push(`  reports of the finished runs: ${paths.summary}, ${paths.csv}, ${paths.html}`);
    } catch (err) {
      lines.push(`  writing the reports failed: ${(err as Error).message}`);
    }
  }
  lines.push(`continue with (from ${process.cwd()}):`, `  ${resumeCommand()}`);
  console.error(lines.join('\n'));
  process.exit(130);
}

// Ctrl-C: the training loop yields between steps (runner.ts), so this runs
// within one step and the runner stops there. The listener goes with its
// first call, which gives SIGINT back its default action: a second Ctrl-C
// ends the process at once, even inside a step.
const interrupt = new AbortController();
const onSigint = () => {
  interrupt.abort();
  console.error('\ntunebench: Ctrl-C: stopping after the current training step; finished runs are kept (Ctrl-C again quits at once)');
};
process.once('SIGINT', onSigint);
// schedulers (Slurm at a time limit, Kubernetes on eviction) send SIGTERM: the same orderly stop
process.once('SIGTERM', onSigint);

const t0 = performance.now();
let records: Awaited<ReturnType<typeof runSuite>>;
try {
  if (device !== 'cpu') console.error(`tunebench: training on ${deviceName(device)}`);
  records = workers
    ? await runParallel(suite, { outDir, resume: opt.resume, signal: interrupt.signal, workers, ...(cacheDir ? { cacheDir } : {}), entry: { script: process.argv[1], args: ['worker'] } })
    : await runSuite(suite, { outDir, resume: opt.resume, signal: interrupt.signal, device, ...(shard ? { shard } : {}), ...(cacheDir ? { cacheDir } : {}) });
} catch (e) {
  if (e instanceof SuiteInterrupted) await stopInterrupted(e);
  // what stops the whole suite (data that cannot be prepared, a base that cannot be
  // built): one clear line and a non-zero exit, not an unhandled rejection's stack
  console.error(`tunebench: the suite stopped: ${(e as Error).message}`);
  process.exit(1);
}
// the suite is complete: from here on Ctrl-C quits at once (results.jsonl has every run)
process.removeListener('SIGINT', onSigint);
process.removeListener('SIGTERM', onSigint);
if (shard) {
  console.error(`shard ${shardLabel(shard)} of suite ${suite.name}: ${records.length} record(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s, in ${outDir}; when every shard is done: pnpm bench -- merge OUT ${outDir} [other shards' folders]`);
  process.exit(records.some((r) => r.status === 'error') ? 1 : 0);
}
try {
  const paths = await writeReports(outDir, records, { title: `tunebench — suite ${suite.name}`, kernels: readKernels(outDir) });
  // the summary's tables on stdout (progress went to stderr), then where the rest is
  process.stdout.write(`\n${readFileSync(paths.summary, 'utf8')}\nreport: ${paths.html}\n`);
} catch (e) {
  console.error(`tunebench: writing the reports failed: ${(e as Error).message}`);
  process.exitCode = 1;
}
console.error(`suite ${suite.name}: ${records.length} run(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s; results in ${outDir}`);
// a run that did not fit or diverged is a result; one that failed is not
const failed = records.filter((r) => r.status === 'error');
if (failed.length) {
  console.error(`tunebench: ${failed.length} run(s) ended in an error (see their 'error' in results.jsonl): ${failed.map((r) => r.id).join(', ')}`);
  process.exitCode = 1;
}

/** The runs with these ids done again into a scratch directory, quietly: timing attempts. */
async function timeAgain(ids: Set<string>): Promise<typeof records> {
  const tmp = mkdtempSync(join(tmpdir(), 'tunebench-retime-'));
  try {
    // at the rates the runs had (a learning-rate search is not redone)
    const lrs = new Map(records.map((r) => [r.id, Number(r.settings.lr)]));
    return await runSuite(suite, { outDir: tmp, only: ids, log: () => {}, progress: false, lrs, device });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (opt.check) {
  if (opt['update-baseline']) {
    // speed in the baseline: the median of three timings of each run
    const ids = new Set(records.filter((r) => r.status === 'ok').map((r) => r.id));
    const attempts: typeof records[] = [];
    for (let a = 2; a <= 3 && ids.size; a++) {
      console.error(`baseline: timing the runs again for a typical speed (attempt ${a} of 3)`);
      attempts.push(await timeAgain(ids));
    }
    writeBaseline(opt.check, records, attempts);
    console.error(`baseline written: ${opt.check}`);
    // the check will let these pass as known limitations: say so now, loudly
    for (const p of checkLearned(records)) console.error(`baseline: warning: recorded as not learning (later checks will not fail it for that): ${p}`);
  } else {
    const baseline = readBaseline(opt.check);
    // every trained run must have left its starting point's interval, baseline or not
    const learnedNotes: string[] = [];
    const notLearned = checkLearned(records, baseline, learnedNotes);
    for (const n of learnedNotes) console.error(`regression check: ${n}`);
    let report = checkReport(records, baseline);
    let problems = report.failures;
    // A run that is slower than the baseline and fine otherwise is timed
    // again (twice at most) and its fastest attempt counts: a busy moment of
    // the machine passes, a real slowdown stays.
    const attempts: typeof records[] = [];
    for (let a = 2; a <= 3; a++) {
      const again = speedOnly(problems);
      if (again.size === 0) break;
      console.error(`regression check: ${[...again].join(', ')} slower than the baseline; timing ${again.size === 1 ? 'it' : 'them'} again (attempt ${a} of 3)`);
      attempts.push(await timeAgain(again));
      report = checkReport(fastestAttempt(records, ...attempts), baseline);
      problems = report.failures;
    }
    for (const n of report.notes) console.error(`regression check: ${n}`);
    if (notLearned.length) {
      console.error(`regression check: ${notLearned.length} run(s) did not learn their task (the task metric did not leave the untrained model's interval):`);
      for (const p of notLearned) console.error(`  ${p}`);
      process.exitCode = 1;
    }
    if (problems.length) {
      console.error(`regression check against ${opt.check}: ${problems.length} regression(s)`);
      for (const p of problems) console.error(`  ${p}`);
      process.exitCode = 1;
    } else {
      console.error(`regression check against ${opt.check}: no regression${notLearned.length ? ' against the baseline' : ''}`);
    }
  }
}
