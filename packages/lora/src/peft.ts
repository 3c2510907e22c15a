// PEFT-format adapter directories: what huggingface/peft's save_pretrained
// writes for a LoRA adapter on a LlamaForCausalLM, and from_pretrained reads.
//
//   adapter_config.json         LoraConfig.to_dict(): peft_type "LORA", r, lora_alpha,
//                               target_modules, use_rslora, rank_pattern, ...
//                               QA-LoRA (pooled) adapters add use_qalora: true and
//                               qalora_group_size: L (PEFT's QALoraLinearVariant)
//   adapter_model.safetensors   base_model.model.<module>.lora_A.weight [r, in] ([r, in/L] pooled)
//                               base_model.model.<module>.lora_B.weight [out, r]
//                               <module> = model.layers.{i}.self_attn.q_proj ...; PEFT
//                               strips the adapter name (".default") from saved keys.
//                               metadata {"format": "pt"}
//                               with trainEmbeddings (PEFT's modules_to_save), whole f32 copies:
//                               base_model.model.model.embed_tokens.weight [V, C]
//                               base_model.model.lm_head.weight [V, C] (untied head only)
//                               (PEFT strips "modules_to_save.<adapter>." from saved keys)
//
// Loading creates the adapter on exactly the modules that have tensors in the
// file; the config's target selection (target_modules, exclude_modules,
// layers_to_transform) must select each of them, as PEFT would not load
// tensors for a module it did not adapt. Every problem is found before the
// model is touched, and a failed load leaves it as it was.
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { linearRegExp, parseJson, readTextFile,
  type FrozenBase, isFrozenBase, type LlamaModel, type SafetensorsEntry, type Tensor, readSafetensors, readSafetensorsHeader,
  copyInto, writeJsonAtomic, writeSafetensors,
} from '@tunebench/core';
import { LoraLinear } from './layer.js';
import { loraLayers, trainedEmbeddings } from './method.js';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
/** The older pickle format, recognised only to say it is not supported. */
const PEFT_BIN_FILE = 'adapter_model.bin';
/** PeftModelForCausalLM -> LoraModel -> LlamaForCausalLM */
const KEY_PREFIX = 'base_model.model.';
/** PEFT's default targets for a llama model when target_modules is null
 * (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"]). */
const PEFT_LLAMA_DEFAULT_TARGETS = ['q_proj', 'v_proj'];
const MODULE_NAME = /^model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)$/;

// ---------------------------------------------------------------------------
// Save

export interface SaveAdapterOptions {
  /** adapter to save (default: the one active on every LoRA layer, else 'default') */
  adapter?: string;
  /** written as base_model_name_or_path (default null) */
  baseModelNameOrPath?: string | null;
}

export interface SaveAdapterResult {
  adapter: string;
  /** module names saved, in model order */
  modules: string[];
  /** the adapter_config.json written */
  config: Record<string, unknown>;
}

/** Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors as PEFT
 * does (each file atomically; the weights first, so a config never describes
 * weights that are not there yet). Ranks or alphas that differ between
 * modules go to rank_pattern / alpha_pattern; adapters on a subset of the
 * layers set layers_to_transform. */
