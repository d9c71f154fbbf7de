/**
 * The qcow2 backend (src/backends/qcow2/) on mutated images: a valid image vireo made and wrote
 * (data clusters, a zero cluster, a compressed cluster, L2 tables, refcount blocks; over a raw backing
 * layer in one seed, a version 2 image with 512-byte clusters in the other), whose header fields,
 * extensions, backing name, L1/L2/refcount entries and compressed data a case overwrites with
 * interesting values (or truncates the file), then opens from memory as a drive open does and reads
 * the whole disk, and when writable writes, zeroes, discards and flushes. The image file is an
 * in-memory ImageIo that records any access past its end (`oob`); a Qcow2Error (any VireoError) is a
 * refusal, anything else a crash. Cases are a few milliseconds: CI runs 10k.
 */
import { deflateRawSync } from 'node:zlib';
import fc from 'fast-check';
import { qcow2Image } from '../../src/backends/qcow2/create.js';
import { parseHeader } from '../../src/backends/qcow2/format.js';
import { type DiskLayer, RawLayer } from '../../src/backends/qcow2/image-io.js';
import { readHead } from '../../src/backends/qcow2/open.js';
import { Qcow2Disk } from '../../src/backends/qcow2/qcow2-disk.js';
import { MemIo } from '../support/qcow2.js';
import { guarded, oob, target, type Verdict } from './harness.js';

interface Seed {
  name: string;
  bytes: Buffer;
  /** Where the metadata lies: mutations land in these ranges most of the time. */
  hot: [number, number][];
  backing: Buffer | undefined;
}

/** A seed: an image written through the backend, plus one compressed cluster put in by hand. */
function makeSeed(name: string, clusterBits: number, version: 2 | 3, backing: Buffer | undefined): Seed {
  const cs = 2 ** clusterBits;
  const size = 64 * cs;
  const io = new MemIo(
    qcow2Image({ size, clusterBits, backing: backing ? { file: 'base.raw', format: 'raw' } : undefined }),
  );
  if (version === 2) {
    // A version 2 header: 72 bytes, then the same extensions (moved up), no feature fields.
    const h = io.data;
    h.writeUInt32BE(2, 4);
    const ext = Buffer.from(h.subarray(104, 512));
    ext.copy(h, 72);
    const bo = h.readUInt32BE(12);
    if (bo !== 0) h.writeUInt32BE(bo - 32, 12);
  }
  const header = parseHeader(readHead(io), io.size(), name);
  const layer = backing ? new RawLayer(new MemIo(backing), backing.length) : undefined;
  const d = new Qcow2Disk({ io, header, name, readOnly: false, backing: layer, cacheBytes: 4 * cs });
  const pat = (n: number, v: number): Buffer => Buffer.alloc(n, v);
  d.writev([pat(cs, 0x11)], 0);
  d.writev([pat(3 * cs + 512, 0x22)], 5 * cs + 512);
  d.writev([pat(512, 0x33)], 40 * cs);
  d.writev([pat(cs, 0x44)], 2 * cs);
  if (version === 3) d.writeZeroes(20 * cs, cs, true);
  d.flush();
  // Guest cluster 2 becomes compressed: raw deflate data at an unaligned offset inside the host
  // cluster it was written to (so the refcounts stay right), its L2 entry rewritten by hand.
  const l1 = io.data.readUInt32BE(header.l1Offset + 4) & ~0x1ff;
  const host = io.data.readUInt32BE(l1 + 2 * 8 + 4) & ~0x1ff;
  const data = deflateRawSync(Buffer.alloc(cs, 0x44).fill(0x45, 0, 100));
  const start = host + 24;
  io.writev([data], start);
  const x = BigInt(62 - (clusterBits - 8));
  const sectors = Math.ceil(((start % 512) + data.length) / 512) - 1;
  io.data.writeBigUInt64BE((1n << 62n) | (BigInt(sectors) << x) | BigInt(start), l1 + 2 * 8);
  const rt = header.refcountTableOffset;
  const rb = Number(io.data.readBigUInt64BE(rt));
  return {
    name,
    bytes: Buffer.from(io.data),
    hot: [
      [0, Math.min(cs, 512)],
      [header.l1Offset, header.l1Offset + header.l1Size * 8],
      [rt, rt + 64],
      [rb, rb + 128],
      [l1, l1 + 64 * 8],
      [start, start + data.length],
    ],
    backing,
  };
}

const base = Buffer.alloc(64 * 4096);
for (let i = 0; i < base.length; i += 512) base.fill((i / 512) & 0xff, i, i + 512);
export const QCOW2_SEEDS: readonly Seed[] = [makeSeed('v3.qcow2', 12, 3, base), makeSeed('v2.qcow2', 9, 2, undefined)];

interface Mutation {
  range: number;
  /** In the hot range (a fraction of it), or anywhere in the file (a fraction of it). */
  hot: boolean;
  at: number;
  width: 1 | 4 | 8;
  value: bigint;
}
export interface Qcow2Case {
  seed: number;
  mutations: Mutation[];
  truncate: number | null;
  readOnly: boolean;
  /** Guest byte offsets (fractions of the disk) written, zeroed and discarded when writable. */
  ops: { kind: 'write' | 'zero' | 'discard'; at: number; sectors: number }[];
}

