// Several workers on one machine (--parallel N on the CPU, --devices on GPUs,
// here 2 fake CUDA devices): every job runs once, on some worker, the records
// equal one worker's to the bit, each names its worker, and the report marks
// CPU workers' speed as not comparable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type RunRecord, cpuWorkers, cudaWorkers, parseDevices, readResults } from '../src/index.js';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');

function cli(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(pkg, 'src', 'cli.ts'), ...args], { cwd: pkg, encoding: 'utf8', timeout: 600_000, env: { ...process.env, ...env } });
  assert.equal(r.status, 0, `exit ${r.status}\n${r.stderr.slice(-3000)}`);
  return r;
}

const numbers = (r: RunRecord) => ({ id: r.id, status: r.status, metrics: r.metrics, lossCurve: r.lossCurve, outcomes: r.outcomes });

test('--parallel and --devices: workers split the cores or take one GPU each; bad lists are named', () => {
  assert.deepEqual(cpuWorkers(2, 16).map((w) => w.env.TUNEBENCH_THREADS), ['8', '8']);
  assert.deepEqual(cpuWorkers(3, 2).map((w) => w.threads), [1, 1, 1]);
  assert.deepEqual(cudaWorkers([0, 3], 16).map((w) => [w.label, w.env.CUDA_VISIBLE_DEVICES, w.device]), [['cuda:0', '0', 'cuda'], ['cuda:3', '3', 'cuda']]);
  assert.deepEqual(parseDevices('all', 3), [0, 1, 2]);
  assert.deepEqual(parseDevices('cuda:1, cuda:0', 2), [1, 0]);
  assert.throws(() => parseDevices('cuda:2', 2), /only 2 CUDA device/);
  assert.throws(() => parseDevices('gpu0', 2), /not cuda:<k>/);
  assert.throws(() => parseDevices('cuda:0,cuda:0', 2), /named twice/);
  assert.throws(() => parseDevices('all', 0), /no CUDA device/);
});

test('2 CPU workers and 2 fake CUDA devices run the suite once between them, with the same figures as one process', { timeout: 900_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-workers-'));
  try {
    const suite = join(dir, 'suite.json');
    writeFileSync(suite, JSON.stringify({
      name: 'workers', base: { preset: 'tiny', pretrainSteps: 4 }, tasks: ['spam', 'adapt'], methods: [
        { name: 'full', lr: 1e-3, label: 'full' }, { name: 'lora', r: 4, alpha: 8, lr: 3e-3, label: 'lora-r4' },
      ],
      shared: { steps: 3, batchSize: 4, seqLen: 64, seed: 0, schedule: 'cosine', warmupSteps: 1, maxTrain: 24, maxTest: 12 }, kernels: false,
    }));
    const env = { TUNEBENCH_CACHE: join(dir, 'cache'), TUNEBENCH_THREADS: '1' };
    cli(['--suite', suite, '--peers', 'none', '--out', join(dir, 'one')], env);
    const expected = readResults(join(dir, 'one', 'results.jsonl')).map(numbers);
    assert.equal(expected.length, 4);

    const cpu = cli(['--suite', suite, '--peers', 'none', '--parallel', '2', '--out', join(dir, 'cpu')], env);
    const records = readResults(join(dir, 'cpu', 'results.jsonl'));
    const inPlanOrder = expected.map((e) => numbers(records.find((r) => r.id === e.id)!));
    assert.deepEqual(inPlanOrder, expected, 'each job once, the same numbers');
    assert.equal(records.length, 4);
    assert.deepEqual(new Set(records.map((r) => r.provenance.worker?.of)), new Set([2]));
    assert.ok(records.every((r) => r.provenance.worker!.index === 0 || r.provenance.worker!.index === 1));
    const summary = readFileSync(join(dir, 'cpu', 'summary.md'), 'utf8');
    assert.match(summary, /other worker\(s\) on one CPU/, 'the report says the workers shared the machine');
    assert.match(cpu.stderr, /speed figures are not comparable/);

    const gpu = cli(['--suite', suite, '--peers', 'none', '--device', 'cuda', '--devices', 'cuda:0,cuda:1', '--out', join(dir, 'gpu')],
      { ...env, TUNEBENCH_FAKE_CUDA: '1', TUNEBENCH_FAKE_CUDA_DEVICES: '2' });
    const onGpus = readResults(join(dir, 'gpu', 'results.jsonl'));
    assert.equal(onGpus.length, 4);
    assert.ok(onGpus.every((r) => r.status === 'ok' && r.provenance.backend === 'cuda'), onGpus.map((r) => `${r.id} ${r.status} ${r.error ?? ''}`).join('\n'));
    assert.match(gpu.stderr, /cuda:0 .*cuda:1/);
    assert.deepEqual(new Set(onGpus.map((r) => r.provenance.worker?.of)), new Set([2]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
