/**
 * Fakes of the vsock host side (src/devices/virtio/vsock/host.ts) and of the I/O thread's poller, for
 * driving a vsock connection or the muxer alone, with no sockets and no guest memory.
 */
import type { Poller } from '../../src/devices/virtio/device.js';
import type { VsockHost, VsockListener, VsockStream, VsockTimer } from '../../src/devices/virtio/vsock/index.js';

let nextFd = 100;

/** A host stream socket: `incoming` is what the Unix peer sent; `sent` what the device wrote to it. */
export class FakeStream implements VsockStream {
  readonly fd = nextFd++;
  incoming = Buffer.alloc(0);
  /** The peer closed its write side: recv() reads end of stream once `incoming` is empty. */
  eof = false;
  sent = Buffer.alloc(0);
  /** Bytes the socket buffer takes per send() (-1 when full). */
  room = Number.POSITIVE_INFINITY;
  /** send() / recv() throw this (a reset or broken pipe). */
  fail: Error | undefined;
  connectErr = 0;
  writeShut = false;
  closed = false;

  recv(buf: Uint8Array, peek = false): number {
    if (this.fail) throw this.fail;
    if (this.incoming.length === 0) return this.eof ? 0 : -1;
    const n = Math.min(buf.length, this.incoming.length);
    buf.set(this.incoming.subarray(0, n));
    if (!peek) this.incoming = this.incoming.subarray(n);
    return n;
  }
  send(buf: Uint8Array): number {
    if (this.fail) throw this.fail;
    if (this.room <= 0) return -1;
    const n = Math.min(buf.length, this.room);
    this.room -= n;
    this.sent = Buffer.concat([this.sent, buf.subarray(0, n)]);
    return n;
  }
  shutdownWrite(): void {
    this.writeShut = true;
  }
  connectResult(): number {
    return this.connectErr;
  }
  close(): void {
    this.closed = true;
  }
}

export class FakeTimer implements VsockTimer {
  readonly fd = nextFd++;
  /** The last set() (0: disarmed). */
  ms = 0;
  closed = false;
  set(ms: number): void {
    this.ms = ms;
  }
  ack(): void {}
  close(): void {
    this.closed = true;
  }
}

export class FakeHost implements VsockHost {
  /** Streams the listener hands out, in order. */
  readonly waiting: FakeStream[] = [];
  readonly listener: VsockListener;
  /** Paths connect() was asked for. */
  readonly connects: string[] = [];
  /** What the next connect() does: a stream (connected at once or in progress), or an error thrown. */
  next: { stream: FakeStream; inProgress: boolean } | Error | undefined;
  readonly timers: FakeTimer[] = [];

  constructor() {
    const listenerFd = nextFd++;
    this.listener = { fd: listenerFd, accept: () => this.waiting.shift() };
  }
  connect(path: string): { stream: VsockStream; inProgress: boolean } {
    this.connects.push(path);
    const n = this.next ?? { stream: new FakeStream(), inProgress: false };
    this.next = undefined;
    if (n instanceof Error) throw n;
    return n;
  }
  createTimer(): VsockTimer {
    const t = new FakeTimer();
    this.timers.push(t);
    return t;
  }
}

/** A poller that records each fd's interest and lets a test fire readiness by hand. */
export class FakePoller implements Poller {
  readonly handlers = new Map<number, (events: number) => void>();
  readonly interest = new Map<number, number>();
  add(fd: number, events: number, handler: (events: number) => void): void {
    if (this.handlers.has(fd)) throw new Error(`fd ${fd} watched twice`);
    this.handlers.set(fd, handler);
    this.interest.set(fd, events);
  }
  modify(fd: number, events: number): void {
    if (!this.handlers.has(fd)) throw new Error(`fd ${fd} modified while not watched`);
    this.interest.set(fd, events);
  }
  remove(fd: number): void {
    this.handlers.delete(fd);
    this.interest.delete(fd);
  }
  fire(fd: number, events: number): void {
    const h = this.handlers.get(fd);
    if (h === undefined) throw new Error(`fd ${fd} is not watched`);
    h(events);
  }
}
