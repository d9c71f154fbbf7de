/**
 * Stand-ins for virtio-net's host side: a TAP that records what the device gives it and hands out
 * queued frames, and an epoll that calls handlers when told to. Shared by the net unit tests and the
 * fuzz targets (test/fuzz/).
 */
import { POLL_IN, type Poller } from '../../src/devices/virtio/device.js';
import { NET_OFFLOAD, type NetBackend } from '../../src/devices/virtio/net.js';

export const ALL_OFFLOADS = NET_OFFLOAD.CSUM | NET_OFFLOAD.TSO4 | NET_OFFLOAD.TSO6 | NET_OFFLOAD.ECN | NET_OFFLOAD.UFO;

export const errno = (code: string): Error => Object.assign(new Error(`${code} (fake)`), { code });

/** A TAP stand-in: frames for the guest wait in `inbox`; what the guest sends lands in `sent`. */
export class FakeTap implements NetBackend {
  readonly fd = 1000;
  inbox: Uint8Array[] = [];
  sent: Buffer[] = [];
  offloadCalls: number[] = [];
  reads = 0;
  readErrors = 0;
  writeErrors = 0;
  constructor(readonly offloads = ALL_OFFLOADS) {}
  read(all: readonly Uint8Array[], count: number): number | undefined {
    const bufs = all.slice(0, count);
    this.reads++;
    if (this.readErrors > 0) {
      this.readErrors--;
      throw errno('EIO');
    }
    const f = this.inbox.shift();
    if (f === undefined) return undefined;
    let off = 0;
    for (const b of bufs) {
      if (off >= f.length) break;
      const n = Math.min(b.length, f.length - off);
      b.set(f.subarray(off, off + n));
      off += n;
    }
    return f.length; // as the contract says: more than the buffers hold when it did not fit
  }
  write(all: readonly Uint8Array[], count: number): number {
    const bufs = all.slice(0, count);
    if (this.writeErrors > 0) {
      this.writeErrors--;
      throw errno('EIO');
    }
    const b = Buffer.concat(bufs);
    this.sent.push(b);
    return b.length;
  }
  setOffloads(flags: number): void {
    this.offloadCalls.push(flags);
  }
}

/** An epoll stand-in; like epoll it refuses to add an fd twice. */
export class FakePoller implements Poller {
  readonly handlers = new Map<number, (events: number) => void>();
  add(fd: number, _events: number, handler: (events: number) => void): void {
    if (this.handlers.has(fd)) throw errno('EEXIST');
    this.handlers.set(fd, handler);
  }
  modify(): void {}
  remove(fd: number): void {
    if (!this.handlers.delete(fd)) throw errno('ENOENT');
  }
  watching(fd: number): boolean {
    return this.handlers.has(fd);
  }
  fire(fd: number, events = POLL_IN): void {
    this.handlers.get(fd)?.(events);
  }
}
