// .gpu/table.mjs DIR — the short table that ends a GPU visit (scripts/gpu-run.sh;
// DIR is the visit's folder, visit/ in the archive): the stages, the cuBLAS
// reference, and the visit suite's runs from suite-gpu/results.jsonl
// (complete or not: a suite stopped by its time limit still has its finished runs).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const out = process.argv[2] ?? 'gpu-out';
const mib = (b) => (typeof b === 'number' && b > 0 ? (b / 2 ** 20).toFixed(0) : '-');
const num = (x) => (typeof x === 'number' && Number.isFinite(x) && x > 0 ? Math.round(x).toLocaleString('en-US') : '-');
function table(head, rows) {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  for (const r of [head, ...rows]) console.log(r.map((c, i) => (i === 0 ? String(c).padEnd(w[i]) : String(c).padStart(w[i]))).join('  '));
}

console.log(`\n== GPU visit: ${out}`);
const prov = join(out, 'provenance.txt');
if (existsSync(prov)) console.log(readFileSync(prov, 'utf8').trim());
const stages = join(out, 'stages.tsv');
if (existsSync(stages)) {
  console.log('\nstages:');
  table(['stage', 'status', 'seconds'], readFileSync(stages, 'utf8').trim().split('\n').filter(Boolean).map((l) => l.split('\t')));
}
const matmul = join(out, 'matmul.json');
if (existsSync(matmul)) {
  const m = JSON.parse(readFileSync(matmul, 'utf8'));
  console.log(`\ntorch.matmul (cuBLAS) on ${m.device}, torch ${m.torch}, CUDA ${m.cuda}:`);
  table(['shape', 'dtype', 'ms', 'TFLOP/s'], m.rows.map((r) => [`${r.name} ${r.M}x${r.N}x${r.K}`, r.dtype, r.ms.toFixed(3), r.tflops.toFixed(1)]));
}
const results = join(out, 'suite-gpu', 'results.jsonl');
if (existsSync(results)) {
  const recs = readFileSync(results, 'utf8').split('\n').filter((l) => l.trim()).map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter(Boolean);
  const dev = recs.find((r) => r.provenance?.device)?.provenance.device ?? '?';
  console.log(`\nthe suite (suite-gpu/results.jsonl): ${recs.length} record(s) on ${dev}:`);
  const metric = (r) => {
    const m = r.metrics ?? {};
    if (m.macroF1 !== undefined) return `F1 ${m.macroF1.toFixed(3)}`;
    if (m.adaptPerplexity !== undefined) return `ppl ${m.adaptPerplexity.toFixed(2)}`;
    if (m.lossMaxAbsDiff10 !== undefined) return `dloss ${m.lossMaxAbsDiff10.toExponential(1)}`;
    return '-';
  };
  const status = (r) => (r.status === 'ok' ? 'ok' : r.fit ? 'does not fit (planned)' : r.status === 'oom' ? 'OOM' : `${r.status}: ${String(r.error ?? '').slice(0, 60)}`);
  table(['run', 'status', 'metric', 'tokens/s', 'device MiB', 'reserved MiB', 'planned MiB'], recs.map((r) => [
    r.id.replace(/\/steps.*?(@|$)/, '$1'), status(r), metric(r), num(r.speed?.steadyTokensPerSecond ?? r.speed?.tokensPerSecond),
    mib(r.memory?.peakTotal), mib(r.memory?.reservedPeakBytes), mib(r.memory?.predicted?.total ?? r.fit?.plannedBytes),
  ]));
  // which PyTorch stack each peer ran (transformers + PEFT, or the script's own
  // model; a QLoRA peer without bitsandbytes says it dequantized before each matmul)
  const stacks = new Map();
  for (const r of recs) {
    const st = r.settings?.peerStack;
    if (st) stacks.set(st, [...(stacks.get(st) ?? []), r.id.replace(/\/steps.*?(@|$)/, '$1')]);
  }
  if (stacks.size) {
    console.log('\nPyTorch peers:');
    for (const [st, ids] of stacks) console.log(`  ${st}: ${ids.join(', ')}`);
  }
} else {
  console.log('\nthe suite: no results');
}