const INTERESTING = [
  0n,
  1n,
  2n,
  3n,
  4n,
  6n,
  7n,
  8n,
  9n,
  16n,
  21n,
  22n,
  63n,
  64n,
  72n,
  104n,
  512n,
  4096n,
  0x7fffffffn,
  0x80000000n,
  0xffffffffn,
  1n << 32n,
  1n << 40n,
  1n << 53n,
  1n << 56n,
  1n << 62n,
  1n << 63n,
  (1n << 64n) - 1n,
  0x200n,
  0x1000n,
  0x10000n,
  0xfffffe00n,
  0x8000000000000000n | 0x1000n,
  0x4000000000000000n | 0x3000n,
];

/**
 * A uniform fraction of a range (fc.double spreads over the exponents, so nearly every value would be
 * tiny, and fast-check's integers lean towards 0: either way most cases would hit the magic).
 */
const fraction = fc.noBias(fc.integer({ min: 0, max: 2 ** 32 - 1 })).map((x) => x / 2 ** 32);

const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  range: fc.nat(5),
  hot: fc.boolean(),
  at: fraction,
  width: fc.constantFrom<1 | 4 | 8>(1, 4, 8),
  value: fc.oneof(fc.constantFrom(...INTERESTING), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
});

export const qcow2CaseArb: fc.Arbitrary<Qcow2Case> = fc.record({
  seed: fc.nat(QCOW2_SEEDS.length - 1),
  mutations: fc.array(mutationArb, { minLength: 1, maxLength: 4 }),
  truncate: fc.oneof({ weight: 7, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fraction }),
  readOnly: fc.boolean(),
  ops: fc.array(
    fc.record({
      kind: fc.constantFrom<'write' | 'zero' | 'discard'>('write', 'zero', 'discard'),
      at: fraction,
      sectors: fc.integer({ min: 1, max: 40 }),
    }),
    { maxLength: 4 },
  ),
});

/** The mutated image's bytes. */
export function mutatedImage(c: Qcow2Case): { seed: Seed; bytes: Buffer } {
  const seed = QCOW2_SEEDS[c.seed] as Seed;
  let b = Buffer.from(seed.bytes);
  for (const m of c.mutations) {
    const [lo, hi] = seed.hot[m.range] as [number, number];
    const pos = m.hot ? lo + Math.floor(m.at * (hi - lo)) : Math.floor(m.at * b.length);
    const p = Math.max(0, Math.min(b.length - m.width, pos - (pos % m.width)));
    const v = m.value & ((1n << BigInt(8 * m.width)) - 1n);
    if (m.width === 1) b[p] = Number(v);
    else if (m.width === 4) b.writeUInt32BE(Number(v), p);
    else b.writeBigUInt64BE(v, p);
  }
  if (c.truncate !== null) b = b.subarray(0, Math.floor(c.truncate * b.length));
  return { seed, bytes: b };
}

/** Opens, reads everything, and (writable) writes, zeroes, discards and flushes; accesses audited. */
export function runQcow2Case(c: Qcow2Case): { verdict: Verdict; io: MemIo } {
  const { seed, bytes } = mutatedImage(c);
  const io = new MemIo(bytes); // mutatedImage's own copy
  const backingIo = seed.backing ? new MemIo(seed.backing) : undefined;
  const verdict = guarded(() => {
    const header = parseHeader(readHead(io), io.size(), seed.name);
    const backing: DiskLayer | undefined = backingIo ? new RawLayer(backingIo, backingIo.size()) : undefined;
    const d = new Qcow2Disk({
      io,
      header,
      name: seed.name,
      readOnly: c.readOnly,
      backing,
      cacheBytes: 8 * header.clusterSize,
    });
    // A hostile size is bounded by the header checks, but a case need not read terabytes: the first
    // and last 64 clusters.
    const span = Math.min(d.size, 64 * header.clusterSize);
    const buf = Buffer.allocUnsafe(span);
    d.readv([buf], 0);
    if (d.size > span)
      d.readv([buf.subarray(0, Math.floor(span / 512) * 512)], Math.floor((d.size - span) / 512) * 512);
    if (!c.readOnly) {
      const sectors = Math.floor(span / 512);
      for (const op of c.ops) {
        const s = Math.floor(op.at * sectors);
        const n = Math.max(1, Math.min(op.sectors, sectors - s));
        if (s >= sectors) continue;
        if (op.kind === 'write') d.writev([Buffer.alloc(n * 512, 0x5a)], s * 512);
        else if (op.kind === 'zero') d.writeZeroes(s * 512, n * 512, op.at < 0.5);
        else d.discard(s * 512, n * 512);
      }
      d.flush();
      d.readv([buf], 0);
    }
    return undefined;
  });
  const outside = [...io.outside, ...(backingIo?.outside ?? [])];
  return { verdict: outside.length > 0 ? oob(outside.join('; ')) : verdict, io };
}

export const qcow2Target = target<Qcow2Case>('qcow2', 10_000, () => ({
  arbitrary: qcow2CaseArb,
  run: (c) => runQcow2Case(c).verdict,
}));
