export { type QloraConfig, QLORA_DEFAULTS, qloraConfig, adapterConfig } from './config.js';
export {
  quantizeLinear, quantizingFactory, loadQloraModel, prepareQlora, quantizedBytes, qloraOptimizer, type QloraPrepareResult,
} from './method.js';
export { mergeQlora, withMerged, type MergeTarget, type MergeResult } from './merge.js';
export { saveQuantizedModel, loadQuantizedModel } from './files.js';
export { loftq, lowRankApprox, type LoftqResult, type LowRank } from './loftq.js';
