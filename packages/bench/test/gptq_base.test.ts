// A GPTQ checkpoint as base.hfDir: qalora<bits> trains on the checkpoint's
// own codes (nothing quantized again, no calibration rows), and a suite
// that would run a dense method or another bit width on it is refused
// before anything runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IntNLinear, LlamaModel, preset } from '@tunebench/core';
import { LoraLinear } from '@tunebench/lora';
import { loadGptqModel, mergeQalora, prepareQalora, saveGptqModel } from '@tunebench/qa-lora';
import { parseMethods, runSuite, validateSuite } from '../src/index.js';
import { qaloraMethod } from '../src/methods/qa-lora.js';

const cache = mkdtempSync(join(tmpdir(), 'tb-bench-gptq-cache-'));
process.env.TUNEBENCH_CACHE = cache;

/** A tiny model as a 4-bit GPTQ checkpoint (RTN offsets rounded to integer zero points), g32 unless asked. */
function gptqDir(groupSize: 32 | 64 = 32): string {
  const dir = mkdtempSync(join(tmpdir(), 'tb-bench-gptq-'));
  const m = LlamaModel.init(preset('tiny'), { seed: 5, std: 0.15, trainable: false });
  try {
    prepareQalora(m, { bits: 4, groupSize, quantizer: 'rtn', r: 2, alpha: 4 });
    mergeQalora(m);
    saveGptqModel(m, dir, { zeroPoints: 'round' });
  } finally {
    m.dispose();
  }
  return dir;
}

test('qalora4 on a GPTQ base.hfDir uses the checkpoint\'s codes; dense methods and other bit widths are refused by the suite check', () => {
  const dir = gptqDir();
  try {
    const [spec] = parseMethods('qalora4');
    const model = qaloraMethod.prepare(dir, spec, 0);
    const ref = loadGptqModel(dir);
    try {
      const want = ref.model.linears();
      let n = 0;
      for (const [name, l] of model.linears()) {
        assert.ok(l instanceof LoraLinear && l.base instanceof IntNLinear, `${name}: adapters over the INT-N base`);
        const q = l.base.quantized, r = (want.get(name) as IntNLinear).quantized;
        for (const k of ['codes', 'scales', 'offsets'] as const) assert.deepEqual(q[k].data(), r[k].data(), `${name}.${k}: the checkpoint's`);
        n++;
      }
      assert.equal(n, 14);
    } finally {
      model.dispose();
      ref.model.dispose();
    }
    const suite = (methods: string) => ({
      name: 'gptq', base: { hfDir: dir }, tasks: ['spam'], methods: parseMethods(methods),
      shared: { steps: 2, batchSize: 2, seqLen: 32, seed: 0, schedule: 'constant', warmupSteps: 0 }, kernels: false,
    });
    validateSuite(suite('qalora4'), 'ok');
    assert.throws(() => validateSuite(suite('lora8,qalora4'), 's'), /base\.hfDir is a GPTQ checkpoint .*only QA-LoRA \(qalora<bits>\) trains on its codes; lora-r8 need a dense base/);
    assert.throws(() => validateSuite(suite('qalora8'), 's'), /GPTQ checkpoint of 4-bit codes; qalora8-r8 asks for 8 bits \(use qalora4\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the run record of qalora4 on a GPTQ base says the bits and groups it used: the checkpoint\'s (g64), not the method row\'s (g32), and where they came from', async () => {
  const dir = gptqDir(64), out = mkdtempSync(join(tmpdir(), 'tb-bench-gptq-out-'));
  try {
    const [spec] = parseMethods('qalora4');
    assert.equal(spec.options?.groupSize, 32, 'the row asks for groups of 32');
    // what the run trains on: groups of 64
    const model = qaloraMethod.prepare(dir, spec, 0);
    let used: number[];
    try {
      used = [...model.linears().values()].map((l) => ((l as LoraLinear).base as IntNLinear).quantized.groupSize);
    } finally {
      model.dispose();
    }
    assert.deepEqual([...new Set(used)], [64]);
    // the settings a run on this base records, and a row on a dense base as before
    const s = qaloraMethod.settings(spec, dir);
    assert.equal(s.groupSize, 64);
    assert.equal(s.bits, 4);
    assert.match(String(s.quantization), /bits 4 and group_size 64 from the GPTQ checkpoint's quantization_config: its own codes, scales and zero points, no calibration; the method row's groupSize 32 not used/);
    assert.equal(s.calibration, undefined, 'no calibration rows are used on a GPTQ base');
    assert.equal(qaloraMethod.settings(spec).groupSize, 32);
    // the record itself, through the runner (a machine too small to train on: prepared, recorded, not run)
    const suite = validateSuite({
      name: 'gptq-record', base: { hfDir: dir }, tasks: ['adapt'], methods: [spec],
      shared: { steps: 2, batchSize: 2, seqLen: 32, seed: 0, schedule: 'constant', warmupSteps: 0, maxTrain: 8, maxTest: 4 }, kernels: false,
    }, 'gptq record');
    const [r] = await runSuite(suite, { outDir: out, log: () => {}, progress: false, machineBytes: 64 << 10 });
    assert.equal(r.status, 'oom');
    assert.equal(r.settings.groupSize, 64, 'the record carries the group size used');
    assert.equal(r.settings.bits, 4);
    assert.match(String(r.settings.quantization), /from the GPTQ checkpoint's quantization_config/);
    assert.equal(r.settings.calibration, undefined);
    // a checkpoint whose groups cannot be read: the run is recorded with the loader's error, and the record claims no groups
    const cfgPath = join(dir, 'config.json'), cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
    cfg.quantization_config.group_size = 40;
    writeFileSync(cfgPath, JSON.stringify(cfg));
    const [bad] = await runSuite(suite, { outDir: join(out, 'bad'), log: () => {}, progress: false });
    assert.equal(bad.status, 'error');
    assert.match(bad.error!, /group_size 40 with 64 input features/);
    assert.equal(bad.settings.groupSize, undefined);
    assert.match(String(bad.settings.quantization), /GPTQ checkpoint's bits and groups could not be read/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(out, { recursive: true, force: true });
  }
});

test.after(() => rmSync(cache, { recursive: true, force: true }));
