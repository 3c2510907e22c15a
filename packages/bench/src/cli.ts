#!/usr/bin/env node
// tunebench: run a suite of fine-tuning runs side by side and write the report.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ByteTokenizer, CATEGORIES, type CheckpointingMode, type Device, deviceName, resolveDevice, type LlamaConfig, type LlamaModel, PRESETS, configFromHf, exportGguf, intOption, loadHfModel, native,
  parseCheckpointing, parseCli, preset,
} from '@tunebench/core';
import { QALORA_QUANT_METHOD, groupwiseOf, loadQaloraMerged } from '@tunebench/qa-lora';
import { type MethodSpec, methodPlugin, planFor } from './methods.js';
import { checkLearned, checkReport, fastestAttempt, readBaseline, speedOnly, writeBaseline } from './check.js';
import { BUILTIN_SUITES, PEERS, type PeerName, type Suite, TASKS, type TaskName, loadSuiteFile, parseMethods, validateSuite } from './suite.js';
import { SuiteInterrupted, readKernels, runSuite } from './runner.js';
import { writeReports } from './report/index.js';

const HELP = `tunebench — full fine-tuning, LoRA and QLoRA side by side: memory, speed, accuracy.

Usage: pnpm bench [-- options]        (or: node packages/bench/dist/cli.js [options])
       pnpm bench -- plan --model PRESET_OR_HF_DIR --method M --batch B --seq T   (see plan --help)
       pnpm bench -- gguf --model DIR --out FILE.gguf [--type f16|q8_0|q4_1]      (see gguf --help)

Options:
  --suite ci|cpu|gpu|FILE  runs to do (default: cpu; gpu needs the CUDA backend).
                           ci: tiny base, about 3 minutes; cpu: small base, minutes;
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
                           instead of the built-in pretrained one
  --dataset FILE.jsonl     your data as the 'jsonl' task ({"text"} or {"prompt","completion"} rows)
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
  --out DIR                where results go (default reports/<suite name>)
  --resume                 keep runs already in DIR/results.jsonl and do the rest
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

Ctrl-C stops after the current training step: the run it interrupts is not
recorded, the reports of the finished runs are written, and the command to
continue (--resume) is printed; exit code 130. A second Ctrl-C quits at once.

Examples:
  pnpm bench                                   the default suite
  pnpm bench -- --suite ci --check reports/baselines/ci.json
  pnpm bench -- --suite cpu --methods full,lora8 --tasks spam
  pnpm bench -- --dataset my.jsonl --tasks jsonl --methods lora8
  pnpm bench -- --suite cpu --peers none       without the TensorFlow.js and PyTorch peers`;

const PLAN_HELP = `tunebench plan — predict peak memory by category for a training step, without running it.

Usage: pnpm bench -- plan --model PRESET_OR_HF_DIR [--method M | --methods LIST] [--batch B] [--seq T] [--accum K]
                          [--checkpointing off|block|every:<k>] [--fit GIB[,GIB...]]

  --model          a preset (${Object.keys(PRESETS).join(', ')}) or a Hugging Face LlamaForCausalLM directory
  --method         full (default), full-8bit, lora<r>, qlora<r>[-8bit] or qalora<bits>[-r<r>], e.g. qlora8 (all-linear targets)
  --methods        several methods side by side, e.g. full,lora16,qlora16
  --batch          rows per micro-batch (default 8)
  --seq            tokens per row (default 256)
  --accum          micro-batches per optimizer step (default 1)
  --checkpointing  activation checkpointing: off (default), block (every block recomputed in
                   backward, only its input kept) or every:<k> (blocks 0, k, 2k, ...); 'all'
                   puts the three modes side by side
  --fit            instead of one batch: the largest batch of --seq tokens whose step fits in
                   each of these many GiB, per method and checkpointing mode

Examples:
  pnpm bench -- plan --model tinyllama-1.1b --method lora16 --batch 4 --seq 1024
  pnpm bench -- plan --model llama-2-7b --methods full,lora16,qlora16 --seq 2048 --checkpointing all --fit 24,48,80`;

/** The largest batch (rows of seq tokens) whose predicted step total fits in `bytes` (0: not even one row). */
function largestBatch(config: LlamaConfig, m: MethodSpec, seq: number, accum: number, mode: CheckpointingMode, bytes: number): number {
  const fits = (b: number) => planFor(config, m, b, seq, accum, mode).total <= bytes;
  if (!fits(1)) return 0;
  let lo = 1, hi = 2;
  while (fits(hi) && hi < 1 << 20) { lo = hi; hi *= 2; }
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (fits(mid)) lo = mid; else hi = mid; }
  return lo;
}

