/**
 * Guest physical memory: a set of host mappings, each bound to a guest-physical range.
 * Every accessor checks that the whole access lies inside one region before touching it:
 * a guest-supplied address can never reach host memory outside a mapping.
 * The mappings are process-wide, so every thread (every vCPU worker) sees the same bytes;
 * each thread builds its own views from the same `RegionDescriptor`s.
 */

import { closeSync, fstatSync } from 'node:fs';
import { hex } from '../common/address.js';
import { GuestMemoryError, VireoError } from '../common/errors.js';
import * as sys from '../os/sys.js';

export interface RegionDescriptor {
  /** Guest-physical start. */
  gpa: number;
  size: number;
  /** Host virtual address of the mapping. */
  hostAddr: number;
  /**
   * With dirty tracking: one byte per 4 KiB page, set to 1 by every write vireo itself makes
   * (devices on the I/O thread, the vCPU threads, the loaders). Shared by every thread's view;
   * KVM logs the guest's own writes separately (KVM_GET_DIRTY_LOG).
   */
  dirty?: SharedArrayBuffer | undefined;
  /** Mapped from a file (a restored VM's memory snapshot): where, for telling when it is lost. */
  file?: BackingFile | undefined;
}

/** The file behind a file-backed region. */
export interface BackingFile {
  /** An fd of the mapping's own (valid in every thread; it holds the file's shared lock). */
  fd: number;
  path: string;
  /** Where the region starts in the file. */
  offset: number;
}

/** How a VM whose memory file was truncated under it ends: one line, with what to do. */
export function memoryFileLostMessage(path: string): string {
  return `guest memory file ${path} was truncated or removed while the VM ran; the VM is stopped (its RAM is lost): a memory file must stay unchanged while a VM restored from it runs (vireo holds a shared lock on it); restore again from an intact copy`;
}

/**
 * The path of a file-backed region's file when it no longer covers the region (truncated while the
 * VM ran: the pages not yet copied are gone), else undefined. Any thread may ask.
 */
export function lostBackingFile(descriptors: readonly RegionDescriptor[]): string | undefined {
  for (const d of descriptors) {
    if (d.file === undefined) continue;
    try {
      if (fstatSync(d.file.fd).size < d.file.offset + d.size) return d.file.path;
    } catch {
      return d.file.path;
    }
  }
  return undefined;
}

export const PAGE_SIZE = 4096;

interface Region extends RegionDescriptor {
  end: number;
  /** Views onto the region, made on first access (empty until then). */
  bytes: Uint8Array;
  dv: DataView;
  viewed: boolean;
  dirtyMap: Uint8Array | undefined;
}

/** Marks the pages of [offset, offset+len) of a region's dirty map (len 0 counts as 1 byte). */
export function markDirty(map: Uint8Array | undefined, offset: number, len: number): void {
  if (map === undefined) return;
  const first = Math.floor(offset / PAGE_SIZE);
  const last = Math.floor((offset + (len > 0 ? len - 1 : 0)) / PAGE_SIZE);
  if (first === last) map[first] = 1;
  else map.fill(1, first, last + 1);
}

const NO_BYTES = new Uint8Array(0);
const NO_DV = new DataView(new ArrayBuffer(0));

export class GuestMemory {
  private readonly regions: Region[];
  private last: Region | undefined;

