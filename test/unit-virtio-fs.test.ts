/**
 * virtio-fs and its host-directory FUSE server, driven through the mock MMIO driver (test/support/
 * fuse-client.ts) against a temporary directory: each operation's semantics on the host, the escape
 * attempts a guest can make, a read-only share, the table caps, malformed requests, and the tables
 * across a snapshot.
 */
import assert from 'node:assert/strict';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { PassthroughFs } from '../src/backends/fs/server.js';
import { FsWorker } from '../src/backends/fs/worker.js';
import { ConfigError } from '../src/common/errors.js';
import { DisposableStore } from '../src/common/lifecycle.js';
import { parseShare, validateShares } from '../src/config/index.js';
import { E, FATTR, OP } from '../src/devices/virtio/fs/abi.js';
import { VIRTIO_ID_FS } from '../src/devices/virtio/fs/device.js';
import { seccompEnvMode } from '../src/os/seccomp.js';
import { fsKind } from '../src/vmm/kinds/fs.js';
import { makeShare, SECRET, type TestShare } from './support/fs-share.js';
import { attrAt, cat, cname, FuseClient, u32, u64, zeros } from './support/fuse-client.js';
import { R } from './support/virtio-driver.js';

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;
const ROOT = 1;

let s: TestShare;
let c: FuseClient;
const setup = (opts: Parameters<typeof makeShare>[0] = {}) => {
  s = makeShare(opts);
  c = s.client;
  assert.equal(c.init().error, 0);
};

/** SETATTR in: valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5. */
const setattrIn = (
  valid: number,
  f: { size?: number; mode?: number; mtime?: number; fh?: number; uid?: number; gid?: number } = {},
) =>
  cat(
    u32(valid),
    u32(0),
    u64(f.fh ?? 0),
    u64(f.size ?? 0),
    u64(0),
    u64(0),
    u64(f.mtime ?? 0),
    u64(0),
    u32(0),
    u32(0),
    u32(0),
    u32(f.mode ?? 0),
    u32(0),
    u32(f.uid ?? 0),
    u32(f.gid ?? 0),
    u32(0),
  );

describe('virtio-fs device', () => {
  afterEach(() => s.cleanup());

  test('device id 26, config space: the tag NUL-padded to 36 bytes, then num_request_queues = 1', () => {
    setup();
    assert.equal(c.drv.read(R.DEVICE_ID), VIRTIO_ID_FS);
    const cfg = c.drv.readConfig(0, 40);
    assert.equal(Buffer.from(cfg.subarray(0, 5)).toString(), 'share');
    assert.deepEqual([...cfg.subarray(5, 36)], new Array(31).fill(0));
    assert.equal(new DataView(cfg.buffer).getUint32(36, true), 1);
    assert.equal(c.device.queueMaxSizes.length, 2);
  });

  test('INIT: major 7, the smaller minor, only flags both sides have, max_write bounded', () => {
    s = makeShare();
    c = s.client;
    const r = c.init(40, 0xffffffff);
    assert.equal(r.error, 0);
    const v = new DataView(r.body.buffer, r.body.byteOffset);
    assert.equal(v.getUint32(0, true), 7);
    assert.equal(v.getUint32(4, true), 31);
    assert.equal(v.getUint32(8, true), 128 * 1024, 'max_readahead: the smaller');
    const flags = v.getUint32(12, true);
    assert.equal(flags & (1 << 16), 0, 'no writeback cache');
    assert.equal(flags & (1 << 4), 0, 'no export support (no lookups of . and ..)');
    assert.ok(flags & (1 << 13), 'readdirplus');
    assert.equal(v.getUint32(20, true), 1024 * 1024, 'max_write');
    const older = c.init(7, 0);
    assert.equal(older.body.length, 24, 'a 7.7 kernel gets the 24-byte compat reply');
    assert.equal(c.request(OP.INIT, 0, cat(u32(6), u32(0), u32(0), u32(0))).error, 71, 'major 6: EPROTO');
  });

  test('malformed requests get a FUSE error reply (or nothing, without room for one), never a throw', () => {
    setup();
    // In-header len larger than the chain.
    const hdr = cat(u32(4000), u32(OP.GETATTR), u64(77), u64(1), u32(0), u32(0), u32(0), u32(0));
    let r = c.raw(hdr);
    assert.equal(r.error, E.INVAL);
    assert.equal(r.unique, 77n);
    // Shorter than an in-header.
    assert.equal(c.raw(zeros(10)).error, E.INVAL);
    // A LOOKUP whose name has no NUL; a WRITE whose size disagrees with its data.
    const bad = cat(u32(40 + 3), u32(OP.LOOKUP), u64(78), u64(1), u32(0), u32(0), u32(0), u32(0), Buffer.from('abc'));
    assert.equal(c.raw(bad).error, E.INVAL);
    r = c.request(OP.WRITE, 0, cat(u64(1), u64(0), u32(100), u32(0), u64(0), u32(0), u32(0), zeros(5)));
    assert.equal(r.error, E.INVAL);
    // Extensions longer than the body.
    const ext = cat(u32(40), u32(OP.STATFS), u64(79), u64(1), u32(0), u32(0), u32(0), u32(1));
    assert.equal(c.raw(ext).error, E.INVAL);
    // No room for an out-header: the chain comes back with nothing written.
    assert.equal(c.request(OP.GETATTR, ROOT, zeros(16), 8).used, 0);
    // An opcode vireo does not serve.
    assert.equal(c.request(OP.IOCTL, ROOT, zeros(32)).error, E.NOSYS);
    assert.equal(c.request(9999, ROOT).error, E.NOSYS);
    // A reply larger than the writable part: EIO, nothing written past the guest's buffers.
    const before = c.device.counters.malformed;
    assert.equal(c.request(OP.GETATTR, ROOT, zeros(16), 40).error, E.IO);
    assert.equal(c.device.counters.malformed, before + 1);
    assert.equal(c.device.counters.serverFailures, 0);
  });
});

