// Shared by the GGUF tests: now in the library (src/interop/llamacpp.ts), so
// the other packages' GGUF tests use the same; re-exported under the names
// these tests use.
export { ggufNameOf, modelFromGguf, nextTokenLogProbs as logProbs, unpermuteRows } from '../src/index.js';
