/**
 * Hostile and broken qcow2 images: each header field out of bounds gives one line naming it; bad
 * L1/L2/refcount entries are refused when used (and stop further writes); a property over 10k mutated
 * images (test/fuzz/qcow2.ts's cases) never accesses the file outside its end, never throws anything
 * but a one-line Qcow2Error. And the flush order: a crash after any write, with the writes since the
 * last sync lost in any combination, never leaves an L2 entry pointing at a cluster whose data or
 * refcount is not on disk.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { qcow2Image } from '../src/backends/qcow2/create.js';
import { COMPRESSED_HI, entryOffset, parseHeader, Qcow2Error, type Qcow2Header } from '../src/backends/qcow2/format.js';
import type { ImageIo } from '../src/backends/qcow2/image-io.js';
import { readHead } from '../src/backends/qcow2/open.js';
import { Qcow2Disk } from '../src/backends/qcow2/qcow2-disk.js';
import { readEntry } from '../src/backends/qcow2/refcounts.js';
import { qcow2CaseArb, runQcow2Case } from './fuzz/qcow2.js';
import { MemIo, prng } from './support/qcow2.js';

const KiB = 1024;
const fresh = (size = 1024 * KiB, clusterBits = 16): Buffer =>
  qcow2Image({ size, clusterBits, backing: { file: 'base.img', format: 'raw' } });
const parse = (b: Buffer): Qcow2Header => parseHeader(readHead(new MemIo(b)), b.length, 't.qcow2');

/** Asserts that parsing `b` fails with one line that matches `re`. */
function refuses(b: Buffer, re: RegExp): void {
  assert.throws(
    () => parse(b),
    (e: Error) => {
      assert.ok(e instanceof Qcow2Error, String(e));
      assert.equal((e as Qcow2Error).code, 'VIREO_ERR_QCOW2');
      assert.match(e.message, /^qcow2 image t\.qcow2: /);
      assert.ok(!e.message.includes('\n'));
      assert.match(e.message, re);
      return true;
    },
  );
}

const edit = (fn: (b: Buffer) => void, base = fresh()): Buffer => {
  const b = Buffer.from(base);
  fn(b);
  return b;
};

describe('header fields out of bounds: one line naming the field', () => {
  test('every field vireo reads', () => {
    assert.equal(parse(fresh()).backingFile, 'base.img');
    refuses(
      edit((b) => b.writeUInt32BE(0x514649fc, 0)),
      /bad magic/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(4, 4)),
      /version 4 is not supported/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(8, 20)),
      /cluster_bits 8 /,
    );
    refuses(
      edit((b) => b.writeUInt32BE(22, 20)),
      /cluster_bits 22 /,
    );
    refuses(
      edit((b) => b.writeUInt32BE(100, 100)),
      /header_length 100 /,
    );
    refuses(
      edit((b) => b.writeUInt32BE(108, 100)),
      /header_length 108 /,
    );
    refuses(
      edit((b) => b.writeUInt32BE(7, 96)),
      /refcount_order 7 is above 6/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(1n << 60n, 24)),
      /size .* out of range/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE((1n << 52n) + 512n, 24)),
      /size 4503599627371008 is above vireo's limit/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(2, 32)),
      /crypt_method 2/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(1n << 40n, 24)),
      /l1_size 1 is too small/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(0x500000, 36)),
      /l1_size 5242880 is above the 32 MiB limit/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(0x30200n, 40)),
      /l1_table_offset 0x30200 is not cluster-aligned/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(0x100000n, 40)),
      /the L1 table .* runs past the end of the file/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(0x10001n, 48)),
      /refcount_table_offset 0x10001 is not cluster-aligned/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(0x1000000n, 48)),
      /refcount table .* runs past the end/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(0, 56)),
      /refcount_table_clusters is 0/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(129, 56)),
      /refcount_table_clusters 129 is above the 8 MiB limit/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(65537, 60)),
      /nb_snapshots 65537/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(1, 60)),
      /snapshots_offset 0x0 /,
    );
    refuses(
      edit((b) => b.writeUInt32BE(0, 16)),
      /backing_file_size 0 /,
    );
    refuses(
      edit((b) => b.writeUInt32BE(1024, 16)),
      /backing_file_size 1024 /,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(0x10000n, 8)),
      /backing_file_offset 0x10000 is not inside the first cluster/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(8n, 8)),
      /backing_file_offset 0x8 /,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(1n << 3n, 72)),
      /"compression type" is not supported/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(1n << 2n, 72)),
      /"external data file" is not supported/,
    );
    refuses(
      edit((b) => b.writeBigUInt64BE(1n << 63n, 72)),
      /incompatible feature bit 63 is not supported/,
    );
    refuses(
      edit((b) => b.write('vmd', 112, 'latin1')),
      /backing format "vmd" is not supported/,
    );
    refuses(
      edit((b) => b.writeUInt32BE(0xfff0, 108)),
      /header extension 0xe2792aca at 0x68 \(length 65520\) runs past/,
    );
    const short = fresh().subarray(0, 100);
    refuses(short, /too short for a version 3 header/);
    refuses(fresh().subarray(0, 40), /too short for a header/);
  });

  test('an unknown incompatible feature is named from the feature name table when the image has one', () => {
    const b = fresh();
    // Replace the backing-format extension by a feature name table entry for incompatible bit 9.
    b.writeUInt32BE(0x6803f857, 104);
    b.writeUInt32BE(48, 108);
    b.fill(0, 112, 112 + 48);
    b[112] = 0;
    b[113] = 9;
    b.write('frobnication\u0007', 114, 'latin1');
    b.fill(0, 160, 168); // end of extensions
    b.writeBigUInt64BE(168n, 8);
    b.write('base.img', 168, 'latin1');
    b.writeBigUInt64BE(1n << 9n, 72);
    refuses(b, /incompatible feature bit 9 \(frobnication\?\) is not supported/);
  });
});

