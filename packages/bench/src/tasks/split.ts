// Deterministic, seeded splitting shared by the tasks.
//
// Items are ordered by a hash of (seed, item key) rather than shuffled with a
// stateful generator: an item's place depends only on the seed and its own
// key, never on how many other items came before it or in what order the
// caller passed them. The same seed therefore always gives the same split of
// the same items, whatever order they arrive in.

/**
 * 53-bit string hash (cyrb53 by bryc, public domain): two 32-bit lanes mixed
 * with Math.imul. Not cryptographic; well spread, which is all a split needs.
 */
export function hash53(text: string, seed = 0): number {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** `items` in a seeded pseudo-random order that depends only on (seed, key). */
export function seededOrder<T>(items: readonly T[], keyOf: (item: T) => string, seed: number): T[] {
  if (!Number.isInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
  const keyed = items.map((item) => {
    const key = keyOf(item);
    return { item, key, h: hash53(`${seed}\u0000${key}`) };
  });
  keyed.sort((a, b) => a.h - b.h || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return keyed.map((k) => k.item);
}

export interface Fractions {
  /** Share of each stratum that goes to validation, in [0, 1). */
  validationFraction: number;
  /** Share of each stratum that goes to test, in [0, 1). */
  testFraction: number;
}

export interface ThreeWaySplit<T> {
  train: T[];
  validation: T[];
  test: T[];
}

export function checkFractions({ validationFraction, testFraction }: Fractions): void {
  for (const [name, v] of [['validationFraction', validationFraction], ['testFraction', testFraction]] as const) {
    if (!Number.isFinite(v) || v < 0 || v >= 1) throw new Error(`${name} must be in [0, 1), got ${v}`);
  }
  if (validationFraction + testFraction >= 1) {
    throw new Error(`validationFraction + testFraction must be < 1, got ${validationFraction + testFraction}`);
  }
}

/**
 * Splits every stratum separately (so each stratum keeps its share in every
 * split): in a stratum of n items, round(n * testFraction) go to test,
 * round(n * validationFraction) to validation, the rest to train, which always
 * keeps at least one item when n >= 1. Strata are visited in sorted order and
 * each split lists its items stratum by stratum, in seeded order.
 */
export function stratifiedSplit<T>(
  items: readonly T[],
  opts: Fractions & { seed: number; keyOf: (item: T) => string; stratumOf: (item: T) => string },
): ThreeWaySplit<T> {
  checkFractions(opts);
  const strata = new Map<string, T[]>();
  for (const item of items) {
    const s = opts.stratumOf(item);
    let list = strata.get(s);
    if (!list) strata.set(s, (list = []));
    list.push(item);
  }
  const out: ThreeWaySplit<T> = { train: [], validation: [], test: [] };
  for (const s of [...strata.keys()].sort()) {
    const ordered = seededOrder(strata.get(s)!, opts.keyOf, opts.seed);
    const n = ordered.length;
    let nTest = Math.round(n * opts.testFraction);
    let nVal = Math.round(n * opts.validationFraction);
    // Never leave train empty: shrink the larger of the two held-back parts.
    while (n > 0 && nTest + nVal > n - 1) {
      if (nTest >= nVal) nTest--;
      else nVal--;
    }
    out.test.push(...ordered.slice(0, nTest));
    out.validation.push(...ordered.slice(nTest, nTest + nVal));
    out.train.push(...ordered.slice(nTest + nVal));
  }
  return out;
}
