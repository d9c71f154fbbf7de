/**
 * virtio-blk (virtio 1.2 §5.2): one request queue over a host backend (a raw or qcow2 image).
 * Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES. Any host failure (EIO, ENOSPC, short I/O)
 * answers VIRTIO_BLK_S_IOERR, an unknown request VIRTIO_BLK_S_UNSUPP; the queue goes on either way.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { restoreBlockState, saveBlockState } from './block-state.js';
import {
  bit,
  type DeviceStateRecord,
  type DeviceTimer,
  hasFeature,
  POLL_IN,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';
import { BLOCKED, drainQueue, KEPT } from './drain.js';
import { chainRanges, chainViews, type DescriptorChain, readFromChain, type Segment } from './queue.js';
import { monotonicMs, RateLimiter, type RateLimiterConfig, type RateLimiterState } from './rate-limiter.js';

export const SECTOR = 512;

export const VIRTIO_BLK_F = {
  SIZE_MAX: 1n,
  SEG_MAX: 2n,
  RO: 5n,
  BLK_SIZE: 6n,
  FLUSH: 9n,
  DISCARD: 13n,
  WRITE_ZEROES: 14n,
} as const;

export const VIRTIO_BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const VIRTIO_BLK_ID_BYTES = 20;
const WRITE_ZEROES_F_UNMAP = 1;
const QUEUE_SIZE = 256;
/** Limits offered for discard and write-zeroes (sectors per segment, segments per request). */
const MAX_DISCARD_SECTORS = 0x3fffff;
const MAX_DISCARD_SEG = 32;

/** The host side of a disk. Methods throw (with an errno `code`) on host failure. Its owner closes it. */
export interface BlockBackend {
  /** Bytes; the guest sees floor(size / 512) sectors. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Whether discard/write-zeroes can be done (punching holes in the image). */
  readonly canDiscard: boolean;
  /** Returns the bytes read. */
  readv(bufs: Uint8Array[], position: number): number;
  /** Returns the bytes written. */
  writev(bufs: Uint8Array[], position: number): number;
  flush(): void;
  discard(position: number, length: number): void;
  writeZeroes(position: number, length: number, unmap: boolean): void;
  /** Reads, writes and flushes that can run on host threads beside the device's own (optional). */
  readonly io?: BlockIoQueue;
  /** Writes back what the backend holds in memory (a qcow2 image's tables), before a VM snapshot. */
  writeBack?(): void;
  close?(): void;
}

export type BlockIoOp = 'read' | 'write' | 'flush';

/**
 * Requests a backend runs on threads of its own, so that several are in flight at once. The device
 * watches completionFd and calls complete(), which runs the callbacks of finished requests.
 */
export interface BlockIoQueue {
  readonly completionFd: number;
  /** Requests submitted whose callbacks have not run. */
  readonly pending: number;
  /** Starts a read into / write from guest ranges at a byte position, or a flush; false when full. */
  submit(op: BlockIoOp, ranges: readonly Segment[], position: number, done: (ok: boolean) => void): boolean;
  complete(): void;
  /** Waits for every submitted request and runs its callback. */
  drain(): void;
}

/** A request's header, checked: where its status byte goes and how much data it carries each way. */
interface Header {
  type: number;
  sector: bigint;
  statusAddr: number;
  /** Writable bytes before the status byte. */
  dataIn: number;
  /** Readable bytes after the 16-byte header. */
  dataOut: number;
}

export interface BlockConfig {
  /** Up to 20 bytes returned by GET_ID (the drive's serial). */
  id: string;
  /** Firecracker's rate limiter for the drive: requests beyond it wait in the ring, none is dropped. */
  rateLimiter?: RateLimiterConfig | undefined;
}

