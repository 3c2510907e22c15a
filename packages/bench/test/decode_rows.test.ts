// Decode rows beside llama.cpp (src/decode_rows.ts): our generate() and
// llama.cpp (node-llama-cpp 3.21.1, its prebuilt CPU binary, build 'never')
// on the same GGUF-exported weights at a decode shape, the same prompt ids,
// greedy, 128 new tokens, the threads of TUNEBENCH_THREADS. Run on the tiny
// preset (random weights, projections at std 1/sqrt(in) so that greedy
// decoding does not settle on one repeated token: asserted) to stay within
// seconds. Measured at 1 thread (teacher-forced: llama.cpp's greedy token
// after the prompt and our tokens; free: each side from its own text):
//   bf16 -> F16                 teacher-forced 128/128, free 128/128
//   INT4 g32 -> Q4_1            teacher-forced 128/128, free parts at 35
//   INT8 (Q8_0 grid) -> Q8_0    teacher-forced 124/128, free parts at 9
//   bf16 -> Q8_0 (requantized)  teacher-forced 122/128, free parts at 9
//   padded vocabulary (1024 ids), INT4 g32 -> Q4_1: teacher-forced 124/128
// (mini, small: 120-128 teacher-forced; F16 free parts at 88 on mini).
// llama.cpp's Q4_1 and Q8_0 matmuls quantize the activations to 8-bit
// blocks, F16 ones round them to fp16: hence the bounds below, F16 >= 120
// teacher-forced and free to position 64, the 8-bit-activation forms >= 110
// teacher-forced.
// Also: INT8 on Q8_0's grid is exact (the file's values are our weights); a
// node-llama-cpp that cannot load gives rows that say why, ours timed alone; a
// shape that cannot be built, an error row; formats without a GGUF form, a
// no-gguf row; the record, results.csv, summary.md and report.html carry the
// figures. The llama.cpp tests are skipped, with the reason, when
// node-llama-cpp cannot load.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer, IntNLinear, decodeI16Available, decodeI8Available, exportGguf, generate, native, preset, readGguf } from '@tunebench/core';
import { benchDecodeActivations, decodePrompt, decodeRows, decodeShapeModel, loadLlamaCpp, roundRange, tokenAgreement } from '../src/decode_rows.js';
import { decodeSpeed } from '../src/methods/helpers.js';
import { type DecodeRow, type RunRecord, withDeployables } from '../src/record.js';
import { renderReport, renderSummary, resultsCsv } from '../src/report/index.js';
import { BUILTIN_SUITES, validateSuite } from '../src/suite.js';

let unavailable = '';
try { await loadLlamaCpp(); } catch (e) { unavailable = (e as Error).message; }
const skip = unavailable ? `node-llama-cpp unavailable: ${unavailable}` : false;
const F16_FORCED = 120, F16_FIRST = 64, Q8ACT_FORCED = 110;

function checkOk(row: DecodeRow, t: { diagnostic(s: string): void }): void {
  t.diagnostic(`${row.weights} -> ${row.format}: ours decode ${row.ours?.decodeTokensPerSecond.toFixed(0)} tok/s, llama.cpp ${row.llamaCpp?.decodeTokensPerSecond.toFixed(0)}; prefill ${row.ours?.prefillTokensPerSecond.toFixed(0)} / ${row.llamaCpp?.prefillTokensPerSecond.toFixed(0)}; agree ${row.tokensAgree}/${row.newTokens}, first difference ${row.firstDivergence}, teacher-forced ${row.teacherForcedAgree}/${row.newTokens}${row.statusText ? ` (${row.statusText})` : ''}`);
  assert.equal(row.status, 'ok', row.statusText);
  assert.equal(row.threads, native.getThreads());
  assert.equal(row.newTokens, 128);
  assert.equal(row.promptTokens, 32);
  for (const x of [row.ours!.decodeTokensPerSecond, row.ours!.prefillTokensPerSecond, row.llamaCpp!.decodeTokensPerSecond, row.llamaCpp!.prefillTokensPerSecond]) {
    assert.ok(Number.isFinite(x) && x > 0, `tokens/s ${x}`);
  }
  assert.ok(Math.abs(row.ratioDecode! - row.ours!.decodeTokensPerSecond / row.llamaCpp!.decodeTokensPerSecond) < 1e-9);
  assert.ok(Math.abs(row.ratioPrefill! - row.ours!.prefillTokensPerSecond / row.llamaCpp!.prefillTokensPerSecond) < 1e-9);
  for (const r of [row.ratioDecodeRange!, row.ratioPrefillRange!]) assert.ok(r.length === 2 && r[0] > 0 && r[0] <= r[1] && Number.isFinite(r[1]), `rounds' range ${r}`);
  assert.match(row.llamaCpp!.version, /llama\.cpp/);
}

