// A worker process of runParallel (workers.ts): it receives the suite once,
// then units of job ids; it runs them as runSuite would and sends each record
// back to the coordinator, which alone writes the results file.
import { type Device, memory } from '@tunebench/core';
import { availableBytes } from '../device.js';
import type { RunRecord } from '../record.js';
import { execute, prepareData } from '../runner.js';
import { type JobContext, SuiteInterrupted, provenance, readResults } from './common.js';
import { KERNELS_FILE } from './kernels.js';
import { planJobs } from './plan.js';
import { baseJob } from './run.js';
import type { FromWorker, ToWorker } from './workers.js';
import { join } from 'node:path';

const say = (m: FromWorker) => { if (process.connected) process.send!(m); };

function freeBytes(device: Device): number {
  memory.emptyCache();
  return availableBytes(device);
}

/** The worker's loop; resolves when the coordinator says exit (or the channel closes). */
export function runWorker(): Promise<void> {
  if (!process.send) throw new Error('the worker command is started by the coordinator (--parallel / --devices), not by hand');
  const abort = new AbortController();
  let ctx: JobContext | null = null;
  let jobs: Map<string, ReturnType<typeof planJobs>['jobs'][number]> = new Map();
  let resume = false;
  let queue: Promise<void> = Promise.resolve();
  return new Promise<void>((resolveWorker) => {
    const finish = () => { process.removeAllListeners('message'); resolveWorker(); };
    process.on('disconnect', () => { abort.abort(); finish(); });
    // the terminal's Ctrl-C reaches every process of the group: the coordinator decides (it sends 'stop')
    process.on('SIGINT', () => abort.abort());
    process.on('SIGTERM', () => abort.abort());
    process.on('message', (m: ToWorker) => {
      if (m.type === 'stop') { abort.abort(); return; }
      if (m.type === 'exit') { queue = queue.then(finish); return; }
      queue = queue.then(async () => {
        try {
          if (m.type === 'init') {
            const suite = m.suite;
            jobs = new Map(planJobs(suite).jobs.map((j) => [j.id, j]));
            resume = m.resume;
            const prior = m.resume ? readResults(m.resultsPath) : [];
            ctx = {
              suite, device: m.device, outDir: m.outDir, resultsPath: m.resultsPath, kernelsPath: join(m.outDir, KERNELS_FILE),
              log: (line) => say({ type: 'log', line }), progress: m.progress, signal: abort.signal,
              prov: { ...provenance(suite.shared.seed, m.device), worker: m.worker },
              baseDir: null, ...(m.cacheDir ? { cacheDir: m.cacheDir } : {}), data: prepareData(suite), done: new Map(prior.map((r) => [r.id, r])),
              peerInputs: new Map(), peerSteps: new Map(), searchedLr: new Map(), notRun: [],
              record: (r: RunRecord) => { ctx!.done.set(r.id, r); say({ type: 'record', record: r }); },
              stopIfAborted: (dropped = null) => { if (abort.signal.aborted || dropped) throw new SuiteInterrupted(m.resultsPath, [], dropped); },
            };
            for (const r of prior) if (r.tuning) ctx.searchedLr.set(`${r.task}/${r.method}`, r.tuning.chosen);
            say({ type: 'ready', freeBytes: freeBytes(m.device) });
            return;
          }
          if (m.type !== 'unit' || !ctx) return;
          const c = ctx;
          const unit = m.ids.map((id) => { const j = jobs.get(id); if (!j) throw new Error(`job ${id} is not in this worker's plan`); return j; });
          c.notRun = [];
          c.peerSteps.clear();
          for (const j of unit) if (j.kind === 'peer' && !c.done.has(j.id)) c.peerSteps.set(j.needs[0], Math.max(c.peerSteps.get(j.needs[0]) ?? 0, j.steps!));
          if (unit.some((j) => j.kind === 'pretrain' || j.kind === 'run' || j.kind === 'peer') && !c.baseDir) baseJob(c);
          for (const j of unit) { c.stopIfAborted(); await execute(j, c, resume); }
          c.peerInputs.clear();
          say({ type: 'unitDone', freeBytes: freeBytes(c.device), notRun: c.notRun });
        } catch (e) {
          if (e instanceof SuiteInterrupted) say({ type: 'interrupted', dropped: e.dropped });
          else say({ type: 'failed', message: (e as Error).stack ?? (e as Error).message });
        }
      });
    });
  });
}
