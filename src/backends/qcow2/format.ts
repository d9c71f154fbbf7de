/**
 * The qcow2 on-disk format (QEMU's docs/interop/qcow2.txt), versions 2 and 3: the header, its
 * extensions and the table entries, decoded and checked before anything is used. Every offset is
 * checked against the file's size and the cluster alignment the spec asks for, every count against a
 * bound, so that a hostile image ends in one Qcow2Error naming the field, never in a read past the end
 * of the file or an allocation the image chose. All numbers are big-endian.
 */
import { VireoError } from '../../common/errors.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

/** A qcow2 image is malformed, uses a feature vireo does not have, or its metadata is inconsistent. */
export class Qcow2Error extends VireoError {
  override name = 'Qcow2Error';
  constructor(message: string) {
    super('VIREO_ERR_QCOW2', message);
  }
}

/** Incompatible feature bits (header bytes 72-79). */
export const INCOMPAT = { dirty: 0, corrupt: 1, externalData: 2, compressionType: 3, extendedL2: 4 } as const;
const INCOMPAT_NAMES = ['dirty', 'corrupt', 'external data file', 'compression type', 'extended L2 entries'];

/** Header extension types. */
export const EXT = {
  end: 0,
  backingFormat: 0xe2792aca,
  featureNames: 0x6803f857,
  bitmaps: 0x23852875,
  encryption: 0x0537be77,
  externalDataFile: 0x44415441,
} as const;

/** Limits: QEMU's own where it has one (cluster size, L1 and refcount table sizes, snapshots). */
export const LIMITS = {
  minClusterBits: 9,
  maxClusterBits: 21,
  maxL1Bytes: 32 * 1024 * 1024,
  maxRefcountTableBytes: 8 * 1024 * 1024,
  maxBackingName: 1023,
  maxSnapshots: 65536,
  /** Virtual sizes past this would lose precision as JavaScript numbers. */
  maxSize: 2 ** 52,
} as const;

export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104;

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  /** Virtual disk size in bytes. */
  size: number;
  l1Size: number;
  l1Offset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  /** The backing file name as stored (not resolved), if any. */
  backingFile: string | undefined;
  /** From the backing format extension: 'raw' or 'qcow2'; undefined when the image does not say. */
  backingFormat: 'raw' | 'qcow2' | undefined;
  dirty: boolean;
  corrupt: boolean;
}

/** Reads a u64 field that must fit a JavaScript number. */
function u64(b: Buffer, off: number, field: string, name: string): number {
  const v = b.readBigUInt64BE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(name, `${field} 0x${v.toString(16)} is out of range`);
  return Number(v);
}

const bad = (name: string, what: string): Qcow2Error => new Qcow2Error(`qcow2 image ${name}: ${what}`);
const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * Parses and checks the header of an image of `fileSize` bytes from `head`, the file's first bytes
 * (its first cluster, or all of it when it is shorter). `name` is for messages.
 */