const GGUF_HELP = `tunebench gguf — export a model directory to GGUF for llama.cpp.

Usage: pnpm bench -- gguf --model DIR --out FILE.gguf [--type f16|q8_0|q4_1]

  --model   a Hugging Face LlamaForCausalLM directory (full fine-tuning's output, a merged
            LoRA/QLoRA model) or a merged QA-LoRA INT-N directory (saveQaloraModel)
  --out     the GGUF file to write
  --type    weight type of the 2-D tensors: f16 (default for dense models), q8_0, or q4_1
            (default for a merged QA-LoRA INT4 g32 model, whose groups become Q4_1 blocks
            exactly, up to fp16 rounding of scale and offset)

The vocabulary is the byte tokenizer's (256 byte tokens and BOS/EOS/PAD).`;

/** \`tunebench gguf\`: a model directory to a GGUF file; exits. */
function ggufCommand(argv: string[]): never {
  const p = parseCli({ model: { type: 'string' }, out: { type: 'string' }, type: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false } }, GGUF_HELP, argv);
  const fail = (msg: string): never => { console.error(`tunebench gguf: ${msg}\nRun with --help for the options.`); process.exit(2); };
  if (!p.model) fail('--model is required');
  if (!p.out) fail('--out is required');
  const configPath = join(p.model!, 'config.json');
  if (!existsSync(configPath)) fail(`--model: ${p.model} has no config.json`);
  let quantMethod: unknown;
  try { quantMethod = (JSON.parse(readFileSync(configPath, 'utf8')) as { quantization_config?: { quant_method?: unknown } }).quantization_config?.quant_method; }
  catch (e) { fail(`${configPath}: ${(e as Error).message}`); }
  const intn = quantMethod === QALORA_QUANT_METHOD;
  const type = (p.type ?? (intn ? 'q4_1' : 'f16')) as 'f16' | 'q8_0' | 'q4_1';
  if (!['f16', 'q8_0', 'q4_1'].includes(type)) fail(`--type must be f16, q8_0 or q4_1, got '${p.type}'`);
  let model: LlamaModel | null = null;
  let code = 0;
  try {
    if (quantMethod !== undefined && !intn) throw new Error(`${configPath}: quantization_config.quant_method ${JSON.stringify(quantMethod)} is not one this command reads (a dense model, or '${QALORA_QUANT_METHOD}'); merge it to a dense model first`);
    model = intn ? loadQaloraMerged(p.model!) : loadHfModel(p.model!, { trainable: false, frozenDtype: 'f32' });
    const tok = new ByteTokenizer();
    if (model.config.vocabSize !== tok.vocabSize) throw new Error(`the model's vocabulary has ${model.config.vocabSize} ids; only the byte tokenizer (${tok.vocabSize}) can be exported`);
    if (intn && type !== 'q4_1') throw new Error('a merged QA-LoRA model is exported as q4_1 (its INT4 g32 groups are Q4_1 blocks); other types would requantize it');
    const summary = exportGguf(model, resolve(p.out!), { type, tokenizer: tok, ...(intn ? { groupwise: groupwiseOf(model) } : {}) });
    const exact = summary.tensors.filter((t) => t.groupwise).length;
    console.log(`${summary.path}: ${summary.tensors.length} tensors, ${summary.bytes} bytes, ${type}${exact ? ` (${exact} projections written exactly from their INT4 groups)` : ''}`);
  } catch (e) {
    console.error(`tunebench gguf: ${(e as Error).message}`);
    code = 1;
  } finally {
    model?.dispose();
  }
  process.exit(code);
}

