// The options that choose and shape a suite, shared by the main command and
// `tunebench jobs`: every one is checked before anything runs.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DATASET_KINDS, type DatasetKind, type Device, native, parseCheckpointing, resolveDevice } from '@tunebench/core';
import {
  BUILTIN_SUITES, DECODE_ACTIVATION_NAMES, PEERS, type PeerName, type Suite, TASKS, type TaskName, decodeShapeNames, isDecodeShape, loadSuiteFile, parseMethods, validateSuite,
} from '../suite.js';

/** parseCli's specification of the suite options. */
export const SUITE_OPTIONS = {
  suite: { type: 'string' }, methods: { type: 'string' }, tasks: { type: 'string' }, model: { type: 'string' },
  dataset: { type: 'string' }, 'dataset-format': { type: 'string' }, peers: { type: 'string' }, device: { type: 'string' }, seeds: { type: 'string' },
  checkpointing: { type: 'string' }, offload: { type: 'boolean', default: false }, 'tune-lr': { type: 'boolean', default: false }, packing: { type: 'string' },
  'decode-shape': { type: 'string' },
  'decode-activations': { type: 'string' },
} as const;

export interface SuiteArgs {
  suite?: string; methods?: string; tasks?: string; model?: string; dataset?: string; 'dataset-format'?: string; peers?: string; device?: string; seeds?: string;
  checkpointing?: string; offload?: boolean; 'tune-lr'?: boolean; packing?: string; 'decode-shape'?: string; 'decode-activations'?: string;
}

function cudaReason(): string {
  try { return resolveDevice('cuda') && 'usable'; } catch (e) { return (e as Error).message.replace(/^device cuda: /, ''); }
}

