/**
 * passt's "qemu" stream protocol (passt's tap.c, QEMU's `-netdev stream`): each Ethernet frame on the
 * Unix stream socket is preceded by its length as 4 bytes, big-endian. No virtio_net_hdr travels: the
 * backend takes the guest's off on the way out and puts a plain one on the way in.
 *
 * FrameReader receives into one buffer of fixed size and cuts frames out of it, so one recv can bring
 * many frames; OutBuffer gathers frames the other way and sends small ones together (batching both
 * ways pays: bench/passt-batch.ts), each send frame-aligned (see OutBuffer). A length below an Ethernet header or
 * above the largest frame is a broken or hostile peer: PasstError VIREO_ERR_PASST_FRAME, and the caller
 * drops the connection. Nothing here allocates per frame, whatever the peer sends.
 */
import { PasstError } from '../common/errors.js';

export const FRAME_LEN_BYTES = 4;
/** An Ethernet header: the least a frame can be. */
export const ETH_HEADER_LEN = 14;
/**
 * The largest frame taken either way: passt's 65520-byte MTU plus the Ethernet header, rounded up to
 * what virtio-net carries (a 64 KiB GSO frame with Ethernet and VLAN headers, NET_MAX_FRAME less the
 * virtio header).
 */
export const PASST_MAX_FRAME = 65550;
/** Receive buffer: several large frames, or a few hundred MTU-sized ones, per recv. */
export const PASST_RX_BUFFER = 256 * 1024;
/** Send buffer: as much again the other way. */
export const PASST_TX_BUFFER = 256 * 1024;

/** Reads a length prefix; the caller checked that 4 bytes are there. */
const lengthAt = (b: Uint8Array, o: number): number =>
  (((b[o] as number) << 24) | ((b[o + 1] as number) << 16) | ((b[o + 2] as number) << 8) | (b[o + 3] as number)) >>> 0;

/** Throws unless `len` is a frame length this protocol takes. */
export function checkFrameLength(len: number, max = PASST_MAX_FRAME): void {
  if (len < ETH_HEADER_LEN || len > max)
    throw new PasstError(
      'VIREO_ERR_PASST_FRAME',
      `passt sent a frame length of ${len} bytes (vireo takes ${ETH_HEADER_LEN}-${max}): dropping the connection`,
    );
}

/** Cuts length-prefixed frames out of a fixed buffer the caller receives into. */
export class FrameReader {
  private readonly buf: Uint8Array;
  private start = 0;
  private end = 0;

  constructor(
    readonly maxFrame = PASST_MAX_FRAME,
    capacity = PASST_RX_BUFFER,
  ) {
    if (capacity < FRAME_LEN_BYTES + maxFrame)
      throw new RangeError(`a receive buffer of ${capacity} bytes cannot hold a ${maxFrame}-byte frame`);
    this.buf = new Uint8Array(capacity);
  }

  /** Bytes received and not yet taken as frames. */
  get buffered(): number {
    return this.end - this.start;
  }

  /**
   * Where the next recv goes: the free tail of the buffer, after moving a partial frame to the front
   * when the tail cannot hold the rest of it. Never empty while next() would answer undefined.
   */
  space(): Uint8Array {
    if (this.start === this.end) this.start = this.end = 0;
    else if (this.buf.length - this.start < FRAME_LEN_BYTES + this.maxFrame) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    return this.buf.subarray(this.end);
  }

  /** `n` bytes were received into space(). */
  commit(n: number): void {
    if (!Number.isInteger(n) || n < 0 || this.end + n > this.buf.length) throw new RangeError(`commit of ${n} bytes`);
    this.end += n;
  }

  /**
   * The next whole frame (a view into the buffer, valid until the next space()), or undefined when
   * it has not all arrived. Throws PasstError on a length out of range (then reset() before reuse).
   */
  next(): Uint8Array | undefined {
    const have = this.end - this.start;
    if (have < FRAME_LEN_BYTES) return undefined;
    const len = lengthAt(this.buf, this.start);
    checkFrameLength(len, this.maxFrame);
    if (have < FRAME_LEN_BYTES + len) return undefined;
    const at = this.start + FRAME_LEN_BYTES;
    this.start = at + len;
    return this.buf.subarray(at, at + len);
  }

  /** Whether next() would give a frame now (without taking it; throws as next() does). */
  hasFrame(): boolean {
    const have = this.end - this.start;
    if (have < FRAME_LEN_BYTES) return false;
    const len = lengthAt(this.buf, this.start);
    checkFrameLength(len, this.maxFrame);
    return have >= FRAME_LEN_BYTES + len;
  }

