/**
 * FUSE reply bodies (include/uapi/linux/fuse.h): each encoder writes one struct, fields in the
 * header's order, little-endian. The out-header itself is written by the device (device.ts).
 */
import { FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, SIZE } from './abi.js';

/** fuse_attr's fields, as a stat gives them. */
export interface FuseAttr {
  ino: bigint;
  size: number;
  blocks: number;
  atime: number;
  mtime: number;
  ctime: number;
  atimensec: number;
  mtimensec: number;
  ctimensec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
}

/** How long the guest may cache entries and attributes (seconds): 1 s, as virtiofsd's cache=auto. */
export const ATTR_VALID_S = 1;

/** fuse_attr at `at`: ino size blocks atime mtime ctime (u64), atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags (u32). */
function writeAttr(v: DataView, at: number, a: FuseAttr): void {
  v.setBigUint64(at, a.ino, true);
  v.setBigUint64(at + 8, BigInt(a.size), true);
  v.setBigUint64(at + 16, BigInt(a.blocks), true);
  v.setBigInt64(at + 24, BigInt(a.atime), true);
  v.setBigInt64(at + 32, BigInt(a.mtime), true);
  v.setBigInt64(at + 40, BigInt(a.ctime), true);
  v.setUint32(at + 48, a.atimensec, true);
  v.setUint32(at + 52, a.mtimensec, true);
  v.setUint32(at + 56, a.ctimensec, true);
  v.setUint32(at + 60, a.mode, true);
  v.setUint32(at + 64, a.nlink, true);
  v.setUint32(at + 68, a.uid, true);
  v.setUint32(at + 72, a.gid, true);
  v.setUint32(at + 76, a.rdev, true);
  v.setUint32(at + 80, a.blksize, true);
  v.setUint32(at + 84, 0, true); // flags
}

const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** fuse_entry_out: nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec, attr. */
export function entryOut(nodeid: number, attr: FuseAttr, into?: Uint8Array): Uint8Array {
  const b = into ?? new Uint8Array(SIZE.ENTRY_OUT);
  const v = view(b);
  v.setBigUint64(0, BigInt(nodeid), true);
  v.setBigUint64(8, 0n, true);
  const valid = nodeid === 0 ? 0n : BigInt(ATTR_VALID_S);
  v.setBigUint64(16, valid, true);
  v.setBigUint64(24, valid, true);
  v.setUint32(32, 0, true);
  v.setUint32(36, 0, true);
  writeAttr(v, 40, attr);
  return b;
}

/** fuse_attr_out: attr_valid, attr_valid_nsec, dummy, attr. */
export function attrOut(attr: FuseAttr): Uint8Array {
  const b = new Uint8Array(SIZE.ATTR_OUT);
  const v = view(b);
  v.setBigUint64(0, BigInt(ATTR_VALID_S), true);
  writeAttr(v, 16, attr);
  return b;
}

/** fuse_open_out: fh, open_flags, backing_id. */
export function openOut(fh: number, openFlags: number): Uint8Array {
  const b = new Uint8Array(SIZE.OPEN_OUT);
  const v = view(b);
  v.setBigUint64(0, BigInt(fh), true);
  v.setUint32(8, openFlags, true);
  return b;
}

export interface InitReply {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  maxPages: number;
}

/**
 * fuse_init_out: major, minor, max_readahead, flags, max_background u16, congestion_threshold u16,
 * max_write, time_gran, max_pages u16, map_alignment u16, flags2, max_stack_depth, request_timeout
 * u16, unused[11] u16. A kernel below 7.23 takes only the first 24 bytes.
 */
export function initOut(r: InitReply): Uint8Array {
  const b = new Uint8Array(SIZE.INIT_OUT);
  const v = view(b);
  v.setUint32(0, FUSE_KERNEL_VERSION, true);
  v.setUint32(4, Math.min(r.minor, FUSE_KERNEL_MINOR_VERSION), true);
  v.setUint32(8, r.maxReadahead, true);
  v.setUint32(12, r.flags, true);
  v.setUint16(16, r.maxBackground, true);
  v.setUint16(18, r.congestionThreshold, true);
  v.setUint32(20, r.maxWrite, true);
  v.setUint32(24, 1, true); // time_gran: nanoseconds
  v.setUint16(28, r.maxPages, true);
  return r.minor < 23 ? b.subarray(0, 24) : b;
}

/** fuse_write_out: size, padding. */
export function writeOut(size: number): Uint8Array {
  const b = new Uint8Array(SIZE.WRITE_OUT);
  view(b).setUint32(0, size, true);
  return b;
}

/** fuse_getxattr_out (the size a GETXATTR/LISTXATTR with size 0 asks for): size, padding. */
export const getxattrOut = writeOut;

/** fuse_lseek_out: offset. */
export function lseekOut(offset: number): Uint8Array {
  const b = new Uint8Array(SIZE.LSEEK_OUT);
  view(b).setBigUint64(0, BigInt(offset), true);
  return b;
}

export interface FuseStatfs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** fuse_kstatfs: blocks bfree bavail files ffree (u64), bsize namelen frsize padding spare[6] (u32). */
export function statfsOut(s: FuseStatfs): Uint8Array {
  const b = new Uint8Array(SIZE.STATFS_OUT);
  const v = view(b);
  [s.blocks, s.bfree, s.bavail, s.files, s.ffree].forEach((n, i) => {
    v.setBigUint64(8 * i, BigInt(n), true);
  });
  v.setUint32(40, s.bsize, true);
  v.setUint32(44, s.namelen, true);
  v.setUint32(48, s.frsize, true);
  return b;
}

const align8 = (n: number): number => (n + 7) & ~7;

/** The bytes one fuse_dirent (plus = fuse_direntplus) with a name of `nameLen` takes. */
export const direntSize = (nameLen: number, plus: boolean): number =>
  align8((plus ? SIZE.ENTRY_OUT : 0) + SIZE.DIRENT + nameLen);

/**
 * One fuse_dirent (ino, off, namelen, type, name, zero padding) at `at` of `out`, after a
 * fuse_entry_out when `entry` is given (fuse_direntplus). The caller checked it fits.
 */
export function writeDirent(
  out: Uint8Array,
  at: number,
  d: { ino: bigint; off: bigint; type: number; name: Uint8Array },
  entry?: { nodeid: number; attr: FuseAttr },
): number {
  let p = at;
  if (entry) {
    entryOut(entry.nodeid, entry.attr, out.subarray(p, p + SIZE.ENTRY_OUT));
    p += SIZE.ENTRY_OUT;
  }
  const v = new DataView(out.buffer, out.byteOffset + p, SIZE.DIRENT);
  v.setBigUint64(0, d.ino, true);
  v.setBigUint64(8, d.off, true);
  v.setUint32(16, d.name.length, true);
  v.setUint32(20, d.type, true);
  out.set(d.name, p + SIZE.DIRENT);
  const end = at + direntSize(d.name.length, entry !== undefined);
  out.fill(0, p + SIZE.DIRENT + d.name.length, end);
  return end;
}