/** The suite and device the options ask for; `fail` reports a problem (and exits). */
export function suiteFromArgs(opt: SuiteArgs, fail: (msg: string) => never): { suite: Suite; device: Device; suiteName: string } {
  // --- every option is checked before anything runs ---
  const deviceChoice = opt.device ?? 'auto';
  if (deviceChoice !== 'auto' && deviceChoice !== 'cpu' && deviceChoice !== 'cuda') fail(`--device must be auto, cpu or cuda, got '${deviceChoice}'`);
  let device!: Device;
  try { device = resolveDevice(deviceChoice); } catch (e) { fail(`--device ${deviceChoice}: ${(e as Error).message.replace(/^device cuda: /, '')}`); }
  let suite: Suite;
  const suiteName = opt.suite ?? 'cpu';
  try {
    const builtin = Object.hasOwn(BUILTIN_SUITES, suiteName);
    if (builtin) suite = structuredClone(BUILTIN_SUITES[suiteName]);
    else if (existsSync(suiteName)) suite = loadSuiteFile(suiteName);
    else fail(`--suite: '${suiteName}' is neither a built-in suite (${Object.keys(BUILTIN_SUITES).join(', ')}) nor a file`);
    // the built-in gpu suite; a suite file that calls itself 'gpu' is judged by what it asks for
    if (builtin && suiteName === 'gpu' && device !== 'cuda') {
      fail(`--suite gpu needs the CUDA backend (${deviceChoice === 'cpu' ? '--device cpu was given' : native.cudaCompiled ? cudaReason() : 'this build has no CUDA backend'}); use --suite cpu on this machine`);
    }
    // a method the suite has keeps the suite's settings (its learning rate); others take their defaults
    if (opt.methods) { const own = suite.methods; suite.methods = parseMethods(opt.methods).map((m) => own.find((o) => o.label === m.label) ?? m); }
    if (opt.checkpointing !== undefined) suite.shared.checkpointing = parseCheckpointing(opt.checkpointing);
    if (opt.offload) suite.shared.offload = true;
    if (opt['tune-lr']) suite.tuneLr = suite.tuneLr ?? {};
    if (opt.seeds !== undefined) {
      const n = Number(opt.seeds);
      if (!Number.isInteger(n) || n < 1 || n > 100) fail(`--seeds must be a whole number from 1 to 100, got '${opt.seeds}'`);
      suite.shared.seeds = Array.from({ length: n }, (_, i) => suite.shared.seed + i);
    }
    if (opt.packing !== undefined) {
      if (opt.packing !== 'pack' && opt.packing !== 'pad') fail(`--packing must be pack or pad, got '${opt.packing}'`);
      suite.shared.packing = opt.packing;
    }
    if (opt['decode-shape'] !== undefined) {
      const d = opt['decode-shape'];
      if (d !== 'none' && !isDecodeShape(d)) fail(`--decode-shape must be none or a plain Llama preset (${decodeShapeNames().join(', ')}), got '${d}'`);
      suite.decodeShape = d;
    }
    if (opt['decode-activations'] !== undefined) {
      const a = opt['decode-activations'];
      if (!(DECODE_ACTIVATION_NAMES as readonly string[]).includes(a)) fail(`--decode-activations must be ${DECODE_ACTIVATION_NAMES.join(', ')}, got '${a}'`);
      suite.decodeActivations = a as (typeof DECODE_ACTIVATION_NAMES)[number];
    }
    if (opt.tasks) {
      const tasks = opt.tasks.split(',').map((t) => t.trim());
      for (const t of tasks) if (!TASKS.includes(t as TaskName)) fail(`--tasks: unknown task '${t}' (known: ${TASKS.join(', ')})`);
      suite.tasks = tasks as TaskName[];
    }
    if (opt.dataset) {
      if (!existsSync(opt.dataset)) fail(`--dataset: ${opt.dataset} does not exist`);
      suite.dataset = resolve(opt.dataset);
      if (!opt.tasks) suite.tasks = ['jsonl'];
    }
    if (opt['dataset-format'] !== undefined) {
      const f = opt['dataset-format'];
      if (f !== 'auto' && !(DATASET_KINDS as readonly string[]).includes(f)) fail(`--dataset-format must be auto, text, sft or chat, got '${f}'`);
      suite.datasetFormat = f as DatasetKind | 'auto';
    }
    if (opt.model) {
      if (!existsSync(join(opt.model, 'config.json'))) fail(`--model: ${opt.model} has no config.json (a Hugging Face LlamaForCausalLM directory is expected)`);
      suite.base = { hfDir: resolve(opt.model) };
      // the built-in suites' peers are sized for their small bases; with a real
      // model TensorFlow.js's pure-JS steps would take hours: ask for them by name
      if (opt.peers === undefined && builtin && suite.peers) {
        console.error('tunebench: --model: the suite\'s peers are left out (TensorFlow.js would be very slow on a real model); --peers tfjs,pytorch runs them');
        suite.peers = {};
      }
    }
    if (opt.peers !== undefined) {
      const names = opt.peers === 'none' ? [] : opt.peers.split(',').map((x) => x.trim()).filter(Boolean);
      for (const n of names) if (!PEERS.includes(n as PeerName)) fail(`--peers: unknown peer '${n}' (known: ${PEERS.join(', ')}, or none)`);
      const kept: NonNullable<Suite['peers']> = {};
      for (const n of names as PeerName[]) kept[n] = suite.peers?.[n] ?? (n === 'tfjs' ? { steps: 3 } : {});
      suite.peers = kept;
    }
    // --methods / --tasks may have removed what a peer was to redo
    for (const [n, sel] of Object.entries(suite.peers ?? {}) as [PeerName, NonNullable<Suite['peers']>[PeerName]][]) {
      if (!sel) continue;
      if (sel.methods) sel.methods = sel.methods.filter((l) => suite.methods.some((m) => m.label === l));
      if (sel.tasks) sel.tasks = sel.tasks.filter((t) => suite.tasks.includes(t));
      if (sel.tasks?.length === 0) delete sel.tasks;
      if (sel.methods?.length === 0) delete suite.peers![n];
      else if (sel.steps !== undefined) sel.steps = Math.min(sel.steps, suite.shared.steps);
    }
    suite = validateSuite(suite, `suite ${suite.name}`);
  } catch (e) {
    fail((e as Error).message);
  }
  return { suite: suite!, device, suiteName };
}
