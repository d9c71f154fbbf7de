/**
 * Unit tests for guest memory (bounds checking over real anonymous host mappings) and the x86_64
 * guest-physical layout: RAM ranges around the MMIO hole and the e820-style memory map.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { LAYOUT, MMIO_HOLE_END, MMIO_HOLE_START, ramRanges } from '../src/arch/x86_64/layout.js';
import { E820_RAM, E820_RESERVED, memoryMap, upperMemoryKiB } from '../src/arch/x86_64/memmap.js';
import { GiB, MiB } from '../src/common/address.js';
import { GuestMemoryError, VireoError } from '../src/common/errors.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';

const R0 = { gpa: 0, size: 1 * MiB };
const R1 = { gpa: 0x200000, size: 1 * MiB };
const REGIONS = [R0, R1];

/** Rejected with the guest-memory error code. */
const outside = (e: unknown): boolean =>
  e instanceof GuestMemoryError && e.code === 'VIREO_ERR_GUEST_MEMORY_ACCESS' && !e.message.includes('\n');

/** Whether [gpa, gpa+max(len,1)) lies wholly inside one of REGIONS (the model the checks must follow). */
const inside = (gpa: number, len: number): boolean =>
  Number.isSafeInteger(gpa) &&
  Number.isSafeInteger(len) &&
  gpa >= 0 &&
  len >= 0 &&
  REGIONS.some((r) => gpa >= r.gpa && gpa + Math.max(len, 1) <= r.gpa + r.size);

let mapping: GuestMemoryMapping;
let mem: GuestMemory;

before(() => {
  mapping = GuestMemoryMapping.allocate(REGIONS);
  mem = new GuestMemory(mapping.descriptors);
});
after(() => mapping.release());