describe('virtio-fs operations on a host directory', () => {
  beforeEach(() => setup());
  afterEach(() => s.cleanup());

  test('LOOKUP, GETATTR: the host file as it is; an unknown node is ESTALE; the same inode is one node', () => {
    const l = c.lookup(ROOT, 'hello.txt');
    assert.equal(l.error, 0);
    assert.equal(l.attr?.size, 20);
    assert.equal(l.attr?.ino, BigInt(lstatSync(join(s.dir, 'hello.txt')).ino));
    assert.equal(c.lookup(ROOT, 'hello.txt').nodeid, l.nodeid, 'a second lookup: the same node');
    assert.equal(c.lookup(ROOT, 'missing').error, E.NOENT);
    const g = c.request(OP.GETATTR, l.nodeid, zeros(16));
    assert.equal(attrAt(g.body, 16).size, 20);
    assert.equal(c.request(OP.GETATTR, 12345, zeros(16)).error, E.STALE);
    assert.equal(c.lookup(l.nodeid, 'x').error, E.NOTDIR);
  });

  test('CREATE, WRITE, READ, RELEASE: the bytes reach the host file and come back', () => {
    const f = c.create(ROOT, 'new.bin', O_RDWR | 0o100);
    assert.equal(f.error, 0);
    const data = Buffer.alloc(300_000, 7);
    data.write('start', 0);
    const w = c.write(f.fh, 10, data);
    assert.equal(w.error, 0);
    assert.equal(new DataView(w.body.buffer, w.body.byteOffset).getUint32(0, true), data.length);
    const onHost = readFileSync(join(s.dir, 'new.bin'));
    assert.equal(onHost.length, 300_010);
    assert.equal(onHost.subarray(10, 15).toString(), 'start');
    const r = c.read(f.fh, 10, 5);
    assert.equal(Buffer.from(r.body).toString(), 'start');
    assert.equal(c.read(f.fh, 400_000, 100).body.length, 0, 'past the end: 0 bytes');
    assert.equal(c.release(f.fh).error, 0);
    assert.equal(c.read(f.fh, 0, 5).error, E.BADF, 'a released handle is gone');
    // Written on the host, read by the guest.
    writeFileSync(join(s.dir, 'hello.txt'), 'changed on the host');
    const h = c.open(c.lookup(ROOT, 'hello.txt').nodeid, O_RDONLY);
    assert.equal(Buffer.from(c.read(h.fh, 0, 100).body).toString(), 'changed on the host');
    assert.equal(c.request(OP.FLUSH, 0, cat(u64(h.fh), u32(0), u32(0), u64(0))).error, 0);
    assert.equal(c.request(OP.FSYNC, 0, cat(u64(h.fh), u32(1), u32(0))).error, 0);
  });

  test('CREATE with O_EXCL on an existing name is EEXIST; a CREATE over a symlink does not follow it', () => {
    assert.equal(c.create(ROOT, 'hello.txt', O_RDWR | 0o100 | 0o200).error, E.EXIST);
    assert.equal(c.create(ROOT, 'abs-link', O_RDWR | 0o100).error, E.LOOP);
    assert.equal(readFileSync(join(s.outside, 'secret'), 'utf8'), SECRET);
  });

  test('MKDIR, READDIR, READDIRPLUS (with offsets that resume), RMDIR, UNLINK', () => {
    const m = c.mkdir(ROOT, 'd');
    assert.equal(m.error, 0);
    const d = c.entryNode(m);
    for (let i = 0; i < 50; i++) c.create(d, `f${i}`);
    const h = c.opendir(d);
    assert.equal(h.error, 0);
    const all = c.readdir(h.fh);
    assert.equal(all.entries.length, 52);
    assert.deepEqual(
      new Set(all.entries.map((e) => e.name)),
      new Set(['.', '..', ...Array.from({ length: 50 }, (_, i) => `f${i}`)]),
    );
    // Small replies, each resumed from the last entry's offset: every name exactly once.
    const seen: string[] = [];
    let cookie = 0n;
    for (;;) {
      const part = c.readdir(h.fh, true, cookie, 400);
      if (part.entries.length === 0) break;
      for (const e of part.entries) {
        seen.push(e.name);
        if (e.name === '.' || e.name === '..') assert.equal(e.nodeid, 0);
        else assert.ok(e.nodeid > 1, 'readdirplus entries carry node ids');
      }
      cookie = part.entries.at(-1)?.off ?? 0n;
    }
    assert.deepEqual(seen.sort(), all.entries.map((e) => e.name).sort());
    assert.equal(c.release(h.fh, true).error, 0);
    assert.equal(c.request(OP.RMDIR, ROOT, cname('d')).error, E.NOTEMPTY);
    for (let i = 0; i < 50; i++) assert.equal(c.request(OP.UNLINK, d, cname(`f${i}`)).error, 0);
    assert.equal(c.request(OP.RMDIR, ROOT, cname('d')).error, 0);
    assert.equal(existsSync(join(s.dir, 'd')), false);
  });

  test('rm -rf: entries removed while the directory is read are each seen once', () => {
    // Found in the lane: before 6.6, tmpfs' cookies are positions, and a READDIR that sought back to
    // one after removals skipped entries (rm -rf left a directory not empty). The server now goes on
    // from where it stopped without a seek. This host's tmpfs (6.6+) has stable cookies, so here
    // the test checks the semantics; linux-virtiofs (6.1 in the lane) shows the regression.
    const t = makeShare({}, existsSync('/dev/shm') ? '/dev/shm' : undefined);
    try {
      const tc = t.client;
      tc.init();
      const d = tc.entryNode(tc.mkdir(ROOT, 'd'));
      for (let i = 0; i < 200; i++) tc.create(d, `f${i}`);
      const h = tc.opendir(d);
      let cookie = 0n;
      let removed = 0;
      for (;;) {
        const part = tc.readdir(h.fh, false, cookie, 512);
        if (part.entries.length === 0) break;
        for (const e of part.entries)
          if (e.name !== '.' && e.name !== '..') removed += tc.request(OP.UNLINK, d, cname(e.name)).error === 0 ? 1 : 0;
        cookie = part.entries.at(-1)?.off ?? 0n;
      }
      assert.equal(removed, 200, 'every entry was seen once and removed');
      assert.equal(tc.request(OP.RMDIR, ROOT, cname('d')).error, 0);
      // A rewind (cookie 0) after that starts over.
      const again = tc.readdir(tc.opendir(ROOT).fh);
      assert.ok(again.entries.some((e) => e.name === 'hello.txt'));
    } finally {
      t.cleanup();
    }
  });

  test('RENAME, RENAME2 NOREPLACE and EXCHANGE, LINK, SYMLINK, READLINK', () => {
    const sub = c.lookup(ROOT, 'sub').nodeid;
    const rn = (from: number, a: string, to: number, b: string, flags?: number) =>
      flags === undefined
        ? c.request(OP.RENAME, from, cat(u64(to), cname(a), cname(b))).error
        : c.request(OP.RENAME2, from, cat(u64(to), u32(flags), u32(0), cname(a), cname(b))).error;
    assert.equal(rn(ROOT, 'hello.txt', sub, 'moved'), 0);
    assert.equal(readFileSync(join(s.dir, 'sub', 'moved'), 'utf8'), 'hello from the host\n');
    assert.equal(rn(sub, 'moved', sub, 'inner', 1), E.EXIST, 'NOREPLACE');
    assert.equal(rn(sub, 'moved', sub, 'inner', 2), 0, 'EXCHANGE');
    assert.equal(readFileSync(join(s.dir, 'sub', 'inner'), 'utf8'), 'hello from the host\n');
    assert.equal(readFileSync(join(s.dir, 'sub', 'moved'), 'utf8'), 'inner');
    assert.equal(rn(sub, 'moved', sub, 'x', 4), E.INVAL, 'WHITEOUT is refused');
    const inner = c.lookup(sub, 'inner').nodeid;
    const ln = c.request(OP.LINK, ROOT, cat(u64(inner), cname('hard')));
    assert.equal(ln.error, 0);
    assert.equal(c.entryNode(ln), inner, 'a hard link is the same node');
    assert.equal(lstatSync(join(s.dir, 'hard')).nlink, 2);
    const sl = c.request(OP.SYMLINK, ROOT, cat(cname('sl'), cname('/etc/passwd')));
    assert.equal(sl.error, 0);
    const rl = c.request(OP.READLINK, c.entryNode(sl));
    assert.equal(Buffer.from(rl.body).toString(), '/etc/passwd');
    assert.equal(c.request(OP.READLINK, inner).error, E.INVAL);
  });

  test('SETATTR (size, mode, mtime), STATFS, ACCESS, FALLOCATE, LSEEK, MKNOD regular only', () => {
    const n = c.lookup(ROOT, 'hello.txt').nodeid;
    let r = c.request(OP.SETATTR, n, setattrIn(FATTR.SIZE, { size: 5 }));
    assert.equal(r.error, 0);
    assert.equal(readFileSync(join(s.dir, 'hello.txt'), 'utf8'), 'hello');
    r = c.request(OP.SETATTR, n, setattrIn(FATTR.MODE, { mode: 0o600 }));
    assert.equal(lstatSync(join(s.dir, 'hello.txt')).mode & 0o777, 0o600);
    r = c.request(OP.SETATTR, n, setattrIn(FATTR.MTIME, { mtime: 1_000_000 }));
    assert.equal(Math.floor(lstatSync(join(s.dir, 'hello.txt')).mtimeMs / 1000), 1_000_000);
    assert.equal(attrAt(r.body, 16).mtime, 1_000_000);
    const st = c.request(OP.STATFS, ROOT);
    assert.equal(st.error, 0);
    assert.equal(st.body.length, 80);
    assert.equal(new DataView(st.body.buffer, st.body.byteOffset).getUint32(44, true), 255, 'namelen');
    assert.equal(c.request(OP.ACCESS, n, cat(u32(4), u32(0))).error, 0);
    const h = c.open(n, O_RDWR);
    assert.equal(c.request(OP.FALLOCATE, 0, cat(u64(h.fh), u64(0), u64(1 << 20), u32(0), u32(0))).error, 0);
    assert.equal(lstatSync(join(s.dir, 'hello.txt')).size, 1 << 20);
    const seek = c.request(OP.LSEEK, 0, cat(u64(h.fh), u64(0), u32(2), u32(0))); // SEEK_END
    assert.equal(new DataView(seek.body.buffer, seek.body.byteOffset).getBigUint64(0, true), BigInt(1 << 20));
    assert.equal(c.request(OP.MKNOD, ROOT, cat(u32(0o100644), u32(0), u32(0), u32(0), cname('reg'))).error, 0);
    assert.equal(lstatSync(join(s.dir, 'reg')).isFile(), true);
    assert.equal(c.request(OP.MKNOD, ROOT, cat(u32(0o010644), u32(0), u32(0), u32(0), cname('fifo'))).error, E.PERM);
    assert.equal(
      c.request(OP.MKNOD, ROOT, cat(u32(0o020644), u32(0x0103), u32(0), u32(0), cname('null'))).error,
      E.PERM,
    );
  });

  test('xattrs: SET, GET (size probe and value), LIST, REMOVE', () => {
    const n = c.lookup(ROOT, 'hello.txt').nodeid;
    const set = c.request(OP.SETXATTR, n, cat(u32(5), u32(0), cname('user.k'), Buffer.from('value')));
    if (set.error === E.OPNOTSUPP) {
      // tmpfs without user xattrs (older kernels): the host's answer goes back to the guest as it is.
      assert.equal(c.request(OP.GETXATTR, n, cat(u32(0), u32(0), cname('user.k'))).error, E.OPNOTSUPP);
      return;
    }
    assert.equal(set.error, 0);
    const probe = c.request(OP.GETXATTR, n, cat(u32(0), u32(0), cname('user.k')));
    assert.equal(new DataView(probe.body.buffer, probe.body.byteOffset).getUint32(0, true), 5);
    assert.equal(
      Buffer.from(c.request(OP.GETXATTR, n, cat(u32(64), u32(0), cname('user.k'))).body).toString(),
      'value',
    );
    assert.equal(c.request(OP.GETXATTR, n, cat(u32(2), u32(0), cname('user.k'))).error, E.RANGE);
    assert.ok(
      Buffer.from(c.request(OP.LISTXATTR, n, cat(u32(256), u32(0))).body)
        .toString()
        .includes('user.k'),
    );
    assert.equal(c.request(OP.REMOVEXATTR, n, cname('user.k')).error, 0);
    assert.equal(c.request(OP.GETXATTR, n, cat(u32(64), u32(0), cname('user.k'))).error, E.NODATA);
  });

  test('FORGET drops a node once its lookups are forgotten; DESTROY drops every node and handle', () => {
    const n = c.lookup(ROOT, 'hello.txt').nodeid;
    c.lookup(ROOT, 'hello.txt');
    const held = s.server.held.nodes;
    assert.equal(c.forget(n, 1).used, 0, 'FORGET has no reply');
    assert.equal(s.server.held.nodes, held);
    c.request(OP.BATCH_FORGET, 0, cat(u32(1), u32(0), u64(n), u64(1)), 0, 0);
    assert.equal(s.server.held.nodes, held - 1);
    assert.equal(c.request(OP.GETATTR, n, zeros(16)).error, E.STALE);
    c.open(c.lookup(ROOT, 'hello.txt').nodeid, O_RDONLY);
    assert.equal(c.request(OP.DESTROY, 0).error, 0);
    assert.deepEqual(s.server.held, { nodes: 1, handles: 0 });
  });
});

