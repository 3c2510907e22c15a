// Devices: backend choice, "no CUDA backend" as its own error, copies between
// devices, one device per op.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Tensor, cudaAvailable, cudaInfo, memory, native, resolveDevice, swiglu } from '../src/index.js';
import { skipCuda } from './cuda_helpers.js';

test('cudaInfo says whether this build has CUDA and, if no device, why', () => {
  const i = cudaInfo();
  assert.equal(i.compiled, native.cudaCompiled);
  assert.equal(i.available, cudaAvailable());
  if (!i.available) assert.match(String(i.reason), /\S/);
  else assert.match(String(i.name), /\S/);
});

test('auto picks the CPU without a CUDA device; cuda then fails naming what is missing', () => {
  if (cudaAvailable()) { assert.equal(resolveDevice('auto'), 'cuda'); return; }
  assert.equal(resolveDevice('auto'), 'cpu');
  assert.equal(resolveDevice('cpu'), 'cpu');
  assert.throws(() => resolveDevice('cuda'), /device cuda: (this build has no CUDA backend|no usable CUDA device|no CUDA device)/);
  assert.throws(() => resolveDevice('tpu' as never), /unknown device 'tpu'/);
});

test('a CUDA tensor without a CUDA device is TB_NO_CUDA, not out of memory, and nothing is counted', () => {
  if (cudaAvailable()) return;
  const before = memory.snapshot().cuda.liveTotal;
  assert.throws(() => Tensor.zeros([1024], { device: 'cuda' }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'TB_NO_CUDA');
    assert.match(e.message, /^no CUDA backend: /);
    assert.doesNotMatch(e.message, /out of memory/);
    return true;
  });
  assert.equal(memory.snapshot().cuda.liveTotal, before);
});

test('Tensor.to copies (a new tensor, same values, shape, dtype) and keeps or sets the category', () => {
  const a = Tensor.from([1, -2, 3.5, 4], [2, 2], { dtype: 'bf16', category: 'frozen' });
  const b = a.to('cpu');
  assert.notEqual(b.handle, a.handle);
  assert.deepEqual([...b.toFloat32()], [1, -2, 3.5, 4]);
  assert.deepEqual(b.shape, [2, 2]);
  assert.equal(b.dtype, 'bf16');
  assert.equal(b.category, 'frozen');
  a.data()[0] = 0;
  assert.equal(b.toFloat32()[0], 1, 'a copy, not a view');
  assert.equal(a.to('cpu', { category: 'activation' }).category, 'activation');
  a.dispose();
  assert.throws(() => a.to('cpu'), /disposed/);
});

test('CUDA round trip keeps every byte, and operands on two devices are refused', { skip: skipCuda }, () => {
  const a = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
  const c = a.to('cuda');
  assert.equal(c.device, 'cuda');
  assert.throws(() => c.data(), /copy it to the CPU first/);
  assert.deepEqual([...c.to('cpu').toFloat32()], [1, 2, 3, 4, 5, 6]);
  assert.throws(() => swiglu(a, c), /'up' is on cuda but 'gate' is on cpu/);
  const m = memory.snapshot().cuda;
  assert.ok((m.reservedBytes ?? 0) >= m.liveTotal, 'the pool holds at least the live bytes');
  assert.ok((m.deviceTotalBytes ?? 0) > 0);
});

test('an op name registered twice fails loading the addon, naming it', async () => {
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const addon = process.env.TUNEBENCH_ADDON ?? fileURLToPath(new URL('../build/Release/tunebench.node', import.meta.url));
  const load = (dup: string) => spawnSync(process.execPath, ['-e', `require(${JSON.stringify(addon)})`], {
    env: { ...process.env, TUNEBENCH_TEST_DUPLICATE_OP: dup }, encoding: 'utf8',
  });
  assert.equal(load('0').status, 0, 'the addon loads normally');
  const r = load('1');
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /'swiglu_forward' of op family 'duplicate_test' is already registered/);
});