test('GGUF forms: llama.cpp and ours agree on the greedy tokens (tiny: bf16 -> F16 and Q8_0, INT4 g32 -> Q4_1, INT8 -> Q8_0)', { skip, timeout: 120_000 }, async (t) => {
  const [q41] = await decodeRows({ kind: 'intn', bits: 4, groupSize: 32 }, { shape: 'tiny' });
  assert.equal(q41.format, 'Q4_1');
  assert.equal(q41.exact, true);
  const bf16 = await decodeRows({ kind: 'bf16' }, { shape: 'tiny' });
  assert.deepEqual(bf16.map((r) => [r.format, r.exact]), [['F16', true], ['Q8_0', false]]);
  const [q8] = await decodeRows({ kind: 'intn', bits: 8, groupSize: 32 }, { shape: 'tiny' });
  assert.deepEqual([q8.format, q8.exact], ['Q8_0', true]);
  for (const row of [q41, bf16[0], q8, bf16[1]]) {
    checkOk(row, t);
    assert.ok(Number.isInteger(row.tokensAgree) && row.tokensAgree! >= row.firstDivergence! && row.tokensAgree! <= 128);
  }
  const f16 = bf16[0];
  assert.ok(f16.teacherForcedAgree! >= F16_FORCED, `F16: teacher-forced ${f16.teacherForcedAgree}/128 (at least ${F16_FORCED})`);
  assert.ok(f16.firstDivergence! >= F16_FIRST, `F16: first difference at ${f16.firstDivergence} (not before ${F16_FIRST})`);
  // Q4_1 and Q8_0: llama.cpp quantizes the activations to 8-bit blocks
  for (const row of [q41, q8, bf16[1]]) assert.ok(row.teacherForcedAgree! >= Q8ACT_FORCED, `${row.weights} -> ${row.format}: teacher-forced ${row.teacherForcedAgree}/128 (at least ${Q8ACT_FORCED})`);
  // measured once per process: the same rows again
  assert.equal((await decodeRows({ kind: 'bf16' }, { shape: 'tiny' }))[0], bf16[0]);
});