describe('virtio-fs: the guest cannot reach outside the share', () => {
  beforeEach(() => setup());
  afterEach(() => s.cleanup());

  test("names '..', '.', with '/', or empty are refused in every operation that takes one", () => {
    for (const name of ['..', '.', '../outside', 'sub/inner', '/etc']) {
      assert.equal(c.lookup(ROOT, name).error, E.INVAL, name);
      assert.equal(c.create(ROOT, name).error, E.INVAL, name);
      assert.equal(c.mkdir(ROOT, name).error, E.INVAL, name);
      assert.equal(c.request(OP.UNLINK, ROOT, cname(name)).error, E.INVAL, name);
      assert.equal(c.request(OP.SYMLINK, ROOT, cat(cname(name), cname('x'))).error, E.INVAL, name);
      assert.equal(c.request(OP.RENAME, ROOT, cat(u64(ROOT), cname('hello.txt'), cname(name))).error, E.INVAL, name);
    }
    assert.equal(c.request(OP.LOOKUP, ROOT, cname('')).error, E.INVAL);
    assert.deepEqual(readdirSync(s.outside), ['secret']);
  });

  test('symlinks out of the share are links, never followed: open is ELOOP, a lookup through them is ENOTDIR', () => {
    const abs = c.lookup(ROOT, 'abs-link');
    assert.equal(abs.error, 0);
    assert.equal(abs.attr?.mode !== undefined && (abs.attr.mode & 0o170000) === 0o120000, true, 'the link itself');
    assert.equal(c.open(abs.nodeid, O_RDONLY).error, E.LOOP);
    assert.equal(c.open(abs.nodeid, O_WRONLY).error, E.LOOP);
    assert.equal(c.request(OP.SETATTR, abs.nodeid, setattrIn(FATTR.SIZE, { size: 0 })).error, E.INVAL);
    assert.equal(c.request(OP.GETXATTR, abs.nodeid, cat(u32(64), u32(0), cname('user.k'))).error, E.OPNOTSUPP);
    const up = c.lookup(ROOT, 'up-link');
    assert.equal(c.lookup(up.nodeid, 'secret').error, E.NOTDIR);
    assert.equal(c.create(up.nodeid, 'planted').error, E.NOTDIR);
    assert.equal(c.opendir(up.nodeid).error, E.NOTDIR);
    assert.equal(c.request(OP.LINK, ROOT, cat(u64(abs.nodeid), cname('l2'))).error, E.OPNOTSUPP);
    assert.equal(readFileSync(join(s.outside, 'secret'), 'utf8'), SECRET);
    assert.deepEqual(readdirSync(s.outside), ['secret']);
  });

  test('a symlink swapped in for a directory after its lookup: the node still is the original directory', () => {
    const sub = c.lookup(ROOT, 'sub').nodeid;
    // The host (or a second guest process through another path) swaps sub for a link to outside/.
    renameSync(join(s.dir, 'sub'), join(s.dir, 'sub-moved'));
    symlinkSync(s.outside, join(s.dir, 'sub'));
    assert.equal(c.lookup(sub, 'secret').error, E.NOENT, 'the node is the directory, not the name');
    assert.equal(c.lookup(sub, 'inner').error, 0);
    const f = c.create(sub, 'planted');
    assert.equal(f.error, 0);
    assert.ok(existsSync(join(s.dir, 'sub-moved', 'planted')));
    const h = c.opendir(sub);
    assert.deepEqual(
      c
        .readdir(h.fh)
        .entries.map((e) => e.name)
        .sort(),
      ['.', '..', 'inner', 'planted'],
    );
    // A fresh lookup of the name finds the link, and a link is not a directory.
    const again = c.lookup(ROOT, 'sub');
    assert.equal(c.lookup(again.nodeid, 'secret').error, E.NOTDIR);
    assert.deepEqual(readdirSync(s.outside), ['secret']);
  });

  test('a directory swapped for a symlink between LOOKUP and OPEN of a file below it: the file opened is the one looked up', () => {
    const sub = c.lookup(ROOT, 'sub').nodeid;
    const inner = c.lookup(sub, 'inner').nodeid;
    renameSync(join(s.dir, 'sub'), join(s.dir, 'elsewhere'));
    mkdirSync(join(s.dir, 'sub'));
    writeFileSync(join(s.dir, 'sub', 'inner'), 'decoy');
    const h = c.open(inner, O_RDONLY);
    assert.equal(Buffer.from(c.read(h.fh, 0, 100).body).toString(), 'inner');
  });
});

