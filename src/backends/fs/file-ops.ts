/**
 * The FUSE operations on open files and directories: OPEN, OPENDIR, CREATE, READ, WRITE, RELEASE,
 * FLUSH, FSYNC, READDIR, READDIRPLUS, FALLOCATE, LSEEK. A file is opened again from its node's fd
 * (/proc/self/fd/N: the node's own inode, never a path walked again), a new file is created one entry
 * below its directory's fd with O_NOFOLLOW (an existing symlink under that name fails with ELOOP).
 */
import { E, SIZE } from '../../devices/virtio/fs/abi.js';
import type { FuseReply } from '../../devices/virtio/fs/device.js';
import { direntSize, entryOut, lseekOut, openOut, writeDirent, writeOut } from '../../devices/virtio/fs/reply.js';
import type { FuseRequest, RequestOf } from '../../devices/virtio/fs/request.js';
import * as fsat from '../../os/fsat.js';
import { attrOf, badName, dirNode, fail, failed, ok, procPath, type Share } from './host.js';
import type { FsHandle, HostDirent } from './tables.js';

type Req<O extends FuseRequest['op']> = RequestOf<O>;

/** Flags a guest's open may not pass on: creation is CREATE's, O_DIRECT needs aligned host buffers. */
const STRIPPED =
  fsat.O_CREAT | fsat.O_EXCL | fsat.O_NOCTTY | fsat.O_DIRECT | fsat.O_PATH | fsat.O_DIRECTORY | fsat.O_NOFOLLOW;
const writes = (flags: number): boolean => (flags & fsat.O_ACCMODE) !== 0 || (flags & fsat.O_TRUNC) !== 0;

export function open(share: Share, req: Req<'open'>): FuseReply {
  const n = share.nodes.get(req.nodeid);
  if (n === undefined) return fail(E.STALE);
  if (n.type === fsat.S_IFDIR) return fail(E.ISDIR);
  // Regular files only: a FIFO or device would block or reach host hardware.
  if (n.type !== fsat.S_IFREG) return fail(n.type === fsat.S_IFLNK ? E.LOOP : E.ACCES);
  if (share.readOnly && writes(req.flags)) return fail(E.ROFS);
  const flags = req.flags & ~STRIPPED;
  const fd = fsat.openat(fsat.AT_FDCWD, procPath(n.fd), flags);
  if (fd < 0) return failed(fd);
  const h = share.handles.add(fd, n.id, false, flags);
  return typeof h === 'number' ? failed(h) : ok(openOut(h.fh, 0));
}

export function opendir(share: Share, req: Req<'opendir'>): FuseReply {
  const n = dirNode(share, req.nodeid);
  if (typeof n === 'number') return failed(n);
  const flags = fsat.O_DIRECTORY;
  const fd = fsat.openat(fsat.AT_FDCWD, procPath(n.fd), flags);
  if (fd < 0) return failed(fd);
  const h = share.handles.add(fd, n.id, true, flags);
  return typeof h === 'number' ? failed(h) : ok(openOut(h.fh, 0));
}

export function create(share: Share, req: Req<'create'>): FuseReply {
  if (badName(req.name)) return fail(E.INVAL);
  const dir = dirNode(share, req.nodeid);
  if (typeof dir === 'number') return failed(dir);
  const flags = (req.flags & ~STRIPPED) | fsat.O_CREAT | fsat.O_NOFOLLOW;
  const fd = fsat.openat(dir.fd, fsat.cstr(req.name), flags | (req.flags & fsat.O_EXCL), req.mode & 0o7777);
  if (fd < 0) return failed(fd);
  // The node is the inode just opened (its own fd re-opened O_PATH), not whatever the name holds now.
  const pfd = fsat.openat(fsat.AT_FDCWD, procPath(fd), fsat.O_PATH);
  const st = pfd < 0 ? pfd : fsat.statx(pfd);
  if (typeof st === 'number') {
    fsat.close(fd);
    if (pfd >= 0) fsat.close(pfd);
    return failed(st);
  }
  const node = share.nodes.add(pfd, st);
  if (typeof node === 'number') {
    fsat.close(fd);
    return failed(node);
  }
  const h = share.handles.add(fd, node.id, false, flags & ~(fsat.O_CREAT | fsat.O_TRUNC | fsat.O_NOFOLLOW));
  if (typeof h === 'number') {
    share.nodes.forget(node.id, 1);
    return failed(h);
  }
  const body = new Uint8Array(SIZE.ENTRY_OUT + SIZE.OPEN_OUT);
  entryOut(node.id, attrOf(st), body.subarray(0, SIZE.ENTRY_OUT));
  body.set(openOut(h.fh, 0), SIZE.ENTRY_OUT);
  return ok(body);
}