const rawArgs = process.argv.slice(2);
const args = rawArgs[0] === '--' ? rawArgs.slice(1) : rawArgs;
if (args[0] === 'gguf') ggufCommand(args.slice(1));
if (args[0] === 'plan') {
  const p = parseCli({
    model: { type: 'string' }, method: { type: 'string' }, methods: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' },
    accum: { type: 'string' }, checkpointing: { type: 'string' }, fit: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false },
  }, PLAN_HELP, args.slice(1));
  const planFail = (msg: string): never => { console.error(`tunebench plan: ${msg}\nRun with --help for the options.`); process.exit(2); };
  if (!p.model) planFail('--model is required');
  if (p.method && p.methods) planFail('give --method or --methods, not both');
  let config!: LlamaConfig;
  try {
    if (PRESETS[p.model!]) config = preset(p.model!);
    else if (existsSync(join(p.model!, 'config.json'))) config = configFromHf(JSON.parse(readFileSync(join(p.model!, 'config.json'), 'utf8')), join(p.model!, 'config.json'));
    else throw new Error(`--model: '${p.model}' is neither a preset (${Object.keys(PRESETS).join(', ')}) nor a directory with config.json`);
  } catch (e) {
    planFail((e as Error).message);
  }
  let methods!: MethodSpec[];
  let modes!: CheckpointingMode[];
  let budgets: number[] = [];
  try {
    methods = parseMethods(p.methods ?? p.method ?? 'full');
    modes = p.checkpointing === 'all' ? ['off', 'block', 'every:2'] : [parseCheckpointing(p.checkpointing ?? 'off')];
    if (p.fit !== undefined) {
      budgets = p.fit.split(',').map((x) => Number(x.trim()));
      if (budgets.length === 0 || budgets.some((g) => !(Number.isFinite(g) && g > 0 && g <= 1e6))) throw new Error(`--fit must list memory sizes in GiB, e.g. 24,48,80; got '${p.fit}'`);
    }
  } catch (e) {
    planFail((e as Error).message);
  }
  const B = intOption('batch', p.batch, 8), T = intOption('seq', p.seq, 256), K = intOption('accum', p.accum, 1);
  const mib = (x: number) => (x / 2 ** 20).toFixed(1);
  const table = (head: string[], rows: string[][]) => {
    const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    for (const r of [head, ...rows]) console.log(r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  '));
  };
  const columns = methods.flatMap((m) => modes.map((mode) => ({ m, mode, name: modes.length > 1 ? `${m.label} ${mode}` : m.label })));
  if (budgets.length) {
    console.log(`largest batch of ${T} tokens per row whose training step fits (predicted peak), ${p.model}${K > 1 ? `, ${K} micro-batches` : ''}:`);
    table(['memory', ...columns.map((c) => c.name)], budgets.map((g) => [`${g} GiB`, ...columns.map((c) => {
      const b = largestBatch(config, c.m, T, K, c.mode, g * 2 ** 30);
      return b === 0 ? 'does not fit' : `${b} x ${T}`;
    })]));
    process.exit(0);
  }
  const plans = columns.map((c) => planFor(config, c.m, B, T, K, c.mode));
  console.log(`predicted peak memory of one training step: ${p.model}, ${p.methods ?? p.method ?? 'full'}, batch ${B} x seq ${T}${K > 1 ? `, ${K} micro-batches` : ''} (MiB)`);
  table(['category', ...columns.map((c) => c.name)], [...CATEGORIES, 'total' as const].map((k) => [k, ...plans.map((pl) => mib(pl[k]))]));
  process.exit(0);
}