describe('GuestMemory', () => {
  test('describes its regions', () => {
    assert.equal(mem.size, 2 * MiB);
    assert.equal(mem.end, 0x300000);
    assert.deepEqual(
      mem.descriptors.map(({ gpa, size }) => ({ gpa, size })),
      REGIONS,
    );
    for (const d of mem.descriptors) assert.ok(d.hostAddr > 0 && d.hostAddr % 4096 === 0);
  });

  test('fresh anonymous memory reads as zero', () => {
    assert.equal(mem.read64(0x80000), 0n);
    assert.equal(mem.read32(0x2ffffc), 0);
  });

  test('every width round-trips, little-endian, in both regions', () => {
    for (const base of [0x1000, 0x201000]) {
      mem.write8(base, 0xab);
      assert.equal(mem.read8(base), 0xab);
      mem.write16(base, 0xbeef);
      assert.equal(mem.read16(base), 0xbeef);
      assert.deepEqual([...mem.read(base, 2)], [0xef, 0xbe]);
      mem.write32(base, 0xdeadbeef);
      assert.equal(mem.read32(base), 0xdeadbeef);
      assert.deepEqual([...mem.read(base, 4)], [0xef, 0xbe, 0xad, 0xde]);
      mem.write64(base, 0x0123456789abcdefn);
      assert.equal(mem.read64(base), 0x0123456789abcdefn);
      assert.deepEqual([...mem.read(base, 8)], [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
      assert.equal(mem.read32(base + 4), 0x01234567);
      assert.equal(mem.read16(base + 1), 0xabcd, 'unaligned reads work');
    }
  });

  test('writes wrap values to their width', () => {
    mem.write8(0x3000, 0x1ff);
    assert.equal(mem.read8(0x3000), 0xff);
    mem.write32(0x3000, -1);
    assert.equal(mem.read32(0x3000), 0xffffffff);
    mem.write64(0x3000, -2n);
    assert.equal(mem.read64(0x3000), 0xfffffffffffffffen);
    mem.write64(0x3000, (1n << 64n) + 5n);
    assert.equal(mem.read64(0x3000), 5n);
  });

  test('property: each width reads back what it wrote at any in-bounds address', () => {
    const width = fc.constantFrom(1, 2, 4, 8);
    fc.assert(
      fc.property(
        fc.constantFrom(...REGIONS),
        width,
        fc.nat(),
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        (r, w, o, v) => {
          const gpa = r.gpa + (o % (r.size - w + 1));
          const bits = BigInt(w * 8);
          const want = BigInt.asUintN(Number(bits), v);
          if (w === 8) mem.write64(gpa, v);
          else if (w === 4) mem.write32(gpa, Number(want));
          else if (w === 2) mem.write16(gpa, Number(want));
          else mem.write8(gpa, Number(want));
          const got =
            w === 8 ? mem.read64(gpa) : BigInt(w === 4 ? mem.read32(gpa) : w === 2 ? mem.read16(gpa) : mem.read8(gpa));
          assert.equal(got, want);
          assert.equal(Buffer.from(mem.read(gpa, w)).readUIntLE(0, Math.min(w, 6)), Number(want & ((1n << 48n) - 1n)));
        },
      ),
    );
  });

  test('slice is a zero-copy view; read is a copy', () => {
    const view = mem.slice(0x4000, 16);
    assert.equal(view.length, 16);
    mem.write8(0x4003, 0x77);
    assert.equal(view[3], 0x77, 'the view sees guest writes');
    view[5] = 0x99;
    assert.equal(mem.read8(0x4005), 0x99, 'guest memory sees view writes');
    const copy = mem.read(0x4000, 16);
    copy[5] = 0x11;
    assert.equal(mem.read8(0x4005), 0x99, 'a read() copy is detached');
    assert.equal(mem.slice(0x4000, 0).length, 0);
    const whole = mem.slice(R1.gpa, R1.size);
    assert.equal(whole.length, R1.size, 'a whole region in one view');
  });

  test('write, fill and readCString', () => {
    mem.write(0x5000, Buffer.from('guest\0tail', 'latin1'));
    assert.equal(mem.readCString(0x5000), 'guest');
    assert.equal(mem.readCString(0x5000, 3), 'gue', 'stops at max');
    mem.fill(0x5000, 5, 0x2a);
    assert.deepEqual([...mem.read(0x5000, 6)], [0x2a, 0x2a, 0x2a, 0x2a, 0x2a, 0]);
    mem.fill(0x5000, 6);
    assert.equal(mem.read32(0x5000), 0);
    // A string that runs off the end of a region is an access error, not a wrap into other memory.
    mem.fill(R0.size - 4, 4, 0x41);
    assert.throws(() => mem.readCString(R0.size - 4), outside);
  });

  test('accesses that straddle a region end or the gap throw', () => {
    mem.write32(R0.size - 4, 0x11223344);
    assert.equal(mem.read32(R0.size - 4), 0x11223344, 'the last dword of region 0 is fine');
    assert.equal(typeof mem.read64(0x2ffff8), 'bigint', 'the last qword of region 1 is fine');
    const cases: [string, () => unknown][] = [
      ['read16 across the end of region 0', () => mem.read16(R0.size - 1)],
      ['read32 across the end of region 0', () => mem.read32(R0.size - 3)],
      ['read64 across the end of region 0', () => mem.read64(R0.size - 7)],
      ['write8 in the gap', () => mem.write8(0x100000, 1)],
      ['read8 just below region 1', () => mem.read8(0x1fffff)],
      ['read32 from the gap into region 1', () => mem.read32(0x1ffffe)],
      ['write64 across the end of region 1', () => mem.write64(0x2ffff9, 1n)],
      ['read8 at the end of memory', () => mem.read8(0x300000)],
      ['slice spanning both regions', () => mem.slice(0, 0x300000)],
      ['slice one byte too long', () => mem.slice(0, R0.size + 1)],
      ['zero-length slice in the gap', () => mem.slice(0x180000, 0)],
      ['write across the gap', () => mem.write(R0.size - 2, Uint8Array.of(1, 2, 3, 4))],
      ['fill across the gap', () => mem.fill(R0.size - 2, 4)],
    ];
    for (const [what, f] of cases) assert.throws(f, outside, what);
  });

  test('a rejected write changes nothing', () => {
    mem.fill(R0.size - 2, 2, 0x5a);
    assert.throws(() => mem.write(R0.size - 2, Uint8Array.of(1, 2, 3, 4)), outside);
    assert.deepEqual([...mem.read(R0.size - 2, 2)], [0x5a, 0x5a]);
  });

  test('invalid addresses throw, whether or not a region is cached', () => {
    const bad = [-1, -4096, Number.NaN, 0.5, 1.5, 4096.25, 2 ** 60, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
    for (const gpa of bad) {
      mem.read8(0x10); // Warm the last-region cache on region 0.
      assert.throws(() => mem.read8(gpa), outside, `read8(${gpa})`);
      assert.throws(() => mem.read32(gpa), outside, `read32(${gpa})`);
      assert.throws(() => mem.write64(gpa, 0n), outside, `write64(${gpa})`);
      assert.throws(() => mem.slice(gpa, 1), outside, `slice(${gpa}, 1)`);
      assert.equal(mem.isValid(gpa, 1), false, `isValid(${gpa}, 1)`);
    }
  });

  test('invalid lengths throw, whether or not a region is cached', () => {
    const bad = [-1, -16, Number.NaN, 0.5, 1.5, 2 ** 60, R0.size + 1, Number.POSITIVE_INFINITY];
    for (const len of bad) {
      mem.read8(0x10);
      assert.throws(() => mem.slice(0x100, len), outside, `slice(0x100, ${len})`);
      assert.throws(() => mem.read(0x100, len), outside, `read(0x100, ${len})`);
      assert.throws(() => mem.fill(0x100, len), outside, `fill(0x100, ${len})`);
      assert.equal(mem.isValid(0x100, len), false, `isValid(0x100, ${len})`);
    }
  });

  test('property: an access either lies wholly in one region or throws GuestMemoryError', () => {
    const special = fc.constantFrom(
      -1,
      Number.NaN,
      0.5,
      2 ** 60,
      2 ** 53,
      Number.MAX_SAFE_INTEGER,
      R0.size,
      R1.gpa,
      R1.gpa + R1.size,
    );
    const gpa = fc.oneof(
      fc.integer({ min: 0, max: 0x310000 }),
      fc.integer({ min: R0.size - 16, max: R0.size + 16 }),
      fc.integer({ min: R1.gpa - 16, max: R1.gpa + R1.size + 16 }),
      fc.double({ noNaN: false }),
      special,
    );
    const len = fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 0x210000 }), fc.double(), special);
    fc.assert(
      fc.property(fc.boolean(), gpa, len, (warm, a, n) => {
        if (warm) mem.read8(R1.gpa); // Leave region 1 in the cache.
        const expect = inside(a, n);
        assert.equal(mem.isValid(a, n), expect);
        let view: Uint8Array | undefined;
        try {
          view = mem.slice(a, n);
        } catch (e) {
          assert.ok(outside(e), `unexpected ${String(e)}`);
          assert.equal(expect, false, `slice(${a}, ${n}) threw but lies inside a region`);
          return;
        }
        assert.equal(expect, true, `slice(${a}, ${n}) succeeded outside guest memory`);
        assert.ok(view.length === n, `length ${view.length} for ${n}`);
        if (n > 0) {
          // The view is the guest memory at a: poke through it and read back via the checked path.
          const old = view[0] as number;
          view[0] = old ^ 0xff;
          assert.equal(mem.read8(a), old ^ 0xff);
          view[0] = old;
        }
      }),
    );
  });

  test('property: fixed-width accesses agree with the region model', () => {
    const gpa = fc.oneof(
      fc.integer({ min: R0.size - 12, max: R0.size + 4 }),
      fc.integer({ min: R1.gpa - 12, max: R1.gpa + 4 }),
      fc.integer({ min: R1.gpa + R1.size - 12, max: R1.gpa + R1.size + 4 }),
      fc.double(),
    );
    fc.assert(
      fc.property(gpa, fc.constantFrom(1, 2, 4, 8), (a, w) => {
        const read = () => (w === 8 ? mem.read64(a) : w === 4 ? mem.read32(a) : w === 2 ? mem.read16(a) : mem.read8(a));
        if (inside(a, w)) assert.notEqual(read(), undefined);
        else assert.throws(read, outside);
      }),
    );
  });

  test('overlapping region descriptors are rejected', () => {
    const [a, b] = mapping.descriptors;
    assert.ok(a && b);
    assert.throws(
      () => new GuestMemory([a, { ...b, gpa: a.gpa + a.size - 4096 }]),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT',
    );
    assert.throws(
      () => new GuestMemory([{ ...b, gpa: 0x10000 }, a]),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT',
      'detected regardless of order',
    );
    // Adjacent is fine, and a second GuestMemory over the same mappings shares the bytes.
    const twin = new GuestMemory([a, { ...b, gpa: a.gpa + a.size }]);
    mem.write32(0x6000, 0xfeedface);
    assert.equal(twin.read32(0x6000), 0xfeedface);
    mem.write32(R1.gpa + 8, 0x12345678);
    assert.equal(twin.read32(a.size + 8), 0x12345678);
  });

  test('allocate rejects ranges that are not page aligned', () => {
    const layout = (e: unknown): boolean => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT';
    assert.throws(() => GuestMemoryMapping.allocate([{ gpa: 0, size: 4095 }]), layout);
    assert.throws(() => GuestMemoryMapping.allocate([{ gpa: 0x800, size: 4096 }]), layout);
    assert.throws(
      () =>
        GuestMemoryMapping.allocate([
          { gpa: 0, size: 4096 },
          { gpa: 0x10000, size: 0 },
        ]),
      layout,
    );
  });

  test('release is idempotent', () => {
    const m = GuestMemoryMapping.allocate([{ gpa: 0, size: 4096 }]);
    const g = new GuestMemory(m.descriptors);
    g.write8(0, 1);
    assert.equal(g.read8(0), 1);
    m.release();
    m.release();
  });
});

