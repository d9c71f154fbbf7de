/**
 * The FUSE tables across a snapshot. A restored guest still holds the node ids and file handles it
 * had, but the host fds behind them cannot travel, so each is saved by what can name it again:
 *
 * - a node by its path below the share at the moment of the snapshot (the kernel's own name for the
 *   fd's inode, /proc/self/fd/N, made relative to the share) and its lookup count. A node whose
 *   inode has no name inside the share any more (removed, or moved out of it on the host) is not
 *   saved: the restored guest gets -ESTALE for it, as an NFS client does for a file removed on the
 *   server. Two nodes that come back as one inode (hard links) keep the first; the second is stale.
 * - a handle by its node and open flags; it is opened again from the restored node (O_TRUNC
 *   dropped: re-opening must not cut a file the guest had open).
 *
 * A restore walks each saved path one component at a time from the share's root fd, each with
 * O_NOFOLLOW and the same name checks as a LOOKUP, so a saved record (untrusted input) cannot name
 * anything outside the share either; a path that no longer resolves leaves its node stale.
 */
import { PATH_MAX } from '../../devices/virtio/fs/abi.js';
import type { FsServerState } from '../../devices/virtio/fs/state.js';
import * as fsat from '../../os/fsat.js';
import { badName, procPath, type Share } from './host.js';
import { ROOT_ID } from './tables.js';

/** The node's path below the share as bytes, or undefined when it has none there now. */
function pathBelow(share: Share, fd: number): Buffer | undefined {
  const st = fsat.statx(fd);
  if (typeof st === 'number' || ((st.mode & fsat.S_IFMT) !== fsat.S_IFDIR && st.nlink === 0)) return undefined;
  const buf = Buffer.alloc(PATH_MAX);
  const n = fsat.readlinkat(fsat.AT_FDCWD, procPath(fd), buf);
  if (n < 0) return undefined;
  const p = buf.subarray(0, n);
  const root = Buffer.from(`${share.rootPath}/`, 'utf8');
  if (p.length <= root.length || !p.subarray(0, root.length).equals(root)) return undefined;
  return Buffer.from(p.subarray(root.length));
}

export function saveTables(share: Share): FsServerState {
  const nodes: FsServerState['nodes'] = [];
  for (const n of share.nodes.all()) {
    if (n.id === ROOT_ID) continue;
    const p = pathBelow(share, n.fd);
    if (p !== undefined) nodes.push({ id: n.id, nlookup: n.nlookup, path: p.toString('hex') });
  }
  const handles: FsServerState['handles'] = [];
  for (const h of share.handles.all()) handles.push({ fh: h.fh, node: h.node, flags: h.flags, dir: h.dir });
  return { nodes, handles, nextNode: share.nodes.next, nextHandle: share.handles.next };
}

/** Opens `path` (relative, '/'-separated bytes) below the root one checked component at a time. */
function walk(share: Share, path: Buffer): { fd: number; st: fsat.Statx } | undefined {
  const parts: Buffer[] = [];
  for (let i = 0, start = 0; i <= path.length; i++)
    if (i === path.length || path[i] === 0x2f) {
      parts.push(path.subarray(start, i));
      start = i + 1;
    }
  let dirfd = share.nodes.root.fd;
  let owned = -1;
  for (let i = 0; i < parts.length; i++) {
    const name = parts[i] as Buffer;
    const last = i === parts.length - 1;
    if (badName(name)) break;
    const fd = fsat.openat(dirfd, fsat.cstr(name), fsat.O_PATH | fsat.O_NOFOLLOW | (last ? 0 : fsat.O_DIRECTORY));
    if (owned >= 0) fsat.close(owned);
    owned = -1;
    if (fd < 0) return undefined;
    if (last) {
      const st = fsat.statx(fd);
      if (typeof st === 'number') {
        fsat.close(fd);
        return undefined;
      }
      return { fd, st };
    }
    dirfd = owned = fd;
  }
  if (owned >= 0) fsat.close(owned);
  return undefined;
}

export function restoreTables(share: Share, state: FsServerState): void {
  share.handles.clear();
  share.nodes.clear(false);
  for (const n of state.nodes) {
    if (n.id === ROOT_ID || n.nlookup === 0) continue;
    const found = walk(share, Buffer.from(n.path, 'hex'));
    if (found !== undefined) share.nodes.restore(n.id, found.fd, found.st, n.nlookup);
  }
  for (const h of state.handles) {
    const node = share.nodes.get(h.node);
    if (node === undefined) continue;
    // Through the node's /proc/self/fd link: O_NOFOLLOW there would refuse the magic link itself.
    const flags = h.flags & ~(fsat.O_TRUNC | fsat.O_CREAT | fsat.O_EXCL | fsat.O_NOFOLLOW | fsat.O_PATH);
    if (share.readOnly && (flags & fsat.O_ACCMODE) !== 0) continue;
    const fd = fsat.openat(fsat.AT_FDCWD, procPath(node.fd), flags);
    if (fd >= 0) share.handles.add(fd, node.id, h.dir, flags, h.fh);
  }
  share.nodes.next = Math.max(share.nodes.next, state.nextNode);
  share.handles.next = Math.max(share.handles.next, state.nextHandle);
}
