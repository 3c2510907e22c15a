import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { memory, saveHfModel } from '@tunebench/core';
import { mergeAndUnload } from '@tunebench/lora';
import {
  type RunRecord, type Suite, baselineFrom, resultsCsv, checkAgainst, fastestAttempt, lossAgreement, methodPlugin, readKernels, registerMethod, speedOnly, parseMethods, runSuite, validateSuite,
} from '../src/index.js';

const cache = mkdtempSync(join(tmpdir(), 'tb-cache-'));
process.env.TUNEBENCH_CACHE = cache;

function tinySuite(methods: Suite['methods']): Suite {
  return {
    name: 'test', base: { preset: 'tiny', pretrainSteps: 4 }, tasks: ['spam', 'adapt'], methods,
    shared: { steps: 3, batchSize: 4, seqLen: 64, seed: 0, schedule: 'cosine', warmupSteps: 1, maxTrain: 24, maxTest: 12 },
    // the decode rows beside llama.cpp at the tiny preset: seconds (the default, smollm-135m, takes a minute)
    kernels: false, decodeShape: 'tiny',
  };
}

test('a suite runs every task x method, appends records, and --resume skips finished runs', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-report-'));
  const suite = { ...tinySuite([...parseMethods('full,lora4')]), kernels: true };
  const logs: string[] = [];
  const records = await runSuite(suite, { outDir: out, log: (l) => logs.push(l) });
  const kernels = readKernels(out)!;
  assert.ok(kernels.rows.length >= 8 && kernels.rows.every((r) => r.gflops > 0), 'kernel microbenchmarks written beside the results');
  assert.equal(records.length, 4);
  assert.deepEqual(records.map((r) => `${r.task}/${r.method}/${r.status}`), ['spam/full/ok', 'spam/lora-r4/ok', 'adapt/full/ok', 'adapt/lora-r4/ok']);
  const spamFull = records[0];
  assert.ok(spamFull.metrics.accuracy >= 0 && spamFull.metrics.accuracy <= 1);
  assert.equal(spamFull.lossCurve.length, 3);
  assert.ok(spamFull.memory.peak.trainable > 0 && spamFull.memory.peak.optimizer > 0);
  assert.ok(records[1].memory.peak.frozen > 0, 'LoRA base counted as frozen');
  assert.ok(records[1].trainableParameters < spamFull.trainableParameters);
  assert.ok(records[1].fileBytes < spamFull.fileBytes, 'an adapter file is smaller than the model');
  assert.ok(logs.some((l) => /per method: full: lr/.test(l)), 'what differs between methods is printed');
  assert.equal(readFileSync(join(out, 'results.jsonl'), 'utf8').trim().split('\n').length, 4);
  const again = await runSuite(suite, { outDir: out, resume: true, log: (l) => logs.push(l) });
  assert.equal(again.length, 4);
  assert.ok(logs.filter((l) => /skipped \(--resume\)/.test(l)).length === 5, 'four runs and the kernels');
  rmSync(out, { recursive: true, force: true });
});

test('a run that does not fit or diverges is recorded, and the suite goes on', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-report-'));
  const suite: Suite = { ...tinySuite([{ name: 'full', lr: 1e5, label: 'full-huge-lr' }, { name: 'lora', r: 4, alpha: 8, lr: 1e-3, label: 'lora-r4' }]), tasks: ['spam'] };
  suite.shared.steps = 12;
  await runSuite({ ...suite, methods: [suite.methods[1]] }, { outDir: out, log: () => {} });  // warms the base cache
  memory.setAllocationLimit(0);
  const recs = await runSuite(suite, { outDir: out, log: () => {} });
  assert.equal(recs[0].status, 'diverged', `huge lr: ${recs[0].status} ${recs[0].error}`);
  assert.ok(recs[0].divergedAtStep! >= 1);
  assert.equal(recs[1].status, 'ok', 'the next run still ran');
  memory.setAllocationLimit(16 << 10);  // nothing of 16 KiB fits: the model itself does not load
  const oom = await runSuite({ ...suite, methods: [suite.methods[1]] }, { outDir: out, log: () => {} });
  memory.setAllocationLimit(0);
  assert.equal(oom[0].status, 'oom');
  assert.ok(oom[0].oomBytes! > 16 << 10);
  assert.match(oom[0].error!, /does not fit/);
  rmSync(out, { recursive: true, force: true });
});