export function parseHeader(head: Buffer, fileSize: number, name: string): Qcow2Header {
  if (head.length < V2_HEADER_LENGTH) throw bad(name, `the file (${fileSize} bytes) is too short for a header`);
  if (head.readUInt32BE(0) !== QCOW2_MAGIC) throw bad(name, 'bad magic (not a qcow2 image)');
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw bad(name, `version ${version} is not supported (only 2 and 3)`);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < LIMITS.minClusterBits || clusterBits > LIMITS.maxClusterBits)
    throw bad(name, `cluster_bits ${clusterBits} is outside ${LIMITS.minClusterBits}-${LIMITS.maxClusterBits}`);
  const cs = 2 ** clusterBits;
  const aligned = (off: number): boolean => off % cs === 0;

  let headerLength = V2_HEADER_LENGTH;
  let incompatible = 0n;
  let compatible = 0n;
  let autoclear = 0n;
  let refcountOrder = 4;
  if (version === 3) {
    if (head.length < V3_HEADER_LENGTH) throw bad(name, 'the file is too short for a version 3 header');
    headerLength = head.readUInt32BE(100);
    if (headerLength < V3_HEADER_LENGTH || headerLength % 8 !== 0 || headerLength > cs)
      throw bad(name, `header_length ${headerLength} is not a multiple of 8 between 104 and the cluster size`);
    if (headerLength > head.length) throw bad(name, `header_length ${headerLength} runs past the end of the file`);
    incompatible = head.readBigUInt64BE(72);
    compatible = head.readBigUInt64BE(80);
    autoclear = head.readBigUInt64BE(88);
    refcountOrder = head.readUInt32BE(96);
    if (refcountOrder > 6) throw bad(name, `refcount_order ${refcountOrder} is above 6`);
  }

  const size = u64(head, 24, 'size', name);
  if (size > LIMITS.maxSize) throw bad(name, `size ${size} is above vireo's limit of 2^52 bytes`);
  const crypt = head.readUInt32BE(32);
  if (crypt !== 0)
    throw bad(name, `crypt_method ${crypt}: encrypted images are not supported; decrypt it with qemu-img convert`);

  const l2Entries = cs / 8;
  const l1Size = head.readUInt32BE(36);
  const l1Offset = u64(head, 40, 'l1_table_offset', name);
  const needL1 = Math.ceil(size / (cs * l2Entries));
  if (l1Size < needL1) throw bad(name, `l1_size ${l1Size} is too small for a size of ${size} bytes (needs ${needL1})`);
  if (l1Size * 8 > LIMITS.maxL1Bytes) throw bad(name, `l1_size ${l1Size} is above the 32 MiB limit`);
  if (l1Size > 0) {
    if (l1Offset === 0 || !aligned(l1Offset))
      throw bad(name, `l1_table_offset ${hex(l1Offset)} is not cluster-aligned`);
    if (l1Offset + l1Size * 8 > fileSize)
      throw bad(
        name,
        `the L1 table (l1_table_offset ${hex(l1Offset)}, l1_size ${l1Size}) runs past the end of the file`,
      );
  }

  const refcountTableOffset = u64(head, 48, 'refcount_table_offset', name);
  const refcountTableClusters = head.readUInt32BE(56);
  if (refcountTableClusters === 0) throw bad(name, 'refcount_table_clusters is 0');
  if (refcountTableClusters * cs > LIMITS.maxRefcountTableBytes)
    throw bad(name, `refcount_table_clusters ${refcountTableClusters} is above the 8 MiB limit`);
  if (refcountTableOffset === 0 || !aligned(refcountTableOffset))
    throw bad(name, `refcount_table_offset ${hex(refcountTableOffset)} is not cluster-aligned`);
  if (refcountTableOffset + refcountTableClusters * cs > fileSize)
    throw bad(
      name,
      `the refcount table (refcount_table_offset ${hex(refcountTableOffset)}) runs past the end of the file`,
    );

  const nbSnapshots = head.readUInt32BE(60);
  const snapshotsOffset = u64(head, 64, 'snapshots_offset', name);
  if (nbSnapshots > LIMITS.maxSnapshots) throw bad(name, `nb_snapshots ${nbSnapshots} is above ${LIMITS.maxSnapshots}`);
  if (nbSnapshots > 0 && (snapshotsOffset === 0 || !aligned(snapshotsOffset) || snapshotsOffset >= fileSize))
    throw bad(name, `snapshots_offset ${hex(snapshotsOffset)} is not a cluster-aligned offset inside the file`);

  // Header extensions: from header_length to the backing file name (or the end of the first cluster).
  const backingOffset = u64(head, 8, 'backing_file_offset', name);
  const backingSize = head.readUInt32BE(16);
  let backingFile: string | undefined;
  if (backingOffset !== 0) {
    if (backingSize === 0 || backingSize > LIMITS.maxBackingName)
      throw bad(name, `backing_file_size ${backingSize} is not between 1 and ${LIMITS.maxBackingName}`);
    if (backingOffset < headerLength || backingOffset + backingSize > Math.min(cs, head.length))
      throw bad(name, `backing_file_offset ${hex(backingOffset)} is not inside the first cluster after the header`);
    const raw = head.subarray(backingOffset, backingOffset + backingSize);
    backingFile = new TextDecoder('utf-8', { fatal: false }).decode(raw);
    if (raw.includes(0)) throw bad(name, 'the backing file name contains a NUL byte');
  }
  const extEnd = Math.min(backingFile !== undefined ? backingOffset : cs, head.length);
  // Version 2 images have extensions too (the backing format among them), from byte 72.
  const exts = parseExtensions(head, headerLength, extEnd, name);

  const unknown = incompatible & ~0x1fn;
  if (unknown !== 0n) {
    const bitNo = unknown.toString(2).length - 1;
    const label = featureName(exts.get(EXT.featureNames), 0, bitNo);
    throw bad(name, `incompatible feature bit ${bitNo}${label ? ` (${label})` : ''} is not supported`);
  }
  for (const b of [INCOMPAT.externalData, INCOMPAT.compressionType, INCOMPAT.extendedL2]) {
    if (incompatible & (1n << BigInt(b)))
      throw bad(
        name,
        `incompatible feature "${INCOMPAT_NAMES[b]}" is not supported; convert it with qemu-img convert -O qcow2`,
      );
  }
  if (headerLength > 104 && head[104] !== 0)
    throw bad(name, `compression_type ${head[104]} without the compression type feature bit`);
  if (exts.has(EXT.externalDataFile)) throw bad(name, 'external data files are not supported');
  if (exts.has(EXT.encryption)) throw bad(name, 'encrypted images are not supported');

  let backingFormat: 'raw' | 'qcow2' | undefined;
  const fmt = exts.get(EXT.backingFormat);
  if (fmt !== undefined) {
    const f = fmt.toString('latin1');
    if (f !== 'raw' && f !== 'qcow2')
      throw bad(name, `backing format "${f.slice(0, 32)}" is not supported (only raw and qcow2)`);
    if (backingFile === undefined) throw bad(name, 'a backing format extension without a backing file');
    backingFormat = f;
  }

  return {
    version,
    clusterBits,
    clusterSize: cs,
    size,
    l1Size,
    l1Offset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatible,
    compatible,
    autoclear,
    refcountOrder,
    headerLength,
    backingFile,
    backingFormat,
    dirty: (incompatible & (1n << BigInt(INCOMPAT.dirty))) !== 0n,
    corrupt: (incompatible & (1n << BigInt(INCOMPAT.corrupt))) !== 0n,
  };
}

