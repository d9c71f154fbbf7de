/**
 * The FUSE kernel ABI as virtio-fs carries it (include/uapi/linux/fuse.h, protocol 7.x; virtio 1.2
 * §5.11): opcodes, flag bits and the byte sizes of the structs vireo reads and writes. Offsets within
 * each struct are written out where the struct is parsed (request.ts) or encoded (reply.ts), each
 * with the header's field order beside it. Little-endian, as the kernel lays them out on x86-64.
 */

export const FUSE_KERNEL_VERSION = 7;
/** The minor version vireo speaks at most (7.31: everything below FUSE_SETXATTR_EXT's 7.33). */
export const FUSE_KERNEL_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1n;

export const OP = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SYNCFS: 50,
} as const;

/** Struct sizes in bytes. */
export const SIZE = {
  IN_HEADER: 40, // len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32, total_extlen u16, padding u16
  OUT_HEADER: 16, // len u32, error i32, unique u64
  ATTR: 88, // 6 × u64 (ino size blocks atime mtime ctime) + 10 × u32
  ENTRY_OUT: 128, // nodeid, generation, entry_valid, attr_valid u64; 2 × u32 nsec; fuse_attr
  ATTR_OUT: 104, // attr_valid u64, attr_valid_nsec u32, dummy u32, fuse_attr
  OPEN_OUT: 16, // fh u64, open_flags u32, backing_id i32
  INIT_IN_COMPAT: 16, // major, minor, max_readahead, flags (before 7.36's flags2 and unused[11])
  INIT_IN: 64,
  INIT_OUT: 64,
  FORGET_IN: 8,
  FORGET_ONE: 16,
  BATCH_FORGET_IN: 8,
  GETATTR_IN: 16,
  SETATTR_IN: 88,
  MKNOD_IN: 16,
  MKDIR_IN: 8,
  RENAME_IN: 8,
  RENAME2_IN: 16,
  LINK_IN: 8,
  OPEN_IN: 8,
  CREATE_IN: 16,
  RELEASE_IN: 24,
  FLUSH_IN: 24,
  READ_IN: 40,
  WRITE_IN: 40,
  WRITE_OUT: 8,
  STATFS_OUT: 80,
  FSYNC_IN: 16,
  SETXATTR_IN_COMPAT: 8, // size, flags (fuse_setxattr_in's 16 bytes only with FUSE_SETXATTR_EXT)
  GETXATTR_IN: 8,
  GETXATTR_OUT: 8,
  ACCESS_IN: 8,
  FALLOCATE_IN: 32,
  LSEEK_IN: 24,
  LSEEK_OUT: 8,
  DIRENT: 24, // ino u64, off u64, namelen u32, type u32, then the name padded to 8
} as const;

/** INIT flags (fuse_init_in.flags / fuse_init_out.flags). */
export const INIT = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  FLOCK_LOCKS: 1 << 10,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30,
} as const;

/** What vireo offers in INIT's reply (ANDed with what the kernel asked for). */
export const INIT_OFFERED =
  INIT.ASYNC_READ |
  INIT.ATOMIC_O_TRUNC |
  INIT.BIG_WRITES |
  INIT.AUTO_INVAL_DATA |
  INIT.DO_READDIRPLUS |
  INIT.READDIRPLUS_AUTO |
  INIT.ASYNC_DIO |
  INIT.PARALLEL_DIROPS |
  INIT.MAX_PAGES |
  INIT.CACHE_SYMLINKS;

/** fuse_setattr_in.valid. */
export const FATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

export const FOPEN = { DIRECT_IO: 1 << 0, KEEP_CACHE: 1 << 1, CACHE_DIR: 1 << 3 } as const;
export const GETATTR_FH = 1;
export const FSYNC_FDATASYNC = 1;
/** renameat2(2) flags, as RENAME2 carries them. */
export const RENAME = { NOREPLACE: 1, EXCHANGE: 2, WHITEOUT: 4 } as const;

/** The errno values replies carry (negated in fuse_out_header.error). Linux x86-64 numbers. */
export const E = {
  PERM: 1,
  NOENT: 2,
  IO: 5,
  BADF: 9,
  AGAIN: 11,
  NOMEM: 12,
  ACCES: 13,
  EXIST: 17,
  XDEV: 18,
  NOTDIR: 20,
  ISDIR: 21,
  INVAL: 22,
  NFILE: 23,
  MFILE: 24,
  FBIG: 27,
  NOSPC: 28,
  ROFS: 30,
  MLINK: 31,
  RANGE: 34,
  NAMETOOLONG: 36,
  NOSYS: 38,
  NOTEMPTY: 39,
  LOOP: 40,
  NODATA: 61,
  OVERFLOW: 75,
  OPNOTSUPP: 95,
  STALE: 116,
} as const;

/** The longest name a request may carry (NAME_MAX), and the longest symlink target (PATH_MAX - 1). */
export const NAME_MAX = 255;
export const PATH_MAX = 4096;
/** xattr names and values (XATTR_NAME_MAX, XATTR_SIZE_MAX). */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;
