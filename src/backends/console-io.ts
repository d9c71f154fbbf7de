/**
 * Console outputs that never hold their thread (the serial port's vCPU thread, the virtio-console's
 * I/O thread) and the host end of a virtio-console. The output fd may be blocking (the user's stdout)
 * or non-blocking (a file from openOutputFile): either way a full one is polled for, not spun on, and
 * a reader that stopped loses the output, counted, instead of stopping the guest and the VMM's stop.
 */
import { readSync } from 'node:fs';
import type { ByteSink } from '../devices/legacy/serial.js';
import type { ConsoleBackend } from '../devices/virtio/console.js';
import { waitWritable } from '../os/poll.js';
import { type WriteOutcome, writeOrDrop } from './output-file.js';

export { openOutputFile } from './output-file.js';

/**
 * writeOrDrop after a poll: the fd may be blocking (a user's stdout), whose write would then wait for
 * the reader in the kernel, where neither a stop nor a signal handler with SA_RESTART gets it back.
 */
function writeIfWritable(fd: number, bytes: Uint8Array, waitMs: number): WriteOutcome {
  if (!waitWritable(fd, waitMs)) return { kind: 'full', written: 0 };
  return writeOrDrop(fd, bytes);
}

/**
 * How long the serial port waits for a full output (a pipe or FIFO whose reader is behind) to take a
 * byte before it starts dropping: a slow reader loses nothing, one that stopped costs the guest this
 * once, not a spinning vCPU thread.
 */
export const OUTPUT_STALL_MS = 50;

/** Linux's PIPE_BUF: a write of at most this much to a pipe is atomic. */
const PIPE_BUF = 4096;

/**
 * The serial port's output: bytes to an fd (-1: discarded). A full output is waited for up to
 * OUTPUT_STALL_MS, in poll(2), not a spin; after that, bytes are dropped (counted by `onDrop`) until
 * the fd takes one again, so a reader that went away never holds the vCPU for more than one byte's try.
 */
export class FdSink implements ByteSink {
  private readonly one = Buffer.alloc(1);
  private stalled = false;
  constructor(
    private readonly fd: number,
    private readonly onDrop: () => void = () => undefined,
  ) {}

  write(byte: number): void {
    if (this.fd < 0) return;
    this.one[0] = byte;
    // poll returns at once when the fd takes the byte; it waits only for a full one, and not again
    // while the output stays stalled.
    const r = writeIfWritable(this.fd, this.one, this.stalled ? 0 : OUTPUT_STALL_MS);
    this.stalled = r.kind === 'full';
    // A closed terminal or a failing file drops the byte just as a full one does.
    if (r.kind !== 'written') this.onDrop();
  }
}

export interface ConsoleIoSpec {
  /** Where guest output goes (-1: discarded). */
  outFd: number;
  /** Where guest input comes from (-1: none); must be non-blocking. */
  inFd: number;
}

export class FdConsole implements ConsoleBackend {
  readonly inputFd: number;
  private readonly outFd: number;
  /** Guest output dropped because the output was full or failing (the I/O thread never waits on it). */
  droppedBytes = 0;

  constructor(spec: ConsoleIoSpec) {
    this.outFd = spec.outFd;
    this.inputFd = spec.inFd;
  }

  private stalled = false;

  write(bytes: Uint8Array): void {
    if (this.outFd < 0) return;
    // In pieces of PIPE_BUF: a blocking pipe that polls writable takes that much without waiting.
    for (let off = 0; off < bytes.length; ) {
      const piece = bytes.subarray(off, off + PIPE_BUF);
      const r = writeIfWritable(this.outFd, piece, this.stalled ? 0 : OUTPUT_STALL_MS);
      this.stalled = r.kind === 'full';
      if (r.kind === 'written') {
        off += piece.length;
        continue;
      }
      // The I/O thread serves every device and must not wait longer for this one's reader.
      this.droppedBytes += bytes.length - off - r.written;
      return;
    }
  }

  read(buf: Uint8Array): number {
    if (this.inputFd < 0) return -1;
    try {
      const n = readSync(this.inputFd, buf, 0, buf.length, null);
      return n === 0 ? -1 : n;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
      return -1;
    }
  }
}
