// RoPE scaling variants: the one place where a config's rotary inverse
// frequencies and attention scale are computed, and where Hugging Face's
// `rope_scaling` / `rope_parameters` config keys are read and written.
//
// Every variant starts from the plain table base[i] = 1/theta^(2i/D), i < D/2,
// float32 as the rope kernels compute it (ops/rope.ts ropeInvFreq), and
// follows transformers' float32 arithmetic step by step (Math.fround after
// each operation, scalars rounded to float32 where torch rounds them):
//
//   linear   (position interpolation, Chen et al. 2023, "Extending Context
//            Window of Large Language Models via Positional Interpolation"):
//            inv[i] = base[i] / factor
//   dynamic  (dynamic NTK-aware scaling, bloc97 / emozilla): for a call whose
//            largest position is p (sequence length L = p + 1) with
//            L > max_position_embeddings = M:
//              theta' = theta * (factor * L / M - (factor - 1))^(D / (D - 2))
//              inv[i] = 1/theta'^(2i/D);  L <= M: the plain table.
//            The table depends on the call: forward/hidden compute it from
//            their positions, backward reuses the forward's; with a KV cache
//            each decode step uses its own L (keys already cached keep theirs).
//   llama3   (Llama 3.1+, the Llama 3 report; transformers' llama3 rope):
//            wavelen = 2 pi / base[i]; O = original_max_position_embeddings
//              wavelen < O / high_freq_factor: base[i]            (high frequencies)
//              wavelen > O / low_freq_factor:  base[i] / factor   (low frequencies)
//              otherwise s = (O / wavelen - low) / (high - low),
//                        inv[i] = (1 - s) * base[i] / factor + s * base[i]
//   yarn     (Peng et al. 2023, "YaRN: Efficient Context Window Extension of
//            Large Language Models"): with pos_freq[i] = theta^(2i/D),
//              d(r) = D * ln(O / (2 pi r)) / (2 ln theta)
//              lo = max(floor(d(beta_fast)), 0), hi = min(ceil(d(beta_slow)), D - 1)
//              (no floor/ceil when truncate is false; beta_fast 32, beta_slow 1 by default)
//              ramp[i] = clamp((i - lo) / (hi - lo), 0, 1)  (hi += 0.001 when equal)
//              e[i] = 1 - ramp[i]
//              inv[i] = 1/(factor pos_freq[i]) * (1 - e[i]) + 1/pos_freq[i] * e[i]
//            attention scale m multiplies cos and sin (q·k by m^2):
//              attention_factor if given, else mscale(factor, mscale) /
//              mscale(factor, mscale_all_dim) when both are given and non-zero,
//              else mscale(factor, 1), where mscale(s, k) = 1 if s <= 1 else 0.1 k ln(s) + 1.
//            A missing factor is max_position_embeddings / O.
//
// O (llama3, yarn): a top-level original_max_position_embeddings key when the
// config has one, else the rope dict's, else max_position_embeddings.
//
// Positions: plain RoPE stays within max_position_embeddings. The scaled
// variants exist to go past it: linear allows M * factor positions, llama3 and
// yarn max(M, O * factor), dynamic (which adapts to any length) up to
// ROPE_POSITION_CAP.
import { ropeInvFreq } from '../ops/rope.js';
import { type LlamaConfig, headDim } from './config.js';

/** The rope types a config may name; anything else is refused by name. */
export const ROPE_TYPES = ['default', 'linear', 'dynamic', 'llama3', 'yarn'] as const;
export type RopeType = (typeof ROPE_TYPES)[number];
export type ScaledRopeType = Exclude<RopeType, 'default'>;

/** Positions a dynamic-NTK model accepts (the size limit of max_position_embeddings). */
export const ROPE_POSITION_CAP = 1 << 22;

/** A scaled RoPE variant, as read from rope_scaling / rope_parameters. */
export interface RopeScaling {
  type: ScaledRopeType;
  /** the scaling factor (> 0) */
  factor: number;
  /** llama3: low_freq_factor, high_freq_factor (0 < low < high) */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  /** llama3 and yarn: the pretraining context O (positive integer) */
  originalMaxPositionEmbeddings?: number;
  /** yarn: beta_fast (default 32), beta_slow (default 1) */
  betaFast?: number;
  betaSlow?: number;
  /** yarn: the attention scale itself, overriding the one derived from factor */
  attentionFactor?: number;
  /** yarn: mscale and mscale_all_dim (both non-zero: the attention scale is their ratio) */
  mscale?: number;
  mscaleAllDim?: number;
  /** yarn: floor/ceil the correction range (default true) */
  truncate?: boolean;
}

