// The GPU visit kit's shape, checked without a GPU: scripts/gpu-run.sh (the
// kit's run.sh) in a kit folder of its own, with a fake $OUT and the fake
// device (TUNEBENCH_FAKE_CUDA=1, so the device path runs). The device tool
// brings back at most 8 files from $OUT, at most 2 folders deep, and one call
// runs at most 600 s: so everything must arrive as one archive, even when the
// script is stopped in the middle of the suite, and the stage limits must add
// to less than the call. The stage programs are stand-ins written here (a
// suite that appends results.jsonl records and then runs on, a conformance
// test, a kernel benchmark); run.sh, use-node.sh, table.mjs, the addon and
// the visit suite file are the real ones.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadSuiteFile } from '../src/suite.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const scripts = join(repo, 'scripts');
const addon = process.env.TUNEBENCH_ADDON ?? join(repo, 'packages', 'core', 'build', 'Release', 'tunebench.node');
const CALL_LIMIT_S = 600;  // the device tool: one command runs at most 600 s
const has = (tool: string) => spawnSync('bash', ['-c', `command -v ${tool}`]).status === 0;

/** A project root with .gpu/ as gpu-kit.sh lays it out, the stage programs replaced by stand-ins. */
function makeKit(): string {
  const root = mkdtempSync(join(tmpdir(), 'tb-kit-'));
  const kit = join(root, '.gpu');
  mkdirSync(join(kit, 'tests'), { recursive: true });
  copyFileSync(join(scripts, 'gpu-run.sh'), join(kit, 'run.sh'));
  copyFileSync(join(scripts, 'gpu-use-node.sh'), join(kit, 'use-node.sh'));
  copyFileSync(join(scripts, 'gpu-table.mjs'), join(kit, 'table.mjs'));
  copyFileSync(join(scripts, 'gpu-visit-suite.json'), join(kit, 'visit-suite.json'));
  copyFileSync(addon, join(kit, 'tunebench.node'));
  writeFileSync(join(kit, 'commit.txt'), 'kit-test\n');
  writeFileSync(join(kit, 'tests', 'stand_in.test.mjs'), `import { test } from 'node:test';\ntest('a conformance test stand-in', () => {});\n`);
  writeFileSync(join(kit, 'kernels.mjs'), `import { writeFileSync } from 'node:fs';
const a = process.argv.slice(2);
if (a.includes('--help')) { console.log('  --device D   all, cpu or cuda'); process.exit(0); }
writeFileSync(a[a.indexOf('--out') + 1], JSON.stringify({ rows: [] }));
console.log('kernel rows stand-in');
`);
  // the suite stand-in: one results.jsonl record every 100 ms, then (TB_STANDIN_SUITE=hang) runs on
  writeFileSync(join(kit, 'cli.mjs'), `import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
const a = process.argv.slice(2);
if (a[0] === 'plan') { console.log('plan stand-in: llama-2-7b full does not fit'); process.exit(0); }
const out = a[a.indexOf('--out') + 1];
mkdirSync(out, { recursive: true });
const rec = (i) => ({ id: 'spam/run' + i, status: 'ok', metrics: { macroF1: 0.5 }, speed: { tokensPerSecond: 1000 + i }, memory: { peakTotal: 2 ** 20 }, provenance: { device: 'fake CUDA' } });
let i = 0;
const t = setInterval(() => {
  appendFileSync(join(out, 'results.jsonl'), JSON.stringify(rec(i++)) + '\\n');
  console.log('suite stand-in: record ' + i);
  if (i === 3 && process.env.TB_STANDIN_SUITE !== 'hang') { clearInterval(t); }
}, 100);
`);
  // run.sh runs the cuBLAS reference from the working tree, as on the device
  mkdirSync(join(root, 'packages', 'bench', 'peers'), { recursive: true });
  copyFileSync(join(repo, 'packages', 'bench', 'peers', 'torch_matmul.py'), join(root, 'packages', 'bench', 'peers', 'torch_matmul.py'));
  chmodSync(join(kit, 'run.sh'), 0o755);
  return root;
}

function kitEnv(root: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env, OUT: join(root, 'out'), TB_WORK: join(root, 'work'), TUNEBENCH_FAKE_CUDA: '1', TUNEBENCH_THREADS: '1',
    TUNEBENCH_CACHE: join(root, 'cache'), TB_PACK_EVERY: '0.3', ...extra,
  };
  delete env.NODE_TEST_CONTEXT;
  delete env.TUNEBENCH_ADDON;
  return env;
}

/** Every file under dir, with its depth in folders below dir. */
function walk(dir: string): { path: string; depth: number }[] {
  const out: { path: string; depth: number }[] = [];
  const go = (d: string, depth: number) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) go(p, depth + 1);
      else out.push({ path: relative(dir, p), depth });
    }
  };
  go(dir, 0);
  return out;
}