const opt = parseCli({
  suite: { type: 'string' }, methods: { type: 'string' }, tasks: { type: 'string' }, model: { type: 'string' },
  dataset: { type: 'string' }, peers: { type: 'string' }, device: { type: 'string' }, out: { type: 'string' }, resume: { type: 'boolean', default: false },
  seeds: { type: 'string' }, check: { type: 'string' }, 'update-baseline': { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
  checkpointing: { type: 'string' }, offload: { type: 'boolean', default: false }, 'tune-lr': { type: 'boolean', default: false }, packing: { type: 'string' },
}, HELP, args);

function cudaReason(): string {
  try { return resolveDevice('cuda') && 'usable'; } catch (e) { return (e as Error).message.replace(/^device cuda: /, ''); }
}

function fail(msg: string): never {
  console.error(`tunebench: ${msg}\nRun with --help for the options.`);
  process.exit(2);
}

// --- every option is checked before anything runs ---
const deviceChoice = opt.device ?? 'auto';
if (deviceChoice !== 'auto' && deviceChoice !== 'cpu' && deviceChoice !== 'cuda') fail(`--device must be auto, cpu or cuda, got '${deviceChoice}'`);
let device!: Device;
try { device = resolveDevice(deviceChoice); } catch (e) { fail(`--device ${deviceChoice}: ${(e as Error).message.replace(/^device cuda: /, '')}`); }
let suite: Suite;
const suiteName = opt.suite ?? 'cpu';
try {
  if (BUILTIN_SUITES[suiteName]) suite = structuredClone(BUILTIN_SUITES[suiteName]);
  else if (existsSync(suiteName)) suite = loadSuiteFile(suiteName);
  else fail(`--suite: '${suiteName}' is neither a built-in suite (${Object.keys(BUILTIN_SUITES).join(', ')}) nor a file`);
  if (suite.name === 'gpu' && device !== 'cuda') {
    fail(`--suite gpu needs the CUDA backend (${deviceChoice === 'cpu' ? '--device cpu was given' : native.cudaCompiled ? cudaReason() : 'this build has no CUDA backend'}); use --suite cpu on this machine`);
  }
  // a method the suite has keeps the suite's settings (its learning rate); others take their defaults
  if (opt.methods) { const own = suite.methods; suite.methods = parseMethods(opt.methods).map((m) => own.find((o) => o.label === m.label) ?? m); }
  if (opt.checkpointing !== undefined) suite.shared.checkpointing = parseCheckpointing(opt.checkpointing);
  if (opt.offload) suite.shared.offload = true;
  if (opt['tune-lr']) suite.tuneLr = suite.tuneLr ?? {};
  if (opt.seeds !== undefined) {
    const n = Number(opt.seeds);
    if (!Number.isInteger(n) || n < 1 || n > 100) fail(`--seeds must be a whole number from 1 to 100, got '${opt.seeds}'`);
    suite.shared.seeds = Array.from({ length: n }, (_, i) => suite.shared.seed + i);
  }
  if (opt.packing !== undefined) {
    if (opt.packing !== 'pack' && opt.packing !== 'pad') fail(`--packing must be pack or pad, got '${opt.packing}'`);
    suite.shared.packing = opt.packing;
  }
  if (opt.tasks) {
    const tasks = opt.tasks.split(',').map((t) => t.trim());
    for (const t of tasks) if (!TASKS.includes(t as TaskName)) fail(`--tasks: unknown task '${t}' (known: ${TASKS.join(', ')})`);
    suite.tasks = tasks as TaskName[];
  }
  if (opt.dataset) {
    if (!existsSync(opt.dataset)) fail(`--dataset: ${opt.dataset} does not exist`);
    suite.dataset = resolve(opt.dataset);
    if (!opt.tasks) suite.tasks = ['jsonl'];
  }
  if (opt.model) {
    if (!existsSync(join(opt.model, 'config.json'))) fail(`--model: ${opt.model} has no config.json (a Hugging Face LlamaForCausalLM directory is expected)`);
    suite.base = { hfDir: resolve(opt.model) };
    // the built-in suites' peers are sized for their small bases; with a real
    // model TensorFlow.js's pure-JS steps would take hours: ask for them by name
    if (opt.peers === undefined && BUILTIN_SUITES[suiteName] && suite.peers) {
      console.error('tunebench: --model: the suite\'s peers are left out (TensorFlow.js would be very slow on a real model); --peers tfjs,pytorch runs them');
      suite.peers = {};
    }
  }
  if (opt.peers !== undefined) {
    const names = opt.peers === 'none' ? [] : opt.peers.split(',').map((x) => x.trim()).filter(Boolean);
    for (const n of names) if (!PEERS.includes(n as PeerName)) fail(`--peers: unknown peer '${n}' (known: ${PEERS.join(', ')}, or none)`);
    const kept: NonNullable<Suite['peers']> = {};
    for (const n of names as PeerName[]) kept[n] = suite.peers?.[n] ?? (n === 'tfjs' ? { steps: 3 } : {});
    suite.peers = kept;
  }
  // --methods / --tasks may have removed what a peer was to redo
  for (const [n, sel] of Object.entries(suite.peers ?? {}) as [PeerName, NonNullable<Suite['peers']>[PeerName]][]) {
    if (!sel) continue;
    if (sel.methods) sel.methods = sel.methods.filter((l) => suite.methods.some((m) => m.label === l));
    if (sel.tasks) sel.tasks = sel.tasks.filter((t) => suite.tasks.includes(t));
    if (sel.tasks?.length === 0) delete sel.tasks;
    if (sel.methods?.length === 0) delete suite.peers![n];
    else if (sel.steps !== undefined) sel.steps = Math.min(sel.steps, suite.shared.steps);
  }
  suite = validateSuite(suite, `suite ${suite.name}`);
} catch (e) {
  fail((e as Error).message);
}
if (opt['update-baseline'] && !opt.check) fail('--update-baseline needs --check BASELINE (the file to write)');

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
  try {
    const paths = await writeReports(outDir, e.records, { title: `tunebench — suite ${suite.name} (interrupted)`, kernels: readKernels(outDir) });
    lines.push(`  reports of the finished runs: ${paths.summary}, ${paths.csv}, ${paths.html}`);
  } catch (err) {
    lines.push(`  writing the reports failed: ${(err as Error).message}`);
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

const t0 = performance.now();
let records: Awaited<ReturnType<typeof runSuite>>;
try {
  if (device !== 'cpu') console.error(`tunebench: training on ${deviceName(device)}`);
  records = await runSuite(suite, { outDir, resume: opt.resume, signal: interrupt.signal, device });
} catch (e) {
  if (e instanceof SuiteInterrupted) await stopInterrupted(e);
  // what stops the whole suite (data that cannot be prepared, a base that cannot be
  // built): one clear line and a non-zero exit, not an unhandled rejection's stack
  console.error(`tunebench: the suite stopped: ${(e as Error).message}`);
  process.exit(1);
}
// the suite is complete: from here on Ctrl-C quits at once (results.jsonl has every run)
process.removeListener('SIGINT', onSigint);
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
