// The suite as a job plan: planJobs, shards (balanced, peers with their runs,
// scheduler indices), merge (checks and the merged results), and a sharded
// suite's metrics equal to the unsharded ones to the bit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { LlamaModel, preset, saveHfModel } from '@tunebench/core';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BUILTIN_SUITES, type RunRecord, type Suite, assignShards, mergeShards, parseMethods, parseShard, planJobs, runSuite, shardJobs, validateSuite,
} from '../src/index.js';

const cache = mkdtempSync(join(tmpdir(), 'tb-cache-'));
process.env.TUNEBENCH_CACHE = cache;

function tinySuite(): Suite {
  return validateSuite({
    name: 'shards', base: { preset: 'tiny', pretrainSteps: 4 }, tasks: ['spam', 'adapt'], methods: parseMethods('full,lora4,qlora4'),
    shared: { steps: 3, batchSize: 4, seqLen: 64, seed: 0, schedule: 'cosine', warmupSteps: 1, maxTrain: 24, maxTest: 12, seeds: [0, 1] },
    peers: { tfjs: { methods: ['lora-r4'], tasks: ['spam'], steps: 3 } },
    kernels: false, decodeShape: 'none',
  }, 'shards test suite');
}

test('planJobs: the suite as ordered jobs with stable ids, needs, planned memory and cost', () => {
  const plan = planJobs(structuredClone(BUILTIN_SUITES.ci));
  const kinds = plan.jobs.map((j) => j.kind);
  assert.equal(kinds[0], 'pretrain');
  assert.equal(plan.jobs[0].id, 'pretrain:mini/steps400');
  assert.equal(kinds.filter((k) => k === 'run').length, 10, '2 tasks x 5 methods');
  assert.equal(kinds.at(-1), 'kernels');
  // the ids are the records' ids
  assert.ok(plan.jobs.some((j) => j.id === 'spam/lora-r8/steps600-b8-t128-seed0'));
  for (const j of plan.jobs) {
    assert.ok(j.cost > 0, `${j.id} has a cost`);
    if (j.kind === 'run') { assert.deepEqual(j.needs, ['pretrain:mini/steps400']); assert.ok(j.plannedBytes > 0); }
    if (j.kind === 'peer') {
      const run = plan.jobs.findIndex((r) => r.id === j.needs[0]);
      assert.ok(run >= 0 && run < plan.jobs.indexOf(j), `${j.id} comes after the run it redoes`);
    }
  }
  // the QA-LoRA row has no dense form for the peers: named, never planned
  assert.ok(plan.skipped.some((s) => /qalora4-r8@pytorch/.test(s.id)), JSON.stringify(plan.skipped));
  assert.deepEqual(planJobs(structuredClone(BUILTIN_SUITES.ci)), plan, 'deterministic');
  // tfjs is priced as the slow peer it is
  const tf = plan.jobs.find((j) => j.id.includes('@tfjs'))!, itsRun = plan.jobs.find((j) => j.id === tf.needs[0])!;
  assert.ok(tf.cost > (itsRun.cost * tf.steps!) / 600, 'a tfjs step costs more than one of ours');
});

test('shards: every job in exactly one shard, peers with their runs, the base where needed, balanced by cost', () => {
  const suite = { ...structuredClone(BUILTIN_SUITES.cpu), shared: { ...BUILTIN_SUITES.cpu.shared, seeds: [0, 1, 2] } };
  const plan = planJobs(suite);
  for (const n of [1, 2, 3, 7]) {
    const at = assignShards(plan, n);
    const seen = new Map<string, number>();
    for (let i = 1; i <= n; i++) {
      const jobs = shardJobs(plan, { index: i, of: n });
      for (const j of jobs) if (j.kind !== 'pretrain') seen.set(j.id, (seen.get(j.id) ?? 0) + 1);
      for (const j of jobs) for (const need of j.needs) {
        if (need.startsWith('pretrain:')) assert.ok(jobs.some((x) => x.id === need), `shard ${i}/${n} pretrains what ${j.id} needs`);
        else assert.equal(at.get(need), i, `${j.id} is in the shard of ${need}`);
      }
    }
    for (const j of plan.jobs) if (j.kind !== 'pretrain') assert.equal(seen.get(j.id), 1, `${j.id} once in ${n} shards`);
    if (n > 1) {
      const loads = Array.from({ length: n }, (_, i) => plan.jobs.filter((j) => at.get(j.id) === i + 1).reduce((s, j) => s + j.cost, 0));
      const biggestUnit = Math.max(...plan.jobs.map((j) => j.cost));
      assert.ok(Math.max(...loads) - Math.min(...loads) <= biggestUnit * 2, `balanced: ${loads.map((x) => x.toExponential(2)).join(', ')}`);
    }
  }
});