/** What the device tool would bring back: at most 8 plain files, at most 2 folders down, plain names. */
function assertReturnable(out: string): string[] {
  const files = walk(out);
  assert.ok(files.length <= 8, `${files.length} files in $OUT (at most 8 come back): ${files.map((f) => f.path).join(', ')}`);
  for (const f of files) {
    assert.ok(f.depth <= 2, `${f.path} is ${f.depth} folders down (at most 2 come back)`);
    for (const part of f.path.split('/')) assert.match(part, /^[A-Za-z0-9._-]+$/, `${f.path}: a name the tool does not bring back`);
    assert.ok(statSync(join(out, f.path)).size <= 16 * 2 ** 20, `${f.path} is over 16 MiB`);
  }
  return files.map((f) => f.path).sort();
}

function archiveList(archive: string): string[] {
  const r = spawnSync('tar', ['-tzf', archive], { encoding: 'utf8' });
  assert.equal(r.status, 0, `tar -tzf ${archive}: ${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l && !l.endsWith('/')).sort();
}
function archiveFile(archive: string, member: string): string {
  const r = spawnSync('tar', ['-xzOf', archive, member], { encoding: 'utf8' });
  assert.equal(r.status, 0, `tar -xzOf ${archive} ${member}: ${r.stderr}`);
  return r.stdout;
}

const skipShell = !has('timeout') || !has('tar') || !has('gzip') || !existsSync(addon)
  ? `needs bash with timeout, tar and gzip, and the built addon (${addon})` : false;

test('run.sh --plan: the stage limits, their kill grace and the set-up add to less than one device call', { skip: skipShell }, () => {
  const root = makeKit();
  try {
    const r = spawnSync('bash', [join(root, '.gpu', 'run.sh'), '--plan'], { encoding: 'utf8', env: kitEnv(root) });
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout.trim().split('\n').map((l) => l.split('\t'));
    const get = (k: string) => Number(rows.find((x) => x[0] === k)?.[1]);
    const stages = rows.filter((x) => x[0] === 'stage').map((x) => ({ name: x[1], limit: Number(x[2]) }));
    assert.deepEqual(stages.map((s) => s.name), ['env', 'tests', 'kernels', 'matmul', 'plan', 'suite'], 'correctness first, the suite last');
    const sum = stages.reduce((a, s) => a + s.limit + get('grace'), 0) + get('setup');
    assert.equal(get('total'), sum);
    assert.ok(get('total') < get('budget'), `planned ${get('total')} s, budget ${get('budget')} s`);
    assert.ok(get('budget') <= CALL_LIMIT_S - 40, `budget ${get('budget')} s leaves under 40 s of a ${CALL_LIMIT_S} s call`);
    // over the budget it refuses to start, naming the sum
    const over = spawnSync('bash', [join(root, '.gpu', 'run.sh')], { encoding: 'utf8', env: kitEnv(root, { TB_LIMIT_SUITE: '400' }) });
    assert.equal(over.status, 2);
    assert.match(over.stderr, /add to \d+ s, not under the budget of 540 s/);
    assert.ok(!existsSync(join(root, 'out')), 'nothing started');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a whole visit comes back as one archive and summary.txt, the table printed last and in the archive', { skip: skipShell, timeout: 120_000 }, () => {
  const root = makeKit();
  try {
    const r = spawnSync('bash', [join(root, '.gpu', 'run.sh')], { encoding: 'utf8', env: kitEnv(root), timeout: 110_000 });
    assert.equal(r.status, 0, `exit ${r.status}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`);
    const out = join(root, 'out');
    assert.deepEqual(assertReturnable(out), ['summary.txt', 'visit.tar.gz']);
    const names = archiveList(join(out, 'visit.tar.gz'));
    for (const f of ['env.log', 'tests.log', 'kernels.log', 'kernels.json', 'matmul.log', 'plan.log', 'suite.log', 'suite-gpu/results.jsonl',
      'stages.tsv', 'provenance.txt', 'nvidia-smi.txt', 'table.txt']) {
      assert.ok(names.includes(`visit/${f}`), `visit/${f} in the archive (${names.join(', ')})`);
    }
    const stages = archiveFile(join(out, 'visit.tar.gz'), 'visit/stages.tsv').trim().split('\n').map((l) => l.split('\t')[0]);
    assert.deepEqual(stages, ['env', 'tests', 'kernels', 'matmul', 'plan', 'suite']);
    const table = archiveFile(join(out, 'visit.tar.gz'), 'visit/table.txt');
    assert.match(table, /the suite \(suite-gpu\/results\.jsonl\): 3 record\(s\)/);
    assert.ok(r.stdout.trimEnd().endsWith(table.trimEnd()), 'the table is the last thing printed');
    assert.match(readFileSync(join(out, 'summary.txt'), 'utf8'), /suite\tok/);
    // the PyTorch peers run offline; the env stage says where libcublasLt is (or that it is not)
    const env = archiveFile(join(out, 'visit.tar.gz'), 'visit/env.log');
    assert.match(env, /HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1/);
    assert.match(env, /== libcublasLt: /);
    assert.match(env, /"memoryPool": true/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('SIGTERM in the middle of the suite: the archive still holds every stage\'s output and the suite\'s records so far', { skip: skipShell, timeout: 120_000 }, async () => {
  const root = makeKit();
  try {
    const child = spawn('bash', [join(root, '.gpu', 'run.sh')], { env: kitEnv(root, { TB_STANDIN_SUITE: 'hang' }), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stdout += d; });
    let exitCode: number | null | undefined;
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => { exitCode = code; res(code); }));
    const results = join(root, 'work', 'visit', 'suite-gpu', 'results.jsonl');
    const t0 = Date.now();
    while (!(existsSync(results) && readFileSync(results, 'utf8').split('\n').filter(Boolean).length >= 5)) {
      assert.ok(Date.now() - t0 < 90_000 && exitCode === undefined, `the suite never wrote 5 records (run.sh exit ${exitCode})\n${stdout}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGTERM');
    const code = await exited;
    assert.equal(code, 143, `run.sh exits 128 + 15 after SIGTERM\n${stdout}`);
    const out = join(root, 'out');
    assert.deepEqual(assertReturnable(out), ['summary.txt', 'visit.tar.gz']);
    const archive = join(out, 'visit.tar.gz');
    const names = archiveList(archive);
    for (const f of ['env.log', 'tests.log', 'kernels.log', 'kernels.json', 'matmul.log', 'plan.log', 'suite.log', 'suite-gpu/results.jsonl']) {
      assert.ok(names.includes(`visit/${f}`), `visit/${f} in the archive after SIGTERM (${names.join(', ')})`);
    }
    const records = archiveFile(archive, 'visit/suite-gpu/results.jsonl').split('\n').filter(Boolean);
    assert.ok(records.length >= 5, `${records.length} suite records in the archive`);
    assert.match(archiveFile(archive, 'visit/stages.tsv'), /^suite\tkilled \(SIGTERM\)\t\d+$/m);
    assert.match(archiveFile(archive, 'visit/suite.log'), /suite stand-in: record 5/);
    assert.match(readFileSync(join(out, 'summary.txt'), 'utf8'), /suite\tkilled \(SIGTERM\)/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('use-node.sh unpacks Node.js with python3\'s lzma where the machine has no xz', { skip: !has('python3') || spawnSync('python3', ['-c', 'import lzma']).status !== 0 ? 'needs python3 with lzma' : false }, () => {
  const root = mkdtempSync(join(tmpdir(), 'tb-usenode-'));
  try {
    const kit = join(root, '.gpu');
    mkdirSync(kit);
    copyFileSync(join(scripts, 'gpu-use-node.sh'), join(kit, 'use-node.sh'));
    // a stand-in "node" (a shell script that prints a version), xz-compressed by python3
    const fakeNode = join(root, 'node-standin');
    writeFileSync(fakeNode, '#!/bin/sh\necho v0.0.0-kit-test\n');
    const c = spawnSync('python3', ['-c', 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.compress(open(sys.argv[1], "rb").read()))', fakeNode, join(kit, 'node.xz')]);
    assert.equal(c.status, 0, String(c.stderr));
    // a PATH with the few tools use-node.sh needs, and neither node nor xz
    const bin = join(root, 'bin');
    mkdirSync(bin);
    for (const t of ['bash', 'sh', 'python3', 'mkdir', 'chmod', 'mv', 'dirname']) {
      const p = spawnSync('bash', ['-c', `command -v ${t}`], { encoding: 'utf8' }).stdout.trim();
      assert.ok(p, `${t} is installed`);
      symlinkSync(p, join(bin, t));
    }
    const py = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim();
    rmSync(join(bin, 'python3'));
    symlinkSync(py, join(bin, 'python3'));
    const r = spawnSync(join(bin, 'bash'), ['-c', 'source .gpu/use-node.sh && command -v xz || echo "no xz"'], { cwd: root, encoding: 'utf8', env: { PATH: bin, HOME: root } });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^v0\.0\.0-kit-test\nno xz$/m);
    assert.ok(existsSync(join(kit, 'bin', 'node')));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('the visit suite file is a valid suite: the medium base on spam and the SmolLM-135M and TinyLlama-1.1B shape rows, no 7B run', () => {
  const s = loadSuiteFile(join(scripts, 'gpu-visit-suite.json'));
  assert.equal(s.base.preset, 'medium');
  assert.deepEqual((s.shapes ?? []).map((r) => r.preset), ['smollm-135m', 'tinyllama-1.1b']);
  for (const r of s.shapes ?? []) assert.deepEqual(r.peers, ['pytorch']);
  assert.deepEqual(s.methods.map((m) => m.label), ['full', 'lora-r16', 'qlora-r16', 'qalora4-r16']);
});
