/**
 * passt as a virtio-net backend, the I/O thread's half (the process is the main thread's:
 * passt-process.ts). passt listens on a Unix socket in a private directory and speaks its "qemu"
 * protocol (passt-frames.ts): Ethernet frames with a 4-byte big-endian length, no virtio header.
 *
 * The device watches one fd that never changes: an epoll set (made by the main thread) holding the
 * current connection and an eventfd that is set while whole frames wait in the receive buffer (one
 * recv brings many; the device may stop reading before it took them all). The connection comes and
 * goes: the supervisor publishes each passt it started as a generation in shared memory and wakes the
 * I/O thread; refresh() connects to that generation's socket. Anything wrong on the stream (end,
 * error, a length out of range) drops the connection and reports it (LOST) for the supervisor to
 * restart passt; meanwhile the link is down and frames from the guest are dropped.
 */
import { join } from 'node:path';
import { SyscallError } from '../common/errors.js';
import { type NetBackend, VIRTIO_NET_HDR_LEN } from '../devices/virtio/net.js';
import * as sys from '../os/sys.js';
import { EgressChannelFilter } from './egress-channel.js';
import { ETH_HEADER_LEN, FrameReader, OutBuffer, PASST_MAX_FRAME } from './passt-frames.js';
import { ForwardHandshake } from './passt-handshake.js';

/** Frames of vireo's own waiting for the guest at most (ACKs of forwarded handshakes). */
const MAX_OWN_FRAMES = 64;

/** Tokens in the epoll set: pendingFd's (the supervisor added it) and the connection's. */
const PENDING_TOKEN = 0;
const SOCK_TOKEN = 1;

/** How much of a frame the egress policy reads: every header it looks at is within it. */
const EGRESS_HEAD_BYTES = 512;

/** What the VMM makes in the main thread and posts to the I/O thread (plain data). */
export interface PasstSpec {
  /** The interface's id, for messages. */
  id: string;
  /** The private directory holding passt's sockets (passtSocketPath). */
  dir: string;
  /** The epoll set the device watches (the connection and pendingFd are put in it). */
  epollFd: number;
  /** An eventfd in that set: readable while whole frames wait in the receive buffer. */
  pendingFd: number;
  /** Int32 slots (PASST_STATE) shared by the supervisor and the I/O thread. */
  state: SharedArrayBuffer;
  /** The egress rules and drop counters (egress.ts's channel), written by the VMM. */
  egress: SharedArrayBuffer;
}

/** Slots of PasstSpec.state. */
export const PASST_STATE = {
  /** Written by the supervisor: the generation of the passt now listening (0: none). */
  READY: 0,
  /** Written by the I/O thread: the generation it is connected to (0: none). */
  CONNECTED: 1,
  /** Written by the I/O thread: the generation whose connection failed or ended. */
  LOST: 2,
  /** Written by the I/O thread: why (PASST_LOST). */
  LOST_REASON: 3,
  /** Written by the I/O thread: the connection's fd (-1: none), for the VMM to close if the thread died. */
  FD: 4,
} as const;
export const PASST_STATE_SLOTS = 5;

/** Why a connection was lost. */
export const PASST_LOST = { CONNECT: 1, CLOSED: 2, ERROR: 3, BAD_FRAME: 4 } as const;

/** The socket of passt generation `gen` in `dir`. */
export const passtSocketPath = (dir: string, gen: number): string => join(dir, `passt-${gen}.sock`);

/** Copies `header` then `frame` across bufs[0..count); returns how many bytes it wrote. */
function scatter(bufs: readonly Uint8Array[], count: number, header: Uint8Array, frame: Uint8Array): number {
  let src: Uint8Array = header;
  let so = 0;
  let total = 0;
  for (let i = 0; i < count; i++) {
    const b = bufs[i] as Uint8Array;
    let bo = 0;
    while (bo < b.length) {
      if (so === src.length) {
        if (src === frame) return total;
        src = frame;
        so = 0;
        if (src.length === 0) return total;
      }
      const n = Math.min(b.length - bo, src.length - so);
      b.set(src.subarray(so, so + n), bo);
      bo += n;
      so += n;
      total += n;
    }
  }
  return total;
}

