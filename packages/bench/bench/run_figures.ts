// Prints the figures of finished suites as markdown tables, for the notes in
// docs/benchmarks/: per run the task metrics, peak memory by category (and
// the plan's prediction), speed, and the deployable models; per kernel row
// its speed beside the dense GEMM.
//   node --import tsx bench/run_figures.ts reports/cpu-qlora [reports/cpu-checkpointing ...]
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type RunRecord, isPeer, readResults } from '../src/index.js';

const dirs = process.argv.slice(2);
if (dirs.length === 0) {
  console.error('usage: node --import tsx bench/run_figures.ts REPORT_DIR [REPORT_DIR ...]');
  process.exit(2);
}
const mib = (b: number) => (b / 2 ** 20).toFixed(2);
const f4 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(4));

for (const dir of dirs) {
  const records = readResults(join(dir, 'results.jsonl'));
  if (records.length === 0) { console.log(`${dir}: no runs`); continue; }
  const ours = records.filter((r) => !isPeer(r));
  console.log(`\n## ${dir} (${ours[0].provenance.cpu}, commit ${ours[0].provenance.commit})\n`);
  for (const task of [...new Set(ours.map((r) => r.task))]) {
    const runs = ours.filter((r) => r.task === task);
    const metrics = [...new Set(runs.flatMap((r) => Object.keys(r.metrics)))];
    console.log(`### ${task}\n`);
    console.log(`| method | ${metrics.join(' | ')} | frozen MiB | trainable | grad | optimizer | activation | workspace | peak MiB | plan MiB (err) | steady tok/s | ms/step | file |`);
    console.log(`|---|${metrics.map(() => '---:').join('|')}|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|`);
    for (const r of runs) {
      const p = r.memory.peak, pred = r.memory.predicted;
      const err = pred ? `${mib(pred.total)} (${(((pred.total - r.memory.peakTotal) / r.memory.peakTotal) * 100).toFixed(1)}%)` : '-';
      console.log(`| ${r.method} | ${metrics.map((m) => f4(r.metrics[m])).join(' | ')} | ${mib(p.frozen)} | ${mib(p.trainable)} | ${mib(p.grad)} | ${mib(p.optimizer)} | ${mib(p.activation)} | ${mib(p.workspace)} | ${mib(r.memory.peakTotal)} | ${err} | ${Math.round(r.speed.steadyTokensPerSecond ?? r.speed.tokensPerSecond)} | ${(r.speed.medianStepMs ?? 0).toFixed(1)} | ${(r.fileBytes / 1024).toFixed(0)} KiB |`);
    }
    const dep = runs.flatMap((r) => (r.deployable ?? []).map((d) => ({ r, d })));
    if (dep.length) {
      console.log(`\n| method | deployable | bits | bytes | ${metrics.join(' | ')} | decode tok/s |`);
      console.log(`|---|---|---:|---:|${metrics.map(() => '---:').join('|')}|---:|`);
      for (const { r, d } of dep) {
        console.log(`| ${r.method} | ${d.kind} | ${d.bits.toFixed(3)} | ${d.bytes} | ${metrics.map((m) => f4(d.metrics[m])).join(' | ')} | ${Math.round(d.decodeTokensPerSecond ?? 0)} |`);
      }
    }
    const peers = records.filter((r) => isPeer(r) && r.task === task);
    if (peers.length) {
      console.log(`\n| peer run | status | tok/s | ours tok/s | loss diff (first 10) | steps within 1e-4 |`);
      console.log('|---|---|---:|---:|---:|---:|');
      for (const r of peers) {
        const mine = ours.find((o: RunRecord) => o.id === r.peerOf);
        console.log(`| ${r.method} | ${r.status} | ${Math.round(r.speed.steadyTokensPerSecond ?? 0)} | ${Math.round(mine?.speed.steadyTokensPerSecond ?? 0)} | ${r.metrics.lossMaxAbsDiff10?.toExponential(1) ?? '-'} | ${r.metrics.stepsAgreeing ?? '-'} of ${r.lossCurve.length} |`);
      }
    }
    console.log('');
  }
  const kpath = join(dir, 'kernels.json');
  if (existsSync(kpath)) {
    const k = JSON.parse(readFileSync(kpath, 'utf8')) as { rows: { name: string; ms: number; gflops: number; gbps: number }[] };
    console.log('### kernels\n\n| kernel | ms | GFLOP/s | GB/s |\n|---|---:|---:|---:|');
    for (const row of k.rows) console.log(`| ${row.name} | ${row.ms.toFixed(3)} | ${row.gflops.toFixed(1)} | ${row.gbps.toFixed(1)} |`);
  }
}