export class VirtioBlock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.block;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly features: bigint;
  readonly configSpace: Uint8Array;
  readonly counters = {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    getIds: 0,
    readBytes: 0,
    writeBytes: 0,
    ioErrors: 0,
    unsupported: 0,
    malformed: 0,
    /** Requests served on the backend's threads rather than the device's own. */
    offloaded: 0,
    /** Times the rate limiter held a request back (it waited, it was not dropped). */
    rateLimited: 0,
  };
  private ctx: VirtioContext | undefined;
  private sectors: number;
  private readonly id: Uint8Array;
  private poller: Poller | undefined;
  private limiter: RateLimiter | undefined;
  /** A request the rate limiter holds back (the latest pop): served when the timer says it may be. */
  private limited: DescriptorChain | undefined;
  private timer: DeviceTimer | undefined;

  constructor(
    private backend: BlockBackend,
    config: BlockConfig,
  ) {
    this.sectors = Math.floor(backend.size / SECTOR);
    let f =
      bit(VIRTIO_BLK_F.SEG_MAX) |
      bit(VIRTIO_BLK_F.BLK_SIZE) |
      bit(VIRTIO_BLK_F.FLUSH) |
      bit(VIRTIO_F_RING_EVENT_IDX) |
      bit(VIRTIO_F_RING_INDIRECT_DESC);
    if (backend.readOnly) f |= bit(VIRTIO_BLK_F.RO);
    else if (backend.canDiscard) f |= bit(VIRTIO_BLK_F.DISCARD) | bit(VIRTIO_BLK_F.WRITE_ZEROES);
    this.features = f;
    const cfg = new DataView(new ArrayBuffer(60));
    cfg.setBigUint64(0, BigInt(this.sectors), true); // capacity
    cfg.setUint32(12, QUEUE_SIZE - 2, true); // seg_max: all but header and status
    cfg.setUint32(20, SECTOR, true); // blk_size
    cfg.setUint16(34, 1, true); // num_queues
    cfg.setUint32(36, MAX_DISCARD_SECTORS, true);
    cfg.setUint32(40, MAX_DISCARD_SEG, true);
    cfg.setUint32(44, 1, true); // discard_sector_alignment
    cfg.setUint32(48, MAX_DISCARD_SECTORS, true);
    cfg.setUint32(52, MAX_DISCARD_SEG, true);
    cfg.setUint8(56, 1); // write_zeroes_may_unmap
    this.configSpace = new Uint8Array(cfg.buffer);
    this.id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    this.id.set(Buffer.from(config.id, 'utf8').subarray(0, VIRTIO_BLK_ID_BYTES));
    this.setRateLimiter(config.rateLimiter);
  }

  /**
   * Replaces the rate limiter (Firecracker's PATCH /drives rate_limiter; undefined or all sizes 0:
   * none), its buckets full, or as `state` left them (a restore). A request it held is looked at again.
   */
  setRateLimiter(config: RateLimiterConfig | undefined, state?: RateLimiterState): void {
    const l = config === undefined ? undefined : new RateLimiter(config, monotonicMs(), state);
    this.limiter = l?.limits ? l : undefined;
    if (this.limited !== undefined) {
      this.timer?.set(0);
      this.process(0);
    }
  }

  /** The rate limiter's buckets, for a snapshot (null: none). */
  rateLimiterState(): RateLimiterState | null {
    return this.limiter?.state() ?? null;
  }

  /** Whether the rate limiter lets `chain` go now; when not, the timer is set for when it may. */
  private admit(chain: DescriptorChain): boolean {
    const l = this.limiter;
    if (l === undefined) return true;
    const bytes = Math.max(0, chain.writeLen - 1) + Math.max(0, chain.readLen - 16);
    const now = monotonicMs();
    if (l.take(bytes, now)) return true;
    this.timer?.set(Math.max(1, l.waitMs(bytes, now)));
    return false;
  }

  attach(poller: Poller): void {
    this.poller = poller;
    this.timer = poller.timer?.(() => this.process(0));
    const io = this.backend.io;
    if (io) poller.add(io.completionFd, POLL_IN, () => io.complete());
  }

  /**
   * A new backing file for a running drive (Firecracker's PATCH /drives/{id} path_on_host): requests
   * on the old backend's threads finish against the old file and are answered first, then the new
   * one serves, and the driver is told the capacity (a configuration interrupt; Linux re-reads it).
   * The features stay as negotiated: the new backend must be as read-only as the old one.
   */
  replaceBackend(next: BlockBackend): void {
    if (next.readOnly !== this.backend.readOnly)
      throw new RangeError(`the new backing file is ${next.readOnly ? '' : 'not '}read-only, as the drive is not`);
    const ctx = this.ctx;
    if (ctx === undefined)
      throw new RangeError("the guest's driver has not started this drive: try again once it runs");
    const old = this.backend;
    old.io?.drain();
    if (old.io) this.poller?.remove(old.io.completionFd);
    old.close?.();
    this.backend = next;
    const io = next.io;
    if (io) this.poller?.add(io.completionFd, POLL_IN, () => io.complete());
    this.sectors = Math.floor(next.size / SECTOR);
    ctx.config.setBigUint64(0, BigInt(this.sectors), true);
    ctx.signalConfig();
    // Requests that waited meanwhile go to the new file.
    this.process(0);
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.process(0);
  }

  /** A request the rate limiter holds is the latest pop: a snapshot gives it back to the ring. */
  heldChains(): number[] {
    return [this.limited === undefined ? 0 : 1];
  }

  reset(): void {
    // Requests still on the backend's threads finish first (they write guest memory); their answers
    // are dropped, as the driver reset the queue they came from.
    this.ctx = undefined;
    this.limited = undefined;
    this.timer?.set(0);
    this.backend.io?.drain();
  }

  /** Before a snapshot: every request in flight is finished and answered, so none is lost. */
  quiesce(): void {
    this.backend.io?.drain();
    // A restore in another process opens the image again: it must find every write described.
    if (!this.backend.readOnly) this.backend.writeBack?.();
  }

  saveState(): DeviceStateRecord {
    return saveBlockState(this.rateLimiterState());
  }

  restoreState(state: unknown): void {
    const buckets = restoreBlockState(state);
    if (buckets !== null && this.limiter !== undefined) this.setRateLimiter(this.limiter.config, buckets);
  }

  close(): void {
    this.timer?.close();
    this.timer = undefined;
    this.backend.close?.();
  }

  /**
   * Serves what the driver made available. When several requests arrive together, all but the last go
   * to the backend's threads (when it has them) and the last is served here meanwhile, so a 1 MiB
   * read split into two requests is copied by two threads at once; a lone request is served here, with
   * no thread hop.
   */
  process(q: number): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[q];
    if (ctx === undefined || queue === undefined) return;
    const mem = ctx.mem;
    // Each chain is held until the next one shows there is a batch; the last is served once the ring
    // is empty, inside the same interrupt.
    let held: DescriptorChain | undefined;
    // A request the rate limiter held goes first, or nothing does (its timer brings the device back).
    const limited = this.limited;
    if (limited !== undefined) {
      if (!this.admit(limited)) return;
      this.limited = undefined;
      held = limited;
    }
    drainQueue(
      ctx,
      q,
      (chain) => {
        if (!this.admit(chain)) {
          this.limited = chain;
          this.counters.rateLimited++;
          return BLOCKED;
        }
        if (held !== undefined && !this.offload(ctx, q, held))
          queue.pushUsed(mem, held.head, this.serve(mem, held, ctx.features));
        held = chain;
        return KEPT;
      },
      () => {
        if (held !== undefined) queue.pushUsed(mem, held.head, this.serve(mem, held, ctx.features));
      },
    );
  }

  /** The header of a request, or undefined when it has no usable header or status byte. */
  private header(mem: GuestMemory, chain: DescriptorChain): Header | undefined {
    const last = chain.writable[chain.writable.length - 1];
    if (chain.error !== undefined || chain.readLen < 16 || last === undefined || last.len < 1) return undefined;
    const hdr = new DataView(readFromChain(mem, chain.readable, 16).buffer);
    return {
      type: hdr.getUint32(0, true),
      sector: hdr.getBigUint64(8, true),
      statusAddr: last.addr + last.len - 1,
      dataIn: chain.writeLen - 1,
      dataOut: chain.readLen - 16,
    };
  }

  /**
   * Hands a well-formed read, write or flush to the backend's threads; the answer is pushed when it
   * completes. False when it is anything else or the backend cannot take it now: serve it here.
   */
  private offload(ctx: VirtioContext, q: number, chain: DescriptorChain): boolean {
    const io = this.backend.io;
    if (io === undefined) return false;
    const mem = ctx.mem;
    const h = this.header(mem, chain);
    if (h === undefined) return false;
    let op: 'read' | 'write' | 'flush';
    let pos = 0;
    let ranges: Segment[] | undefined = [];
    let len = 0;
    if (h.type === VIRTIO_BLK_T.IN) {
      pos = this.range(h.sector, h.dataIn);
      if (pos < 0 || !mem.isValid(h.statusAddr, 1)) return false;
      op = 'read';
      len = h.dataIn;
      ranges = this.ranges(mem, chain.writable, 0, len);
    } else if (h.type === VIRTIO_BLK_T.OUT) {
      pos = this.range(h.sector, h.dataOut);
      if (pos < 0 || this.backend.readOnly || !mem.isValid(h.statusAddr, 1)) return false;
      op = 'write';
      len = h.dataOut;
      ranges = this.ranges(mem, chain.readable, 16, len);
    } else if (h.type === VIRTIO_BLK_T.FLUSH) {
      if (!hasFeature(ctx.features, VIRTIO_BLK_F.FLUSH) || this.backend.readOnly || !mem.isValid(h.statusAddr, 1))
        return false;
      op = 'flush';
    } else return false;
    if (ranges === undefined) return false;
    const submitted = io.submit(op, ranges, pos, (ok) => {
      if (this.ctx !== ctx) return; // reset meanwhile: the queue is gone
      const c = this.counters;
      if (op === 'read') c.reads++;
      else if (op === 'write') c.writes++;
      else c.flushes++;
      if (ok && op === 'read') c.readBytes += len;
      if (ok && op === 'write') c.writeBytes += len;
      if (!ok) c.ioErrors++;
      mem.write8(h.statusAddr, ok ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      ctx.queues[q]?.pushUsed(mem, chain.head, (ok && op === 'read' ? len : 0) + 1);
      ctx.signalUsed(q);
    });
    if (submitted) this.counters.offloaded++;
    return submitted;
  }

  /** The chain's guest ranges, or undefined when one lies outside guest memory (served here: IOERR). */
  private ranges(mem: GuestMemory, bufs: readonly Segment[], offset: number, len: number): Segment[] | undefined {
    try {
      return chainRanges(mem, bufs, offset, len);
    } catch {
      return undefined;
    }
  }

  /** Serves one request; returns the bytes written into the chain (data plus the status byte). */
  private serve(mem: GuestMemory, chain: DescriptorChain, features: bigint): number {
    const h = this.header(mem, chain);
    if (h === undefined) {
      // No usable header or status byte: nothing can be answered; return the chain untouched.
      this.counters.malformed++;
      return 0;
    }
    const { type, sector, statusAddr, dataIn, dataOut } = h;
    let status: number = VIRTIO_BLK_S.OK;
    let written = 0;
    try {
      switch (type) {
        case VIRTIO_BLK_T.IN: {
          this.counters.reads++;
          const pos = this.range(sector, dataIn);
          if (pos < 0) {
            status = VIRTIO_BLK_S.IOERR;
            break;
          }
          const n = this.backend.readv(chainViews(mem, chain.writable, 0, dataIn), pos);
          if (n !== dataIn) throw Object.assign(new Error('short read'), { code: 'EIO' });
          this.counters.readBytes += n;
          written = n;
          break;
        }
        case VIRTIO_BLK_T.OUT: {
          this.counters.writes++;
          const pos = this.range(sector, dataOut);
          if (pos < 0 || this.backend.readOnly) {
            status = VIRTIO_BLK_S.IOERR;
            break;
          }
          const n = this.backend.writev(chainViews(mem, chain.readable, 16, dataOut, 'read'), pos);
          if (n !== dataOut) throw Object.assign(new Error('short write'), { code: 'EIO' });
          this.counters.writeBytes += n;
          break;
        }
        case VIRTIO_BLK_T.FLUSH:
          this.counters.flushes++;
          if (!hasFeature(features, VIRTIO_BLK_F.FLUSH)) status = VIRTIO_BLK_S.UNSUPP;
          else if (!this.backend.readOnly) this.backend.flush();
          break;
        case VIRTIO_BLK_T.GET_ID: {
          this.counters.getIds++;
          const n = Math.min(dataIn, VIRTIO_BLK_ID_BYTES);
          const views = chainViews(mem, chain.writable, 0, n);
          let off = 0;
          for (const v of views) {
            v.set(this.id.subarray(off, off + v.length));
            off += v.length;
          }
          written = n;
          break;
        }
        case VIRTIO_BLK_T.DISCARD:
        case VIRTIO_BLK_T.WRITE_ZEROES:
          status = this.discardOrZero(mem, chain, type, dataOut, features);
          break;
        default:
          this.counters.unsupported++;
          status = VIRTIO_BLK_S.UNSUPP;
      }
    } catch {
      status = VIRTIO_BLK_S.IOERR;
      written = 0;
    }
    if (status === VIRTIO_BLK_S.IOERR) this.counters.ioErrors++;
    mem.write8(statusAddr, status);
    return written + 1;
  }

  /** Byte position of `sector` when [sector, sector + len) lies inside the disk and len is whole sectors; else -1. */
  private range(sector: bigint, len: number): number {
    if (len % SECTOR !== 0 || sector > BigInt(this.sectors)) return -1;
    const s = Number(sector);
    return s + len / SECTOR <= this.sectors ? s * SECTOR : -1;
  }

  private discardOrZero(mem: GuestMemory, chain: DescriptorChain, type: number, len: number, features: bigint): number {
    const zero = type === VIRTIO_BLK_T.WRITE_ZEROES;
    if (zero) this.counters.writeZeroes++;
    else this.counters.discards++;
    const feature = zero ? VIRTIO_BLK_F.WRITE_ZEROES : VIRTIO_BLK_F.DISCARD;
    if (!hasFeature(features, feature) || this.backend.readOnly) {
      this.counters.unsupported++;
      return VIRTIO_BLK_S.UNSUPP;
    }
    if (len === 0 || len % 16 !== 0 || len / 16 > MAX_DISCARD_SEG) return VIRTIO_BLK_S.IOERR;
    const segs = new DataView(readFromChain(mem, chain.readable, len, 16).buffer);
    for (let o = 0; o < len; o += 16) {
      const sector = segs.getBigUint64(o, true);
      const n = segs.getUint32(o + 8, true);
      const flags = segs.getUint32(o + 12, true);
      // §5.2.6.2: unknown flags, and the unmap flag on a discard, are unsupported.
      if (flags & ~(zero ? WRITE_ZEROES_F_UNMAP : 0)) return VIRTIO_BLK_S.UNSUPP;
      if (n > MAX_DISCARD_SECTORS) return VIRTIO_BLK_S.IOERR;
      const pos = this.range(sector, n * SECTOR);
      if (pos < 0) return VIRTIO_BLK_S.IOERR;
      if (zero) this.backend.writeZeroes(pos, n * SECTOR, (flags & WRITE_ZEROES_F_UNMAP) !== 0);
      else this.backend.discard(pos, n * SECTOR);
    }
    return VIRTIO_BLK_S.OK;
  }
}
