/**
 * The FUSE server's two tables, both bounded: nodes (what a LOOKUP handed the guest: a node id over
 * an O_PATH fd of the host inode, with the kernel's lookup count) and handles (what OPEN/OPENDIR/CREATE
 * handed it: a file handle over an open fd). A node holds its inode by fd, so the inode cannot be
 * replaced under it (no path is ever walked again) and its number cannot be reused while the guest
 * knows it; the same host inode looked up twice (a hard link, a second name) is one node.
 *
 * Past the caps, a new node is -ENFILE and a new handle -EMFILE: a guest cannot make vireo hold more
 * host fds than the caps allow, whatever it looks up or opens.
 */
import * as fsat from '../../os/fsat.js';

export interface FsNode {
  readonly id: number;
  readonly fd: number;
  /** S_IFMT bits of the inode. */
  readonly type: number;
  readonly key: string;
  nlookup: number;
}

export interface FsHandle {
  readonly fh: number;
  readonly fd: number;
  readonly node: number;
  readonly dir: boolean;
  /** The open(2) flags it was opened with (for a snapshot's re-open). */
  readonly flags: number;
  /** A directory's stream (file-ops.ts readdir): where the fd stands and what was read ahead. */
  dirPos?: bigint | undefined;
  pending?: HostDirent[] | undefined;
}

/** One entry as getdents64 gave it: off is the host's cookie of the position after it. */
export interface HostDirent {
  ino: bigint;
  off: bigint;
  type: number;
  name: Buffer;
}

export const ROOT_ID = 1;

const keyOf = (st: fsat.Statx): string => `${st.devMajor}:${st.devMinor}:${st.ino}`;

export class NodeTable {
  private readonly byId = new Map<number, FsNode>();
  private readonly byKey = new Map<string, FsNode>();
  next = ROOT_ID + 1;

  constructor(
    readonly max: number,
    rootFd: number,
    rootStat: fsat.Statx,
  ) {
    this.insert({ id: ROOT_ID, fd: rootFd, type: rootStat.mode & fsat.S_IFMT, key: keyOf(rootStat), nlookup: 1 });
  }

  get size(): number {
    return this.byId.size;
  }

  get(id: number): FsNode | undefined {
    return this.byId.get(id);
  }

  get root(): FsNode {
    return this.byId.get(ROOT_ID) as FsNode;
  }

  *all(): IterableIterator<FsNode> {
    yield* this.byId.values();
  }

  private insert(n: FsNode): void {
    this.byId.set(n.id, n);
    this.byKey.set(n.key, n);
  }

  /**
   * A lookup found the inode `fd` (O_PATH, owned by the table from here on) with `st`: its node with
   * one more lookup, or -ENFILE when the table is full (the fd is closed).
   */
  add(fd: number, st: fsat.Statx): FsNode | number {
    const known = this.byKey.get(keyOf(st));
    if (known !== undefined) {
      fsat.close(fd);
      known.nlookup++;
      return known;
    }
    if (this.byId.size >= this.max) {
      fsat.close(fd);
      return -23; // ENFILE
    }
    const n: FsNode = { id: this.next++, fd, type: st.mode & fsat.S_IFMT, key: keyOf(st), nlookup: 1 };
    this.insert(n);
    return n;
  }

  /** Puts back a node a snapshot kept (restore): same id, fresh fd. */
  restore(id: number, fd: number, st: fsat.Statx, nlookup: number): void {
    if (id === ROOT_ID || this.byId.size >= this.max || this.byKey.has(keyOf(st))) {
      fsat.close(fd);
      return;
    }
    this.insert({ id, fd, type: st.mode & fsat.S_IFMT, key: keyOf(st), nlookup });
  }

  /** The kernel dropped `n` lookups of node `id` (FORGET); at zero the node and its fd go. */
  forget(id: number, n: number): void {
    const node = this.byId.get(id);
    if (node === undefined || id === ROOT_ID) return;
    node.nlookup = Math.max(0, node.nlookup - n);
    if (node.nlookup > 0) return;
    this.byId.delete(id);
    this.byKey.delete(node.key);
    fsat.close(node.fd);
  }

  /** Every node but the root (DESTROY, close). */
  clear(closeRoot: boolean): void {
    for (const n of this.byId.values()) if (n.id !== ROOT_ID || closeRoot) fsat.close(n.fd);
    const root = this.byId.get(ROOT_ID);
    this.byId.clear();
    this.byKey.clear();
    if (root && !closeRoot) this.insert(root);
  }
}

export class HandleTable {
  private readonly byFh = new Map<number, FsHandle>();
  next = 1;

  constructor(readonly max: number) {}

  get size(): number {
    return this.byFh.size;
  }

  get(fh: number): FsHandle | undefined {
    return this.byFh.get(fh);
  }

  *all(): IterableIterator<FsHandle> {
    yield* this.byFh.values();
  }

  /** A new handle over `fd` (owned by the table from here on), or -EMFILE when full (fd closed). */
  add(fd: number, node: number, dir: boolean, flags: number, fh = this.next++): FsHandle | number {
    if (this.byFh.size >= this.max || this.byFh.has(fh)) {
      fsat.close(fd);
      return -24; // EMFILE
    }
    const h: FsHandle = { fh, fd, node, dir, flags };
    this.byFh.set(fh, h);
    return h;
  }

  /** RELEASE: false when there was no such handle. */
  remove(fh: number): boolean {
    const h = this.byFh.get(fh);
    if (h === undefined) return false;
    this.byFh.delete(fh);
    fsat.close(h.fd);
    return true;
  }

  clear(): void {
    for (const h of this.byFh.values()) fsat.close(h.fd);
    this.byFh.clear();
  }
}
