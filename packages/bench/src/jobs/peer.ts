// The 'peer' job: another implementation (TensorFlow.js, PyTorch) redoes the
// first steps of one of our runs from the same weights and batches (the input
// the run captured before training); its record sits beside ours.
import { CATEGORIES, type Category } from '@tunebench/core';
import { lossAgreement } from '../peers/agreement.js';
import type { PeerImpl, PeerInput, PeerOutcome } from '../peers/input.js';
import { runTorchPeer, torchUnavailable } from '../peers/pytorch.js';
import { runTfjsPeer } from '../peers/tfjs.js';
import type { RunRecord } from '../record.js';
import { type JobContext, PEER_IMPL, baseDirOf, speedOf, withRunSeed } from './common.js';
import type { Job } from './plan.js';
import { peerInputOnly } from './run.js';

export async function peerJob(job: Job, ctx: JobContext): Promise<void> {
  const pid = job.id, runId = job.needs[0], steps = job.steps!;
  if (ctx.done.has(pid)) { ctx.log(`${pid}: already in ${ctx.resultsPath}, skipped (--resume)`); return; }
  const r = ctx.done.get(runId);
  if (!r || r.status !== 'ok') { ctx.notRun.push({ id: pid, reason: `its run ${runId} did not finish` }); ctx.log(`${pid}: skipped: its run did not finish`); return; }
  if (job.peer === 'pytorch') {
    const why = torchUnavailable();
    if (why) { ctx.notRun.push({ id: pid, reason: `no PyTorch (${why})` }); ctx.log(`${pid}: skipped: no PyTorch (${why}); set TUNEBENCH_PYTHON to a python with torch`); return; }
  }
  let captured = ctx.peerInputs.get(runId);
  if (!captured) {
    // the run was recorded by an earlier session (--resume): the model prepared as for the run, not trained
    const m = { ...job.method!, lr: Number(r.settings.lr ?? job.method!.lr) };
    captured = peerInputOnly(job.task!, m, withRunSeed(ctx.suite, job.seed!), baseDirOf(ctx), ctx.data, steps);
  }
  const input: PeerInput = { ...captured, batches: captured.batches.slice(0, steps), lrs: captured.lrs.slice(0, steps) };
  ctx.log(`${pid}: ${job.peer} redoes the first ${steps} step(s) of ${runId}${job.peer === 'tfjs' ? ' (the pure-JS backend is slow)' : ''}`);
  const t0 = performance.now();
  let outcome: PeerOutcome | Error;
  try {
    outcome = job.peer === 'tfjs'
      ? await runTfjsPeer(input, { onStep: ctx.progress ? (st, loss, ms) => ctx.log(`${pid} step ${st}/${steps} loss ${loss.toFixed(4)} ${(ms / 1000).toFixed(1)} s`) : undefined })
      : await runTorchPeer(input, { threads: job.threads, device: ctx.device });
  } catch (e) {
    outcome = e as Error;
  }
  const pr = peerRecord(r, outcome, pid, PEER_IMPL[job.peer!], steps, input, performance.now() - t0);
  // a peer that failed while Ctrl-C was pressed was most likely stopped by
  // it (the terminal signals the PyTorch child too): not a result
  if (ctx.signal?.aborted && pr.status === 'error') ctx.stopIfAborted({ id: pid, stepsDone: pr.lossCurve.length, steps });
  ctx.record(pr);
  ctx.log(`${pid}: ${pr.status}${pr.status === 'ok' ? `, ${Math.round(pr.speed.tokensPerSecond)} tokens/s; loss vs ours: max abs diff ${pr.metrics.lossMaxAbsDiff10?.toExponential(1)} over the first 10 steps, within 1e-4 for ${pr.metrics.stepsAgreeing} of ${pr.lossCurve.length} steps` : ` (${pr.error})`}`);
}

/** The record of a peer that redid our run `ours`. */
export function peerRecord(ours: RunRecord, outcome: PeerOutcome | Error, id: string, impl: PeerImpl, steps: number, input: PeerInput, durationMs: number): RunRecord {
  const zero = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  const r: RunRecord = {
    ...ours, id, impl, peerOf: ours.id, method: `${ours.method} · ${impl}`, settings: { ...ours.settings, steps },
    status: 'ok', error: undefined, metrics: {}, memory: { peakTotal: 0, peak: zero },
    speed: { tokensPerSecond: 0, msPerStep: { forward: null, backward: null, optimizer: null, total: 0 } },
    fileBytes: 0, lossCurve: [], deployable: undefined, startedAt: new Date(Date.now() - durationMs).toISOString(), durationMs,
  };
  delete r.oomBytes; delete r.divergedAtStep; delete r.outcomes; delete r.untrained; delete r.referenceAfterMs;
  if (outcome instanceof Error) { r.status = 'error'; r.error = outcome.message; return r; }
  const tokensPerStep = input.batchSize * input.seqLen;
  const timed = outcome.stepMs.slice(outcome.timedFrom);
  r.speed = {
    ...speedOf(outcome.stepMs, tokensPerStep, outcome.timedFrom),
    msPerStep: { forward: outcome.phases?.forward ?? null, backward: outcome.phases?.backward ?? null, optimizer: outcome.phases?.optimizer ?? null, total: timed.reduce((a, b) => a + b, 0) / Math.max(timed.length, 1) },
  };
  r.memory = { peakTotal: outcome.peakBytes ?? 0, peak: zero, source: outcome.memorySource };
  r.lossCurve = outcome.losses;
  r.provenance = { ...ours.provenance, gemm: outcome.detail };
  const bad = outcome.losses.findIndex((l) => !Number.isFinite(l));
  if (bad >= 0) { r.status = 'diverged'; r.divergedAtStep = bad + 1; r.error = `${impl}: the loss is ${outcome.losses[bad]} at step ${bad + 1}`; return r; }
  if (outcome.losses.length < steps) { r.status = 'error'; r.error = `${impl} stopped after ${outcome.losses.length} of ${steps} steps`; return r; }
  r.metrics = { ...lossAgreement(outcome.losses, ours.lossCurve), finalLoss: outcome.losses[steps - 1] };
  return r;
}

