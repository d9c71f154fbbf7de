/**
 * A share's FUSE server on a thread of its own (the issue's ask: file-system work off the vCPU
 * threads and off the I/O thread that serves every other device, where a slow host file system
 * would hold them up). The I/O thread pops each chain and hands its guest ranges over; the worker
 * (worker-entry.ts) copies the request out of guest memory, serves it with the same code as the
 * inline path (devices/virtio/fs/serve.ts), writes the reply and wakes the I/O thread through an
 * eventfd, which returns the chain. One worker per share, taking requests in order, so the tables
 * have one owner and FORGET never overtakes the LOOKUP it answers.
 *
 * Requests cross in one SharedArrayBuffer (a ring of slot numbers; per slot its ranges, state and
 * result), as the disk pool's do; snapshots' save and restore of the tables, rare and larger, cross
 * through a MessageChannel read synchronously on both sides (receiveMessageOnPort).
 */
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import type { FuseQueue } from '../../devices/virtio/fs/device.js';
import { type ChainBuffers, OUTCOMES, type Served } from '../../devices/virtio/fs/serve.js';
import type { FsServerState } from '../../devices/virtio/fs/state.js';
import type { RegionDescriptor } from '../../memory/guest-memory.js';
import * as sys from '../../os/sys.js';
import type { ShareSpec } from './server.js';

/** Slots: both queues full (256 each) at once. A power of two. */
export const FS_SLOTS = 512;
/** Guest ranges one request may have: a 1 MiB WRITE in 4 KiB pages and its headers fit. */
export const FS_MAX_RANGES = 272;
/** Control words: published submissions, stop flag, worker out of its loop, a command waiting. */
export const CTL = { tail: 0, stop: 1, exited: 2, cmd: 3 } as const;
const CTL_WORDS = 8;
/** Per slot, Int32 words: state, readable count, writable count, used length, outcome index. */
export const SLOT_I32 = 5;
/** Per slot, Float64 words: readLen, writeLen, then (gpa, len) for each range (readable first). */
export const SLOT_F64 = 2 + 2 * FS_MAX_RANGES;
export const STATE = { free: 0, submitted: 1, done: 2 } as const;
const DRAIN_TIMEOUT_MS = 60_000;
const CONTROL_TIMEOUT_MS = 60_000;
const CLOSE_TIMEOUT_MS = 5_000;

export interface FsWorkerLayout {
  ctl: Int32Array;
  ring: Int32Array;
  slots: Int32Array;
  args: Float64Array;
}

export function fsWorkerLayout(sab: SharedArrayBuffer): FsWorkerLayout {
  const ringOff = CTL_WORDS * 4;
  const slotsOff = ringOff + FS_SLOTS * 4;
  const argsOff = Math.ceil((slotsOff + FS_SLOTS * SLOT_I32 * 4) / 8) * 8;
  return {
    ctl: new Int32Array(sab, 0, CTL_WORDS),
    ring: new Int32Array(sab, ringOff, FS_SLOTS),
    slots: new Int32Array(sab, slotsOff, FS_SLOTS * SLOT_I32),
    args: new Float64Array(sab, argsOff, FS_SLOTS * SLOT_F64),
  };
}

const layoutBytes = (): number =>
  Math.ceil((CTL_WORDS * 4 + FS_SLOTS * 4 + FS_SLOTS * SLOT_I32 * 4) / 8) * 8 + FS_SLOTS * SLOT_F64 * 8;

/** What the worker is started with. */
export interface FsWorkerData {
  sab: SharedArrayBuffer;
  completionFd: number;
  memory: RegionDescriptor[];
  share: ShareSpec;
  port: MessagePort;
  /** Confine the worker with the fs seccomp filter (kvm/seccomp-policy.ts): the VM's seccomp option. */
  seccomp: boolean;
}

export type FsControl = { op: 'save' } | { op: 'restore'; state: FsServerState };
export type FsControlReply = { ok: true; state?: FsServerState } | { ok: false; error: string };

export class FsWorker implements FuseQueue {
  readonly completionFd: number;
  private readonly sab = new SharedArrayBuffer(layoutBytes());
  private readonly l = fsWorkerLayout(this.sab);
  private readonly free: number[] = [];
  private readonly inFlight = new Map<number, (r: Served) => void>();
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private tail = 0;
  private closed = false;

