/**
 * What a qcow2 L2 entry says about a guest cluster, checked before anything uses it (reserved bits,
 * alignment, the zero flag only in version 3, offsets inside the file), and the inflation of a
 * compressed cluster (raw deflate, bounded to one cluster, however the data was made).
 */
import { inflateRawSync, constants as zlibConstants } from 'node:zlib';
import {
  COMPRESSED_HI,
  COPIED_HI,
  compressedRange,
  entryOffset,
  l2Reserved,
  Qcow2Error,
  type Qcow2Header,
  ZERO_LO,
} from './format.js';
import type { ImageIo } from './image-io.js';

/** What a guest cluster maps to. */
export const Kind = { Unallocated: 0, Zero: 1, Data: 2, Compressed: 3 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export interface Mapping {
  kind: Kind;
  /** Data: the host cluster; Zero: a preallocated one, or 0; Compressed: where its bytes start. */
  host: number;
  /** Bit 63: the image's own cluster (refcount one), writable in place. */
  copied: boolean;
  /** The entry's halves. */
  hi: number;
  lo: number;
}

export const UNALLOCATED: Mapping = Object.freeze({ kind: Kind.Unallocated, host: 0, copied: false, hi: 0, lo: 0 });

const err = (name: string, what: string): Qcow2Error => new Qcow2Error(`qcow2 image ${name}: ${what}`);

/** Entry i of an L2 table (guest cluster gc, for messages) in an image of `fileSize` bytes. */
export function decodeL2(
  table: Buffer,
  i: number,
  gc: number,
  h: Qcow2Header,
  fileSize: number,
  name: string,
): Mapping {
  const hi = table.readUInt32BE(i * 8);
  const lo = table.readUInt32BE(i * 8 + 4);
  const copied = (hi & COPIED_HI) !== 0;
  const at = `L2 entry for guest cluster ${gc}`;
  if (hi & COMPRESSED_HI) {
    if (copied) throw err(name, `${at}: compressed with bit 63 set`);
    const { start, end } = compressedRange(hi, lo, h.clusterBits);
    // The last sector may end past the file's end (data shorter than it): what is there is read.
    if (start >= fileSize || end > fileSize + 512) throw err(name, `${at}: compressed data past the end of the file`);
    return { kind: Kind.Compressed, host: start, copied: false, hi, lo };
  }
  if (l2Reserved(hi, lo)) throw err(name, `${at} has reserved bits set`);
  const off = entryOffset(hi, lo);
  const zero = (lo & ZERO_LO) !== 0;
  if (zero && h.version === 2) throw err(name, `${at}: zero flag in a version 2 image`);
  if (off === 0) {
    if (copied) throw err(name, `${at}: offset 0 with bit 63 set`);
    return { kind: zero ? Kind.Zero : Kind.Unallocated, host: 0, copied: false, hi, lo };
  }
  if (off % h.clusterSize !== 0) throw err(name, `${at}: offset 0x${off.toString(16)} is not cluster-aligned`);
  if (off >= fileSize) throw err(name, `${at}: offset 0x${off.toString(16)} is past the end of the file`);
  return { kind: zero ? Kind.Zero : Kind.Data, host: off, copied, hi, lo };
}

/** A compressed cluster's data: exactly one cluster, or a Qcow2Error. */
export function inflateCluster(io: ImageIo, m: Mapping, gc: number, h: Qcow2Header, name: string): Buffer {
  const { start, end } = compressedRange(m.hi, m.lo, h.clusterBits);
  const raw = Buffer.alloc(Math.min(end, io.size()) - start);
  const n = io.readv([raw], start);
  let data: Buffer;
  try {
    // Bytes after the deflate stream (the rest of its last sector) are ignored; a stream cut short
    // gives what it has (checked below); more than a cluster is an error, never a larger allocation.
    data = inflateRawSync(raw.subarray(0, n), {
      maxOutputLength: h.clusterSize,
      finishFlush: zlibConstants.Z_SYNC_FLUSH,
    });
  } catch (e) {
    throw err(name, `compressed cluster for guest cluster ${gc} does not inflate: ${(e as Error).message}`);
  }
  if (data.length !== h.clusterSize)
    throw err(name, `compressed cluster for guest cluster ${gc} inflates to ${data.length} bytes, not a cluster`);
  return data;
}