test('--shard: i/n, and auto from a Slurm job array or a Kubernetes Indexed Job; bad values named', () => {
  assert.deepEqual(parseShard('2/5', {}), { index: 2, of: 5 });
  assert.deepEqual(parseShard('auto', { SLURM_ARRAY_TASK_ID: '0', SLURM_ARRAY_TASK_COUNT: '3' }), { index: 1, of: 3 });
  assert.deepEqual(parseShard('auto', { SLURM_ARRAY_TASK_ID: '4', SLURM_ARRAY_TASK_COUNT: '3', SLURM_ARRAY_TASK_MIN: '2' }), { index: 3, of: 3 });
  assert.deepEqual(parseShard('auto', { JOB_COMPLETION_INDEX: '1', TUNEBENCH_SHARDS: '2' }), { index: 2, of: 2 });
  assert.deepEqual(parseShard('auto', { JOB_COMPLETION_INDEX: '0', JOB_COMPLETIONS: '4' }), { index: 1, of: 4 });
  assert.throws(() => parseShard('0/3', {}), /outside 1\.\.3/);
  assert.throws(() => parseShard('4/3', {}), /outside 1\.\.3/);
  assert.throws(() => parseShard('two', {}), /not i\/n/);
  assert.throws(() => parseShard('auto', {}), /no scheduler index/);
  assert.throws(() => parseShard('auto', { SLURM_ARRAY_TASK_ID: '1' }), /SLURM_ARRAY_TASK_COUNT/);
  assert.throws(() => parseShard('auto', { JOB_COMPLETION_INDEX: '1' }), /TUNEBENCH_SHARDS/);
  assert.throws(() => parseShard('auto', { SLURM_ARRAY_TASK_ID: 'x', SLURM_ARRAY_TASK_COUNT: '2' }), /not a whole number/);
});

/** What must not differ between a sharded and an unsharded suite: everything but timings and provenance. */
function numbers(r: RunRecord): unknown {
  return { id: r.id, status: r.status, metrics: r.metrics, lossCurve: r.lossCurve, outcomes: r.outcomes, untrained: r.untrained, settings: r.settings,
    deployable: r.deployable?.map((d) => ({ kind: d.kind, metrics: d.metrics, outcomes: d.outcomes })), trainable: r.trainableParameters };
}