export function saveAdapter(model: LlamaModel, dir: string, opts: SaveAdapterOptions = {}): SaveAdapterResult {
  const root = resolve(dir);
  const all = loraLayers(model);
  const name = opts.adapter ?? defaultAdapterName(all);
  const layers = all.filter((l) => l.adapters.has(name));
  if (layers.length === 0) {
    const have = [...new Set(all.flatMap((l) => [...l.adapters.keys()]))];
    throw new Error(`saveAdapter: the model has no adapter named '${name}' (have: ${have.join(', ') || 'none'})`);
  }
  const adapters = layers.map((l) => l.adapter(name));
  for (const key of ['rslora', 'dropout', 'poolSize'] as const) {
    const values = new Set(adapters.map((a) => a[key]));
    if (values.size > 1) {
      const what = key === 'poolSize' ? 'poolSize (QA-LoRA group size, none = plain LoRA)' : key;
      throw new Error(`saveAdapter: adapter '${name}' uses ${what} ${[...values].map((v) => (v === null ? 'none' : String(v))).join(' and ')} on different modules; a PEFT config holds one value`);
    }
  }
  const poolSize = adapters[0].poolSize;
  const r = mostCommon(adapters.map((a) => a.r));
  const alpha = mostCommon(adapters.map((a) => a.alpha));
  const rankPattern: Record<string, number> = {}, alphaPattern: Record<string, number> = {};
  const shortNames = new Set<string>(), layerIndexes = new Set<number>();
  for (const l of layers) {
    const m = MODULE_NAME.exec(l.name);
    if (!m) throw new Error(`saveAdapter: module ${l.name} is not a LlamaForCausalLM projection`);
    layerIndexes.add(Number(m[1]));
    shortNames.add(m[3]);
    const a = l.adapter(name);
    // Keyed without the leading "model.": PEFT matches pattern keys with
    // re.match(rf"(.*\.)?({key})$") and, before 0.13, re.match(rf".*\.{key}$"),
    // which needs a dot before the key.
    const patternKey = l.name.slice('model.'.length);
    if (a.r !== r) rankPattern[patternKey] = a.r;
    if (a.alpha !== alpha) alphaPattern[patternKey] = a.alpha;
  }
  const allLayers = layerIndexes.size === model.blocks.length;
  // a tied head is one tensor here: the file holds it once, as embed_tokens
  const embeddings = trainedEmbeddings(model);
  const config: Record<string, unknown> = {
    alpha_pattern: alphaPattern,
    base_model_name_or_path: opts.baseModelNameOrPath ?? null,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: allLayers ? null : [...layerIndexes].sort((a, b) => a - b),
    lora_alpha: alpha,
    lora_dropout: adapters[0].dropout,
    modules_to_save: embeddings.length ? embeddings.map((p) => (p.name === 'lm_head.weight' ? 'lm_head' : 'embed_tokens')) : null,
    peft_type: 'LORA',
    ...(poolSize !== null ? { qalora_group_size: poolSize } : {}),
    r,
    rank_pattern: rankPattern,
    revision: null,
    target_modules: [...shortNames].sort(),
    task_type: 'CAUSAL_LM',
    use_dora: false,
    ...(poolSize !== null ? { use_qalora: true } : {}),
    use_rslora: adapters[0].rslora,
  };
  const tensors = new Map<string, Tensor>();
  for (const l of layers) {
    const a = l.adapter(name);
    tensors.set(`${KEY_PREFIX}${l.name}.lora_A.weight`, a.A.value);
    tensors.set(`${KEY_PREFIX}${l.name}.lora_B.weight`, a.B.value);
  }
  for (const p of embeddings) tensors.set(`${KEY_PREFIX}${p.name}`, p.value);
  mkdirSync(root, { recursive: true });
  writeSafetensors(join(root, PEFT_WEIGHTS_FILE), tensors, { metadata: { format: 'pt' }, dtype: 'f32' });
  writeJsonAtomic(join(root, PEFT_CONFIG_FILE), config);
  return { adapter: name, modules: layers.map((l) => l.name), config };
}

function defaultAdapterName(layers: LoraLinear[]): string {
  const active = new Set(layers.map((l) => l.active).filter((a): a is string => a !== null));
  if (active.size === 1) return [...active][0];
  return 'default';
}

/** The most frequent value; ties go to the one seen first. */
function mostCommon(values: number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0], bestCount = 0;
  for (const [v, c] of counts) if (c > bestCount) { best = v; bestCount = c; }
  return best;
}

// ---------------------------------------------------------------------------
// Config

/** Keys this loader reads. Anything else in a config is reported in
 * `ignoredKeys` (after the checks in GUARDED_KEYS). */
const READ_KEYS = new Set([
  'peft_type', 'task_type', 'r', 'lora_alpha', 'lora_dropout', 'use_rslora', 'bias', 'fan_in_fan_out', 'use_dora',
  'target_modules', 'exclude_modules', 'layers_to_transform', 'layers_pattern', 'rank_pattern', 'alpha_pattern',
  'modules_to_save', 'init_lora_weights', 'base_model_name_or_path', 'revision', 'inference_mode', 'use_qalora', 'qalora_group_size',
]);

/** PEFT's LoraConfig.qalora_group_size default, used when use_qalora is true and the key is absent. */
const PEFT_QALORA_DEFAULT_GROUP_SIZE = 16;

