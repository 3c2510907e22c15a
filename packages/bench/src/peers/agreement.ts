// How closely a peer's loss curve follows ours: used when a peer run is
// recorded and when reports pair peers with our runs.
/** Curves closer than this at a step agree there (fp32 rounding differs between implementations). */
export const LOSS_AGREEMENT = 1e-4;

/** How closely a peer's loss curve follows ours (same math, so closely). Training
 * can amplify rounding differences once it is chaotic (a jumpy loss at a high
 * learning rate): the first 10 steps show the math, the run of agreeing steps
 * and the whole-curve maximum show how long it held. */
export function lossAgreement(peer: readonly number[], ours: readonly number[]): { lossMaxAbsDiff10: number; lossMaxAbsDiff: number; stepsAgreeing: number } {
  const n = Math.min(peer.length, ours.length);
  const d = Array.from({ length: n }, (_, i) => Math.abs(peer[i] - ours[i]));
  const firstApart = d.findIndex((x) => !(x <= LOSS_AGREEMENT));
  return {
    lossMaxAbsDiff10: n ? Math.max(...d.slice(0, 10)) : NaN,
    lossMaxAbsDiff: n ? Math.max(...d) : NaN,
    stepsAgreeing: firstApart < 0 ? n : firstApart,
  };
}

