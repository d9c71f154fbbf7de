/**
 * The FUSE operations on nodes and names: LOOKUP, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR,
 * UNLINK, RMDIR, RENAME/RENAME2, LINK, STATFS, ACCESS and the xattrs. Every name is one entry below a
 * directory node's fd (badName refuses the rest); every node operation reaches the node's own inode
 * through its fd (host.ts says why /proc/self/fd).
 */
import { E, FATTR, PATH_MAX, RENAME, XATTR_SIZE_MAX } from '../../devices/virtio/fs/abi.js';
import type { FuseReply } from '../../devices/virtio/fs/device.js';
import { attrOut, entryOut, getxattrOut, statfsOut } from '../../devices/virtio/fs/reply.js';
import type { FuseRequest, Name, RequestOf } from '../../devices/virtio/fs/request.js';
import * as fsat from '../../os/fsat.js';
import { attrOf, badName, dirNode, fail, failed, lookupAt, ok, procPath, type Share } from './host.js';

type Req<O extends FuseRequest['op']> = RequestOf<O>;

/** The entry reply for `name` below `dirfd` (a LOOKUP, or the tail of a create-type operation). */
function entry(share: Share, dirfd: number, name: Name): FuseReply {
  const r = lookupAt(share, dirfd, name);
  if (typeof r === 'number') return failed(r);
  return ok(entryOut(r.node.id, attrOf(r.st)));
}

export function lookup(share: Share, req: Req<'lookup'>): FuseReply {
  if (badName(req.name)) return fail(E.INVAL);
  const dir = dirNode(share, req.nodeid);
  if (typeof dir === 'number') return failed(dir);
  return entry(share, dir.fd, req.name);
}

function stat(share: Share, id: number): fsat.Statx | number {
  const n = share.nodes.get(id);
  if (n === undefined) return -E.STALE;
  return fsat.statx(n.fd);
}

export function getattr(share: Share, req: Req<'getattr'>): FuseReply {
  const st = stat(share, req.nodeid);
  return typeof st === 'number' ? failed(st) : ok(attrOut(attrOf(st)));
}

export function setattr(share: Share, req: Req<'setattr'>): FuseReply {
  const n = share.nodes.get(req.nodeid);
  if (n === undefined) return fail(E.STALE);
  const v = req.valid;
  const isLink = n.type === fsat.S_IFLNK;
  const path = procPath(n.fd);
  if (v & FATTR.MODE) {
    if (isLink) return fail(E.OPNOTSUPP);
    const r = fsat.fchmodat(fsat.AT_FDCWD, path, req.mode & 0o7777, 0);
    if (r < 0) return failed(r);
  }
  if (v & (FATTR.UID | FATTR.GID)) {
    const uid = v & FATTR.UID ? req.uid : -1;
    const gid = v & FATTR.GID ? req.gid : -1;
    const r = fsat.fchownat(n.fd, fsat.cstr(''), uid, gid, fsat.AT_EMPTY_PATH | fsat.AT_SYMLINK_NOFOLLOW);
    if (r < 0) return failed(r);
  }
  if (v & FATTR.SIZE) {
    const h = v & FATTR.FH ? share.handles.get(req.fh) : undefined;
    let r: number;
    if (h !== undefined && h.node === n.id && !h.dir) r = fsat.ftruncate(h.fd, req.size);
    else if (n.type !== fsat.S_IFREG) r = n.type === fsat.S_IFDIR ? -E.ISDIR : -E.INVAL;
    else r = fsat.truncate(path, req.size);
    if (r < 0) return failed(r);
  }
  if (v & (FATTR.ATIME | FATTR.MTIME)) {
    if (isLink) return fail(E.OPNOTSUPP);
    const time = (set: number, now: number, s: number, ns: number): [number, number] =>
      !(v & set) ? [0, fsat.UTIME_OMIT] : v & now ? [0, fsat.UTIME_NOW] : [s, ns];
    const r = fsat.utimensat(
      fsat.AT_FDCWD,
      path,
      time(FATTR.ATIME, FATTR.ATIME_NOW, req.atime, req.atimensec),
      time(FATTR.MTIME, FATTR.MTIME_NOW, req.mtime, req.mtimensec),
      0,
    );
    if (r < 0) return failed(r);
  }
  const st = fsat.statx(n.fd);
  return typeof st === 'number' ? failed(st) : ok(attrOut(attrOf(st)));
}