/** A small writable image in memory with a few clusters written; its io and header. */
function small(): { io: MemIo; h: Qcow2Header; d: Qcow2Disk } {
  const io = new MemIo(qcow2Image({ size: 256 * KiB, clusterBits: 12 }));
  const h = parseHeader(readHead(io), io.size(), 's.qcow2');
  const d = new Qcow2Disk({ io, header: h, name: 's.qcow2', readOnly: false });
  d.writev([Buffer.alloc(8 * KiB, 0x61)], 0);
  d.flush();
  return { io, h, d };
}

const reopen = (io: MemIo, h: Qcow2Header): Qcow2Disk =>
  new Qcow2Disk({ io, header: h, name: 's.qcow2', readOnly: false });

describe('bad table entries are refused where they are used', () => {
  test('L1: reserved bits, unaligned, past the end, onto the header', () => {
    for (const [value, re] of [
      [0x0100_0000_0000_0000n | 0x3000n, /L1 entry 0 has reserved bits set/],
      [0x8000_0000_0000_3001n, /L1 entry 0 has reserved bits set/],
      [0x8000_0000_0000_3800n, /L2 table offset 0x3800 is not cluster-aligned/],
      [0x8000_0000_0100_0000n, /L2 table offset 0x1000000 is past the end of the file/],
      [0x8000_0000_0000_0000n | 0x1000n, /the L2 table overlaps the header or a table/],
    ] as const) {
      const { io, h } = small();
      io.data.writeBigUInt64BE(value, h.l1Offset);
      const d = reopen(io, h);
      assert.throws(
        () => d.readv([Buffer.alloc(512)], 0),
        (e: Error) => e instanceof Qcow2Error && re.test(e.message),
      );
    }
  });

  test('L2: reserved bits, unaligned, past the end, compressed with bit 63; after one, no more writes', () => {
    const { io, h } = small();
    const l2 = entryOffset(io.data.readUInt32BE(h.l1Offset), io.data.readUInt32BE(h.l1Offset + 4));
    io.data.writeBigUInt64BE(0x8000_0000_0000_0002n | 0x5000n, l2 + 8);
    io.data.writeBigUInt64BE(0x8000_0000_0000_5200n, l2 + 16);
    io.data.writeBigUInt64BE(0x8000_0000_00ff_0000n, l2 + 24);
    io.data.writeBigUInt64BE((BigInt((COMPRESSED_HI | 0x80000000) >>> 0) << 32n) | 0x5000n, l2 + 32);
    const d = reopen(io, h);
    const at =
      (gc: number): (() => number) =>
      () =>
        d.readv([Buffer.alloc(512)], gc * 4096);
    assert.throws(at(1), /L2 entry for guest cluster 1 has reserved bits set/);
    assert.throws(at(2), /L2 entry for guest cluster 2: offset 0x5200 is not cluster-aligned/);
    assert.throws(at(3), /L2 entry for guest cluster 3: offset 0xff0000 is past the end of the file/);
    assert.throws(at(4), /L2 entry for guest cluster 4: compressed with bit 63 set/);
    assert.equal(at(0)(), 512, 'a good entry still reads');
    assert.throws(() => d.writev([Buffer.alloc(512)], 4096), /reserved bits set/);
    assert.throws(() => d.writev([Buffer.alloc(512)], 0), /no more writes after an earlier error/);
  });

  test('refcount table entries: unaligned or past the end, refused when an allocation needs them', () => {
    const { io, h } = small();
    io.data.writeBigUInt64BE(0x1000_0000n, h.refcountTableOffset);
    const d = reopen(io, h);
    assert.throws(
      () => d.writev([Buffer.alloc(4096, 1)], 64 * KiB),
      /refcount table entry 0 \(0x10000000\) points past the end/,
    );
  });

  test('a compressed cluster that inflates to more or less than a cluster, or not at all', () => {
    const { io, h } = small();
    const l2 = entryOffset(io.data.readUInt32BE(h.l1Offset), io.data.readUInt32BE(h.l1Offset + 4));
    const start = io.data.length;
    io.writev([Buffer.alloc(512, 0xff)], start); // not deflate data
    io.data.writeBigUInt64BE((BigInt(COMPRESSED_HI) << 32n) | BigInt(start), l2 + 8);
    const d = reopen(io, h);
    assert.throws(() => d.readv([Buffer.alloc(512)], 4096), /compressed cluster for guest cluster 1 does not inflate/);
  });
});