export class PasstNet implements NetBackend {
  /** The epoll set: stable for the device's life, whatever the connection does. */
  readonly fd: number;
  /** Nothing towards the guest is offloaded: passt sends whole, checksummed frames. */
  readonly offloads = 0;
  /** Nothing from the guest either (as QEMU with passt: no vnet header on the stream). */
  readonly hostOffloads = 0;
  private readonly st: Int32Array;
  private ep: sys.Epoll | undefined;
  private sock = -1;
  /** The generation last connected to (or tried). */
  private gen = 0;
  private reader: FrameReader | undefined;
  private out: OutBuffer | undefined;
  /** The socket is watched for room too (frames wait in `out` that it did not take). */
  private wantOut = false;
  /** The device wants frames (it has the guest's buffers): the socket and pendingFd are watched for input. */
  private rxOn = true;
  private pendingSet = false;
  private readonly header = new Uint8Array(VIRTIO_NET_HDR_LEN);
  /** The guest's buffers of the frame being sent, less the virtio header (reused). */
  private readonly parts: Uint8Array[] = [];
  private closed = false;
  private readonly egress: EgressChannelFilter;
  /** Completes the handshakes of forwarded connections that passt leaves half done (passt-handshake.ts). */
  private readonly handshake = new ForwardHandshake();
  /** Frames vireo itself gives the guest (those ACKs), served before the socket's. */
  private readonly toGuest: Uint8Array[] = [];
  /** A frame's first bytes, gathered when the guest split its headers across buffers. */
  private readonly head = new Uint8Array(EGRESS_HEAD_BYTES);

  /** No side effects: the main thread builds one for the device's features. */
  constructor(private readonly spec: PasstSpec) {
    this.fd = spec.epollFd;
    this.st = new Int32Array(spec.state);
    this.egress = new EgressChannelFilter(spec.egress);
  }

  linkUp(): boolean {
    return this.sock >= 0;
  }

  /** Connects to the generation the supervisor published, when it is not the one already tried. */
  refresh(): void {
    if (this.closed) return;
    const want = Atomics.load(this.st, PASST_STATE.READY);
    if (want === this.gen) return;
    this.drop(0);
    this.gen = want;
    if (want === 0) return;
    const fd = sys.unixSocket();
    try {
      sys.connectUnix(fd, passtSocketPath(this.spec.dir, want));
    } catch {
      sys.close(fd);
      this.report(PASST_LOST.CONNECT);
      return;
    }
    this.ep ??= new sys.Epoll(2, this.spec.epollFd);
    this.ep.add(fd, this.rxOn ? sys.EPOLLIN : 0, SOCK_TOKEN);
    this.sock = fd;
    this.reader ??= new FrameReader();
    this.out ??= new OutBuffer();
    this.wantOut = false;
    this.reader.reset();
    this.out.clear();
    Atomics.store(this.st, PASST_STATE.FD, fd);
    Atomics.store(this.st, PASST_STATE.CONNECTED, want);
  }

  read(bufs: readonly Uint8Array[], count: number): number | undefined {
    const reader = this.reader;
    if (this.sock < 0 || reader === undefined) return undefined;
    try {
      // The socket may have woken the device for room rather than for frames.
      if (this.wantOut) this.send();
      if (this.sock < 0) return undefined;
      const own = this.toGuest.shift();
      if (own !== undefined) {
        scatter(bufs, count, this.header, own);
        this.setPending(this.toGuest.length > 0 || reader.hasFrame());
        return VIRTIO_NET_HDR_LEN + own.length;
      }
      for (;;) {
        const f = reader.next();
        if (f !== undefined) {
          const n = VIRTIO_NET_HDR_LEN + f.length;
          this.egress.observeIn(f);
          this.handshake.fromPasst(f);
          scatter(bufs, count, this.header, f);
          this.setPending(reader.hasFrame());
          return n;
        }
        const got = sys.recv(this.sock, reader.space());
        if (got < 0) {
          this.setPending(false);
          return undefined;
        }
        if (got === 0) {
          this.drop(PASST_LOST.CLOSED);
          return undefined;
        }
        reader.commit(got);
      }
    } catch (e) {
      this.drop(e instanceof SyscallError ? PASST_LOST.ERROR : PASST_LOST.BAD_FRAME);
      return undefined;
    }
  }

