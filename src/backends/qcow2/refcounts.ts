/**
 * qcow2 host cluster management: the refcount table and its refcount blocks (write-back, in a bounded
 * cache), the allocator and table growth. Refcounts are only ever raised for clusters about to be
 * referenced and lowered once nothing on disk references them (the image's flush order, metadata.ts),
 * so a crash leaves at worst leaked clusters (qemu-img check -r leaks), never a reference to a free one.
 */
import { Qcow2Error, type Qcow2Header } from './format.js';
import type { ImageIo } from './image-io.js';
import { TableCache } from './table-cache.js';

/** Clusters that hold the image's fixed metadata: never handed out, whatever the refcounts say. */
export interface Reserved {
  start: number;
  count: number;
}

export class Refcounts {
  private table: Buffer;
  private tableOffset: number;
  private tableClusters: number;
  /** Refcount-table clusters changed since the last write. */
  private readonly tableDirty = new Set<number>();
  /** Entries per refcount block. */
  readonly perBlock: number;
  private readonly order: number;
  private readonly cs: number;
  readonly blocks: TableCache;
  /** The lowest cluster that may be free. */
  private hint = 0;
  /** Why no refcount may change any more (the table could not grow), once that happened. */
  private failed: string | undefined;
  constructor(
    private readonly io: ImageIo,
    h: Qcow2Header,
    private readonly name: string,
    private readonly reserved: Reserved[],
    cacheTables: number,
    /** Writes every dirty table in the image's safe order (the caches call it when full of dirty tables). */
    flush: () => void,
  ) {
    this.cs = h.clusterSize;
    this.order = h.refcountOrder;
    this.perBlock = (this.cs * 8) >> this.order;
    this.tableOffset = h.refcountTableOffset;
    this.tableClusters = h.refcountTableClusters;
    this.table = Buffer.alloc(this.tableClusters * this.cs);
    const n = io.readv([this.table], this.tableOffset);
    if (n !== this.table.length) throw this.err('the refcount table runs past the end of the file');
    this.blocks = new TableCache(cacheTables, (off) => this.loadBlock(off), flush);
  }

  private err(what: string): Qcow2Error {
    return new Qcow2Error(`qcow2 image ${this.name}: ${what}`);
  }

  /** A refcount block's offset from its table entry (0: none), checked. */
  private blockOffset(index: number): number {
    if (index * 8 >= this.table.length) return 0;
    const hi = this.table.readUInt32BE(index * 8);
    const lo = this.table.readUInt32BE(index * 8 + 4);
    if ((lo & 0x1ff) !== 0) throw this.err(`refcount table entry ${index} has reserved bits set`);
    const off = hi * 2 ** 32 + lo;
    if (off === 0) return 0;
    if (off % this.cs !== 0)
      throw this.err(`refcount table entry ${index} (0x${off.toString(16)}) is not cluster-aligned`);
    if (off + this.cs > this.io.size() && !this.blocks.has(off))
      throw this.err(`refcount table entry ${index} (0x${off.toString(16)}) points past the end of the file`);
    return off;
  }

  private loadBlock(off: number): Buffer {
    const b = Buffer.alloc(this.cs);
    if (this.io.readv([b], off) !== this.cs) throw this.err(`refcount block at 0x${off.toString(16)} is truncated`);
    return b;
  }

  /** The refcount of a host cluster (0 where no block covers it). */
  get(cluster: number): number {
    const off = this.blockOffset(Math.floor(cluster / this.perBlock));
    if (off === 0) return 0;
    return readEntry(this.blocks.get(off), cluster % this.perBlock, this.order);
  }

  /** Sets a cluster's refcount; its block must exist (ensureBlock). */
  private set(cluster: number, value: number): void {
    const off = this.blockOffset(Math.floor(cluster / this.perBlock));
    if (off === 0) throw this.err(`no refcount block for cluster ${cluster}`);
    const b = this.blocks.get(off);
    writeEntry(b, cluster % this.perBlock, this.order, value);
    this.blocks.markDirty(off, b);
  }

  private isReserved(cluster: number): boolean {
    return this.reserved.some((r) => cluster >= r.start && cluster < r.start + r.count);
  }

