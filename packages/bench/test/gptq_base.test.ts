// A GPTQ checkpoint as base.hfDir: qalora<bits> trains on the checkpoint's
// own codes (nothing quantized again, no calibration rows), and a suite
// that would run a dense method or another bit width on it is refused
// before anything runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IntNLinear, LlamaModel, preset } from '@tunebench/core';
import { LoraLinear } from '@tunebench/lora';
import { loadGptqModel, mergeQalora, prepareQalora, saveGptqModel } from '@tunebench/qa-lora';
import { parseMethods, validateSuite } from '../src/index.js';
import { qaloraMethod } from '../src/methods/qa-lora.js';

/** A tiny model as a 4-bit g32 GPTQ checkpoint (RTN offsets rounded to integer zero points). */
function gptqDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tb-bench-gptq-'));
  const m = LlamaModel.init(preset('tiny'), { seed: 5, std: 0.15, trainable: false });
  try {
    prepareQalora(m, { bits: 4, groupSize: 32, quantizer: 'rtn', r: 2, alpha: 4 });
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