describe("10k mutated images (the fuzz target's cases)", () => {
  test('no access past the end of the file; every refusal is one Qcow2Error line naming the image', () => {
    fc.assert(
      fc.property(qcow2CaseArb, (c) => {
        const { verdict, io } = runQcow2Case(c);
        assert.deepEqual(io.outside, []);
        if (verdict.kind === 'crash') throw verdict.error;
        assert.notEqual(verdict.kind, 'oob', JSON.stringify(verdict));
        if (verdict.kind === 'refused') {
          assert.match(verdict.why, /^qcow2 image v[23]\.qcow2: /);
          assert.ok(!verdict.why.includes('\n'));
        }
      }),
      { numRuns: 10_000, seed: 0x9c0e2 },
    );
  });
});

/**
 * An image file that remembers its writes since the last sync, so a test can build the file a crash
 * would leave: every synced write, plus any subset of the unsynced ones.
 */
class CrashIo implements ImageIo {
  durable: Buffer;
  pending: { pos: number; data: Buffer }[] = [];
  constructor(
    public mem: MemIo,
    private readonly onWrite: (io: CrashIo) => void,
  ) {
    this.durable = Buffer.from(mem.data);
  }
  size(): number {
    return this.mem.size();
  }
  readv(bufs: Uint8Array[], position: number): number {
    return this.mem.readv(bufs, position);
  }
  writev(bufs: Uint8Array[], position: number): number {
    const data = Buffer.concat(bufs);
    const n = this.mem.writev([data], position);
    this.pending.push({ pos: position, data });
    this.onWrite(this);
    return n;
  }
  sync(): void {
    this.durable = Buffer.from(this.mem.data);
    this.pending = [];
  }
  punch(): void {}
  /** The file after a crash now: the durable bytes and the pending writes `keep` picks, in order. */
  crashed(keep: (i: number) => boolean): Buffer {
    let b = Buffer.from(this.durable);
    this.pending.forEach((w, i) => {
      if (!keep(i)) return;
      if (w.pos + w.data.length > b.length) b = Buffer.concat([b, Buffer.alloc(w.pos + w.data.length - b.length)]);
      w.data.copy(b, w.pos);
    });
    return b;
  }
}