/** Keys of newer PEFT versions that change the computation when set: a
 * non-default value is an error, the default is ignored like any unknown key. */
const GUARDED_KEYS: Readonly<Record<string, { off: (v: unknown) => boolean; what: string }>> = {
  lora_bias: { off: (v) => v === false || v === null, what: 'a bias on lora_B' },
  layer_replication: { off: (v) => v === null || (Array.isArray(v) && v.length === 0), what: 'layer replication' },
  trainable_token_indices: { off: (v) => v === null, what: 'trainable token embeddings' },
  target_parameters: { off: (v) => v === null || (Array.isArray(v) && v.length === 0), what: 'LoRA on raw parameters' },
  alora_invocation_tokens: { off: (v) => v === null, what: 'activated LoRA (aLoRA)' },
  arrow_config: { off: (v) => v === null, what: 'Arrow routing' },
};

/** A module selector as PEFT applies one: a list (exact name or ".name"
 * suffix) or a string (re.fullmatch). */
type Selector = { kind: 'list'; names: string[] } | { kind: 'regex'; re: RegExp; source: string };

interface PeftLoraConfig {
  r: number;
  alpha: number;
  dropout: number;
  rslora: boolean;
  /** qalora_group_size when use_qalora is true, else null */
  poolSize: number | null;
  targets: Selector;
  exclude: Selector | null;
  layersToTransform: number[] | null;
  layersPattern: string[] | null;
  rankPattern: [RegExp, number][];
  alphaPattern: [RegExp, number][];
  baseModelNameOrPath: string | null;
  ignoredKeys: string[];
  /** as written in the file, for messages */
  targetModulesJson: string;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (o: Record<string, unknown>, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k) && o[k] !== undefined;
const show = (v: unknown): string => JSON.stringify(v) ?? String(v);
const shapeStr = (s: readonly number[]): string => `[${s.join(', ')}]`;
function listProblems(problems: string[], max = 25): string {
  return problems.length <= max ? problems.join('; ') : `${problems.slice(0, max).join('; ')}; ... and ${problems.length - max} more`;
}

/** A Python `re` pattern as a JavaScript RegExp anchored at both ends (re.fullmatch),
 * or at the end only with PEFT's `(.*\.)?` prefix (rank_pattern keys). */
function pythonRegex(source: string, mode: 'fullmatch' | 'suffix', where = 'pattern'): RegExp {
  const js = source.replace(/\(\?P</g, '(?<').replace(/\(\?P=(\w+)\)/g, '\\k<$1>');
  // linear-time matching: a pattern from a file cannot hang the loader
  return linearRegExp(mode === 'fullmatch' ? `^(?:${js})$` : `^(?:.*\\.)?(?:${js})$`, where);
}

/** PEFT finds a module's layer index with `.*\.{layers_pattern}\.(\d+)\.` */
function layersPatternRegex(p: string): RegExp {
  return linearRegExp(`^.*\\.${p}\\.(\\d+)\\.`, `layers_pattern ${show(p)}`);
}

function parseConfig(json: unknown, where: string): PeftLoraConfig {
  if (!isPlainObject(json)) throw new Error(`${where}: not a JSON object`);
  if (!has(json, 'peft_type')) throw new Error(`${where}: no peft_type (not a PEFT adapter config)`);
  if (json.peft_type !== 'LORA') throw new Error(`${where}: peft_type ${show(json.peft_type)} is not supported (only "LORA")`);
  const problems: string[] = [];
  if (json.use_dora === true) problems.push('DoRA is not supported (use_dora is true)');
  else if (has(json, 'use_dora') && json.use_dora !== false && json.use_dora !== null) problems.push(`use_dora must be a boolean, got ${show(json.use_dora)}`);

  const get = <T>(k: string, fallback: T, ok: (v: unknown) => boolean, expect: string): T => {
    if (!has(json, k) || json[k] === null) return fallback;
    if (!ok(json[k])) { problems.push(`${k} must be ${expect}, got ${show(json[k])}`); return fallback; }
    return json[k] as T;
  };
  const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);
  const r = get('r', 8, (v) => isInt(v) && v > 0, 'a positive integer');
  // alpha 0 silences the adapter and a negative one flips it: neither is a trained adapter
  const alpha = get('lora_alpha', 8, (v) => typeof v === 'number' && Number.isFinite(v) && v > 0, 'a positive number');
  const dropout = get('lora_dropout', 0, (v) => typeof v === 'number' && v >= 0 && v < 1, 'a number in [0, 1)');
  const rslora = get('use_rslora', false, (v) => typeof v === 'boolean', 'a boolean');
  const useQalora = get('use_qalora', false, (v) => typeof v === 'boolean', 'a boolean');
  const groupSize = get('qalora_group_size', PEFT_QALORA_DEFAULT_GROUP_SIZE, (v) => isInt(v) && v > 0, 'a positive integer');
  const bias = get('bias', 'none', (v) => typeof v === 'string', 'a string');
  if (bias !== 'none') problems.push(`bias ${show(bias)} is not supported (only "none": the adapted layers have no bias)`);
  if (json.fan_in_fan_out === true) problems.push('fan_in_fan_out true is not supported (it is for GPT-2-style Conv1D weights; LLaMA projections are [out, in])');
  else if (has(json, 'fan_in_fan_out') && json.fan_in_fan_out !== false && json.fan_in_fan_out !== null) problems.push(`fan_in_fan_out must be a boolean, got ${show(json.fan_in_fan_out)}`);
  if (has(json, 'task_type') && json.task_type !== null && json.task_type !== 'CAUSAL_LM') {
    problems.push(`task_type ${show(json.task_type)} is not supported (only "CAUSAL_LM")`);
  }
  if (has(json, 'modules_to_save') && json.modules_to_save !== null && !(Array.isArray(json.modules_to_save) && json.modules_to_save.length === 0)) {
    problems.push(`modules_to_save ${show(json.modules_to_save)} is not supported (full copies of modules outside the adapter, e.g. an embedding saved with trainEmbeddings: loading one would overwrite the base model's weights, which no adapter switch could undo)`);
  }
  const init = json.init_lora_weights;
  if (typeof init === 'string' && /^(pissa|olora|corda|loftq)/.test(init)) {
    problems.push(`init_lora_weights ${show(init)} is not supported: that initialisation changes the base weights, so the adapter does not apply to the original base model`);
  }
  const base = get<string | null>('base_model_name_or_path', null, (v) => typeof v === 'string', 'a string or null');

  const selector = (k: string): Selector | null => {
    const v = json[k];
    if (typeof v === 'string') {
      if (v === 'all-linear') return { kind: 'regex', re: /^model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+$/, source: v };
      try { return { kind: 'regex', re: pythonRegex(v, 'fullmatch'), source: v }; } catch (e) {
        problems.push(`${k} ${show(v)} is not a regular expression this loader can use (${(e as Error).message})`);
        return null;
      }
    }
    if (Array.isArray(v) && v.every((t) => typeof t === 'string')) return { kind: 'list', names: v as string[] };
    problems.push(`${k} must be a list of module names or a regular expression string, got ${show(v)}`);
    return null;
  };
  const hasTargets = has(json, 'target_modules') && json.target_modules !== null;
  const targets = hasTargets ? selector('target_modules') : { kind: 'list' as const, names: PEFT_LLAMA_DEFAULT_TARGETS };
  const exclude = has(json, 'exclude_modules') && json.exclude_modules !== null ? selector('exclude_modules') : null;

  let layersToTransform: number[] | null = null;
  const ltt = json.layers_to_transform;
  if (has(json, 'layers_to_transform') && ltt !== null) {
    if (isInt(ltt)) layersToTransform = [ltt];
    else if (Array.isArray(ltt) && ltt.every(isInt)) layersToTransform = ltt.length ? ltt : null;
    else problems.push(`layers_to_transform must be an integer or a list of integers, got ${show(ltt)}`);
    if (typeof json.target_modules === 'string') problems.push('layers_to_transform cannot be used when target_modules is a string (PEFT refuses this config too)');
  }
  let layersPattern: string[] | null = null;
  const lp = json.layers_pattern;
  if (has(json, 'layers_pattern') && lp !== null) {
    if (typeof lp === 'string') layersPattern = lp ? [lp] : null;
    else if (Array.isArray(lp) && lp.every((p) => typeof p === 'string')) layersPattern = lp.length ? lp : null;
    else problems.push(`layers_pattern must be a string or a list of strings, got ${show(lp)}`);
    for (const p of layersPattern ?? []) {
      try { layersPatternRegex(p); } catch (e) { problems.push((e as Error).message); }
    }
  }

  const pattern = (k: string, ok: (v: unknown) => boolean, expect: string): [RegExp, number][] => {
    const v = json[k];
    if (!has(json, k) || v === null) return [];
    if (!isPlainObject(v)) { problems.push(`${k} must be an object, got ${show(v)}`); return []; }
    const out: [RegExp, number][] = [];
    for (const [key, value] of Object.entries(v)) {
      if (!ok(value)) { problems.push(`${k}[${show(key)}] must be ${expect}, got ${show(value)}`); continue; }
      try { out.push([pythonRegex(key, 'suffix'), value as number]); } catch (e) {
        problems.push(`${k} key ${show(key)} is not a regular expression this loader can use (${(e as Error).message})`);
      }
    }
    return out;
  };
  const rankPattern = pattern('rank_pattern', (v) => isInt(v) && v > 0, 'a positive integer');
  const alphaPattern = pattern('alpha_pattern', (v) => typeof v === 'number' && Number.isFinite(v) && v > 0, 'a positive number');

  const ignoredKeys: string[] = [];
  for (const k of Object.keys(json).sort()) {
    if (READ_KEYS.has(k)) continue;
    const guard = Object.hasOwn(GUARDED_KEYS, k) ? GUARDED_KEYS[k] : undefined;  // '__proto__', 'toString' are config keys too
    if (guard && !guard.off(json[k])) { problems.push(`${k} ${show(json[k])} is not supported (${guard.what})`); continue; }
    ignoredKeys.push(k);
  }
  if (problems.length) throw new Error(`${where}: ${listProblems(problems)}`);
  return {
    r, alpha, dropout, rslora, poolSize: useQalora ? groupSize : null, targets: targets!, exclude, layersToTransform, layersPattern, rankPattern, alphaPattern,
    baseModelNameOrPath: base, ignoredKeys, targetModulesJson: show(hasTargets ? json.target_modules : null),
  };
}

function matches(sel: Selector, key: string): boolean {
  return sel.kind === 'regex' ? sel.re.test(key) : sel.names.some((t) => key === t || key.endsWith(`.${t}`));
}

/** Why PEFT would not adapt module `key` under this config, or null if it would
 * (check_target_module_exists). */
function notSelected(c: PeftLoraConfig, key: string): string | null {
  if (c.exclude && matches(c.exclude, key)) return 'exclude_modules excludes it';
  if (!matches(c.targets, key)) return `target_modules ${c.targetModulesJson} does not select it`;
  // An exact name in a target list is taken whatever layers_to_transform says, as in PEFT.
  if (c.targets.kind === 'regex' || c.targets.names.includes(key) || c.layersToTransform === null) return null;
  const patterns = c.layersPattern ? c.layersPattern.map(layersPatternRegex) : [/^.*\.[^.]*\.(\d+)\./];
  let index: number | null = null;
  for (const p of patterns) { const m = p.exec(key); if (m) { index = Number(m[1]); break; } }
  if (index === null) return `layers_pattern ${show(c.layersPattern)} finds no layer index in it`;
  return c.layersToTransform.includes(index) ? null : `layers_to_transform ${show(c.layersToTransform)} does not include layer ${index}`;
}

const patternValue = (pattern: [RegExp, number][], key: string, fallback: number): number => pattern.find(([re]) => re.test(key))?.[1] ?? fallback;

// ---------------------------------------------------------------------------
// Load

export interface LoadAdapterOptions {
  /** adapter name in the model (default 'default') */
  name?: string;
  /** give A and B gradients to train on (default false: inference) */
  trainable?: boolean;
  /** make it the active adapter on every LoRA layer (null where a layer lacks it); default true */
  activate?: boolean;
}

export interface LoadAdapterResult {
  name: string;
  /** module names that received the adapter, in model order */
  modules: string[];
  /** the config's r, lora_alpha, use_rslora, lora_dropout (rank_pattern / alpha_pattern may override r and alpha per module) */
  r: number;
  alpha: number;
  rslora: boolean;
  dropout: number;
  /** QA-LoRA group size (qalora_group_size) when use_qalora is true, else null */
  poolSize: number | null;
  baseModelNameOrPath: string | null;
  /** config keys this loader does not read (e.g. from newer PEFT versions), sorted; nothing is printed */
  ignoredKeys: string[];
}

function readJson(path: string): unknown {
  if (!existsSync(path)) throw new Error(`${path}: not found (a PEFT adapter directory holds ${PEFT_CONFIG_FILE} and ${PEFT_WEIGHTS_FILE})`);
  return parseJson(readTextFile(path, 'adapter config'), path);
}

const TENSOR_NAME = /^base_model\.model\.(.+)\.lora_(A|B)(?:\.([^.]+))?\.weight$/;
const DORA_NAME = /\.lora_magnitude_vector(\.[^.]+)?(\.weight)?$/;
const FLOAT_DTYPES = new Set(['F32', 'BF16', 'F16']);

/** Loads a PEFT LoRA adapter directory into a frozen model as adapter `name`. */
export function loadAdapter(model: LlamaModel, dir: string, opts: LoadAdapterOptions = {}): LoadAdapterResult {
  const root = resolve(dir);
  const name = opts.name ?? 'default';
  const trainable = opts.trainable ?? false;
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`${root}: not a directory`);
  const weightsPath = join(root, PEFT_WEIGHTS_FILE), configPath = join(root, PEFT_CONFIG_FILE);
  if (!existsSync(weightsPath)) {
    const bin = join(root, PEFT_BIN_FILE);
    if (existsSync(bin)) {
      throw new Error(`${bin}: PyTorch pickle adapter files are not supported, only ${PEFT_WEIGHTS_FILE} (safetensors); `
        + 're-save the adapter with PEFT: model.save_pretrained(dir, safe_serialization=True)');
    }
    throw new Error(`${weightsPath}: not found (a PEFT adapter directory holds ${PEFT_CONFIG_FILE} and ${PEFT_WEIGHTS_FILE})`);
  }
  const config = parseConfig(readJson(configPath), configPath);

