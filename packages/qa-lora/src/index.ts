export { type QaloraConfig, QALORA_DEFAULTS, qaloraConfig, adapterConfig } from './config.js';
export {
  intnLinear, quantizeLinearIntN, rtnFactory, withRequantizedIntN, quantizeModelGptq, captureInputs, loadQaloraModel, prepareQalora, quantizedBytes, qaloraOptimizer,
  type CalibrationRows, type QaloraLoadOptions, type QaloraPrepareResult,
} from './method.js';
export { mergeQalora, withMergedQalora, cloneIntN, type QaloraMergeResult } from './merge.js';
export { saveQaloraModel, loadQaloraMerged, QALORA_QUANT_METHOD, QALORA_CODE_LAYOUT } from './files.js';
export { groupwiseOf, unpackIntNCodes } from './gguf.js';
export {
  loadGptqModel, inspectGptqModel, saveGptqModel, gptqToIntN, intnToGptq, gptqSpecOf, intnGroupFor, isGptqDir, GPTQ_QUANT_METHOD, GPTQ_FORMATS, GPTQ_QUANTIZE_CONFIG_FILE,
  GPTQ_EXPORT_REPORT_FILE, type GptqSpec, type GptqFormat, type GptqParts, type LoadGptqOptions, type LoadedGptq, type GptqInfo, type SaveGptqOptions, type GptqExportReport,
} from './gptq.js';