/** What the rope kernels take for a scaled variant (RopeOptions fields). */
export interface RopeFrequencies {
  /** D/2 float32 inverse frequencies */
  invFreq: Float32Array;
  /** multiplies cos and sin (1 except YaRN) */
  attentionScale: number;
}

const f = Math.fround;
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isPosInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;

/** Problems with a config's ropeScaling (empty when it is absent or valid).
 * `name` spells a field in the messages (default ropeScaling.<field>). */
export function ropeScalingProblems(s: RopeScaling | null | undefined, maxPositionEmbeddings: number,
                                    name: (k: keyof RopeScaling) => string = (k) => `ropeScaling.${k}`): string[] {
  if (s === null || s === undefined) return [];
  const p: string[] = [];
  if (typeof s !== 'object') return [`ropeScaling must be an object or null, got ${JSON.stringify(s)}`];
  if (!(ROPE_TYPES as readonly string[]).includes(s.type) || (s.type as string) === 'default') {
    return [`${name('type')} ${JSON.stringify(s.type)} is not supported (supported: ${ROPE_TYPES.filter((t) => t !== 'default').join(', ')}; plain RoPE has no ropeScaling)`];
  }
  if (!isNum(s.factor) || s.factor <= 0) p.push(`${name('factor')} must be a positive number, got ${JSON.stringify(s.factor)}`);
  if (s.type === 'dynamic' && isNum(s.factor) && s.factor < 1) p.push(`${name('factor')} of dynamic scaling must be >= 1, got ${s.factor}`);
  if (s.type === 'llama3' || s.type === 'yarn') {
    const o = s.originalMaxPositionEmbeddings;
    if (!isPosInt(o)) p.push(`${name('originalMaxPositionEmbeddings')} must be a positive integer, got ${JSON.stringify(o)}`);
    else if (o > ROPE_POSITION_CAP) p.push(`${name('originalMaxPositionEmbeddings')} ${o} exceeds the limit of ${ROPE_POSITION_CAP}`);
  }
  if (s.type === 'llama3') {
    const { lowFreqFactor: lo, highFreqFactor: hi } = s;
    if (!isNum(lo) || lo <= 0) p.push(`${name('lowFreqFactor')} must be a positive number, got ${JSON.stringify(lo)}`);
    if (!isNum(hi) || hi <= 0) p.push(`${name('highFreqFactor')} must be a positive number, got ${JSON.stringify(hi)}`);
    if (isNum(lo) && isNum(hi) && lo > 0 && !(hi > lo)) p.push(`${name('highFreqFactor')} (${hi}) must be larger than ${name('lowFreqFactor')} (${lo})`);
  }
  if (s.type === 'yarn') {
    for (const k of ['betaFast', 'betaSlow', 'attentionFactor'] as const) {
      if (s[k] !== undefined && (!isNum(s[k]) || s[k] <= 0)) p.push(`${name(k)} must be a positive number, got ${JSON.stringify(s[k])}`);
    }
    for (const k of ['mscale', 'mscaleAllDim'] as const) {
      if (s[k] !== undefined && !isNum(s[k])) p.push(`${name(k)} must be a number, got ${JSON.stringify(s[k])}`);
    }
    if (s.truncate !== undefined && typeof s.truncate !== 'boolean') p.push(`${name('truncate')} must be a boolean, got ${JSON.stringify(s.truncate)}`);
  }
  const keys: Record<ScaledRopeType, string[]> = {
    linear: ['type', 'factor'], dynamic: ['type', 'factor'],
    llama3: ['type', 'factor', 'lowFreqFactor', 'highFreqFactor', 'originalMaxPositionEmbeddings'],
    yarn: ['type', 'factor', 'originalMaxPositionEmbeddings', 'betaFast', 'betaSlow', 'attentionFactor', 'mscale', 'mscaleAllDim', 'truncate'],
  };
  for (const k of Object.keys(s)) {
    if (!keys[s.type].includes(k) && (s as unknown as Record<string, unknown>)[k] !== undefined) p.push(`${name(k as keyof RopeScaling)} does not apply to ${s.type} scaling`);
  }
  if (p.length === 0 && Number.isInteger(maxPositionEmbeddings) && maxPositionEmbeddings > 0) {
    const limit = positionLimitOf(s, maxPositionEmbeddings);
    if (!(limit <= ROPE_POSITION_CAP)) p.push(`ropeScaling (${s.type}, factor ${s.factor}) extends the context to ${limit} positions, beyond the limit of ${ROPE_POSITION_CAP}`);
  }
  return p;
}

