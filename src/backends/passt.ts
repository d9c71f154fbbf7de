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
import { NET_IOV_MAX, type NetBackend, VIRTIO_NET_HDR_LEN } from '../devices/virtio/net.js';
import * as sys from '../os/sys.js';
import {
  ETH_HEADER_LEN,
  FRAME_LEN_BYTES,
  FrameReader,
  PASST_MAX_FRAME,
  PendingWrite,
  putLength,
} from './passt-frames.js';

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

/** Native memory for the length prefixes (writev needs native addresses), one page per thread. */
let prefixPage: Uint8Array | undefined;
function prefix(): Uint8Array {
  if (prefixPage === undefined) {
    const page = sys.mmap(0, 4096, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    prefixPage = new Uint8Array(sys.view(page, FRAME_LEN_BYTES));
  }
  return prefixPage;
}

const errnoOf = (e: unknown): number => (e instanceof SyscallError ? e.errno : 0);

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
  private pending: PendingWrite | undefined;
  private pendingSet = false;
  private readonly header = new Uint8Array(VIRTIO_NET_HDR_LEN);
  private iov: sys.IoVec | undefined;
  private staging: Uint8Array | undefined;
  private closed = false;

  /** No side effects: the main thread builds one for the device's features. */
  constructor(private readonly spec: PasstSpec) {
    this.fd = spec.epollFd;
    this.st = new Int32Array(spec.state);
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
    this.ep ??= new sys.Epoll(1, this.spec.epollFd);
    this.ep.add(fd, sys.EPOLLIN, 1);
    this.sock = fd;
    this.reader ??= new FrameReader();
    this.pending ??= new PendingWrite();
    this.reader.reset();
    this.pending.clear();
    Atomics.store(this.st, PASST_STATE.FD, fd);
    Atomics.store(this.st, PASST_STATE.CONNECTED, want);
  }

  read(bufs: readonly Uint8Array[], count: number): number | undefined {
    const reader = this.reader;
    if (this.sock < 0 || reader === undefined) return undefined;
    try {
      for (;;) {
        const f = reader.next();
        if (f !== undefined) {
          const n = VIRTIO_NET_HDR_LEN + f.length;
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

  write(bufs: readonly Uint8Array[], count: number): number {
    const pending = this.pending;
    if (this.sock < 0 || pending === undefined) throw new SyscallError('send(passt)', sys.ENOTCONN);
    let total = 0;
    for (let i = 0; i < count; i++) total += (bufs[i] as Uint8Array).length;
    const len = total - VIRTIO_NET_HDR_LEN;
    if (len < ETH_HEADER_LEN || len > PASST_MAX_FRAME)
      throw new RangeError(`a ${len}-byte frame: passt takes ${ETH_HEADER_LEN}-${PASST_MAX_FRAME}`);
    const sock = this.sock;
    try {
      // The tail of a frame the socket took only part of goes first, or the stream loses its framing.
      if (!pending.empty && !pending.flush((b) => sys.send(sock, b))) throw new SyscallError('send(passt)', sys.EAGAIN);
      const chunks = this.chunks(bufs, count, len);
      const n = this.writeChunks(sock, chunks);
      if (n < 0) throw new SyscallError('send(passt)', sys.EAGAIN); // full: the frame is dropped
      if (n < FRAME_LEN_BYTES + len) pending.keep(chunks, chunks.length, n);
      return total;
    } catch (e) {
      const errno = errnoOf(e);
      if (errno !== sys.EAGAIN) this.drop(PASST_LOST.ERROR);
      throw e;
    }
  }

  /** The frame as the stream carries it: its length, then the guest's buffers less the virtio header. */
  private readonly chunkList: Uint8Array[] = [];
  private chunks(bufs: readonly Uint8Array[], count: number, len: number): Uint8Array[] {
    const out = this.chunkList;
    out.length = 0;
    const p = prefix();
    putLength(p, 0, len);
    out.push(p);
    let skip = VIRTIO_NET_HDR_LEN;
    for (let i = 0; i < count; i++) {
      const b = bufs[i] as Uint8Array;
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      out.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    return out;
  }

  /** writev of native views (guest memory); other buffers (tests) are copied and sent. -1: full. */
  private writeChunks(sock: number, chunks: Uint8Array[]): number {
    if (chunks.length <= NET_IOV_MAX + 1) {
      if (this.iov === undefined) this.iov = new sys.IoVec(NET_IOV_MAX + 1);
      const iov = this.iov;
      iov.clear();
      let native = true;
      for (const c of chunks)
        if (!iov.push(c)) {
          native = false;
          break;
        }
      if (native) return iov.writev(sock);
    }
    if (this.staging === undefined) this.staging = new Uint8Array(FRAME_LEN_BYTES + PASST_MAX_FRAME);
    const staging = this.staging;
    let o = 0;
    for (const c of chunks) {
      staging.set(c, o);
      o += c.length;
    }
    return sys.send(sock, staging.subarray(0, o));
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
    this.pending?.clear();
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