test('peers redo the first steps of chosen runs: recorded beside ours, resumed, and kept out of baselines', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-peers-'));
  const suite: Suite = { ...tinySuite([...parseMethods('full,lora4')]), tasks: ['spam'], peers: { tfjs: { methods: ['lora-r4'], steps: 3 } } };
  const logs: string[] = [];
  const recs = await runSuite(suite, { outDir: out, log: (l) => logs.push(l) });
  assert.deepEqual(recs.map((r) => r.id), ['spam/full/steps3-b4-t64-seed0', 'spam/lora-r4/steps3-b4-t64-seed0', 'spam/lora-r4@tfjs/steps3-b4-t64-seed0']);
  const [, lora, peer] = recs;
  assert.equal(peer.impl, 'tensorflow.js');
  assert.equal(peer.peerOf, lora.id);
  assert.equal(peer.status, 'ok', peer.error);
  assert.equal(peer.lossCurve.length, 3);
  assert.ok(peer.metrics.lossMaxAbsDiff < 1e-4, `same math, same losses: max diff ${peer.metrics.lossMaxAbsDiff}`);
  assert.equal(peer.metrics.stepsAgreeing, 3);
  assert.equal(peer.metrics.lossMaxAbsDiff10, peer.metrics.lossMaxAbsDiff, 'fewer than 10 steps: the same maximum');
  assert.ok(peer.speed.tokensPerSecond > 0 && peer.memory.peakTotal > 0 && /tfjs/.test(peer.memory.source!));
  assert.equal(peer.speed.msPerStep.forward, null, 'tfjs cannot split forward from backward');
  // a crash after our run and before the peer's: --resume redoes only the peer
  const lines = readFileSync(join(out, 'results.jsonl'), 'utf8').trim().split('\n');
  writeFileSync(join(out, 'results.jsonl'), lines.slice(0, 2).join('\n') + '\n');
  logs.length = 0;
  const again = await runSuite(suite, { outDir: out, resume: true, log: (l) => logs.push(l) });
  assert.deepEqual(again.map((r) => r.id), recs.map((r) => r.id));
  assert.equal(again[1].startedAt, lora.startedAt, 'our run was not redone');
  assert.ok(logs.some((l) => /full\/steps3-b4-t64-seed0: already in/.test(l)));
  assert.ok(again[2].metrics.lossMaxAbsDiff < 1e-4, 'the resumed peer starts from the same weights as our run did');
  const b = baselineFrom(again);
  assert.deepEqual(Object.keys(b.runs), [recs[0].id, recs[1].id], 'peers are not ours to regress');
  assert.deepEqual(checkAgainst(again, b), []);
  rmSync(out, { recursive: true, force: true });
});

test('a method registered from outside plugs into suites, the runner and the records, deployable rows included', async () => {
  // a LoRA variant whose deployable model is the merged one, evaluated like the run
  const lora = methodPlugin('lora');
  registerMethod({
    ...lora, name: 'lora-merged', describe: 'test', tokens: ['merged<r>'],
    parse: (t) => (/^merged(\d+)$/.test(t) ? { name: 'lora-merged', r: Number(t.slice(6)), alpha: 4, lr: 1e-3, label: t } : null),
    deployables: (model, spec, ctx) => {
      mergeAndUnload(model);
      saveHfModel(model, ctx.dir, { dtype: 'bf16' });
      return [{ kind: 'merged bf16', bits: 16, bytes: statSync(join(ctx.dir, 'model.safetensors')).size, metrics: ctx.evaluate(model) }];
    },
  });
  const out = mkdtempSync(join(tmpdir(), 'tb-plugin-'));
  const suite: Suite = { ...tinySuite(parseMethods('merged2')), tasks: ['spam'] };
  validateSuite(suite, 'plugin suite');
  const [r] = await runSuite(suite, { outDir: out, log: () => {} });
  assert.equal(r.status, 'ok', r.error);
  assert.equal(r.method, 'merged2');
  assert.deepEqual([r.settings.r, r.settings.alpha], [2, 4], 'the plugin\'s settings are recorded');
  assert.equal(r.deployable?.length, 1);
  const d = r.deployable![0];
  assert.ok(d.bytes > 0 && d.kind === 'merged bf16');
  // merging is exact up to bf16 rounding of the merged weights: the same answers on this small test split
  assert.ok(Math.abs(d.metrics.accuracy - r.metrics.accuracy) <= 0.1, `merged ${d.metrics.accuracy} vs adapter ${r.metrics.accuracy}`);
  assert.throws(() => registerMethod({ ...lora }), /registered already/);
  assert.throws(() => validateSuite({ ...suite, methods: [{ name: 'nope', lr: 1, label: 'x' }] }, 's'), /methods\[0\]\.name must be one of full, lora, qlora, qa-lora, lora-merged/);
  rmSync(out, { recursive: true, force: true });
});

