// LoRA options, with PEFT's defaults, validated.

export type LoraTargets = 'all-linear' | readonly string[] | RegExp;

export interface LoraConfig {
  /** rank (default 8) */
  r: number;
  /** scaling numerator (default 8): scale = alpha / r, or alpha / sqrt(r) with rsLoRA */
  alpha: number;
  /** dropout on the adapter's input only (default 0) */
  dropout: number;
  /** rank-stabilised scaling alpha / sqrt(r) (default false) */
  rslora: boolean;
  /** 'all-linear' (every projection; never lm_head), module names like
   * ['q_proj', 'v_proj'], or a RegExp over full module names */
  targets: LoraTargets;
  /** A ~ kaiming-uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default), or N(0, 1/r) */
  init: 'kaiming' | 'gaussian';
  /** seeds A's initialisation and the dropout masks */
  seed: number;
  /** QA-LoRA group size L: the adapter reads the input averaged over groups of
   * L consecutive features, times in/L (PEFT's use_qalora / qalora_group_size);
   * A is [r, in/L]. Omitted or null: plain LoRA. */
  poolSize?: number | null;
  /** also train the token embedding (and the LM head, tied to it or not) in
   * f32, as PEFT's modules_to_save ['embed_tokens'] (+ 'lm_head'); saved
   * whole in the adapter file. Model-wide, not per adapter (default false). */
  trainEmbeddings?: boolean;
}

export const LORA_DEFAULTS: Readonly<LoraConfig> = Object.freeze({
  r: 8, alpha: 8, dropout: 0, rslora: false, targets: 'all-linear', init: 'kaiming', seed: 0,
});

export function loraConfig(opts: Partial<LoraConfig> = {}): LoraConfig {
  const c: LoraConfig = { ...LORA_DEFAULTS, ...opts };
  const problems: string[] = [];
  if (!Number.isInteger(c.r) || c.r < 1) problems.push(`r must be a positive integer, got ${c.r}`);
  if (typeof c.alpha !== 'number' || !Number.isFinite(c.alpha)) problems.push(`alpha must be a finite number, got ${c.alpha}`);
  if (!(c.dropout >= 0 && c.dropout < 1)) problems.push(`dropout must be in [0, 1), got ${c.dropout}`);
  if (typeof c.rslora !== 'boolean') problems.push(`rslora must be a boolean, got ${c.rslora}`);
  if (c.init !== 'kaiming' && c.init !== 'gaussian') problems.push(`init must be 'kaiming' or 'gaussian', got ${String(c.init)}`);
  if (!(c.targets === 'all-linear' || c.targets instanceof RegExp || (Array.isArray(c.targets) && c.targets.length > 0 && c.targets.every((t) => typeof t === 'string')))) {
    problems.push(`targets must be 'all-linear', a non-empty list of module names, or a RegExp`);
  }
  if (!Number.isFinite(c.seed)) problems.push(`seed must be a finite number, got ${c.seed}`);
  if (c.poolSize !== undefined && c.poolSize !== null && !(Number.isInteger(c.poolSize) && c.poolSize >= 1)) {
    problems.push(`poolSize (QA-LoRA group size) must be a positive integer, got ${c.poolSize}`);
  }
  if (c.trainEmbeddings !== undefined && typeof c.trainEmbeddings !== 'boolean') problems.push(`trainEmbeddings must be a boolean, got ${String(c.trainEmbeddings)}`);
  if (problems.length) throw new Error(`LoRA config: ${problems.join('; ')}`);
  return c;
}

export function loraScale(c: Pick<LoraConfig, 'alpha' | 'r' | 'rslora'>): number {
  return c.rslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
}
