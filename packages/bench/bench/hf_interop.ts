// Hugging Face interop check: our LlamaForCausalLM directories and PEFT
// adapters in transformers and peft, and theirs in tunebench, compared by
// logits. Needs a python3 with torch, transformers and peft (the GPU
// machines have them; this development machine does not, so there the
// check says so and stops). The Python half is interop/hf_interop.py.
//
//   node --import tsx bench/hf_interop.ts [--python P] [--work DIR] [--out FILE] [--require]
//
// Two configs: the tiny preset (tied head, grouped kv heads) and an untied
// multi-head variant. Norm weights are drawn away from 1 and LoRA B away from
// 0, so a swapped tensor or an ignored adapter shows in the logits.
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type LlamaConfig, LlamaModel, Rng, Tensor, loadHfModel, parseCli, preset, relativeError, saveHfModel,
} from '@tunebench/core';
import { loadAdapter, loraLayers, prepareLora, saveAdapter } from '@tunebench/lora';

const HELP = `Hugging Face interop check: tunebench's model and adapter files in transformers/peft and theirs here, by logits.

Usage: node --import tsx bench/hf_interop.ts [-- options]

  --python P   a python3 with torch, transformers and peft (default: python3)
  --work DIR   keep the exchanged files here (default: a temporary directory, removed)
  --out FILE   JSON results (default reports/interop/hf.json)
  --require    exit 1 when transformers/peft are missing instead of stopping with a note
  --self-test  no Python: our own files stand in for theirs (checks this script's half only)
  -h, --help   this text

Passes when every relative logits error is under 1e-4 (fp32 on both sides).`;

