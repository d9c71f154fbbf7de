/**
 * vCPU threads and the virtio I/O thread, spawned ahead of need. A Node worker takes tens of
 * milliseconds to start and load its modules (100+ ms for the I/O thread with every device); spawning
 * it first lets that overlap with the main thread loading vireo, opening KVM and loading the kernel,
 * and takes it off a snapshot restore's path entirely. This module imports nothing heavy so the CLI
 * can call it before anything else.
 */
import { Worker } from 'node:worker_threads';

const VCPU_THREAD_URL = new URL('./vcpu-thread.js', import.meta.url);
const IO_THREAD_URL = new URL('./io-thread.js', import.meta.url);
const parked: Worker[] = [];
const parkedIo: Worker[] = [];
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

/** Start an I/O thread for the next VM with virtio devices (one at most is kept parked). */
export function prewarmIoThread(): void {
  if (parkedIo.length > 0) return;
  const w = new Worker(IO_THREAD_URL, WORKER_OPTIONS);
  w.unref();
  parkedIo.push(w);
}

/** The parked I/O thread if there is one, else a new one. The caller owns it. */
export function takeIoThread(): Worker {
  const w = parkedIo.shift() ?? new Worker(IO_THREAD_URL, WORKER_OPTIONS);
  w.ref();
  return w;
}

/** Terminate parked threads nobody took (a failed start). */
export async function releaseParkedThreads(): Promise<void> {
  await Promise.all([...parked.splice(0), ...parkedIo.splice(0)].map((w) => w.terminate()));
}