test('a vocabulary larger than the byte tokenizer is padded in the GGUF file, and llama.cpp agrees with ours on it', { skip, timeout: 120_000 }, async (t) => {
  const config = { ...preset('tiny'), vocabSize: 1024 };
  const [row] = await decodeRows({ kind: 'intn', bits: 4, groupSize: 32 }, { shape: 'tiny-v1024', config });
  checkOk(row, t);
  assert.equal(row.shape, 'tiny-v1024');
  assert.ok(row.teacherForcedAgree! >= Q8ACT_FORCED, `teacher-forced ${row.teacherForcedAgree}/128 (at least ${Q8ACT_FORCED})`);
  // without padVocabulary the exporter refuses the model, saying what to pass
  const model = decodeShapeModel(config, { kind: 'bf16' });
  const dir = mkdtempSync(join(tmpdir(), 'tb-decode-test-'));
  try {
    assert.throws(() => exportGguf(model, join(dir, 'x.gguf'), { type: 'f16', tokenizer: new ByteTokenizer() }), /vocab_size is 1024 \(padVocabulary: true/);
    const s = exportGguf(model, join(dir, 'x.gguf'), { type: 'f16', tokenizer: new ByteTokenizer(), padVocabulary: true });
    assert.deepEqual(s.tensors.find((x) => x.name === 'token_embd.weight')!.ne, [64, 1024]);
    const f = readGguf(join(dir, 'x.gguf'));
    const tokens = f.metadata.get('tokenizer.ggml.tokens') as { value: string[] } | undefined;
    assert.equal(tokens?.value.length, 1024);
    assert.equal(tokens?.value[259], '<unused259>');
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the decode-shape model does not settle on one repeated token: agreement is not trivial', () => {
  for (const [shape, w] of [['tiny', { kind: 'intn', bits: 4, groupSize: 32 }], ['mini', { kind: 'bf16' }]] as const) {
    const model = decodeShapeModel(shape, w);
    try {
      const { tokens } = generate(model, decodePrompt(32), { maxNewTokens: 128 });
      const distinct = new Set(tokens).size;
      assert.ok(distinct >= 20, `${shape}: ${distinct} distinct greedy tokens in 128 (at least 20; 1 to 3 with every weight at 0.02)`);
    } finally {
      model.dispose();
    }
  }
});

test("INT8 g32 on Q8_0's grid exports to Q8_0 exactly: the file's values are our weights", () => {
  const model = decodeShapeModel('tiny', { kind: 'intn', bits: 8, groupSize: 32 });
  const dir = mkdtempSync(join(tmpdir(), 'tb-decode-test-'));
  try {
    exportGguf(model, join(dir, 'q8.gguf'), { type: 'q8_0', tokenizer: new ByteTokenizer() });
    const f = readGguf(join(dir, 'q8.gguf'));
    for (const [name, gg] of [['model.layers.0.self_attn.v_proj', 'blk.0.attn_v.weight'], ['model.layers.1.mlp.down_proj', 'blk.1.ffn_down.weight']] as const) {
      const l = model.linears().get(name);
      assert.ok(l instanceof IntNLinear && l.quantized.bits === 8 && l.quantized.groupSize === 32, `${name} is INT8 g32`);
      const dense = l.toDense(), ours = dense.toFloat32();
      dense.dispose();
      const file = f.read(gg);
      assert.equal(file.length, ours.length);
      for (let i = 0; i < ours.length; i++) if (file[i] !== ours[i]) assert.fail(`${gg}[${i}]: file ${file[i]}, ours ${ours[i]}`);
    }
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('when node-llama-cpp cannot load, the rows say why and ours is timed alone; failures and missing forms are rows, not throws', async () => {
  const loadLlamaCpp = () => Promise.reject(new Error('no prebuilt binary for this test'));
  const rows = await decodeRows({ kind: 'bf16' }, { shape: 'tiny', newTokens: 16, repeats: 1, loadLlamaCpp });
  assert.deepEqual(rows.map((r) => r.format), ['F16', 'Q8_0']);
  for (const r of rows) {
    assert.equal(r.status, 'unavailable');
    assert.match(r.statusText!, /no prebuilt binary for this test; ours timed alone/);
    assert.ok(r.ours!.decodeTokensPerSecond > 0 && r.ours!.prefillTokensPerSecond > 0);
    assert.equal(r.llamaCpp, undefined);
    assert.equal(r.tokensAgree, undefined);
  }
  const [bad] = await decodeRows({ kind: 'intn', bits: 4, groupSize: 32 }, { shape: 'no-such-preset', loadLlamaCpp });
  assert.equal(bad.status, 'error');
  assert.match(bad.statusText!, /decode shape 'no-such-preset' is not a model preset/);
  const [long] = await decodeRows({ kind: 'bf16' }, { shape: 'tiny', newTokens: 300, loadLlamaCpp });
  assert.equal(long.status, 'error');
  assert.match(long.statusText!, /32 \+ 300 tokens exceed tiny's 256 positions/);
  const [g16] = await decodeRows({ kind: 'intn', bits: 4, groupSize: 16 }, { shape: 'tiny', loadLlamaCpp });
  assert.deepEqual([g16.format, g16.status], [null, 'no-gguf']);
  assert.match(g16.statusText!, /INT4 g16 has no exact GGUF form.*ours timed alone/);
  assert.ok(g16.ours!.decodeTokensPerSecond > 0 && g16.llamaCpp === undefined);
  const [nf4] = await decodeRows({ kind: '4bit', format: 'nf4', blockSize: 64 }, { shape: 'tiny', loadLlamaCpp });
  assert.deepEqual([nf4.format, nf4.status], [null, 'no-gguf']);
  assert.match(nf4.statusText!, /llama\.cpp has no NF4 blocks.*ours timed alone/);
  assert.ok(nf4.ours!.decodeTokensPerSecond > 0 && nf4.llamaCpp === undefined);
});

test("the rounds' range pairs each of our runs with llama.cpp's run of the same round", () => {
  const t = (d: number, p: number) => ({ tokens: [], decodeTokensPerSecond: d, prefillTokensPerSecond: p });
  const ours = [t(100, 10), t(120, 30), t(90, 20)], cpp = [t(100, 20), t(80, 10), t(120, 20)];
  assert.deepEqual(roundRange(ours, cpp, (r) => r.decodeTokensPerSecond), [0.75, 1.5]);
  assert.deepEqual(roundRange(ours, cpp, (r) => r.prefillTokensPerSecond), [0.5, 3]);
});

test('greedy agreement counts identical positions and the first difference', () => {
  assert.deepEqual(tokenAgreement([1, 2, 3, 4], [1, 2, 3, 4]), { tokensAgree: 4, firstDivergence: 4 });
  assert.deepEqual(tokenAgreement([1, 2, 3, 4], [1, 9, 3, 9]), { tokensAgree: 2, firstDivergence: 1 });
});

test('the suites name their decode shape; a suite file may set one, or none', () => {
  assert.equal(BUILTIN_SUITES.ci.decodeShape, 'small');
  assert.equal(BUILTIN_SUITES.cpu.decodeShape, undefined, 'cpu: the default, smollm-135m');
  assert.equal(BUILTIN_SUITES.gpu.decodeShape, 'none');
  const base = structuredClone(BUILTIN_SUITES.ci);
  assert.equal(validateSuite({ ...base, decodeShape: 'smollm-135m' }, 'x').decodeShape, 'smollm-135m');
  assert.equal(validateSuite({ ...base, decodeShape: 'none' }, 'x').decodeShape, 'none');
  assert.throws(() => validateSuite({ ...base, decodeShape: 'qwen2.5-0.5b' }, 'x'), /decodeShape: must be 'none' or a plain Llama preset: .*smollm-135m/);
  assert.throws(() => validateSuite({ ...base, decodeShape: 'nope' }, 'x'), /decodeShape/);
});

// ---- the reports

function run(llamaCpp: DecodeRow[]): RunRecord {
  return {
    id: 'spam/qa-lora/r=8', suite: 'ci', task: 'spam', method: 'qalora4-r8', settings: { r: 8 }, status: 'ok', metrics: { accuracy: 0.9 },
    memory: { peakTotal: 1, peak: { frozen: 1, trainable: 0, grad: 0, optimizer: 0, optimizer_host: 0, activation: 0, workspace: 0 } },
    speed: { tokensPerSecond: 100, msPerStep: { forward: 1, backward: 1, optimizer: 1, total: 3 } },
    trainableParameters: 1, totalParameters: 2, fileBytes: 3, lossCurve: [1, 0.5], referenceMs: 1,
    provenance: { commit: 'abc', packages: {}, backend: 'cpu', device: 'cpu', cpu: 'x', gemm: 'g', seed: 0, node: 'v20' },
    startedAt: '2026-01-01T00:00:00Z', durationMs: 10,
    deployable: [{ kind: 'QA-LoRA merged INT4', bits: 5, bytes: 100, metrics: { accuracy: 0.9 }, decodeTokensPerSecond: 500, weights: { kind: 'intn', bits: 4, groupSize: 32 }, llamaCpp }],
  };
}

const ROWS: DecodeRow[] = [
  {
    format: 'Q4_1', exact: true, shape: 'smollm-135m', weights: 'INT4 g32 (RTN)', status: 'ok', threads: 1, promptTokens: 32, newTokens: 128, repeats: 2,
    ours: { decodeTokensPerSecond: 58, prefillTokensPerSecond: 111 }, llamaCpp: { decodeTokensPerSecond: 76, prefillTokensPerSecond: 184, version: 'llama.cpp vX (node-llama-cpp prebuilt)' },
    ratioDecode: 58 / 76, ratioPrefill: 111 / 184, ratioDecodeRange: [0.7, 0.8], ratioPrefillRange: [0.55, 0.65], tokensAgree: 120, firstDivergence: 97, teacherForcedAgree: 125,
  },
];

test("the bench's decode activations: the fastest built by default, a request kept where built, and a row records what ran", () => {
  const i8 = decodeI8Available(), i16 = decodeI16Available();
  assert.equal(benchDecodeActivations(), i8 ? 'i8' : i16 ? 'i16' : 'f32');
  assert.equal(benchDecodeActivations('f32'), 'f32');
  assert.equal(benchDecodeActivations('i16'), i16 ? 'i16' : 'f32');
  assert.equal(benchDecodeActivations('i8'), i8 ? 'i8' : i16 ? 'i16' : 'f32');
  const model = decodeShapeModel({ ...preset('tiny'), numLayers: 1 }, { kind: 'intn', bits: 4, groupSize: 32 });
  try {
    const row = decodeSpeed(model, undefined);
    assert.equal(row.decodeActivations, benchDecodeActivations());
    assert.ok(row.decodeTokensPerSecond > 0);
    assert.equal(decodeSpeed(model, 'f32').decodeActivations, 'f32');
  } finally {
    model.dispose();
  }
});

test('the record, results.csv, summary.md and report.html carry the decode rows', { timeout: 60_000 }, async () => {
  const r = run(ROWS);
  const [, dep] = withDeployables([r]);
  assert.deepEqual(dep.deployable_?.llamaCpp, ROWS);
  const csv = resultsCsv([r]).trim().split('\n');
  const head = csv[0].split(','), row = csv[2].split(',');
  const col = (n: string) => { const i = head.indexOf(n); assert.ok(i >= 0, `results.csv has ${n}`); return row[i]; };
  assert.equal(col('llamaCpp.shape'), 'smollm-135m');
  assert.equal(col('llamaCpp.threads'), '1');
  assert.equal(col('llamaCpp.Q4_1.status'), 'ok');
  assert.equal(col('llamaCpp.Q4_1.exact'), 'true');
  assert.equal(col('llamaCpp.Q4_1.ours.decodeTokensPerSecond'), '58');
  assert.equal(col('llamaCpp.Q4_1.llamaCpp.decodeTokensPerSecond'), '76');
  assert.equal(Number(col('llamaCpp.Q4_1.ratioDecode')), 58 / 76);
  assert.equal(col('llamaCpp.Q4_1.ratioDecodeLow'), '0.7');
  assert.equal(col('llamaCpp.Q4_1.ratioDecodeHigh'), '0.8');
  assert.equal(col('llamaCpp.Q4_1.ratioPrefillLow'), '0.55');
  assert.equal(col('llamaCpp.Q4_1.ratioPrefillHigh'), '0.65');
  assert.equal(col('llamaCpp.Q4_1.ours.prefillTokensPerSecond'), '111');
  assert.equal(col('llamaCpp.Q4_1.llamaCpp.prefillTokensPerSecond'), '184');
  assert.equal(col('llamaCpp.Q4_1.tokensAgree'), '120');
  assert.equal(col('llamaCpp.Q4_1.firstDivergence'), '97');
  assert.equal(col('llamaCpp.Q4_1.teacherForcedAgree'), '125');
  assert.equal(csv[1].split(',')[head.indexOf('llamaCpp.Q4_1.status')], '', 'the trained run has no decode cells');

  const md = renderSummary([r]);
  assert.match(md, /decode beside llama\.cpp \(smollm-135m, 1 thread; .*32 prompt ids, 128 greedy tokens; best of 2 interleaved runs each; our quantized projections' activations 'i16'\)/);
  assert.match(md, /decode tokens\/s: our generate\(\), the quantized projections' activations 'i16' \(--decode-activations\)/);
  assert.match(md, /\| qalora4-r8 \| QA-LoRA merged INT4 \| INT4 g32 \(RTN\) \| Q4_1 \(exact\) \| 111 \| 184 \| 0\.60x \(rounds 0\.55-0\.65\) \| 58 \| 76 \| 0\.76x \(rounds 0\.70-0\.80\) \| 120 of 128, first difference at 97 \| 125 of 128 \| ok \|/);

  const html = await renderReport([r]);
  assert.match(html, /data-chart="decode"/);
  const fig = html.slice(html.indexOf('data-chart="decode"'));
  assert.match(fig.slice(0, fig.indexOf('</figure>')), /<svg/);
  assert.match(fig, /120\/128 \(first at 97\)/);
  assert.match(fig, /125\/128/);
  assert.match(fig, /0\.76x \(rounds 0\.70-0\.80\)/);

  // llama.cpp unavailable: the row's status is shown, ours alone
  const off = run([{ ...ROWS[0], status: 'unavailable', statusText: 'node-llama-cpp could not load its prebuilt CPU binary for linux-riscv64: none; ours timed alone', llamaCpp: undefined, ratioDecode: undefined, ratioPrefill: undefined, tokensAgree: undefined, firstDivergence: undefined, teacherForcedAgree: undefined }]);
  assert.match(renderSummary([off]), /\| 111 \| - \| - \| 58 \| - \| - \| - \| - \| unavailable: node-llama-cpp could not load its prebuilt CPU binary for linux-riscv64: none; ours timed alone \|/);
  assert.match(await renderReport([off]), /data-chart="decode"/);
  // no decode rows: no decode chart, no table
  const none = run([]);
  delete none.deployable![0].llamaCpp;
  assert.doesNotMatch(renderSummary([none]), /decode beside llama\.cpp/);
  assert.doesNotMatch(await renderReport([none]), /data-chart="decode"/);
});
