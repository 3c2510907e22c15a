// The kernel threads (OpenMP, libgomp) spin briefly and then block: the loader
// (src/native.ts) sets GOMP_SPINCOUNT before the addon loads libgomp, unless
// the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT. Checked in child processes
// (libgomp reads its settings once per process) through libgomp's own report
// (OMP_DISPLAY_ENV=VERBOSE prints the spin count it uses), and by behaviour:
// a process whose kernel threads are idle uses next to no CPU. Never speed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_GOMP_SPINCOUNT, configureOpenMpWait } from '../src/index.js';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');

function child(env: Record<string, string>) {
  const base = { ...process.env };
  for (const k of ['OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'OMP_DISPLAY_ENV']) delete base[k];
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/openmp_wait_child.ts'], {
    cwd: pkg, encoding: 'utf8', timeout: 120_000, env: { ...base, TUNEBENCH_THREADS: '2', OMP_DISPLAY_ENV: 'VERBOSE', ...env },
  });
  assert.equal(r.status, 0, `child failed (${r.status}): ${r.stderr}`);
  const spin = /GOMP_SPINCOUNT = '(\d+)'/.exec(r.stderr);
  const policy = /OMP_WAIT_POLICY = '(\w+)'/.exec(r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { openmpWait: { source: string }; threads: number; idleCpuMs: number; wallMs: number };
  return { ...out, spinCount: spin ? Number(spin[1]) : null, policy: policy?.[1] ?? null, stderr: r.stderr };
}

test('configureOpenMpWait: sets a short spin unless the user chose, never from a worker thread', () => {
  const env: NodeJS.ProcessEnv = {};
  assert.deepEqual(configureOpenMpWait(env, true), { source: 'tunebench', GOMP_SPINCOUNT: String(DEFAULT_GOMP_SPINCOUNT) });
  assert.equal(env.GOMP_SPINCOUNT, String(DEFAULT_GOMP_SPINCOUNT));
  const active: NodeJS.ProcessEnv = { OMP_WAIT_POLICY: 'ACTIVE' };
  assert.deepEqual(configureOpenMpWait(active, true), { source: 'user', OMP_WAIT_POLICY: 'ACTIVE' });
  assert.equal(active.GOMP_SPINCOUNT, undefined, "a user's policy is left alone");
  const spin: NodeJS.ProcessEnv = { GOMP_SPINCOUNT: '5' };
  assert.deepEqual(configureOpenMpWait(spin, true), { source: 'user', GOMP_SPINCOUNT: '5' });
  const empty: NodeJS.ProcessEnv = { GOMP_SPINCOUNT: ' ' };
  assert.equal(configureOpenMpWait(empty, true).source, 'tunebench', 'an empty value is not a choice');
  const worker: NodeJS.ProcessEnv = {};
  assert.deepEqual(configureOpenMpWait(worker, false), { source: 'unset' });
  assert.equal(worker.GOMP_SPINCOUNT, undefined);
});

test('the spin count reaches libgomp, and idle kernel threads sleep', (t) => {
  const ours = child({});
  if (ours.spinCount === null) { t.skip(`the OpenMP runtime did not report GOMP_SPINCOUNT (not libgomp?): ${ours.stderr.slice(0, 300)}`); return; }
  t.diagnostic(`loader's setting: libgomp spin count ${ours.spinCount}, ${ours.threads} threads, ${ours.idleCpuMs.toFixed(1)} ms CPU over ${ours.wallMs.toFixed(0)} ms idle`);
  assert.equal(ours.openmpWait.source, 'tunebench');
  assert.equal(ours.spinCount, DEFAULT_GOMP_SPINCOUNT, 'libgomp uses the spin count the loader set');
  assert.equal(ours.threads, 2);
  // a spinning worker burns the idle period, or its share of a core on a busy machine (68 ms of
  // 300 with OMP_WAIT_POLICY=ACTIVE while two other processes kept both cores busy); a sleeping
  // one, its spin (about a microsecond) and the runtime's noise (0.2 ms measured)
  assert.ok(ours.idleCpuMs < 20, `idle kernel threads used ${ours.idleCpuMs} ms of CPU in ${ours.wallMs} ms`);
});

test("a user's OMP_WAIT_POLICY / GOMP_SPINCOUNT is what libgomp uses", (t) => {
  const active = child({ OMP_WAIT_POLICY: 'ACTIVE' });
  if (active.spinCount === null) { t.skip('the OpenMP runtime did not report GOMP_SPINCOUNT (not libgomp?)'); return; }
  assert.equal(active.openmpWait.source, 'user');
  assert.equal(active.policy, 'ACTIVE');
  assert.ok(active.spinCount > 1e9, `OMP_WAIT_POLICY=ACTIVE spins ${active.spinCount} iterations`);
  t.diagnostic(`OMP_WAIT_POLICY=ACTIVE: spin count ${active.spinCount}, ${active.idleCpuMs.toFixed(1)} ms CPU over ${active.wallMs.toFixed(0)} ms idle (a spinning worker)`);
  const mine = child({ GOMP_SPINCOUNT: '1234' });
  assert.equal(mine.openmpWait.source, 'user');
  assert.equal(mine.spinCount, 1234);
});