test('QLoRA through the runner: 4-bit settings recorded, deployable rows in the record, results.csv and the baseline', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-qlora-'));
  const suite: Suite = { ...tinySuite(parseMethods('qlora4,qlora4-8bit')), tasks: ['spam'] };
  validateSuite(suite, 'qlora suite');
  const records = await runSuite(suite, { outDir: out, log: () => {} });
  assert.equal(records.length, 2);
  for (const r of records) {
    assert.equal(r.status, 'ok', r.error);
    assert.equal(r.settings.format, 'nf4');
    assert.equal(r.settings.doubleQuant, true);
    assert.equal(r.settings.blockSize, 64);
    // frozen memory is the 4-bit base (as the plan says), not bf16
    assert.equal(r.memory.peak.frozen, r.memory.predicted!.frozen);
    assert.deepEqual(r.deployable!.map((d) => d.kind), ['merged bf16', 'merged + requantized NF4']);
    const [bf16, nf4] = r.deployable!;
    assert.equal(bf16.bits, 16);
    assert.ok(nf4.bits > 4 && nf4.bits < 4.2, `requantized bits ${nf4.bits}`);
    assert.ok(nf4.bytes < bf16.bytes / 3);
    for (const d of r.deployable!) {
      assert.ok(Number.isFinite(d.metrics.accuracy) && d.decodeTokensPerSecond! > 0);
    }
    // decode rows at the suite's decode shape: merged bf16 -> F16 and Q8_0 (or, without node-llama-cpp, ours alone); NF4 has no GGUF form
    assert.deepEqual(bf16.weights, { kind: 'bf16' });
    assert.deepEqual(bf16.llamaCpp!.map((x) => [x.format, x.shape]), [['F16', 'tiny'], ['Q8_0', 'tiny']]);
    for (const x of bf16.llamaCpp!) {
      assert.ok(x.status === 'ok' || x.status === 'unavailable', `${x.format}: ${x.status} ${x.statusText ?? ''}`);
      assert.ok(x.ours!.decodeTokensPerSecond > 0);
    }
    assert.deepEqual(nf4.llamaCpp!.map((x) => [x.format, x.status]), [[null, 'no-gguf']]);
  }
  assert.equal(records[1].settings.optimizer, 'adamw8bit');
  const csv = resultsCsv(records).trim().split('\n');
  assert.equal(csv.length, 1 + 2 * 3, 'a row per run and per deployable model');
  const header = csv[0].split(',');
  for (const c of ['llamaCpp.shape', 'llamaCpp.F16.ours.decodeTokensPerSecond', 'llamaCpp.Q8_0.status', 'llamaCpp.none.status']) assert.ok(header.includes(c), `results.csv has ${c}`);
  const ofCol = header.indexOf('deployableOf');
  assert.ok(ofCol >= 0);
  assert.equal(csv.filter((l) => l.split(',')[ofCol] === records[0].id).length, 2);
  const base = baselineFrom(records);
  const deployIds = Object.keys(base.runs).filter((id) => base.runs[id].deployable);
  assert.equal(deployIds.length, 4);
  assert.deepEqual(checkAgainst(records, base), []);
  // a deployable model that got worse is a regression like a trained run's:
  // every prediction flipped (outcomes and metrics), judged by the paired interval
  const flip = (o: NonNullable<RunRecord['outcomes']>) => ({ ...o, labels: { ...o.labels!, pred: o.labels!.pred.map((p, i) => (p === o.labels!.truth[i] ? 1 - p : p)) } });
  const worse = records.map((r) => ({ ...r, deployable: r.deployable!.map((d) => ({ ...d, outcomes: flip(d.outcomes!), metrics: { ...d.metrics, accuracy: d.metrics.accuracy - 0.5 } })) }));
  assert.ok(checkAgainst(worse, base).some((p) => /#merged-bf16: accuracy/.test(p)), checkAgainst(worse, base).join('; '));
  rmSync(out, { recursive: true, force: true });
});

test('QA-LoRA through the runner: INT-N settings recorded, frozen memory as planned, the merged INT-N deployable equals the trained run', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-qalora-'));
  // with the suite's peers asked for: they cannot redo an INT-N base, which is said once, and the runs go on
  const suite: Suite = { ...tinySuite(parseMethods('qalora4,qalora2-rtn')), tasks: ['spam'], peers: { tfjs: { steps: 3 } } };
  validateSuite(suite, 'qa-lora suite');
  const logs: string[] = [];
  const records = await runSuite(suite, { outDir: out, log: (l) => logs.push(l) });
  assert.deepEqual(records.map((r) => r.method), ['qalora4-r8', 'qalora2-r8-rtn'], 'no peer rows');
  assert.equal(logs.filter((l) => /@tfjs\/.*: skipped: /.test(l)).length, 2, logs.join('\n'));
  for (const r of records) {
    assert.equal(r.status, 'ok', r.error);
    assert.equal(r.settings.groupSize, 32);
    assert.equal(r.memory.peak.frozen, r.memory.predicted!.frozen, 'frozen memory is the INT-N base, as planned');
    assert.equal(r.memory.peak.trainable, r.memory.predicted!.trainable, 'pooled adapters: A is r x in/L');
    assert.equal(r.deployable!.length, 1);
    const [d] = r.deployable!;
    assert.equal(d.kind, `QA-LoRA merged INT${r.settings.bits}`);
    assert.deepEqual(d.metrics, r.metrics, 'the merged model is exact: the same metrics as the trained run');
    assert.equal(d.vsTrained!.maxAbsMetricDiff, 0);
    assert.ok(d.decodeTokensPerSecond! > 0);
  }
  const [g4, r2] = records;
  assert.equal(g4.settings.bits, 4);
  assert.equal(g4.settings.quantizer, 'gptq');
  assert.match(String(g4.settings.calibration), /^brown:train \d+x128 tokens$/);
  assert.equal(r2.settings.bits, 2);
  assert.equal(r2.settings.quantizer, 'rtn');
  // 4 bits + two f32 per 32 values = 6 bits a weight; 2 bits -> 4
  assert.ok(Math.abs(g4.deployable![0].bits - 6) < 1e-9, `INT4 g32 bits ${g4.deployable![0].bits}`);
  assert.ok(Math.abs(r2.deployable![0].bits - 4) < 1e-9, `INT2 g32 bits ${r2.deployable![0].bits}`);
  assert.ok(r2.deployable![0].bytes < g4.deployable![0].bytes);
  assert.deepEqual(checkAgainst(records, baselineFrom(records)), []);
  assert.throws(() => parseMethods('qalora5'), /unknown method 'qalora5'.*qalora<bits>/);
  assert.throws(() => validateSuite({ ...suite, methods: [{ name: 'qa-lora', r: 8, lr: 1e-3, label: 'q', options: { bits: 5 } }] }, 's'), /methods\[0\]\.QA-LoRA config: bits must be one of 2, 3, 4, 8, got 5/);
  assert.throws(() => validateSuite({ ...suite, methods: [{ name: 'qa-lora', r: 8, lr: 1e-3, label: 'q', options: { blockSize: 64 } }] }, 's'), /unknown key\(s\) blockSize/);
  rmSync(out, { recursive: true, force: true });
});

