/**
 * virtio-fs against a hostile guest driver: a fast-check property over 10,000 random and mutated FUSE
 * requests (every opcode, valid bodies with hostile names and numbers, bit flips, cut and stretched
 * lengths, extension lengths, short and missing reply buffers) sent one after another to one device
 * over a temporary share. Each request must come back as one used element whose out-header (when
 * there is room for one) is consistent; none may throw out of the device; the tables stay within
 * their caps; and nothing outside the share is read (no reply carries the secret beside it) or
 * changed (the sibling directory and the share's parent are as they were).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { FsWorker } from '../src/backends/fs/worker.js';
import { OP } from '../src/devices/virtio/fs/abi.js';
import { makeShare, SECRET } from './support/fs-share.js';
import { cat, cname, FuseClient, u32, u64 } from './support/fuse-client.js';

const RUNS = 10_000;
const SEED = 0x5f5;
const OPCODES = Object.values(OP);
const NAMES = [
  'hello.txt',
  'sub',
  'inner',
  'abs-link',
  'up-link',
  'new',
  'd',
  '..',
  '.',
  '../outside',
  'sub/inner',
  '/etc/passwd',
  'x'.repeat(300),
  '',
];

const name = fc.oneof(
  fc.constantFrom(...NAMES),
  fc.uint8Array({ minLength: 0, maxLength: 12 }).map((b) => Buffer.from(b).toString('latin1')),
);
const small = fc.oneof(
  { weight: 4, arbitrary: fc.constant(1) },
  { weight: 5, arbitrary: fc.integer({ min: 0, max: 12 }) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 32, 2 ** 53, -1) },
);
const big = fc.oneof(fc.integer({ min: 0, max: 1 << 20 }), fc.constantFrom(2 ** 63, 2 ** 53, 2 ** 40, 0));

/** A structurally valid body for `op`, with hostile contents. */
function body(op: number): fc.Arbitrary<Uint8Array> {
  const n = (s: string) => cname(Buffer.from(s, 'latin1'));
  const u64a = (x: number) => u64(BigInt.asUintN(64, BigInt(Math.trunc(x))));
  switch (op) {
    case OP.LOOKUP:
    case OP.UNLINK:
    case OP.RMDIR:
    case OP.REMOVEXATTR:
      return name.map(n);
    case OP.MKDIR:
      return fc.tuple(fc.nat(0o7777), name).map(([m, s]) => cat(u32(m), u32(0), n(s)));
    case OP.MKNOD:
      return fc
        .tuple(fc.constantFrom(0o100644, 0o010644, 0o020644, 0o140644), name)
        .map(([m, s]) => cat(u32(m), u32(0x103), u32(0), u32(0), n(s)));
    case OP.CREATE:
      return fc.tuple(fc.nat(0o7777777), name).map(([f, s]) => cat(u32(f), u32(0o644), u32(0), u32(0), n(s)));
    case OP.SYMLINK:
      return fc.tuple(name, name).map(([a, b]) => cat(n(a), n(b)));
    case OP.RENAME:
      return fc.tuple(small, name, name).map(([d, a, b]) => cat(u64a(d), n(a), n(b)));
    case OP.RENAME2:
      return fc.tuple(small, fc.nat(7), name, name).map(([d, f, a, b]) => cat(u64a(d), u32(f), u32(0), n(a), n(b)));
    case OP.LINK:
      return fc.tuple(small, name).map(([o, s]) => cat(u64a(o), n(s)));
    case OP.OPEN:
    case OP.OPENDIR:
      return fc.nat(0o7777777).map((f) => cat(u32(f), u32(0)));
    case OP.READ:
    case OP.READDIR:
    case OP.READDIRPLUS:
      return fc
        .tuple(small, big, fc.nat(1 << 21))
        .map(([fh, off, size]) => cat(u64a(fh), u64a(off), u32(size), u32(0), u64(0), u32(0), u32(0)));
    case OP.WRITE:
      return fc
        .tuple(small, big, fc.uint8Array({ maxLength: 200 }))
        .map(([fh, off, d]) => cat(u64a(fh), u64a(off), u32(d.length), u32(0), u64(0), u32(0), u32(0), d));
    case OP.SETATTR:
      return fc
        .tuple(fc.nat(0xfff), small, big, fc.nat(0o7777))
        .map(([v, fh, size, mode]) =>
          cat(
            u32(v),
            u32(0),
            u64a(fh),
            u64a(size),
            u64(0),
            u64(0),
            u64(0),
            u64(0),
            u32(0),
            u32(0),
            u32(0),
            u32(mode | 0o700),
            u32(0),
            u32(0),
            u32(0),
            u32(0),
          ),
        );
    case OP.SETXATTR:
      return fc
        .tuple(name, fc.uint8Array({ maxLength: 40 }))
        .map(([s, v]) => cat(u32(v.length), u32(0), n(`user.${s}`), v));
    case OP.GETXATTR:
      return fc.tuple(fc.nat(70000), name).map(([size, s]) => cat(u32(size), u32(0), n(`user.${s}`)));
    case OP.LISTXATTR:
    case OP.ACCESS:
      return fc.nat(70000).map((x) => cat(u32(x), u32(0)));
    case OP.FALLOCATE:
      return fc
        .tuple(small, fc.nat(1 << 20), fc.nat(1 << 16), fc.nat(0x7f))
        .map(([fh, off, len, mode]) => cat(u64a(fh), u64(off), u64(len), u32(mode), u32(0)));
    case OP.LSEEK:
      return fc.tuple(small, big, fc.nat(6)).map(([fh, off, w]) => cat(u64a(fh), u64a(off), u32(w), u32(0)));
    case OP.BATCH_FORGET:
      return fc
        .array(fc.tuple(small, small), { maxLength: 4 })
        .map((fs) => cat(u32(fs.length), u32(0), ...fs.map(([id, k]) => cat(u64a(id), u64a(k)))));
    case OP.INIT:
      return fc
        .tuple(fc.nat(9), fc.nat(40), fc.nat())
        .map(([ma, mi, fl]) => cat(u32(ma), u32(mi), u32(1 << 17), u32(fl)));
    default:
      return fc.uint8Array({ maxLength: 64 });
  }
}