  const adapterParams = new Set(loraLayers(model).flatMap((l) => [...l.adapters.values()].flatMap((a) => [a.A, a.B])));
  const trainableBase = model.parameters().filter((p) => p.grad !== null && !adapterParams.has(p));
  if (trainableBase.length > 0) {
    throw new Error(`LoRA: the base model must be frozen (build it with trainable: false); ${trainableBase.length} parameters are trainable, e.g. ${trainableBase[0].name}`);
  }

  // Names, shapes and selection from the header, before anything is allocated.
  const header = readSafetensorsHeader(weightsPath);
  const linears = model.linears();
  const problems: string[] = [];
  const unexpected: string[] = [];
  const byModule = new Map<string, { A?: SafetensorsEntry; B?: SafetensorsEntry }>();
  const segments = new Set<string>();
  let dora = false;
  for (const e of header.tensors) {
    if (DORA_NAME.test(e.name)) { dora = true; continue; }
    const m = TENSOR_NAME.exec(e.name);
    if (!m) { unexpected.push(e.name); continue; }
    const [, module, which, segment] = m;
    if (!linears.has(module)) { problems.push(`${e.name}: the model has no linear module ${module}`); continue; }
    // PEFT writes names without the adapter name; older files keep it: both may
    // mix in one file, but two different adapter names are two adapters
    if (segment !== undefined) segments.add(segment);
    const slot = byModule.get(module) ?? {};
    const ab = which as 'A' | 'B';
    if (slot[ab]) { problems.push(`${module} has two lora_${ab} tensors (${slot[ab]!.name}, ${e.name})`); continue; }
    slot[ab] = e;
    byModule.set(module, slot);
  }
  if (dora) problems.unshift('DoRA is not supported (the file holds lora_magnitude_vector tensors)');
  if (unexpected.length) {
    problems.push(`unexpected tensors (expected ${KEY_PREFIX}model.layers.{i}.(self_attn|mlp).<proj>.lora_A.weight / .lora_B.weight): ${unexpected.join(', ')}`);
  }
  if (segments.size > 1) problems.push(`the tensors belong to more than one adapter (${[...segments].join(', ')}); a PEFT file holds one`);
  const plan: { module: string; A: SafetensorsEntry; B: SafetensorsEntry; r: number; alpha: number }[] = [];
  for (const [module, { A, B }] of byModule) {
    if (!A || !B) { problems.push(`${module} has lora_${A ? 'A' : 'B'} but no lora_${A ? 'B' : 'A'}`); continue; }
    const layer = linears.get(module)!;
    const why = notSelected(config, module);
    if (why) problems.push(`${module} has tensors but ${why} (PEFT would not load them)`);
    const r = patternValue(config.rankPattern, module, config.r), alpha = patternValue(config.alphaPattern, module, config.alpha);
    const L = config.poolSize;
    if (L !== null && layer.inFeatures % L !== 0) {
      problems.push(`${module}: in_features ${layer.inFeatures} is not divisible by qalora_group_size ${L} (use_qalora pools whole groups)`);
      continue;
    }
    const wantA = [r, L === null ? layer.inFeatures : layer.inFeatures / L], wantB = [layer.outFeatures, r];
    const aWhat = L === null ? 'r x in_features' : `r x in_features/qalora_group_size = ${layer.inFeatures}/${L}`;
    for (const [e, want, what] of [[A, wantA, aWhat], [B, wantB, 'out_features x r']] as const) {
      if (e.shape.length !== 2 || e.shape[0] !== want[0] || e.shape[1] !== want[1]) {
        problems.push(`${e.name} has shape ${shapeStr(e.shape)}, expected ${shapeStr(want)} (${what}, r = ${r})`);
      }
      if (!FLOAT_DTYPES.has(e.dtype)) problems.push(`${e.name} has dtype ${e.dtype}, expected F32, BF16 or F16`);
    }
    if (layer instanceof LoraLinear) {
      if (layer.adapters.has(name)) problems.push(`${module} already has an adapter named '${name}' (pick another name)`);
    } else if (!isFrozenBase(layer)) {
      problems.push(`${module}: cannot adapt it, it is not a frozen base layer (dense or quantized)`);
    }
    plan.push({ module, A, B, r, alpha });
  }
  if (problems.length) throw new Error(`${weightsPath}: ${listProblems(problems)}`);
  if (plan.length === 0) throw new Error(`${weightsPath}: holds no LoRA tensors`);

