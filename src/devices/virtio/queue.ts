/**
 * A split virtqueue (virtio 1.2 §2.7), device side. The guest is the attacker: every index, address and
 * length read from the rings is checked before use, and every failure is a typed error, never an access
 * outside guest memory. Memory is passed in on each call (rust-vmm's habit), so the queue holds no view.
 *
 * Two kinds of failure:
 * - ring-level (`QueueError`): the avail index jumped by more than the queue size, a head index is out of
 *   range, the rings left guest memory. The device cannot go on; the transport sets DEVICE_NEEDS_RESET.
 * - chain-level (`chain.error`): a malformed descriptor chain (loop, `next` out of range, bad indirect
 *   table, buffer outside guest memory, chain longer than 4 GiB, readable after writable). The head is
 *   still valid, so the device completes it with an error and the queue goes on.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** The largest split queue the spec allows. */
export const VIRTQ_MAX_SIZE = 32768;
const DESC_SIZE = 16;

export type QueueErrorCode =
  | 'VIRTQ_ERR_SIZE'
  | 'VIRTQ_ERR_ALIGNMENT'
  | 'VIRTQ_ERR_RING_OUTSIDE_MEMORY'
  | 'VIRTQ_ERR_RINGS_OVERLAP'
  | 'VIRTQ_ERR_AVAIL_INDEX'
  | 'VIRTQ_ERR_HEAD_INDEX'
  | 'VIRTQ_ERR_USED_OVERFLOW';

/** A ring-level protocol error: the queue cannot be used any more. */
export class QueueError extends Error {
  constructor(
    readonly code: QueueErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'QueueError';
  }
}

export type ChainErrorCode =
  | 'CHAIN_LOOP'
  | 'CHAIN_NEXT_INDEX'
  | 'CHAIN_TOO_LONG'
  | 'CHAIN_OUTSIDE_MEMORY'
  | 'CHAIN_ORDER'
  | 'CHAIN_INDIRECT_NOT_NEGOTIATED'
  | 'CHAIN_INDIRECT_NESTED'
  | 'CHAIN_INDIRECT_BAD_TABLE';

/** The queue's guest-physical layout, as the driver wrote it into the transport. */
export interface QueueLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

export interface QueueFeatures {
  eventIdx: boolean;
  indirect: boolean;
}

/** One buffer of a chain; validated to lie wholly inside one guest memory region. */
export interface Segment {
  addr: number;
  len: number;
}

export interface DescriptorChain {
  head: number;
  /** Device-readable buffers, in order. */
  readable: Segment[];
  /** Device-writable buffers, in order (all after the readable ones). */
  writable: Segment[];
  readLen: number;
  writeLen: number;
  /** Set when the chain is malformed; its buffers are then incomplete and must not be used. */
  error?: ChainErrorCode;
}

/** What a snapshot needs to restore the device side of a queue. */
export interface QueuePosition {
  nextAvail: number;
  nextUsed: number;
  /** used index when the driver was last notified (event-idx suppression). */
  signalledUsed: number;
  inFlight: number;
}

// A full fence: Atomics on a shared buffer are sequentially consistent (xchg/mfence on x86), which
// orders our avail_event store before the re-read of avail.idx (the lost-wakeup race).
const fenceCell = new Int32Array(new SharedArrayBuffer(4));
const fence = (): void => {
  Atomics.store(fenceCell, 0, 0);
};

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/** Checks a layout against the rules of §2.7 and guest memory; returns why it is unusable, or undefined. */
export function checkLayout(mem: GuestMemory, l: QueueLayout, maxSize: number): QueueError | undefined {
  if (!Number.isInteger(l.size) || !isPow2(l.size) || l.size > maxSize || l.size > VIRTQ_MAX_SIZE)
    return new QueueError('VIRTQ_ERR_SIZE', `queue size ${l.size} is not a power of two of at most ${maxSize}`);
  if (l.desc % 16 !== 0 || l.avail % 2 !== 0 || l.used % 4 !== 0)
    return new QueueError('VIRTQ_ERR_ALIGNMENT', 'descriptor table, available or used ring is misaligned');
  const areas = [
    { name: 'descriptor table', addr: l.desc, len: DESC_SIZE * l.size },
    { name: 'available ring', addr: l.avail, len: 6 + 2 * l.size },
    { name: 'used ring', addr: l.used, len: 6 + 8 * l.size },
  ];
  for (const a of areas)
    if (!mem.isValid(a.addr, a.len))
      return new QueueError('VIRTQ_ERR_RING_OUTSIDE_MEMORY', `the ${a.name} is outside guest memory`);
  for (let i = 0; i < areas.length; i++)
    for (let j = i + 1; j < areas.length; j++) {
      const a = areas[i] as (typeof areas)[number];
      const b = areas[j] as (typeof areas)[number];
      if (a.addr < b.addr + b.len && b.addr < a.addr + a.len)
        return new QueueError('VIRTQ_ERR_RINGS_OVERLAP', `the ${a.name} overlaps the ${b.name}`);
    }
  return undefined;
}

