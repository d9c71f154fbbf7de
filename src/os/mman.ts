/** Native memory: mmap/munmap/madvise, zero-copy views of it, and iovecs over those views (readv/writev). */
import koffi from 'koffi';
import { SyscallError } from '../common/errors.js';
import { EAGAIN, errno, libc } from './libc.js';

const c_mmap = libc.func('mmap', 'uintptr_t', ['uintptr_t', 'size_t', 'int', 'int', 'int', 'int64_t']);
const c_munmap = libc.func('munmap', 'int', ['uintptr_t', 'size_t']);
const c_madvise = libc.func('madvise', 'int', ['uintptr_t', 'size_t', 'int']);
const c_readv = libc.func('readv', 'intptr_t', ['int', 'void *', 'int']);
const c_writev = libc.func('writev', 'intptr_t', ['int', 'void *', 'int']);

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MADV_DONTNEED = 4;
export const MADV_DONTFORK = 10;
export const MADV_MERGEABLE = 12;
const MAP_FAILED = 2 ** 64 - 1;

export function mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number {
  const p = c_mmap(addr, length, prot, flags, fd, offset) as number;
  if (p === MAP_FAILED || p === -1) throw new SyscallError('mmap', errno(), `${length} bytes`);
  return p;
}

export function munmap(addr: number, length: number): void {
  if ((c_munmap(addr, length) as number) < 0) throw new SyscallError('munmap', errno());
}

export function madvise(addr: number, length: number, advice: number): void {
  if ((c_madvise(addr, length, advice) as number) < 0) throw new SyscallError('madvise', errno());
}

/** The native address of each ArrayBuffer view() made (readv/writev point straight into them). */
const viewBases = new WeakMap<ArrayBufferLike, number>();

/** A zero-copy view of native memory at a raw address. Views are per thread. */
export function view(addr: number, length: number): ArrayBuffer {
  const buf = koffi.view(BigInt(addr), length);
  viewBases.set(buf, addr);
  return buf;
}

/** struct iovec { void *iov_base; size_t iov_len; } */
const IOVEC_SIZE = 16;

/**
 * A reusable struct iovec array over views of native memory made by view() (guest RAM): readv/writev
 * straight between a file and those bytes, with no Node wrapper and no allocation per call. Only
 * bytes a view covers can be named, so the kernel touches nothing the caller's views did not allow.
 */
export class IoVec {
  private readonly buf: Buffer;
  private readonly dv: DataView;
  /** Entries set. */
  count = 0;
  private lastBuffer: ArrayBufferLike | undefined;
  private lastBase = 0;

  constructor(readonly max: number) {
    this.buf = Buffer.alloc(IOVEC_SIZE * max);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  clear(): void {
    this.count = 0;
  }

  /** Adds a view; false (nothing added) when the vector is full or the view is not of memory view() made. */
  push(v: Uint8Array): boolean {
    if (this.count >= this.max) return false;
    let base: number | undefined;
    if (v.buffer === this.lastBuffer) base = this.lastBase;
    else {
      base = viewBases.get(v.buffer);
      if (base === undefined) return false;
      this.lastBuffer = v.buffer;
      this.lastBase = base;
    }
    const addr = base + v.byteOffset;
    const o = this.count * IOVEC_SIZE;
    this.dv.setUint32(o, addr >>> 0, true);
    this.dv.setUint32(o + 4, Math.floor(addr / 0x100000000), true);
    this.dv.setUint32(o + 8, v.byteLength, true);
    this.dv.setUint32(o + 12, 0, true);
    this.count++;
    return true;
  }

  /** readv(2) into the entries set; -1 for EAGAIN, SyscallError for other failures. */
  readv(fd: number): number {
    const n = c_readv(fd, this.buf, this.count) as number;
    if (n >= 0) return n;
    const e = errno();
    if (e === EAGAIN) return -1;
    throw new SyscallError('readv', e);
  }

  /** writev(2) from the entries set; -1 for EAGAIN, SyscallError for other failures. */
  writev(fd: number): number {
    const n = c_writev(fd, this.buf, this.count) as number;
    if (n >= 0) return n;
    const e = errno();
    if (e === EAGAIN) return -1;
    throw new SyscallError('writev', e);
  }
}
