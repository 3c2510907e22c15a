// The device allocator without a stream-ordered memory pool, on the fake
// device. A GPU whose cudaDevAttrMemoryPoolsSupported is 0 (or whose default
// pool cannot be set up) must still be a usable device: cuda/runtime.cu then
// allocates with cudaMalloc behind a block cache (native/src/block_cache.h)
// that reports reserved bytes and their high-water mark as the pool does.
// Under TUNEBENCH_FAKE_CUDA=1 the fake device answers the attribute with
// TUNEBENCH_FAKE_CUDA_MEMPOOLS and runs the same block cache over host memory,
// so the choice, the reuse, the accounting and the out-of-memory retry are
// checked here, and the model-level device tests run through the fallback.
// The GPU path itself (cudaMalloc under the cache) has not run on a GPU.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const MiB = 2 ** 20;

const seen = new Map<string, Record<string, any>>();
function child(extra: Record<string, string>): Record<string, any> {
  const key = JSON.stringify(extra);
  if (!seen.has(key)) seen.set(key, runChild(extra));
  return seen.get(key)!;
}
function runChild(extra: Record<string, string>): Record<string, any> {
  const env: NodeJS.ProcessEnv = { ...process.env, TUNEBENCH_FAKE_CUDA: '1', TUNEBENCH_FAKE_CUDA_TOTAL_MB: '64', ...extra };
  delete env.NODE_TEST_CONTEXT;
  if (!('TUNEBENCH_CUDA_NO_MEMPOOL' in extra)) delete env.TUNEBENCH_CUDA_NO_MEMPOOL;
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/fake_cuda_malloc_child.ts'], { cwd: pkg, encoding: 'utf8', timeout: 120_000, env });
  assert.equal(r.status, 0, `child exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last);
}

test('a fake device without memory pools is usable: cudaMalloc behind the block cache, and cudaInfo says why', () => {
  const o = child({ TUNEBENCH_FAKE_CUDA_MEMPOOLS: '0' });
  assert.equal(o.info.available, true, 'no memory pool is not "no usable device"');
  assert.equal(o.info.memoryPool, false);
  assert.match(o.info.allocator, /^cudaMalloc with a block cache \(no memory pool: the device reports cudaDevAttrMemoryPoolsSupported = 0\)$/);
  assert.equal(o.info.totalBytes, 64 * MiB);
  assert.deepEqual(o.roundTrip, [1, 2, 3, 4, 5, 6]);
});

test('the fallback accounts as the pool does: reserved holds live plus kept blocks, reuse, empty cache, peak reset', () => {
  const o = child({ TUNEBENCH_FAKE_CUDA_MEMPOOLS: '0' });
  assert.deepEqual(o.base, { live: 0, reserved: 0 });
  // 3 MiB asked for, held as one 4 MiB block (2 MiB granules above 1 MiB)
  assert.deepEqual(o.afterAlloc, { live: 3 * MiB, reserved: 4 * MiB, cached: MiB });
  // freed: not live, still held (kept for reuse)
  assert.deepEqual(o.afterFree, { live: 0, reserved: 4 * MiB, cached: 4 * MiB });
  // the same size again comes from the kept block: no new reservation
  assert.deepEqual(o.afterReuse, { live: 3 * MiB, reserved: 4 * MiB });
  // empty cache gives every kept block back; the high-water mark stays until reset
  assert.deepEqual(o.afterEmpty, { live: 0, reserved: 0, cached: 0, peak: 4 * MiB });
  assert.deepEqual(o.afterResetPeak, { peak: 0 }, 'the peak restarts from the current reservation');
});

test('the fallback out of memory: kept blocks are given back and the allocation retried; beyond the device it is TB_OOM', () => {
  const o = child({ TUNEBENCH_FAKE_CUDA_MEMPOOLS: '0' });
  // 0.6 x 64 MiB = 38 MiB kept; 34 MiB more does not fit beside it
  assert.deepEqual(o.keptBeforeRetry, { cached: 38 * MiB, reserved: 38 * MiB });
  assert.deepEqual(o.retried, { ok: true, live: 34 * MiB, reserved: 34 * MiB, cached: 0 });
  assert.equal(o.tooBig.refused, true);
  assert.equal(o.tooBig.code, 'TB_OOM');
  assert.equal(o.tooBig.device, 'cuda');
  assert.equal(o.tooBig.liveUnchanged, true);
});

test('TUNEBENCH_CUDA_NO_MEMPOOL=1 chooses the fallback on a device that has pools, and says so', () => {
  const o = child({ TUNEBENCH_CUDA_NO_MEMPOOL: '1' });
  assert.equal(o.info.memoryPool, false);
  assert.match(o.info.allocator, /no memory pool: TUNEBENCH_CUDA_NO_MEMPOOL=1/);
  assert.deepEqual(o.afterFree, { live: 0, reserved: 4 * MiB, cached: 4 * MiB });
});

test('with memory pools the fake device keeps its pool figures (reserved = live) and its size limit', () => {
  const o = child({});
  assert.equal(o.info.memoryPool, true);
  assert.match(o.info.allocator, /^stream-ordered memory pool/);
  assert.deepEqual(o.afterAlloc, { live: 3 * MiB, reserved: 3 * MiB, cached: 0 });
  assert.deepEqual(o.afterFree, { live: 0, reserved: 0, cached: 0 });
  assert.equal(o.tooBig.refused, true);
  assert.equal(o.tooBig.code, 'TB_OOM');
});

test('the model-level CUDA tests pass on a fake device without memory pools', { timeout: 300_000 }, () => {
  const env: NodeJS.ProcessEnv = { ...process.env, TUNEBENCH_FAKE_CUDA: '1', TUNEBENCH_FAKE_CUDA_MEMPOOLS: '0' };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--expose-gc', '--test', '--test-reporter=tap', 'test/device_model.test.ts', 'test/device.test.ts'], {
    cwd: pkg, encoding: 'utf8', timeout: 280_000, env,
  });
  const count = (k: string) => Number(r.stdout.match(new RegExp(`^# ${k} (\\d+)$`, 'm'))?.[1] ?? NaN);
  assert.equal(r.status, 0, `exit ${r.status}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`);
  assert.equal(count('fail'), 0);
  assert.equal(count('skipped'), 0, 'every CUDA test ran against the fake device');
  assert.ok(count('pass') >= 15, `passed ${count('pass')}`);
});
