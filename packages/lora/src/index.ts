export { type LoraConfig, type LoraTargets, LORA_DEFAULTS, loraConfig, loraScale } from './config.js';
export { LoraLinear, type Adapter, type AdapterOptions, pooledDelta, checkPoolSize } from './layer.js';
export {
  prepareLora, resolveTargets, wrap, countParameters, loraLayers, setActiveAdapter, mergeAndUnload, trainEmbeddings, trainedEmbeddings,
  type PrepareResult,
} from './method.js';
export {
  saveAdapter, loadAdapter, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, type SaveAdapterOptions, type SaveAdapterResult,
  type LoadAdapterOptions, type LoadAdapterResult,
} from './peft.js';