describe('virtio-fs: read-only share, table caps, snapshot', () => {
  afterEach(() => s.cleanup());

  test('a read-only share refuses every write with EROFS and still serves reads', () => {
    setup({ readOnly: true });
    const n = c.lookup(ROOT, 'hello.txt').nodeid;
    const sub = c.lookup(ROOT, 'sub').nodeid;
    const errs = [
      c.open(n, O_WRONLY).error,
      c.open(n, O_RDWR).error,
      c.open(n, O_RDONLY | 0o1000).error, // O_TRUNC
      c.create(ROOT, 'x').error,
      c.mkdir(ROOT, 'x').error,
      c.request(OP.MKNOD, ROOT, cat(u32(0o100644), u32(0), u32(0), u32(0), cname('x'))).error,
      c.request(OP.UNLINK, ROOT, cname('hello.txt')).error,
      c.request(OP.RMDIR, ROOT, cname('sub')).error,
      c.request(OP.RENAME, ROOT, cat(u64(sub), cname('hello.txt'), cname('y'))).error,
      c.request(OP.LINK, ROOT, cat(u64(n), cname('l'))).error,
      c.request(OP.SYMLINK, ROOT, cat(cname('s'), cname('t'))).error,
      c.request(OP.SETATTR, n, setattrIn(FATTR.SIZE, { size: 0 })).error,
      c.request(OP.SETATTR, n, setattrIn(FATTR.MODE, { mode: 0o777 })).error,
      c.request(OP.SETXATTR, n, cat(u32(1), u32(0), cname('user.a'), Buffer.from('v'))).error,
      c.request(OP.REMOVEXATTR, n, cname('user.a')).error,
      c.request(OP.ACCESS, n, cat(u32(2), u32(0))).error,
    ];
    assert.deepEqual(errs, new Array(errs.length).fill(E.ROFS));
    const h = c.open(n, O_RDONLY);
    assert.equal(h.error, 0);
    assert.equal(c.write(h.fh, 0, Buffer.from('x')).error, E.ROFS);
    assert.equal(c.request(OP.FALLOCATE, 0, cat(u64(h.fh), u64(0), u64(10), u32(0), u32(0))).error, E.ROFS);
    assert.equal(Buffer.from(c.read(h.fh, 0, 100).body).toString(), 'hello from the host\n');
    assert.deepEqual(readdirSync(s.dir).sort(), ['abs-link', 'hello.txt', 'sub', 'up-link']);
    assert.equal(readFileSync(join(s.dir, 'hello.txt'), 'utf8'), 'hello from the host\n');
  });

  test('the node table is capped (ENFILE past it), the handle table too (EMFILE); FORGET and RELEASE free them', () => {
    setup({ maxNodes: 3, maxHandles: 2 });
    const a = c.lookup(ROOT, 'hello.txt');
    const b = c.lookup(ROOT, 'sub');
    assert.equal(c.lookup(ROOT, 'abs-link').error, E.NFILE);
    assert.equal(c.create(ROOT, 'new').error, E.NFILE);
    assert.equal(c.lookup(ROOT, 'hello.txt').nodeid, a.nodeid, 'a known inode still resolves when full');
    c.forget(b.nodeid, 1);
    assert.equal(c.lookup(ROOT, 'abs-link').error, 0);
    const h1 = c.open(a.nodeid, O_RDONLY);
    const h2 = c.open(a.nodeid, O_RDONLY);
    assert.equal(h2.error, 0);
    assert.equal(c.open(a.nodeid, O_RDONLY).error, E.MFILE);
    assert.equal(c.opendir(ROOT).error, E.MFILE);
    c.release(h1.fh);
    assert.equal(c.opendir(ROOT).error, 0);
  });

  test('the tables across a snapshot: node ids and handles come back by path; a removed file is ESTALE', () => {
    setup();
    const sub = c.lookup(ROOT, 'sub').nodeid;
    const inner = c.lookup(sub, 'inner').nodeid;
    const hello = c.lookup(ROOT, 'hello.txt').nodeid;
    const fh = c.open(inner, O_RDWR).fh;
    const state = s.server.saveState();
    assert.equal(state.nodes.length, 3);
    // The restored VM gets a fresh server on the same directory; the host changed meanwhile.
    writeFileSync(join(s.dir, 'sub', 'inner'), 'after');
    const fresh = new PassthroughFs({ rootFd: s.rootFd, rootPath: s.dir, readOnly: false });
    fresh.restoreState({ ...state, nodes: state.nodes.filter((n) => n.id !== hello) });
    const c2 = new FuseClient(fresh);
    try {
      c2.init();
      assert.equal(Buffer.from(c2.read(fh, 0, 100).body).toString(), 'after', 'the handle is open again');
      assert.equal(c2.request(OP.GETATTR, inner, zeros(16)).error, 0);
      assert.equal(c2.lookup(sub, 'inner').nodeid, inner, 'the same node id for the same inode');
      assert.equal(c2.request(OP.GETATTR, hello, zeros(16)).error, E.STALE);
      assert.ok(c2.lookup(ROOT, 'hello.txt').nodeid > inner, 'new node ids do not collide with restored ones');
      // A hostile record naming a path out of the share restores nothing.
      const evil = new PassthroughFs({ rootFd: s.rootFd, rootPath: s.dir, readOnly: false });
      evil.restoreState({
        nodes: [
          { id: 5, nlookup: 1, path: Buffer.from('../outside/secret').toString('hex') },
          { id: 6, nlookup: 1, path: Buffer.from('up-link/secret').toString('hex') },
        ],
        handles: [
          { fh: 1, node: 5, flags: 0, dir: false },
          { fh: 2, node: 6, flags: 0, dir: false },
        ],
        nextNode: 7,
        nextHandle: 3,
      });
      assert.deepEqual(evil.held, { nodes: 1, handles: 0 });
      evil.close();
    } finally {
      c2.close();
      fresh.close();
    }
  });
});