describe('layout', () => {
  test('the MMIO hole is the 768 MiB below 4 GiB', () => {
    assert.equal(MMIO_HOLE_START, 0xd0000000);
    assert.equal(MMIO_HOLE_END, 0x100000000);
  });

  test('ramRanges: one range up to the hole, split around it above', () => {
    assert.deepEqual(ramRanges(512 * MiB), [{ gpa: 0, size: 512 * MiB }]);
    assert.deepEqual(ramRanges(MMIO_HOLE_START), [{ gpa: 0, size: MMIO_HOLE_START }]);
    assert.deepEqual(ramRanges(MMIO_HOLE_START + 4096), [
      { gpa: 0, size: MMIO_HOLE_START },
      { gpa: 4 * GiB, size: 4096 },
    ]);
    assert.deepEqual(ramRanges(8 * GiB), [
      { gpa: 0, size: MMIO_HOLE_START },
      { gpa: 4 * GiB, size: 8 * GiB - MMIO_HOLE_START },
    ]);
  });

  test('property: ramRanges keeps the total, avoids the hole, and stays page aligned', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1 << 20 }), (pages) => {
        const size = pages * 4096 * 16;
        const rs = ramRanges(size);
        assert.equal(
          rs.reduce((s, r) => s + r.size, 0),
          size,
        );
        for (const r of rs) {
          assert.ok(r.size > 0 && r.gpa % 4096 === 0 && r.size % 4096 === 0);
          assert.ok(r.gpa + r.size <= MMIO_HOLE_START || r.gpa >= MMIO_HOLE_END, 'no RAM in the hole');
        }
      }),
    );
  });
});