test('rows that differ only in activation checkpointing: the same losses and metrics, less activation memory, the mode recorded', async () => {
  const out = mkdtempSync(join(tmpdir(), 'tb-actckpt-'));
  const suite: Suite = { ...tinySuite(parseMethods('lora2,lora2@block,full@every:2')), tasks: ['spam'] };
  suite.shared = { ...suite.shared, checkpointing: 'off' };
  validateSuite(suite, 'checkpointing suite');
  const [plain, ck, full] = await runSuite(suite, { outDir: out, log: () => {} });
  for (const r of [plain, ck, full]) assert.equal(r.status, 'ok', r.error);
  assert.deepEqual([plain.settings.checkpointing, ck.settings.checkpointing, full.settings.checkpointing], ['off', 'block', 'every:2']);
  assert.equal(ck.method, 'lora-r2@block');
  assert.deepEqual(ck.lossCurve, plain.lossCurve, 'bit-identical losses');
  assert.deepEqual(ck.metrics, plain.metrics);
  assert.ok(ck.memory.peak.activation < plain.memory.peak.activation, `${ck.memory.peak.activation} < ${plain.memory.peak.activation}`);
  assert.equal(ck.memory.predicted!.activation < plain.memory.predicted!.activation, true, 'the plan follows the mode');
  assert.throws(() => validateSuite({ ...suite, shared: { ...suite.shared, checkpointing: 'every:0' as never } }, 's'), /shared\.checkpointing: must be 'off', 'block' or 'every:<k>'/);
  rmSync(out, { recursive: true, force: true });
});