/** Every cluster the L1/L2 tables of `b` reference must be refcounted, and data must be whole. */
function checkCrashState(b: Buffer, tags: Map<number, Set<number>>, cs: number): void {
  const h = parseHeader(readHead(new MemIo(b)), b.length, 'crash.qcow2');
  const refcount = (off: number): number => {
    const c = off / cs;
    const per = (cs * 8) / 16;
    const rb = Number(b.readBigUInt64BE(h.refcountTableOffset + Math.floor(c / per) * 8));
    if (rb === 0 || rb + cs > b.length) return 0;
    return readEntry(b.subarray(rb, rb + cs), c % per, 4);
  };
  const seen = new Set<number>();
  for (let i = 0; i < h.l1Size; i++) {
    const l2 = entryOffset(b.readUInt32BE(h.l1Offset + i * 8), b.readUInt32BE(h.l1Offset + i * 8 + 4));
    if (l2 === 0) continue;
    assert.ok(l2 + cs <= b.length, `L1 ${i} points past the end`);
    assert.ok(refcount(l2) >= 1, `L2 table at ${l2} has refcount 0`);
    for (let j = 0; j < cs / 8; j++) {
      const hi = b.readUInt32BE(l2 + j * 8);
      const lo = b.readUInt32BE(l2 + j * 8 + 4);
      const off = entryOffset(hi, lo);
      if (off === 0) continue;
      const gc = i * (cs / 8) + j;
      assert.ok(!seen.has(off), `cluster ${off} referenced twice`);
      seen.add(off);
      assert.ok(refcount(off) >= 1, `guest cluster ${gc} → ${off}: refcount 0`);
      if (lo & 1) continue; // a zero cluster: its data is never read
      assert.ok(off + cs <= b.length, `guest cluster ${gc} → ${off}: past the end`);
      const tag = b.readUInt32LE(off);
      assert.ok(tags.get(gc)?.has(tag), `guest cluster ${gc} → ${off}: holds ${tag}, never written there`);
      for (let k = 0; k < cs; k += 4) assert.equal(b.readUInt32LE(off + k), tag, `guest cluster ${gc}: a torn cluster`);
    }
  }
}

describe('crash safety of the flush order', () => {
  test('a crash after any write, losing any unsynced writes, leaves no entry pointing at missing data or refcounts', () => {
    const cs = 4096;
    const tags = new Map<number, Set<number>>();
    const r = prng(42);
    let crashes = 0;
    const io = new CrashIo(new MemIo(qcow2Image({ size: 512 * KiB, clusterBits: 12 })), (cio) => {
      // After each write, three crashes: every unsynced write lost, all kept, a random subset.
      for (const keep of [() => false, () => true, () => r() < 0.5]) {
        checkCrashState(cio.crashed(keep), tags, cs);
        crashes++;
      }
    });
    const h = parseHeader(readHead(io), io.size(), 'crash.qcow2');
    // A small cache, so dirty tables are also written when it fills, not only at flushes.
    const d = new Qcow2Disk({ io, header: h, name: 'crash.qcow2', readOnly: false, cacheBytes: 4 * cs });
    for (let i = 0; i < 200; i++) {
      const gc = Math.floor(r() * 126);
      const n = 1 + Math.floor(r() * 3);
      const op = r();
      if (op < 0.8) {
        const buf = Buffer.alloc(n * cs);
        for (let k = 0; k < n; k++) {
          const tag = ((gc + k) << 16) | i;
          if (!tags.has(gc + k)) tags.set(gc + k, new Set());
          tags.get(gc + k)?.add(tag);
          for (let o = 0; o < cs; o += 4) buf.writeUInt32LE(tag, k * cs + o);
        }
        d.writev([buf], gc * cs);
      } else if (op < 0.9) d.discard(gc * cs, n * cs);
      else d.writeZeroes(gc * cs, n * cs, op < 0.95);
      if (r() < 0.1) d.flush();
    }
    d.flush();
    checkCrashState(io.mem.data, tags, cs);
    assert.ok(crashes > 600, `${crashes} crash points checked`);
  });
});
