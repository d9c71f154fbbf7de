/**
 * A qcow2 image as a virtio-blk backend (and as a backing layer of another). Guest offsets map through
 * the L1 table and L2 tables (in a bounded cache) to host clusters; unallocated clusters read from the
 * backing layer or as zeroes, zero clusters as zeroes, compressed ones inflate (raw deflate, bounded to
 * one cluster). Every entry is checked when it is used: reserved bits, alignment, the end of the file.
 *
 * Writes go in place where a cluster is the image's own (COPIED); otherwise a fresh cluster is
 * allocated and filled (from the backing layer, the compressed data, or zeroes around the written part).
 * Metadata is write-back: the L2 tables, the L1 table and the refcounts change in memory and reach the
 * file on a flush (the guest's FLUSH, a cache full of dirty tables, close) in this order, each step
 * synced before the next:
 *
 *   1. the data clusters (fdatasync of what was written in place and to new clusters),
 *   2. refcount blocks (raised for new clusters), then refcount table entries for new blocks,
 *   3. L2 tables, then the L1 entries for new L2 tables,
 *   4. refcounts lowered for the clusters no longer referenced (only now may they be reused).
 *
 * So on disk an L2 or L1 entry never points at a cluster whose data or refcount is not there yet, and a
 * crash between steps leaves at most leaked clusters (what qemu-img check -r leaks repairs) — the
 * order qemu keeps with its refcount-before-L2 cache dependency, with the data made durable first.
 */
import type { BlockBackend } from '../../devices/virtio/block.js';
import {
  COPIED_HI,
  compressedRange,
  entryOffset,
  l1Reserved,
  putEntry,
  Qcow2Error,
  type Qcow2Header,
  ZERO_LO,
} from './format.js';
import { copyFrom, copyInto, type DiskLayer, type ImageIo, readClamped, sliceViews, zeroAfter } from './image-io.js';
import { decodeL2, inflateCluster, Kind, type Mapping, UNALLOCATED } from './mapping.js';
import { Refcounts, type Reserved } from './refcounts.js';
import { TableCache } from './table-cache.js';

export interface Qcow2Options {
  io: ImageIo;
  header: Qcow2Header;
  name: string;
  readOnly: boolean;
  backing?: DiskLayer | undefined;
  /** Bytes of L2 tables (and again of refcount blocks) kept in memory; default 4 MiB. */
  cacheBytes?: number;
}

const DEFAULT_CACHE = 4 * 1024 * 1024;
/** Clusters written in one system call at most (a run of new clusters). */
const MAX_RUN = 256;

export class Qcow2Disk implements BlockBackend, DiskLayer {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canDiscard: boolean;
  private readonly file: ImageIo;
  private readonly h: Qcow2Header;
  private readonly name: string;
  private readonly cs: number;
  private readonly l2Entries: number;
  private readonly backing: DiskLayer | undefined;
  private readonly cacheBytes: number;
  private l1: Buffer | undefined;
  private readonly l1Dirty = new Set<number>();
  private l2cache: TableCache | undefined;
  private rc: Refcounts | undefined;
  private readonly reserved: Reserved[];
  /** Host clusters whose last reference goes at the next flush (step 4). */
  private pendingFree: number[] = [];
  private flushing = false;
  /** A metadata error was met: no more writes (they could make it worse). */
  private broken: string | undefined;
  private inflated: { start: number; end: number; data: Buffer } | undefined;

  constructor(o: Qcow2Options) {
    this.file = o.io;
    this.h = o.header;
    this.name = o.name;
    this.readOnly = o.readOnly;
    this.canDiscard = !o.readOnly;
    this.size = o.header.size;
    this.cs = o.header.clusterSize;
    this.l2Entries = this.cs / 8;
    this.backing = o.backing;
    this.cacheBytes = o.cacheBytes ?? DEFAULT_CACHE;
    const cl = (off: number, bytes: number): Reserved => ({
      start: Math.floor(off / this.cs),
      count: Math.max(1, Math.ceil(((off % this.cs) + bytes) / this.cs)),
    });
    this.reserved = [
      { start: 0, count: 1 },
      cl(this.h.l1Offset, this.h.l1Size * 8),
      cl(this.h.refcountTableOffset, this.h.refcountTableClusters * this.cs),
    ];
  }

  private err(what: string): Qcow2Error {
    return new Qcow2Error(`qcow2 image ${this.name}: ${what}`);
  }