  /** Forgets everything (a new connection). */
  reset(): void {
    this.start = this.end = 0;
  }
}

/** Writes `len` as a 4-byte big-endian prefix at `o`. */
export function putLength(b: Uint8Array, o: number, len: number): void {
  b[o] = len >>> 24;
  b[o + 1] = (len >>> 16) & 0xff;
  b[o + 2] = (len >>> 8) & 0xff;
  b[o + 3] = len & 0xff;
}

/**
 * At most this many bytes of whole small frames go out in one send (frames above it go one per send).
 * A send this small is one skb of a Unix stream socket (Linux makes skbs of up to ~36 KiB there), which
 * the socket takes whole or not at all.
 */
export const PASST_SEND_BATCH = 16 * 1024;

/**
 * Frames on their way to passt: each appended whole (its length, then its bytes, copied from the guest's
 * buffers). What a full socket did not take stays, in order, for the next flush, so the stream keeps its
 * framing. Fixed size: a frame that does not fit is the caller's to drop.
 *
 * Each send starts at a frame's start and holds either one frame or small whole frames up to
 * PASST_SEND_BATCH, and the rest of a frame the socket cut goes out alone, before the next frame — as
 * QEMU's stream netdev writes (one frame per writev, its rest alone when the socket was full). passt
 * 2023.03 (Debian 12's) depends on it: it reads what the socket holds, completes a frame cut at the end
 * with one blocking recv, and when that recv brings less than the frame's rest it drops every frame of
 * that read and loses the stream's framing; a length prefix cut at the end is dropped likewise. One
 * send of many frames is cut by the socket anywhere (its skbs are ~36 KiB, whatever the frames), so
 * passt saw cut prefixes and frame rests split over two skbs: the guest's TCP then lost whole windows
 * to retransmission timeouts (guest → host at a few Mbit/s where QEMU with the same passt ran at tens).
 */
export class OutBuffer {
  private readonly buf: Uint8Array;
  private start = 0;
  private end = 0;
  /** Where the first frame not yet begun starts (> start while a frame the socket cut waits). */
  private next = 0;

  constructor(capacity = PASST_TX_BUFFER) {
    if (capacity < FRAME_LEN_BYTES + PASST_MAX_FRAME) throw new RangeError(`an output buffer of ${capacity} bytes`);
    this.buf = new Uint8Array(capacity);
  }

  get empty(): boolean {
    return this.start === this.end;
  }

  /** Bytes waiting. */
  get pending(): number {
    return this.end - this.start;
  }

  /** Whether a frame of `len` bytes fits now (after moving what waits to the front if needed). */
  fits(len: number): boolean {
    if (this.buf.length - this.end >= FRAME_LEN_BYTES + len) return true;
    if (this.start > 0) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.next -= this.start;
      this.start = 0;
    }
    return this.buf.length - this.end >= FRAME_LEN_BYTES + len;
  }

  /** Appends a frame made of `parts` (`len` bytes in all; the caller checked fits(len)). */
  append(parts: readonly Uint8Array[], len: number): void {
    if (!this.fits(len)) throw new RangeError(`a ${len}-byte frame does not fit`);
    putLength(this.buf, this.end, len);
    let o = this.end + FRAME_LEN_BYTES;
    for (const p of parts) {
      this.buf.set(p, o);
      o += p.length;
    }
    if (o !== this.end + FRAME_LEN_BYTES + len) throw new RangeError('the parts do not add up to the length');
    this.end = o;
  }

  /**
   * Sends what waits with `send` (bytes taken, -1 when full), frame-aligned as the class says; true
   * when nothing is left.
   */
  flush(send: (b: Uint8Array) => number): boolean {
    const b = this.buf;
    while (this.start < this.end) {
      let stop: number;
      if (this.start < this.next)
        stop = this.next; // the rest of a frame the socket cut, alone
      else {
        stop = this.start + FRAME_LEN_BYTES + lengthAt(b, this.start);
        while (stop < this.end) {
          const after = stop + FRAME_LEN_BYTES + lengthAt(b, stop);
          if (after - this.start > PASST_SEND_BATCH) break;
          stop = after;
        }
      }
      const n = send(b.subarray(this.start, stop));
      if (n <= 0) return false;
      this.start += n;
      while (this.next < this.start) this.next += FRAME_LEN_BYTES + lengthAt(b, this.next);
    }
    this.clear();
    return true;
  }

  clear(): void {
    this.start = this.end = this.next = 0;
  }
}
