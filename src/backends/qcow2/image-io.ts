/**
 * The file under a qcow2 image, and the layers below one (its backing chain). The qcow2 code reaches
 * its file only through ImageIo, so the fuzz target and the property tests can run it over memory
 * and audit every access against the file's end.
 */
import { fdatasyncSync } from 'node:fs';
import * as sys from '../../os/sys.js';
import { readvFull, writevFull } from '../file-disk.js';

export interface ImageIo {
  /** The file's size in bytes (it grows as writes extend it). */
  size(): number;
  /** Reads at `position` until the buffers are full or the file ends; returns the bytes read. */
  readv(bufs: Uint8Array[], position: number): number;
  /** Writes every buffer at `position`; returns the bytes written. */
  writev(bufs: Uint8Array[], position: number): number;
  /** Makes what was written durable (fdatasync). */
  sync(): void;
  /** Gives the host space of a range back (a hole); may do nothing. */
  punch(position: number, length: number): void;
}

/** An image file open on `fd` (owned by whoever opened it), `size` bytes at open. */
export class FdImageIo implements ImageIo {
  private end: number;
  constructor(
    private readonly fd: number,
    size: number,
  ) {
    this.end = size;
  }
  size(): number {
    return this.end;
  }
  readv(bufs: Uint8Array[], position: number): number {
    return readvFull(this.fd, bufs, position);
  }
  writev(bufs: Uint8Array[], position: number): number {
    const n = writevFull(this.fd, bufs, position);
    this.end = Math.max(this.end, position + n);
    return n;
  }
  sync(): void {
    fdatasyncSync(this.fd);
  }
  punch(position: number, length: number): void {
    try {
      sys.fallocate(this.fd, sys.FALLOC_FL_PUNCH_HOLE | sys.FALLOC_FL_KEEP_SIZE, position, length);
    } catch {
      // A file system without holes keeps the space; the cluster is free in the image all the same.
    }
  }
}

/** A layer a qcow2 image reads unallocated clusters from: its backing file. */
export interface DiskLayer {
  /** The layer's virtual size: reads past it are zeroes. */
  readonly size: number;
  /** Fills the buffers from `position` (past the layer's size, or its file's end, with zeroes). */
  readInto(bufs: Uint8Array[], position: number): void;
  close?(): void;
}

/** A raw image as a backing layer. */
export class RawLayer implements DiskLayer {
  constructor(
    private readonly io: ImageIo,
    readonly size: number,
  ) {}
  readInto(bufs: Uint8Array[], position: number): void {
    readClamped(this.io, bufs, position);
  }
}

/** Fills the buffers from `position`, reading nothing past the file's end (zeroes there). */
export function readClamped(io: ImageIo, bufs: Uint8Array[], position: number): void {
  let total = 0;
  for (const b of bufs) total += b.length;
  const avail = Math.max(0, Math.min(total, io.size() - position));
  const n = avail > 0 ? io.readv(avail === total ? bufs : sliceViews(bufs, 0, avail), position) : 0;
  zeroAfter(bufs, n);
}

/** Zeroes the buffers after their first n bytes. */
export function zeroAfter(bufs: Uint8Array[], n: number): void {
  let skip = n;
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    b.fill(0, skip);
    skip = 0;
  }
}

/** The bytes [from, from + len) of a list of buffers, as views (no copy). */
export function sliceViews(bufs: readonly Uint8Array[], from: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = from;
  let left = len;
  for (const b of bufs) {
    if (left === 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, left);
    out.push(b.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}

/** Copies `src` into the views (as many bytes as they hold). */
export function copyInto(views: readonly Uint8Array[], src: Uint8Array): void {
  let off = 0;
  for (const v of views) {
    v.set(src.subarray(off, off + v.length));
    off += v.length;
  }
}

/** Copies the views' bytes into `dst` at `at`. */
export function copyFrom(views: readonly Uint8Array[], dst: Uint8Array, at: number): void {
  let off = at;
  for (const v of views) {
    dst.set(v, off);
    off += v.length;
  }
}
