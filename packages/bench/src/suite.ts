// Suites: lists of runs (task x method x settings) sharing data order, seed,
// steps, batch, sequence length and schedule shape. Built-in suites, or a
// JSON file (format in README.md).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import {
  ByteTokenizer, ChatTemplate, type CheckpointingMode, type DatasetKind, type DecodeActivations, PRESETS, isPreset, checkRegularFile, configFromHf, parseCheckpointing, parseJson,
  readJsonl, readTextFile, HF_TOKENIZER_FILE, type Tokenizer,
} from '@tunebench/core';
import { hasOwnTokenizer, maxTokenId, taskTokenizer } from './tokenizer.js';
import type { TuneLrSpec } from './tune.js';
import { CI_METHODS, DEFAULT_METHODS, GPU_METHODS, type MethodSpec, methodNames, methodPlugin, parseMethods } from './methods.js';

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
    /** repeat each run with each of these seeds (adapter initialisation, data order); the
     * data split and the pretrained base keep `seed`. Default: [seed] */
    seeds?: number[];
    /** set by the runner on a seeded copy of the suite: the suite's own seed (the data split's) */
    dataSeed?: number;
    /** activation checkpointing of every run: 'off' (default), 'block' or 'every:<k>'; a method row may set its own */
    checkpointing?: CheckpointingMode;
    /** move the kept block inputs to host memory (a device notion: on the CPU backend they are host memory already, so it is the identity and recorded as such) */
    offload?: boolean;
    /** prompt/completion training rows: 'pack' (several examples per row, padding-free; the default) or
     * 'pad' (one example per row); evaluation always pads, cut per batch (dynamic padding) */
    packing?: 'pack' | 'pad';
    /** spam: each prompt (subject, blank line, body) cut to this many characters (default 2 * seqLen, about what fits in bytes) */
    promptChars?: number;
  };
  /** user JSONL file for the jsonl task */
  dataset?: string;
  /** the dataset's rows: 'auto' (default: the first row decides), 'text', 'sft' (prompt/completion) or 'chat' (messages, rendered with
   * base.hfDir's chat template, else the built-in default) */
  datasetFormat?: DatasetKind | 'auto';
  /** peers redoing some of the runs (same weights, batches, learning rates) */
  peers?: PeerSpec;
  /** kernel microbenchmarks at the suite's shapes after the runs (default true) */
  kernels?: boolean;
  /** choose each method's learning rate per task on validation data before its run (tune.ts) */
  tuneLr?: TuneLrSpec;
  /** speed and memory rows at published model shapes with random weights
   * (no task, no accuracy): each method trains `steps` steps; a row whose
   * planned peak exceeds the free memory is recorded as not fitting, not run */
  shapes?: ShapeRow[];
  /** the decode rows beside llama.cpp (decode_rows.ts): each deployable's
   * format rebuilt at this preset with random weights, exported to GGUF and
   * decoded by ours and llama.cpp (CPU backend only); 'none': no decode rows.
   * Default: smollm-135m (SmolLM-135M's blocks, where the weights dominate) */
  decodeShape?: string;
  /** what our decode steps' quantized projections multiply, for the deployables'
   * decode tokens/s and the decode rows (generate's decodeActivations): 'i8',
   * 'i16' or 'f32'; default: the fastest this build has ('i8' with AVX-512
   * VNNI; benchDecodeActivations) */
  decodeActivations?: DecodeActivations;
}

