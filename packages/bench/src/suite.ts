// Suites: lists of runs (task x method x settings) sharing data order, seed,
// steps, batch, sequence length and schedule shape. Built-in suites, or a
// JSON file (format in README.md).
import { existsSync, readFileSync } from 'node:fs';
import { type CheckpointingMode, parseCheckpointing } from '@tunebench/core';
import { CI_METHODS, DEFAULT_METHODS, type MethodSpec, methodNames, methodPlugin, parseMethods } from './methods.js';

export { type MethodSpec, parseMethods, DEFAULT_METHODS, CI_METHODS };

export type TaskName = 'spam' | 'adapt' | 'jsonl';
export const TASKS: readonly TaskName[] = ['spam', 'adapt', 'jsonl'];

export interface Suite {
  name: string;
  /** base model: a preset pretrained on Brown (cached), or a Hugging Face directory */
  base: { preset?: string; pretrainSteps?: number; hfDir?: string };
  tasks: TaskName[];
  methods: MethodSpec[];
  /** identical for every method */
  shared: {
    steps: number; batchSize: number; seqLen: number; seed: number; schedule: 'cosine' | 'constant'; warmupSteps: number; maxTrain?: number; maxTest?: number;
    /** activation checkpointing of every run: 'off' (default), 'block' or 'every:<k>'; a method row may set its own */
    checkpointing?: CheckpointingMode;
    /** move the kept block inputs to host memory (a device notion: on the CPU backend they are host memory already, so it is the identity and recorded as such) */
    offload?: boolean;
  };
  /** user JSONL file for the jsonl task */
  dataset?: string;
  /** peers redoing some of the runs (same weights, batches, learning rates) */
  peers?: PeerSpec;
  /** kernel microbenchmarks at the suite's shapes after the runs (default true) */
  kernels?: boolean;
}

export interface PeerSelection {
  /** method labels to redo (default: every method) */
  methods?: string[];
  /** tasks to redo (default: the first task of the suite) */
  tasks?: TaskName[];
  /** steps to redo (default: the suite's steps); the first ones of our run */
  steps?: number;
}

export interface PeerSpec {
  /** TensorFlow.js (cpu backend): slow, so a few steps */
  tfjs?: PeerSelection;
  /** PyTorch on the CPU, when a python3 with torch is present */
  pytorch?: PeerSelection & { threads?: number };
}

export const PEERS = ['tfjs', 'pytorch'] as const;
export type PeerName = (typeof PEERS)[number];

export const BUILTIN_SUITES: Record<string, Suite> = {
  // CI: seconds per run on 2 cores; the regression baseline is kept for it
  ci: {
    name: 'ci', base: { preset: 'tiny', pretrainSteps: 300 }, tasks: ['spam', 'adapt'], methods: CI_METHODS,
    shared: { steps: 30, batchSize: 8, seqLen: 128, seed: 0, schedule: 'cosine', warmupSteps: 3, maxTrain: 400, maxTest: 200 },
    peers: { tfjs: { methods: ['full', 'lora-r8'], tasks: ['spam'], steps: 4 }, pytorch: { tasks: ['spam'] } },
  },
  // CPU: the small base, minutes per run
  cpu: {
    name: 'cpu', base: { preset: 'small' }, tasks: ['spam', 'adapt'], methods: DEFAULT_METHODS,
    shared: { steps: 200, batchSize: 8, seqLen: 256, seed: 0, schedule: 'cosine', warmupSteps: 10 },
    peers: { tfjs: { methods: ['full', 'lora-r8'], tasks: ['spam'], steps: 3 }, pytorch: { tasks: ['spam'] } },
  },
  // GPU: a published model shape; needs the CUDA backend
  gpu: {
    name: 'gpu', base: { preset: 'smollm-135m' }, tasks: ['spam', 'adapt'], methods: DEFAULT_METHODS,
    shared: { steps: 300, batchSize: 16, seqLen: 512, seed: 0, schedule: 'cosine', warmupSteps: 20 },
  },
};