const opt = parseCli({
  python: { type: 'string', default: 'python3' }, work: { type: 'string' }, out: { type: 'string' },
  require: { type: 'boolean', default: false }, 'self-test': { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
}, HELP);

const here = dirname(fileURLToPath(import.meta.url));
const script = resolve(here, '..', 'interop', 'hf_interop.py');
const selfTest = opt['self-test'];
const probe = selfTest ? { status: 0, error: undefined, stderr: '' } : spawnSync(opt.python, ['-c', 'import torch, transformers, peft; print(transformers.__version__, peft.__version__)'], { encoding: 'utf8' });
if (probe.status !== 0) {
  const why = probe.error ? probe.error.message : (probe.stderr || '').trim().split('\n').pop();
  console.log(`hf interop: ${opt.python} lacks torch/transformers/peft (${why}); nothing checked`);
  process.exit(opt.require ? 1 : 0);
}

const TOL = 1e-4;
const B = 2, T = 16;
const configs: [string, LlamaConfig][] = [
  ['tiny (tied head, GQA)', preset('tiny')],
  ['tiny untied, MHA', { ...preset('tiny'), tieWordEmbeddings: false, numKvHeads: preset('tiny').numHeads }],
];

function logitsOf(model: LlamaModel, ids: Tensor): Float32Array {
  const h = model.hidden(ids);
  const l = model.logits(h);
  const out = (l.data() as Float32Array).slice();
  h.dispose(); l.dispose();
  return out;
}

function readF32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

const root = opt.work ? resolve(opt.work) : mkdtempSync(join(tmpdir(), 'tunebench-hf-'));
const results: Record<string, unknown>[] = [];
let failed = false;
try {
  for (const [k, [label, cfg]] of configs.entries()) {
    const work = join(root, `case${k}`);
    mkdirSync(work, { recursive: true });
    const rng = new Rng(100 + k);
    const model = LlamaModel.init(cfg, { seed: 7 + k, trainable: false, dtype: 'f32' });
    for (const p of model.parameters()) if (p.value.shape.length === 1) {
      const v = p.value.data() as Float32Array;
      for (let i = 0; i < v.length; i++) v[i] = 0.8 + 0.4 * rng.next();
    }
    const idv = Int32Array.from({ length: B * T }, () => Math.floor(rng.next() * cfg.vocabSize));
    const ids = Tensor.from(idv, [B, T], { dtype: 'i32' });
    saveHfModel(model, join(work, 'ours'), { dtype: 'f32' });
    writeFileSync(join(work, 'ids.json'), JSON.stringify({ batch: B, seq: T, ids: [...idv] }));
    writeFileSync(join(work, 'ours_logits.bin'), logitsOf(model, ids));
    prepareLora(model, { r: 4, alpha: 8, seed: 3 });
    for (const l of loraLayers(model)) {
      const b = l.adapter(l.active!).B.value.data() as Float32Array;
      for (let i = 0; i < b.length; i++) b[i] = (rng.next() * 2 - 1) * 0.05;
    }
    saveAdapter(model, join(work, 'ours_adapter'));
    writeFileSync(join(work, 'ours_lora_logits.bin'), logitsOf(model, ids));
    model.dispose();

    let py: Record<string, unknown>;
    if (selfTest) {
      // our files and logits stand in for theirs
      cpSync(join(work, 'ours'), join(work, 'theirs'), { recursive: true });
      cpSync(join(work, 'ours_adapter'), join(work, 'theirs_adapter'), { recursive: true });
      copyFileSync(join(work, 'ours_logits.bin'), join(work, 'theirs_logits.bin'));
      copyFileSync(join(work, 'ours_lora_logits.bin'), join(work, 'theirs_lora_logits.bin'));
      py = { selfTest: true, oursInTransformers: 0, oursAdapterInPeft: 0, adapterChangesLogits: relativeError(readF32(join(work, 'ours_lora_logits.bin')), readF32(join(work, 'ours_logits.bin'))) };
    } else {
      const r = spawnSync(opt.python, [script, work], { encoding: 'utf8', maxBuffer: 64 << 20 });
      const last = (r.stdout || '').trim().split('\n').pop() ?? '';
      try { py = JSON.parse(last); } catch { throw new Error(`${script} failed (exit ${r.status}): ${(r.stderr || '').trim().split('\n').slice(-5).join(' | ')}`); }
    }

    // their files here
    const theirs = loadHfModel(join(work, 'theirs'), { trainable: false, frozenDtype: 'f32' });
    const theirsInOurs = relativeError(logitsOf(theirs, ids), readF32(join(work, 'theirs_logits.bin')));
    const loaded = loadAdapter(theirs, join(work, 'theirs_adapter'));
    const theirAdapterInOurs = relativeError(logitsOf(theirs, ids), readF32(join(work, 'theirs_lora_logits.bin')));
    theirs.dispose();
    ids.dispose();
    const row = { config: label, ...py, theirsInTunebench: theirsInOurs, theirAdapterInTunebench: theirAdapterInOurs, adapterIgnoredKeys: loaded.ignoredKeys };
    results.push(row);
    for (const key of ['oursInTransformers', 'oursAdapterInPeft', 'theirsInTunebench', 'theirAdapterInTunebench']) {
      const v = row[key as keyof typeof row] as number;
      const ok = typeof v === 'number' && v < TOL;
      failed ||= !ok;
      console.log(`${label.padEnd(24)} ${key.padEnd(26)} max relative logits error ${typeof v === 'number' ? v.toExponential(2) : String(v)} ${ok ? 'ok' : 'FAIL'}`);
    }
    if (!((py.adapterChangesLogits as number) > 1e-3)) { failed = true; console.log(`${label}: the adapter did not change the logits in peft (${py.adapterChangesLogits}): the check would prove nothing`); }
  }
} finally {
  if (!opt.work) rmSync(root, { recursive: true, force: true });
}
const outPath = resolve(opt.out ?? join(here, '..', '..', '..', 'reports', 'interop', 'hf.json'));
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify({ date: new Date().toISOString(), tolerance: TOL, results }, null, 2));
console.log(`${failed ? 'FAILED' : 'passed'}; wrote ${outPath}`);
process.exit(failed ? 1 : 0);