  const order = [...linears.keys()];
  plan.sort((a, b) => order.indexOf(a.module) - order.indexOf(b.module));
  const { tensors } = readSafetensors(weightsPath, { category: 'workspace', convert: { to: 'f32' } });
  const previousActive = new Map(loraLayers(model).map((l) => [l, l.active]));
  const added: { lora: LoraLinear; wrapped: boolean }[] = [];
  try {
    for (const p of plan) {
      const layer = linears.get(p.module)!;
      const wrapped = !(layer instanceof LoraLinear);
      const lora = wrapped ? new LoraLinear(layer as FrozenBase) : layer;
      const a = lora.addAdapter(name, { r: p.r, alpha: p.alpha, rslora: config.rslora, dropout: config.dropout, init: 'kaiming', seed: 0, trainable, poolSize: config.poolSize });
      added.push({ lora, wrapped });
      for (const [param, entry] of [[a.A, p.A], [a.B, p.B]] as const) {
        const t = tensors.get(entry.name);
        if (!t || t.numel !== param.value.numel) throw new Error(`${weightsPath}: ${entry.name} changed while loading`);
        copyInto(param.value, t);  // both f32 (converted while reading); any device
      }
      if (wrapped) model.replaceLinear(p.module, lora);
    }
  } catch (e) {
    for (const { lora, wrapped } of added.reverse()) {
      lora.deleteAdapter(name);
      if (wrapped && model.linears().get(lora.name) === lora) model.replaceLinear(lora.name, lora.base);
    }
    for (const [l, active] of previousActive) l.active = active;
    throw e;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  for (const l of loraLayers(model)) {
    if (opts.activate ?? true) l.active = l.adapters.has(name) ? name : null;
    else l.active = previousActive.has(l) ? previousActive.get(l)! : null;
  }
  return {
    name, modules: plan.map((p) => p.module), r: config.r, alpha: config.alpha, rslora: config.rslora, dropout: config.dropout, poolSize: config.poolSize,
    baseModelNameOrPath: config.baseModelNameOrPath, ignoredKeys: config.ignoredKeys,
  };
}
