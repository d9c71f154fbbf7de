/**
 * virtio-fs (virtio 1.2 §5.11): FUSE requests over virtqueues, served by a FuseServer the VMM passes
 * in (backends/fs/ serves a host directory), here on the device's thread or, given a FuseQueue, on a
 * thread of its own so that a slow host file system does not hold up the other devices. Queue 0 is the high-priority queue (FORGET, BATCH_FORGET),
 * queue 1 the one request queue. Each chain is one request: the in-header and its arguments in the
 * device-readable buffers, the out-header and the reply in the device-writable ones.
 *
 * The guest is the attacker: the request is copied out of guest memory (bounded), parsed with every
 * length checked (request.ts), and anything malformed gets an error reply (-EINVAL, or -EIO for a
 * server failure); nothing a guest sends makes process() throw.
 */
import {
  bit,
  type DeviceStateRecord,
  POLL_IN,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from '../device.js';
import { drainQueue, KEPT } from '../drain.js';
import type { DescriptorChain } from '../queue.js';
import type { FuseRequest } from './request.js';
import { type ChainBuffers, type Served, type ServeOutcome, serveChain } from './serve.js';
import { type FsServerState, restoreFsState, saveFsState } from './state.js';

export const VIRTIO_ID_FS = VIRTIO_ID.fs;
/** The tag's bytes in the configuration space (UTF-8, NUL-padded; not NUL-terminated when 36 long). */
export const FS_TAG_BYTES = 36;
const QUEUE_SIZE = 256;

/** A reply: an errno (positive; 0 is success without a body), a body, or none (FORGET). */
export type FuseReply = { error: number } | { body: Uint8Array } | { none: true };

/** The file-system side: answers one parsed request; `maxOut` is the room after the out-header. */
export interface FuseServer {
  handle(req: FuseRequest, maxOut: number): FuseReply;
  /** The largest WRITE payload it negotiates (INIT's max_write); the device copies that much at most. */
  readonly maxWrite: number;
  /** Its tables for a snapshot (plain JSON), and back (a restored VM's guest still holds the node ids). */
  saveState(): FsServerState;
  restoreState(state: FsServerState): void;
  close(): void;
}

/**
 * A server on a thread of its own (backends/fs/worker.ts): the device hands it each chain's buffers
 * and returns the chain when `done` runs, from complete() on the device's thread, which the device
 * calls when completionFd is readable.
 */
export interface FuseQueue {
  readonly completionFd: number;
  /** Requests submitted whose callbacks have not run. */
  readonly pending: number;
  /** False when it cannot take this chain (the device then fails the request). */
  submit(chain: ChainBuffers, done: (r: Served) => void): boolean;
  complete(): void;
  /** Waits for every submitted request and runs its callback. */
  drain(): void;
  saveState(): FsServerState;
  restoreState(state: FsServerState): void;
  close(): void;
}

const isQueue = (b: FuseServer | FuseQueue): b is FuseQueue => 'submit' in b;

export interface FsDeviceConfig {
  tag: string;
}

export class VirtioFs implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_FS;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features = bit(VIRTIO_F_RING_EVENT_IDX) | bit(VIRTIO_F_RING_INDIRECT_DESC);
  readonly configSpace: Uint8Array;
  readonly counters = { requests: 0, errors: 0, malformed: 0, serverFailures: 0, forgets: 0 };
  private ctx: VirtioContext | undefined;

  constructor(
    private readonly backend: FuseServer | FuseQueue,
    config: FsDeviceConfig,
  ) {
    const tag = Buffer.from(config.tag, 'utf8');
    if (tag.length === 0 || tag.length > FS_TAG_BYTES) throw new RangeError(`virtio-fs tag must be 1-36 bytes`);
    // struct virtio_fs_config: u8 tag[36]; le32 num_request_queues.
    const cfg = new Uint8Array(FS_TAG_BYTES + 4);
    cfg.set(tag);
    new DataView(cfg.buffer).setUint32(FS_TAG_BYTES, 1, true);
    this.configSpace = cfg;
  }

  attach(poller: Poller): void {
    const b = this.backend;
    if (isQueue(b)) poller.add(b.completionFd, POLL_IN, () => b.complete());
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.process(0);
    this.process(1);
  }

  reset(): void {
    // Requests still on the worker finish first (they write guest memory); their answers are
    // dropped, as the driver reset the queue they came from.
    this.ctx = undefined;
    if (isQueue(this.backend)) this.backend.drain();
  }

  /** Before a snapshot: every request in flight is finished and answered. */
  quiesce(): void {
    if (isQueue(this.backend)) this.backend.drain();
  }

  saveState(): DeviceStateRecord {
    return saveFsState(this.backend.saveState());
  }

  restoreState(state: unknown): void {
    this.backend.restoreState(restoreFsState(state).server);
  }

  close(): void {
    this.backend.close();
  }

  process(q: number): void {
    const ctx = this.ctx;
    if (ctx === undefined || q > 1) return;
    drainQueue(ctx, q, (chain) => this.serve(ctx, q, chain));
  }

  /** One chain: served here, or handed to the server's own thread (KEPT, returned when it is done). */
  private serve(ctx: VirtioContext, q: number, chain: DescriptorChain): number | typeof KEPT {
    if (chain.error !== undefined) {
      this.counters.malformed++;
      return 0;
    }
    this.counters.requests++;
    if (!isQueue(this.backend)) {
      const r = serveChain(this.backend, ctx.mem, chain);
      this.count(r.outcome);
      return r.used;
    }
    const ok = this.backend.submit(chain, (r) => {
      if (this.ctx !== ctx) return; // reset meanwhile: the queue is gone
      this.count(r.outcome);
      ctx.queues[q]?.pushUsed(ctx.mem, chain.head, r.used);
      ctx.signalUsed(q);
    });
    if (ok) return KEPT;
    // The worker cannot take it (closed, or more buffers than a slot holds): the request fails here.
    this.counters.malformed++;
    return 0;
  }

  private count(o: ServeOutcome): void {
    const c = this.counters;
    if (o === 'forget') c.forgets++;
    else if (o === 'serverFailure') {
      c.serverFailures++;
      c.errors++;
    } else if (o === 'malformed') {
      c.malformed++;
      c.errors++;
    } else if (o === 'error') c.errors++;
  }
}