function positionLimitOf(s: RopeScaling, M: number): number {
  switch (s.type) {
    case 'linear': return Math.max(M, Math.floor(M * s.factor));
    case 'dynamic': return Math.max(M, ROPE_POSITION_CAP);
    default: return Math.max(M, Math.floor(s.originalMaxPositionEmbeddings! * s.factor));
  }
}

/** How many positions (0 .. limit-1) a model with this config accepts. */
export function ropePositionLimit(c: LlamaConfig): number {
  return c.ropeScaling ? positionLimitOf(c.ropeScaling, c.maxPositionEmbeddings) : c.maxPositionEmbeddings;
}

/** The position limit in words, for errors: "max_position_embeddings 256", or
 * the scaled limit and where it comes from. */
export function ropePositionLimitText(c: LlamaConfig): string {
  const s = c.ropeScaling;
  if (!s) return `max_position_embeddings ${c.maxPositionEmbeddings}`;
  return `the position limit ${ropePositionLimit(c)} (max_position_embeddings ${c.maxPositionEmbeddings} with rope_scaling ${s.type}, factor ${s.factor})`;
}

/** The plain table 1/theta^(2i/D) of a config (what scaled variants start from). */
export function ropeInvFreqBase(c: LlamaConfig): Float32Array {
  return ropeInvFreq(headDim(c), c.ropeTheta);
}

/** The attention scale of a YaRN config (1 for every other variant). */
export function yarnAttentionScale(s: RopeScaling): number {
  if (s.type !== 'yarn') return 1;
  if (s.attentionFactor !== undefined) return s.attentionFactor;
  const m = (scale: number, k: number) => (scale <= 1 ? 1 : 0.1 * k * Math.log(scale) + 1);
  if (s.mscale && s.mscaleAllDim) return m(s.factor, s.mscale) / m(s.factor, s.mscaleAllDim);
  return m(s.factor, 1);
}

/**
 * The inverse frequencies and attention scale of a config's scaled RoPE, or
 * undefined for plain RoPE (the kernels then compute 1/theta^(2i/D) from
 * theta themselves, bit for bit the same table). `seqLen`: the length the
 * call covers (largest position + 1), which only dynamic scaling reads.
 */
