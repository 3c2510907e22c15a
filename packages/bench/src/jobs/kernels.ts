// The 'kernels' job: microbenchmarks of the CPU kernels at the suite's shapes
// (core's measureKernels), each method's own kernel rows included.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type KernelReport, measureKernels, writeJsonAtomic } from '@tunebench/core';
import { methodPlugin } from '../methods.js';
import type { JobContext } from './common.js';
import { baseConfigOf } from './plan.js';

/** The kernel microbenchmarks of a report directory, if measured. */
export const KERNELS_FILE = 'kernels.json';
export function readKernels(outDir: string): KernelReport | undefined {
  const path = join(outDir, KERNELS_FILE);
  if (!existsSync(path)) return undefined;
  try {
    const k = JSON.parse(readFileSync(path, 'utf8')) as KernelReport;
    if (!Array.isArray(k.rows)) throw new Error('no rows');
    return k;
  } catch (e) {
    throw new Error(`${path}: not a kernel benchmark file (${(e as Error).message}); delete it to measure again`);
  }
}


export async function kernelsJob(ctx: JobContext, resume: boolean): Promise<void> {
  const { suite, log } = ctx;
  const sh = suite.shared;
  if (resume && existsSync(ctx.kernelsPath)) { log(`kernels: already in ${ctx.kernelsPath}, skipped (--resume)`); return; }
  if (ctx.device !== 'cpu') { log(`kernels: the suite's kernel rows time the CPU kernels; on ${ctx.device} they are left out (the kernel benchmark runs on its own)`); return; }
  const ranks = suite.methods.map((m) => methodPlugin(m.name).adapterRank?.(m)).filter((r): r is number => r !== undefined);
  const cfg = baseConfigOf(suite);
  log(`kernels: microbenchmarks at the suite's shapes (hidden ${cfg.hiddenSize}, intermediate ${cfg.intermediateSize}, ${sh.batchSize} x ${sh.seqLen} tokens)`);
  // each method's own kernel rows, once per method name (its first spec)
  const firstOfEach = [...new Map(suite.methods.map((m) => [m.name, m])).values()];
  const N = sh.batchSize * sh.seqLen;
  const extra = firstOfEach.flatMap((m) => methodPlugin(m.name).kernelCases?.(m, { N, inF: cfg.hiddenSize, outF: cfg.intermediateSize, seed: sh.seed }) ?? []);
  const k = await measureKernels({ cfg, batchSize: sh.batchSize, seqLen: sh.seqLen, loraRank: ranks[0] ?? 8, extra, log: ctx.progress ? log : undefined });
  writeJsonAtomic(ctx.kernelsPath, k);
}
