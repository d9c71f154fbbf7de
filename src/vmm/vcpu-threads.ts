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

/**
 * Park a new worker on `list`. A parked thread must not keep the process alive if it is never
 * used; and one that fails or ends while parked (a module that would not load, say) leaves the
 * list, so nobody takes a dead thread and waits forever for its answer: the taker starts a fresh
 * one, whose failure then reaches the taker's own listeners.
 */
function park(list: Worker[], url: URL): void {
  parkWorker(list, spawnWorker(url));
}

function parkWorker(list: Worker[], w: Worker): void {
  w.unref();
  const leave = (): void => {
    const i = list.indexOf(w);
    if (i >= 0) list.splice(i, 1);
  };
  w.once('exit', leave);
  // Only while parked: once taken, errors are the owner's to handle.
  const onError = (): void => leave();
  w.on('error', onError);
  parkedErrorListeners.set(w, onError);
  list.push(w);
}

const parkedErrorListeners = new WeakMap<Worker, () => void>();

/**
 * Threads still loading their modules. A process that exits while a worker is inside koffi's native
 * module initialisation aborts (koffi's napi_throw on a terminating environment is fatal: SIGABRT),
 * so whatever ends the process waits for these first (threadsLoaded()).
 */
const loading = new Set<Promise<void>>();

/** A new worker, tracked until its first message ('loaded', then anything) or its end. */
function spawnWorker(url: URL): Worker {
  const w = new Worker(url, WORKER_OPTIONS);
  const loaded = new Promise<void>((resolve) => {
    const done = (): void => {
      w.off('message', done);
      w.off('exit', done);
      w.off('error', done);
      resolve();
    };
    w.on('message', done);
    w.on('exit', done);
    // Only as a signal; while the worker is unparked, its owner's own 'error' listener handles it.
    w.on('error', done);
  });
  loading.add(loaded);
  void loaded.then(() => loading.delete(loaded));
  return w;
}

/** How long threadsLoaded() waits at most. */
const LOAD_WAIT_LIMIT_MS = 10_000;

/** Resolves once no thread vireo started is still loading its modules: safe to exit. */
export async function threadsLoaded(): Promise<void> {
  if (loading.size === 0) return;
  // Parked threads are unref'd: without a handle of its own the wait would let the loop drain, and
  // the process exit (status 13, a top-level await unsettled) in the middle of the very load.
  const keepAlive = setInterval(() => undefined, 1000);
  // A load takes ~100 ms; one that never ends (a wedged worker) must not keep the process forever.
  const givenUp = new Promise<void>((resolve) => setTimeout(resolve, LOAD_WAIT_LIMIT_MS).unref());
  try {
    await Promise.race([
      (async () => {
        while (loading.size > 0) await Promise.all([...loading]);
      })(),
      givenUp,
    ]);
  } finally {
    clearInterval(keepAlive);
  }
}

function take(list: Worker[], url: URL): Worker {
  const w = list.shift();
  if (w === undefined) return spawnWorker(url);
  const onError = parkedErrorListeners.get(w);
  if (onError) w.off('error', onError);
  w.ref();
  return w;
}

export function prewarmVcpuThreads(count: number): void {
  while (parked.length < count) park(parked, VCPU_THREAD_URL);
}

/** A parked thread if there is one, else a new one. The caller owns it. */
export function takeVcpuThread(): Worker {
  return take(parked, VCPU_THREAD_URL);
}

/** Start an I/O thread for the next VM with virtio devices (one at most is kept parked). */
export function prewarmIoThread(): void {
  if (parkedIo.length === 0) park(parkedIo, IO_THREAD_URL);
}

/** I/O threads that confined themselves with seccomp for an earlier VM (they keep the filter). */
const confinedIo = new WeakSet<Worker>();

/**
 * The parked I/O thread if there is one, else a new one; with `unconfined`, only one that has never
 * confined itself (its VM's devices start threads). The caller owns it.
 */
export function takeIoThread(unconfined = false): Worker {
  if (!unconfined) return take(parkedIo, IO_THREAD_URL);
  const i = parkedIo.findIndex((w) => !confinedIo.has(w));
  if (i < 0) return spawnWorker(IO_THREAD_URL);
  const [w] = parkedIo.splice(i, 1);
  parkedIo.unshift(w as Worker);
  return take(parkedIo, IO_THREAD_URL);
}

/**
 * Threads a VM is done with wait here for the next VM, up to these many: a thread that ends leaks
 * what its native modules allocated for it (koffi keeps 3 MiB and three mappings per thread and never
 * frees them), so ending one per VM grew a long-lived process by ~12 MiB and ~12 mappings per VM with
 * a disk until it hit vm.max_map_count. Reused, the growth is bounded by the most threads ever in use
 * at once; beyond these caps a returned thread ends.
 */
const MAX_IDLE_VCPU_THREADS = 16;
const MAX_IDLE_IO_THREADS = 4;

/**
 * Give back a thread whose VM is done with it: it has reported that it stopped and waits for its next
 * init message. The owner's listeners are removed; it is parked for the next VM (or ends when enough
 * are parked). Never give back a thread that did not report its stop (it may still touch the VM).
 */
function giveBack(list: Worker[], w: Worker, cap: number): void {
  for (const event of ['message', 'error', 'exit', 'messageerror', 'online'] as const) w.removeAllListeners(event);
  if (list.length >= cap) {
    void w.terminate();
    return;
  }
  parkWorker(list, w);
}

export function recycleVcpuThread(w: Worker): void {
  giveBack(parked, w, MAX_IDLE_VCPU_THREADS);
}

export function recycleIoThread(w: Worker, confined: boolean): void {
  if (confined) confinedIo.add(w);
  giveBack(parkedIo, w, MAX_IDLE_IO_THREADS);
}

/** How many threads are parked now (vCPU, I/O): for tests. */
export function parkedThreads(): { vcpu: number; io: number } {
  return { vcpu: parked.length, io: parkedIo.length };
}

/** Terminate parked threads nobody took (a failed start). */
export async function releaseParkedThreads(): Promise<void> {
  await Promise.all([...parked.splice(0), ...parkedIo.splice(0)].map((w) => w.terminate()));
}
