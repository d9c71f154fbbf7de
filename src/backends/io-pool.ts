/**
 * Disk requests on host threads of their own, beside the I/O thread: the I/O thread parses and checks
 * each request, then hands it to a small pool of workers that do the blocking preadv/pwritev/fdatasync
 * straight between the image file and guest memory, so several requests of one disk are in flight at
 * once (as QEMU's aio=threads does). Completions come back through an eventfd the I/O thread polls.
 *
 * Everything crosses in one SharedArrayBuffer, no messages: a ring of submitted slot numbers that the
 * workers claim with a compare-and-swap, and per slot its operation, guest ranges, position, state and
 * result. The workers build their own views of guest memory from the same mappings and check every
 * range again before touching it.
 */
import { Worker } from 'node:worker_threads';
import type { BlockIoOp, BlockIoQueue } from '../devices/virtio/block.js';
import type { Segment } from '../devices/virtio/queue.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';

/** Slots (requests in flight at once); a power of two. */
export const POOL_SLOTS = 64;
/** Guest ranges one request may have (virtio-blk offers seg_max = 254); longer ones are served inline. */
export const POOL_MAX_RANGES = 256;
/** Control words: published submissions, claimed submissions, stop flag, workers that have exited. */
export const CTL = { tail: 0, claim: 1, stop: 2, exited: 3 } as const;
const CTL_WORDS = 8;
/** Per slot, Int32 words: state, op, ranges, result (1: done in full, 0: failed). */
export const SLOT_I32 = 4;
/** Per slot, Float64 words: position, then (gpa, len) for each range. */
export const SLOT_F64 = 1 + 2 * POOL_MAX_RANGES;
export const STATE = { free: 0, submitted: 1, done: 2 } as const;
export const OP_CODE: Record<BlockIoOp, number> = { read: 0, write: 1, flush: 2 };
/** How long drain() waits for one request before it gives up on a pool that no longer answers. */
const DRAIN_TIMEOUT_MS = 60_000;
/** How long close() waits for the workers to leave (one that never loaded is given up on). */
const CLOSE_TIMEOUT_MS = 5_000;

/**
 * Workers a closed pool left, for the next pool in this thread (the I/O thread serves one VM after
 * another): a thread that ends leaks what koffi allocated for it (3 MiB, three mappings), so one per
 * disk per VM grew a long-lived process without bound. Past this many, a worker ends.
 */
const idleWorkers: Worker[] = [];

/** Whether this thread's pools confine their workers (the I/O thread sets it per VM: setPoolSeccomp). */
let poolSeccomp = true;
export function setPoolSeccomp(on: boolean): void {
  poolSeccomp = on;
}

/**
 * How many of `wanted` threads a new pool may have. A thread under a seccomp filter starts no threads
 * (its filter would bind the new one, whose start-up makes calls the filter refuses): it only reuses
 * idle ones, and a disk that gets none does its I/O on the calling thread (file-disk.ts).
 */
export function poolThreadsAvailable(wanted: number): number {
  return sys.confinedAs() === undefined ? wanted : Math.min(wanted, idleWorkers.length);
}
const MAX_IDLE_WORKERS = 16;

export interface PoolLayout {
  ctl: Int32Array;
  ring: Int32Array;
  slots: Int32Array;
  args: Float64Array;
}

export function poolLayout(sab: SharedArrayBuffer): PoolLayout {
  const ringOff = CTL_WORDS * 4;
  const slotsOff = ringOff + POOL_SLOTS * 4;
  const argsOff = slotsOff + POOL_SLOTS * SLOT_I32 * 4; // a multiple of 8
  return {
    ctl: new Int32Array(sab, 0, CTL_WORDS),
    ring: new Int32Array(sab, ringOff, POOL_SLOTS),
    slots: new Int32Array(sab, slotsOff, POOL_SLOTS * SLOT_I32),
    args: new Float64Array(sab, argsOff, POOL_SLOTS * SLOT_F64),
  };
}

const poolBytes = (): number => CTL_WORDS * 4 + POOL_SLOTS * 4 + POOL_SLOTS * SLOT_I32 * 4 + POOL_SLOTS * SLOT_F64 * 8;

/** What a pool worker is started with. */
export interface PoolWorkerData {
  sab: SharedArrayBuffer;
  fd: number;
  completionFd: number;
  memory: RegionDescriptor[];
  /** Refuse writes of qcow2's magic at the start (a probed raw image: file-disk.ts). */
  guardMagic: boolean;
  /** Confine the worker with the disk seccomp filter (kvm/seccomp-policy.ts). */
  seccomp: boolean;
}

