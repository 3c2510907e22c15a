// The device plumbing on a machine without a GPU: under TUNEBENCH_FAKE_CUDA=1
// "cuda" tensors live in host memory and every binding runs its CPU kernel,
// so the model-level CUDA tests (device_model, device) run here instead of
// skipping. They then check where every tensor lives, that nothing reads a
// device tensor from the host, and the moves and copies, though not the CUDA
// kernels themselves (those are the cuda_*.test.ts conformance suites, on a GPU).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');

test('with fake CUDA the model-level CUDA tests run (not skipped) and pass', { timeout: 300_000 }, () => {
  // a node --test of its own (not reporting into this runner's protocol)
  const env: NodeJS.ProcessEnv = { ...process.env, TUNEBENCH_FAKE_CUDA: '1' };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--expose-gc', '--test', '--test-reporter=tap', 'test/device_model.test.ts', 'test/device.test.ts'], {
    cwd: pkg, encoding: 'utf8', timeout: 280_000, env,
  });
  const count = (k: string) => Number(r.stdout.match(new RegExp(`^# ${k} (\\d+)$`, 'm'))?.[1] ?? NaN);
  assert.equal(r.status, 0, `exit ${r.status}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`);
  assert.equal(count('fail'), 0);
  assert.equal(count('skipped'), 0, 'every CUDA test ran against the fake device');
  assert.ok(count('pass') >= 15, `passed ${count('pass')}`);
  assert.match(r.stdout, /ok \d+ - a model on CUDA against the same model on the CPU/);
});