  /** The L1 table, read on first use (so a model built only for its features reads nothing). */
  private table1(): Buffer {
    if (this.l1) return this.l1;
    const l1 = Buffer.alloc(this.h.l1Size * 8);
    if (this.file.readv([l1], this.h.l1Offset) !== l1.length)
      throw this.err('the L1 table runs past the end of the file');
    this.l1 = l1;
    const tables = Math.max(4, Math.floor(this.cacheBytes / this.cs));
    this.l2cache = new TableCache(
      tables,
      (off) => this.loadTable(off, 'L2 table'),
      () => this.flushMetadata(),
    );
    return l1;
  }

  private l2(): TableCache {
    this.table1();
    return this.l2cache as TableCache;
  }

  private refcounts(): Refcounts {
    this.table1();
    this.rc ??= new Refcounts(
      this.file,
      this.h,
      this.name,
      this.reserved,
      Math.max(4, Math.floor(this.cacheBytes / this.cs)),
      () => (this.flushing ? this.rc?.writeBlocks() : this.flushMetadata()),
    );
    return this.rc;
  }

  private loadTable(off: number, what: string): Buffer {
    const b = Buffer.alloc(this.cs);
    if (this.file.readv([b], off) !== this.cs) throw this.err(`${what} at 0x${off.toString(16)} is truncated`);
    return b;
  }

  private isReserved(hostOff: number): boolean {
    const c = Math.floor(hostOff / this.cs);
    return this.reserved.some((r) => c >= r.start && c < r.start + r.count);
  }

  /** The L2 table offset of an L1 entry (0: none), checked; `copied` from bit 63. */
  private l2At(l1i: number): { off: number; copied: boolean } {
    const l1 = this.table1();
    const hi = l1.readUInt32BE(l1i * 8);
    const lo = l1.readUInt32BE(l1i * 8 + 4);
    if (l1Reserved(hi, lo)) throw this.err(`L1 entry ${l1i} has reserved bits set`);
    const off = entryOffset(hi, lo);
    if (off === 0) return { off: 0, copied: false };
    if (off % this.cs !== 0)
      throw this.err(`L1 entry ${l1i}: L2 table offset 0x${off.toString(16)} is not cluster-aligned`);
    if (off + this.cs > this.file.size() && !this.l2cache?.has(off))
      throw this.err(`L1 entry ${l1i}: L2 table offset 0x${off.toString(16)} is past the end of the file`);
    if (this.isReserved(off)) throw this.err(`L1 entry ${l1i}: the L2 table overlaps the header or a table`);
    return { off, copied: (hi & COPIED_HI) !== 0 };
  }

  /** Decodes and checks entry i of an L2 table. */
  private decode(table: Buffer, i: number, gc: number): Mapping {
    return decodeL2(table, i, gc, this.h, this.file.size(), this.name);
  }

  private lookup(gc: number): Mapping {
    const l1i = Math.floor(gc / this.l2Entries);
    if (l1i >= this.h.l1Size) return UNALLOCATED;
    const { off } = this.l2At(l1i);
    if (off === 0) return UNALLOCATED;
    return this.decode(this.l2().get(off), gc % this.l2Entries, gc);
  }

  // ---- reads ----

  readv(bufs: Uint8Array[], position: number): number {
    let total = 0;
    for (const b of bufs) total += b.length;
    const len = Math.max(0, Math.min(total, this.size - position));
    this.readRange(bufs, position, len);
    if (len < total) zeroAfter(bufs, len);
    return total;
  }

  readInto(bufs: Uint8Array[], position: number): void {
    this.readv(bufs, position);
  }

  private readRange(bufs: Uint8Array[], position: number, total: number): void {
    let done = 0;
    while (done < total) {
      const g = position + done;
      const gc = Math.floor(g / this.cs);
      const inC = g % this.cs;
      const m = this.lookup(gc);
      let n = Math.min(this.cs - inC, total - done);
      // A run of clusters read in one call: host-contiguous data, or unallocated/zero stretches.
      if (m.kind !== Kind.Compressed) {
        let k = 1;
        while (done + n < total) {
          const next = this.lookup(gc + k);
          const same = next.kind === m.kind && (m.kind !== Kind.Data || next.host === m.host + k * this.cs);
          if (!same) break;
          n += Math.min(this.cs, total - done - n);
          k++;
        }
      }
      const views = sliceViews(bufs, done, n);
      switch (m.kind) {
        case Kind.Data:
          readClamped(this.file, views, m.host + inC);
          break;
        case Kind.Zero:
          for (const v of views) v.fill(0);
          break;
        case Kind.Unallocated:
          if (this.backing) this.backing.readInto(views, g);
          else for (const v of views) v.fill(0);
          break;
        case Kind.Compressed:
          copyInto(views, this.inflate(m, gc).subarray(inC, inC + n));
          break;
      }
      done += n;
    }
  }