test('loss agreement: the first 10 steps, the leading steps within 1e-4, the whole curve', () => {
  const ours = Array.from({ length: 30 }, (_, i) => 3 - i * 0.05);
  const peer = ours.map((l, i) => l + (i < 12 ? 1e-6 * (i % 3) : 1e-3 * (i - 11)));
  const a = lossAgreement(peer, ours);
  assert.equal(a.stepsAgreeing, 12, 'steps 1..12 within 1e-4; step 13 is 1e-3 apart');
  assert.ok(Math.abs(a.lossMaxAbsDiff10 - 2e-6) < 1e-9, `first 10: ${a.lossMaxAbsDiff10}`);
  assert.ok(Math.abs(a.lossMaxAbsDiff - 0.018) < 1e-9, `whole curve: ${a.lossMaxAbsDiff}`);
  assert.equal(lossAgreement([1, NaN], [1, 1]).stepsAgreeing, 1, 'a NaN step does not agree');
});

test('bad suites are refused before anything runs, naming each problem', () => {
  assert.throws(() => validateSuite({ name: 'x y', base: {}, tasks: ['nope'], methods: [], shared: { steps: 0 } }, 'suite.json'),
    /suite\.json: name: must be a word.*base: must give a preset or an hfDir.*tasks\[0\]: Invalid option.*methods: Too small.*shared\.steps: Too small/);
  assert.throws(() => parseMethods('full,qlora'), /unknown method 'qlora'/);
  const ok = tinySuite([...parseMethods('full,lora4')]);
  assert.throws(() => validateSuite({ ...ok, peers: { tfjs: { steps: 2, methods: ['lora-r8'] }, jax: {} } }, 'p.json'),
    /p\.json: peers: unknown key 'jax' \(known: tfjs, pytorch\)/);
  assert.throws(() => validateSuite({ ...ok, peers: { tfjs: { steps: 2, methods: ['lora-r8'] } } }, 'p.json'),
    /p\.json: peers\.tfjs\.methods must list method labels of this suite \(full, lora-r4\); peers\.tfjs\.steps must be an integer from 3 to shared\.steps/);
  assert.deepEqual(parseMethods('lora64').map((m) => [m.label, m.r, m.alpha]), [['lora-r64', 64, 128]]);
});

