/**
 * passt's "qemu" stream protocol (passt's tap.c, QEMU's `-netdev stream`): each Ethernet frame on the
 * Unix stream socket is preceded by its length as 4 bytes, big-endian. No virtio_net_hdr travels: the
 * backend takes the guest's off on the way out and puts a plain one on the way in.
 *
 * FrameReader receives into one buffer of fixed size and cuts frames out of it, so one recv can bring
 * many frames (the batching measured in bench/passt-batch.ts); a length below an Ethernet header or
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
 * The tail of a frame a stream socket took only part of: kept (one frame at most) and sent before
 * anything else, so the stream stays framed. Bounded by FRAME_LEN_BYTES + the largest frame.
 */
export class PendingWrite {
  private readonly buf: Uint8Array;
  private start = 0;
  private end = 0;

  constructor(maxFrame = PASST_MAX_FRAME) {
    this.buf = new Uint8Array(FRAME_LEN_BYTES + maxFrame);
  }

  get empty(): boolean {
    return this.start === this.end;
  }

  /** Keeps the parts of `chunks` after the first `written` bytes (only when empty; the caller checks). */
  keep(chunks: readonly Uint8Array[], count: number, written: number): void {
    if (!this.empty) throw new RangeError('a partial frame is already pending');
    let skip = written;
    let o = 0;
    for (let i = 0; i < count; i++) {
      const c = chunks[i] as Uint8Array;
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      const part = skip > 0 ? c.subarray(skip) : c;
      skip = 0;
      if (o + part.length > this.buf.length) throw new RangeError('a frame larger than the pending buffer');
      this.buf.set(part, o);
      o += part.length;
    }
    this.start = 0;
    this.end = o;
  }

  /** Sends what is pending with `send` (bytes taken, -1 when full); true when nothing is left. */
  flush(send: (b: Uint8Array) => number): boolean {
    while (this.start < this.end) {
      const n = send(this.buf.subarray(this.start, this.end));
      if (n <= 0) return false;
      this.start += n;
    }
    this.start = this.end = 0;
    return true;
  }

  clear(): void {
    this.start = this.end = 0;
  }
}
