/**
 * A FUSE server for one host directory (virtio-fs's backend, libkrun's and virtiofsd's
 * "passthrough"): INIT's negotiation, the dispatch of every request to its operation (node-ops.ts,
 * file-ops.ts), FORGET and DESTROY, the read-only guard, and the tables' snapshot (persist.ts).
 *
 * The guest is the attacker. Nothing is reached by a path the guest wrote: the share's root is an
 * O_PATH fd, each LOOKUP opens one checked name below a directory node's fd with O_NOFOLLOW, and
 * each later operation reaches its node's inode through that fd. A symlink in the share is only ever
 * read as a link (READLINK), never followed by vireo; '..', '.', '/' in names are refused; the node
 * and handle tables are capped. The guest's uid/gid are not assumed on the host: vireo serves every
 * request as the user it runs as (it has no privilege to switch to the guest's ids), so the host's
 * own permission checks are the ones that hold.
 *
 * The calls are synchronous (koffi). In a VM the server runs on a worker thread of its own
 * (worker.ts), so a slow host file system holds up only its own share; tests also run it inline,
 * on the device's thread.
 */
import { E, FUSE_KERNEL_VERSION, INIT, INIT_OFFERED } from '../../devices/virtio/fs/abi.js';
import type { FuseReply, FuseServer } from '../../devices/virtio/fs/device.js';
import { initOut } from '../../devices/virtio/fs/reply.js';
import type { FuseRequest } from '../../devices/virtio/fs/request.js';
import type { FsServerState } from '../../devices/virtio/fs/state.js';
import * as fsat from '../../os/fsat.js';
import * as file from './file-ops.js';
import { fail, ok, type Share } from './host.js';
import * as node from './node-ops.js';
import { restoreTables, saveTables } from './persist.js';
import { HandleTable, NodeTable } from './tables.js';

/** What the I/O thread builds a server from (plain data: the root fd is the VMM's, already open). */
export interface ShareSpec {
  /** An O_PATH directory fd of the share, owned (and closed) by whoever opened it. */
  rootFd: number;
  /** The directory's resolved path (a snapshot keeps node paths relative to it). */
  rootPath: string;
  readOnly: boolean;
  maxNodes?: number;
  maxHandles?: number;
  maxWrite?: number;
}

export const DEFAULT_MAX_NODES = 16384;
export const DEFAULT_MAX_HANDLES = 4096;
/** Largest WRITE and READ (INIT's max_write; the kernel splits larger I/O). */
export const DEFAULT_MAX_WRITE = 1024 * 1024;

const WRITE_OPS = new Set<FuseRequest['op']>([
  'setattr',
  'symlink',
  'mknod',
  'mkdir',
  'unlink',
  'rmdir',
  'rename',
  'link',
  'write',
  'create',
  'fallocate',
  'setxattr',
  'removexattr',
]);

export class PassthroughFs implements FuseServer {
  readonly maxWrite: number;
  private readonly share: Share;

  constructor(spec: ShareSpec) {
    const st = fsat.statx(spec.rootFd);
    if (typeof st === 'number' || (st.mode & fsat.S_IFMT) !== fsat.S_IFDIR)
      throw new Error(`virtio-fs share ${spec.rootPath} is not a directory`);
    this.maxWrite = spec.maxWrite ?? DEFAULT_MAX_WRITE;
    this.share = {
      nodes: new NodeTable(spec.maxNodes ?? DEFAULT_MAX_NODES, spec.rootFd, st),
      handles: new HandleTable(spec.maxHandles ?? DEFAULT_MAX_HANDLES),
      readOnly: spec.readOnly,
      rootPath: spec.rootPath,
      maxWrite: this.maxWrite,
    };
  }

  /** Nodes and handles held now (tests and counters). */
  get held(): { nodes: number; handles: number } {
    return { nodes: this.share.nodes.size, handles: this.share.handles.size };
  }

  handle(req: FuseRequest, maxOut: number): FuseReply {
    const s = this.share;
    if (s.readOnly && WRITE_OPS.has(req.op)) return fail(E.ROFS);
    switch (req.op) {
      case 'init':
        return this.init(req);
      case 'destroy':
        s.handles.clear();
        s.nodes.clear(false);
        return ok();
      case 'forget':
        s.nodes.forget(req.nodeid, req.nlookup);
        return { none: true };
      case 'batchForget':
        for (const f of req.forgets) s.nodes.forget(f.nodeid, f.nlookup);
        return { none: true };
      case 'lookup':
        return node.lookup(s, req);
      case 'getattr':
        return node.getattr(s, req);
      case 'setattr':
        return node.setattr(s, req);
      case 'readlink':
        return node.readlink(s, req, maxOut);
      case 'symlink':
        return node.symlink(s, req);
      case 'mknod':
        return node.mknod(s, req);
      case 'mkdir':
        return node.mkdir(s, req);
      case 'unlink':
      case 'rmdir':
        return node.remove(s, req);
      case 'rename':
        return node.rename(s, req);
      case 'link':
        return node.link(s, req);
      case 'statfs':
        return node.statfs(s, req);
      case 'access':
        return node.access(s, req);
      case 'getxattr':
        return node.getxattr(s, req, maxOut);
      case 'listxattr':
        return node.listxattr(s, req, maxOut);
      case 'setxattr':
        return node.setxattr(s, req);
      case 'removexattr':
        return node.removexattr(s, req);
      case 'open':
        return file.open(s, req);
      case 'opendir':
        return file.opendir(s, req);
      case 'create':
        return file.create(s, req);
      case 'read':
        return file.read(s, req, maxOut);
      case 'write':
        return file.write(s, req);
      case 'release':
      case 'releasedir':
        return file.release(s, req);
      case 'flush':
        return file.flush(s, req);
      case 'fsync':
      case 'fsyncdir':
        return file.fsync(s, req);
      case 'readdir':
      case 'readdirplus':
        return file.readdir(s, req, maxOut);
      case 'fallocate':
        return file.fallocate(s, req);
      case 'lseek':
        return file.lseek(s, req);
      case 'unknown':
        return fail(E.NOSYS);
    }
  }

  /** INIT: major 7 (a newer kernel is told 7 and tries again), the smaller minor, the common flags. */
  private init(req: FuseRequest & { op: 'init' }): FuseReply {
    const pages = Math.ceil(this.maxWrite / 4096);
    const out = {
      minor: req.minor,
      maxReadahead: Math.min(req.maxReadahead, this.maxWrite),
      flags: req.flags & INIT_OFFERED,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: this.maxWrite,
      maxPages: Math.min(pages, 0xffff),
    };
    if (req.major < FUSE_KERNEL_VERSION) return fail(71); // EPROTO
    if (req.major > FUSE_KERNEL_VERSION) return ok(initOut({ ...out, flags: 0 }).subarray(0, 8));
    if (!(out.flags & INIT.MAX_PAGES)) out.maxPages = 0;
    return ok(initOut(out));
  }

  saveState(): FsServerState {
    return saveTables(this.share);
  }

  restoreState(state: FsServerState): void {
    restoreTables(this.share, state);
  }

  /** Closes every fd the tables hold but the root's (its opener closes it). */
  close(): void {
    this.share.handles.clear();
    this.share.nodes.clear(false);
  }
}
