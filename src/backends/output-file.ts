/**
 * Output files for logs, metrics and consoles, opened and written so that they never block the thread
 * that writes: the API's event loop writes the log and the metrics, a vCPU thread the serial port,
 * the I/O thread the virtio-console. A path the user gives may name a FIFO, a device (/dev/full,
 * /dev/stdout) or a regular file; Firecracker allows any path it can open, and so does vireo. Outputs
 * are opened as Firecracker opens them, non-blocking, and a write that would block is dropped and
 * counted instead of retried. (Plain node:fs: the API loads this without KVM's FFI.)
 */
import { constants, openSync, writeSync } from 'node:fs';

/**
 * Opens `path` for output without blocking: appended to (logs, metrics) or truncated (a console),
 * created when missing. Truncated outputs are written in append mode too: the serial port and the
 * virtio-console may name the same file (`vireo run` gives the console the serial's path), each with
 * its own fd, and with an offset each they would overwrite each other's output. A FIFO nobody reads yet is opened O_RDWR (Firecracker's open_file_nonblock):
 * write-only would fail with ENXIO, and a blocking open would wait for a reader forever. Throws the
 * open's error (its `code` says why).
 */
export function openOutputFile(path: string, how: 'append' | 'truncate'): number {
  const base =
    constants.O_CREAT | constants.O_NONBLOCK | constants.O_APPEND | (how === 'truncate' ? constants.O_TRUNC : 0);
  try {
    return openSync(path, base | constants.O_WRONLY, 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw e;
    return openSync(path, base | constants.O_RDWR, 0o644);
  }
}

/** What became of a write: all of it written, dropped because the reader is behind, or failed. */
export type WriteOutcome =
  | { kind: 'written' }
  | { kind: 'full'; written: number }
  | { kind: 'failed'; written: number; code: string };

/**
 * Writes `bytes` to a non-blocking fd without waiting: a reader that is behind (EAGAIN) gets
 * nothing more of them ('full', the caller counts the loss); any other error (ENOSPC, EIO, EBADF,
 * EPIPE) is returned, never thrown.
 */
export function writeOrDrop(fd: number, bytes: Uint8Array): WriteOutcome {
  let off = 0;
  while (off < bytes.length) {
    try {
      const n = writeSync(fd, bytes, off);
      if (n <= 0) return { kind: 'failed', written: off, code: 'EIO' };
      off += n;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
      if (code === 'EINTR') continue;
      return code === 'EAGAIN' ? { kind: 'full', written: off } : { kind: 'failed', written: off, code };
    }
  }
  return { kind: 'written' };
}
