/**
 * What the FUSE server's operations share: the share's state (its tables, read-only flag, negotiated
 * limits), name checks, and the host calls every operation builds on (a node's /proc/self/fd path,
 * a lookup relative to a directory fd, a statx as fuse_attr).
 *
 * Why /proc/self/fd/N: an operation on a node (chmod, truncate, xattrs, re-opening it for I/O) must
 * reach the very inode the node's O_PATH fd holds, not whatever a path names now. The kernel resolves
 * that magic link to the fd's inode directly, with no path walk, so a symlink or directory swapped in
 * on the host after the lookup changes nothing (virtiofsd does the same).
 */

import { E } from '../../devices/virtio/fs/abi.js';
import type { FuseReply } from '../../devices/virtio/fs/device.js';
import type { FuseAttr } from '../../devices/virtio/fs/reply.js';
import * as fsat from '../../os/fsat.js';
import type { FsNode, HandleTable, NodeTable } from './tables.js';

export interface Share {
  readonly nodes: NodeTable;
  readonly handles: HandleTable;
  readonly readOnly: boolean;
  /** The share's directory as the host resolved it at open (for a snapshot's relative paths). */
  readonly rootPath: string;
  readonly maxWrite: number;
}

export const ok = (body?: Uint8Array): FuseReply => ({ body: body ?? new Uint8Array(0) });
export const fail = (errno: number): FuseReply => ({ error: errno });
/** A host result: negative is -errno. */
export const failed = (r: number): FuseReply => ({ error: -r });

/** /proc/self/fd/N of a held fd, as a C string. */
export const procPath = (fd: number): Buffer => fsat.cstr(`/proc/self/fd/${fd}`);

/**
 * A name the guest may use for one entry of a directory: not empty, not '.' or '..', no '/'. Anything
 * else would walk somewhere other than one entry down from the directory fd.
 */
export function badName(name: Uint8Array): boolean {
  if (name.length === 0 || name.includes(0x2f) || name.includes(0)) return true;
  return (name.length === 1 && name[0] === 0x2e) || (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e);
}

/** fuse_attr's rdev: the kernel's new_encode_dev(major, minor). */
const encodeDev = (major: number, minor: number): number =>
  ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;

export function attrOf(st: fsat.Statx): FuseAttr {
  return {
    ino: st.ino,
    size: st.size,
    blocks: st.blocks,
    atime: st.atime,
    mtime: st.mtime,
    ctime: st.ctime,
    atimensec: st.atimensec,
    mtimensec: st.mtimensec,
    ctimensec: st.ctimensec,
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    rdev: encodeDev(st.rdevMajor, st.rdevMinor),
    blksize: st.blksize,
  };
}

/** The directory node a request names, or the errno: unknown (-ESTALE) or not a directory. */
export function dirNode(share: Share, id: number): FsNode | number {
  const n = share.nodes.get(id);
  if (n === undefined) return -E.STALE;
  if (n.type !== fsat.S_IFDIR) return -E.NOTDIR;
  return n;
}

/**
 * One entry below directory fd `dirfd`, opened O_PATH|O_NOFOLLOW (a symlink is the link itself, never
 * its target), entered in the node table: the node and its stat, or -errno.
 */
export function lookupAt(share: Share, dirfd: number, name: Uint8Array): { node: FsNode; st: fsat.Statx } | number {
  const fd = fsat.openat(dirfd, fsat.cstr(name), fsat.O_PATH | fsat.O_NOFOLLOW);
  if (fd < 0) return fd;
  const st = fsat.statx(fd);
  if (typeof st === 'number') {
    fsat.close(fd);
    return st;
  }
  const node = share.nodes.add(fd, st);
  if (typeof node === 'number') return node;
  return { node, st };
}
