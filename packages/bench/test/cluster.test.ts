// The cluster recipes in docs/cluster, run as a scheduler would run them: the
// Slurm array script as 2 processes at once with SLURM_ARRAY_* set, the
// Kubernetes Indexed Job's command with JOB_COMPLETION_INDEX set, each
// followed by its merge step; the merged results equal an unsharded run's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type RunRecord, readResults } from '../src/index.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const CLI = `${process.execPath} --import tsx ${join(root, 'packages', 'bench', 'src', 'cli.ts')}`;

function sh(script: string, env: Record<string, string>): Promise<{ code: number; out: string }> {
  return new Promise((ok) => {
    const p = spawn('bash', ['-c', script], { cwd: root, env: { ...process.env, TUNEBENCH_CLI: CLI, TUNEBENCH_THREADS: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('close', (code) => ok({ code: code ?? -1, out }));
  });
}

const numbers = (r: RunRecord) => ({ id: r.id, status: r.status, metrics: r.metrics, lossCurve: r.lossCurve, outcomes: r.outcomes });

test('the Slurm array and the Kubernetes Indexed Job recipes: 2 shards at once, merged, equal to the unsharded run', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-cluster-'));
  const suitePath = join(dir, 'suite.json');
  writeFileSync(suitePath, JSON.stringify({
    name: 'cluster', base: { preset: 'tiny', pretrainSteps: 4 }, tasks: ['spam'], methods: [
      { name: 'full', lr: 1e-3, label: 'full' }, { name: 'lora', r: 4, alpha: 8, lr: 3e-3, label: 'lora-r4' }, { name: 'qlora', r: 4, alpha: 8, lr: 3e-3, label: 'qlora-r4' },
    ],
    shared: { steps: 3, batchSize: 4, seqLen: 64, seed: 0, schedule: 'cosine', warmupSteps: 1, maxTrain: 24, maxTest: 12 }, kernels: false, decodeShape: 'none',
  }));
  const cache = join(dir, 'cache');
  const base = { TUNEBENCH_SUITE: suitePath, TUNEBENCH_CACHE_DIR: cache };
  const whole = await sh(`${CLI} --suite ${suitePath} --peers none --cache ${join(dir, 'cache-whole')} --out ${join(dir, 'whole')}`, {});
  assert.equal(whole.code, 0, whole.out);
  const expected = readResults(join(dir, 'whole', 'results.jsonl')).map(numbers);
  assert.equal(expected.length, 3);

  // Slurm: both array tasks at once (they race to pretrain the same base into one cache), then the merge job
  const slurmOut = join(dir, 'slurm');
  const tasks = await Promise.all([0, 1].map((id) => sh('bash docs/cluster/slurm-array.sh', { ...base, TUNEBENCH_OUT: slurmOut, SLURM_ARRAY_TASK_ID: String(id), SLURM_ARRAY_TASK_COUNT: '2', SLURM_ARRAY_TASK_MIN: '0' })));
  for (const t of tasks) assert.equal(t.code, 0, t.out);
  assert.match(tasks[0].out, /shard 1\/2/);
  assert.match(tasks[1].out, /shard 2\/2/);
  const merged = await sh('bash docs/cluster/slurm-merge.sh', { ...base, TUNEBENCH_OUT: slurmOut });
  assert.equal(merged.code, 0, merged.out);
  assert.deepEqual(readResults(join(slurmOut, 'merged', 'results.jsonl')).map(numbers), expected);
  assert.ok(readFileSync(join(slurmOut, 'merged', 'summary.md'), 'utf8').includes('lora-r4'), 'the merged report is written');

  // Kubernetes: the manifest's own command lines, with the index the Job controller sets
  const commandOf = (file: string) => {
    const found = [...readFileSync(join(root, 'docs', 'cluster', file), 'utf8').matchAll(/command: \["bash", "-c", "(.*)"\]/g)].map((m) => m[1]);
    assert.equal(found.length, 1, `one command in ${file}`);
    return found[0];
  };
  const commands = [commandOf('indexed-job.yaml'), commandOf('merge-job.yaml')];
  const k8sOut = join(dir, 'k8s');
  const pods = await Promise.all([0, 1].map((i) => sh(commands[0], { ...base, TUNEBENCH_OUT: k8sOut, JOB_COMPLETION_INDEX: String(i), TUNEBENCH_SHARDS: '2' })));
  for (const p of pods) assert.equal(p.code, 0, p.out);
  const k8sMerged = join(dir, 'k8s-merged');
  const m2 = await sh(commands[1], { ...base, TUNEBENCH_OUT: k8sOut, TUNEBENCH_MERGED: k8sMerged });
  assert.equal(m2.code, 0, m2.out);
  assert.deepEqual(readResults(join(k8sMerged, 'results.jsonl')).map(numbers), expected);
  rmSync(dir, { recursive: true, force: true });
});
