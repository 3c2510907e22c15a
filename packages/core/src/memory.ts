// Live and peak bytes by category and device, read from the native allocator.
import { CATEGORIES, type Category, type Device } from './dtype.js';
import { native } from './native.js';

export interface DeviceMemorySnapshot {
  live: Record<Category, number>;
  peak: Record<Category, number>;
  /** bytes live now, all categories */
  liveTotal: number;
  /** highest simultaneous total since the last resetPeak (not the sum of per-category peaks) */
  peakTotal: number;
  allocations: number;
  /** freed blocks the allocator keeps for reuse (CPU): held from the system, not live */
  cachedBytes: number;
  /** CUDA: bytes the caching pool holds from the driver now / at most since the last resetPeak */
  reservedBytes?: number;
  reservedPeakBytes?: number;
  /** CUDA: the device's free and total bytes (cudaMemGetInfo), to cross-check the pool */
  deviceFreeBytes?: number;
  deviceTotalBytes?: number;
}
export type MemorySnapshot = Record<Device, DeviceMemorySnapshot>;

export const memory = {
  snapshot(): MemorySnapshot {
    const raw = native.memorySnapshot();
    const conv = (d: (typeof raw)['cpu']): DeviceMemorySnapshot => {
      const live = {} as Record<Category, number>, peak = {} as Record<Category, number>;
      for (const c of CATEGORIES) { live[c] = d.live[c]; peak[c] = d.peak[c]; }
      const out: DeviceMemorySnapshot = { live, peak, liveTotal: d.liveTotal, peakTotal: d.peakTotal, allocations: d.allocations, cachedBytes: d.cachedBytes };
      if (d.reservedBytes !== undefined) {
        out.reservedBytes = d.reservedBytes;
        out.reservedPeakBytes = d.reservedPeakBytes;
        out.deviceFreeBytes = d.deviceFreeBytes;
        out.deviceTotalBytes = d.deviceTotalBytes;
      }
      return out;
    };
    return { cpu: conv(raw.cpu), cuda: conv(raw.cuda) };
  },
  /** Sets every peak to the current live figure. */
  resetPeak(): void { native.memoryResetPeak(); },
  /** Give the allocator's cached free blocks back to the system. */
  emptyCache(): void { native.memoryEmptyCache(); },
  /** Testing aid: refuse any single allocation larger than `bytes` (0 lifts it). */
  setAllocationLimit(bytes: number): void { native.setAllocLimit(bytes); },
};
