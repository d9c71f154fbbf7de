/**
 * vCPU threads, spawned ahead of need. A Node worker takes tens of milliseconds to start and load
 * its modules; spawning it first lets that overlap with the main thread loading vireo, opening KVM
 * and loading the kernel. This module imports nothing heavy so the CLI can call it before anything else.
 */
import { Worker } from 'node:worker_threads';

const VCPU_THREAD_URL = new URL('./vcpu-thread.js', import.meta.url);
const parked: Worker[] = [];
/** A larger young generation: start-up allocates a few MiB, and each scavenge costs milliseconds. */
const WORKER_OPTIONS = { resourceLimits: { maxYoungGenerationSizeMb: 64 } };

export function prewarmVcpuThreads(count: number): void {
  while (parked.length < count) {
    const w = new Worker(VCPU_THREAD_URL, WORKER_OPTIONS);
    // A parked thread must not keep the process alive if it is never used.
    w.unref();
    parked.push(w);
  }
}

/** A parked thread if there is one, else a new one. The caller owns it. */
export function takeVcpuThread(): Worker {
  const w = parked.shift() ?? new Worker(VCPU_THREAD_URL, WORKER_OPTIONS);
  w.ref();
  return w;
}

/** Terminate parked threads nobody took (a failed start). */
export async function releaseParkedThreads(): Promise<void> {
  await Promise.all(parked.splice(0).map((w) => w.terminate()));
}
