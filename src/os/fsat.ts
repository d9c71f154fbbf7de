/**
 * File-system calls relative to directory fds (the *at family), for serving a shared directory
 * (backends/fs/): every path is one component below an fd the caller holds, so nothing here walks a
 * path the guest wrote. Paths are NUL-terminated byte Buffers (names are bytes, not UTF-8 strings).
 * Each call returns its result, or -errno: a file server answers errno values, it does not throw them.
 */
import { errno, libc } from './libc.js';

const c_openat = libc.func('openat', 'int', ['int', 'void *', 'int', 'uint32_t']);
const c_statx = libc.func('statx', 'int', ['int', 'void *', 'int', 'uint32_t', 'void *']);
const c_mkdirat = libc.func('mkdirat', 'int', ['int', 'void *', 'uint32_t']);
const c_mknodat = libc.func('mknodat', 'int', ['int', 'void *', 'uint32_t', 'uint64_t']);
const c_unlinkat = libc.func('unlinkat', 'int', ['int', 'void *', 'int']);
const c_renameat2 = libc.func('renameat2', 'int', ['int', 'void *', 'int', 'void *', 'uint32_t']);
const c_symlinkat = libc.func('symlinkat', 'int', ['void *', 'int', 'void *']);
const c_readlinkat = libc.func('readlinkat', 'intptr_t', ['int', 'void *', 'void *', 'size_t']);
const c_linkat = libc.func('linkat', 'int', ['int', 'void *', 'int', 'void *', 'int']);
const c_fchmodat = libc.func('fchmodat', 'int', ['int', 'void *', 'uint32_t', 'int']);
const c_fchownat = libc.func('fchownat', 'int', ['int', 'void *', 'uint32_t', 'uint32_t', 'int']);
const c_utimensat = libc.func('utimensat', 'int', ['int', 'void *', 'void *', 'int']);
const c_truncate = libc.func('truncate', 'int', ['void *', 'int64_t']);
const c_ftruncate = libc.func('ftruncate', 'int', ['int', 'int64_t']);
const c_fstatvfs = libc.func('fstatvfs', 'int', ['int', 'void *']);
const c_getdents64 = libc.func('getdents64', 'intptr_t', ['int', 'void *', 'size_t']);
const c_lseek = libc.func('lseek', 'int64_t', ['int', 'int64_t', 'int']);
const c_pread = libc.func('pread', 'intptr_t', ['int', 'void *', 'size_t', 'int64_t']);
const c_pwrite = libc.func('pwrite', 'intptr_t', ['int', 'void *', 'size_t', 'int64_t']);
const c_fsync = libc.func('fsync', 'int', ['int']);
const c_fdatasync = libc.func('fdatasync', 'int', ['int']);
const c_fallocate = libc.func('fallocate', 'int', ['int', 'int', 'int64_t', 'int64_t']);
const c_close = libc.func('close', 'int', ['int']);
const c_faccessat = libc.func('faccessat', 'int', ['int', 'void *', 'int', 'int']);
const c_getxattr = libc.func('getxattr', 'intptr_t', ['void *', 'void *', 'void *', 'size_t']);
const c_setxattr = libc.func('setxattr', 'int', ['void *', 'void *', 'void *', 'size_t', 'int']);
const c_listxattr = libc.func('listxattr', 'intptr_t', ['void *', 'void *', 'size_t']);
const c_removexattr = libc.func('removexattr', 'int', ['void *', 'void *']);

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;
export const O_ACCMODE = 3;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECT = 0o40000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

const ret = (r: number | bigint): number => {
  const n = Number(r);
  return n < 0 ? -errno() : n;
};

/** A NUL-terminated C string of `name`'s bytes. */
export function cstr(name: Uint8Array | string): Buffer {
  const b = typeof name === 'string' ? Buffer.from(name, 'utf8') : name;
  const out = Buffer.alloc(b.length + 1);
  out.set(b);
  return out;
}
const EMPTY = cstr('');

export const openat = (dirfd: number, name: Buffer, flags: number, mode = 0): number =>
  ret(c_openat(dirfd, name, flags | O_CLOEXEC, mode) as number);
export const close = (fd: number): void => {
  c_close(fd);
};

/** What statx gives a file server (struct statx, include/uapi/linux/stat.h). */
export interface Statx {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  ino: bigint;
  size: number;
  blocks: number;
  blksize: number;
  atime: number;
  atimensec: number;
  mtime: number;
  mtimensec: number;
  ctime: number;
  ctimensec: number;
  rdevMajor: number;
  rdevMinor: number;
  devMajor: number;
  devMinor: number;
}

const STATX_BASIC_STATS = 0x7ff;
const statxBuf = Buffer.alloc(256);

/**
 * statx(2) of `fd` itself (AT_EMPTY_PATH; an O_PATH fd of a symlink gives the symlink's own), or of
 * `name` below it without following a last symlink. Layout: mask, blksize (u32), attributes (u64),
 * nlink, uid, gid (u32), mode (u16), ino @32, size @40, blocks @48, attributes_mask @56 (u64),
 * atime @64, btime @80, ctime @96, mtime @112 ({i64 sec, u32 nsec, i32}), rdev @128, dev @136.
 */
