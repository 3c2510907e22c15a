// Backend choice: which device a run uses, and the CUDA device's facts.
import type { Device } from './dtype.js';
import { native, type CudaInfo } from './native.js';

export type DeviceChoice = Device | 'auto';
export type { CudaInfo };

/** The CUDA backend's state: compiled into this build, usable now, and why not. */
export function cudaInfo(): CudaInfo {
  return native.cudaInfo();
}

/** A CUDA build with a usable device. */
export function cudaAvailable(): boolean {
  return native.cudaDevices() > 0;
}

/** 'auto' picks CUDA when this build has it and a device is present, else the
 * CPU; 'cuda' without both is an error that says which is missing. */
export function resolveDevice(choice: DeviceChoice = 'auto'): Device {
  if (choice === 'cpu') return 'cpu';
  if (choice === 'auto') return cudaAvailable() ? 'cuda' : 'cpu';
  if (choice !== 'cuda') throw new TypeError(`unknown device '${String(choice)}' (use auto, cpu or cuda)`);
  const info = cudaInfo();
  if (!info.compiled) {
    throw new Error('device cuda: this build has no CUDA backend (build where nvcc and the CUDA toolkit are installed, without TUNEBENCH_NO_CUDA)');
  }
  if (!info.available) throw new Error(`device cuda: ${info.reason ?? 'no CUDA device'}`);
  return 'cuda';
}

/** Waits for queued device work (timings must call this before reading a clock). */
export function synchronize(device: Device): void {
  if (device === 'cuda') native.synchronize();
}

/** "NVIDIA H200 (9.0)" or "cpu". */
export function deviceName(device: Device): string {
  if (device === 'cpu') return 'cpu';
  const i = cudaInfo();
  return i.available ? `${i.name} (sm ${i.capability})` : 'cuda (unavailable)';
}