export class IoPool implements BlockIoQueue {
  readonly completionFd: number;
  private readonly sab = new SharedArrayBuffer(poolBytes());
  private readonly l = poolLayout(this.sab);
  private readonly free: number[] = [];
  /** Submitted slots in submission order, with their callbacks. */
  private readonly inFlight = new Map<number, (ok: boolean) => void>();
  private readonly workers: Worker[] = [];
  private tail = 0;
  private closed = false;

  constructor(fd: number, memory: readonly RegionDescriptor[], workers: number, guardMagic = false) {
    for (let i = POOL_SLOTS - 1; i >= 0; i--) this.free.push(i);
    this.completionFd = sys.eventfd(0, sys.EFD_NONBLOCK);
    const data: PoolWorkerData = {
      sab: this.sab,
      fd,
      completionFd: this.completionFd,
      memory: [...memory],
      guardMagic,
      seccomp: poolSeccomp,
    };
    try {
      for (let i = 0; i < workers; i++) {
        const w = idleWorkers.pop() ?? new Worker(new URL('./io-pool-worker.js', import.meta.url));
        w.unref();
        w.postMessage(data);
        this.workers.push(w);
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  get pending(): number {
    return this.inFlight.size;
  }

  submit(op: BlockIoOp, ranges: readonly Segment[], position: number, done: (ok: boolean) => void): boolean {
    const slot = this.free.at(-1);
    if (this.closed || slot === undefined || ranges.length > POOL_MAX_RANGES) return false;
    this.free.pop();
    const { slots, args, ring, ctl } = this.l;
    const s = slot * SLOT_I32;
    const a = slot * SLOT_F64;
    slots[s + 1] = OP_CODE[op];
    slots[s + 2] = ranges.length;
    slots[s + 3] = 0;
    args[a] = position;
    ranges.forEach((r, i) => {
      args[a + 1 + 2 * i] = r.addr;
      args[a + 2 + 2 * i] = r.len;
    });
    Atomics.store(slots, s, STATE.submitted);
    this.inFlight.set(slot, done);
    Atomics.store(ring, this.tail & (POOL_SLOTS - 1), slot);
    this.tail = (this.tail + 1) | 0;
    Atomics.store(ctl, CTL.tail, this.tail);
    Atomics.notify(ctl, CTL.tail, 1);
    return true;
  }

  complete(): void {
    sys.eventfdRead(this.completionFd);
    const { slots } = this.l;
    let failure: unknown;
    for (const [slot, done] of this.inFlight) {
      if (Atomics.load(slots, slot * SLOT_I32) !== STATE.done) continue;
      const ok = slots[slot * SLOT_I32 + 3] === 1;
      Atomics.store(slots, slot * SLOT_I32, STATE.free);
      this.inFlight.delete(slot);
      this.free.push(slot);
      try {
        done(ok);
      } catch (e) {
        failure ??= e;
      }
    }
    // Every finished request is answered before a failing callback's error goes on.
    if (failure !== undefined) throw failure;
  }

  drain(): void {
    const { slots } = this.l;
    const deadline = Date.now() + DRAIN_TIMEOUT_MS; // for the whole drain, not each request
    for (const slot of [...this.inFlight.keys()]) {
      while (Atomics.load(slots, slot * SLOT_I32) === STATE.submitted) {
        if (Date.now() > deadline) throw new Error('disk I/O worker did not finish a request in 60 s');
        Atomics.wait(slots, slot * SLOT_I32, STATE.submitted, 100);
      }
    }
    this.complete();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const { ctl } = this.l;
    Atomics.store(ctl, CTL.stop, 1);
    Atomics.notify(ctl, CTL.tail);
    // Each worker counts itself out when it leaves its loop. Wait for all of them (not terminate():
    // a worker stopped while it is still loading its native modules can abort the process), so that
    // none writes the eventfd after it is closed.
    const deadline = Date.now() + CLOSE_TIMEOUT_MS;
    while (Atomics.load(ctl, CTL.exited) < this.workers.length && Date.now() < deadline) {
      Atomics.notify(ctl, CTL.tail);
      Atomics.wait(ctl, CTL.exited, Atomics.load(ctl, CTL.exited), 10);
    }
    // A worker still out (stuck in a system call) may write the eventfd later: then it is left open
    // rather than closed and its number handed to something else.
    if (Atomics.load(ctl, CTL.exited) >= this.workers.length) {
      sys.close(this.completionFd);
      // Every worker is out of this pool and waits for the next one.
      for (const w of this.workers.splice(0)) {
        if (idleWorkers.length < MAX_IDLE_WORKERS) idleWorkers.push(w);
        else void w.terminate();
      }
    }
  }
}