export interface ShapeRow {
  /** a model preset (core's PRESETS), e.g. tinyllama-1.1b */
  preset: string;
  batchSize: number;
  seqLen: number;
  /** optimizer steps; the first min(3, steps/4) are warm-up, left out of the speed */
  steps: number;
  /** --methods tokens, e.g. ['full', 'lora16', 'qlora16', 'qalora4-r16'] */
  methods: string[];
  checkpointing?: CheckpointingMode;
  /** peers that train the same shapes (their own random weights): pytorch */
  peers?: 'pytorch'[];
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
  // CI: seconds per run on 2 cores; the regression baseline is kept for it.
  // Sized so that every method learns both tasks (docs/benchmarks/2026-12-06-ci-regime.md,
  // 2026-12-06-ci-mini.md): the 'mini' base (hidden 128, so that QA-LoRA's
  // pooled adapters are not starved) pretrained 400 steps, 600 steps, 56-character
  // spam prompts (two examples per packed 128-token row, subject kept) and 400 test messages.
  ci: {
    name: 'ci', base: { preset: 'mini', pretrainSteps: 400 }, tasks: ['spam', 'adapt'], methods: CI_METHODS,
    shared: { steps: 600, batchSize: 8, seqLen: 128, seed: 0, schedule: 'cosine', warmupSteps: 20, maxTrain: 2000, maxTest: 400, promptChars: 56 },
    peers: { tfjs: { methods: ['full', 'lora-r8'], tasks: ['spam'], steps: 4 }, pytorch: { tasks: ['spam'] } },
    // the decode rows at the 'small' preset: CI seconds (SmolLM-135M's would take minutes)
    decodeShape: 'small',
  },
  // CPU: the small base, minutes per run. 120-character spam prompts keep the
  // subject and put two examples in each packed 256-token row: at the default
  // 512 (2 x seqLen) only the end of each prompt fitted, one example a row, and
  // the adapter rows ended at the majority class. The base is pretrained 300
  // steps: at 600 the held-out genre had nothing left to gain (full fine-tuning
  // -0.3% perplexity, LoRA r8 +0.7%); at 300 every method lowers it by 3-8%
  // and still learns spam (docs/benchmarks/2026-12-06-cpu-regime.md)
  cpu: {
    name: 'cpu', base: { preset: 'small', pretrainSteps: 300 }, tasks: ['spam', 'adapt'], methods: DEFAULT_METHODS,
    shared: { steps: 200, batchSize: 8, seqLen: 256, seed: 0, schedule: 'cosine', warmupSteps: 10, promptChars: 120 },
    peers: { tfjs: { methods: ['full', 'lora-r8'], tasks: ['spam'], steps: 3 }, pytorch: { tasks: ['spam'] } },
  },
  // GPU (needs the CUDA backend): accuracy rows on the 'medium' base (~25M
  // parameters, byte vocabulary) pretrained on Brown on the GPU, then speed and
  // memory rows at published shapes with random weights, PyTorch beside them.
  // Estimated (not measured) at about 6 minutes on one H100: pretraining ~1
  // min, 8 accuracy runs ~2 min, the shape rows ~2-3 min (host-side model
  // set-up of the 7B rows is a good part of it).
  gpu: {
    name: 'gpu', base: { preset: 'medium' }, tasks: ['spam', 'adapt'], methods: GPU_METHODS,
    shared: { steps: 150, batchSize: 16, seqLen: 512, seed: 0, schedule: 'cosine', warmupSteps: 10, maxTrain: 2000, maxTest: 400 },
    peers: { pytorch: { tasks: ['adapt'], steps: 20 } },
    kernels: false,
    // llama.cpp's rows run on the CPU: beside a GPU run they would compare two machines
    decodeShape: 'none',
    shapes: [
      { preset: 'smollm-135m', batchSize: 8, seqLen: 1024, steps: 8, methods: ['full', 'lora16', 'qlora16', 'qalora4-r16'], peers: ['pytorch'] },
      { preset: 'tinyllama-1.1b', batchSize: 4, seqLen: 1024, steps: 6, methods: ['full', 'lora16', 'qlora16', 'qalora4-r16'], peers: ['pytorch'] },
      // full fine-tuning of 7B at 8 x 1024 tokens plans far above 141 GB: recorded as not fitting on one H100 or H200
      { preset: 'llama-2-7b', batchSize: 8, seqLen: 1024, steps: 4, methods: ['full', 'lora16', 'qlora16', 'qalora4-r16'], peers: ['pytorch'] },
      // the architectures people fine-tune today (core's presets): q/k/v biases (Qwen2.5), q/k norms and
      // head_dim 128 (Qwen3), a 128k vocabulary (Llama 3.2), a sliding window of 4096 over 8 x 1024 tokens (Mistral)
      { preset: 'qwen2.5-0.5b', batchSize: 8, seqLen: 1024, steps: 6, methods: ['full', 'lora16', 'qlora16', 'qalora4-r16'], peers: ['pytorch'] },
      { preset: 'qwen3-0.6b', batchSize: 8, seqLen: 1024, steps: 6, methods: ['full', 'lora16', 'qlora16', 'qalora4-r16'], peers: ['pytorch'] },
      { preset: 'llama-3.2-1b', batchSize: 4, seqLen: 1024, steps: 6, methods: ['full', 'lora16', 'qlora16', 'qalora4-r16'], peers: ['pytorch'] },
      { preset: 'mistral-7b', batchSize: 4, seqLen: 1024, steps: 4, methods: ['lora16', 'qlora16'], peers: ['pytorch'] },
    ],
  },
};