/** The handle a request names, of the kind it must be (-EBADF otherwise). */
function handle(share: Share, fh: number, dir: boolean): FsHandle | number {
  const h = share.handles.get(fh);
  return h === undefined || h.dir !== dir ? -E.BADF : h;
}

export function read(share: Share, req: Req<'read'>, maxOut: number): FuseReply {
  const h = handle(share, req.fh, false);
  if (typeof h === 'number') return failed(h);
  const buf = new Uint8Array(Math.min(req.size, maxOut, share.maxWrite));
  let done = 0;
  while (done < buf.length) {
    const r = fsat.pread(h.fd, buf.subarray(done), req.offset + done);
    if (r < 0) return done > 0 ? ok(buf.subarray(0, done)) : failed(r);
    if (r === 0) break;
    done += r;
  }
  return ok(buf.subarray(0, done));
}

export function write(share: Share, req: Req<'write'>): FuseReply {
  if (share.readOnly) return fail(E.ROFS);
  const h = handle(share, req.fh, false);
  if (typeof h === 'number') return failed(h);
  let done = 0;
  while (done < req.data.length) {
    const r = fsat.pwrite(h.fd, req.data.subarray(done), req.offset + done);
    if (r < 0) return done > 0 ? ok(writeOut(done)) : failed(r);
    if (r === 0) break;
    done += r;
  }
  return ok(writeOut(done));
}

export function release(share: Share, req: Req<'release' | 'releasedir'>): FuseReply {
  const h = share.handles.get(req.fh);
  if (h === undefined || h.dir !== (req.op === 'releasedir')) return fail(E.BADF);
  share.handles.remove(req.fh);
  return ok();
}

export function flush(share: Share, req: Req<'flush'>): FuseReply {
  return typeof handle(share, req.fh, false) === 'number' ? fail(E.BADF) : ok();
}

export function fsync(share: Share, req: Req<'fsync' | 'fsyncdir'>): FuseReply {
  const h = handle(share, req.fh, req.op === 'fsyncdir');
  if (typeof h === 'number') return failed(h);
  const r = fsat.fsync(h.fd, (req.fsyncFlags & 1) !== 0);
  return r < 0 ? failed(r) : ok();
}

export function fallocate(share: Share, req: Req<'fallocate'>): FuseReply {
  if (share.readOnly) return fail(E.ROFS);
  const h = handle(share, req.fh, false);
  if (typeof h === 'number') return failed(h);
  const r = fsat.fallocate(h.fd, req.mode, req.offset, req.length);
  return r < 0 ? failed(r) : ok();
}

export function lseek(share: Share, req: Req<'lseek'>): FuseReply {
  const h = handle(share, req.fh, false);
  if (typeof h === 'number') return failed(h);
  if (req.whence > 4) return fail(E.INVAL); // SEEK_SET, CUR, END, DATA, HOLE
  const r = fsat.lseek(h.fd, req.offset, req.whence);
  return r < 0 ? failed(r) : ok(lseekOut(r));
}

/** Bytes of getdents64 read at a time (a READDIR reply is at most what the guest's buffer takes). */
const DENTS_BUF = 32 * 1024;