export function readlink(share: Share, req: Req<'readlink'>, maxOut: number): FuseReply {
  const n = share.nodes.get(req.nodeid);
  if (n === undefined) return fail(E.STALE);
  if (n.type !== fsat.S_IFLNK) return fail(E.INVAL);
  // Cut to the guest's buffer as readlink(2) cuts to its caller's (Linux gives PAGE_SIZE - 1).
  const buf = Buffer.alloc(Math.min(PATH_MAX, maxOut));
  const r = fsat.readlinkat(n.fd, fsat.cstr(''), buf);
  return r < 0 ? failed(r) : ok(buf.subarray(0, r));
}

/** The directory a create-type operation makes its entry in, with the name checked. */
function target(share: Share, id: number, name: Name): { fd: number } | FuseReply {
  if (badName(name)) return fail(E.INVAL);
  const dir = dirNode(share, id);
  return typeof dir === 'number' ? failed(dir) : dir;
}

export function symlink(share: Share, req: Req<'symlink'>): FuseReply {
  const d = target(share, req.nodeid, req.name);
  if (!('fd' in d)) return d;
  // The target is only text stored in the link: it is never followed by vireo (every open is
  // O_NOFOLLOW or through a node's fd), so an absolute or '..' target reaches nothing on the host.
  const r = fsat.symlinkat(fsat.cstr(req.target), d.fd, fsat.cstr(req.name));
  return r < 0 ? failed(r) : entry(share, d.fd, req.name);
}

export function mknod(share: Share, req: Req<'mknod'>): FuseReply {
  const d = target(share, req.nodeid, req.name);
  if (!('fd' in d)) return d;
  // Regular files only: no device nodes, FIFOs or sockets in a share (a FIFO would block its opener).
  if ((req.mode & fsat.S_IFMT) !== fsat.S_IFREG) return fail(E.PERM);
  const r = fsat.mknodat(d.fd, fsat.cstr(req.name), req.mode & (fsat.S_IFMT | 0o7777), 0);
  return r < 0 ? failed(r) : entry(share, d.fd, req.name);
}

export function mkdir(share: Share, req: Req<'mkdir'>): FuseReply {
  const d = target(share, req.nodeid, req.name);
  if (!('fd' in d)) return d;
  const r = fsat.mkdirat(d.fd, fsat.cstr(req.name), req.mode & 0o7777);
  return r < 0 ? failed(r) : entry(share, d.fd, req.name);
}

export function remove(share: Share, req: Req<'unlink' | 'rmdir'>): FuseReply {
  const d = target(share, req.nodeid, req.name);
  if (!('fd' in d)) return d;
  const r = fsat.unlinkat(d.fd, fsat.cstr(req.name), req.op === 'rmdir' ? fsat.AT_REMOVEDIR : 0);
  return r < 0 ? failed(r) : ok();
}

export function rename(share: Share, req: Req<'rename'>): FuseReply {
  if (badName(req.name) || badName(req.newname)) return fail(E.INVAL);
  // NOREPLACE and EXCHANGE as renameat2(2) has them; WHITEOUT (overlayfs' own) needs privilege.
  if (req.flags & ~(RENAME.NOREPLACE | RENAME.EXCHANGE)) return fail(E.INVAL);
  const from = dirNode(share, req.nodeid);
  if (typeof from === 'number') return failed(from);
  const to = dirNode(share, req.newdir);
  if (typeof to === 'number') return failed(to);
  const r = fsat.renameat2(from.fd, fsat.cstr(req.name), to.fd, fsat.cstr(req.newname), req.flags);
  return r < 0 ? failed(r) : ok();
}

