// Merging shards: the results of `--shard i/n` processes (each a folder, or
// one folder they shared) into one results.jsonl and kernels.json, after
// checking that they are the shards of one plan: the same suite and settings
// (its hash), the same commit, every shard present once, every job of the
// plan run exactly once (or said by its shard why not), no record twice.
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RunRecord } from '../record.js';
import type { ShardManifest } from '../runner.js';
import { KERNELS_FILE } from './kernels.js';
import { readResults } from './common.js';

export interface MergeResult {
  records: RunRecord[];
  resultsPath: string;
  kernelsPath?: string;
  shards: number;
  /** planned jobs their shard did not run, with why */
  notRun: { id: string; reason: string }[];
}

interface Found { dir: string; manifest: ShardManifest; path: string }

function manifestsIn(dir: string): Found[] {
  if (!existsSync(dir)) throw new Error(`${dir}: no such folder`);
  return readdirSync(dir).filter((f) => /^shard-\d+-of-\d+\.json$/.test(f)).map((f) => {
    const path = join(dir, f);
    let m: ShardManifest;
    try { m = JSON.parse(readFileSync(path, 'utf8')) as ShardManifest; } catch (e) { throw new Error(`${path}: not a shard manifest (${(e as Error).message})`); }
    if (m.format !== 'tunebench-shard/1' || !m.shard || !Array.isArray(m.jobs) || !Array.isArray(m.planned)) throw new Error(`${path}: not a shard manifest (format ${JSON.stringify(m.format)})`);
    return { dir, manifest: m, path };
  });
}

/** Checks the shards found in `dirs` and writes the merged results.jsonl (and kernels.json) into `outDir`. */
export function mergeShards(outDir: string, dirs: string[]): MergeResult {
  if (dirs.length === 0) throw new Error('merge: name at least one folder with shard results');
  const found = dirs.flatMap(manifestsIn);
  if (found.length === 0) throw new Error(`merge: no shard manifest (shard-<i>-of-<n>.json) in ${dirs.join(', ')}`);
  const first = found[0].manifest;
  const problems: string[] = [];
  for (const f of found) {
    const m = f.manifest;
    if (m.suiteHash !== first.suiteHash) problems.push(`${f.path}: another suite or other settings than ${found[0].path} (suite '${m.suite}' vs '${first.suite}')`);
    if (m.commit !== first.commit) problems.push(`${f.path}: commit ${m.commit}, ${found[0].path}: ${first.commit}`);
    if (m.shard.of !== first.shard.of) problems.push(`${f.path}: one of ${m.shard.of} shards, ${found[0].path}: of ${first.shard.of}`);
    if (!m.finished) problems.push(`${f.path}: shard ${m.shard.index}/${m.shard.of} did not finish (run it again with --resume)`);
  }
  const n = first.shard.of;
  const byIndex = new Map<number, Found>();
  for (const f of found) {
    const other = byIndex.get(f.manifest.shard.index);
    if (other) problems.push(`shard ${f.manifest.shard.index}/${n} twice: ${other.path} and ${f.path}`);
    else byIndex.set(f.manifest.shard.index, f);
  }
  for (let i = 1; i <= n; i++) if (!byIndex.has(i)) problems.push(`shard ${i}/${n} is missing (no shard-${i}-of-${n}.json in ${dirs.join(', ')})`);
  if (problems.length) throw new Error(`merge: ${problems.length} problem(s):\n  ${problems.join('\n  ')}`);

  const shards = [...byIndex.entries()].sort((a, b) => a[0] - b[0]).map(([, f]) => f);
  const records: RunRecord[] = [];
  const from = new Map<string, string>();
  const notRun: MergeResult['notRun'] = [];
  const given = new Map<string, number>();
  let kernels: string | undefined;
  for (const f of shards) {
    const { index, of } = f.manifest.shard;
    const resultsPath = join(f.dir, `results.shard-${index}-of-${of}.jsonl`);
    for (const r of readResults(resultsPath)) {
      if (from.has(r.id)) problems.push(`${r.id}: recorded twice (${from.get(r.id)} and ${resultsPath})`);
      else { from.set(r.id, resultsPath); records.push(r); }
    }
    notRun.push(...f.manifest.notRun);
    for (const id of f.manifest.jobs) if (!id.startsWith('pretrain:')) given.set(id, (given.get(id) ?? 0) + 1);
    const k = join(f.dir, `kernels.shard-${index}-of-${of}.json`);
    if (existsSync(k)) kernels = k;
  }
  const skipped = new Set(notRun.map((x) => x.id));
  for (const id of first.planned) {
    if (id.startsWith('pretrain:')) continue;
    const times = given.get(id) ?? 0;
    if (times !== 1) problems.push(`${id}: given to ${times} shards (expected 1)`);
    if (id === 'kernels') { if (!kernels && !skipped.has(id)) problems.push('kernels: planned but no shard wrote kernels.shard-<i>-of-<n>.json'); continue; }
    if (!from.has(id) && !skipped.has(id)) problems.push(`${id}: planned but in no shard's results`);
  }
  for (const id of from.keys()) if (!first.planned.includes(id)) problems.push(`${id}: recorded but not in the plan`);
  if (problems.length) throw new Error(`merge: ${problems.length} problem(s):\n  ${problems.join('\n  ')}`);

  // the plan's order, so that a merged report reads as an unsharded one
  const order = new Map(first.planned.map((id, i) => [id, i]));
  records.sort((a, b) => (order.get(a.id) ?? 0) - (order.get(b.id) ?? 0));
  mkdirSync(outDir, { recursive: true });
  const resultsPath = join(outDir, 'results.jsonl');
  const tmp = `${resultsPath}.tmp-${process.pid}`;
  writeFileSync(tmp, records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''));
  renameSync(tmp, resultsPath);
  let kernelsPath: string | undefined;
  if (kernels) { kernelsPath = join(outDir, KERNELS_FILE); copyFileSync(kernels, kernelsPath); }
  return { records, resultsPath, ...(kernelsPath ? { kernelsPath } : {}), shards: n, notRun };
}
