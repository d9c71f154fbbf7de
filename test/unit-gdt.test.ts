/**
 * Unit tests for GDT descriptor packing and the kvm_segment derived from a descriptor.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { GDT_32, GDT_64, gdtEntry, segmentFromGdt } from '../src/arch/x86_64/gdt.js';

const FLAT = [
  // flags, raw descriptor (as every OS writes it), expected segment fields.
  { flags: 0xa09b, raw: 0x00af9b000000ffffn, what: '64-bit code', type: 0xb, s: 1, l: 1, db: 0 },
  { flags: 0xc093, raw: 0x00cf93000000ffffn, what: 'flat data', type: 0x3, s: 1, l: 0, db: 1 },
  { flags: 0x808b, raw: 0x008f8b000000ffffn, what: 'busy 32-bit TSS', type: 0xb, s: 0, l: 0, db: 0 },
  { flags: 0xc09b, raw: 0x00cf9b000000ffffn, what: '32-bit code', type: 0xb, s: 1, l: 0, db: 1 },
] as const;

for (const d of FLAT) {
  test(`${d.what} (${d.flags.toString(16)}): packs to the standard descriptor and round-trips`, () => {
    const entry = gdtEntry(d.flags, 0, 0xfffff);
    assert.equal(entry, d.raw);
    const seg = segmentFromGdt(entry, 2);
    assert.deepEqual(seg, {
      base: 0n,
      limit: 0xffffffff,
      selector: 0x10,
      type: d.type,
      present: 1,
      dpl: 0,
      db: d.db,
      s: d.s,
      l: d.l,
      g: 1,
      avl: 0,
      unusable: 0,
    });
  });
}

test('the null descriptor is unusable', () => {
  const seg = segmentFromGdt(0n, 0);
  assert.equal(seg.present, 0);
  assert.equal(seg.unusable, 1);
  assert.equal(seg.selector, 0);
});

test('byte granularity keeps the raw limit; base bytes land in both halves', () => {
  const entry = gdtEntry(0x0093, 0x12345678, 0xabcde);
  assert.equal(entry, 0x120a93345678bcden);
  const seg = segmentFromGdt(entry, 5);
  assert.equal(seg.base, 0x12345678n);
  assert.equal(seg.limit, 0xabcde);
  assert.equal(seg.g, 0);
  assert.equal(seg.selector, 0x28);
});

test('DPL and AVL are decoded', () => {
  const seg = segmentFromGdt(gdtEntry(0x10f3, 0, 0xfffff), 4); // AVL, present, DPL 3, data.
  assert.equal(seg.dpl, 3);
  assert.equal(seg.avl, 1);
  assert.equal(seg.type, 3);
});

test('vireo’s GDT tables hold the flat descriptors at their selectors', () => {
  assert.deepEqual(GDT_64, [0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn, 0x008f8b000000ffffn]);
  assert.deepEqual(GDT_32, [0n, 0x00cf9b000000ffffn, 0x00cf93000000ffffn, 0x008f8b000000ffffn]);
  const cs64 = segmentFromGdt(GDT_64[1] as bigint, 1);
  assert.equal(cs64.selector, 8);
  assert.equal(cs64.l, 1);
  assert.equal(cs64.db, 0, 'L and D must not both be set');
  const cs32 = segmentFromGdt(GDT_32[1] as bigint, 1);
  assert.equal(cs32.l, 0);
  assert.equal(cs32.db, 1);
});

test('property: any base, limit and flags survive gdtEntry → segmentFromGdt', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 0xfffff }),
      fc.integer({ min: 0, max: 0xff }),
      fc.integer({ min: 0, max: 0xf }),
      fc.integer({ min: 0, max: 8191 }),
      (base, limit, access, nibble, index) => {
        const flags = (nibble << 12) | access;
        const entry = gdtEntry(flags, base, limit);
        assert.ok(entry >= 0n && entry < 1n << 64n);
        const seg = segmentFromGdt(entry, index);
        const g = nibble >> 3;
        assert.equal(seg.base, BigInt(base));
        assert.equal(seg.limit, g ? limit * 4096 + 0xfff : limit);
        assert.equal(seg.selector, index * 8);
        assert.equal(seg.type, access & 0xf);
        assert.equal(seg.s, (access >> 4) & 1);
        assert.equal(seg.dpl, (access >> 5) & 3);
        assert.equal(seg.present, access >> 7);
        assert.equal(seg.unusable, seg.present ? 0 : 1);
        assert.equal(seg.avl, nibble & 1);
        assert.equal(seg.l, (nibble >> 1) & 1);
        assert.equal(seg.db, (nibble >> 2) & 1);
        assert.equal(seg.g, g);
        // Bits 8-11 of flags are not descriptor bits: they are dropped.
        assert.equal(gdtEntry(flags | 0xf00, base, limit), entry);
      },
    ),
  );
});