  /** A compressed cluster's data, inflated (the last one is kept: reads come in pieces). */
  private inflate(m: Mapping, gc: number): Buffer {
    const { start, end } = compressedRange(m.hi, m.lo, this.h.clusterBits);
    if (this.inflated && this.inflated.start === start && this.inflated.end === end) return this.inflated.data;
    const data = inflateCluster(this.file, m, gc, this.h, this.name);
    this.inflated = { start, end, data };
    return data;
  }

  /** A whole guest cluster's current content, for a partial write to a cluster that moves. */
  private content(m: Mapping, gc: number): Buffer {
    const buf = Buffer.alloc(this.cs);
    if (m.kind === Kind.Data) readClamped(this.file, [buf], m.host);
    else if (m.kind === Kind.Compressed) this.inflate(m, gc).copy(buf);
    else if (m.kind === Kind.Unallocated && this.backing) this.backing.readInto([buf], gc * this.cs);
    return buf;
  }

  // ---- writes ----

  private checkWritable(): void {
    if (this.readOnly) throw Object.assign(this.err('the image is read-only'), { errno: 30 });
    if (this.broken !== undefined) throw this.err(`no more writes after an earlier error: ${this.broken}`);
  }

  /** Runs a metadata-changing operation; a Qcow2Error in it stops later writes. */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof Qcow2Error) this.broken ??= e.message;
      throw e;
    }
  }

  /** The image's own (COPIED) L2 table for an L1 index: made or copied when it is not. */
  private l2ForWrite(l1i: number): { off: number; table: Buffer } {
    const cache = this.l2();
    const { off, copied } = this.l2At(l1i);
    if (off !== 0 && copied) return { off, table: cache.get(off) };
    const table = off === 0 ? Buffer.alloc(this.cs) : Buffer.from(cache.get(off));
    const at = this.refcounts().alloc(1);
    // Written now, not only at the next flush: the file's space for it is taken while the guest's
    // write can still fail (ENOSPC answers that write), so a flush never needs space it cannot get.
    this.filling(at, 1, () => this.writeHost([table], at));
    cache.put(at, table, true);
    putEntry(this.table1(), l1i, at, COPIED_HI);
    this.l1Dirty.add(Math.floor((l1i * 8) / this.cs));
    if (off !== 0) this.pendingFree.push(off / this.cs);
    return { off: at, table };
  }

  /** Queues the release of what a mapping held (once the entry that replaced it is on disk). */
  private dropOld(m: Mapping): void {
    if (m.kind === Kind.Data || (m.kind === Kind.Zero && m.host !== 0)) this.pendingFree.push(m.host / this.cs);
    else if (m.kind === Kind.Compressed) {
      const { start, end } = compressedRange(m.hi, m.lo, this.h.clusterBits);
      const first = Math.floor((Math.floor(start / 512) * 512) / this.cs);
      const last = Math.floor((end - 1) / this.cs);
      for (let c = first; c <= last; c++) this.pendingFree.push(c);
    }
  }

  writev(bufs: Uint8Array[], position: number): number {
    this.checkWritable();
    let total = 0;
    for (const b of bufs) total += b.length;
    if (position + total > this.size) throw this.err('write past the end of the disk');
    return this.guard(() => {
      let done = 0;
      while (done < total) done += this.writeRun(bufs, done, position + done, total - done);
      return total;
    });
  }

  /** Writes from bufs[from...] at guest byte g, at most `left` bytes, within one L2 table; returns the bytes done. */
  private writeRun(bufs: Uint8Array[], from: number, g: number, left: number): number {
    const gc = Math.floor(g / this.cs);
    const inC = g % this.cs;
    const l1i = Math.floor(gc / this.l2Entries);
    const { off, table } = this.l2ForWrite(l1i);
    const idx = gc % this.l2Entries;
    const m = this.decode(table, idx, gc);
    const first = Math.min(this.cs - inC, left);
    // Room in this L2 table and the allocator's run limit.
    const maxK = Math.min(this.l2Entries - idx, MAX_RUN, Math.max(1, Math.floor(this.refcounts().perBlock / 2)));
    if (m.kind === Kind.Data && m.copied) {
      if (this.isReserved(m.host)) throw this.err(`guest cluster ${gc} maps onto the header or a table`);
      // In place, over as many host-contiguous own clusters as follow.
      let n = first;
      let k = 1;
      while (n < left && k < maxK) {
        const next = this.decode(table, idx + k, gc + k);
        if (next.kind !== Kind.Data || !next.copied || next.host !== m.host + k * this.cs || this.isReserved(next.host))
          break;
        n += Math.min(this.cs, left - n);
        k++;
      }
      this.writeHost(sliceViews(bufs, from, n), m.host + inC);
      return n;
    }
    if (inC !== 0 || first < this.cs) {
      // Part of a cluster: the rest comes from what it held (a preallocated zero cluster is reused).
      const reuse = m.kind === Kind.Zero && m.host !== 0 && m.copied && !this.isReserved(m.host);
      const host = reuse ? m.host : this.refcounts().alloc(1);
      this.filling(host, reuse ? 0 : 1, () => {
        const buf = this.content(m, gc);
        copyFrom(sliceViews(bufs, from, first), buf, inC);
        this.writeHost([buf], host);
      });
      putEntry(table, idx, host, COPIED_HI);
      this.l2().markDirty(off, table);
      if (!reuse) this.dropOld(m);
      return first;
    }
    // Whole clusters that need new ones: one run, allocated together and written in one call.
    const olds = [m];
    let n = this.cs;
    while (n + this.cs <= left && olds.length < maxK) {
      const next = this.decode(table, idx + olds.length, gc + olds.length);
      if (next.kind === Kind.Data && next.copied) break;
      olds.push(next);
      n += this.cs;
    }
    const host = this.refcounts().alloc(olds.length);
    this.filling(host, olds.length, () => this.writeHost(sliceViews(bufs, from, n), host));
    olds.forEach((old, k) => {
      putEntry(table, idx + k, host + k * this.cs, COPIED_HI);
      this.dropOld(old);
    });
    this.l2().markDirty(off, table);
    return n;
  }

  /**
   * Runs fn, which fills `n` clusters just allocated at `host`. When it fails (ENOSPC, EIO), they are
   * given back: nothing refers to them yet, so a failed write leaves no leaked cluster behind.
   */
  private filling(host: number, n: number, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      const r = this.refcounts();
      for (let k = 0; k < n; k++) r.release(host / this.cs + k);
      throw e;
    }
  }

  private writeHost(views: Uint8Array[], at: number): void {
    let len = 0;
    for (const v of views) len += v.length;
    if (this.file.writev(views, at) !== len) throw Object.assign(new Error('short write'), { code: 'EIO' });
  }

  // ---- discard and write-zeroes ----

  discard(position: number, length: number): void {
    this.checkWritable();
    // Only whole clusters are dropped (a discard is a hint); in version 3 they read as zeroes after
    // (so the backing file does not show through), in version 2 they are left alone over a backing file.
    this.guard(() =>
      this.eachWholeCluster(position, length, () => {
        if (this.h.version === 3) return this.backing ? { lo: ZERO_LO } : { lo: 0 };
        return this.backing ? undefined : { lo: 0 };
      }),
    );
  }

  writeZeroes(position: number, length: number, unmap: boolean): void {
    this.checkWritable();
    this.guard(() => {
      const end = position + length;
      const a = Math.min(end, Math.ceil(position / this.cs) * this.cs);
      const b = Math.max(a, Math.floor(end / this.cs) * this.cs);
      this.zeroBytes(position, a - position);
      this.zeroBytes(b, end - b);
      this.eachWholeCluster(a, b - a, (m) => {
        if (this.h.version === 2) return this.backing || !unmap ? 'write' : { lo: 0 };
        // Without unmap a cluster of the image's own keeps its space (a preallocated zero cluster).
        if (!unmap && m.kind === Kind.Data && m.copied) return { lo: ZERO_LO, keep: true };
        return { lo: ZERO_LO };
      });
    });
  }

  private zeroBytes(position: number, length: number): void {
    for (let done = 0; done < length; ) {
      const n = Math.min(this.cs, length - done);
      this.writev([new Uint8Array(n)], position + done);
      done += n;
    }
  }

  /**
   * For each whole cluster in [position, position + length), replaces its entry by what `decide`
   * says: a new low word (0: unallocated, ZERO_LO: zero; `keep` keeps a preallocated cluster),
   * 'write' (write zeroes through the data path) or undefined (leave it).
   */
  private eachWholeCluster(
    position: number,
    length: number,
    decide: (m: Mapping) => { lo: number; keep?: boolean } | 'write' | undefined,
  ): void {
    const first = Math.ceil(position / this.cs);
    const end = Math.floor(Math.min(position + length, this.size) / this.cs);
    for (let gc = first; gc < end; gc++) {
      const l1i = Math.floor(gc / this.l2Entries);
      const cur = this.lookup(gc);
      const d = decide(cur);
      if (d === undefined) continue;
      if (d === 'write') {
        this.writev([new Uint8Array(this.cs)], gc * this.cs);
        continue;
      }
      if (cur.kind === Kind.Unallocated && d.lo === 0) continue;
      if (cur.kind === Kind.Zero && cur.host === 0 && d.lo === ZERO_LO) continue;
      const { off, table } = this.l2ForWrite(l1i);
      const m = this.decode(table, gc % this.l2Entries, gc);
      if (d.keep && m.kind === Kind.Data) putEntry(table, gc % this.l2Entries, m.host, COPIED_HI, ZERO_LO);
      else {
        putEntry(table, gc % this.l2Entries, 0, 0, d.lo);
        this.dropOld(m);
      }
      this.l2().markDirty(off, table);
    }
  }

  // ---- flush ----

  /** Writes every changed table in the order the file comment gives; safe to call at any time. */
  flushMetadata(): void {
    if (this.flushing || this.l1 === undefined) return;
    const cache = this.l2();
    const rc = this.rc;
    const tablesDirty = cache.dirtyCount > 0 || this.l1Dirty.size > 0;
    const refsDirty = rc !== undefined && (rc.blocks.dirtyCount > 0 || rc.tableIsDirty);
    if (!tablesDirty && !refsDirty && this.pendingFree.length === 0) return;
    this.flushing = true;
    try {
      // 1. the data the new entries point at (step 2's sync covers it when there are refcounts to write)
      if (tablesDirty && !refsDirty) this.file.sync();
      if (rc && refsDirty) {
        rc.writeBlocks(); // 2. refcounts for every new cluster, then the table entries of new blocks
        if (rc.tableIsDirty) {
          this.file.sync();
          rc.writeTable();
        }
        this.file.sync();
      }
      if (tablesDirty) {
        for (const [off, t] of cache.dirty()) this.writeHost([t], off); // 3. L2 tables, then the L1
        cache.markClean();
        if (this.l1Dirty.size > 0) {
          this.file.sync();
          const l1 = this.l1;
          for (const ci of this.l1Dirty) {
            const part = l1.subarray(ci * this.cs, Math.min(l1.length, (ci + 1) * this.cs));
            this.writeHost([part], this.h.l1Offset + ci * this.cs);
          }
          this.l1Dirty.clear();
        }
        this.file.sync();
      }
      if (this.pendingFree.length > 0) {
        // 4. nothing on disk points at these any more: their clusters may be reused from now on.
        const freed = this.pendingFree;
        this.pendingFree = [];
        const r = this.refcounts();
        this.inflated = undefined;
        const gone: number[] = [];
        for (const c of freed) if (r.release(c)) gone.push(c);
        r.writeBlocks();
        this.file.sync();
        for (const c of gone) this.file.punch(c * this.cs, this.cs);
      }
    } finally {
      this.flushing = false;
    }
  }

  flush(): void {
    if (this.readOnly) return;
    this.guard(() => this.flushMetadata());
    this.file.sync();
  }

  /** Writes what is held in memory back (before a VM snapshot, and at close). */
  writeBack(): void {
    if (!this.readOnly && this.broken === undefined) this.flush();
  }

  close(): void {
    try {
      this.writeBack();
    } catch (e) {
      process.stderr.write(`vireo: qcow2 image ${this.name}: metadata not written at close: ${(e as Error).message}\n`);
    }
    this.backing?.close?.();
  }
}