/** A suite from a JSON file; every problem is reported before anything runs. */
export function loadSuiteFile(path: string): Suite {
  if (!existsSync(path)) throw new Error(`suite file ${path} does not exist`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Error(`suite file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return validateSuite(raw, path);
}

export function validateSuite(raw: unknown, where: string): Suite {
  const p: string[] = [];
  const s = raw as Partial<Suite>;
  if (!s || typeof s !== 'object') throw new Error(`${where}: a suite is a JSON object`);
  if (typeof s.name !== 'string' || !/^[\w.-]+$/.test(s.name)) p.push('name must be a word (letters, digits, - _ .)');
  if (!s.base || typeof s.base !== 'object' || (!s.base.preset && !s.base.hfDir)) p.push('base must give a preset or an hfDir');
  if (!Array.isArray(s.tasks) || s.tasks.length === 0 || s.tasks.some((t) => !TASKS.includes(t))) p.push(`tasks must be a non-empty list of ${TASKS.join(', ')}`);
  if (!Array.isArray(s.methods) || s.methods.length === 0) p.push('methods must be a non-empty list');
  else s.methods.forEach((m, i) => {
    if (!methodNames().includes(m.name)) p.push(`methods[${i}].name must be one of ${methodNames().join(', ')}`);
    else p.push(...methodPlugin(m.name).validate(m).map((e) => `methods[${i}].${e}`));
    if (!(typeof m.lr === 'number' && m.lr > 0)) p.push(`methods[${i}].lr must be a positive number`);
    if (m.checkpointing !== undefined) { try { parseCheckpointing(m.checkpointing); } catch (e) { p.push(`methods[${i}].${(e as Error).message}`); } }
    if (typeof m.label !== 'string' || !m.label) p.push(`methods[${i}].label must be a non-empty string`);
    else if (s.methods!.findIndex((o) => o.label === m.label) !== i) p.push(`methods[${i}].label '${m.label}' is used twice`);
  });
  const sh = s.shared as Suite['shared'] | undefined;
  if (!sh || typeof sh !== 'object') p.push('shared must give steps, batchSize, seqLen, seed, schedule, warmupSteps');
  else {
    for (const k of ['steps', 'batchSize', 'seqLen'] as const) if (!(Number.isInteger(sh[k]) && sh[k] > 0)) p.push(`shared.${k} must be a positive integer`);
    if (!Number.isInteger(sh.seed)) p.push('shared.seed must be an integer');
    if (sh.schedule !== 'cosine' && sh.schedule !== 'constant') p.push("shared.schedule must be 'cosine' or 'constant'");
    if (!(Number.isInteger(sh.warmupSteps) && sh.warmupSteps >= 0)) p.push('shared.warmupSteps must be an integer >= 0');
    if (sh.offload !== undefined && typeof sh.offload !== 'boolean') p.push('shared.offload must be true or false');
    if (sh.checkpointing !== undefined) { try { parseCheckpointing(sh.checkpointing); } catch (e) { p.push(`shared.${(e as Error).message}`); } }
  }
  if (s.tasks?.includes('jsonl') && !s.dataset) p.push("the jsonl task needs 'dataset' (a JSONL file)");
  if (s.kernels !== undefined && typeof s.kernels !== 'boolean') p.push('kernels must be true or false');
  if (s.peers !== undefined) {
    if (!s.peers || typeof s.peers !== 'object') p.push(`peers must be an object with ${PEERS.join(' and/or ')}`);
    else for (const [k, v] of Object.entries(s.peers)) {
      if (!PEERS.includes(k as PeerName)) { p.push(`peers.${k}: unknown peer (known: ${PEERS.join(', ')})`); continue; }
      const sel = v as PeerSelection & { threads?: number };
      if (!sel || typeof sel !== 'object') { p.push(`peers.${k} must be an object`); continue; }
      const labels = Array.isArray(s.methods) ? s.methods.map((m) => m.label) : [];
      if (sel.methods !== undefined && (!Array.isArray(sel.methods) || sel.methods.some((m) => !labels.includes(m)))) p.push(`peers.${k}.methods must list method labels of this suite (${labels.join(', ')})`);
      if (sel.tasks !== undefined && (!Array.isArray(sel.tasks) || sel.tasks.some((t) => !s.tasks?.includes(t)))) p.push(`peers.${k}.tasks must list tasks of this suite`);
      const minSteps = k === 'tfjs' ? 3 : 2;
      if (sel.steps !== undefined && !(Number.isInteger(sel.steps) && sel.steps >= minSteps && (!sh || sel.steps <= sh.steps))) p.push(`peers.${k}.steps must be an integer from ${minSteps} to shared.steps`);
      if (sel.threads !== undefined && !(Number.isInteger(sel.threads) && sel.threads > 0)) p.push(`peers.${k}.threads must be a positive integer`);
    }
  }
  if (p.length) throw new Error(`${where}: ${p.join('; ')}`);
  return s as Suite;
}

