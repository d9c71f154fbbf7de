/**
 * Unit tests for the small legacy devices (i8042, isa-debug-exit, POST code port) and the PIO/MMIO bus.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Bus, type BusDevice } from '../src/bus/bus.js';
import { VireoError } from '../src/common/errors.js';
import { DebugExit } from '../src/devices/legacy/debug-exit.js';
import { CTRL_ALT_DEL, createI8042State, I8042, I8042_BUFFER_SIZE, I8042_IRQ } from '../src/devices/legacy/i8042.js';
import { createPostCodeState, PostCode } from '../src/devices/legacy/post-code.js';

const rd = (dev: BusDevice, offset: number, width = 1): number[] => {
  const d = new Uint8Array(width).fill(0xcc);
  dev.read(offset, d);
  return [...d];
};
const wr = (dev: BusDevice, offset: number, ...bytes: number[]): void => dev.write(offset, Uint8Array.from(bytes));

describe('i8042', () => {
  const DATA = 0;
  const CMD = 4;
  const make = () => {
    let resets = 0;
    const kbc = new I8042(() => resets++);
    return {
      kbc,
      resets: () => resets,
      status: () => rd(kbc, CMD)[0] as number,
      data: () => rd(kbc, DATA)[0] as number,
    };
  };

  test('power-on status: system flag only, output buffer empty', () => {
    const k = make();
    assert.equal(k.status(), 0x04);
    assert.equal(k.data(), 0x00, 'an empty output buffer reads as zero');
  });

  test('command 0xFE pulses the reset line', () => {
    const k = make();
    wr(k.kbc, CMD, 0xfe);
    assert.equal(k.resets(), 1);
    wr(k.kbc, CMD, 0xfe);
    assert.equal(k.resets(), 2);
  });

  test('other pulse commands (0xF0-0xFD) do not reset', () => {
    const k = make();
    for (let c = 0xf0; c <= 0xfd; c++) wr(k.kbc, CMD, c);
    assert.equal(k.resets(), 0);
  });

  test('0xD1 then data with bit 0 clear resets; with bit 0 set it does not', () => {
    const k = make();
    wr(k.kbc, CMD, 0xd1);
    wr(k.kbc, DATA, 0x03);
    assert.equal(k.resets(), 0);
    wr(k.kbc, CMD, 0xd0);
    assert.equal(k.data(), 0x03, '0xD0 reads back the output port');
    wr(k.kbc, CMD, 0xd1);
    wr(k.kbc, DATA, 0xfe);
    assert.equal(k.resets(), 1);
  });

  test('a data write without a pending controller command is acknowledged, not taken as the output port', () => {
    const k = make();
    wr(k.kbc, DATA, 0x00);
    assert.equal(k.resets(), 0);
    assert.equal(k.status() & 0x01, 0x01);
    assert.equal(k.data(), 0xfa);
  });

  /** A controller whose IRQ 1 edges are recorded, over a given shared state. */
  const withIrq = (state = createI8042State()) => {
    const levels: boolean[] = [];
    const kbc = new I8042(() => {}, state, { set: (l) => levels.push(l) });
    /** Rising edges so far (each is one interrupt: ISA IRQs are edge-triggered). */
    const edges = () => levels.filter((l, i) => l && levels[i + 1] === false).length;
    return { kbc, levels, edges, status: () => rd(kbc, CMD)[0] as number, data: () => rd(kbc, DATA)[0] as number };
  };
  /** The guest's interrupt handler: read status, then one byte from port 0x60, while OBF is set. */
  const drain = (k: ReturnType<typeof withIrq>): { bytes: number[]; edgesBefore: number[] } => {
    const bytes: number[] = [];
    const edgesBefore: number[] = [];
    while (k.status() & 0x01) {
      edgesBefore.push(k.edges());
      bytes.push(k.data());
    }
    return { bytes, edgesBefore };
  };

  test('Ctrl+Alt+Del: translated set 1 (the power-on command byte), one IRQ 1 edge per byte', () => {
    assert.equal(I8042_IRQ, 1);
    const k = withIrq();
    assert.equal(k.kbc.injectCtrlAltDel(), true);
    assert.equal(k.status() & 0x21, 0x01, 'OBF set, not aux data');
    assert.equal(k.edges(), 1, 'the first byte raises IRQ 1');
    const { bytes, edgesBefore } = drain(k);
    assert.deepEqual(bytes, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d], 'Ctrl, Alt, Del down; then up');
    assert.deepEqual(bytes, [...CTRL_ALT_DEL.set1]);
    assert.deepEqual(
      edgesBefore,
      bytes.map((_, i) => i + 1),
      'each byte had its own interrupt before the guest read it',
    );
    assert.equal(k.edges(), bytes.length, 'no interrupt once the buffer is empty');
    assert.equal(k.levels.at(-1), false, 'the line is left low');
    assert.equal(k.data(), 0, 'an empty buffer reads as zero');
  });

  test('Ctrl+Alt+Del: set 2 when the guest cleared the translate bit; no IRQ with the interrupt disabled', () => {
    const k = withIrq();
    wr(k.kbc, CMD, 0x60);
    wr(k.kbc, DATA, 0x05); // keyboard interrupt, system flag, no translation
    assert.equal(k.kbc.injectCtrlAltDel(), true);
    assert.deepEqual(drain(k).bytes, [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]);
    assert.equal(k.edges(), CTRL_ALT_DEL.set2.length);
    wr(k.kbc, CMD, 0x60);
    wr(k.kbc, DATA, 0x44); // translation, interrupt off
    const before = k.edges();
    assert.equal(k.kbc.injectCtrlAltDel(), true);
    assert.deepEqual(drain(k).bytes, [...CTRL_ALT_DEL.set1], 'a polling guest still reads the keys');
    assert.equal(k.edges(), before, 'but gets no interrupt');
  });

  test('Ctrl+Alt+Del is refused whole when the buffer lacks room; the guest cannot grow the buffer', () => {
    const k = withIrq();
    for (let i = 0; i < 100; i++) wr(k.kbc, DATA, 0xed); // keyboard commands, each acknowledged
    assert.equal(k.kbc.pending, I8042_BUFFER_SIZE, 'acknowledgements stop at the buffer size');
    assert.equal(k.kbc.injectCtrlAltDel(), false);
    assert.equal(k.kbc.pending, I8042_BUFFER_SIZE, 'nothing was added');
    for (let i = 0; i < CTRL_ALT_DEL.set1.length - 1; i++) assert.equal(k.data(), 0xfa);
    assert.equal(k.kbc.injectCtrlAltDel(), false, 'one byte short');
    assert.equal(k.data(), 0xfa);
    assert.equal(k.kbc.injectCtrlAltDel(), true, 'room for all of it');
    const bytes = drain(k).bytes;
    assert.deepEqual(bytes.slice(-CTRL_ALT_DEL.set1.length), [...CTRL_ALT_DEL.set1], 'after the older bytes');
  });

  test('one controller over shared state: keys injected on one thread are read on another', () => {
    const state = createI8042State();
    const vcpu = withIrq(createI8042State(state.buffer));
    const main = new I8042(() => {}, createI8042State(state.buffer));
    wr(vcpu.kbc, CMD, 0x60);
    wr(vcpu.kbc, DATA, 0x05);
    assert.equal(main.injectCtrlAltDel(), true);
    assert.deepEqual(drain(vcpu).bytes, [...CTRL_ALT_DEL.set2], 'the command byte the guest wrote decides the set');
    assert.equal(main.pending, 0);
  });

  test('0x20 reads the command byte through the output buffer and OBF', () => {
    const k = make();
    wr(k.kbc, CMD, 0x20);
    assert.equal(k.status() & 0x01, 0x01, 'OBF set');
    assert.equal(k.status() & 0x08, 0x08, 'last write was a command');
    assert.equal(k.data(), 0x45);
    assert.equal(k.status() & 0x01, 0x00, 'OBF clear once read');
  });

  test('0x60 writes the command byte', () => {
    const k = make();
    wr(k.kbc, CMD, 0x60);
    wr(k.kbc, DATA, 0x47);
    assert.equal(k.status() & 0x08, 0x00, 'last write was data');
    wr(k.kbc, CMD, 0x20);
    assert.equal(k.data(), 0x47);
  });

  test('self-tests: 0xAA returns 0x55, 0xAB returns 0x00; replies queue in order', () => {
    const k = make();
    wr(k.kbc, CMD, 0xaa);
    wr(k.kbc, CMD, 0xab);
    wr(k.kbc, CMD, 0xaa);
    assert.equal(k.data(), 0x55);
    assert.equal(k.data(), 0x00);
    assert.equal(k.status() & 0x01, 0x01);
    assert.equal(k.data(), 0x55);
    assert.equal(k.status() & 0x01, 0x00);
  });

  test('ports 1-3 of the range read all ones', () => {
    const k = make();
    for (const o of [1, 2, 3]) assert.deepEqual(rd(k.kbc, o, 2), [0xff, 0xff]);
  });
});

