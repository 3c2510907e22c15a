// Kernel benchmark CLI: the presets' shapes (GEMM side by side with OpenBLAS
// sgemm when it is installed, attention, the fused LM head) through the one
// harness in src/bench/kernels.ts, which a suite run uses at its own shapes.
// Prints a table; writes reports/kernels/kernels.json (KernelReport).
//
//   pnpm bench:kernels                       all sections
//   pnpm bench:kernels -- --quick            fewer shapes, shorter timing
//   pnpm bench:kernels -- --help
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type KernelCase, type SweepSection, NO_OPENBLAS, cublasLtStatus, cudaAvailable, cudaGemmCases, deviceName, formatKernelTable, intOption, loadOpenblas,
  native, parseCli, peakCases, runKernelCases, sweepKernelCases,
} from '../src/index.js';

const HELP = `Kernel benchmark for the tunebench native core (CPU, and CUDA where a GPU is present).

Usage: pnpm bench:kernels [-- options]

Options:
  --only LIST        comma-separated sections: gemm, attention, xent (default: all)
  --quick            smaller shapes, shorter timing (a smoke run)
  --time MS          tinybench time budget per kernel in ms (default 500; quick 150)
  --iterations N     tinybench minimum iterations per kernel (default 3)
  --tokens N         tokens per GEMM (the M of activations; default 4096)
  --threads N        kernel threads (default: all cores)
  --no-openblas      skip the OpenBLAS comparison
  --openblas-core C  set OPENBLAS_CORETYPE=C before OpenBLAS loads (e.g. SkylakeX
                     for its AVX-512 kernel; default: the environment's choice)
  --no-cuda          skip the CUDA GEMM rows (run by default with the gemm section
                     when this build has CUDA and a device is present)
  --device D         all (default), cpu (= --no-cuda) or cuda: only the CUDA rows
                     (beside the CPU peaks the table is judged against)
  --out FILE         JSON results (default reports/kernels/kernels.json)
  -h, --help         this text

Every row is judged against peaks measured in the same run (the best dense
GEMM, a streaming y += a*x): the same harness and kernels.json format as a
suite's kernel rows. OpenBLAS is loaded at run time when installed (Debian:
apt-get install libopenblas-dev). On a GPU, the CUDA rows put the own bf16
tensor-core GEMM beside cuBLASLt (loaded at run time when installed) and the
NF4 / INT-N fused GEMMs beside a dense bf16 weight; they are judged against
CUDA peaks of the same run (best CUDA GEMM, a device-to-device copy).

Example: pnpm bench:kernels -- --only gemm --time 1000`;

const opt = parseCli({
  only: { type: 'string' },
  quick: { type: 'boolean', default: false },
  time: { type: 'string' },
  iterations: { type: 'string', default: '3' },
  tokens: { type: 'string', default: '4096' },
  threads: { type: 'string' },
  'no-openblas': { type: 'boolean', default: false },
  'openblas-core': { type: 'string' },
  'no-cuda': { type: 'boolean', default: false },
  device: { type: 'string', default: 'all' },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const, HELP);

const SECTIONS: SweepSection[] = ['gemm', 'attention', 'xent'];
const sections = (opt.only ?? SECTIONS.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
for (const s of sections) {
  if (!SECTIONS.includes(s as SweepSection)) { console.error(`--only: unknown section '${s}' (${SECTIONS.join(', ')})`); process.exit(2); }
}
const timeMs = intOption('time', opt.time, opt.quick ? 150 : 500);
const iterations = intOption('iterations', opt.iterations, 3);
const tokens = intOption('tokens', opt.tokens, 4096);
if (opt.threads) native.setThreads(intOption('threads', opt.threads, 1));
const blas = opt['no-openblas'] ? { ...NO_OPENBLAS, error: 'skipped (--no-openblas)' } : loadOpenblas({ core: opt['openblas-core'] });

console.log(`tunebench kernel benchmark — ${new Date().toISOString()}`);
console.log(`openblas: ${blas.available ? `${blas.config} (core ${blas.core})` : blas.error}; tinybench: ${timeMs} ms, at least ${iterations} iterations per kernel`);
if (!['all', 'cpu', 'cuda'].includes(opt.device)) { console.error(`--device: use all, cpu or cuda, not '${opt.device}'`); process.exit(2); }
const cuda = sections.includes('gemm') && !opt['no-cuda'] && opt.device !== 'cpu' && cudaAvailable();
if (opt.device === 'cuda' && !cuda) {
  console.error(`--device cuda: ${cudaAvailable() ? 'the CUDA rows belong to the gemm section (--only gemm)' : 'no usable CUDA device in this build or machine'}`);
  process.exit(2);
}
if (cuda) {
  const lt = cublasLtStatus();
  console.log(`cuda: ${deviceName('cuda')}; cuBLASLt: ${lt === '' ? 'loaded' : lt}`);
}
function* cases(): Generator<KernelCase> {
  yield* peakCases(blas);
  if (opt.device !== 'cuda') yield* sweepKernelCases({ sections: sections as SweepSection[], quick: opt.quick, tokens }, blas);
  if (cuda) yield* cudaGemmCases({ quick: opt.quick, tokens });
}
const report = await runKernelCases(cases(), { timeMs, iterations, tokens, openblas: blas, log: (l) => console.log(l) });
console.log(`\n${report.cpu} x ${report.cores}; kernel threads ${report.settings.threads}; GEMM micro-kernel ${report.settings.gemm}\n`);
console.log(formatKernelTable(report));

const here = dirname(fileURLToPath(import.meta.url));
const outPath = resolve(opt.out ?? join(here, '..', '..', '..', 'reports', 'kernels', 'kernels.json'));
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify(report, null, 2) + '\n');
console.log(`\nwrote ${outPath}`);
