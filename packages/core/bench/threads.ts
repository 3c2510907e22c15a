// Threads on shared cores: decode tokens/s and a full fine-tuning step with 1
// and with 2 kernel threads, each while another process keeps one core busy
// (a child spinning in a loop), under libgomp's default wait (idle threads
// spin ~3 ms: GOMP_SPINCOUNT=300000) and under the loader's (src/native.ts:
// spin about a microsecond, then sleep), or any spin counts given. A benchmark that
// prints; nothing is asserted.
//
//   pnpm bench:threads
//   pnpm --filter @tunebench/core bench:threads -- --help
//
// Each measurement runs in a fresh process (libgomp reads its wait settings
// once per process); configurations are interleaved over --rounds rounds and
// the medians printed. Figures are only as quiet as the machine: run it with
// nothing else working, and record the load beside any figure you keep.
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import {
  ArrayDataSource, DEFAULT_GOMP_SPINCOUNT, LlamaModel, Trainer, generate, intOption, native, openmpWait, parseCli, preset,
} from '../src/index.js';

const HELP = `Kernel threads on shared cores: decode and a training step, 1 vs 2 threads, beside a busy process.

Usage: pnpm bench:threads [-- options]

Options:
  --preset NAME    model preset (default small)
  --tokens N       greedy tokens decoded per timing (default 64)
  --batch N        training batch (default 4)
  --seq N          training sequence length (default 64)
  --steps N        timed training steps per process (default 3)
  --rounds N       rounds over every configuration; medians printed (default 3)
  --threads LIST   kernel thread counts (default 1,2)
  --spincounts L   GOMP_SPINCOUNT values to compare (default 300000,${DEFAULT_GOMP_SPINCOUNT}); 0 = sleep at once
  --no-busy        no busy process (for the quiet-machine reference)
  -h, --help       this text

Configurations: GOMP_SPINCOUNT=300000 is what libgomp uses when neither
OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set; ${DEFAULT_GOMP_SPINCOUNT} is what the loader sets
(src/native.ts). With the busy process, 2 threads should be no slower than 1.`;

interface Sample { decodeTokS: number; stepMs: number; threads: number; spin: string | undefined }

async function childMain(): Promise<void> {
  const cfgName = process.env.TB_THREADS_PRESET ?? 'small';
  const tokens = Number(process.env.TB_THREADS_TOKENS ?? 64), B = Number(process.env.TB_THREADS_BATCH ?? 4);
  const T = Number(process.env.TB_THREADS_SEQ ?? 64), steps = Number(process.env.TB_THREADS_STEPS ?? 3);
  const cfg = preset(cfgName);
  // decode: a frozen model, a 16-token prompt, greedy; median of 3 after a warm-up
  const frozen = LlamaModel.init(cfg, { seed: 1, std: 0.05, trainable: false });
  const prompt = [256, ...Array.from({ length: 15 }, (_, i) => 97 + (i % 26))];
  const rates: number[] = [];
  try {
    generate(frozen, prompt, { maxNewTokens: 8 });
    for (let i = 0; i < 3; i++) rates.push(generate(frozen, prompt, { maxNewTokens: tokens }).decodeTokensPerSecond);
  } finally {
    frozen.dispose();
  }
  // training: forward, backward and AdamW on every parameter; median step after a warm-up step
  const model = LlamaModel.init(cfg, { seed: 2, std: 0.05 });
  const rows = Array.from({ length: B }, (_, r) => {
    const ids = Int32Array.from({ length: T }, (_, t) => (r * 31 + t * 7) % 256);
    return { ids, targets: Int32Array.from({ length: T }, (_, t) => (r * 31 + (t + 1) * 7) % 256) };
  });
  const trainer = new Trainer(model, new ArrayDataSource(rows, B, 0, false), { schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: steps + 1 } });
  const times: number[] = [];
  try {
    trainer.trainStep();
    for (let i = 0; i < steps; i++) { const t0 = performance.now(); trainer.trainStep(); times.push(performance.now() - t0); }
  } finally {
    trainer.dispose();
    model.dispose();
  }
  const s: Sample = { decodeTokS: median(rates), stepMs: median(times), threads: native.getThreads(), spin: openmpWait.GOMP_SPINCOUNT };
  console.log(JSON.stringify(s));
}