describe('DebugExit', () => {
  const exits = (bytes: number[]) => {
    const seen: [number, number][] = [];
    wr(new DebugExit((s, v) => seen.push([s, v])), 0, ...bytes);
    assert.equal(seen.length, 1);
    return seen[0] as [number, number];
  };

  test('status is (v << 1) | 1', () => {
    assert.deepEqual(exits([0x00]), [1, 0]);
    assert.deepEqual(exits([0x01]), [3, 1]);
    assert.deepEqual(exits([0x10]), [0x21, 0x10]);
    assert.deepEqual(exits([0x7f]), [0xff, 0x7f]);
  });

  test('status is truncated to 8 bits', () => {
    assert.deepEqual(exits([0x80]), [0x01, 0x80]);
    assert.deepEqual(exits([0xff]), [0xff, 0xff]);
  });

  test('wide writes are little-endian values', () => {
    assert.deepEqual(exits([0x34, 0x12]), [0x69, 0x1234]);
    assert.deepEqual(exits([0x78, 0x56, 0x34, 0x12]), [0xf1, 0x12345678]);
    assert.deepEqual(exits([0xff, 0xff, 0xff, 0xff]), [0xff, 0xffffffff]);
  });

  test('property: status matches ((v << 1) | 1) & 0xff for any byte', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 255 }), (v) => exits([v])[0] === ((v * 2 + 1) & 0xff)));
  });

  test('reads return all ones', () => {
    assert.deepEqual(rd(new DebugExit(() => assert.fail('no exit on read')), 0, 4), [0xff, 0xff, 0xff, 0xff]);
  });
});

