// Regression check against a committed baseline: accuracy-like and loss-like
// metrics compared absolutely, memory relatively, speed relatively after
// normalising by the reference kernel timed in the same run (so a slower or
// busier machine does not read as a regression).
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { writeJsonAtomic } from '@tunebench/core';
import type { RunRecord } from './record.js';

export interface Tolerances {
  /** absolute, for accuracy / macroF1 (higher is better) */
  metricAbs: number;
  /** absolute, for losses and forgetting (lower is better) */
  lossAbs: number;
  /** relative, for perplexities (lower is better) */
  perplexityRel: number;
  /** relative increase of peak memory */
  memoryRel: number;
  /** relative drop of normalised tokens/s */
  speedRel: number;
}

export const DEFAULT_TOLERANCES: Tolerances = { metricAbs: 0.03, lossAbs: 0.05, perplexityRel: 0.05, memoryRel: 0.10, speedRel: 0.40 };

export interface BaselineRun {
  status: RunRecord['status'];
  metrics: Record<string, number>;
  peakTotal: number;
  /** tokens/s x reference kernel ms: machine speed cancels */
  normalizedSpeed: number;
}

export interface Baseline {
  suite: string;
  createdAt: string;
  commit: string;
  cpu: string;
  tolerances: Tolerances;
  runs: Record<string, BaselineRun>;
}

export function baselineFrom(records: RunRecord[], tolerances = DEFAULT_TOLERANCES): Baseline {
  if (records.length === 0) throw new Error('no runs to make a baseline from');
  const runs: Record<string, BaselineRun> = {};
  for (const r of records) runs[r.id] = { status: r.status, metrics: r.metrics, peakTotal: r.memory.peakTotal, normalizedSpeed: r.speed.tokensPerSecond * r.referenceMs };
  return { suite: records[0].suite, createdAt: new Date().toISOString(), commit: records[0].provenance.commit, cpu: records[0].provenance.cpu, tolerances, runs };
}

export function writeBaseline(path: string, records: RunRecord[]): Baseline {
  const b = baselineFrom(records);
  mkdirSync(dirname(path), { recursive: true });
  writeJsonAtomic(path, b);
  return b;
}

export function readBaseline(path: string): Baseline {
  let b: Baseline;
  try {
    b = JSON.parse(readFileSync(path, 'utf8')) as Baseline;
  } catch (e) {
    throw new Error(`baseline ${path}: cannot read it (${(e as Error).message}); create one with --update-baseline`);
  }
  if (!b || typeof b !== 'object' || typeof b.runs !== 'object' || !b.tolerances) throw new Error(`baseline ${path}: not a tunebench baseline (no runs/tolerances)`);
  return b;
}

const HIGHER_BETTER = /accuracy|f1/i;
const PERPLEXITY = /perplexity/i;

/** Every regression beyond tolerance, as readable lines (empty = pass). */
export function checkAgainst(records: RunRecord[], b: Baseline): string[] {
  const tol = b.tolerances;
  const byId = new Map(records.map((r) => [r.id, r]));
  const out: string[] = [];
  for (const [id, base] of Object.entries(b.runs)) {
    const r = byId.get(id);
    if (!r) { out.push(`${id}: run missing from this report`); continue; }
    if (base.status === 'ok' && r.status !== 'ok') { out.push(`${id}: status ${r.status} (baseline ok): ${r.error ?? ''}`); continue; }
    for (const [k, was] of Object.entries(base.metrics)) {
      const now = r.metrics[k];
      if (k === 'majorityBaseline') continue;
      if (now === undefined || !Number.isFinite(now)) { out.push(`${id}: metric ${k} missing or not finite`); continue; }
      if (HIGHER_BETTER.test(k)) { if (now < was - tol.metricAbs) out.push(`${id}: ${k} ${now.toFixed(4)} < baseline ${was.toFixed(4)} - ${tol.metricAbs}`); }
      else if (PERPLEXITY.test(k)) { if (now > was * (1 + tol.perplexityRel)) out.push(`${id}: ${k} ${now.toFixed(4)} > baseline ${was.toFixed(4)} x (1 + ${tol.perplexityRel})`); }
      else if (now > was + tol.lossAbs) out.push(`${id}: ${k} ${now.toFixed(4)} > baseline ${was.toFixed(4)} + ${tol.lossAbs}`);
    }
    if (r.memory.peakTotal > base.peakTotal * (1 + tol.memoryRel)) out.push(`${id}: peak memory ${r.memory.peakTotal} B > baseline ${base.peakTotal} B x (1 + ${tol.memoryRel})`);
    const speed = r.speed.tokensPerSecond * r.referenceMs;
    if (speed < base.normalizedSpeed * (1 - tol.speedRel)) out.push(`${id}: normalised speed ${speed.toFixed(0)} < baseline ${base.normalizedSpeed.toFixed(0)} x (1 - ${tol.speedRel})`);
  }
  return out;
}