const request = fc
  .record({
    op: fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...OPCODES) }, { weight: 1, arbitrary: fc.nat() }),
    nodeid: small,
    outLen: fc.oneof(
      { weight: 8, arbitrary: fc.constant(70_000) },
      { weight: 2, arbitrary: fc.constantFrom(0, 8, 16, 40, 200, 4096) },
    ),
    extlen: fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
    lenDelta: fc.oneof(
      { weight: 8, arbitrary: fc.constant(0) },
      { weight: 2, arbitrary: fc.integer({ min: -60, max: 60 }) },
    ),
    flips: fc.oneof(
      { weight: 7, arbitrary: fc.constant([] as [number, number][]) },
      { weight: 3, arbitrary: fc.array(fc.tuple(fc.nat(), fc.nat(7)), { minLength: 1, maxLength: 3 }) },
    ),
    cut: fc.oneof({ weight: 9, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.nat(120) }),
  })
  .chain((r) => body(r.op).map((b) => ({ ...r, body: b })));

/** Runs `runs` requests against a fresh share; `worker`: through the share's own thread, as a VM does. */
function fuzz(runs: number, seed: number, worker: boolean): void {
  const s = makeShare({ maxNodes: 64, maxHandles: 16 });
  const c = worker
    ? new FuseClient(
        (memory) =>
          new FsWorker(
            { rootFd: s.rootFd, rootPath: s.dir, readOnly: false, maxNodes: 64, maxHandles: 16 },
            memory,
            true,
          ),
      )
    : s.client;
  const outsideBefore = readdirSync(s.outside);
  const outsideMtime = statSync(s.outside).mtimeMs;
  const parent = dirname(s.dir);
  const siblings = readdirSync(parent).sort();
  let replies = 0;
  let errors = 0;
  try {
    c.init();
    fc.assert(
      fc.property(request, (r) => {
        const hdr = cat(
          u32(40 + r.body.length + r.lenDelta),
          u32(r.op),
          u64(0xabcdn),
          u64(BigInt.asUintN(64, BigInt(Math.trunc(r.nodeid)))),
          u32(0),
          u32(0),
          u32(1),
          u32(r.extlen),
        );
        let bytes = cat(hdr, r.body);
        for (const [at, bit] of r.flips)
          if (bytes.length > 0) bytes[at % bytes.length] = (bytes[at % bytes.length] as number) ^ (1 << bit);
        if (r.cut >= 0) bytes = bytes.subarray(0, r.cut);
        if (bytes.length === 0) bytes = new Uint8Array(1);
        const reply = c.raw(bytes, r.outLen, r.op === OP.FORGET || r.op === OP.BATCH_FORGET ? 0 : 1);
        assert.ok(reply.used <= r.outLen, 'the used length fits the writable buffers');
        if (reply.used >= 16) {
          replies++;
          if (reply.error !== 0) errors++;
          assert.ok(reply.error >= 0 && reply.error < 4096, `error ${reply.error} is an errno`);
          assert.ok(
            !Buffer.from(reply.body).toString('latin1').includes(SECRET),
            'no reply carries the secret outside the share',
          );
        }
        if (!worker) {
          const held = s.server.held;
          assert.ok(held.nodes <= 64 && held.handles <= 16, `tables within their caps: ${JSON.stringify(held)}`);
        }
      }),
      { numRuns: runs, seed, endOnFailure: true },
    );
  } finally {
    const outsideAfter = readdirSync(s.outside);
    const secret = readFileSync(join(s.outside, 'secret'), 'utf8');
    const mtime = statSync(s.outside).mtimeMs;
    const siblingsAfter = readdirSync(parent).sort();
    if (worker) {
      c.device.close();
      c.close();
    }
    s.cleanup();
    assert.deepEqual(outsideAfter, outsideBefore, 'nothing created or removed outside the share');
    assert.equal(secret, SECRET);
    assert.equal(mtime, outsideMtime);
    assert.deepEqual(siblingsAfter, siblings, 'nothing created beside the share in its parent');
  }
  assert.equal(c.device.counters.serverFailures, 0, 'no request made the server fail (a throw caught as EIO)');
  process.stdout.write(
    `# ${runs} requests${worker ? ' (worker)' : ''}: ${replies} replies, ${errors} errors, counters ${JSON.stringify(c.device.counters)}\n`,
  );
  assert.ok(replies > runs / 2, 'most requests were answered');
}

test(`virtio-fs: ${RUNS} random and mutated FUSE requests, 0 crashes, nothing outside the share reached`, {
  timeout: 300_000,
}, () => {
  fuzz(RUNS, SEED, false);
});

test('virtio-fs on its worker thread: 2000 more, the same properties', { timeout: 300_000 }, () => {
  fuzz(2000, SEED + 1, true);
});
