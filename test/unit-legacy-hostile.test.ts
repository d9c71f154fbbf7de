/**
 * The legacy PIO devices and the bus under hostile guest accesses (issue 16, item 1 sweep): every port
 * of every device and the ports around them, at byte, word and dword size, with hostile values. A
 * device never sees bytes outside its range (an access running past the end is split there), no
 * counter or index a guest drives leaves its slot, and byte/word/dword accesses agree.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ACPI_PM1A_CNT, ACPI_PM1A_EVT } from '../src/arch/x86_64/acpi.js';
import { Bus, type BusDevice } from '../src/bus/bus.js';
import { CMOS_BASE } from '../src/devices/legacy/cmos.js';
import { DEBUG_EXIT_PORT } from '../src/devices/legacy/debug-exit.js';
import { I8042_BASE } from '../src/devices/legacy/i8042.js';
import { POST_CODE_PORT, PostCode } from '../src/devices/legacy/post-code.js';
import { PVPANIC_PORT } from '../src/devices/legacy/pvpanic.js';
import { COM1_PORT } from '../src/devices/legacy/serial.js';
import { legacyPlatform as platform } from './support/legacy-platform.js';

const VALUES = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];

describe('legacy ports under hostile accesses', () => {
  test('every port of every device and its neighbours, at every size and value: no throw, nothing outside a range', () => {
    const p = platform();
    for (const [base, len] of p.devices)
      for (let port = base - 3; port < base + len + 3; port++)
        for (const size of [1, 2, 4]) {
          assert.doesNotThrow(() => p.inp(port, size), `in${size} ${port.toString(16)}`);
          for (const v of VALUES) assert.doesNotThrow(() => p.out(port, size, v), `out${size} ${port.toString(16)}`);
        }
  });

  test('an access running past a device is split: a dword across PM1_EVT and PM1_CNT reaches both', () => {
    const p = platform();
    // Bytes 0x602-0x603 are PM1_EN, 0x604-0x605 PM1_CNT: SLP_TYP=5 with SLP_EN in PM1_CNT's high byte.
    p.out(ACPI_PM1A_EVT + 2, 4, 0x34000120);
    assert.equal(p.inp(ACPI_PM1A_EVT + 2, 2), 0x0120);
    assert.deepEqual(p.events, ['poweroff']);
    // Past the end of COM1 (0x3ff is its last port) the bytes are unclaimed, and counted once.
    const unclaimed = p.bus.counters.unclaimedWrites;
    p.out(COM1_PORT + 7, 4, 0x11223344);
    assert.equal(p.inp(COM1_PORT + 7, 1), 0x44, 'the scratch register took the byte that was its own');
    assert.equal(p.bus.counters.unclaimedWrites, unclaimed + 1);
    assert.equal(p.inp(COM1_PORT + 7, 4), 0xffffff44);
    assert.equal(p.inp(PVPANIC_PORT, 2), 0xff03);
  });

  test('PM1_EVT: byte, word and dword accesses agree; enable bits clear with a word write', () => {
    const p = platform();
    p.out(ACPI_PM1A_EVT + 2, 2, 0xffff);
    p.out(ACPI_PM1A_EVT + 2, 2, 0x0000);
    assert.equal(p.inp(ACPI_PM1A_EVT + 2, 2), 0, 'a word write of 0 clears both enable bytes');
    p.out(ACPI_PM1A_EVT, 4, 0x0120ffff);
    assert.equal(p.inp(ACPI_PM1A_EVT, 4), 0x01200000, 'status is write-one-to-clear, enable above it');
    assert.equal(p.inp(ACPI_PM1A_EVT + 3, 1), 0x01);
    assert.equal(p.inp(ACPI_PM1A_EVT + 1, 2), 0x2000);
    p.out(ACPI_PM1A_EVT + 3, 1, 0);
    assert.equal(p.inp(ACPI_PM1A_EVT, 4), 0x00200000);
  });

  test('PM1_CNT: only SLP_EN acts; all ones without it is kept, SLP_EN reads back 0', () => {
    const p = platform();
    p.out(ACPI_PM1A_CNT, 2, 0xdfff);
    assert.deepEqual(p.events, []);
    assert.equal(p.inp(ACPI_PM1A_CNT, 2), 0xdfff);
    p.out(ACPI_PM1A_CNT + 1, 1, 0xff);
    assert.deepEqual(p.events, ['sleep7']);
    assert.equal(p.inp(ACPI_PM1A_CNT, 2) & 0x2000, 0);
  });

  test('CMOS: every index with the NMI bit set or not selects one of the 128 bytes', () => {
    const p = platform();
    for (let index = 0x0e; index < 0x100; index++) {
      const i7 = index & 0x7f;
      if (i7 < 0x0e || i7 === 0x32) continue; // clock fields and registers A-D have their own tests
      p.out(CMOS_BASE, 1, index);
      p.out(CMOS_BASE + 1, 1, index ^ 0x5a);
      p.out(CMOS_BASE, 1, index & 0x7f);
      assert.equal(p.inp(CMOS_BASE + 1, 1), index ^ 0x5a, `index ${index.toString(16)}`);
    }
    assert.equal(p.inp(CMOS_BASE, 1), 0xff, 'the index port reads as all ones');
  });

  test('CMOS: invalid BCD written to the clock, over and over, leaves a valid clock', () => {
    const p = platform();
    for (let i = 0; i < 3000; i++) {
      p.out(CMOS_BASE, 1, [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32][i % 7] as number);
      p.out(CMOS_BASE + 1, 1, 0xff);
    }
    assert.ok(Number.isFinite(p.cmos.guestTime().getTime()));
  });

  test('POST code: a count past 2^31 keeps the history inside its bytes and the lock untouched', () => {
    const p = platform();
    p.postCode.set('count', 0x7fffffff - 10);
    const codes: number[] = [];
    for (let i = 0; i < 100; i++) {
      codes.push(i);
      p.out(POST_CODE_PORT, 1, i);
    }
    assert.equal(p.postCode.i32[0], 0, 'the lock word');
    assert.equal(p.postCode.get('last'), 99);
    assert.equal(p.postCode.u32('count'), 0x7fffffff - 10 + 100);
    assert.deepEqual(PostCode.history(p.postCode), codes.slice(-64));
  });

  test('i8042: ports 1-3 read all ones at every size; a dword from 0x63 is cut at the end of the range', () => {
    const p = platform();
    for (const size of [1, 2]) assert.equal(p.inp(I8042_BASE + 1, size), 256 ** size - 1);
    // The controller answers 0x63-0x64 as one access at port 3 (not a register: all ones), 0x65-0x66 are unclaimed.
    assert.equal(p.inp(I8042_BASE + 3, 4), 0xffffffff);
    assert.equal(p.inp(I8042_BASE + 4, 1), 0x04, 'the status port: system flag, nothing waiting');
  });

  test('debug-exit: a wide write past its ports takes its own bytes only', () => {
    const p = platform();
    p.out(DEBUG_EXIT_PORT + 2, 4, 0xffffff10);
    assert.deepEqual(p.events, [`exit${((0xff10 << 1) | 1) & 0xff}`]);
  });
});

describe('bus splitting', () => {
  test('zero-length accesses reach nobody and count nothing', () => {
    const p = platform();
    p.bus.read(COM1_PORT, new Uint8Array(0));
    p.bus.write(0x1234, new Uint8Array(0));
    assert.deepEqual(p.bus.counters, { unclaimedReads: 0, unclaimedWrites: 0 });
  });

  /** A device that is plain bytes: the bus over several of them must behave as one flat byte map. */
  class Bytes implements BusDevice {
    readonly b: Uint8Array;
    constructor(len: number) {
      this.b = new Uint8Array(len);
    }
    read(offset: number, data: Uint8Array): void {
      data.set(this.b.subarray(offset, offset + data.length));
      if (offset + data.length > this.b.length) throw new Error('read past the range');
    }
    write(offset: number, data: Uint8Array): void {
      if (offset + data.length > this.b.length) throw new Error('write past the range');
      this.b.set(data, offset);
    }
  }

  test('property: byte devices on a bus behave as one flat byte map, holes reading all ones', () => {
    const ranges: [number, number][] = [
      [0x10, 4],
      [0x14, 2],
      [0x20, 8],
      [0x29, 1],
    ];
    const op = fc.record({
      addr: fc.integer({ min: 0x08, max: 0x30 }),
      size: fc.constantFrom(1, 2, 4, 8),
      value: fc.uint8Array({ minLength: 8, maxLength: 8 }),
      write: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const bus = new Bus('mmio');
        for (const [base, len] of ranges) bus.insert(base, len, `r${base}`, new Bytes(len));
        const claimed = (a: number) => ranges.some(([b, l]) => a >= b && a < b + l);
        const flat = new Uint8Array(0x40);
        for (const o of ops) {
          if (o.write) {
            bus.write(o.addr, o.value.slice(0, o.size));
            // An access starting in a hole is unclaimed as a whole.
            if (claimed(o.addr))
              for (let i = 0; i < o.size; i++) {
                const a = o.addr + i;
                if (!claimed(a)) {
                  // Past a device into a hole: the rest is unclaimed whatever follows the hole.
                  break;
                }
                flat[a] = o.value[i] as number;
              }
          } else {
            const d = new Uint8Array(o.size);
            bus.read(o.addr, d);
            const want: number[] = [];
            let live = claimed(o.addr);
            for (let i = 0; i < o.size; i++) {
              const a = o.addr + i;
              if (!claimed(a)) live = false;
              want.push(live ? (flat[a] as number) : 0xff);
            }
            assert.deepEqual([...d], want, `read ${o.size} at ${o.addr.toString(16)}`);
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});