describe('PostCode', () => {
  test('starts empty', () => {
    const s = createPostCodeState();
    assert.equal(s.get('count'), 0);
    assert.equal(s.get('last'), -1);
    assert.deepEqual(PostCode.history(s), []);
  });

  test('records count, last and history, and calls onCode', () => {
    const s = createPostCodeState();
    const seen: number[] = [];
    const p = new PostCode(s, (c) => seen.push(c));
    for (const c of [0x10, 0x20, 0xff]) wr(p, 0, c);
    assert.equal(s.get('count'), 3);
    assert.equal(s.get('last'), 0xff);
    assert.deepEqual(PostCode.history(s), [0x10, 0x20, 0xff]);
    assert.deepEqual(seen, [0x10, 0x20, 0xff]);
    assert.deepEqual(rd(p, 0), [0xff]);
  });

  test('history keeps the last 64 codes, oldest first', () => {
    const s = createPostCodeState();
    const p = new PostCode(s);
    for (let i = 0; i < 150; i++) wr(p, 0, i);
    assert.equal(s.get('count'), 150);
    assert.deepEqual(
      PostCode.history(s),
      Array.from({ length: 64 }, (_, i) => 150 - 64 + i),
    );
  });

  test('state rebuilt on the same buffer sees the same codes', () => {
    const s = createPostCodeState();
    wr(new PostCode(s), 0, 0x42);
    const twin = createPostCodeState(s.buffer);
    assert.equal(twin.get('last'), 0x42, 'not reset to -1');
    assert.deepEqual(PostCode.history(twin), [0x42]);
  });
});