  /**
   * Allocates n contiguous free clusters (refcount 1, blocks created where missing) and returns the
   * byte offset of the first. n is at most half a refcount block's reach.
   */
  alloc(n: number): number {
    const max = Math.max(1, Math.floor(this.perBlock / 2));
    if (n < 1 || n > max) throw new Error(`qcow2: alloc(${n}) outside 1..${max}`);
    this.checkUsable();
    const limit = Math.floor(2 ** 52 / this.cs);
    let c = this.hint;
    // The first free cluster the scan passes (a gap too short for this run): the next scan starts there.
    let firstFree = -1;
    for (let k = 0; k < n; k++) {
      const x = c + k;
      if (x >= limit) throw this.err('no free cluster below 2^52 bytes');
      if (this.isReserved(x) || this.get(x) !== 0) {
        if (k > 0 && firstFree < 0) firstFree = c;
        c = x + 1;
        k = -1;
      }
    }
    // The run is reserved while blocks are made for it (a table growth allocates too).
    const run = { start: c, count: n };
    this.reserved.push(run);
    try {
      for (let k = 0; k < n; k++) this.ensureBlock(c + k);
    } finally {
      this.reserved.splice(this.reserved.indexOf(run), 1);
    }
    for (let k = 0; k < n; k++) this.set(c + k, 1);
    this.hint = firstFree >= 0 ? firstFree : c + n;
    return c * this.cs;
  }

  /**
   * Drops one reference to a cluster (the caller made sure the one it drops is gone from disk);
   * returns whether the cluster is free now.
   */
  release(cluster: number): boolean {
    const v = this.get(cluster);
    if (v === 0) return true;
    this.set(cluster, v - 1);
    if (v === 1) this.hint = Math.min(this.hint, cluster);
    return v === 1;
  }

  /**
   * Makes sure a refcount block covers `cluster`: a missing one is placed in the first cluster of its
   * own range that is not reserved (every cluster it covers is free, so it describes itself), growing
   * the refcount table first when it is too short.
   */
  private ensureBlock(cluster: number): void {
    const bi = Math.floor(cluster / this.perBlock);
    if (this.blockOffset(bi) !== 0) return;
    if ((bi + 1) * 8 > this.table.length) {
      this.growTable(bi + 1);
      if (this.blockOffset(bi) !== 0) return;
    }
    let at = bi * this.perBlock;
    const endRange = at + this.perBlock;
    while (at < endRange && this.isReserved(at)) at++;
    if (at >= endRange) throw this.err(`no room for the refcount block of clusters ${bi * this.perBlock}+`);
    const block = Buffer.alloc(this.cs);
    writeEntry(block, at % this.perBlock, this.order, 1);
    // Written now (nothing points at it yet): its space in the file is taken while the write that
    // needs it can still fail, so the next flush needs no new space. A failure here changes nothing.
    if (this.io.writev([block], at * this.cs) !== this.cs) throw this.err('short write of a refcount block');
    this.setTableEntry(bi, at * this.cs);
    this.blocks.put(at * this.cs, block, true);
  }

  private setTableEntry(index: number, off: number): void {
    this.table.writeUInt32BE(Math.floor(off / 2 ** 32), index * 8);
    this.table.writeUInt32BE(off % 2 ** 32, index * 8 + 4);
    this.tableDirty.add(Math.floor((index * 8) / this.cs));
  }

