// What the trainer reads batches from. The data issue supplies real sources
// (JSONL, corpora); this file holds the contract and an in-memory source.
import { Tensor } from '../tensor.js';
import type { Batch } from '../nn/llama.js';
import { Rng, type RngState } from '../util/rng.js';

/** A deterministic stream of micro-batches whose position can be saved. */
export interface DataSource {
  /** the next micro-batch; the caller owns (and disposes) its tensors */
  next(): Batch;
  /** JSON-serialisable position, for checkpoints */
  state(): unknown;
  /** continue from a position returned by state() */
  restore(state: unknown): void;
}

/** Micro-batches from in-memory rows of ids/targets ([T] each), grouped B
 * at a time, reshuffled every epoch from a seed. */
export class ArrayDataSource implements DataSource {
  private order: number[] = [];
  private cursor = 0;
  private epoch = 0;
  private rng: Rng;
  private readonly rows: { ids: Int32Array; targets: Int32Array }[];

  constructor(rows: { ids: Int32Array; targets: Int32Array }[], readonly batchSize: number, readonly seed = 0, readonly shuffle = true) {
    if (rows.length === 0) throw new Error('ArrayDataSource: no rows');
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`ArrayDataSource: batchSize must be a positive integer, got ${batchSize}`);
    const T = rows[0].ids.length;
    rows.forEach((r, i) => {
      if (r.ids.length !== T || r.targets.length !== T) throw new Error(`ArrayDataSource: row ${i} has ${r.ids.length} ids and ${r.targets.length} targets, expected ${T} of each`);
    });
    this.rows = rows;
    this.rng = new Rng(seed);
    this.newEpoch();
  }

  private newEpoch(): void {
    this.order = this.rows.map((_, i) => i);
    if (this.shuffle) this.rng.shuffle(this.order);
    this.cursor = 0;
  }

  next(): Batch {
    const B = this.batchSize, T = this.rows[0].ids.length;
    const ids = Tensor.zeros([B, T], { dtype: 'i32' }), targets = Tensor.zeros([B, T], { dtype: 'i32' });
    const iv = ids.data() as Int32Array, tv = targets.data() as Int32Array;
    for (let b = 0; b < B; b++) {
      if (this.cursor >= this.order.length) { this.epoch++; this.newEpoch(); }
      const row = this.rows[this.order[this.cursor++]];
      iv.set(row.ids, b * T);
      tv.set(row.targets, b * T);
    }
    return { ids, targets };
  }

  state(): { epoch: number; cursor: number; order: number[]; rng: RngState } {
    return { epoch: this.epoch, cursor: this.cursor, order: [...this.order], rng: this.rng.state() };
  }

  restore(state: unknown): void {
    const s = state as ReturnType<ArrayDataSource['state']>;
    const n = this.rows.length;
    if (!s || typeof s !== 'object' || !Array.isArray(s.order) || s.order.length !== n || !Number.isInteger(s.cursor) || s.cursor < 0 || s.cursor > n
      || !Number.isInteger(s.epoch) || s.epoch < 0 || new Set(s.order).size !== n || !s.order.every((i) => Number.isInteger(i) && i >= 0 && i < n)) {
      throw new Error('ArrayDataSource.restore: the saved position does not fit this data (different number of rows?)');
    }
    // Rng(undefined) would be a fresh seed-0 stream: a position without its state is refused
    if (!Array.isArray(s.rng)) throw new Error(`ArrayDataSource.restore: the saved position has no random state (rng), got ${JSON.stringify(s.rng) ?? 'nothing'}`);
    const rng = new Rng(s.rng);  // checks the state before anything changes
    this.epoch = s.epoch;
    this.cursor = s.cursor;
    this.order = [...s.order];
    this.rng = rng;
  }
}
