/**
 * The FUSE request parser: the bytes a driver put in a request's device-readable buffers → one typed
 * request, or the errno its reply carries. The guest is the attacker: every length is checked against
 * the bytes there are (the in-header's len against the chain, each struct against what follows the
 * header, each name against its NUL and NAME_MAX), nothing is read past the buffer, and nothing here
 * throws on any input (the property test feeds it mutated requests).
 *
 * Struct layouts follow include/uapi/linux/fuse.h; each reader names the fields it takes in order.
 */
import { E, NAME_MAX, OP, PATH_MAX, SIZE, XATTR_NAME_MAX, XATTR_SIZE_MAX } from './abi.js';

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  /** The node the request is about; Number.MAX_SAFE_INTEGER when the guest sent one above 2^53. */
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

/** Raw name bytes (no NUL): names are bytes on Linux, not necessarily UTF-8. */
export type Name = Uint8Array;

/** One union member per operation, for operations that share a body (so a switch narrows each). */
type Each<O extends string, B> = O extends unknown ? { op: O } & B : never;

export type FuseBody =
  | { op: 'init'; major: number; minor: number; maxReadahead: number; flags: number }
  | Each<'lookup' | 'unlink' | 'rmdir' | 'removexattr', { name: Name }>
  | { op: 'forget'; nlookup: number }
  | { op: 'batchForget'; forgets: { nodeid: number; nlookup: number }[] }
  | { op: 'getattr'; flags: number; fh: number }
  | {
      op: 'setattr';
      valid: number;
      fh: number;
      size: number;
      atime: number;
      mtime: number;
      atimensec: number;
      mtimensec: number;
      mode: number;
      uid: number;
      gid: number;
    }
  | Each<'readlink' | 'statfs' | 'destroy', object>
  | { op: 'symlink'; name: Name; target: Name }
  | { op: 'mknod'; mode: number; rdev: number; umask: number; name: Name }
  | { op: 'mkdir'; mode: number; umask: number; name: Name }
  | { op: 'rename'; newdir: number; flags: number; name: Name; newname: Name }
  | { op: 'link'; oldnodeid: number; name: Name }
  | Each<'open' | 'opendir', { flags: number }>
  | { op: 'read'; fh: number; offset: number; size: number }
  /** A directory offset is the host's cookie (ext4's are 63-bit hashes), kept whole. */
  | Each<'readdir' | 'readdirplus', { fh: number; cookie: bigint; size: number }>
  | { op: 'write'; fh: number; offset: number; size: number; writeFlags: number; data: Uint8Array }
  | Each<'release' | 'releasedir', { fh: number; flags: number; releaseFlags: number }>
  | Each<'fsync' | 'fsyncdir', { fh: number; fsyncFlags: number }>
  | { op: 'flush'; fh: number }
  | { op: 'setxattr'; flags: number; name: Name; value: Uint8Array }
  | { op: 'getxattr'; size: number; name: Name }
  | { op: 'listxattr'; size: number }
  | { op: 'access'; mask: number }
  | { op: 'create'; flags: number; mode: number; umask: number; name: Name }
  | { op: 'fallocate'; fh: number; offset: number; length: number; mode: number }
  | { op: 'lseek'; fh: number; offset: number; whence: number }
  | { op: 'unknown' };

export type FuseRequest = InHeader & FuseBody;

/** A request that cannot be served: the errno to answer, and the header when there was one. */
export interface ParseFailure {
  error: number;
  header?: InHeader;
}

export type ParseResult = { ok: true; req: FuseRequest } | ({ ok: false } & ParseFailure);

/** A u64 as a number: above 2^53 it cannot name anything vireo handed out, so it saturates. */
function u64(v: DataView, at: number): number {
  const n = v.getBigUint64(at, true);
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
}

class Fail {
  constructor(readonly error: number) {}
}