export function statx(fd: number, name?: Buffer): Statx | number {
  const r = c_statx(
    fd,
    name ?? EMPTY,
    name ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW,
    STATX_BASIC_STATS,
    statxBuf,
  ) as number;
  if (r < 0) return -errno();
  const b = statxBuf;
  return {
    blksize: b.readUInt32LE(4),
    nlink: b.readUInt32LE(16),
    uid: b.readUInt32LE(20),
    gid: b.readUInt32LE(24),
    mode: b.readUInt16LE(28),
    ino: b.readBigUInt64LE(32),
    size: Number(b.readBigUInt64LE(40)),
    blocks: Number(b.readBigUInt64LE(48)),
    atime: Number(b.readBigInt64LE(64)),
    atimensec: b.readUInt32LE(72),
    ctime: Number(b.readBigInt64LE(96)),
    ctimensec: b.readUInt32LE(104),
    mtime: Number(b.readBigInt64LE(112)),
    mtimensec: b.readUInt32LE(120),
    rdevMajor: b.readUInt32LE(128),
    rdevMinor: b.readUInt32LE(132),
    devMajor: b.readUInt32LE(136),
    devMinor: b.readUInt32LE(140),
  };
}

export const mkdirat = (dirfd: number, name: Buffer, mode: number): number =>
  ret(c_mkdirat(dirfd, name, mode) as number);
export const mknodat = (dirfd: number, name: Buffer, mode: number, dev: number): number =>
  ret(c_mknodat(dirfd, name, mode, dev) as number);
export const unlinkat = (dirfd: number, name: Buffer, flags: number): number =>
  ret(c_unlinkat(dirfd, name, flags) as number);
export const renameat2 = (olddir: number, oldname: Buffer, newdir: number, newname: Buffer, flags: number): number =>
  ret(c_renameat2(olddir, oldname, newdir, newname, flags) as number);
export const symlinkat = (target: Buffer, dirfd: number, name: Buffer): number =>
  ret(c_symlinkat(target, dirfd, name) as number);
export const linkat = (olddir: number, oldname: Buffer, newdir: number, newname: Buffer, flags: number): number =>
  ret(c_linkat(olddir, oldname, newdir, newname, flags) as number);
export const fchmodat = (dirfd: number, name: Buffer, mode: number, flags: number): number =>
  ret(c_fchmodat(dirfd, name, mode, flags) as number);
export const fchownat = (dirfd: number, name: Buffer, uid: number, gid: number, flags: number): number =>
  ret(c_fchownat(dirfd, name, uid >>> 0, gid >>> 0, flags) as number);
export const truncate = (path: Buffer, len: number): number => ret(c_truncate(path, len) as number);
export const ftruncate = (fd: number, len: number): number => ret(c_ftruncate(fd, len) as number);
export const fsync = (fd: number, dataOnly: boolean): number => ret((dataOnly ? c_fdatasync : c_fsync)(fd) as number);
export const fallocate = (fd: number, mode: number, offset: number, len: number): number =>
  ret(c_fallocate(fd, mode, offset, len) as number);
export const lseek = (fd: number, offset: number, whence: number): number => ret(c_lseek(fd, offset, whence) as bigint);
export const faccessat = (dirfd: number, name: Buffer, mode: number, flags: number): number =>
  ret(c_faccessat(dirfd, name, mode, flags) as number);

/** utimensat(2); each time is [sec, nsec] or UTIME_NOW / UTIME_OMIT in nsec. */
export function utimensat(
  dirfd: number,
  name: Buffer,
  atime: [number, number],
  mtime: [number, number],
  flags: number,
): number {
  const t = Buffer.alloc(32);
  t.writeBigInt64LE(BigInt(atime[0]), 0);
  t.writeBigInt64LE(BigInt(atime[1]), 8);
  t.writeBigInt64LE(BigInt(mtime[0]), 16);
  t.writeBigInt64LE(BigInt(mtime[1]), 24);
  return ret(c_utimensat(dirfd, name, t, flags) as number);
}

export const readlinkat = (dirfd: number, name: Buffer, buf: Buffer): number =>
  ret(c_readlinkat(dirfd, name, buf, buf.length) as number);
export const getdents64 = (fd: number, buf: Buffer): number => ret(c_getdents64(fd, buf, buf.length) as number);
export const pread = (fd: number, buf: Uint8Array, offset: number): number =>
  ret(c_pread(fd, buf, buf.length, offset) as number);
export const pwrite = (fd: number, buf: Uint8Array, offset: number): number =>
  ret(c_pwrite(fd, buf, buf.length, offset) as number);

export interface Statvfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

/** fstatvfs(3): struct statvfs on x86-64 is 11 unsigned longs (bsize frsize blocks bfree bavail files ffree favail fsid flag namemax). */
export function fstatvfs(fd: number): Statvfs | number {
  const b = Buffer.alloc(112);
  if ((c_fstatvfs(fd, b) as number) < 0) return -errno();
  const f = (i: number): number => Number(b.readBigUInt64LE(8 * i));
  return {
    bsize: f(0),
    frsize: f(1),
    blocks: f(2),
    bfree: f(3),
    bavail: f(4),
    files: f(5),
    ffree: f(6),
    namemax: f(10),
  };
}

export const getxattr = (path: Buffer, name: Buffer, value: Buffer | null): number =>
  ret(c_getxattr(path, name, value, value?.length ?? 0) as number);
export const setxattr = (path: Buffer, name: Buffer, value: Uint8Array, flags: number): number =>
  ret(c_setxattr(path, name, value, value.length, flags) as number);
export const listxattr = (path: Buffer, list: Buffer | null): number =>
  ret(c_listxattr(path, list, list?.length ?? 0) as number);
export const removexattr = (path: Buffer, name: Buffer): number => ret(c_removexattr(path, name) as number);

const c_lseekBig = libc.func('lseek', 'int64_t', ['int', 'int64_t', 'int']);
/** lseek(fd, cookie, SEEK_SET) on a directory: the cookie is a 64-bit value (kept as a bigint). */
export function seekDir(fd: number, cookie: bigint): number {
  const r = c_lseekBig(fd, BigInt.asIntN(64, cookie), 0) as bigint | number;
  return BigInt(r) < 0n ? -errno() : 0;
}
