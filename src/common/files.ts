/**
 * Opening and reading files a user names (kernels, initrds, snapshot files) without trusting what is
 * at the path. open(2) is O_NONBLOCK, so a FIFO with no writer cannot park the event loop in the
 * kernel; fstat on the open fd (not the path, which can change) refuses anything but a regular file
 * (/dev/zero, a FIFO, a directory, a socket) and anything larger than the caller's bound; a whole-file
 * read takes exactly the size fstat gave, so a file that grows meanwhile is not read past it and one
 * that shrinks is an error rather than a silently short image.
 */
import { constants as bufferConstants } from 'node:buffer';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import type { VireoError } from './errors.js';

/** What the file is, for messages ("kernel", "snapshot state file"), and how to fail. */
export interface UserFileSpec {
  what: string;
  /** The largest size accepted, in bytes. */
  maxBytes: number;
  /** What the bound is, for the message ("the guest's 128.0 MiB of memory"). */
  bound?: string | undefined;
  /** What to do, appended to every message ("give the snapshot_path a snapshot was written to"). */
  hint?: string | undefined;
  /** Builds the caller's typed error from a one-line message. */
  error: (message: string) => VireoError;
  /** Open for writing too (O_RDWR: a file updated in place); default read-only. */
  readWrite?: boolean | undefined;
}

export interface OpenedFile {
  fd: number;
  size: number;
}

const MiB = 1024 * 1024;
/** The largest Buffer Node allocates (4 GiB on Node 20). */
const MAX_LENGTH = bufferConstants.MAX_LENGTH;

/** "12.5 MiB", "4096 bytes": sizes in messages. */
export function formatSize(n: number): string {
  if (n < MiB) return `${n} bytes`;
  const m = n / MiB;
  return m >= 1024 ? `${(m / 1024).toFixed(1)} GiB` : `${m.toFixed(1)} MiB`;
}

/** What a path is when it is not a regular file, for messages ("kernel X is a FIFO, not a regular file"). */
export function kindOf(st: ReturnType<typeof fstatSync>): string {
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Opens `path` (read-only unless `spec.readWrite`) for a regular file of at most `spec.maxBytes`; the
 * caller owns the fd.
 * Every refusal is one line naming the path and saying what to give instead.
 */
export function openUserFile(path: string, spec: UserFileSpec): OpenedFile {
  const fail = (m: string): VireoError => spec.error(spec.hint ? `${m}; ${spec.hint}` : m);
  let fd: number;
  try {
    // (libuv adds O_CLOEXEC to every open: the fd does not leak into children.)
    fd = openSync(path, (spec.readWrite ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw fail(code === 'ENOENT' ? `${spec.what} ${path} does not exist` : `cannot open ${spec.what} ${path}: ${code}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile())
      throw fail(
        `${spec.what} ${path} is ${kindOf(st)}, not a regular file${spec.hint ? '' : ': give the path of a file'}`,
      );
    if (st.size > spec.maxBytes)
      throw fail(
        `${spec.what} ${path} is ${formatSize(st.size)}, larger than ${spec.bound ?? formatSize(spec.maxBytes)}${spec.hint ? '' : ': give a smaller file'}`,
      );
    return { fd, size: st.size };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** Reads the whole of a regular file of at most `spec.maxBytes` (see openUserFile). */
export function readUserFile(path: string, spec: UserFileSpec): Buffer {
  const fail = (m: string): VireoError => spec.error(spec.hint ? `${m}; ${spec.hint}` : m);
  const { fd, size } = openUserFile(path, spec);
  try {
    // A bound above what one Buffer holds (a guest of more than 4 GiB) must not reach allocUnsafe,
    // whose RangeError (or an allocation failure) would escape raw.
    if (size > MAX_LENGTH)
      throw fail(
        `${spec.what} ${path} is ${formatSize(size)}, more than vireo reads whole (${formatSize(MAX_LENGTH)})${spec.hint ? '' : ': give a smaller file'}`,
      );
    let out: Buffer;
    try {
      out = Buffer.allocUnsafe(size);
    } catch {
      throw fail(
        `cannot read ${spec.what} ${path}: no memory for its ${formatSize(size)}${spec.hint ? '' : ': free some or give a smaller file'}`,
      );
    }
    let at = 0;
    while (at < size) {
      let n: number;
      try {
        n = readSync(fd, out, at, size - at, at);
      } catch (e) {
        throw fail(`cannot read ${spec.what} ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      }
      if (n === 0)
        throw fail(
          `${spec.what} ${path} shrank while it was read (${at} of ${size} bytes): do not change it meanwhile`,
        );
      at += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}