export function ropeFrequencies(c: LlamaConfig, seqLen?: number): RopeFrequencies | undefined {
  const s = c.ropeScaling;
  if (!s) return undefined;
  const D = headDim(c), h = D / 2, theta = c.ropeTheta;
  const base = ropeInvFreqBase(c);
  const inv = new Float32Array(h);
  switch (s.type) {
    case 'linear': {
      const fac = f(s.factor);
      for (let i = 0; i < h; i++) inv[i] = f(base[i] / fac);
      return { invFreq: inv, attentionScale: 1 };
    }
    case 'dynamic': {
      const M = c.maxPositionEmbeddings;
      if (seqLen === undefined || seqLen <= M) return { invFreq: base, attentionScale: 1 };
      // float32 tensor arithmetic, as transformers does with the length tensor
      const ratio = f(f(f(f(s.factor) * f(seqLen)) / f(M)) - f(s.factor - 1));
      const grown = f(f(theta) * f(Math.pow(ratio, f(D / (D - 2)))));
      return { invFreq: ropeInvFreq(D, grown), attentionScale: 1 };
    }
    case 'llama3': {
      const O = s.originalMaxPositionEmbeddings!, fac = f(s.factor);
      const lo = s.lowFreqFactor!, hi = s.highFreqFactor!;
      const lowWl = f(O / lo), highWl = f(O / hi), twoPi = f(2 * Math.PI), span = f(hi - lo);
      for (let i = 0; i < h; i++) {
        const b = base[i];
        const wl = f(f(1 / b) * twoPi);
        const scaled = wl > lowWl ? f(b / fac) : b;
        if (wl < highWl || wl > lowWl) { inv[i] = scaled; continue; }
        const sm = f(f(f(f(1 / wl) * f(O)) - f(lo)) / span);
        inv[i] = f(f(f(f(1 - sm) * scaled) / fac) + f(sm * scaled));
      }
      return { invFreq: inv, attentionScale: 1 };
    }
    case 'yarn': {
      const O = s.originalMaxPositionEmbeddings!, fac = f(s.factor);
      const betaFast = s.betaFast || 32, betaSlow = s.betaSlow || 1;
      const corrDim = (rot: number) => (D * Math.log(O / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
      let lo = corrDim(betaFast), hi = corrDim(betaSlow);
      if (s.truncate !== false) { lo = Math.floor(lo); hi = Math.ceil(hi); }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, D - 1);
      if (lo === hi) hi += 0.001;
      const loF = f(lo), spanF = f(hi - lo), thetaF = f(theta);
      for (let i = 0; i < h; i++) {
        const posFreq = f(Math.pow(thetaF, f(f(2 * i) / f(D))));
        const extrap = f(1 / posFreq), interp = f(1 / f(fac * posFreq));
        const ramp = Math.min(1, Math.max(0, f(f(i - loF) / spanF)));
        const e = f(1 - ramp);
        inv[i] = f(f(interp * f(1 - e)) + f(extrap * e));
      }
      return { invFreq: inv, attentionScale: yarnAttentionScale(s) };
    }
  }
}

// ---------------------------------------------------------------------------
// Hugging Face config.json

const HF_KEYS: Record<ScaledRopeType, Record<string, keyof RopeScaling>> = {
  linear: { factor: 'factor' },
  dynamic: { factor: 'factor' },
  llama3: { factor: 'factor', low_freq_factor: 'lowFreqFactor', high_freq_factor: 'highFreqFactor', original_max_position_embeddings: 'originalMaxPositionEmbeddings' },
  yarn: {
    factor: 'factor', original_max_position_embeddings: 'originalMaxPositionEmbeddings', beta_fast: 'betaFast', beta_slow: 'betaSlow',
    attention_factor: 'attentionFactor', mscale: 'mscale', mscale_all_dim: 'mscaleAllDim', truncate: 'truncate',
  },
};

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const present = (o: Record<string, unknown>, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k) && o[k] !== undefined && o[k] !== null;

/** One rope dict (rope_scaling or rope_parameters) of a config.json: null for
 * plain RoPE; problems named by the file's keys. */
function readRopeDict(json: Record<string, unknown>, key: 'rope_scaling' | 'rope_parameters', problems: string[]): RopeScaling | null {
  const d = json[key];
  if (!isPlainObject(d)) { problems.push(`${key} must be an object or null, got ${JSON.stringify(d)}`); return null; }
  let typeKey: string;
  if (present(d, 'rope_type')) typeKey = 'rope_type';
  else if (present(d, 'type')) typeKey = 'type';
  else if (key === 'rope_parameters' || Object.keys(d).length === 0) return null;  // {} or only rope_theta: plain RoPE
  else { problems.push(`${key} ${JSON.stringify(d)} names no rope_type (or legacy type); supported: ${ROPE_TYPES.join(', ')}`); return null; }
  const type = d[typeKey];
  if (type === 'default') return null;
  if (typeof type !== 'string' || !(ROPE_TYPES as readonly string[]).includes(type)) {
    problems.push(`${key}.${typeKey} ${JSON.stringify(type)} is not supported (supported: ${ROPE_TYPES.join(', ')})`);
    return null;
  }
  const t = type as ScaledRopeType;
  // partial rotary embeddings change which dimensions rotate: not implemented
  if (present(d, 'partial_rotary_factor') && d.partial_rotary_factor !== 1) {
    problems.push(`${key}.partial_rotary_factor ${JSON.stringify(d.partial_rotary_factor)} is not supported (only 1: every head dimension rotates)`);
  }
  const s = { type: t } as RopeScaling;
  const out = s as unknown as Record<string, unknown>;
  for (const [hfKey, ours] of Object.entries(HF_KEYS[t])) {
    if (!present(d, hfKey)) continue;
    const v = d[hfKey];
    if (ours === 'truncate') {
      if (typeof v !== 'boolean') problems.push(`${key}.truncate must be a boolean, got ${JSON.stringify(v)}`);
      else out[ours] = v;
    } else if (ours === 'originalMaxPositionEmbeddings') {
      if (!isPosInt(v)) problems.push(`${key}.original_max_position_embeddings must be a positive integer, got ${JSON.stringify(v)}`);
      else out[ours] = v;
    } else if (!isNum(v)) {
      problems.push(`${key}.${hfKey} must be a number, got ${JSON.stringify(v)}`);
    } else {
      out[ours] = v;
    }
  }
  // beta_fast / beta_slow of 0 mean the defaults (transformers reads them with `or`)
  if (s.betaFast === 0) delete s.betaFast;
  if (s.betaSlow === 0) delete s.betaSlow;
  const required = t === 'llama3' ? ['factor', 'low_freq_factor', 'high_freq_factor'] : t === 'yarn' ? [] : ['factor'];
  for (const k of required) if (!present(d, k)) problems.push(`${key} (${t}) is missing ${k}`);
  return s;
}

/**
 * The scaled RoPE of a transformers config.json object: rope_scaling (with
 * rope_type, or the legacy type key) or the newer rope_parameters; null for
 * plain RoPE. Pushes problems named by the file's keys (unsupported types by
 * name, missing or malformed values). Kept apart from the rest of configFromHf.
 */
export function ropeScalingFromHf(json: Record<string, unknown>, maxPositionEmbeddings: number, problems: string[]): RopeScaling | null {
  const mine: string[] = [];
  const fromScaling = present(json, 'rope_scaling') ? readRopeDict(json, 'rope_scaling', mine) : null;
  // (a rope_parameters that is not an object is configFromHf's to report)
  const fromParams = isPlainObject(json.rope_parameters) ? readRopeDict(json, 'rope_parameters', mine) : null;
  if (present(json, 'partial_rotary_factor') && json.partial_rotary_factor !== 1) {
    mine.push(`partial_rotary_factor ${JSON.stringify(json.partial_rotary_factor)} is not supported (only 1: every head dimension rotates)`);
  }
  if (fromScaling && fromParams && JSON.stringify(fromScaling) !== JSON.stringify(fromParams)) {
    mine.push(`rope_scaling ${JSON.stringify(json.rope_scaling)} and rope_parameters ${JSON.stringify(json.rope_parameters)} disagree; keep one of them`);
  }
  const s = fromScaling ?? fromParams;
  if (s && (s.type === 'llama3' || s.type === 'yarn')) {
    // a top-level original_max_position_embeddings takes precedence, as in transformers
    if (present(json, 'original_max_position_embeddings')) {
      const o = json.original_max_position_embeddings;
      if (!isPosInt(o)) mine.push(`original_max_position_embeddings must be a positive integer, got ${JSON.stringify(o)}`);
      else s.originalMaxPositionEmbeddings = o;
    }
    if (s.originalMaxPositionEmbeddings === undefined && Number.isInteger(maxPositionEmbeddings)) s.originalMaxPositionEmbeddings = maxPositionEmbeddings;
    if (s.type === 'yarn' && s.factor === undefined && s.originalMaxPositionEmbeddings !== undefined) {
      s.factor = maxPositionEmbeddings / s.originalMaxPositionEmbeddings;
    }
  }
  if (s && mine.length === 0) {
    const where = fromScaling ? 'rope_scaling' : 'rope_parameters';
    const hfName = (k: keyof RopeScaling) => {
      if (k === 'type') return `${where}.rope_type`;
      if (k === 'originalMaxPositionEmbeddings' && present(json, 'original_max_position_embeddings')) return 'original_max_position_embeddings';
      const hk = Object.entries(HF_KEYS[s.type]).find(([, o]) => o === k)?.[0] ?? k;
      return `${where}.${hk}`;
    };
    mine.push(...ropeScalingProblems(s, maxPositionEmbeddings, hfName));
  }
  problems.push(...mine);
  return mine.length ? null : s;
}

/** The rope_scaling object config.json carries for a scaled config (null for plain RoPE). */
export function ropeScalingToHf(s: RopeScaling | null | undefined): Record<string, unknown> | null {
  if (!s) return null;
  const out: Record<string, unknown> = { rope_type: s.type };
  for (const [hfKey, ours] of Object.entries(HF_KEYS[s.type])) if (s[ours] !== undefined) out[hfKey] = s[ours];
  return out;
}