describe('memoryMap', () => {
  const fixed = [
    { addr: 0, size: LAYOUT.lowRamEnd, type: E820_RAM },
    { addr: LAYOUT.lowRamEnd, size: 0xa0000 - LAYOUT.lowRamEnd, type: E820_RESERVED },
    { addr: 0xf0000, size: 0x10000, type: E820_RESERVED },
  ];
  /** Only `descriptors` is read: a stand-in avoids mapping gigabytes. */
  const fake = (ranges: { gpa: number; size: number }[]) =>
    ({ descriptors: ranges.map((r) => ({ ...r, hostAddr: 0 })) }) as unknown as GuestMemory;

  test('low memory, EBDA and BIOS holes, then RAM above 1 MiB', () => {
    assert.equal(LAYOUT.lowRamEnd, 0x9fc00);
    assert.deepEqual(memoryMap(fake(ramRanges(256 * MiB))), [
      ...fixed,
      { addr: 0x100000, size: 255 * MiB, type: E820_RAM },
    ]);
    assert.equal(upperMemoryKiB(fake(ramRanges(256 * MiB))), 255 * 1024);
  });

  test('a guest larger than 3.25 GiB gets RAM on both sides of the hole', () => {
    const mm = fake(ramRanges(6 * GiB));
    assert.deepEqual(memoryMap(mm), [
      ...fixed,
      { addr: 0x100000, size: MMIO_HOLE_START - 0x100000, type: E820_RAM },
      { addr: 4 * GiB, size: 6 * GiB - MMIO_HOLE_START, type: E820_RAM },
    ]);
    assert.equal(upperMemoryKiB(mm), (MMIO_HOLE_START - 0x100000) / 1024);
  });

  test('the real two-region mapping: region 0 ends at 1 MiB, so only region 1 is listed above it', () => {
    assert.deepEqual(memoryMap(mem), [...fixed, { addr: R1.gpa, size: R1.size, type: E820_RAM }]);
    assert.equal(upperMemoryKiB(mem), 0);
  });

  test('entries never overlap and RAM never covers the MMIO hole', () => {
    for (const size of [64 * MiB, MMIO_HOLE_START, 4 * GiB, 16 * GiB]) {
      const map = memoryMap(fake(ramRanges(size)));
      const sorted = [...map].sort((a, b) => a.addr - b.addr);
      for (let i = 1; i < sorted.length; i++) {
        const p = sorted[i - 1] as (typeof map)[number];
        assert.ok(p.addr + p.size <= (sorted[i] as (typeof map)[number]).addr);
      }
      for (const e of map)
        if (e.type === E820_RAM) assert.ok(e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END);
    }
  });
});
