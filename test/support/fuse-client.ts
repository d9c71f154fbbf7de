/**
 * A FUSE client for tests: drives a virtio-fs device through the mock MMIO driver the way Linux's
 * virtiofs does (one chain per request: the in-header and arguments readable, the out-header and
 * reply writable, on request queue 1; FORGET on the high-priority queue 0), and encodes/decodes the
 * structs of include/uapi/linux/fuse.h.
 */
import { OP } from '../../src/devices/virtio/fs/abi.js';
import { type FuseQueue, type FuseServer, VirtioFs } from '../../src/devices/virtio/fs/device.js';
import type { RegionDescriptor } from '../../src/memory/guest-memory.js';
import type { MockSplitQueue } from './mock-virtq.js';
import { MockMmioDriver } from './virtio-driver.js';

export const u32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, true);
  return b;
};
export const u64 = (n: number | bigint): Uint8Array => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(n)), true);
  return b;
};
export const cat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
/** A NUL-terminated name. */
export const cname = (s: string | Uint8Array): Uint8Array =>
  cat(typeof s === 'string' ? Buffer.from(s, 'utf8') : s, new Uint8Array(1));
export const zeros = (n: number): Uint8Array => new Uint8Array(n);

export interface Reply {
  error: number;
  body: Uint8Array;
  unique: bigint;
  /** The used length the device returned. */
  used: number;
}

/** fuse_attr from `b` at `at`. */
export function attrAt(b: Uint8Array, at: number) {
  const v = new DataView(b.buffer, b.byteOffset + at, 88);
  return {
    ino: v.getBigUint64(0, true),
    size: Number(v.getBigUint64(8, true)),
    mode: v.getUint32(60, true),
    nlink: v.getUint32(64, true),
    mtime: Number(v.getBigInt64(32, true)),
  };
}

const IN_AREA = 2 * 1024 * 1024;

export class FuseClient {
  readonly drv: MockMmioDriver;
  readonly device: VirtioFs;
  private readonly hq: MockSplitQueue;
  private readonly rq: MockSplitQueue;
  private readonly inAddr: number;
  private readonly outAddr: number;
  private unique = 1n;

  /** The worker, when the server runs on one (its replies come back after drain()). */
  readonly queue: FuseQueue | undefined;

  /** `server`, or a function that makes a worker over the guest memory's mappings. */
  constructor(server: FuseServer | ((memory: RegionDescriptor[]) => FuseQueue), tag = 'share') {
    let queue: FuseQueue | undefined;
    let device: VirtioFs | undefined;
    this.drv = new MockMmioDriver((memory) => {
      if (typeof server === 'function') queue = server(memory);
      device = new VirtioFs(queue ?? (server as FuseServer), { tag });
      return device;
    }, 16 << 20);
    if (device === undefined) throw new Error('the mock driver did not build the device');
    this.device = device;
    this.queue = queue;
    const qs = this.drv.probe(64);
    this.hq = qs[0] as MockSplitQueue;
    this.rq = qs[1] as MockSplitQueue;
    this.inAddr = this.drv.alloc(IN_AREA, 4096);
    this.outAddr = this.drv.alloc(IN_AREA, 4096);
  }

  close(): void {
    this.drv.release();
  }

  /** Sends raw request bytes with `outLen` writable bytes; the device's answer. */
  raw(bytes: Uint8Array, outLen = 64 * 1024, q = 1): Reply {
    const queue = q === 0 ? this.hq : this.rq;
    this.drv.mem.slice(this.inAddr, bytes.length).set(bytes);
    this.drv.mem.slice(this.outAddr, Math.max(outLen, 16)).fill(0xee);
    const bufs = [{ addr: this.inAddr, len: bytes.length, write: false }];
    if (outLen > 0) bufs.push({ addr: this.outAddr, len: outLen, write: true });
    const head = queue.addChain(bufs);
    if (head === undefined) throw new Error('queue full');
    this.drv.notify(q);
    this.queue?.drain();
    const used = queue.takeUsed();
    queue.recycle(head);
    if (used.length !== 1 || used[0]?.id !== head) throw new Error(`expected one used element, got ${used.length}`);
    const len = used[0].len;
    if (len < 16) return { error: 0, body: new Uint8Array(0), unique: 0n, used: len };
    const out = this.drv.mem.readView(this.outAddr, len).slice();
    const v = new DataView(out.buffer);
    if (v.getUint32(0, true) !== len) throw new Error(`out-header len ${v.getUint32(0, true)} != used ${len}`);
    return { error: -v.getInt32(4, true) | 0, unique: v.getBigUint64(8, true), body: out.subarray(16), used: len };
  }

