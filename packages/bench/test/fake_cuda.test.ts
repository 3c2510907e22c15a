// The bench's CUDA path without a GPU: under TUNEBENCH_FAKE_CUDA=1 the core
// reports one "fake" device whose tensors live in host memory (CPU kernels),
// so `--device cuda` drives the runner's device branch end to end: models
// moved to the device, device synchronisation, device memory figures, the
// record's backend and device name. Nothing here measures a GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');

test('--device cuda on the fake device: every method trains through the device path and the records say so', { timeout: 900_000 }, () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-fake-cuda-'));
  try {
    // 30-step runs on the 300-step tiny base (the ci suite's runs are sized to learn, not to test a code path)
    const suiteFile = join(out, 'short.json');
    writeFileSync(suiteFile, JSON.stringify({
      name: 'short', base: { preset: 'tiny', pretrainSteps: 300 }, tasks: ['adapt'],
      methods: [
        { name: 'full', lr: 1e-3, label: 'full' }, { name: 'lora', r: 8, alpha: 16, lr: 3e-3, label: 'lora-r8' },
        { name: 'qlora', r: 8, alpha: 16, lr: 3e-3, label: 'qlora-r8' },
        { name: 'qa-lora', r: 8, alpha: 16, lr: 3e-3, label: 'qalora4-r8', options: { bits: 4, groupSize: 32, quantizer: 'gptq' } },
      ],
      shared: { steps: 30, batchSize: 8, seqLen: 128, seed: 0, schedule: 'cosine', warmupSteps: 3 },
    }));
    const args = ['--suite', suiteFile, '--peers', 'none', '--device', 'cuda', '--out', out];
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(pkg, 'src', 'cli.ts'), ...args], {
      cwd: pkg, encoding: 'utf8', timeout: 880_000, env: { ...process.env, TUNEBENCH_FAKE_CUDA: '1' },
    });
    assert.equal(r.status, 0, `exit ${r.status}\n${r.stderr.slice(-3000)}`);
    const records = readFileSync(join(out, 'results.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.deepEqual(records.map((x) => x.method).sort(), ['full', 'lora-r8', 'qalora4-r8', 'qlora-r8']);
    for (const x of records) {
      assert.equal(x.status, 'ok', `${x.method}: ${x.status} ${x.error ?? ''}`);
      assert.equal(x.provenance.backend, 'cuda');
      assert.match(x.provenance.device, /fake CUDA/);
      assert.ok(Number.isFinite(x.metrics.adaptLoss), `${x.method} adaptLoss`);
    }
    for (const x of records) {
      assert.ok(x.memory.peakTotal > 0, `${x.method}: device bytes counted`);
      assert.ok(x.memory.deviceTotalBytes > 0, `${x.method}: device memory figures recorded`);
    }
    // the deployables (merged, requantized) were built from the device model too
    const kinds = records.flatMap((x) => (x.deployable ?? []).map((d: { kind: string }) => d.kind));
    assert.ok(kinds.includes('QA-LoRA merged INT4') && kinds.includes('merged bf16'), kinds.join(', '));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