/** A suite from a JSON file; every problem is reported before anything runs. */
export function loadSuiteFile(path: string): Suite {
  let raw: unknown;
  try {
    raw = parseJson(readTextFile(path, 'suite file'), `suite file ${path}`);
  } catch (e) {
    const m = (e as Error).message;
    throw new Error(m.includes(path) ? m : `suite file ${path}: ${m}`);
  }
  return validateSuite(raw, path);
}

// The suite schema (zod): types, ranges and the keys each object may have.
// Limits are far above any sensible run; they keep an absurd file (steps
// 1e12, r 1e9) from starting work it can never finish.
const int = (lo: number, hi: number) => z.number().int().min(lo).max(hi);
/** The values of a suite's decodeActivations (and --decode-activations). */
export const DECODE_ACTIVATION_NAMES = ['i16', 'f32', 'i8'] as const;

const checkpointingSchema = z.string().refine((v) => { try { parseCheckpointing(v); return true; } catch { return false; } },
  { message: "must be 'off', 'block' or 'every:<k>' with k a positive integer" });
const peerSelection = { methods: z.array(z.string()).optional(), tasks: z.array(z.enum(TASKS)).optional(), steps: int(2, 1e7).optional() };
const SUITE_SCHEMA = z.object({
  name: z.string().regex(/^[\w.-]+$/, 'must be a word (letters, digits, - _ .)').refine((v) => v !== '.' && v !== '..', 'must not be . or .. (the reports go to reports/<name>)'),
  base: z.object({
    preset: z.string().refine((v) => isPreset(v), { message: `must be a preset: ${Object.keys(PRESETS).join(', ')}` }).optional(),
    pretrainSteps: int(1, 1e6).optional(),
    hfDir: z.string().min(1).optional(),
  }).strict().refine((b) => (b.preset === undefined) !== (b.hfDir === undefined), 'must give a preset or an hfDir (one of them)'),
  tasks: z.array(z.enum(TASKS)).min(1).refine((t) => new Set(t).size === t.length, 'lists a task twice'),
  methods: z.array(z.object({
    name: z.string(), lr: z.number().min(0).max(10), label: z.string().min(1).max(100),
    r: int(1, 65536).optional(), alpha: z.number().positive().max(1e6).optional(),
    options: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).optional(),
    checkpointing: checkpointingSchema.optional(),
    lrGrid: z.array(z.number().positive().max(10)).min(1).max(32).optional(),
  }).strict()).min(1),
  shared: z.object({
    steps: int(1, 1e7), batchSize: int(1, 65536), seqLen: int(1, 1 << 22), seed: z.number().int().min(0).max(2 ** 32 - 1),
    schedule: z.enum(['cosine', 'constant']), warmupSteps: int(0, 1e7),
    maxTrain: int(1, 1e9).optional(), maxTest: int(1, 1e9).optional(),
    checkpointing: checkpointingSchema.optional(), offload: z.boolean().optional(),
    packing: z.enum(['pack', 'pad']).optional(),
    seeds: z.array(z.number().int().min(0).max(2 ** 32 - 1)).min(1).max(100).refine((v) => new Set(v).size === v.length, 'lists a seed twice').optional(),
    promptChars: int(1, 1 << 24).optional(),
  }).strict(),
  dataset: z.string().min(1).optional(),
  datasetFormat: z.enum(['auto', 'text', 'sft', 'chat']).optional(),
  peers: z.object({
    tfjs: z.object(peerSelection).strict().optional(),
    pytorch: z.object({ ...peerSelection, threads: int(1, 1024).optional() }).strict().optional(),
  }).strict().optional(),
  kernels: z.boolean().optional(),
  tuneLr: z.object({
    factors: z.array(z.number().positive().max(1e4)).min(1).max(32).optional(),
    steps: int(1, 1e7).optional(),
    maxValidation: int(1, 1e7).optional(),
    evalPoints: int(0, 1000).optional(),
  }).strict().optional(),
  shapes: z.array(z.object({
    preset: z.string().refine((v) => isPreset(v), { message: `must be a preset: ${Object.keys(PRESETS).join(', ')}` }),
    batchSize: int(1, 65536), seqLen: int(1, 1 << 22), steps: int(1, 1e6),
    methods: z.array(z.string()).min(1),
    checkpointing: checkpointingSchema.optional(),
    peers: z.array(z.enum(['pytorch'])).optional(),
  }).strict()).optional(),
  decodeShape: z.string().refine((v) => v === 'none' || isDecodeShape(v), { message: `must be 'none' or a plain Llama preset: ${decodeShapeNames().join(', ')}` }).optional(),
  decodeActivations: z.enum(DECODE_ACTIVATION_NAMES).optional(),
}).strict();