/** The header extensions between `from` and `to`, by type (each known type at most once). */
function parseExtensions(head: Buffer, from: number, to: number, name: string): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let off = from;
  while (off + 8 <= to) {
    const type = head.readUInt32BE(off);
    const len = head.readUInt32BE(off + 4);
    if (type === EXT.end) break;
    const padded = Math.ceil(len / 8) * 8;
    if (off + 8 + padded > to)
      throw bad(name, `header extension ${hex(type)} at ${hex(off)} (length ${len}) runs past the header area`);
    if (out.has(type)) throw bad(name, `header extension ${hex(type)} appears twice`);
    if (type === EXT.featureNames && len % 48 !== 0)
      throw bad(name, 'the feature name table is not a whole number of entries');
    out.set(type, head.subarray(off + 8, off + 8 + len));
    off += 8 + padded;
  }
  return out;
}

/** A feature's name from the feature name table extension, if it has one. */
function featureName(table: Buffer | undefined, type: number, bitNo: number): string | undefined {
  if (table === undefined) return undefined;
  for (let o = 0; o + 48 <= table.length; o += 48) {
    if (table[o] !== type || table[o + 1] !== bitNo) continue;
    const raw = table.subarray(o + 2, o + 48);
    const end = raw.indexOf(0);
    return raw
      .subarray(0, end < 0 ? raw.length : end)
      .toString('latin1')
      .replace(/[^\x20-\x7e]/g, '?');
  }
  return undefined;
}

// Table entries are decoded from their two 32-bit halves (hi: bits 32-63, lo: bits 0-31), so that the
// hot paths need no BigInt; an offset at or past 2^53 is out of every file vireo can open.

/** Bit 63 of L1 and L2 entries: the refcount is exactly one (writes may go in place). */
export const COPIED_HI = 0x80000000;
/** Bit 62 of L2 entries: a compressed cluster. */
export const COMPRESSED_HI = 0x40000000;
/** Bit 0 of a standard L2 entry: the cluster reads as zeroes (version 3). */
export const ZERO_LO = 1;

/** Bits 9-55 of an entry as a byte offset (a multiple of 512), from its halves. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * 2 ** 32 + ((lo & ~0x1ff) >>> 0);
}

/** An L1 entry's reserved bits (0-8, 56-62) must be zero. */
export const l1Reserved = (hi: number, lo: number): boolean => (hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0;
/** A standard L2 entry's reserved bits (1-8, 56-61) must be zero. */
export const l2Reserved = (hi: number, lo: number): boolean => (hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0;

/** Where a compressed cluster's bytes lie in the file: [start, end). */
export function compressedRange(hi: number, lo: number, clusterBits: number): { start: number; end: number } {
  const v = ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)) & ((1n << 62n) - 1n);
  const x = BigInt(62 - (clusterBits - 8));
  const start = Number(v & ((1n << x) - 1n));
  const sectors = Number(v >> x);
  return { start, end: Math.floor(start / 512) * 512 + (sectors + 1) * 512 };
}

/** Writes a 64-bit entry from an offset (< 2^53) and flag bits of its high half. */
export function putEntry(table: Buffer, index: number, offset: number, flagsHi: number, flagsLo = 0): void {
  table.writeUInt32BE(((Math.floor(offset / 2 ** 32) & 0x00ffffff) | flagsHi) >>> 0, index * 8);
  table.writeUInt32BE(((offset % 2 ** 32) | flagsLo) >>> 0, index * 8 + 4);
}
