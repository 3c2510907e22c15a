// Child process of fuzz.test.ts: runs reader cases one by one and prints one
// JSON line per case: {i, outcome: 'ok' | 'error' | 'bad-ok', message, ...}.
// A crash, a signal or a hang is seen by the parent (which kills and restarts
// us from the next case), so nothing here needs to survive one.
//
//   node --max-old-space-size=512 --stack-size=984 test/fuzz_child.mjs CASES.json [START]
//   node test/fuzz_child.mjs --make-checkpoint PATH adamw|adamw8bit
//
// CASES.json is a list of {i, reader, path, ...}; a failing case's directory
// holds a one-case list (case.json) to replay it with this same command.
import { readFileSync, writeSync } from 'node:fs';
import {
  ArrayDataSource, ByteTokenizer, HfTokenizer, LlamaModel, Trainer, loadCheckpoint, saveCheckpoint, loadHfModel, makeOptimizer, preset, prepareDataset, readJsonl,
  readSafetensors,
} from '@tunebench/core';
import { loadAdapter } from '@tunebench/lora';
import { loadSuiteFile } from '../dist/index.js';

const INTERNAL = /Cannot read properties|is not a function|is not iterable|Maximum call stack|undefined is not|Invalid regular expression|of undefined|of null/;

// The trainer a checkpoint case loads into, and that wrote the base
// checkpoint (--make-checkpoint): a model far smaller than the tiny preset,
// so that each case's file is a few kilobytes.
const CKPT_CONFIG = {
  vocabSize: 32, hiddenSize: 16, intermediateSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1,
  rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 16, tieWordEmbeddings: true,
};
function ckptRows() {
  const rows = [];
  for (let r = 0; r < 4; r++) {
    const ids = new Int32Array(8), targets = new Int32Array(8);
    for (let t = 0; t < 8; t++) { ids[t] = (r * 5 + t) % 32; targets[t] = (r * 5 + t + 1) % 32; }
    rows.push({ ids, targets });
  }
  return rows;
}
function ckptTrainer(optimizer) {
  const model = LlamaModel.init(CKPT_CONFIG, { seed: 3 });
  const trainer = new Trainer(model, new ArrayDataSource(ckptRows(), 2, 3), {
    schedule: { kind: 'constant', lr: 1e-3, warmupSteps: 0, totalSteps: 100 }, seed: 3,
    ...(optimizer === 'adamw8bit' ? { optimizerFactory: makeOptimizer('adamw8bit') } : {}),
  });
  return { model, trainer, dispose: () => { trainer.dispose(); model.dispose(); } };
}

/** Runs one case; returns a description of a bad successful load, or null. */
function runCase(c) {
  switch (c.reader) {
    case 'safetensors': {
      const { tensors } = readSafetensors(c.path);
      for (const t of tensors.values()) t.dispose();
      return null;
    }
    case 'hf': {
      loadHfModel(c.path, { trainable: false }).dispose();
      return null;
    }
    case 'adapter': {
      const model = LlamaModel.init(preset('tiny'), { seed: 5, dtype: 'bf16', trainable: false });
      try {
        loadAdapter(model, c.path);
      } finally {
        model.dispose();
      }
      return null;
    }
    case 'tokenizer': {
      const tok = HfTokenizer.fromDir(c.path);
      // a loaded tokenizer must encode into its vocabulary (a text piece it
      // has no token for, without an unknown token, is a clean refusal), and
      // in time: a pattern of the file that backtracks exponentially (a Split
      // pre-tokenizer "(a+)+$") shows here as a hang
      let ids;
      try {
        ids = tok.encode(`hello world! ${'a'.repeat(40)}!`);
      } catch (e) {
        const m = e instanceof Error ? e.message : String(e);
        return INTERNAL.test(m) || !(e instanceof Error) ? `loaded, then encode() threw: ${m}` : null;
      }
      const bad = ids.find((id) => !Number.isInteger(id) || id < 0 || id >= tok.vocabSize);
      if (bad !== undefined) return `loaded, then encode() gave id ${bad} outside [0, ${tok.vocabSize})`;
      return null;
    }
    case 'jsonl': {
      const d = readJsonl(c.path);
      if (!d.rows.length) return 'loaded an empty dataset';
      // chat rows are rendered (the default template, the byte tokenizer): a row the reader took must render,
      // and give each conversation a target
      if (d.kind === 'chat') {
        const rows = prepareDataset(d, new ByteTokenizer(), 512, { packing: 'pad' });
        if (rows.stats.rowsWithoutTargets) return `a chat dataset loaded, but ${rows.stats.rowsWithoutTargets} conversation(s) have no target`;
      }
      return null;
    }
    case 'checkpoint': {
      const t = ckptTrainer(c.optimizer);
      try {
        loadCheckpoint(t.trainer, c.path);
        // a checkpoint that loads must leave a trainer that can train
        try {
          t.trainer.trainStep();
        } catch (e) {
          return `loaded, then trainStep() threw: ${e instanceof Error ? e.message : String(e)}`;
        }
      } finally {
        t.dispose();
      }
      return null;
    }
    case 'suite': {
      loadSuiteFile(c.path);
      return null;
    }
    default:
      throw new Error(`fuzz_child: unknown reader ${c.reader}`);
  }
}

function emit(obj) {
  // pipes are written synchronously: a line is out before a later crash
  writeSync(1, `${JSON.stringify(obj)}\n`);
}

const [casesFile, startArg] = process.argv.slice(2);
if (casesFile === '--make-checkpoint') {
  // the base checkpoint: two steps trained, then saved (argv: path, optimizer)
  const t = ckptTrainer(process.argv[4]);
  t.trainer.trainStep();
  t.trainer.trainStep();
  saveCheckpoint(t.trainer, startArg);
  t.dispose();
} else if (casesFile) {
  const cases = JSON.parse(readFileSync(casesFile, 'utf8'));
  for (let k = Number(startArg ?? 0); k < cases.length; k++) {
    const c = cases[k];
    const t0 = performance.now();
    let line;
    try {
      const bad = runCase(c);
      line = bad === null ? { i: c.i, outcome: 'ok', message: '' } : { i: c.i, outcome: 'bad-ok', message: bad };
    } catch (e) {
      const isError = e instanceof Error;
      const message = isError ? e.message : `non-Error thrown: ${String(e)}`;
      line = { i: c.i, outcome: 'error', message: message.length > 20000 ? `${message.slice(0, 20000)}...` : message, isError, name: isError ? e.name : typeof e };
    }
    line.ms = Math.round(performance.now() - t0);
    // the child's resident-set high-water mark so far (KiB on Linux): its growth over a case bounds that case's peak
    line.maxRssKiB = process.resourceUsage().maxRSS;
    emit(line);
  }
}
