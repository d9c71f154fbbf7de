/** The host end of a virtio-console: output to an fd, input from a non-blocking fd. */
import { readSync, writeSync } from 'node:fs';
import type { ConsoleBackend } from '../devices/virtio/console.js';

export interface ConsoleIoSpec {
  /** Where guest output goes (-1: discarded). */
  outFd: number;
  /** Where guest input comes from (-1: none); must be non-blocking. */
  inFd: number;
}

export class FdConsole implements ConsoleBackend {
  readonly inputFd: number;
  private readonly outFd: number;

  constructor(spec: ConsoleIoSpec) {
    this.outFd = spec.outFd;
    this.inputFd = spec.inFd;
  }

  write(bytes: Uint8Array): void {
    if (this.outFd < 0) return;
    let off = 0;
    while (off < bytes.length) {
      try {
        off += writeSync(this.outFd, bytes, off);
      } catch (e) {
        // A full non-blocking pipe: retry; anything else (a closed terminal) drops the output.
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') return;
      }
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