/** A device that records its accesses and answers reads with its tag. */
class Probe implements BusDevice {
  readonly log: { op: 'r' | 'w'; offset: number; data: number[] }[] = [];
  constructor(readonly tag: number) {}
  read(offset: number, data: Uint8Array): void {
    data.fill(this.tag);
    this.log.push({ op: 'r', offset, data: [...data] });
  }
  write(offset: number, data: Uint8Array): void {
    this.log.push({ op: 'w', offset, data: [...data] });
  }
}

const conflict = (e: unknown): boolean => e instanceof VireoError && e.code === 'VIREO_ERR_BUS_CONFLICT';

describe('Bus', () => {
  test('overlapping ranges are rejected; adjacent ones are not', () => {
    const bus = new Bus('pio');
    bus.insert(0x3f8, 8, 'com1', new Probe(1));
    for (const [base, len] of [
      [0x3f8, 8],
      [0x3f0, 9],
      [0x3ff, 1],
      [0x3fa, 2],
      [0x3f0, 0x20],
    ] as const)
      assert.throws(() => bus.insert(base, len, 'clash', new Probe(2)), conflict, `${base.toString(16)}+${len}`);
    bus.insert(0x3f0, 8, 'below', new Probe(3));
    bus.insert(0x400, 4, 'above', new Probe(4));
    assert.deepEqual(bus.names, ['below@0x3f0', 'com1@0x3f8', 'above@0x400']);
  });

  test('the conflict message names both devices on one line', () => {
    const bus = new Bus('mmio');
    bus.insert(0x1000, 0x100, 'virtio0', new Probe(1));
    assert.throws(
      () => bus.insert(0x10f0, 0x20, 'virtio1', new Probe(2)),
      (e: unknown) =>
        conflict(e) && /virtio1.*virtio0.*mmio/.test((e as Error).message) && !(e as Error).message.includes('\n'),
    );
  });

  test('empty and negative ranges are rejected', () => {
    const bus = new Bus('pio');
    assert.throws(() => bus.insert(0x80, 0, 'empty', new Probe(1)), conflict);
    assert.throws(() => bus.insert(0x80, -4, 'negative', new Probe(1)), conflict);
  });

  test('accesses reach the covering device with the offset from its base', () => {
    const bus = new Bus('pio');
    const a = new Probe(0xaa);
    const b = new Probe(0xbb);
    bus.insert(0x60, 5, 'i8042', a);
    bus.insert(0x3f8, 8, 'com1', b);
    const d = new Uint8Array(2);
    bus.read(0x63, d); // the range's last two ports (an access past the end is split: unit-legacy-hostile)
    assert.deepEqual([...d], [0xaa, 0xaa]);
    bus.write(0x3fd, Uint8Array.of(7));
    bus.write(0x3f8, Uint8Array.of(1, 2, 3, 4));
    bus.read(0x3ff, new Uint8Array(1));
    assert.deepEqual(a.log, [{ op: 'r', offset: 3, data: [0xaa, 0xaa] }]);
    assert.deepEqual(b.log, [
      { op: 'w', offset: 5, data: [7] },
      { op: 'w', offset: 0, data: [1, 2, 3, 4] },
      { op: 'r', offset: 7, data: [0xbb] },
    ]);
    assert.deepEqual(bus.counters, { unclaimedReads: 0, unclaimedWrites: 0 });
  });

  test('unclaimed reads return all ones, unclaimed writes are dropped; both counted and reported', () => {
    const bus = new Bus('mmio');
    const p = new Probe(0);
    bus.insert(0x1000, 0x10, 'dev', p);
    const seen: [number, boolean][] = [];
    bus.onUnclaimed = (addr, isWrite) => seen.push([addr, isWrite]);
    const d = new Uint8Array(8);
    bus.read(0x1010, d);
    assert.deepEqual([...d], new Array(8).fill(0xff));
    bus.read(0xfff, new Uint8Array(1));
    bus.write(0x2000, Uint8Array.of(1));
    assert.deepEqual(bus.counters, { unclaimedReads: 2, unclaimedWrites: 1 });
    assert.deepEqual(seen, [
      [0x1010, false],
      [0xfff, false],
      [0x2000, true],
    ]);
    assert.deepEqual(p.log, [], 'the neighbour never saw them');
  });

  test('an empty bus claims nothing', () => {
    const bus = new Bus('pio');
    assert.equal(bus.find(0), undefined);
    const d = new Uint8Array(1);
    bus.read(0x80, d);
    assert.equal(d[0], 0xff);
    assert.equal(bus.counters.unclaimedReads, 1);
  });

  /** Disjoint ranges from sorted cut points: interval i is [p_i, p_{i+1}) when keep[i]. */
  const layout = fc
    .record({
      points: fc.uniqueArray(fc.integer({ min: 0, max: 0xfffff }), { minLength: 2, maxLength: 120 }),
      keep: fc.array(fc.boolean(), { minLength: 120, maxLength: 120 }),
      seed: fc.integer(),
    })
    .map(({ points, keep, seed }) => {
      const p = [...points].sort((x, y) => x - y);
      const ranges: { base: number; end: number }[] = [];
      for (let i = 0; i + 1 < p.length; i++)
        if (keep[i]) ranges.push({ base: p[i] as number, end: p[i + 1] as number });
      // Insert in a scrambled order: the bus must keep its ranges sorted itself.
      let x = seed >>> 0 || 1;
      const order = ranges.map((r) => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return { r, k: x >>> 0 };
      });
      order.sort((a, b) => a.k - b.k);
      return order.map((o) => o.r);
    });

  test('property: lookup by binary search agrees with a linear scan', () => {
    fc.assert(
      fc.property(layout, fc.array(fc.integer({ min: 0, max: 0x100010 }), { maxLength: 100 }), (ranges, queries) => {
        const bus = new Bus('mmio');
        const devs = ranges.map((r, i) => {
          const d = new Probe(i);
          bus.insert(r.base, r.end - r.base, `d${i}`, d);
          return d;
        });
        // Probe every boundary too: bases, last bytes, and one past the end.
        const addrs = [...queries, ...ranges.flatMap((r) => [r.base, r.end - 1, r.end, r.base - 1])];
        for (const a of addrs) {
          const i = ranges.findIndex((r) => a >= r.base && a < r.end);
          const found = bus.find(a);
          if (i < 0) assert.equal(found, undefined, `address ${a}`);
          else {
            assert.equal(found?.device, devs[i], `address ${a}`);
            assert.equal(found?.base, ranges[i]?.base);
          }
        }
      }),
    );
  });

  test('property: insert rejects exactly the ranges a linear scan finds overlapping', () => {
    fc.assert(
      fc.property(
        layout,
        fc.array(fc.record({ base: fc.integer({ min: 0, max: 0xfffff }), len: fc.integer({ min: 1, max: 0x4000 }) }), {
          maxLength: 20,
        }),
        (ranges, extra) => {
          const bus = new Bus('pio');
          const present = [...ranges];
          for (const r of ranges) bus.insert(r.base, r.end - r.base, 'r', new Probe(0));
          for (const { base, len } of extra) {
            const overlaps = present.some((r) => base < r.end && r.base < base + len);
            let threw = false;
            try {
              bus.insert(base, len, 'x', new Probe(1));
            } catch (e) {
              assert.ok(conflict(e));
              threw = true;
            }
            assert.equal(threw, overlaps);
            if (!threw) present.push({ base, end: base + len });
          }
          assert.equal(bus.names.length, present.length);
        },
      ),
    );
  });
});