/** A bounded reader over one request's body (after the in-header and before any extensions). */
class Body {
  private at = 0;
  private readonly v: DataView;
  constructor(private readonly b: Uint8Array) {
    this.v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  get rest(): number {
    return this.b.length - this.at;
  }
  /** The next `n` bytes of struct (EINVAL when the body is shorter); a view for the field reads. */
  struct(n: number): {
    u32(o: number): number;
    u64(o: number): number;
    i64ok(o: number): number;
    raw(o: number): bigint;
  } {
    if (this.rest < n) throw new Fail(E.INVAL);
    const base = this.at;
    this.at += n;
    const v = this.v;
    return {
      u32: (o) => v.getUint32(base + o, true),
      u64: (o) => u64(v, base + o),
      raw: (o) => v.getBigUint64(base + o, true),
      // A file offset or length: above 2^53 - 1 no host file can have it.
      i64ok: (o) => {
        const n64 = v.getBigUint64(base + o, true);
        if (n64 > BigInt(Number.MAX_SAFE_INTEGER)) throw new Fail(E.INVAL);
        return Number(n64);
      },
    };
  }
  /** A NUL-terminated name of 1..max bytes (ENAMETOOLONG past it, EINVAL without its NUL). */
  name(max = NAME_MAX): Name {
    const nul = this.b.indexOf(0, this.at);
    if (nul < 0) throw new Fail(E.INVAL);
    const s = this.b.slice(this.at, nul);
    this.at = nul + 1;
    if (s.length === 0) throw new Fail(E.INVAL);
    if (s.length > max) throw new Fail(E.NAMETOOLONG);
    return s;
  }
  /** Exactly `n` more bytes (copied out of guest memory's copy). */
  bytes(n: number): Uint8Array {
    if (n > this.rest) throw new Fail(E.INVAL);
    const s = this.b.slice(this.at, this.at + n);
    this.at += n;
    return s;
  }
}

/** Parses the in-header alone; undefined when fewer than 40 bytes are there. */
export function parseHeader(bytes: Uint8Array): InHeader | undefined {
  if (bytes.length < SIZE.IN_HEADER) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, SIZE.IN_HEADER);
  return {
    len: v.getUint32(0, true),
    opcode: v.getUint32(4, true),
    unique: v.getBigUint64(8, true),
    nodeid: u64(v, 16),
    uid: v.getUint32(24, true),
    gid: v.getUint32(28, true),
    pid: v.getUint32(32, true),
  };
}

/**
 * One request from the device-readable bytes of its chain (`bytes` is a copy; it may be shorter than
 * the chain when the device bounded the copy, and the header's len must fit in it).
 */
export function parseRequest(bytes: Uint8Array): ParseResult {
  const header = parseHeader(bytes);
  if (header === undefined) return { ok: false, error: E.INVAL };
  if (header.len < SIZE.IN_HEADER || header.len > bytes.length) return { ok: false, error: E.INVAL, header };
  const extlen = new DataView(bytes.buffer, bytes.byteOffset + 36, 2).getUint16(0, true) * 8;
  const bodyLen = header.len - SIZE.IN_HEADER - extlen;
  // Extensions (security contexts, supplementary groups) follow the body; vireo negotiates none.
  if (bodyLen < 0) return { ok: false, error: E.INVAL, header };
  try {
    const body = parseBody(header.opcode, new Body(bytes.subarray(SIZE.IN_HEADER, SIZE.IN_HEADER + bodyLen)));
    return { ok: true, req: { ...header, ...body } as FuseRequest };
  } catch (e) {
    if (e instanceof Fail) return { ok: false, error: e.error, header };
    // Anything else is a bug here, not a guest's fault; still an answer, never a throw out of the device.
    return { ok: false, error: E.IO, header };
  }
}