describe('virtio-fs configuration', () => {
  test('--share PATH,tag=NAME[,ro] and path=…: parsed; a bad tag, no tag, a tag twice are one-line ConfigErrors', () => {
    assert.deepEqual(parseShare('/srv/data,tag=data'), { path: '/srv/data', tag: 'data', readOnly: false });
    assert.deepEqual(parseShare('/srv/data,tag=data,ro'), { path: '/srv/data', tag: 'data', readOnly: true });
    assert.deepEqual(parseShare('path=/x,tag=t,readonly=off'), { path: '/x', tag: 't', readOnly: false });
    assert.throws(() => parseShare('/srv/data'), /needs tag=NAME/);
    assert.throws(() => parseShare('/srv/data,tag=bad/tag'), /share tag "bad\/tag" is invalid/);
    assert.throws(() => parseShare(`/d,tag=${'x'.repeat(37)}`), /is invalid/);
    assert.throws(() => parseShare('/d,tag=t,bogus=1'), ConfigError);
    assert.throws(
      () =>
        validateShares([
          { path: '/a', tag: 't' },
          { path: '/b', tag: 't' },
        ]),
      /given twice/,
    );
  });

  test('a share whose directory is missing (at boot, or gone at a restore) is one ConfigError line; the kind saves path and tag', () => {
    const store = new DisposableStore();
    try {
      const err = (() => {
        try {
          fsKind.open([{ path: '/nonexistent/vireo-share', tag: 'gone' }], { store, wake: () => {}, seccomp: true });
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      assert.ok(err instanceof ConfigError);
      assert.equal(
        err.message,
        'share gone: cannot open directory /nonexistent/vireo-share: ENOENT; give an existing host directory',
      );
      s = makeShare();
      const opened = fsKind.open([{ path: s.dir, tag: 'data', readOnly: true }], {
        store,
        wake: () => {},
        seccomp: true,
      });
      assert.equal(opened.devices[0]?.name, 'virtio-fs:data');
      const saved = fsKind.snapshot.save([{ path: s.dir, tag: 'data', readOnly: true }]);
      assert.deepEqual(saved, [{ path: s.dir, tag: 'data', readOnly: true }]);
      const dev = fsKind.build(opened.devices[0]?.spec as Parameters<typeof fsKind.build>[0], []);
      assert.equal(dev.deviceType, 26);
      dev.close?.();
    } finally {
      store.dispose();
      s?.cleanup();
    }
  });
});

describe('virtio-fs on a worker thread of its own (what a VM runs)', () => {
  afterEach(() => s.cleanup());

  test('the same operations through the worker: replies come back after it serves them', () => {
    s = makeShare();
    const w = new FuseClient(
      (memory) => new FsWorker({ rootFd: s.rootFd, rootPath: s.dir, readOnly: false }, memory, true),
    );
    try {
      assert.equal(w.init().error, 0);
      const f = w.create(ROOT, 'via-worker', O_RDWR | 0o100);
      assert.equal(f.error, 0);
      assert.equal(w.write(f.fh, 0, Buffer.from('worker bytes')).error, 0);
      assert.equal(readFileSync(join(s.dir, 'via-worker'), 'utf8'), 'worker bytes');
      assert.equal(Buffer.from(w.read(f.fh, 0, 100).body).toString(), 'worker bytes');
      assert.equal(w.lookup(ROOT, '..').error, E.INVAL);
      const up = w.lookup(ROOT, 'up-link');
      assert.equal(w.lookup(up.nodeid, 'secret').error, E.NOTDIR);
      const names = w.readdir(w.opendir(ROOT).fh, true).entries.map((e) => e.name);
      assert.ok(names.includes('via-worker') && names.includes('sub'));
      assert.equal(w.forget(w.lookup(ROOT, 'hello.txt').nodeid, 1).used, 0);
      assert.equal(w.queue?.pending, 0);
      assert.ok((w.device.counters.requests ?? 0) >= 9);
      // The tables through the worker's control channel: saved, restored into a second worker.
      const state = w.queue?.saveState();
      assert.ok(state && state.handles.length === 2);
      const w2 = new FuseClient(
        (memory) => new FsWorker({ rootFd: s.rootFd, rootPath: s.dir, readOnly: false }, memory, true),
      );
      try {
        w2.queue?.restoreState(state);
        assert.equal(Buffer.from(w2.read(f.fh, 0, 6).body).toString(), 'worker', 'the handle is open again there');
      } finally {
        w2.device.close();
        w2.close();
      }
    } finally {
      w.device.close();
      w.close();
    }
  });

  test('every operation through a worker confined with the fs seccomp filter (the VM default)', () => {
    // The worker (worker-entry.ts) installs kvm/seccomp-policy.ts's fs list before its first request:
    // a call off that list would end this whole process with status 159 and the line naming it.
    // Under VIREO_SECCOMP=trace (scripts/seccomp-gen.mjs, which traces this test to find the list)
    // the thread marks the point instead of installing, so no thread shows a filter.
    // The worker is the one thread that is new since before it was made (a worker of an earlier test
    // may still be ending, with its filter).
    const filtered = (): string[] =>
      readdirSync('/proc/self/task').filter((t) => {
        try {
          return /^Seccomp:\s+2$/m.test(readFileSync(`/proc/self/task/${t}/status`, 'utf8'));
        } catch {
          return false; // a thread that ended between the listing and the read
        }
      });
    const before = new Set(readdirSync('/proc/self/task'));
    s = makeShare();
    const w = new FuseClient(
      (memory) => new FsWorker({ rootFd: s.rootFd, rootPath: s.dir, readOnly: false }, memory, true),
    );
    try {
      assert.equal(w.init().error, 0);
      assert.equal(
        filtered().filter((t) => !before.has(t)).length,
        seccompEnvMode() === 'on' ? 1 : 0,
        'the worker thread shows Seccomp: 2',
      );
      // Files: CREATE, WRITE, READ, FLUSH, FSYNC, FALLOCATE, LSEEK, SETATTR (size through the handle,
      // by path, mode, owner, times), GETATTR, ACCESS, OPEN with O_TRUNC, RELEASE.
      const f = w.create(ROOT, 'all', O_RDWR | 0o100);
      assert.equal(f.error, 0);
      assert.equal(w.write(f.fh, 0, Buffer.from('0123456789')).error, 0);
      assert.equal(Buffer.from(w.read(f.fh, 2, 3).body).toString(), '234');
      assert.equal(w.request(OP.FLUSH, 0, cat(u64(f.fh), u32(0), u32(0), u64(0))).error, 0);
      assert.equal(w.request(OP.FSYNC, 0, cat(u64(f.fh), u32(0), u32(0))).error, 0);
      assert.equal(w.request(OP.FSYNC, 0, cat(u64(f.fh), u32(1), u32(0))).error, 0);
      assert.equal(w.request(OP.FALLOCATE, 0, cat(u64(f.fh), u64(0), u64(8192), u32(0), u32(0))).error, 0);
      const seek = w.request(OP.LSEEK, 0, cat(u64(f.fh), u64(0), u32(2), u32(0)));
      assert.equal(new DataView(seek.body.buffer, seek.body.byteOffset).getBigUint64(0, true), 8192n);
      assert.equal(w.request(OP.SETATTR, f.nodeid, setattrIn(FATTR.SIZE | FATTR.FH, { size: 4, fh: f.fh })).error, 0);
      assert.equal(readFileSync(join(s.dir, 'all'), 'utf8'), '0123');
      assert.equal(w.request(OP.SETATTR, f.nodeid, setattrIn(FATTR.SIZE, { size: 2 })).error, 0);
      assert.equal(w.request(OP.SETATTR, f.nodeid, setattrIn(FATTR.MODE, { mode: 0o640 })).error, 0);
      assert.equal(lstatSync(join(s.dir, 'all')).mode & 0o777, 0o640);
      const me = lstatSync(join(s.dir, 'all'));
      assert.equal(
        w.request(OP.SETATTR, f.nodeid, setattrIn(FATTR.UID | FATTR.GID, { uid: me.uid, gid: me.gid })).error,
        0,
      );
      assert.equal(w.request(OP.SETATTR, f.nodeid, setattrIn(FATTR.MTIME, { mtime: 2_000_000 })).error, 0);
      assert.equal(Math.floor(lstatSync(join(s.dir, 'all')).mtimeMs / 1000), 2_000_000);
      assert.equal(attrAt(w.request(OP.GETATTR, f.nodeid, zeros(16)).body, 16).size, 2);
      assert.equal(w.request(OP.ACCESS, f.nodeid, cat(u32(4), u32(0))).error, 0);
      assert.equal(w.release(f.fh).error, 0);
      const t = w.open(f.nodeid, O_RDWR | 0o1000);
      assert.equal(t.error, 0);
      assert.equal(lstatSync(join(s.dir, 'all')).size, 0, 'O_TRUNC');
      assert.equal(w.release(t.fh).error, 0);
      // Names: MKDIR, MKNOD (regular; a FIFO refused before any call), SYMLINK, READLINK, LINK, RENAME,
      // RENAME2 EXCHANGE, UNLINK, RMDIR.
      const d = w.entryNode(w.mkdir(ROOT, 'dir'));
      assert.ok(d > 1);
      assert.equal(w.request(OP.MKNOD, d, cat(u32(0o100644), u32(0), u32(0), u32(0), cname('reg'))).error, 0);
      assert.equal(w.request(OP.MKNOD, d, cat(u32(0o010644), u32(0), u32(0), u32(0), cname('fifo'))).error, E.PERM);
      const sl = w.request(OP.SYMLINK, d, cat(cname('sl'), cname('../all')));
      assert.equal(Buffer.from(w.request(OP.READLINK, w.entryNode(sl)).body).toString(), '../all');
      assert.equal(w.request(OP.LINK, d, cat(u64(f.nodeid), cname('hard'))).error, 0);
      assert.equal(lstatSync(join(s.dir, 'all')).nlink, 2);
      assert.equal(w.request(OP.RENAME, d, cat(u64(ROOT), cname('reg'), cname('moved'))).error, 0);
      assert.equal(w.request(OP.RENAME2, ROOT, cat(u64(d), u32(2), u32(0), cname('moved'), cname('hard'))).error, 0);
      assert.equal(lstatSync(join(s.dir, 'moved')).nlink, 2, 'EXCHANGE: the hard link is at the top now');
      // Directories: OPENDIR, READDIR, READDIRPLUS, FSYNCDIR, RELEASEDIR; STATFS.
      const h = w.opendir(d);
      assert.deepEqual(
        w
          .readdir(h.fh)
          .entries.map((e) => e.name)
          .sort(),
        ['.', '..', 'hard', 'sl'],
      );
      assert.ok(w.readdir(h.fh, true).entries.some((e) => e.name === 'hard' && e.nodeid > 1));
      assert.equal(w.request(OP.FSYNCDIR, 0, cat(u64(h.fh), u32(0), u32(0))).error, 0);
      assert.equal(w.release(h.fh, true).error, 0);
      assert.equal(w.request(OP.STATFS, ROOT).error, 0);
      // xattrs through the node's /proc/self/fd link (the host's answer, whatever it is, goes back).
      const set = w.request(OP.SETXATTR, f.nodeid, cat(u32(1), u32(0), cname('user.k'), Buffer.from('v')));
      if (set.error === 0) {
        assert.equal(
          Buffer.from(w.request(OP.GETXATTR, f.nodeid, cat(u32(8), u32(0), cname('user.k'))).body).toString(),
          'v',
        );
        assert.ok(
          Buffer.from(w.request(OP.LISTXATTR, f.nodeid, cat(u32(64), u32(0))).body)
            .toString()
            .includes('user.k'),
        );
        assert.equal(w.request(OP.REMOVEXATTR, f.nodeid, cname('user.k')).error, 0);
      } else assert.equal(set.error, E.OPNOTSUPP);
      assert.equal(w.request(OP.UNLINK, d, cname('sl')).error, 0);
      assert.equal(w.request(OP.UNLINK, d, cname('hard')).error, 0);
      assert.equal(w.request(OP.RMDIR, ROOT, cname('dir')).error, 0);
      assert.equal(existsSync(join(s.dir, 'dir')), false);
      // Escapes still refused under the filter; FORGET, BATCH_FORGET; the tables saved and put back
      // (a restore walks the paths again, O_NOFOLLOW, and re-opens handles through /proc/self/fd).
      assert.equal(w.lookup(w.lookup(ROOT, 'up-link').nodeid, 'secret').error, E.NOTDIR);
      assert.equal(w.open(w.lookup(ROOT, 'abs-link').nodeid, O_RDONLY).error, E.LOOP);
      const held = w.open(w.lookup(ROOT, 'hello.txt').nodeid, O_RDONLY);
      const sub = w.lookup(ROOT, 'sub').nodeid;
      w.lookup(sub, 'inner');
      assert.equal(w.forget(w.lookup(ROOT, 'moved').nodeid, 1).used, 0);
      w.request(OP.BATCH_FORGET, 0, cat(u32(1), u32(0), u64(w.lookup(ROOT, 'moved').nodeid), u64(1)), 0, 0);
      const state = w.queue?.saveState();
      assert.ok(
        state &&
          state.handles.length === 1 &&
          state.nodes.some((n) => Buffer.from(n.path, 'hex').toString() === 'sub/inner'),
      );
      w.queue?.restoreState(state);
      assert.equal(Buffer.from(w.read(held.fh, 0, 5).body).toString(), 'hello');
      assert.equal(w.request(OP.DESTROY, 0).error, 0);
      assert.equal(w.queue?.pending, 0);
    } finally {
      w.device.close();
      w.close();
    }
  });

  test('a read-only share through the worker refuses writes', () => {
    s = makeShare();
    const w = new FuseClient(
      (memory) => new FsWorker({ rootFd: s.rootFd, rootPath: s.dir, readOnly: true }, memory, true),
    );
    try {
      w.init();
      assert.equal(w.create(ROOT, 'x').error, E.ROFS);
      assert.equal(w.open(w.lookup(ROOT, 'hello.txt').nodeid, O_WRONLY).error, E.ROFS);
      assert.equal(existsSync(join(s.dir, 'x')), false);
    } finally {
      w.device.close();
      w.close();
    }
  });
});
