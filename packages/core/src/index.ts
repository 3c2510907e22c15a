export * from './dtype.js';
export { Tensor, type TensorOptions, shapeNumel, hostValues, copyInto, copyRows } from './tensor.js';
export { memory, type MemorySnapshot, type DeviceMemorySnapshot } from './memory.js';
export { native, openmpWait, configureOpenMpWait, DEFAULT_GOMP_SPINCOUNT, type OpenMpWait } from './native.js';
export { cudaInfo, cudaAvailable, resolveDevice, synchronize, deviceName, type DeviceChoice, type CudaInfo } from './device.js';
export { matmul, gemmKernel, cublasLtStatus, type MatmulOptions } from './ops/gemm.js';
export * from './ops/optim.js';
export {
  crossEntropyForward, crossEntropyBackward, crossEntropyDefaultChunk, type CrossEntropyOptions,
  type CrossEntropyForwardOptions, type CrossEntropyForwardResult, type CrossEntropyBackwardOptions,
  type CrossEntropyBackwardResult,
} from './ops/cross_entropy.js';
export { embeddingForward, embeddingBackward, type EmbeddingOptions } from './ops/embedding.js';
export { rmsnorm, rmsnormBackward, type RmsNormOptions, type RmsNormResult, type RmsNormBackwardOptions, type RmsNormBackwardResult } from './ops/rmsnorm.js';
export { rope, ropeBackward, ropeInvFreq, type RopeOptions } from './ops/rope.js';
export { swiglu, swigluBackward, type SwigluOptions, type SwigluBackwardOptions } from './ops/swiglu.js';
export * from './ops/attention.js';
export * from './ops/elementwise.js';
export * from './nn/config.js';
export * from './nn/rope_scaling.js';
export * from './nn/module.js';
export { DenseLinear, IntNLinear, Quant4Linear } from './nn/linear.js';
export * from './quant/quant4.js';
export * from './quant/intn.js';
export { LlamaModel, LINEAR_NAMES, biasedProjections, type BiasedName, type BlockExtras, modelTensorShapes, parseCheckpointing, isCheckpointed, type CheckpointingMode, type LinearName, type LinearFactory, type FromTensorsOptions, type Batch, type ForwardResult, type WeightOptions, disposeBatch } from './nn/llama.js';
export { Rng, type RngState } from './util/rng.js';
export * from './train/schedule.js';
export { AdamW, type AdamWConfig } from './train/adamw.js';
export { AdamW8bit, ADAMW8BIT_MIN_SIZE } from './train/adamw8bit.js';
export { makeOptimizer, OPTIMIZER_NAMES, type Optimizer, type OptimizerFactory, type OptimizerName } from './train/optimizer.js';
export { ArrayDataSource, type DataSource } from './train/data_source.js';
export { Trainer, DivergedError, IGNORE_INDEX, type TrainerConfig, type StepStats } from './train/trainer.js';
export { writeFileAtomic, writeJsonAtomic, type AtomicChunk, type AtomicData } from './io/atomic.js';
export {
  readSafetensors, readSafetensorsHeader, writeSafetensors, SAFETENSORS_MAX_HEADER_BYTES, SAFETENSORS_TO_DTYPE,
  DTYPE_TO_SAFETENSORS, type SafetensorsEntry, type SafetensorsHeader, type ReadSafetensorsOptions,
  type WriteSafetensorsOptions, type FloatTarget,
} from './io/safetensors.js';
export {
  configFromHf, configToHf, hfTensorShapes, hfShardName, loadHfModelDir, saveHfModelDir, HF_CONFIG_FILE, HF_WEIGHTS_FILE,
  HF_WEIGHTS_INDEX_FILE, type ConfigToHfOptions, type LoadHfOptions, type LoadedHfModel, type SaveHfOptions,
  loadHfModel, saveHfModel, type LoadHfModelOptions,
} from './io/hf.js';
export {
  exportGguf, ggufArchitecture, readGguf, ggufScalar, ggufArray, quantizeQ8_0, quantizeQ4_1, dequantizeQ8_0, dequantizeQ4_1, groupwiseToQ4_1,
  ropeRowPermutation, permuteRows, gpt2ByteToUnicode, GGUF_MAGIC, GGUF_VERSION, GGUF_ALIGNMENT, GGML_QK, GGUF_BYTE_SPECIALS,
  type ExportGgufOptions, type GgufExportSummary, type GgufWeightType, type GroupwiseInt4, type GgufFile, type GgufTensorInfo,
  type GgufKv, type GgufValueType, type GgufScalar, type GgufScalarType, type GgufEmbeddingType, type GgufTensorError, tensorError,
} from './io/gguf.js';
export { saveCheckpoint, loadCheckpoint } from './train/checkpoint.js';
export * from './ops/lora.js';
export { KVCache } from './nn/llama.js';
export {
  FusedDecoder, fusedDecodeUnsupported, decodeI16Available, decodeI8Available, decodeI8Q4Available, decodeActivationsBuilt, fastestDecodeActivations,
  type DecodeActivations, type FusedDecoderOptions,
} from './nn/decode_step.js';
export { generate, pick, type GenerateOptions, type GenerateResult } from './eval/generate.js';
export { evaluateLoss, rowLogLikelihoods, classify, type LossResult, type ClassificationResult } from './eval/evaluate.js';
export {
  ByteTokenizer, HfTokenizer, BYTE_BOS, BYTE_EOS, BYTE_PAD, BYTE_BOS_TEXT, BYTE_EOS_TEXT, HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG_FILE,
  type Tokenizer, type HfTokenizerOptions,
} from './data/tokenizer.js';
export {
  readJsonl, datasetFromRows, textDataset, sftDataset, chatDataset, parseDatasetFormat, CHAT_ROLES, DATASET_KINDS,
  type Dataset, type DatasetKind, type TextRow, type SftRow, type ChatRow, type ChatMessage, type ChatRole, type ReadJsonlOptions,
} from './data/jsonl.js';
export {
  ChatTemplate, DEFAULT_CHAT_TEMPLATE, encodeChat, lastAssistantContent, withLastAssistant,
  type ChatSpecials, type ChatTemplateOptions, type EncodedChat, type EncodeChatOptions,
} from './data/chat.js';
export {
  TokenRows, TokenDataSource, packTexts, padExamples, packExamples, padChats, packChats, prepareDataset, epochBatches, dynamicLength, countTargets, countTokens, padIdOf,
  type PrepareStats, type PrepareMode, type EvalBatch, type TokenDataSourceOptions, type TokenDataSourceState, type TokenRowsExtras,
  type PackExamplesOptions, type PrepareDatasetOptions, type EpochBatchesOptions, type ChatPrepareOptions,
} from './data/batching.js';
export { parseCli, intOption, type CliValues } from './util/cli.js';
export { median, relativeError } from './util/compare.js';
export { checkJsonDepth, parseJson, parseJsonStrict, JSON_MAX_DEPTH } from './util/json.js';
export { checkRegularFile, openRegularFile, readTextFile } from './util/files.js';
export { linearRegExp } from './util/regex.js';
export {
  type KernelCase, type KernelRow, type KernelReport, type KernelSection, type KernelBenchOptions, type KernelTiming, type OpenblasInfo, type StepShape,
  type SweepSection, KERNEL_REPORT_FORMAT, NO_OPENBLAS, formatKernelTable, kernelFraction, loadOpenblas, measureKernels, peakCases, runKernelCases,
  stepKernelCases, sweepKernelCases, cudaGemmCases,
} from './bench/kernels.js';
export { loadLlamaCpp, tryLoadLlamaCpp, asLlamaTokens, nextTokenLogProbs, maxLogProbDiff, ggufNameOf, unpermuteRows, modelFromGguf, type LlamaCppLib, type NodeLlamaCpp } from './interop/llamacpp.js';
