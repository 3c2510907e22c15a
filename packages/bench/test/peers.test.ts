// The peers redo our training steps from the same weights, batches and
// learning rates: TensorFlow.js (always) and PyTorch (when a python3 with
// torch is present; skipped, and says so, otherwise). Same math, so the loss
// of every step must agree with ours; any difference in the captured
// weights, batch order or schedule would show as a different loss.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteTokenizer, type LlamaConfig, LlamaModel, type TokenRows, packExamples, packTexts, preset } from '@tunebench/core';
import { prepareLora } from '@tunebench/lora';
import { type FinetuneOptions, capturePeerInput, finetune, loadTfjs, resolveFinetuneOptions, runTfjsPeer, runTorchPeer, torchUnavailable } from '../src/index.js';

const cfg: LlamaConfig = { ...preset('tiny'), hiddenSize: 32, intermediateSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2 };
const texts = Array.from({ length: 12 }, (_, i) => `Row ${i}: the quick brown fox ${'jumps '.repeat(i % 4)}over the lazy dog number ${i * 7}.`);
const textRows = packTexts(new ByteTokenizer(), texts, 24);
// prompt/completion examples packed several to a row (segments, positions restarting per example)
const packedRows = packExamples(new ByteTokenizer(), Array.from({ length: 14 }, (_, i) => ({ prompt: `${i} x ${i % 5} = `, completion: `${i * (i % 5)}` })), 24, 'products');
// a high learning rate and a short warmup: the schedule and the updates change the later losses visibly
const opts: FinetuneOptions = { steps: 5, batchSize: 3, lr: 2e-2, schedule: 'cosine', warmupSteps: 1, seed: 5 };

function ours(method: 'full' | 'lora', rows: TokenRows = textRows) {
  const model = LlamaModel.init(cfg, { seed: 11, trainable: method === 'full' });
  try {
    if (method === 'lora') prepareLora(model, { r: 4, alpha: 8, seed: 11 });
    const f = resolveFinetuneOptions(opts);
    const input = capturePeerInput(model, rows, { steps: opts.steps, batchSize: opts.batchSize, seed: f.seed, schedule: f.schedule, maxGradNorm: f.maxGradNorm, weightDecay: f.weightDecay });
    const run = finetune(model, rows, opts);
    return { input, losses: run.steps.map((s) => s.loss), lrs: run.steps.map((s) => s.lr) };
  } finally {
    model.dispose();
  }
}

function assertClose(peer: number[], mine: number[], tol: number, what: string): void {
  assert.equal(peer.length, mine.length, `${what}: steps`);
  peer.forEach((l, i) => assert.ok(Math.abs(l - mine[i]) <= tol * Math.max(1, Math.abs(mine[i])), `${what} step ${i + 1}: ${l} vs ours ${mine[i]}`));
  assert.ok(Math.abs(mine[mine.length - 1] - mine[0]) > 10 * tol, `${what}: training moved the loss (${mine[0]} -> ${mine.at(-1)}), so agreement says something`);
}

for (const method of ['full', 'lora'] as const) {
  test(`${method}: the captured input is what our trainer used; TensorFlow.js redoes the steps with the same losses`, async () => {
    const o = ours(method);
    assert.deepEqual(o.input.lrs, o.lrs, 'the learning rate of every step');
    assert.equal(o.input.batches.length, opts.steps);
    if (method === 'lora') {
      assert.equal(o.input.lora!.scale, 2);
      assert.equal(o.input.lora!.targets.length, cfg.numLayers * 7, 'all-linear: 7 projections a layer');
      assert.ok(o.input.weights.some((w) => w.name === 'model.layers.0.self_attn.q_proj.lora_A.weight'), 'adapter names without the adapter');
    }
    const t = await runTfjsPeer(o.input);
    assert.equal(t.impl, 'tensorflow.js');
    // the wasm backend from the installed package (SIMD validates on Node 20; one thread, see peers/tfjs.ts)
    assert.match(t.detail, /^tensorflow\.js 4\.22\.\d+ wasm \((simd|no simd), \d+ threads?\)$/);
    assertClose(t.losses, o.losses, 1e-4, 'tfjs');
    assert.equal(t.stepMs.length, opts.steps - 1, 'the profiled last step is not timed');
    assert.ok(t.peakBytes! > 0, 'tfjs counted its tensor bytes');
    // the pure-JS cpu backend (the tests' gradient oracle) gives the same losses
    const c = await runTfjsPeer(o.input, { backend: 'cpu' });
    assert.match(c.detail, /cpu \(pure JS/);
    assertClose(c.losses, o.losses, 1e-4, 'tfjs cpu');
    assertClose(t.losses, c.losses, 1e-4, 'tfjs wasm vs cpu');
  });

  test(`${method}: PyTorch redoes the steps with the same losses`, async (tt) => {
    const why = torchUnavailable();
    if (why) { tt.skip(`no PyTorch here: ${why}`); return; }
    const o = ours(method);
    const r = await runTorchPeer(o.input);
    assert.equal(r.impl, 'pytorch');
    assertClose(r.losses, o.losses, 1e-4, 'torch');
    assert.equal(r.stepMs.length, opts.steps);
    assert.ok(r.peakBytes === null || r.peakBytes > 0);
  });
}

test('lora on packed prompt/completion rows: the input carries segments and positions; TensorFlow.js redoes the steps with the same losses', async () => {
  assert.ok(packedRows.packed && packedRows.numRows < 14, 'several examples per row');
  const o = ours('lora', packedRows);
  for (const b of o.input.batches) {
    assert.equal(b.segments?.length, opts.batchSize * 24);
    assert.equal(b.positions?.length, opts.batchSize * 24);
  }
  assert.ok(o.input.batches.some((b) => b.positions!.some((p, i) => i % 24 > 0 && p === 0)), 'positions restart inside a row');
  const t = await runTfjsPeer(o.input);
  assertClose(t.losses, o.losses, 1e-4, 'tfjs packed');
});

test('lora on packed rows: PyTorch redoes the steps with the same losses (segment mask, position ids)', async (tt) => {
  const why = torchUnavailable();
  if (why) { tt.skip(`no PyTorch here: ${why}`); return; }
  const o = ours('lora', packedRows);
  const r = await runTorchPeer(o.input);
  assertClose(r.losses, o.losses, 1e-4, 'torch packed');
});

test('a peer given too few steps says so', async () => {
  const o = ours('full');
  await assert.rejects(runTfjsPeer({ ...o.input, batches: o.input.batches.slice(0, 2), lrs: o.input.lrs.slice(0, 2) }), /at least 3 steps/);
});

test('the wasm backend\'s UnsortedSegmentSum (registered by the peer) matches the cpu backend, out-of-range ids dropped', async () => {
  const ids = [3, 0, -1, 3, 5, 1, 0];
  const x = Array.from({ length: ids.length * 3 }, (_, i) => Math.sin(i + 1));
  const sums: number[][] = [];
  for (const backend of ['wasm', 'cpu'] as const) {
    const { tf, name } = await loadTfjs(backend);
    assert.equal(name, backend);
    const out = tf.unsortedSegmentSum(tf.tensor2d(x, [ids.length, 3]), tf.tensor1d(ids, 'int32'), 4);
    assert.deepEqual(out.shape, [4, 3]);
    sums.push([...out.dataSync()]);
  }
  assert.deepEqual(sums[0], sums[1]);
  assert.ok(Math.abs(sums[1][0] - (x[3] + x[18])) < 1e-6, 'segment 0 = rows 1 and 6');
});
