// The outputs of `pnpm bench`, computed from RunRecords: results.csv,
// summary.md and the self-contained report.html.
export { writeReports, type ReportPaths } from './write.js';
export { resultsCsv, writeResultsCsv, csvColumns } from './csv.js';
export { renderSummary } from './summary.js';
export {
  renderReport, paretoByTask, kernelFraction, vegaLiteToSvg, escapeHtml, REPORT_CHARTS, NO_DEPLOYABLE_TEXT, NO_PEERS_TEXT,
  type ReportOptions, type ReportChart, type KernelSpeeds, type KernelSpeedRow, type TaskPareto,
} from './html.js';
export {
  metricDirection, mainMetrics, paretoFront, runLabels, statusText, provenanceLine, peerComparisons, MAIN_METRIC_ORDER,
  type MetricDirection, type ParetoPoint, type PeerComparison,
} from './common.js';
export { seedGroups, comparisons, claims, CLAIMS, metricCell, methodKind, equivalenceMargin, notLearned, busyRuns, INTERVAL_METRICS, type SeedGroup, type MetricSummary, type Comparison, type ClaimRow, type Verdict, type MethodKind } from './resolve.js';