  /** One request: in-header (len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding) + body. */
  request(opcode: number, nodeid: number, body: Uint8Array = zeros(0), outLen = 64 * 1024, q = 1): Reply {
    const unique = this.unique++;
    const hdr = cat(u32(40 + body.length), u32(opcode), u64(unique), u64(nodeid), u32(0), u32(0), u32(1), u32(0));
    const r = this.raw(cat(hdr, body), outLen, q);
    if (r.used >= 16 && r.unique !== unique) throw new Error(`reply unique ${r.unique} != ${unique}`);
    return r;
  }

  init(minor = 31, flags = 0xffffffff): Reply {
    return this.request(OP.INIT, 0, cat(u32(7), u32(minor), u32(128 * 1024), u32(flags)));
  }

  /** LOOKUP: the node id (0 on error) and the error. */
  lookup(
    parent: number,
    name: string | Uint8Array,
  ): { error: number; nodeid: number; attr?: ReturnType<typeof attrAt> } {
    const r = this.request(OP.LOOKUP, parent, cname(name));
    if (r.error !== 0) return { error: r.error, nodeid: 0 };
    return {
      error: 0,
      nodeid: Number(new DataView(r.body.buffer, r.body.byteOffset).getBigUint64(0, true)),
      attr: attrAt(r.body, 40),
    };
  }

  entryNode(r: Reply): number {
    return r.error !== 0 ? 0 : Number(new DataView(r.body.buffer, r.body.byteOffset).getBigUint64(0, true));
  }

  /** fh from an OPEN/OPENDIR reply (fuse_open_out at `at`). */
  fhOf(r: Reply, at = 0): number {
    return r.error !== 0 ? 0 : Number(new DataView(r.body.buffer, r.body.byteOffset + at).getBigUint64(0, true));
  }

  open(nodeid: number, flags: number): { error: number; fh: number } {
    const r = this.request(OP.OPEN, nodeid, cat(u32(flags), u32(0)));
    return { error: r.error, fh: this.fhOf(r) };
  }

  opendir(nodeid: number): { error: number; fh: number } {
    const r = this.request(OP.OPENDIR, nodeid, cat(u32(0), u32(0)));
    return { error: r.error, fh: this.fhOf(r) };
  }

  /** CREATE (flags, mode, umask, open_flags, name): node, fh. */
  create(parent: number, name: string, flags = 0o102, mode = 0o644): { error: number; nodeid: number; fh: number } {
    const r = this.request(OP.CREATE, parent, cat(u32(flags), u32(mode), u32(0), u32(0), cname(name)));
    return { error: r.error, nodeid: this.entryNode(r), fh: this.fhOf(r, 128) };
  }

  /** READ/READDIR/READDIRPLUS in: fh, offset, size, read_flags, lock_owner, flags, padding. */
  readIn(fh: number, offset: number | bigint, size: number): Uint8Array {
    return cat(u64(fh), u64(offset), u32(size), u32(0), u64(0), u32(0), u32(0));
  }

  read(fh: number, offset: number, size: number): Reply {
    return this.request(OP.READ, 0, this.readIn(fh, offset, size), size + 16);
  }

  write(fh: number, offset: number, data: Uint8Array): Reply {
    return this.request(OP.WRITE, 0, cat(u64(fh), u64(offset), u32(data.length), u32(0), u64(0), u32(0), u32(0), data));
  }

  release(fh: number, dir = false): Reply {
    return this.request(dir ? OP.RELEASEDIR : OP.RELEASE, 0, cat(u64(fh), u32(0), u32(0), u64(0)));
  }

  mkdir(parent: number, name: string, mode = 0o755): Reply {
    return this.request(OP.MKDIR, parent, cat(u32(mode), u32(0), cname(name)));
  }

  forget(nodeid: number, n: number): Reply {
    return this.request(OP.FORGET, nodeid, u64(n), 0, 0);
  }

  /** READDIR(PLUS) entries: names, offsets and (plus) node ids. */
  readdir(
    fh: number,
    plus = false,
    cookie: bigint = 0n,
    size = 8192,
  ): { error: number; entries: { name: string; off: bigint; nodeid: number; type: number }[] } {
    const r = this.request(plus ? OP.READDIRPLUS : OP.READDIR, 0, this.readIn(fh, cookie, size), size + 16);
    const entries: { name: string; off: bigint; nodeid: number; type: number }[] = [];
    const b = r.body;
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    for (let p = 0; p < b.length; ) {
      const nodeid = plus ? Number(v.getBigUint64(p, true)) : 0;
      const d = plus ? p + 128 : p;
      const off = v.getBigUint64(d + 8, true);
      const namelen = v.getUint32(d + 16, true);
      const type = v.getUint32(d + 20, true);
      entries.push({ name: Buffer.from(b.subarray(d + 24, d + 24 + namelen)).toString('utf8'), off, nodeid, type });
      p = (d + 24 + namelen + 7) & ~7;
    }
    return { error: r.error, entries };
  }
}