export class Queue {
  private nextAvail = 0;
  private nextUsed = 0;
  private signalledUsed = 0;
  private inFlight = 0;
  /** Used elements written since the queue was made (not 16-bit: a drain can outlast a wrap). */
  private usedCount = 0;
  /** Byte offsets of the event-idx fields. */
  private readonly usedEventAddr: number;
  private readonly availEventAddr: number;

  /** The layout must have passed checkLayout() against the same memory. */
  constructor(
    readonly layout: QueueLayout,
    readonly features: QueueFeatures,
    position?: QueuePosition,
  ) {
    this.usedEventAddr = layout.avail + 4 + 2 * layout.size;
    this.availEventAddr = layout.used + 4 + 8 * layout.size;
    if (position) {
      this.nextAvail = position.nextAvail & 0xffff;
      this.nextUsed = position.nextUsed & 0xffff;
      this.signalledUsed = position.signalledUsed & 0xffff;
      this.inFlight = position.inFlight;
    }
  }

  get size(): number {
    return this.layout.size;
  }

  position(): QueuePosition {
    return {
      nextAvail: this.nextAvail,
      nextUsed: this.nextUsed,
      signalledUsed: this.signalledUsed,
      inFlight: this.inFlight,
    };
  }

  /**
   * Used elements written since this queue was made (not persisted). drainQueue() compares it before
   * and after, so a chain a device returns out of turn (a kept one) is signalled too.
   */
  get usedTotal(): number {
    return this.usedCount;
  }

  /** Chains popped and not yet returned. */
  get pending(): number {
    return this.inFlight;
  }

  /** How many chains the driver has made available that we have not popped. Throws on a bad index. */
  available(mem: GuestMemory): number {
    const idx = mem.read16(this.layout.avail + 2);
    const n = (idx - this.nextAvail) & 0xffff;
    if (n > this.layout.size)
      throw new QueueError(
        'VIRTQ_ERR_AVAIL_INDEX',
        `avail.idx ${idx} is ${n} ahead of the device's ${this.nextAvail}; at most ${this.layout.size} can be`,
      );
    return n;
  }

  /** The next available chain, or undefined when the ring is empty. */
  pop(mem: GuestMemory): DescriptorChain | undefined {
    if (this.available(mem) === 0) return undefined;
    const size = this.layout.size;
    // A driver cannot have more chains outstanding than the queue has entries: one that republishes
    // heads still in flight would make the device overrun the used ring.
    if (this.inFlight >= size)
      throw new QueueError('VIRTQ_ERR_USED_OVERFLOW', `${this.inFlight} chains in flight on a queue of ${size}`);
    const head = mem.read16(this.layout.avail + 4 + 2 * (this.nextAvail & (size - 1)));
    if (head >= size)
      throw new QueueError('VIRTQ_ERR_HEAD_INDEX', `available ring entry ${head} is not below queue size ${size}`);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    this.inFlight++;
    const chain: DescriptorChain = { head, readable: [], writable: [], readLen: 0, writeLen: 0 };
    this.walk(mem, chain);
    return chain;
  }