test('the regression check names each metric beyond tolerance; speed is normalised by the reference kernel', () => {
  const rec = (over: Partial<RunRecord> & { acc?: number; ppl?: number; peak?: number; tps?: number; ref?: number }): RunRecord => ({
    id: 'spam/full', suite: 'ci', task: 'spam', method: 'full', settings: {}, status: over.status ?? 'ok', error: over.error,
    metrics: { accuracy: over.acc ?? 0.8, adaptPerplexity: over.ppl ?? 6 },
    memory: { peakTotal: over.peak ?? 1000, peak: {} as RunRecord['memory']['peak'], deviceBytes: 0 },
    speed: { tokensPerSecond: over.tps ?? 100, msPerStep: { forward: 0, backward: 0, optimizer: 0, total: 0 } },
    trainableParameters: 1, totalParameters: 1, fileBytes: 1, lossCurve: [], referenceMs: over.ref ?? 1,
    provenance: { commit: 'x', packages: {}, backend: 'cpu', device: 'cpu', cpu: 'c', gemm: 'g', seed: 0, node: 'v' },
    startedAt: '', durationMs: 0,
  });
  const base = baselineFrom([rec({})]);
  assert.deepEqual(checkAgainst([rec({})], base), []);
  assert.deepEqual(checkAgainst([rec({ tps: 50, ref: 2 })], base), [], 'half the tokens/s on a machine twice as slow is no regression');
  const p = checkAgainst([rec({ acc: 0.7, ppl: 7, peak: 1200, tps: 50 })], base);
  assert.equal(p.length, 4);
  assert.match(p.join('\n'), /accuracy 0\.7000 < baseline 0\.8000/);
  assert.match(p.join('\n'), /adaptPerplexity 7\.0000 > baseline 6\.0000/);
  assert.match(p.join('\n'), /peak memory 1200 B > baseline 1000 B/);
  assert.match(p.join('\n'), /normalised speed 50 < baseline 100/);
  assert.match(checkAgainst([rec({ status: 'oom', error: 'does not fit' })], base)[0], /status oom \(baseline ok\)/);
  assert.match(checkAgainst([], base)[0], /run missing/);
  // the steady (median-step) figure is preferred when a record has it
  const steady = rec({ tps: 50 });
  steady.speed.steadyTokensPerSecond = 100;
  assert.deepEqual(checkAgainst([steady], base), [], 'a slow first step does not count when the median step is as fast');
});

test('a run that is only slower is timed again and its fastest attempt counts; other problems are not', () => {
  const mk = (id: string, tps: number, acc = 0.8): RunRecord => ({
    id, suite: 'ci', task: 'spam', method: 'full', settings: {}, status: 'ok', metrics: { accuracy: acc },
    memory: { peakTotal: 1000, peak: {} as RunRecord['memory']['peak'], deviceBytes: 0 },
    speed: { tokensPerSecond: tps, msPerStep: { forward: 0, backward: 0, optimizer: 0, total: 0 } },
    trainableParameters: 1, totalParameters: 1, fileBytes: 1, lossCurve: [], referenceMs: 1,
    provenance: { commit: 'x', packages: {}, backend: 'cpu', device: 'cpu', cpu: 'c', gemm: 'g', seed: 0, node: 'v' },
    startedAt: '', durationMs: 0,
  });
  const base = baselineFrom([mk('a', 100), mk('b', 100), mk('c', 100)]);
  const first = [mk('a', 40), mk('b', 40, 0.5), mk('c', 100)];
  const problems = checkAgainst(first, base);
  assert.deepEqual([...speedOnly(problems)], ['a'], 'b also lost accuracy: timing it again would not help');
  const merged = fastestAttempt(first, [mk('a', 30)], [mk('a', 90, 0.1)]);
  assert.equal(merged[0].speed.tokensPerSecond, 90, 'the fastest attempt');
  assert.equal(merged[0].metrics.accuracy, 0.8, 'metrics stay those of the first run');
  assert.deepEqual(checkAgainst(merged, base).map((p) => p.split(':')[0]), ['b', 'b']);
});

test.after(() => rmSync(cache, { recursive: true, force: true }));
