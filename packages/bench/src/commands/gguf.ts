// `tunebench gguf`: a model directory to a GGUF file for llama.cpp.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ByteTokenizer, type LlamaModel, exportGguf, loadHfModel, parseCli } from '@tunebench/core';
import { QALORA_QUANT_METHOD, groupwiseOf, loadQaloraMerged } from '@tunebench/qa-lora';

const GGUF_HELP = `tunebench gguf — export a model directory to GGUF for llama.cpp.

Usage: pnpm bench -- gguf --model DIR --out FILE.gguf [--type f16|q8_0|q4_1] [--full-attention]

  --model   a Hugging Face directory of a Llama, Mistral, Qwen2/2.5 or Qwen3 model (full
            fine-tuning's output, a merged LoRA/QLoRA model) or a merged QA-LoRA INT-N
            directory (saveQaloraModel); written as llama.cpp's llama (Llama, Mistral),
            qwen2 or qwen3 architecture
  --out     the GGUF file to write
  --type    weight type of the 2-D tensors: f16 (default for dense models), q8_0, or q4_1
            (default for a merged QA-LoRA INT4 g32 model, whose groups become Q4_1 blocks
            exactly, up to fp16 rounding of scale and offset)
  --full-attention  export a model with a sliding window (Mistral's sliding_window) although
            llama.cpp's llama architecture attends to every earlier position (it differs
            from the model past the window)

The vocabulary is the byte tokenizer's (256 byte tokens and BOS/EOS/PAD).`;

/** \`tunebench gguf\`: a model directory to a GGUF file; exits. */
export function ggufCommand(argv: string[]): never {
  const p = parseCli({ model: { type: 'string' }, out: { type: 'string' }, type: { type: 'string' }, 'full-attention': { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } }, GGUF_HELP, argv);
  const fail = (msg: string): never => { console.error(`tunebench gguf: ${msg}\nRun with --help for the options.`); process.exit(2); };
  if (!p.model) fail('--model is required');
  if (!p.out) fail('--out is required');
  const configPath = join(p.model!, 'config.json');
  if (!existsSync(configPath)) fail(`--model: ${p.model} has no config.json`);
  let quantMethod: unknown;
  try { quantMethod = (JSON.parse(readFileSync(configPath, 'utf8')) as { quantization_config?: { quant_method?: unknown } }).quantization_config?.quant_method; }
  catch (e) { fail(`${configPath}: ${(e as Error).message}`); }
  const intn = quantMethod === QALORA_QUANT_METHOD;
  const type = (p.type ?? (intn ? 'q4_1' : 'f16')) as 'f16' | 'q8_0' | 'q4_1';
  if (!['f16', 'q8_0', 'q4_1'].includes(type)) fail(`--type must be f16, q8_0 or q4_1, got '${p.type}'`);
  let model: LlamaModel | null = null;
  let code = 0;
  try {
    if (quantMethod !== undefined && !intn) throw new Error(`${configPath}: quantization_config.quant_method ${JSON.stringify(quantMethod)} is not one this command reads (a dense model, or '${QALORA_QUANT_METHOD}'); merge it to a dense model first`);
    model = intn ? loadQaloraMerged(p.model!) : loadHfModel(p.model!, { trainable: false, frozenDtype: 'f32' });
    const tok = new ByteTokenizer();
    if (model.config.vocabSize !== tok.vocabSize) throw new Error(`the model's vocabulary has ${model.config.vocabSize} ids; only the byte tokenizer (${tok.vocabSize}) can be exported`);
    if (intn && type !== 'q4_1') throw new Error('a merged QA-LoRA model is exported as q4_1 (its INT4 g32 groups are Q4_1 blocks); other types would requantize it');
    const summary = exportGguf(model, resolve(p.out!), { type, tokenizer: tok, fullAttention: p['full-attention'] === true, ...(intn ? { groupwise: groupwiseOf(model) } : {}) });
    const exact = summary.tensors.filter((t) => t.groupwise).length;
    console.log(`${summary.path}: ${summary.tensors.length} tensors, ${summary.bytes} bytes, ${type}${exact ? ` (${exact} projections written exactly from their INT4 groups)` : ''}`);
  } catch (e) {
    console.error(`tunebench gguf: ${(e as Error).message}`);
    code = 1;
  } finally {
    model?.dispose();
  }
  process.exit(code);
}