test('a sharded suite equals the unsharded one to the bit; merge checks the shards and writes one results.jsonl', async () => {
  const suite = tinySuite();
  const whole = mkdtempSync(join(tmpdir(), 'tb-whole-'));
  const records = await runSuite(suite, { outDir: whole, log: () => {}, progress: false });
  assert.equal(records.filter((r) => r.status === 'ok').length, 13, '2 tasks x 3 methods x 2 seeds and one tfjs peer');
  // two shards writing into one folder, one after the other (a shared folder, as on a cluster's file system)
  const shared = mkdtempSync(join(tmpdir(), 'tb-shards-'));
  const logs: string[] = [];
  for (const index of [2, 1]) await runSuite(suite, { outDir: shared, log: (l) => logs.push(l), progress: false, shard: { index, of: 2 } });
  assert.ok(existsSync(join(shared, 'results.shard-1-of-2.jsonl')) && existsSync(join(shared, 'results.shard-2-of-2.jsonl')));
  assert.ok(!existsSync(join(shared, 'results.jsonl')), 'a shard writes only its own file');
  const out = mkdtempSync(join(tmpdir(), 'tb-merged-'));
  const merged = mergeShards(out, [shared]);
  assert.deepEqual(merged.records.map(numbers), records.map(numbers), 'same metrics, losses, outcomes and deployables, in the same order');
  assert.deepEqual(merged.records.map((r) => r.provenance.shard).sort(), records.map((r) => (merged.records.find((m) => m.id === r.id)!.provenance.shard)).sort());
  assert.ok(merged.records.every((r) => r.provenance.shard === '1/2' || r.provenance.shard === '2/2'), 'each record names its shard');
  assert.ok(merged.records.every((r) => typeof r.provenance.host === 'string' && r.provenance.host.length > 0), 'and its host');
  assert.equal(readFileSync(join(out, 'results.jsonl'), 'utf8').trim().split('\n').length, records.length);
  const peer = merged.records.find((r) => r.id.includes('@tfjs'))!;
  assert.equal(merged.records.find((r) => r.id === peer.peerOf)!.provenance.shard, peer.provenance.shard, 'the peer ran in its run\'s shard');

  // what merge refuses, naming the problem
  const lone = mkdtempSync(join(tmpdir(), 'tb-lone-'));
  for (const f of ['shard-1-of-2.json', 'results.shard-1-of-2.jsonl']) writeFileSync(join(lone, f), readFileSync(join(shared, f)));
  assert.throws(() => mergeShards(join(lone, 'out'), [lone]), /shard 2\/2 is missing/);
  assert.throws(() => mergeShards(join(lone, 'out'), [lone, shared]), /shard 1\/2 twice/);
  const m2 = JSON.parse(readFileSync(join(shared, 'shard-2-of-2.json'), 'utf8'));
  writeFileSync(join(lone, 'shard-2-of-2.json'), JSON.stringify({ ...m2, suiteHash: 'other' }));
  writeFileSync(join(lone, 'results.shard-2-of-2.jsonl'), readFileSync(join(shared, 'results.shard-2-of-2.jsonl')));
  assert.throws(() => mergeShards(join(lone, 'out'), [lone]), /another suite or other settings/);
  writeFileSync(join(lone, 'shard-2-of-2.json'), JSON.stringify(m2));
  writeFileSync(join(lone, 'results.shard-2-of-2.jsonl'), readFileSync(join(shared, 'results.shard-2-of-2.jsonl'), 'utf8').split('\n').slice(1).join('\n'));
  assert.throws(() => mergeShards(join(lone, 'out'), [lone]), /planned but in no shard's results/);
  // a shard run again with --resume does nothing new
  const before = readFileSync(join(shared, 'results.shard-1-of-2.jsonl'), 'utf8');
  await runSuite(suite, { outDir: shared, log: (l) => logs.push(l), progress: false, shard: { index: 1, of: 2 }, resume: true });
  assert.equal(readFileSync(join(shared, 'results.shard-1-of-2.jsonl'), 'utf8'), before);
  for (const d of [whole, shared, out, lone]) rmSync(d, { recursive: true, force: true });
});

test('the planner refuses what cannot run before anything is written', async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'tb-refuse-')), 'never');
  const big = validateSuite({ ...tinySuite(), peers: {}, base: { preset: 'llama-2-7b' } }, 'a 7B base');
  await assert.rejects(runSuite(big, { outDir: out, log: () => {}, machineBytes: 24 * 2 ** 30 }),
    /pretrain:llama-2-7b.*needs [\d.]+ GiB .*this machine has 24\.0 GiB: use base\.hfDir/);
  assert.ok(!existsSync(out), 'no output folder was created');
  for (const name of ['__proto__', 'constructor', 'toString']) {
    assert.throws(() => validateSuite({ ...tinySuite(), base: { preset: name } }, 'proto'), /must be a preset/, name);
  }
});

test('a checkpoint the tasks cannot use is refused by name: too small a vocabulary, values that make the first forward non-finite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-ckpt-'));
  const model = LlamaModel.init(preset('tiny'), { seed: 3 });
  try { saveHfModel(model, join(dir, 'model'), { dtype: 'f32' }); } finally { model.dispose(); }
  const configPath = join(dir, 'model', 'config.json');
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  const { seeds: _, ...shared } = tinySuite().shared;
  const suite = (hfDir: string) => ({ ...tinySuite(), shared, peers: {}, tasks: ['adapt'], methods: parseMethods('full'), base: { hfDir } });
  writeFileSync(configPath, JSON.stringify({ ...config, vocab_size: 200 }));
  assert.throws(() => validateSuite(suite(join(dir, 'model')), 'small vocab'), /vocab_size 200 is smaller than the byte tokenizer's 259 ids/);
  // rope_theta so small that the rotary frequencies overflow: the first evaluation is NaN, the run says so and does not train
  writeFileSync(configPath, JSON.stringify({ ...config, rope_theta: 1e-320 }));
  const out = join(dir, 'out');
  const [r] = await runSuite(validateSuite(suite(join(dir, 'model')), 'tiny theta'), { outDir: out, log: () => {}, progress: false });
  assert.equal(r.status, 'error');
  assert.match(r.error!, /first evaluation is not finite .*rope_theta/);
  assert.equal(r.lossCurve.length, 0, 'not trained');
  // a run whose planned peak exceeds the machine's memory is recorded as not fitting, not run
  writeFileSync(configPath, JSON.stringify(config));
  const [small] = await runSuite(validateSuite(suite(join(dir, 'model')), 'small machine'), { outDir: join(dir, 'small'), log: () => {}, progress: false, machineBytes: 64 << 10 });
  assert.equal(small.status, 'oom');
  assert.equal(small.fit?.ran, false);
  assert.match(small.error!, /planned peak \d+ MiB exceeds the 0 MiB of this machine's memory; not run/);
  rmSync(dir, { recursive: true, force: true });
});
