// `tunebench gguf`: a model directory to a GGUF file for llama.cpp.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  ByteTokenizer, type GgufEmbeddingType, type GgufExportSummary, type GgufWeightType, type LlamaModel, exportGguf, loadHfModel, parseCli,
} from '@tunebench/core';
import { QALORA_QUANT_METHOD, groupwiseOf, loadQaloraMerged } from '@tunebench/qa-lora';

const GGUF_HELP = `tunebench gguf — export a model directory to GGUF for llama.cpp.

Usage: pnpm bench -- gguf --model DIR --out FILE.gguf [--type f16|q8_0|q4_1] [--embeddings f16|q8_0] [--full-attention]

  --model       a Hugging Face directory of a Llama, Mistral, Qwen2/2.5 or Qwen3 model (full
                fine-tuning's output, a merged LoRA/QLoRA model) or a merged QA-LoRA INT-N
                directory (saveQaloraModel); written as llama.cpp's llama (Llama, Mistral),
                qwen2 or qwen3 architecture
  --out         the GGUF file to write
  --type        storage of the projections (attention and MLP weights):
                  f16   default for dense models; for a merged QA-LoRA directory its INT-N
                        weights dequantized exactly (scale·code + offset), then rounded to fp16
                  q8_0  dense models only (requantized)
                  q4_1  default for a merged QA-LoRA INT4 g32 directory: its groups become
                        Q4_1 blocks exactly (the same codes; fp16 rounding of scale and offset);
                        a dense model is requantized
  --embeddings  storage of token_embd and output (the head; tied, llama.cpp uses token_embd):
                f16 (default, in every export) or q8_0 (smaller; the error it adds is printed)
  --full-attention  export a model with a sliding window (Mistral's sliding_window) although
                llama.cpp's llama architecture attends to every earlier position (it differs
                from the model past the window)

Norms are F32. The vocabulary is the byte tokenizer's (256 byte tokens and BOS/EOS/PAD).`;

export interface ExportModelDirOptions {
  model: string;
  out: string;
  type?: GgufWeightType;
  embeddings?: GgufEmbeddingType;
  /** write a sliding-window (Mistral) model as llama.cpp's llama architecture, which attends to every earlier position */
  fullAttention?: boolean;
}

export interface ExportModelDirResult {
  summary: GgufExportSummary;
  type: GgufWeightType;
  /** the directory held a merged QA-LoRA INT-N model */
  intn: boolean;
  /** one line per fact worth printing: what is exact, the embeddings' error */
  notes: string[];
}

/** A model directory (Hugging Face dense, or merged QA-LoRA INT-N) to a GGUF
 * file; throws naming the problem. */
export function exportModelDir(opts: ExportModelDirOptions): ExportModelDirResult {
  const configPath = join(opts.model, 'config.json');
  if (!existsSync(configPath)) throw new Error(`--model: ${opts.model} has no config.json`);
  let quantMethod: unknown;
  try { quantMethod = (JSON.parse(readFileSync(configPath, 'utf8')) as { quantization_config?: { quant_method?: unknown } }).quantization_config?.quant_method; }
  catch (e) { throw new Error(`${configPath}: ${(e as Error).message}`); }
  const intn = quantMethod === QALORA_QUANT_METHOD;
  if (quantMethod !== undefined && !intn) throw new Error(`${configPath}: quantization_config.quant_method ${JSON.stringify(quantMethod)} is not one this command reads (a dense model, or '${QALORA_QUANT_METHOD}'); merge it to a dense model first`);
  const type = opts.type ?? (intn ? 'q4_1' : 'f16');
  if (intn && type === 'q8_0') throw new Error('a merged QA-LoRA model is exported as q4_1 (its INT4 g32 groups are Q4_1 blocks exactly) or f16 (its weights dequantized exactly, then rounded to fp16); q8_0 would requantize it');
  let model: LlamaModel | null = null;
  try {
    model = intn ? loadQaloraMerged(opts.model) : loadHfModel(opts.model, { trainable: false, frozenDtype: 'f32' });
    const tok = new ByteTokenizer();
    if (model.config.vocabSize !== tok.vocabSize) throw new Error(`the model's vocabulary has ${model.config.vocabSize} ids; only the byte tokenizer (${tok.vocabSize}) can be exported`);
    // q4_1 of a QA-LoRA model: the INT4 g32 groups as they are (groupwiseOf refuses other widths);
    // f16: exportGguf dequantizes each IntNLinear (toDense) and rounds to fp16
    const groupwise = intn && type === 'q4_1' ? groupwiseOf(model) : undefined;
    const summary = exportGguf(model, resolve(opts.out), {
      type, tokenizer: tok, fullAttention: opts.fullAttention === true,
      ...(opts.embeddings ? { embeddings: opts.embeddings } : {}), ...(groupwise ? { groupwise } : {}),
    });
    const notes: string[] = [];
    const exact = summary.tensors.filter((t) => t.groupwise).length;
    if (exact) notes.push(`${exact} projections written exactly from their INT4 groups (Q4_1, fp16 scale and offset)`);
    else if (intn) notes.push('projections: the INT-N weights dequantized exactly (scale·code + offset), stored as F16 (fp16 rounding)');
    else if (type !== 'f16') notes.push(`projections requantized to ${type.toUpperCase()} (not exact)`);
    for (const t of summary.tensors) {
      if (!t.error) continue;
      notes.push(`${t.name}: ${t.type}, max |error| ${t.error.maxAbs.toExponential(2)}, relative rms error ${t.error.relRms.toExponential(2)}`);
    }
    return { summary, type, intn, notes };
  } finally {
    model?.dispose();
  }
}

/** \`tunebench gguf\`: a model directory to a GGUF file; exits. */
export function ggufCommand(argv: string[]): never {
  const p = parseCli({
    model: { type: 'string' }, out: { type: 'string' }, type: { type: 'string' }, embeddings: { type: 'string' }, 'full-attention': { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
  }, GGUF_HELP, argv);
  const fail = (msg: string): never => { console.error(`tunebench gguf: ${msg}\nRun with --help for the options.`); process.exit(2); };
  if (!p.model) fail('--model is required');
  if (!p.out) fail('--out is required');
  if (!existsSync(join(p.model!, 'config.json'))) fail(`--model: ${p.model} has no config.json`);
  if (p.type !== undefined && !['f16', 'q8_0', 'q4_1'].includes(p.type)) fail(`--type must be f16, q8_0 or q4_1, got '${p.type}'`);
  if (p.embeddings !== undefined && !['f16', 'q8_0'].includes(p.embeddings)) fail(`--embeddings must be f16 or q8_0, got '${p.embeddings}'`);
  let code = 0;
  try {
    const r = exportModelDir({ model: p.model!, out: p.out!, type: p.type as GgufWeightType | undefined, embeddings: p.embeddings as GgufEmbeddingType | undefined, fullAttention: p['full-attention'] === true });
    console.log(`${r.summary.path}: ${r.summary.tensors.length} tensors, ${r.summary.bytes} bytes, ${r.type}`);
    for (const n of r.notes) console.log(`  ${n}`);
  } catch (e) {
    console.error(`tunebench gguf: ${(e as Error).message}`);
    code = 1;
  }
  process.exit(code);
}