function parseBody(opcode: number, b: Body): FuseBody {
  switch (opcode) {
    case OP.INIT: {
      // major, minor, max_readahead, flags (7.36 adds flags2 and unused[11]: ignored, not negotiated).
      const s = b.struct(SIZE.INIT_IN_COMPAT);
      return { op: 'init', major: s.u32(0), minor: s.u32(4), maxReadahead: s.u32(8), flags: s.u32(12) };
    }
    case OP.LOOKUP:
      return { op: 'lookup', name: b.name() };
    case OP.UNLINK:
      return { op: 'unlink', name: b.name() };
    case OP.RMDIR:
      return { op: 'rmdir', name: b.name() };
    case OP.REMOVEXATTR:
      return { op: 'removexattr', name: b.name(XATTR_NAME_MAX) };
    case OP.FORGET:
      return { op: 'forget', nlookup: b.struct(SIZE.FORGET_IN).u64(0) };
    case OP.BATCH_FORGET: {
      const count = b.struct(SIZE.BATCH_FORGET_IN).u32(0); // count, dummy
      if (count > Math.floor(b.rest / SIZE.FORGET_ONE)) throw new Fail(E.INVAL);
      const forgets: { nodeid: number; nlookup: number }[] = [];
      for (let i = 0; i < count; i++) {
        const f = b.struct(SIZE.FORGET_ONE); // nodeid, nlookup
        forgets.push({ nodeid: f.u64(0), nlookup: f.u64(8) });
      }
      return { op: 'batchForget', forgets };
    }
    case OP.GETATTR: {
      // Kernels before 7.9 sent no body; an empty one reads as "no fh".
      if (b.rest === 0) return { op: 'getattr', flags: 0, fh: 0 };
      const s = b.struct(SIZE.GETATTR_IN); // getattr_flags, dummy, fh
      return { op: 'getattr', flags: s.u32(0), fh: s.u64(8) };
    }
    case OP.SETATTR: {
      // valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
      // mode, unused4, uid, gid, unused5
      const s = b.struct(SIZE.SETATTR_IN);
      return {
        op: 'setattr',
        valid: s.u32(0),
        fh: s.u64(8),
        size: s.i64ok(16),
        atime: s.i64ok(32),
        mtime: s.i64ok(40),
        atimensec: s.u32(56),
        mtimensec: s.u32(60),
        mode: s.u32(68),
        uid: s.u32(76),
        gid: s.u32(80),
      };
    }
    case OP.READLINK:
      return { op: 'readlink' };
    case OP.STATFS:
      return { op: 'statfs' };
    case OP.DESTROY:
      return { op: 'destroy' };
    case OP.SYMLINK: {
      const name = b.name();
      return { op: 'symlink', name, target: b.name(PATH_MAX - 1) };
    }
    case OP.MKNOD: {
      const s = b.struct(SIZE.MKNOD_IN); // mode, rdev, umask, padding
      return { op: 'mknod', mode: s.u32(0), rdev: s.u32(4), umask: s.u32(8), name: b.name() };
    }
    case OP.MKDIR: {
      const s = b.struct(SIZE.MKDIR_IN); // mode, umask
      return { op: 'mkdir', mode: s.u32(0), umask: s.u32(4), name: b.name() };
    }
    case OP.RENAME: {
      const s = b.struct(SIZE.RENAME_IN); // newdir
      const newdir = s.u64(0);
      const name = b.name();
      return { op: 'rename', newdir, flags: 0, name, newname: b.name() };
    }
    case OP.RENAME2: {
      const s = b.struct(SIZE.RENAME2_IN); // newdir, flags, padding
      const newdir = s.u64(0);
      const flags = s.u32(8);
      const name = b.name();
      return { op: 'rename', newdir, flags, name, newname: b.name() };
    }
    case OP.LINK: {
      const oldnodeid = b.struct(SIZE.LINK_IN).u64(0);
      return { op: 'link', oldnodeid, name: b.name() };
    }
    case OP.OPEN:
    case OP.OPENDIR: {
      const s = b.struct(SIZE.OPEN_IN); // flags, open_flags
      return { op: opcode === OP.OPEN ? 'open' : 'opendir', flags: s.u32(0) };
    }
    case OP.READ:
    case OP.READDIR:
    case OP.READDIRPLUS: {
      // fh, offset, size, read_flags, lock_owner, flags, padding
      const s = b.struct(SIZE.READ_IN);
      if (opcode === OP.READ) return { op: 'read', fh: s.u64(0), offset: s.i64ok(8), size: s.u32(16) };
      const op = opcode === OP.READDIR ? 'readdir' : 'readdirplus';
      return { op, fh: s.u64(0), cookie: s.raw(8), size: s.u32(16) };
    }
    case OP.WRITE: {
      // fh, offset, size, write_flags, lock_owner, flags, padding; then `size` bytes of data
      const s = b.struct(SIZE.WRITE_IN);
      const size = s.u32(16);
      if (size !== b.rest) throw new Fail(E.INVAL);
      return { op: 'write', fh: s.u64(0), offset: s.i64ok(8), size, writeFlags: s.u32(20), data: b.bytes(size) };
    }
    case OP.RELEASE:
    case OP.RELEASEDIR: {
      const s = b.struct(SIZE.RELEASE_IN); // fh, flags, release_flags, lock_owner
      const op = opcode === OP.RELEASE ? 'release' : 'releasedir';
      return { op, fh: s.u64(0), flags: s.u32(8), releaseFlags: s.u32(12) };
    }
    case OP.FSYNC:
    case OP.FSYNCDIR: {
      const s = b.struct(SIZE.FSYNC_IN); // fh, fsync_flags, padding
      return { op: opcode === OP.FSYNC ? 'fsync' : 'fsyncdir', fh: s.u64(0), fsyncFlags: s.u32(8) };
    }
    case OP.FLUSH:
      return { op: 'flush', fh: b.struct(SIZE.FLUSH_IN).u64(0) }; // fh, unused, padding, lock_owner
    case OP.SETXATTR: {
      // size, flags (the 8-byte compat struct: vireo does not negotiate FUSE_SETXATTR_EXT); name; value
      const s = b.struct(SIZE.SETXATTR_IN_COMPAT);
      const size = s.u32(0);
      if (size > XATTR_SIZE_MAX) throw new Fail(E.RANGE);
      const name = b.name(XATTR_NAME_MAX);
      if (size !== b.rest) throw new Fail(E.INVAL);
      return { op: 'setxattr', flags: s.u32(4), name, value: b.bytes(size) };
    }
    case OP.GETXATTR: {
      const s = b.struct(SIZE.GETXATTR_IN); // size, padding
      return { op: 'getxattr', size: s.u32(0), name: b.name(XATTR_NAME_MAX) };
    }
    case OP.LISTXATTR:
      return { op: 'listxattr', size: b.struct(SIZE.GETXATTR_IN).u32(0) };
    case OP.ACCESS:
      return { op: 'access', mask: b.struct(SIZE.ACCESS_IN).u32(0) }; // mask, padding
    case OP.CREATE: {
      const s = b.struct(SIZE.CREATE_IN); // flags, mode, umask, open_flags
      return { op: 'create', flags: s.u32(0), mode: s.u32(4), umask: s.u32(8), name: b.name() };
    }
    case OP.FALLOCATE: {
      const s = b.struct(SIZE.FALLOCATE_IN); // fh, offset, length, mode, padding
      return { op: 'fallocate', fh: s.u64(0), offset: s.i64ok(8), length: s.i64ok(16), mode: s.u32(24) };
    }
    case OP.LSEEK: {
      const s = b.struct(SIZE.LSEEK_IN); // fh, offset, whence, padding
      return { op: 'lseek', fh: s.u64(0), offset: s.i64ok(8), whence: s.u32(16) };
    }
    default:
      return { op: 'unknown' };
  }
}

/** The request of one operation (or a few sharing a body): `RequestOf<'lookup'>`. */
export type RequestOf<O extends FuseRequest['op']> = FuseRequest & { op: O };