/** Presets a decode row can be built at: plain Llama (llama.cpp's llama architecture, no biases or q/k norms). */
export function isDecodeShape(name: string): boolean {
  return isPreset(name) && (PRESETS[name].modelType ?? 'llama') === 'llama' && !PRESETS[name].ropeScaling;
}
export function decodeShapeNames(): string[] {
  return Object.keys(PRESETS).filter(isDecodeShape);
}

/** Edit distance, for "did you mean" on unknown keys. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length][b.length];
}

/** The keys the schema allows at a path (for suggestions). */
function keysAt(path: readonly PropertyKey[]): string[] {
  let schema: z.ZodType = SUITE_SCHEMA;
  for (const k of path) {
    // unwrap optional / refine wrappers down to objects and arrays
    for (let i = 0; i < 5; i++) {
      const def = (schema as unknown as { def: { type: string; innerType?: z.ZodType; element?: z.ZodType; in?: z.ZodType } }).def;
      if (def.type === 'optional' || def.type === 'nullable') schema = def.innerType!;
      else if (def.type === 'pipe') schema = def.in!;
      else break;
    }
    const def = (schema as unknown as { def: { type: string; shape?: Record<string, z.ZodType>; element?: z.ZodType } }).def;
    if (def.type === 'array' && typeof k === 'number') schema = def.element!;
    else if (def.type === 'object' && typeof k === 'string' && def.shape?.[k]) schema = def.shape[k];
    else return [];
  }
  for (let i = 0; i < 5; i++) {
    const def = (schema as unknown as { def: { type: string; innerType?: z.ZodType; in?: z.ZodType } }).def;
    if (def.type === 'optional' || def.type === 'nullable') schema = def.innerType!;
    else if (def.type === 'pipe') schema = def.in!;
    else break;
  }
  const def = (schema as unknown as { def: { type: string; shape?: Record<string, unknown> } }).def;
  return def.type === 'object' ? Object.keys(def.shape ?? {}) : [];
}

function pathText(path: readonly PropertyKey[]): string {
  return path.map((k, i) => (typeof k === 'number' ? `[${k}]` : `${i ? '.' : ''}${String(k)}`)).join('');
}