export function link(share: Share, req: Req<'link'>): FuseReply {
  const d = target(share, req.nodeid, req.name);
  if (!('fd' in d)) return d;
  const old = share.nodes.get(req.oldnodeid);
  if (old === undefined) return fail(E.STALE);
  if (old.type === fsat.S_IFDIR) return fail(E.PERM);
  if (old.type === fsat.S_IFLNK) return fail(E.OPNOTSUPP);
  // linkat of the fd's own inode (AT_SYMLINK_FOLLOW resolves the magic link, no CAP_DAC_READ_SEARCH needed).
  const r = fsat.linkat(fsat.AT_FDCWD, procPath(old.fd), d.fd, fsat.cstr(req.name), fsat.AT_SYMLINK_FOLLOW);
  return r < 0 ? failed(r) : entry(share, d.fd, req.name);
}

export function statfs(share: Share, req: Req<'statfs'>): FuseReply {
  const n = share.nodes.get(req.nodeid) ?? share.nodes.root;
  const s = fsat.fstatvfs(n.fd);
  if (typeof s === 'number') return failed(s);
  return ok(statfsOut({ ...s, namelen: s.namemax }));
}

export function access(share: Share, req: Req<'access'>): FuseReply {
  const n = share.nodes.get(req.nodeid);
  if (n === undefined) return fail(E.STALE);
  const W_OK = 2;
  if (share.readOnly && req.mask & W_OK) return fail(E.ROFS);
  if (n.type === fsat.S_IFLNK) return ok();
  const r = fsat.faccessat(fsat.AT_FDCWD, procPath(n.fd), req.mask & 7, 0);
  return r < 0 ? failed(r) : ok();
}

/** The path xattr calls take for a node; symlinks carry none here (their magic link is the link). */
function xattrPath(share: Share, id: number): Buffer | FuseReply {
  const n = share.nodes.get(id);
  if (n === undefined) return fail(E.STALE);
  if (n.type !== fsat.S_IFREG && n.type !== fsat.S_IFDIR) return fail(E.OPNOTSUPP);
  return procPath(n.fd);
}

export function getxattr(share: Share, req: Req<'getxattr'>, maxOut: number): FuseReply {
  const p = xattrPath(share, req.nodeid);
  if (!Buffer.isBuffer(p)) return p;
  const name = fsat.cstr(req.name);
  if (req.size === 0) {
    const r = fsat.getxattr(p, name, null);
    return r < 0 ? failed(r) : ok(getxattrOut(r));
  }
  const buf = Buffer.alloc(Math.min(req.size, maxOut, XATTR_SIZE_MAX));
  const r = fsat.getxattr(p, name, buf);
  return r < 0 ? failed(r) : ok(buf.subarray(0, r));
}

export function listxattr(share: Share, req: Req<'listxattr'>, maxOut: number): FuseReply {
  const p = xattrPath(share, req.nodeid);
  if (!Buffer.isBuffer(p)) return p;
  if (req.size === 0) {
    const r = fsat.listxattr(p, null);
    return r < 0 ? failed(r) : ok(getxattrOut(r));
  }
  const buf = Buffer.alloc(Math.min(req.size, maxOut, XATTR_SIZE_MAX));
  const r = fsat.listxattr(p, buf);
  return r < 0 ? failed(r) : ok(buf.subarray(0, r));
}

export function setxattr(share: Share, req: Req<'setxattr'>): FuseReply {
  const p = xattrPath(share, req.nodeid);
  if (!Buffer.isBuffer(p)) return p;
  const r = fsat.setxattr(p, fsat.cstr(req.name), req.value, req.flags & 3); // XATTR_CREATE | XATTR_REPLACE
  return r < 0 ? failed(r) : ok();
}

export function removexattr(share: Share, req: Req<'removexattr'>): FuseReply {
  const p = xattrPath(share, req.nodeid);
  if (!Buffer.isBuffer(p)) return p;
  const r = fsat.removexattr(p, fsat.cstr(req.name));
  return r < 0 ? failed(r) : ok();
}
