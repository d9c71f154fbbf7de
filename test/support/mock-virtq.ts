/**
 * A mock guest driver for split virtqueues (after rust-vmm's MockSplitQueue), and a GuestMemory that
 * records every access the device side makes. The driver writes through its own, unrecorded view of the
 * same mappings, so the record holds only what the device did.
 */
import {
  type QueueLayout,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/devices/virtio/queue.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';

/** One raw descriptor; `addr` is a full 64-bit guest address. */
export interface Desc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

/** One buffer as the driver means it: where, how long, and whether the device may write it. */
export interface BufSpec {
  addr: number;
  len: number;
  write: boolean;
}

export interface UsedElem {
  id: number;
  len: number;
}

/** The bytes each part of a split queue of `size` entries takes (virtio 1.2 §2.7). */
export const ringBytes = (size: number) => ({ desc: 16 * size, avail: 6 + 2 * size, used: 6 + 8 * size });

export class MockSplitQueue {
  private freeDescs: number[];
  private lastUsed: number;

  /** `mem` is the driver's view of guest memory; the rings are where `layout` says. */
  constructor(
    readonly mem: GuestMemory,
    readonly layout: QueueLayout,
  ) {
    this.freeDescs = Array.from({ length: layout.size }, (_, i) => layout.size - 1 - i);
    this.lastUsed = this.usedIdx;
  }

  /** Lays the three parts out one after the other from `base`, each with its own alignment. */
  static packed(size: number, base: number): QueueLayout {
    const b = ringBytes(size);
    const desc = Math.ceil(base / 16) * 16;
    const avail = desc + b.desc;
    const used = Math.ceil((avail + b.avail) / 4) * 4;
    return { size, desc, avail, used };
  }

  get free(): number {
    return this.freeDescs.length;
  }

  writeDesc(i: number, d: Desc, table = this.layout.desc): void {
    const a = table + 16 * i;
    this.mem.write64(a, d.addr);
    this.mem.write32(a + 8, d.len);
    this.mem.write16(a + 12, d.flags);
    this.mem.write16(a + 14, d.next);
  }

  readDesc(i: number, table = this.layout.desc): Desc {
    const a = table + 16 * i;
    return {
      addr: this.mem.read64(a),
      len: this.mem.read32(a + 8),
      flags: this.mem.read16(a + 12),
      next: this.mem.read16(a + 14),
    };
  }

  get availIdx(): number {
    return this.mem.read16(this.layout.avail + 2);
  }
  set availIdx(v: number) {
    this.mem.write16(this.layout.avail + 2, v & 0xffff);
  }
  setAvailFlags(flags: number): void {
    this.mem.write16(this.layout.avail, flags);
  }
  setUsedEvent(v: number): void {
    this.mem.write16(this.layout.avail + 4 + 2 * this.layout.size, v & 0xffff);
  }
  /** Sets ring[slot] directly, without touching the index. */
  setAvailEntry(slot: number, head: number): void {
    this.mem.write16(this.layout.avail + 4 + 2 * (slot % this.layout.size), head);
  }

  /** Publishes `head`: ring[idx % size] = head, then idx+1 (16-bit wrap). */
  addAvail(head: number): void {
    const idx = this.availIdx;
    this.setAvailEntry(idx, head);
    this.availIdx = idx + 1;
  }

  get usedIdx(): number {
    return this.mem.read16(this.layout.used + 2);
  }
  set usedIdx(v: number) {
    this.mem.write16(this.layout.used + 2, v & 0xffff);
    this.lastUsed = v & 0xffff;
  }
  get usedFlags(): number {
    return this.mem.read16(this.layout.used);
  }
  get availEvent(): number {
    return this.mem.read16(this.layout.used + 4 + 8 * this.layout.size);
  }
  usedElem(slot: number): UsedElem {
    const a = this.layout.used + 4 + 8 * (slot % this.layout.size);
    return { id: this.mem.read32(a), len: this.mem.read32(a + 4) };
  }

  /** The used elements published since the last call (a driver's interrupt handler). */
  takeUsed(): UsedElem[] {
    const out: UsedElem[] = [];
    for (const end = this.usedIdx; this.lastUsed !== end; this.lastUsed = (this.lastUsed + 1) & 0xffff)
      out.push(this.usedElem(this.lastUsed));
    return out;
  }

  /**
   * Writes a chain for `bufs` and makes it available; returns its head, or undefined when too few
   * descriptors are free. A direct chain takes free descriptors in whatever order the free list holds
   * them; with `indirectAt`, the chain is an indirect table written there, behind one descriptor.
   */
  addChain(bufs: readonly BufSpec[], indirectAt?: number): number | undefined {
    const direct = indirectAt === undefined;
    if (bufs.length === 0 || this.freeDescs.length < (direct ? bufs.length : 1)) return undefined;
    const flagsOf = (b: BufSpec, last: boolean) => (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
    if (direct) {
      const ids = this.freeDescs.splice(-bufs.length).reverse();
      bufs.forEach((b, i) => {
        const last = i === bufs.length - 1;
        this.writeDesc(ids[i] as number, {
          addr: BigInt(b.addr),
          len: b.len,
          flags: flagsOf(b, last),
          next: last ? 0 : (ids[i + 1] as number),
        });
      });
      this.addAvail(ids[0] as number);
      return ids[0];
    }
    bufs.forEach((b, i) => {
      const last = i === bufs.length - 1;
      this.writeDesc(
        i,
        { addr: BigInt(b.addr), len: b.len, flags: flagsOf(b, last), next: last ? 0 : i + 1 },
        indirectAt,
      );
    });
    const head = this.freeDescs.pop() as number;
    this.writeDesc(head, { addr: BigInt(indirectAt), len: 16 * bufs.length, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    this.addAvail(head);
    return head;
  }

  /** Gives a completed chain's descriptors back to the free list (following its direct `next` links). */
  recycle(head: number): void {
    for (let i = head, n = 0; n < this.layout.size; n++) {
      this.freeDescs.push(i);
      const d = this.readDesc(i);
      if (!(d.flags & VIRTQ_DESC_F_NEXT) || d.flags & VIRTQ_DESC_F_INDIRECT) return;
      i = d.next;
    }
  }

  /** Shuffles the free list so that direct chains use descriptors out of order. */
  shuffleFree(rand: (n: number) => number): void {
    const f = this.freeDescs;
    for (let i = f.length - 1; i > 0; i--) {
      const j = rand(i + 1);
      [f[i], f[j]] = [f[j] as number, f[i] as number];
    }
  }
}

export interface Access {
  gpa: number;
  len: number;
  kind: 'read' | 'write' | 'slice';
}

/**
 * Guest memory that logs each access (before the bounds check, so refused ones are logged too). A device
 * call that never returns would spin here forever, out of reach of any test timeout: past `budget`
 * accesses since the last take(), every access throws instead.
 */
export class RecordingMemory extends GuestMemory {
  log: Access[] = [];
  budget = 1_000_000;

  private rec(gpa: number, len: number, kind: Access['kind']): void {
    if (this.log.length >= this.budget)
      throw new Error(`the device made more than ${this.budget} memory accesses in one go: it does not terminate`);
    this.log.push({ gpa, len, kind });
  }
  override read8(gpa: number): number {
    this.rec(gpa, 1, 'read');
    return super.read8(gpa);
  }
  override read16(gpa: number): number {
    this.rec(gpa, 2, 'read');
    return super.read16(gpa);
  }
  override read32(gpa: number): number {
    this.rec(gpa, 4, 'read');
    return super.read32(gpa);
  }
  override read64(gpa: number): bigint {
    this.rec(gpa, 8, 'read');
    return super.read64(gpa);
  }
  override write8(gpa: number, v: number): void {
    this.rec(gpa, 1, 'write');
    super.write8(gpa, v);
  }
  override write16(gpa: number, v: number): void {
    this.rec(gpa, 2, 'write');
    super.write16(gpa, v);
  }
  override write32(gpa: number, v: number): void {
    this.rec(gpa, 4, 'write');
    super.write32(gpa, v);
  }
  override write64(gpa: number, v: bigint): void {
    this.rec(gpa, 8, 'write');
    super.write64(gpa, v);
  }
  override slice(gpa: number, len: number): Uint8Array {
    this.rec(gpa, len, 'slice');
    return super.slice(gpa, len);
  }
  override readView(gpa: number, len: number): Uint8Array {
    this.rec(gpa, len, 'slice');
    return super.readView(gpa, len);
  }

  /** Returns the log and starts a new one. */
  take(): Access[] {
    const l = this.log;
    this.log = [];
    return l;
  }
}