function median(x: number[]): number {
  const s = [...x].sort((a, b) => a - b), n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function run(env: NodeJS.ProcessEnv): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) { reject(new Error(`measuring process exited ${code}: ${err.trim()}`)); return; }
      resolve(JSON.parse(out.trim().split('\n').pop()!) as Sample);
    });
  });
}

const busy = new Set<ChildProcess>();
process.on('exit', () => { for (const p of busy) p.kill('SIGKILL'); });

/** A process that keeps one core busy until killed (killed at the latest when this one exits). */
function busyProcess(): ChildProcess {
  const p = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' });
  busy.add(p);
  p.on('exit', () => busy.delete(p));
  return p;
}

async function parentMain(): Promise<void> {
  const opt = parseCli({
    preset: { type: 'string', default: 'small' },
    tokens: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' }, steps: { type: 'string' }, rounds: { type: 'string' },
    threads: { type: 'string', default: '1,2' },
    spincounts: { type: 'string', default: `300000,${DEFAULT_GOMP_SPINCOUNT}` },
    'no-busy': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  } as const, HELP);
  preset(opt.preset);  // an unknown preset fails here, naming the known ones
  const rounds = intOption('rounds', opt.rounds, 3);
  const threads = opt.threads.split(',').map((x) => intOption('threads', x.trim(), 1));
  const base: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'TUNEBENCH_THREADS']) delete base[k];
  Object.assign(base, {
    TB_THREADS_PRESET: opt.preset, TB_THREADS_TOKENS: String(intOption('tokens', opt.tokens, 64)), TB_THREADS_BATCH: String(intOption('batch', opt.batch, 4)),
    TB_THREADS_SEQ: String(intOption('seq', opt.seq, 64)), TB_THREADS_STEPS: String(intOption('steps', opt.steps, 3)),
  });
  const policies = opt.spincounts.split(',').map((x) => {
    const n = intOption('spincounts', x.trim(), 0, 0);
    const note = n === 300000 ? ' (libgomp default)' : n === DEFAULT_GOMP_SPINCOUNT ? ' (tunebench default)' : '';
    return { label: `GOMP_SPINCOUNT=${n}${note}`, env: { GOMP_SPINCOUNT: String(n) } };
  });
  const withBusy = !opt['no-busy'];
  console.log(`${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), load average ${loadavg().map((x) => x.toFixed(2)).join(' ')} before starting; ` +
    `preset ${opt.preset}; ${withBusy ? 'one busy process beside every measurement' : 'no busy process'}; ${rounds} rounds`);
  const samples = new Map<string, Sample[]>();
  for (let r = 0; r < rounds; r++) {
    for (const p of policies) for (const n of threads) {
      const spinner = withBusy ? busyProcess() : null;
      try {
        const s = await run({ ...base, ...p.env, TUNEBENCH_THREADS: String(n) });
        const key = `${p.label}\t${n}`;
        samples.set(key, [...(samples.get(key) ?? []), s]);
        console.log(`  round ${r + 1}: ${p.label}, ${n} thread(s): decode ${s.decodeTokS.toFixed(1)} tok/s, train step ${s.stepMs.toFixed(1)} ms`);
      } finally {
        spinner?.kill('SIGKILL');
      }
    }
  }
  console.log(`\nMedians over ${rounds} rounds (${withBusy ? 'a busy process on one core' : 'no busy process'}; load average now ${loadavg().map((x) => x.toFixed(2)).join(' ')}):`);
  console.log('| idle wait | threads | decode tok/s | train step ms | decode vs 1 thread | step vs 1 thread |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const p of policies) {
    const one = samples.get(`${p.label}\t${threads[0]}`);
    for (const n of threads) {
      const s = samples.get(`${p.label}\t${n}`)!;
      const d = median(s.map((x) => x.decodeTokS)), ms = median(s.map((x) => x.stepMs));
      const d1 = one ? median(one.map((x) => x.decodeTokS)) : NaN, ms1 = one ? median(one.map((x) => x.stepMs)) : NaN;
      console.log(`| ${p.label} | ${n} | ${d.toFixed(1)} | ${ms.toFixed(1)} | ${(d / d1).toFixed(2)}x | ${(ms1 / ms).toFixed(2)}x |`);
    }
  }
  console.log('\n"vs 1 thread": above 1.00x is faster than the same policy with one thread.');
}

if (process.argv.includes('--child')) await childMain();
else await parentMain();