  /** Views onto existing mappings; does not own them. */
  constructor(descriptors: readonly RegionDescriptor[]) {
    const sorted = [...descriptors].sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1] as RegionDescriptor;
      const cur = sorted[i] as RegionDescriptor;
      if (prev.gpa + prev.size > cur.gpa)
        throw new VireoError('VIREO_ERR_MEMORY_LAYOUT', `guest memory regions overlap at ${hex(cur.gpa)}`);
    }
    // Views are made lazily: each is an external buffer the size of the region, and V8 counts
    // those towards garbage-collection pressure; a thread that never touches memory (a vCPU
    // thread without virtio devices) never pays for them, and start-up does not either.
    this.regions = sorted.map((d) => ({
      gpa: d.gpa,
      size: d.size,
      hostAddr: d.hostAddr,
      dirty: d.dirty,
      end: d.gpa + d.size,
      bytes: NO_BYTES,
      dv: NO_DV,
      viewed: false,
      dirtyMap: d.dirty ? new Uint8Array(d.dirty) : undefined,
    }));
  }

  get descriptors(): RegionDescriptor[] {
    return this.regions.map(({ gpa, size, hostAddr, dirty }) => ({ gpa, size, hostAddr, dirty }));
  }

  /** Whether vireo's own writes are being tracked (the VM tracks dirty pages). */
  get tracksDirty(): boolean {
    return this.regions.some((r) => r.dirtyMap !== undefined);
  }

  /** Total bytes of guest RAM. */
  get size(): number {
    return this.regions.reduce((s, r) => s + r.size, 0);
  }

  /** The highest guest-physical address of RAM, plus one. */
  get end(): number {
    return this.regions.reduce((m, r) => Math.max(m, r.end), 0);
  }

  /** The region holding [gpa, gpa+len), or undefined. len 0 is checked as len 1. */
  private find(gpa: number, len: number): Region | undefined {
    // Validate before the cached-region fast path: a fractional or negative gpa/len must never match it.
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(len) || len < 0) return undefined;
    const l = this.last;
    const end = gpa + (len > 0 ? len : 1);
    if (l !== undefined && gpa >= l.gpa && end <= l.end) return l;
    for (const r of this.regions) {
      if (gpa >= r.gpa && end <= r.end) {
        if (!r.viewed) {
          const buf = sys.view(r.hostAddr, r.size);
          r.bytes = new Uint8Array(buf);
          r.dv = new DataView(buf);
          r.viewed = true;
        }
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  private region(gpa: number, len: number): Region {
    const r = this.find(gpa, len);
    if (r === undefined)
      throw new GuestMemoryError(`guest access of ${len} bytes at ${hex(gpa)} is outside guest memory`);
    return r;
  }

  /** Throws GuestMemoryError unless [gpa, gpa+len) lies wholly in one region of guest RAM. */
  check(gpa: number, len: number): void {
    this.region(gpa, len);
  }

  /** True when [gpa, gpa+len) lies wholly in guest RAM. */
  isValid(gpa: number, len: number): boolean {
    return this.find(gpa, len) !== undefined;
  }

  read8(gpa: number): number {
    const r = this.region(gpa, 1);
    return r.bytes[gpa - r.gpa] as number;
  }
  read16(gpa: number): number {
    const r = this.region(gpa, 2);
    return r.dv.getUint16(gpa - r.gpa, true);
  }
  read32(gpa: number): number {
    const r = this.region(gpa, 4);
    return r.dv.getUint32(gpa - r.gpa, true);
  }
  read64(gpa: number): bigint {
    const r = this.region(gpa, 8);
    return r.dv.getBigUint64(gpa - r.gpa, true);
  }
  write8(gpa: number, v: number): void {
    const r = this.region(gpa, 1);
    r.bytes[gpa - r.gpa] = v;
    if (r.dirtyMap !== undefined) markDirty(r.dirtyMap, gpa - r.gpa, 1);
  }
  write16(gpa: number, v: number): void {
    const r = this.region(gpa, 2);
    r.dv.setUint16(gpa - r.gpa, v, true);
    if (r.dirtyMap !== undefined) markDirty(r.dirtyMap, gpa - r.gpa, 2);
  }
  write32(gpa: number, v: number): void {
    const r = this.region(gpa, 4);
    r.dv.setUint32(gpa - r.gpa, v >>> 0, true);
    if (r.dirtyMap !== undefined) markDirty(r.dirtyMap, gpa - r.gpa, 4);
  }
  write64(gpa: number, v: bigint): void {
    const r = this.region(gpa, 8);
    r.dv.setBigUint64(gpa - r.gpa, BigInt.asUintN(64, v), true);
    if (r.dirtyMap !== undefined) markDirty(r.dirtyMap, gpa - r.gpa, 8);
  }

  /**
   * A zero-copy, writable view of [gpa, gpa+len), which must lie in one region. With dirty tracking
   * its pages count as written; a view only read from is `readView`.
   */
  slice(gpa: number, len: number): Uint8Array {
    const r = this.region(gpa, len);
    const o = gpa - r.gpa;
    if (r.dirtyMap !== undefined) markDirty(r.dirtyMap, o, len);
    return r.bytes.subarray(o, o + len);
  }

  /**
   * With dirty tracking, marks [gpa, gpa+len) as written: for views made earlier and written to
   * later (rx buffers a device holds until a frame arrives), whose pages a snapshot in between
   * would otherwise have cleared. A range outside guest memory is ignored.
   */
  markWritten(gpa: number, len: number): void {
    const r = this.find(gpa, len);
    if (r?.dirtyMap !== undefined) markDirty(r.dirtyMap, gpa - r.gpa, len);
  }

  /** A zero-copy view of [gpa, gpa+len) for reading only: its pages are not marked dirty. */
  readView(gpa: number, len: number): Uint8Array {
    const r = this.region(gpa, len);
    const o = gpa - r.gpa;
    return r.bytes.subarray(o, o + len);
  }

  /**
   * Pages written since the last call, by the guest (KVM's log for a region, `kvmLog(region)`, one bit
   * per page as KVM_GET_DIRTY_LOG returns it) or by vireo; both logs are cleared. Per region (in
   * `descriptors` order), a byte per page.
   */
  takeDirty(kvmLog: (region: RegionDescriptor) => Uint8Array): Uint8Array[] {
    return this.regions.map((r) => {
      const pages = r.size / PAGE_SIZE;
      const out = new Uint8Array(pages);
      const bits = kvmLog(r);
      if (bits.length * 8 < pages) throw new RangeError(`dirty log of ${bits.length} bytes for ${pages} pages`);
      for (let p = 0; p < pages; p++) if (((bits[p >>> 3] as number) >>> (p & 7)) & 1) out[p] = 1;
      if (r.dirtyMap !== undefined) {
        for (let p = 0; p < pages; p++) if (r.dirtyMap[p] !== 0) out[p] = 1;
        r.dirtyMap.fill(0);
      }
      return out;
    });
  }

  /** Marks again pages taken by takeDirty (a snapshot that failed must not lose them). */
  restoreDirty(pages: readonly Uint8Array[]): void {
    this.regions.forEach((r, i) => {
      const p = pages[i];
      if (r.dirtyMap === undefined || p === undefined) return;
      for (let j = 0; j < p.length; j++) if (p[j] !== 0) r.dirtyMap[j] = 1;
    });
  }

  /** Copy bytes out of guest memory. */
  read(gpa: number, len: number): Buffer {
    return Buffer.from(this.readView(gpa, len));
  }

  /** Copy bytes into guest memory. */
  write(gpa: number, data: Uint8Array): void {
    this.slice(gpa, data.length).set(data);
  }

  fill(gpa: number, len: number, value = 0): void {
    this.slice(gpa, len).fill(value);
  }

  /** A NUL-terminated string of at most max bytes. */
  readCString(gpa: number, max = 4096): string {
    const out: number[] = [];
    for (let i = 0; i < max; i++) {
      const c = this.read8(gpa + i);
      if (c === 0) break;
      out.push(c);
    }
    return Buffer.from(out).toString('latin1');
  }
}

/** A shared lock on a memory file; a file system without OFD locks goes unlocked (as drive images do). */
function lockShared(fd: number): sys.LockHolder | undefined {
  try {
    return sys.lockFile(fd, 'shared');
  } catch (e) {
    if (sys.locksUnsupported(e)) return undefined;
    throw e;
  }
}

/** Anonymous host mappings that back guest RAM; the owner of the memory, in the main thread. */
export class GuestMemoryMapping {
  readonly descriptors: RegionDescriptor[];
  private released = false;

  private constructor(descriptors: RegionDescriptor[]) {
    this.descriptors = descriptors;
  }

  /** Map anonymous memory for each [gpa, size] range. Pages are committed lazily by the host. */
  static allocate(ranges: readonly { gpa: number; size: number }[]): GuestMemoryMapping {
    const out: RegionDescriptor[] = [];
    try {
      for (const { gpa, size } of ranges) {
        if (size <= 0 || size % 4096 !== 0 || gpa % 4096 !== 0)
          throw new VireoError('VIREO_ERR_MEMORY_LAYOUT', `memory region ${hex(gpa)}+${hex(size)} is not page aligned`);
        const hostAddr = sys.mmap(
          0,
          size,
          sys.PROT_READ | sys.PROT_WRITE,
          sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE,
          -1,
          0,
        );
        out.push({ gpa, size, hostAddr });
      }
    } catch (e) {
      for (const d of out) sys.munmap(d.hostAddr, d.size);
      throw e;
    }
    return new GuestMemoryMapping(out);
  }

  /**
   * Guest RAM backed by a memory snapshot file, mapped MAP_PRIVATE: pages are read from the file on
   * first touch and copied on first write, so the cost of mapping does not grow with the guest's
   * size and the file is never modified. Region i starts at `offsets[i]` in the file.
   *
   * The pages not yet copied stay the file's: the file must not change while the VM runs. The mapping
   * holds a shared OFD lock on it (on an fd of its own, until release()) so that a writer that asks
   * (vireo's own, or `lslocks`) sees it in use; and it guards the regions against SIGBUS, which is
   * what an access gets once the file is truncated (see lost()).
   */
  static mapFile(
    fd: number,
    ranges: readonly { gpa: number; size: number; offset: number }[],
    path: string,
  ): GuestMemoryMapping {
    const out: RegionDescriptor[] = [];
    const own = sys.dupFd(fd);
    const guards: number[] = [];
    try {
      if (lockShared(own) !== undefined)
        throw new VireoError(
          'VIREO_ERR_SNAPSHOT',
          `memory file ${path} is being written (another process holds it locked for writing): wait for that to finish, then restore`,
        );
      for (const { gpa, size, offset } of ranges) {
        if (size <= 0 || size % 4096 !== 0 || gpa % 4096 !== 0 || offset % 4096 !== 0)
          throw new VireoError('VIREO_ERR_MEMORY_LAYOUT', `memory region ${hex(gpa)}+${hex(size)} is not page aligned`);
        const hostAddr = sys.mmap(
          0,
          size,
          sys.PROT_READ | sys.PROT_WRITE,
          sys.MAP_PRIVATE | sys.MAP_NORESERVE,
          fd,
          offset,
        );
        out.push({ gpa, size, hostAddr, file: { fd: own, path, offset } });
        guards.push(sys.guardMemory(hostAddr, size));
      }
    } catch (e) {
      for (const g of guards) sys.unguardMemory(g);
      for (const d of out) sys.munmap(d.hostAddr, d.size);
      closeSync(own);
      throw e;
    }
    const m = new GuestMemoryMapping(out);
    m.file = { fd: own, path, guards };
    return m;
  }

  private file: { fd: number; path: string; guards: number[] } | undefined;
  private watch: NodeJS.Timeout | undefined;

  /**
   * The memory file's path when guest RAM mapped from it was lost while the VM ran: an access got
   * SIGBUS (answered with a zero page by the guard), or the file is now shorter than the mapping.
   * Undefined for anonymous memory and for a file that is intact.
   */
  lost(): string | undefined {
    const f = this.file;
    if (f === undefined || this.released) return undefined;
    if (f.guards.some((g) => sys.guardFaults(g) > 0)) return f.path;
    return lostBackingFile(this.descriptors);
  }

  /**
   * Calls `onLost(path)` once, soon after the VMM's own access to file-backed RAM met a truncated
   * file (the guard counts those; polling the counters costs one native call per region a tick).
   * Nothing to watch for anonymous memory. Stops at release().
   */
  watchLoss(onLost: (path: string) => void, everyMs = 100): void {
    const f = this.file;
    if (f === undefined || this.watch !== undefined) return;
    this.watch = setInterval(() => {
      if (this.released || !f.guards.some((g) => sys.guardFaults(g) > 0)) return;
      clearInterval(this.watch);
      onLost(f.path);
    }, everyMs);
    this.watch.unref();
  }

  /**
   * Gives every region a shared dirty map (see RegionDescriptor.dirty); call before any GuestMemory
   * is built over these descriptors.
   */
  trackDirty(): void {
    for (const d of this.descriptors) d.dirty ??= new SharedArrayBuffer(d.size / PAGE_SIZE);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    clearInterval(this.watch);
    for (const g of this.file?.guards ?? []) sys.unguardMemory(g);
    for (const d of this.descriptors) sys.munmap(d.hostAddr, d.size);
    // Closing the last fd of the open file drops its lock.
    if (this.file) closeSync(this.file.fd);
  }
}