  /** `seccomp`: the VM's seccomp option; the worker confines itself before its first request when set. */
  constructor(share: ShareSpec, memory: readonly RegionDescriptor[], seccomp: boolean) {
    for (let i = FS_SLOTS - 1; i >= 0; i--) this.free.push(i);
    this.completionFd = sys.eventfd(0, sys.EFD_NONBLOCK);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const data: FsWorkerData = {
      sab: this.sab,
      completionFd: this.completionFd,
      memory: [...memory],
      share,
      port: port2,
      seccomp,
    };
    try {
      this.worker = new Worker(new URL('./worker-entry.js', import.meta.url));
      this.worker.unref();
      this.worker.postMessage(data, [port2]);
    } catch (e) {
      sys.close(this.completionFd);
      throw e;
    }
  }

  get pending(): number {
    return this.inFlight.size;
  }

  submit(chain: ChainBuffers, done: (r: Served) => void): boolean {
    const slot = this.free.at(-1);
    const n = chain.readable.length + chain.writable.length;
    if (this.closed || slot === undefined || n > FS_MAX_RANGES) return false;
    this.free.pop();
    const { slots, args, ring, ctl } = this.l;
    const s = slot * SLOT_I32;
    const a = slot * SLOT_F64;
    slots[s + 1] = chain.readable.length;
    slots[s + 2] = chain.writable.length;
    args[a] = chain.readLen;
    args[a + 1] = chain.writeLen;
    [...chain.readable, ...chain.writable].forEach((r, i) => {
      args[a + 2 + 2 * i] = r.addr;
      args[a + 3 + 2 * i] = r.len;
    });
    Atomics.store(slots, s, STATE.submitted);
    this.inFlight.set(slot, done);
    Atomics.store(ring, this.tail & (FS_SLOTS - 1), slot);
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
      const s = slot * SLOT_I32;
      if (Atomics.load(slots, s) !== STATE.done) continue;
      const r: Served = { used: slots[s + 3] as number, outcome: OUTCOMES[slots[s + 4] as number] ?? 'serverFailure' };
      Atomics.store(slots, s, STATE.free);
      this.inFlight.delete(slot);
      this.free.push(slot);
      try {
        done(r);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure !== undefined) throw failure;
  }

  drain(): void {
    const { slots } = this.l;
    const deadline = Date.now() + DRAIN_TIMEOUT_MS;
    for (const slot of [...this.inFlight.keys()])
      while (Atomics.load(slots, slot * SLOT_I32) === STATE.submitted) {
        if (Date.now() > deadline) throw new Error('virtio-fs worker did not finish a request in 60 s');
        Atomics.wait(slots, slot * SLOT_I32, STATE.submitted, 100);
      }
    this.complete();
  }

  /** A command the worker answers between requests; waits for its answer. */
  private control(msg: FsControl): FsControlReply {
    const { ctl } = this.l;
    this.port.postMessage(msg);
    Atomics.store(ctl, CTL.cmd, 1);
    Atomics.notify(ctl, CTL.tail);
    const deadline = Date.now() + CONTROL_TIMEOUT_MS;
    while (Atomics.load(ctl, CTL.cmd) !== 0) {
      if (Date.now() > deadline) throw new Error('virtio-fs worker did not answer in 60 s');
      Atomics.wait(ctl, CTL.cmd, 1, 100);
    }
    const r = receiveMessageOnPort(this.port)?.message as FsControlReply | undefined;
    if (r === undefined) throw new Error('virtio-fs worker sent no answer');
    return r;
  }

  saveState(): FsServerState {
    this.drain();
    const r = this.control({ op: 'save' });
    if (!r.ok || r.state === undefined) throw new Error(`virtio-fs worker: ${r.ok ? 'no state' : r.error}`);
    return r.state;
  }

  restoreState(state: FsServerState): void {
    const r = this.control({ op: 'restore', state });
    if (!r.ok) throw new Error(`virtio-fs worker: ${r.error}`);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const { ctl } = this.l;
    Atomics.store(ctl, CTL.stop, 1);
    Atomics.notify(ctl, CTL.tail);
    const deadline = Date.now() + CLOSE_TIMEOUT_MS;
    while (Atomics.load(ctl, CTL.exited) === 0 && Date.now() < deadline) {
      Atomics.notify(ctl, CTL.tail);
      Atomics.wait(ctl, CTL.exited, 0, 10);
    }
    this.port.close();
    // A worker still in a host call may write the eventfd later: then it stays open rather than
    // being closed and its number reused.
    if (Atomics.load(ctl, CTL.exited) !== 0) sys.close(this.completionFd);
  }
}