  /** Walks the chain from its head into `chain`; sets chain.error and stops on the first fault. */
  private walk(mem: GuestMemory, chain: DescriptorChain): void {
    let table = this.layout.desc;
    let tableSize = this.layout.size;
    let idx = chain.head;
    let hops = 0;
    let indirect = false;
    for (;;) {
      if (++hops > tableSize) {
        chain.error = 'CHAIN_LOOP';
        return;
      }
      const d = table + DESC_SIZE * idx;
      const lo = mem.read32(d);
      const hi = mem.read32(d + 4);
      const len = mem.read32(d + 8);
      const flags = mem.read16(d + 12);
      const next = mem.read16(d + 14);
      // Addresses above 2^53 cannot be guest RAM; treat them as outside memory.
      const addr = hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + lo;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.features.indirect) {
          chain.error = 'CHAIN_INDIRECT_NOT_NEGOTIATED';
          return;
        }
        if (indirect) {
          chain.error = 'CHAIN_INDIRECT_NESTED';
          return;
        }
        // §2.7.5.3.1: INDIRECT and NEXT together are forbidden; the table holds whole 16-byte entries.
        const n = len / DESC_SIZE;
        if (flags & VIRTQ_DESC_F_NEXT || len === 0 || len % DESC_SIZE !== 0 || n > VIRTQ_MAX_SIZE) {
          chain.error = 'CHAIN_INDIRECT_BAD_TABLE';
          return;
        }
        if (!mem.isValid(addr, len)) {
          chain.error = 'CHAIN_OUTSIDE_MEMORY';
          return;
        }
        indirect = true;
        table = addr;
        tableSize = n;
        idx = 0;
        hops = 0;
        continue;
      }
      // A zero-length buffer must point into RAM too (isValid checks it as one byte): a Segment is in memory.
      if (!mem.isValid(addr, len)) {
        chain.error = 'CHAIN_OUTSIDE_MEMORY';
        return;
      }
      if (flags & VIRTQ_DESC_F_WRITE) {
        chain.writable.push({ addr, len });
        chain.writeLen += len;
      } else {
        if (chain.writable.length > 0) {
          chain.error = 'CHAIN_ORDER';
          return;
        }
        chain.readable.push({ addr, len });
        chain.readLen += len;
      }
      if (chain.readLen + chain.writeLen > 0xffffffff) {
        chain.error = 'CHAIN_TOO_LONG';
        return;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return;
      if (next >= tableSize) {
        chain.error = 'CHAIN_NEXT_INDEX';
        return;
      }
      idx = next;
    }
  }

  /** Returns a chain to the driver with `len` bytes written into its writable buffers. */
  pushUsed(mem: GuestMemory, head: number, len: number): void {
    this.pushUsedDeferred(mem, head, len);
    this.publishUsed(mem);
  }

  /**
   * Writes a used element without publishing it: the driver sees it (and all before it) at the next
   * publishUsed(), which must come before any needsNotification().
   */
  pushUsedDeferred(mem: GuestMemory, head: number, len: number): void {
    const size = this.layout.size;
    if (this.inFlight <= 0)
      throw new QueueError('VIRTQ_ERR_USED_OVERFLOW', 'more chains returned than were taken from the queue');
    if (!Number.isInteger(head) || head < 0 || head >= size)
      throw new QueueError('VIRTQ_ERR_HEAD_INDEX', `used head ${head} is not below queue size ${size}`);
    const e = this.layout.used + 4 + 8 * (this.nextUsed & (size - 1));
    mem.write32(e, head);
    mem.write32(e + 4, Math.min(Math.max(0, Math.trunc(len)), 0xffffffff));
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    this.inFlight--;
    this.usedCount++;
  }

  /** Makes the used elements written so far visible to the driver (used.idx). */
  publishUsed(mem: GuestMemory): void {
    // x86 keeps stores in order: the elements are visible before the index.
    mem.write16(this.layout.used + 2, this.nextUsed);
  }

  /**
   * Whether the driver wants an interrupt for what was added to the used ring since the last call
   * (§2.7.7.2 with VIRTIO_F_EVENT_IDX, otherwise the NO_INTERRUPT flag).
   */
  needsNotification(mem: GuestMemory): boolean {
    const newUsed = this.nextUsed;
    const old = this.signalledUsed;
    if (newUsed === old) return false;
    fence();
    if (this.features.eventIdx) {
      const usedEvent = mem.read16(this.usedEventAddr);
      this.signalledUsed = newUsed;
      // vring_need_event: wrap-safe in 16 bits.
      return ((newUsed - usedEvent - 1) & 0xffff) < ((newUsed - old) & 0xffff);
    }
    this.signalledUsed = newUsed;
    return (mem.read16(this.layout.avail) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Ask the driver not to notify us (we are draining the ring anyway). */
  disableNotification(mem: GuestMemory): void {
    if (this.features.eventIdx) return; // with event-idx, not re-arming avail_event suppresses kicks
    mem.write16(this.layout.used, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Re-arm driver notifications; returns true when more chains arrived meanwhile (the caller must
   * drain again, or a kick could be lost).
   */
  enableNotification(mem: GuestMemory): boolean {
    if (this.features.eventIdx) mem.write16(this.availEventAddr, this.nextAvail);
    else mem.write16(this.layout.used, 0);
    fence();
    return this.available(mem) > 0;
  }
}

/**
 * The one walk over a chain's buffers that the copy helpers share: visits [offset, offset+len) as guest
 * ranges, in order, skipping `offset` bytes first; `visit` gets each range and the bytes visited before
 * it. Returns the bytes visited (fewer than `len` when the chain is shorter). The buffers are the ones
 * Queue.pop() validated; the visitor does its own access, so the memory checks stay where they were.
 */
export function walkChain(
  bufs: readonly Segment[],
  offset: number,
  len: number,
  visit: (addr: number, n: number, done: number) => void,
): number {
  if (!(offset >= 0)) throw new RangeError(`negative chain offset ${offset}`);
  // A NaN or non-positive length visits nothing (chainRanges() has always answered [] for it).
  if (!(len > 0)) return 0;
  let skip = offset;
  let done = 0;
  for (const b of bufs) {
    if (done >= len) break;
    if (skip >= b.len) {
      skip -= b.len;
      continue;
    }
    const n = Math.min(b.len - skip, len - done);
    visit(b.addr + skip, n, done);
    done += n;
    skip = 0;
  }
  return done;
}

/** Copies `src` into a chain's writable buffers from byte `offset`; returns the bytes copied. */
export function writeToChain(mem: GuestMemory, bufs: readonly Segment[], src: Uint8Array, offset = 0): number {
  return walkChain(bufs, offset, src.length, (addr, n, done) => mem.slice(addr, n).set(src.subarray(done, done + n)));
}

/** Copies up to `len` bytes out of a chain's buffers, starting `offset` bytes in. */
export function readFromChain(mem: GuestMemory, bufs: readonly Segment[], len: number, offset = 0): Uint8Array {
  if (!(offset >= 0) || !(len >= 0)) throw new RangeError(`bad chain range ${offset}+${len}`);
  const out = new Uint8Array(len);
  const done = walkChain(bufs, offset, len, (addr, n, at) => out.set(mem.readView(addr, n), at));
  return done === len ? out : out.subarray(0, done);
}

/**
 * Zero-copy views of [offset, offset+len) of a chain's buffers (for readv/writev into guest memory).
 * `access` 'read' (a guest buffer the device only reads) keeps the pages out of the dirty log.
 */
export function chainViews(
  mem: GuestMemory,
  bufs: readonly Segment[],
  offset: number,
  len: number,
  access: 'write' | 'read' = 'write',
): Uint8Array[] {
  return chainRanges(mem, bufs, offset, len).map((r) =>
    access === 'read' ? mem.readView(r.addr, r.len) : mem.slice(r.addr, r.len),
  );
}

/**
 * The guest ranges of [offset, offset+len) of a chain's buffers, each checked to lie in guest memory
 * (GuestMemoryError otherwise): what another thread needs to build its own views of them.
 */
export function chainRanges(mem: GuestMemory, bufs: readonly Segment[], offset: number, len: number): Segment[] {
  const out: Segment[] = [];
  walkChain(bufs, offset, len, (addr, n) => {
    mem.check(addr, n);
    out.push({ addr, len: n });
  });
  return out;
}