/** Reads the next getdents64 batch of a directory fd: its entries, [] at the end, or -errno. */
function readDents(fd: number): HostDirent[] | number {
  const buf = Buffer.alloc(DENTS_BUF);
  const n = fsat.getdents64(fd, buf);
  if (n < 0) return n;
  const out: HostDirent[] = [];
  // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name (NUL-terminated).
  for (let p = 0; p < n; ) {
    const reclen = buf.readUInt16LE(p + 16);
    if (reclen < 20 || p + reclen > n) return -E.IO;
    const nameEnd = buf.indexOf(0, p + 19);
    const end = nameEnd < 0 || nameEnd > p + reclen ? p + reclen : nameEnd;
    out.push({
      ino: buf.readBigUInt64LE(p),
      off: buf.readBigUInt64LE(p + 8),
      type: buf.readUInt8(p + 18),
      name: Buffer.from(buf.subarray(p + 19, end)),
    });
    p += reclen;
  }
  return out;
}

/**
 * READDIR / READDIRPLUS: from the host cookie `req.cookie` (0: the start), as many entries as fit
 * the reply; each entry's off is the host's cookie of the position after it. A request that goes on
 * where the last one stopped is served from the entries read ahead and then the fd as it stands,
 * without a seek: on file systems whose cookies are positions (tmpfs), seeking back to a cookie
 * after entries were removed (rm -rf removes as it reads) would skip entries. Any other cookie is a
 * seek. READDIRPLUS looks each entry up (a node, counted as a lookup) except '.' and '..', which go
 * out with node id 0 ("no entry"), as the kernel allows; so does an entry whose lookup fails
 * (removed meanwhile, the node table full).
 */
export function readdir(share: Share, req: Req<'readdir' | 'readdirplus'>, maxOut: number): FuseReply {
  const h = handle(share, req.fh, true);
  if (typeof h === 'number') return failed(h);
  const plus = req.op === 'readdirplus';
  const room = Math.min(req.size, maxOut);
  const out = new Uint8Array(room);
  let used = 0;
  if (h.dirPos === undefined || req.cookie !== h.dirPos) {
    const s = fsat.seekDir(h.fd, req.cookie);
    if (s < 0) return failed(s);
    h.pending = [];
    h.dirPos = req.cookie;
  }
  const pending = h.pending ?? [];
  h.pending = pending;
  for (;;) {
    if (pending.length === 0) {
      const more = readDents(h.fd);
      if (typeof more === 'number') return used > 0 ? ok(out.subarray(0, used)) : failed(more);
      if (more.length === 0) break;
      pending.push(...more);
    }
    const d = pending[0] as HostDirent;
    if (used + direntSize(d.name.length, plus) > room) break; // the next request starts from it
    used = writeDirent(out, used, d, plus ? plusEntry(share, h.fd, d.name, d.ino, d.type) : undefined);
    pending.shift();
    h.dirPos = d.off;
  }
  return ok(out.subarray(0, used));
}

function plusEntry(share: Share, dirfd: number, name: Uint8Array, ino: bigint, type: number) {
  const none = { nodeid: 0, attr: { ...attrOf(emptyStat), ino, mode: type << 12 } };
  if (badName(name)) return none;
  const fd = fsat.openat(dirfd, fsat.cstr(name), fsat.O_PATH | fsat.O_NOFOLLOW);
  if (fd < 0) return none;
  const st = fsat.statx(fd);
  if (typeof st === 'number') {
    fsat.close(fd);
    return none;
  }
  const node = share.nodes.add(fd, st);
  return typeof node === 'number' ? none : { nodeid: node.id, attr: attrOf(st) };
}

const emptyStat: fsat.Statx = {
  mode: 0,
  nlink: 0,
  uid: 0,
  gid: 0,
  ino: 0n,
  size: 0,
  blocks: 0,
  blksize: 0,
  atime: 0,
  atimensec: 0,
  mtime: 0,
  mtimensec: 0,
  ctime: 0,
  ctimensec: 0,
  rdevMajor: 0,
  rdevMinor: 0,
  devMajor: 0,
  devMinor: 0,
};