  /**
   * Takes one frame into the send buffer (the virtio header left behind); flush() sends. With no room
   * for it (the socket full and the buffer too) it takes nothing and answers 0: the device keeps the
   * frame in the guest's ring and offers it again when the socket has room (the fd wakes it), so a
   * fast sender is held back rather than losing frames, as QEMU's stream netdev holds its queue.
   * Dropping instead (a full TAP's way) starves TCP at passt's 65520-byte MTU: a window is a few
   * frames, one lost is a retransmission timeout.
   */
  write(bufs: readonly Uint8Array[], count: number): number {
    const out = this.out;
    if (this.sock < 0 || out === undefined) throw new SyscallError('send(passt)', sys.ENOTCONN);
    let total = 0;
    for (let i = 0; i < count; i++) total += (bufs[i] as Uint8Array).length;
    const len = total - VIRTIO_NET_HDR_LEN;
    if (len < ETH_HEADER_LEN || len > PASST_MAX_FRAME)
      throw new RangeError(`a ${len}-byte frame: passt takes ${ETH_HEADER_LEN}-${PASST_MAX_FRAME}`);
    if (!out.fits(len)) {
      this.send();
      if (this.sock < 0) throw new SyscallError('send(passt)', sys.ENOTCONN);
      if (!out.fits(len)) return 0;
    }
    const parts = this.parts;
    parts.length = 0;
    let skip = VIRTIO_NET_HDR_LEN;
    for (let i = 0; i < count; i++) {
      const b = bufs[i] as Uint8Array;
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      parts.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    // The egress policy sees the headers before passt does; a refused frame is dropped here.
    const head = this.headers(parts, len);
    if (!this.egress.allowOut(head)) return total;
    const ack = this.handshake.fromGuest(head);
    out.append(parts, len);
    if (ack !== undefined && this.toGuest.length < MAX_OWN_FRAMES) {
      this.toGuest.push(ack);
      this.setPending(true);
    }
    return total;
  }

  /** The frame's first bytes in one piece (the first buffer itself when it holds them). */
  private headers(parts: readonly Uint8Array[], len: number): Uint8Array {
    const want = Math.min(len, EGRESS_HEAD_BYTES);
    const first = parts[0];
    if (first !== undefined && first.length >= want) return first;
    let at = 0;
    for (const p of parts) {
      if (at >= want) break;
      const n = Math.min(p.length, want - at);
      this.head.set(p.subarray(0, n), at);
      at += n;
    }
    return this.head.subarray(0, at);
  }

  /** Sends the frames written since the last flush (the device calls it after each batch). */
  flush(): void {
    if (this.out !== undefined && !this.out.empty) this.send();
  }

  /**
   * Sends what waits; what a full socket does not take waits for room, which the socket then reports
   * through the device's fd (EPOLLOUT), so it goes out without waiting for the guest's next frame.
   */
  private send(): void {
    const out = this.out;
    const sock = this.sock;
    if (out === undefined || sock < 0) return;
    let done: boolean;
    try {
      done = out.flush((b) => sys.send(sock, b));
    } catch {
      this.drop(PASST_LOST.ERROR);
      return;
    }
    if (done === !this.wantOut) return;
    this.wantOut = !done;
    this.watchSock();
  }

  /** The socket's interest: input while the device wants frames, room while frames wait to go out. */
  private watchSock(): void {
    if (this.sock >= 0)
      this.ep?.modify(this.sock, (this.rxOn ? sys.EPOLLIN : 0) | (this.wantOut ? sys.EPOLLOUT : 0), SOCK_TOKEN);
  }

  /** Frames wait for room in the socket (the fd wakes the device when it has some). */
  sending(): boolean {
    return this.wantOut;
  }

  /**
   * Whether the device wants frames. While it does not (the guest gave no buffers), neither the
   * socket's input nor pendingFd wakes it, so the fd wakes only for room to send or the socket's end.
   */
  wantFrames(on: boolean): void {
    if (on === this.rxOn) return;
    this.rxOn = on;
    this.ep ??= new sys.Epoll(2, this.spec.epollFd);
    this.ep.modify(this.spec.pendingFd, on ? sys.EPOLLIN : 0, PENDING_TOKEN);
    this.watchSock();
  }

  /**
   * The device's fd woke it: sends what waited for room, and notices the end of a socket that nobody
   * reads while input is not wanted (a read finds it otherwise).
   */
  service(): void {
    if (this.sock < 0) return;
    if (this.wantOut) this.send();
    if (this.rxOn || this.sock < 0 || this.ep === undefined) return;
    let hup = false;
    this.ep.wait(0, (token, events) => {
      if (token === SOCK_TOKEN && events & (sys.EPOLLHUP | sys.EPOLLERR)) hup = true;
    });
    if (hup) this.drop(PASST_LOST.CLOSED);
  }

  setOffloads(): void {
    // passt takes and gives plain frames: there is nothing to tell it.
  }

  /** Sets or clears the eventfd that keeps the device reading while frames wait in the buffer. */
  private setPending(on: boolean): void {
    if (on === this.pendingSet) return;
    if (on) sys.eventfdWrite(this.spec.pendingFd);
    else sys.eventfdRead(this.spec.pendingFd);
    this.pendingSet = on;
  }

  /** Lets the connection go; `reason` (PASST_LOST) is reported to the supervisor, 0 for none. */
  private drop(reason: number): void {
    if (this.sock >= 0) {
      try {
        this.ep?.remove(this.sock);
      } catch {
        // already out of the set
      }
      sys.close(this.sock);
      this.sock = -1;
      Atomics.store(this.st, PASST_STATE.FD, -1);
      Atomics.store(this.st, PASST_STATE.CONNECTED, 0);
    }
    this.reader?.reset();
    this.out?.clear();
    this.toGuest.length = 0;
    this.wantOut = false;
    if (this.pendingSet) this.setPending(false);
    if (reason !== 0) this.report(reason);
  }

  private report(reason: number): void {
    Atomics.store(this.st, PASST_STATE.LOST_REASON, reason);
    Atomics.store(this.st, PASST_STATE.LOST, this.gen);
  }

  close(): void {
    this.drop(0);
    this.closed = true;
  }
}
