/**
 * A raw disk image file as a virtio-blk backend. Reads and writes go straight between the file and
 * guest memory (readv/writev on zero-copy views); discard and write-zeroes punch holes where the
 * host file system allows it.
 */
import { closeSync, constants, fdatasyncSync, fstatSync, openSync, readvSync, writevSync } from 'node:fs';
import { ConfigError } from '../common/errors.js';
import { kindOf } from '../common/files.js';
import type { BlockBackend } from '../devices/virtio/block.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { IoPool, poolThreadsAvailable } from './io-pool.js';

/** What the VMM opens in the main thread and posts to the I/O thread. */
export interface FileDiskSpec {
  fd: number;
  path: string;
  size: number;
  readOnly: boolean;
  /**
   * The format was probed, not given: writes that would put qcow2's magic at the start are refused
   * (EPERM), or the next open would read the guest's bytes as a qcow2 header naming any host file
   * as its backing file. QEMU guards probed raw images the same way.
   */
  probed?: boolean | undefined;
}

const QCOW2_MAGIC_BYTES = [0x51, 0x46, 0x49, 0xfb];

/** Whether a write at `position` would make the image start with qcow2's magic. */
export function writesQcow2Magic(bufs: readonly Uint8Array[], position: number): boolean {
  if (position !== 0) return false;
  let i = 0;
  for (const b of bufs)
    for (const x of b) {
      if (x !== QCOW2_MAGIC_BYTES[i]) return false;
      if (++i === 4) return true;
    }
  return false;
}

/** The error a refused write ends in (virtio-blk answers it with IOERR). */
export const probedWriteError = (path: string): Error =>
  Object.assign(new Error(`refused a write of qcow2's magic to the start of ${path} (a probed raw image)`), {
    code: 'EPERM',
  });

/** Opens an image for a drive; a clear ConfigError when it cannot be used. */
export function openFileDisk(path: string, readOnly: boolean): FileDiskSpec {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO given as an image must not block this thread (the API's) in open(2); it is
    // refused below. On a regular file the flag changes nothing.
    fd = openSync(path, (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EISDIR') throw new ConfigError(`drive image ${path} is not a regular file; give a raw image file`);
    const hint =
      code === 'ENOENT'
        ? 'create it first (e.g. truncate -s 1G disk.img, or `vireo rootfs`)'
        : code === 'EACCES' || code === 'EROFS'
          ? 'make it writable or attach it read-only'
          : 'check the path';
    throw new ConfigError(`cannot open drive image ${path}: ${code}; ${hint}`);
  }
  const st = fstatSync(fd);
  if (!st.isFile()) {
    closeSync(fd);
    throw new ConfigError(`drive image ${path} is ${kindOf(st)}, not a regular file; give a raw image file`);
  }
  if (st.size < 512) {
    closeSync(fd);
    throw new ConfigError(`drive image ${path} is smaller than one 512-byte sector`);
  }
  lockImage(fd, path, readOnly);
  return { fd, path, size: st.size, readOnly };
}

/**
 * Locks an image as QEMU does, so that two VMs never write one file system at once: a writable drive
 * holds an exclusive OFD lock, a read-only one a shared lock (any number of read-only users). The
 * lock lives as long as the fd (closed with the drive), also across threads, and a process that dies
 * drops it: a restore in a new process after the first one is gone finds the image free. Closes the
 * fd and throws ConfigError on a conflict.
 */
function lockImage(fd: number, path: string, readOnly: boolean): void {
  let held: sys.LockHolder | undefined;
  try {
    held = sys.lockFile(fd, readOnly ? 'shared' : 'exclusive');
  } catch (e) {
    // A file system without byte-range locks (some network ones): the image is used unlocked, as QEMU
    // does with locking=auto there.
    if (sys.locksUnsupported(e)) return;
    closeSync(fd);
    throw new ConfigError(`cannot lock drive image ${path}: ${(e as Error).message}; check the file system`);
  }
  if (held === undefined) return;
  closeSync(fd);
  throw new ConfigError(
    held === 'exclusive'
      ? `disk image ${path} is in use by another VM (locked for writing); stop that VM, or give this one its own copy of the image`
      : `disk image ${path} is in use by another VM (attached read-only there); attach it read-only here too, or stop that VM`,
  );
}

export class FileDisk implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canDiscard = true;
  readonly io: IoPool | undefined;
  private readonly fd: number;
  private readonly path: string;
  private readonly probed: boolean;

  /** With `pool`, reads, writes and flushes can also run on that many threads of their own. */
  constructor(spec: FileDiskSpec, pool?: { memory: readonly RegionDescriptor[]; threads: number }) {
    this.fd = spec.fd;
    this.path = spec.path;
    this.size = spec.size;
    this.readOnly = spec.readOnly;
    this.probed = spec.probed === true;
    const threads = pool ? poolThreadsAvailable(pool.threads) : 0;
    this.io = pool && threads > 0 ? new IoPool(spec.fd, pool.memory, threads, this.probed) : undefined;
  }

  /** Stops the threads; the file itself belongs to whoever opened it. */
  close(): void {
    this.io?.close();
  }

  readv(bufs: Uint8Array[], position: number): number {
    return readvFull(this.fd, bufs, position);
  }

  writev(bufs: Uint8Array[], position: number): number {
    if (this.probed && writesQcow2Magic(bufs, position)) throw probedWriteError(this.path);
    return writevFull(this.fd, bufs, position);
  }

  flush(): void {
    fdatasyncSync(this.fd);
  }

  discard(position: number, length: number): void {
    sys.fallocate(this.fd, sys.FALLOC_FL_PUNCH_HOLE | sys.FALLOC_FL_KEEP_SIZE, position, length);
  }

  writeZeroes(position: number, length: number, unmap: boolean): void {
    if (unmap) {
      this.discard(position, length);
      return;
    }
    try {
      sys.fallocate(this.fd, sys.FALLOC_FL_ZERO_RANGE | sys.FALLOC_FL_KEEP_SIZE, position, length);
    } catch {
      // Not every file system has ZERO_RANGE; a punched hole reads as zeroes too.
      this.discard(position, length);
    }
  }
}

/** preadv until every buffer is full or the file ends; returns the bytes read. */
export function readvFull(fd: number, bufs: Uint8Array[], position: number): number {
  let done = 0;
  let rest = bufs;
  while (rest.length > 0) {
    const n = readvSync(fd, rest, position + done);
    if (n === 0) break; // end of file: a short read, reported by the caller
    done += n;
    rest = advance(rest, n);
  }
  return done;
}

/** pwritev until every buffer is written (or nothing more can be); returns the bytes written. */
export function writevFull(fd: number, bufs: Uint8Array[], position: number): number {
  let done = 0;
  let rest = bufs;
  while (rest.length > 0) {
    const n = writevSync(fd, rest, position + done);
    if (n === 0) break;
    done += n;
    rest = advance(rest, n);
  }
  return done;
}

/** The buffers left after n bytes of them were transferred. */
function advance(bufs: Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  let left = n;
  while (i < bufs.length && left >= (bufs[i] as Uint8Array).length) {
    left -= (bufs[i] as Uint8Array).length;
    i++;
  }
  const rest = bufs.slice(i);
  if (left > 0 && rest.length > 0) rest[0] = (rest[0] as Uint8Array).subarray(left);
  return rest;
}