/** Every problem of a suite object, or the suite. Nothing is created or run here. */
export function validateSuite(raw: unknown, where: string): Suite {
  const p: string[] = [];
  const parsed = SUITE_SCHEMA.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const at = pathText(issue.path);
      if (issue.code === 'unrecognized_keys') {
        const known = keysAt(issue.path);
        for (const key of issue.keys) {
          const near = known.map((k) => [k, editDistance(key.toLowerCase(), k.toLowerCase())] as const).sort((a, b) => a[1] - b[1])[0];
          const hint = near && near[1] <= Math.max(2, Math.floor(key.length / 3)) ? ` (did you mean '${near[0]}'?)` : ` (known: ${known.join(', ')})`;
          p.push(`${at ? `${at}: ` : ''}unknown key '${key}'${hint}`);
        }
      } else {
        p.push(`${at || 'suite'}: ${issue.message}`);
      }
    }
    throw new Error(`${where}: ${p.join('; ')}`);
  }
  const s = parsed.data as Suite;
  // what a schema cannot say: registered methods, unique labels, references between fields, files that must exist
  s.methods.forEach((m, i) => {
    if (!methodNames().includes(m.name)) p.push(`methods[${i}].name must be one of ${methodNames().join(', ')}`);
    else p.push(...methodPlugin(m.name).validate(m).map((e) => `methods[${i}].${e}`));
    if (s.methods.findIndex((o) => o.label === m.label) !== i) p.push(`methods[${i}].label '${m.label}' is used twice`);
  });
  (s.shapes ?? []).forEach((row, i) => {
    try {
      const specs = parseMethods(row.methods.join(','));
      for (const m of specs) if (!methodPlugin(m.name).shapeModel) p.push(`shapes[${i}].methods: ${m.label} has no speed rows on random weights`);
    } catch (e) { p.push(`shapes[${i}].${(e as Error).message.replace(/^--methods: /, 'methods: ')}`); }
    const max = isPreset(row.preset) ? PRESETS[row.preset].maxPositionEmbeddings : undefined;
    if (max !== undefined && row.seqLen > max) p.push(`shapes[${i}].seqLen ${row.seqLen} exceeds ${row.preset}'s maxPositionEmbeddings ${max}`);
  });
  if (s.shared.warmupSteps > s.shared.steps) p.push(`shared.warmupSteps ${s.shared.warmupSteps} exceeds shared.steps ${s.shared.steps}`);
  if (s.base.hfDir !== undefined) {
    const config = join(s.base.hfDir, 'config.json');
    if (!existsSync(config)) p.push(`base.hfDir ${s.base.hfDir} has no config.json (a Hugging Face LlamaForCausalLM directory is expected)`);
    // the config as the loader reads it: a bad one would fail every run after the reports directory was set up
    else {
      try {
        const raw = parseJson(readTextFile(config, 'config.json'), config);
        p.push(...gptqBaseProblems(raw, s.methods));
        const c = configFromHf(raw, config);
        // the tasks tokenize with the model's tokenizer.json, or without one the
        // byte tokenizer (tokenizer.ts): every id it gives must have an embedding row
        if (hasOwnTokenizer(s.base.hfDir)) {
          let tok: Tokenizer | null = null;
          try { tok = taskTokenizer(s.base.hfDir); } catch (e) { p.push(`base.hfDir: ${(e as Error).message}`); }
          const top = tok ? maxTokenId(tok) : -1;
          if (top >= c.vocabSize) p.push(`base.hfDir: its ${HF_TOKENIZER_FILE} has ids up to ${top}, but the model's vocab_size is ${c.vocabSize}: the embedding has no row for ids ${c.vocabSize}..${top}`);
        } else {
          const ids = new ByteTokenizer().vocabSize;
          if (c.vocabSize < ids) p.push(`base.hfDir: the model's vocab_size ${c.vocabSize} is smaller than the byte tokenizer's ${ids} ids (256 bytes, BOS, EOS, PAD) that the tasks use without a ${HF_TOKENIZER_FILE}: its embedding has no row for ids ${c.vocabSize}..${ids - 1}`);
        }
      } catch (e) { p.push(`base.hfDir: ${(e as Error).message}`); }
    }
  }
  if (s.tasks.includes('jsonl') && !s.dataset) p.push("the jsonl task needs 'dataset' (a JSONL file)");
  if (s.dataset !== undefined) {
    try {
      checkRegularFile(s.dataset, 'JSONL dataset');
      // read once here so that a bad row is reported with its line before anything runs
      if (s.tasks.includes('jsonl')) {
        const ds = readJsonl(s.dataset, { format: s.datasetFormat });
        // chat rows: the model's template must parse (a row it fails on is named when the data is prepared)
        if (ds.kind === 'chat') ChatTemplate.forModel(s.base.hfDir, hasOwnTokenizer(s.base.hfDir) ? taskTokenizer(s.base.hfDir) : new ByteTokenizer());
      }
    } catch (e) {
      p.push(`dataset: ${(e as Error).message}`);
    }
  }
  const labels = s.methods.map((m) => m.label);
  for (const [k, sel] of Object.entries(s.peers ?? {}) as [PeerName, PeerSelection | undefined][]) {
    if (!sel) continue;
    if (sel.methods !== undefined && sel.methods.some((m) => !labels.includes(m))) p.push(`peers.${k}.methods must list method labels of this suite (${labels.join(', ')})`);
    if (sel.tasks !== undefined && sel.tasks.some((t) => !s.tasks.includes(t))) p.push(`peers.${k}.tasks must list tasks of this suite`);
    const minSteps = k === 'tfjs' ? 3 : 2;
    if (sel.steps !== undefined && !(sel.steps >= minSteps && sel.steps <= s.shared.steps)) p.push(`peers.${k}.steps must be an integer from ${minSteps} to shared.steps`);
  }
  if (p.length) throw new Error(`${where}: ${p.join('; ')}`);
  return s;
}

/** A GPTQ checkpoint as base.hfDir: only QA-LoRA trains on its codes, and only at its own bit width. */
function gptqBaseProblems(raw: unknown, methods: readonly MethodSpec[]): string[] {
  const qc = (raw as { quantization_config?: { quant_method?: unknown; bits?: unknown } } | null)?.quantization_config;
  if (!qc || qc.quant_method !== 'gptq') return [];
  const p: string[] = [];
  const dense = methods.filter((m) => m.name !== 'qa-lora').map((m) => m.label);
  if (dense.length) p.push(`base.hfDir is a GPTQ checkpoint (quantization_config.quant_method "gptq"): only QA-LoRA (qalora<bits>) trains on its codes; ${dense.join(', ')} need a dense base`);
  for (const m of methods) {
    const bits = m.options?.bits ?? 4;
    if (m.name === 'qa-lora' && bits !== qc.bits) p.push(`base.hfDir is a GPTQ checkpoint of ${String(qc.bits)}-bit codes; ${m.label} asks for ${bits} bits (use qalora${String(qc.bits)})`);
  }
  return p;
}