  /**
   * Moves the refcount table to a larger place: the new table (with the blocks it needs) is written
   * and synced before the header points at it, and the old one is freed only then.
   */
  private growTable(minEntries: number): void {
    const fileClusters = Math.ceil(this.io.size() / this.cs) + this.blocks.size + 16;
    const entries = Math.max(minEntries, (this.table.length / 8) * 2, Math.ceil(fileClusters / this.perBlock) + 2);
    const clusters = Math.ceil((entries * 8) / this.cs);
    if (clusters * this.cs > 8 * 1024 * 1024) throw this.err('the refcount table would grow past 8 MiB');
    const old = { offset: this.tableOffset, clusters: this.tableClusters };
    const grown = Buffer.alloc(clusters * this.cs);
    this.table.copy(grown);
    this.table = grown;
    let at: number;
    try {
      at = this.alloc(clusters);
      // Every refcount block (the new ones among them) on disk before the table that points at them,
      // the table before the header.
      this.writeBlocks();
      this.io.sync();
      if (this.io.writev([this.table], at) !== this.table.length) throw this.err('short write of the refcount table');
      this.io.sync();
      const hdr = Buffer.alloc(12);
      hdr.writeUInt32BE(Math.floor(at / 2 ** 32), 0);
      hdr.writeUInt32BE(at % 2 ** 32, 4);
      hdr.writeUInt32BE(clusters, 8);
      if (this.io.writev([hdr], 48) !== 12) throw this.err('short write of the header');
      this.io.sync();
    } catch (e) {
      // In memory the table is the grown one, on disk still the old one (or, after a failed header
      // write, either): writing refcounts now could put the grown table's entries past the old one's
      // end. Nothing more is written; the file keeps what its last flush described.
      this.failed ??= `the refcount table could not grow: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
      throw this.err(this.failed);
    }
    this.tableDirty.clear();
    this.tableOffset = at;
    this.tableClusters = clusters;
    const r = this.reserved.find((x) => x.start === old.offset / this.cs);
    if (r) {
      r.start = at / this.cs;
      r.count = clusters;
    }
    for (let k = 0; k < old.clusters; k++) this.release(old.offset / this.cs + k);
  }

  /** Refuses every change once the table could not grow (see growTable). */
  private checkUsable(): void {
    if (this.failed !== undefined) throw this.err(`no more refcount changes after an earlier error: ${this.failed}`);
  }

  /** Writes every dirty refcount block (no sync). */
  writeBlocks(): boolean {
    this.checkUsable();
    const dirty = this.blocks.dirty();
    for (const [off, b] of dirty)
      if (this.io.writev([b], off) !== b.length) throw this.err('short write of a refcount block');
    this.blocks.markClean();
    return dirty.length > 0;
  }

  /** Writes the refcount table's dirty clusters (no sync); the blocks they point at must be on disk. */
  writeTable(): boolean {
    this.checkUsable();
    if (this.tableDirty.size === 0) return false;
    for (const ci of this.tableDirty) {
      const part = this.table.subarray(ci * this.cs, (ci + 1) * this.cs);
      if (this.io.writev([part], this.tableOffset + ci * this.cs) !== part.length)
        throw this.err('short write of the refcount table');
    }
    this.tableDirty.clear();
    return true;
  }

  get tableIsDirty(): boolean {
    return this.tableDirty.size > 0;
  }
}

/** Entry i of a refcount block whose entries are 2^order bits wide (bit 0 is the least significant). */
export function readEntry(b: Buffer, i: number, order: number): number {
  switch (order) {
    case 3:
      return b[i] as number;
    case 4:
      return b.readUInt16BE(i * 2);
    case 5:
      return b.readUInt32BE(i * 4);
    case 6:
      return b.readUInt32BE(i * 8) * 2 ** 32 + b.readUInt32BE(i * 8 + 4);
    default: {
      const bits = 1 << order;
      const pos = i * bits;
      return ((b[pos >> 3] as number) >> (pos & 7)) & ((1 << bits) - 1);
    }
  }
}

/** Sets entry i (a value the width holds: the callers only lower counts or set 1). */
export function writeEntry(b: Buffer, i: number, order: number, value: number): void {
  switch (order) {
    case 3:
      b[i] = value;
      return;
    case 4:
      b.writeUInt16BE(value, i * 2);
      return;
    case 5:
      b.writeUInt32BE(value, i * 4);
      return;
    case 6:
      b.writeUInt32BE(Math.floor(value / 2 ** 32), i * 8);
      b.writeUInt32BE(value % 2 ** 32, i * 8 + 4);
      return;
    default: {
      const bits = 1 << order;
      const pos = i * bits;
      const mask = ((1 << bits) - 1) << (pos & 7);
      b[pos >> 3] = ((b[pos >> 3] as number) & ~mask) | ((value << (pos & 7)) & mask);
    }
  }
}
