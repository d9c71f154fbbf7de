/**
 * Fuzz targets for the virtio devices, each through its public class behind the real virtio-mmio
 * transport and device side (test/support/virtio-driver.ts), with in-memory backends. A case is a
 * hostile driver's work: features it accepts, descriptor chains shaped like the device's requests and
 * then mutated (addresses outside RAM, in the MMIO hole, at the rings themselves, near 2^53 and 2^64;
 * lengths of 0 and 0xffffffff; flags and next links rewritten; indirect tables with bad lengths),
 * available-ring entries and index jumps of its own, payloads (block headers, vnet headers, balloon
 * PFNs), and a sequence of notifies (some for queues that do not exist) and host events. Every access
 * the device side makes goes through a RecordingMemory and is audited against the case's RAM; every
 * exception a device method throws is seen (the transport would turn it into DEVICE_NEEDS_RESET and
 * hide a TypeError among protocol errors). After the case, a well-behaved driver resets the device and
 * must be served again.
 */
import fc from 'fast-check';
import { BALLOON_PAGE, BalloonControl, VirtioBalloon } from '../../src/devices/virtio/balloon.js';
import type { BlockBackend } from '../../src/devices/virtio/block.js';
import { SECTOR, VIRTIO_BLK_T, VirtioBlock } from '../../src/devices/virtio/block.js';
import { VirtioConsole } from '../../src/devices/virtio/console.js';
import { STATUS, VIRTIO_F_VERSION_1, type VirtioDevice } from '../../src/devices/virtio/device.js';
import { VIRTIO_NET_HDR_LEN, VirtioNet } from '../../src/devices/virtio/net.js';
import {
  type QueueLayout,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/devices/virtio/queue.js';
import { VirtioRng } from '../../src/devices/virtio/rng.js';
import { FakePoller, FakeTap } from '../support/fake-net.js';
import { type Access, type BufSpec, MockSplitQueue, RecordingMemory } from '../support/mock-virtq.js';
import { MockMmioDriver, R } from '../support/virtio-driver.js';
import { crash, isClean, OK, oob, refused, type TargetSpec, target, type Verdict } from './harness.js';

// ---- the guest a case gets: 1 MiB of RAM at 0, rings, indirect tables and data slots at fixed places ----

export const RAM = 1 << 20;
export const QS = 16;
const RINGS = 0x1000; // queue q's rings at RINGS + q * 0x1000
const INDIRECT = 0x8000; // indirect tables, 0x400 apart
export const DATA = 0x10000;
export const SLOT = 0x1000;
export const SLOTS = 16;
/** The start of the 32-bit MMIO hole, where virtio-mmio windows live: DMA there must be refused. */
export const MMIO_HOLE = 0xd0000000;

export const layoutOf = (q: number): QueueLayout => MockSplitQueue.packed(QS, RINGS + q * 0x1000);
const slotAddr = (k: number): number => DATA + (k % SLOTS) * SLOT;

/** A descriptor address as the driver writes it: 64 bits. */
const HOSTILE_ADDRS: readonly bigint[] = [
  BigInt(RAM - 1),
  BigInt(RAM - 8),
  BigInt(RAM), // just past the end
  BigInt(RAM + 0x1000),
  BigInt(MMIO_HOLE), // DMA into MMIO
  0xfec00000n, // IOAPIC
  0xffffffffn,
  0x100000000n,
  2n ** 53n - 1n,
  2n ** 53n,
  2n ** 63n,
  2n ** 64n - 16n,
];
const RING_ADDRS: readonly bigint[] = [0, 1, 2].flatMap((q) => {
  const l = layoutOf(q);
  return [BigInt(l.desc), BigInt(l.avail), BigInt(l.used), BigInt(l.used + 4)];
});
const HOSTILE_LENS = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, RAM, RAM - DATA, 0x10000, 0x10001];

/** Mostly a slot (so requests reach the device's parsing), sometimes hostile or a ring. */
export const addrArb: fc.Arbitrary<bigint> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc
      .tuple(fc.nat(SLOTS - 1), fc.constantFrom(0, 0, 0, 1, 0xff0, 0xfff))
      .map(([k, off]) => BigInt(slotAddr(k) + off)),
  },
  { weight: 2, arbitrary: fc.constantFrom(...HOSTILE_ADDRS) },
  { weight: 1, arbitrary: fc.constantFrom(...RING_ADDRS) },
);

/** A length: usually `typical`, sometimes small and odd, sometimes hostile. */
export const lenArb = (...typical: number[]): fc.Arbitrary<number> =>
  fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...typical) },
    { weight: 2, arbitrary: fc.nat(0x2100) },
    { weight: 1, arbitrary: fc.constantFrom(...HOSTILE_LENS) },
  );

/** One buffer of a chain as a device's request shape has it, before mutation. */
export interface Seg {
  addr: bigint;
  len: number;
  write: boolean;
}
export const seg = (addr: fc.Arbitrary<bigint>, len: fc.Arbitrary<number>, write: fc.Arbitrary<boolean>) =>
  fc.record({ addr, len, write });
export const inSlot = (k: number): fc.Arbitrary<bigint> =>
  fc.oneof({ weight: 6, arbitrary: fc.constant(BigInt(slotAddr(k))) }, { weight: 1, arbitrary: addrArb });

export interface ChainCase {
  q: number;
  segs: Seg[];
  /** Per descriptor, flags and next written instead of the chain's own (null: leave them). */
  flags: (number | null)[];
  next: (number | null)[];
  /** Put the chain in an indirect table (with a length of its own when not null). */
  indirect: boolean;
  indirectLen: number | null;
}

export interface DeviceCase<E> {
  /** Offered features the driver drops (it may also ask for ones not offered). */
  drop: bigint;
  extra: bigint;
  slots: Uint8Array[];
  chains: ChainCase[];
  /** Entries written straight into avail rings, and index jumps (hostile heads, idx past the ring). */
  heads: { q: number; head: number }[];
  jumps: { q: number; by: number }[];
  /** Notifies for queue n (n may not exist), or a host event. */
  events: ({ notify: number } | { host: E })[];
}

/** What a device target provides. */
export interface DeviceRig<E> {
  device: VirtioDevice;
  /** A host-side event (a frame for the guest, a new balloon target). */
  host?(e: E, drv: MockMmioDriver): void;
  /** Findings beyond the memory log (the balloon's release calls). */
  audit?(): string | undefined;
  /** A well-behaved request on the freshly probed device; a message when it was not served. */
  health?(drv: MockMmioDriver): string | undefined;
  /** The balloon's host side (a snapshot keeps its record too). */
  control?: BalloonControl;
  close?(): void;
}

export interface DeviceFuzz<E> {
  name: string;
  ciCases: number;
  rig(): DeviceRig<E>;
  /** Request shapes for queue q. */
  chain(q: number): fc.Arbitrary<Seg[]>;
  slots: fc.Arbitrary<Uint8Array[]>;
  host?: fc.Arbitrary<E>;
  queues: number;
}

const chainCaseArb = (d: DeviceFuzz<unknown>): fc.Arbitrary<ChainCase> =>
  fc.nat(d.queues - 1).chain((q) =>
    d.chain(q).chain((segs) =>
      fc.record({
        q: fc.constant(q),
        segs: fc.constant(segs),
        flags: fc.array(fc.option(fc.nat(7), { freq: 12, nil: null }), {
          minLength: segs.length,
          maxLength: segs.length,
        }),
        next: fc.array(fc.option(fc.oneof(fc.nat(QS + 2), fc.constant(0xffff)), { freq: 12, nil: null }), {
          minLength: segs.length,
          maxLength: segs.length,
        }),
        indirect: fc.boolean(),
        indirectLen: fc.option(fc.constantFrom(0, 8, 15, 17, 16 * segs.length + 16, 0xfffffff0, 16 * 40000), {
          freq: 6,
          nil: null,
        }),
      }),
    ),
  );

function caseArb<E>(d: DeviceFuzz<E>): fc.Arbitrary<DeviceCase<E>> {
  const bits = (n: number) => fc.bigInt({ min: 0n, max: (1n << BigInt(n)) - 1n });
  const event: fc.Arbitrary<{ notify: number } | { host: E }> = d.host
    ? fc.oneof(
        { weight: 3, arbitrary: fc.record({ notify: fc.integer({ min: -1, max: d.queues + 1 }) }) },
        { weight: 1, arbitrary: fc.record({ host: d.host }) },
      )
    : fc.record({ notify: fc.integer({ min: -1, max: d.queues + 1 }) });
  return fc.record({
    drop: fc.oneof({ weight: 3, arbitrary: fc.constant(0n) }, { weight: 1, arbitrary: bits(64) }),
    extra: fc.oneof({ weight: 5, arbitrary: fc.constant(0n) }, { weight: 1, arbitrary: bits(64) }),
    slots: d.slots,
    chains: fc.array(chainCaseArb(d as DeviceFuzz<unknown>), { maxLength: 6 }),
    heads: fc.array(
      fc.record({ q: fc.nat(d.queues - 1), head: fc.oneof(fc.nat(QS + 1), fc.constantFrom(0x7fff, 0xffff)) }),
      { maxLength: 2 },
    ),
    jumps: fc.array(fc.record({ q: fc.nat(d.queues - 1), by: fc.constantFrom(1, 2, QS, QS + 1, 0x8000, 0xffff) }), {
      maxLength: 1,
    }),
    events: fc.array(event, { minLength: 1, maxLength: 5 }),
  });
}

/** Wraps every method of a device so that what it throws is seen before the transport hides it. */
export function observed(device: VirtioDevice, errors: unknown[]): VirtioDevice {
  return new Proxy(device, {
    get(t, p) {
      const v: unknown = Reflect.get(t, p, t);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        try {
          return (v as (...a: unknown[]) => unknown).apply(t, args);
        } catch (e) {
          errors.push(e);
          throw e;
        }
      };
    },
  });
}

/** The first access of a log that is not wholly inside the case's RAM. */
export function outsideRam(log: readonly Access[]): string | undefined {
  for (const a of log)
    if (
      !(
        Number.isSafeInteger(a.gpa) &&
        Number.isSafeInteger(a.len) &&
        a.gpa >= 0 &&
        a.len >= 0 &&
        a.gpa + Math.max(a.len, 1) <= RAM
      )
    )
      return `device ${a.kind} of ${a.len} bytes at 0x${a.gpa.toString(16)} is outside the ${RAM}-byte guest RAM`;
  return undefined;
}

/** Programs every queue at its fixed layout: a driver's probe with `features`. */
export function probe(drv: MockMmioDriver, queues: number, features: bigint): boolean {
  if (!drv.negotiate(features)) return false;
  for (let q = 0; q < queues; q++) drv.setupQueue(q, QS, layoutOf(q));
  return drv.driverOk();
}

function writeChain(mq: MockSplitQueue, c: ChainCase, at: number, table: number): number {
  const n = c.segs.length;
  const entry = (i: number) => (c.indirect ? i : (at + i) % QS);
  c.segs.forEach((s, i) => {
    const last = i === n - 1;
    const flags = c.flags[i] ?? (s.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
    const next = c.next[i] ?? (last ? 0 : entry(i + 1));
    mq.writeDesc(entry(i), { addr: s.addr, len: s.len, flags, next }, c.indirect ? table : mq.layout.desc);
  });
  if (!c.indirect) return at % QS;
  mq.writeDesc(at % QS, {
    addr: BigInt(table),
    len: c.indirectLen ?? 16 * n,
    flags: VIRTQ_DESC_F_INDIRECT,
    next: 0,
  });
  return at % QS;
}

export function deviceTarget<E>(d: DeviceFuzz<E>): TargetSpec {
  return target(d.name, d.ciCases, () => {
    const errors: unknown[] = [];
    const rig = d.rig();
    let dev: RecordingMemory | undefined;
    const drv = new MockMmioDriver(observed(rig.device, errors), RAM, false, (regions) => {
      dev = new RecordingMemory(regions);
      return dev;
    });
    const mem = dev as unknown as RecordingMemory;
    mem.budget = 200_000;
    const offered = drv.deviceFeatures() | (1n << VIRTIO_F_VERSION_1);
    return {
      arbitrary: caseArb(d),
      close: () => {
        rig.close?.();
        drv.release();
      },
      run(c: DeviceCase<E>): Verdict {
        errors.length = 0;
        drv.mem.fill(0, RAM);
        mem.take();
        let verdict: Verdict = OK;
        try {
          const features = (offered & ~c.drop) | c.extra | (1n << VIRTIO_F_VERSION_1);
          if (!probe(drv, d.queues, features)) verdict = refused('FEATURES_OK or DRIVER_OK refused');
          for (const [k, b] of c.slots.entries()) drv.mem.write(slotAddr(k), b.subarray(0, SLOT));
          const mqs = Array.from({ length: d.queues }, (_, q) => new MockSplitQueue(drv.mem, layoutOf(q)));
          const cursor = new Array<number>(d.queues).fill(0);
          c.chains.forEach((ch, i) => {
            const mq = mqs[ch.q] as MockSplitQueue;
            const head = writeChain(mq, ch, cursor[ch.q] as number, INDIRECT + 0x400 * (i % 8));
            cursor[ch.q] = (cursor[ch.q] as number) + (ch.indirect ? 1 : ch.segs.length);
            mq.addAvail(head);
          });
          for (const h of c.heads) (mqs[h.q] as MockSplitQueue).addAvail(h.head);
          for (const j of c.jumps) {
            const mq = mqs[j.q] as MockSplitQueue;
            mq.availIdx = mq.availIdx + j.by;
          }
          for (const e of c.events) {
            if ('notify' in e) drv.notify(e.notify);
            else
              try {
                rig.host?.(e.host, drv);
              } catch (err) {
                // As src/vmm/io-thread.ts's FdPoller does with a host-fd handler that throws.
                errors.push(err);
                drv.side.deviceError(err);
              }
          }
          // Every queue once more, as a driver's kick after the fact would.
          for (let q = 0; q < d.queues; q++) drv.notify(q);
          if (drv.status & STATUS.DEVICE_NEEDS_RESET) verdict = refused(`NEEDS_RESET: ${drv.side.lastError}`);
        } catch (e) {
          // The transport and the mock driver must not throw at all: whatever does is a crash.
          return crash(e);
        }
        const bad = errors.find((e) => !isClean(e));
        if (bad !== undefined) return crash(bad);
        const out = outsideRam(mem.take()) ?? rig.audit?.();
        if (out !== undefined) return oob(out);
        // Afterwards a well-behaved driver must be served again.
        try {
          drv.mem.fill(0, RAM);
          if (!probe(drv, d.queues, offered))
            return crash(new Error('a well-behaved probe was refused after the case'));
          const sick = rig.health?.(drv);
          if (sick !== undefined) return crash(new Error(`after the case: ${sick}`));
          if (drv.status & STATUS.DEVICE_NEEDS_RESET)
            return crash(new Error(`a well-behaved driver got NEEDS_RESET: ${drv.side.lastError}`));
        } catch (e) {
          return crash(e);
        }
        const late = errors.find((e) => !isClean(e));
        if (late !== undefined) return crash(late);
        const out2 = outsideRam(mem.take());
        if (out2 !== undefined) return oob(out2);
        return verdict;
      },
    };
  });
}

/** One well-formed request on queue q of a freshly probed device; the used element, or a message. */
export function serve(drv: MockMmioDriver, q: number, bufs: readonly BufSpec[]): { len: number } | string {
  const mq = new MockSplitQueue(drv.mem, layoutOf(q));
  const head = mq.addChain(bufs);
  if (head === undefined) return 'no descriptors';
  drv.notify(q);
  const used = mq.takeUsed();
  if (used.length !== 1 || used[0]?.id !== head) return `queue ${q}: ${used.length} used elements for one request`;
  return { len: (used[0] as { len: number }).len };
}

// ---- the devices ----

/** A disk in host memory: the BlockBackend contract, nothing else. */
export class MemDisk implements BlockBackend {
  readonly bytes: Uint8Array;
  readonly canDiscard: boolean;
  constructor(
    readonly size: number,
    readonly readOnly = false,
  ) {
    this.bytes = new Uint8Array(size);
    this.canDiscard = !readOnly;
  }
  private range(position: number, length: number): void {
    // What a file would do is irrelevant: the device must never ask for bytes past the disk.
    if (!(Number.isSafeInteger(position) && position >= 0 && position + length <= this.size))
      throw new Error(`backend asked for ${length} bytes at ${position} of a ${this.size}-byte disk`);
  }
  readv(bufs: Uint8Array[], position: number): number {
    let n = 0;
    for (const b of bufs) {
      this.range(position + n, b.length);
      b.set(this.bytes.subarray(position + n, position + n + b.length));
      n += b.length;
    }
    return n;
  }
  writev(bufs: Uint8Array[], position: number): number {
    if (this.readOnly) throw new Error('write to a read-only backend');
    let n = 0;
    for (const b of bufs) {
      this.range(position + n, b.length);
      this.bytes.set(b, position + n);
      n += b.length;
    }
    return n;
  }
  flush(): void {}
  discard(position: number, length: number): void {
    if (this.readOnly) throw new Error('discard on a read-only backend');
    this.range(position, length);
    this.bytes.fill(0, position, position + length);
  }
  writeZeroes(position: number, length: number): void {
    this.discard(position, length);
  }
}

const DISK_SECTORS = 128;
const u8 = (n: number) => fc.uint8Array({ minLength: 0, maxLength: n });

/** A virtio-blk header: a type (real or not) and a sector around the end of the disk. */
const blkHeader = fc
  .record({
    type: fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...Object.values(VIRTIO_BLK_T)) },
      { weight: 1, arbitrary: fc.constantFrom(2, 3, 0x7fffffff, 0xffffffff) },
    ),
    sector: fc.oneof(
      { weight: 4, arbitrary: fc.bigInt({ min: 0n, max: BigInt(DISK_SECTORS + 2) }) },
      {
        weight: 1,
        arbitrary: fc.constantFrom(2n ** 32n, 2n ** 53n / 512n, 2n ** 55n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n - 8n),
      },
    ),
  })
  .map(({ type, sector }) => {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(type >>> 0, 0);
    b.writeBigUInt64LE(sector, 8);
    return new Uint8Array(b);
  });

/** discard / write-zeroes segments: {le64 sector, le32 num_sectors, le32 flags}, hostile values among them. */
const blkDiscard = fc
  .array(
    fc.record({
      sector: fc.oneof(fc.bigInt({ min: 0n, max: 200n }), fc.constantFrom(2n ** 63n, 2n ** 64n - 1n)),
      num: fc.oneof(fc.nat(200), fc.constantFrom(0x3fffff, 0x400000, 0xffffffff)),
      flags: fc.oneof(fc.constantFrom(0, 1), fc.nat()),
    }),
    { maxLength: 4 },
  )
  .map((segs) => {
    const b = Buffer.alloc(16 * segs.length);
    segs.forEach((s, i) => {
      b.writeBigUInt64LE(s.sector, 16 * i);
      b.writeUInt32LE(s.num >>> 0, 16 * i + 8);
      b.writeUInt32LE(s.flags >>> 0, 16 * i + 12);
    });
    return new Uint8Array(b);
  });

/** Header, then data buffers (readable or writable, whatever the type says), then a status byte. */
const blkChain = fc
  .tuple(
    seg(inSlot(0), lenArb(16, 16, 16, 8, 15, 17), fc.constant(false)),
    fc.array(seg(addrArb, lenArb(512, 1024, 4096, 16, 32, 20, 511), fc.boolean()), { maxLength: 3 }),
    seg(inSlot(15), lenArb(1, 1, 1, 2, 0), fc.constant(true)),
  )
  .map(([h, data, st]) => [h, ...data, st]);

export function blkFuzz(readOnly: boolean): DeviceFuzz<never> {
  return {
    name: readOnly ? 'virtio-blk-ro' : 'virtio-blk',
    ciCases: 10_000,
    queues: 1,
    chain: () => blkChain,
    slots: fc.tuple(blkHeader, blkDiscard, u8(64)).map((s) => [...s]),
    rig: () => {
      const disk = new MemDisk(DISK_SECTORS * SECTOR, readOnly);
      for (let i = 0; i < disk.size; i++) disk.bytes[i] = i & 0xff;
      const device = new VirtioBlock(disk, { id: 'fuzz' });
      return {
        device,
        // A read of the last sector must still come back whole, with status OK.
        health: (drv) => {
          const h = Buffer.alloc(16);
          h.writeUInt32LE(VIRTIO_BLK_T.IN, 0);
          h.writeBigUInt64LE(BigInt(DISK_SECTORS - 1), 8);
          drv.mem.write(DATA, h);
          drv.mem.write8(DATA + 0x2000, 0xee);
          const r = serve(drv, 0, [
            { addr: DATA, len: 16, write: false },
            { addr: DATA + 0x1000, len: SECTOR, write: true },
            { addr: DATA + 0x2000, len: 1, write: true },
          ]);
          if (typeof r === 'string') return r;
          if (drv.mem.read8(DATA + 0x2000) !== 0)
            return `read of the last sector: status ${drv.mem.read8(DATA + 0x2000)}`;
          if (r.len !== SECTOR + 1) return `read of the last sector: used length ${r.len}`;
          return undefined;
        },
      };
    },
  };
}

/** A frame the TAP hands the guest: a vnet header (sizes and flags hostile) and a payload. */
interface RxFrame {
  len: number;
}

export const netFuzz: DeviceFuzz<RxFrame> = {
  name: 'virtio-net',
  ciCases: 10_000,
  queues: 2,
  // rx buffers (writable, often too small for a header); tx frames (header split, sizes vs features).
  chain: (q) =>
    q === 0
      ? fc.array(seg(addrArb, lenArb(1526, 12, 10, 11, 4096, 64), fc.constant(true)), { minLength: 1, maxLength: 3 })
      : fc.array(seg(addrArb, lenArb(12, 10, 11, 60, 1514, 4096, 0x10000), fc.constant(false)), {
          minLength: 1,
          maxLength: 4,
        }),
  slots: fc.array(u8(80), { maxLength: 4 }),
  host: fc.record({ len: fc.oneof(fc.constantFrom(0, 1, 11, 12, 13, 60, 1526, 65562), fc.nat(70_000)) }),
  rig: () => {
    const tap = new FakeTap();
    const poller = new FakePoller();
    const device = new VirtioNet(tap, { mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56) });
    device.attach(poller);
    return {
      device,
      host: (e) => {
        const f = new Uint8Array(e.len);
        for (let i = 0; i < f.length; i++) f[i] = i & 0xff;
        tap.inbox.push(f);
        poller.fire(tap.fd);
        tap.inbox.length = Math.min(tap.inbox.length, 4); // frames the device never took do not pile up
      },
      health: (drv) => {
        tap.inbox.length = 0;
        tap.sent.length = 0;
        drv.mem.write(
          DATA + VIRTIO_NET_HDR_LEN,
          Uint8Array.from({ length: 60 }, (_, i) => i),
        );
        const r = serve(drv, 1, [{ addr: DATA, len: VIRTIO_NET_HDR_LEN + 60, write: false }]);
        if (typeof r === 'string') return r;
        if (tap.sent.length !== 1 || tap.sent[0]?.length !== VIRTIO_NET_HDR_LEN + 60)
          return `a 60-byte frame sent: ${tap.sent.length} frames at the TAP`;
        return undefined;
      },
    };
  },
};

/** PFN arrays: pages of the case's RAM, the page just past it, and far outside. */
const pfns = fc
  .array(
    fc.oneof(
      { weight: 4, arbitrary: fc.nat(RAM / BALLOON_PAGE - 1) },
      { weight: 1, arbitrary: fc.constantFrom(RAM / BALLOON_PAGE, MMIO_HOLE / BALLOON_PAGE, 0x7fffffff, 0xffffffff) },
      { weight: 1, arbitrary: fc.nat() },
    ),
    { maxLength: 64 },
  )
  .map((ps) => {
    const b = Buffer.alloc(4 * ps.length);
    ps.forEach((p, i) => {
      b.writeUInt32LE(p >>> 0, 4 * i);
    });
    return new Uint8Array(b);
  });

/** Stats entries: le16 tag (known or not), le64 value. */
const stats = fc
  .array(fc.tuple(fc.oneof(fc.nat(12), fc.constant(0xffff)), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })), {
    maxLength: 12,
  })
  .map((es) => {
    const b = Buffer.alloc(10 * es.length);
    es.forEach(([t, v], i) => {
      b.writeUInt16LE(t, 10 * i);
      b.writeBigUInt64LE(v, 10 * i + 2);
    });
    return new Uint8Array(b);
  });

type BalloonEvent = { target: number } | { stats: true };

export const balloonFuzz: DeviceFuzz<BalloonEvent> = {
  name: 'virtio-balloon',
  ciCases: 10_000,
  queues: 3,
  chain: (q) =>
    fc.array(seg(addrArb, lenArb(4, 64, 256, q === 2 ? 100 : 4), fc.boolean()), { minLength: 1, maxLength: 3 }),
  slots: fc.array(fc.oneof(pfns, stats), { maxLength: 6 }),
  host: fc.oneof(fc.record({ target: fc.constantFrom(0, 1, 2, 4096) }), fc.constant<BalloonEvent>({ stats: true })),
  rig: () => {
    const control = new BalloonControl();
    let bad: string | undefined;
    const device = new VirtioBalloon(
      control,
      (gpa, length) => {
        // The host would madvise(DONTNEED) this range: it must be guest RAM, whole pages.
        if (bad === undefined && !(gpa >= 0 && gpa % BALLOON_PAGE === 0 && gpa + length <= RAM && length > 0))
          bad = `the balloon released ${length} bytes at 0x${gpa.toString(16)}, outside the guest's RAM`;
      },
      { deflateOnOom: true, stats: true },
    );
    return {
      device,
      control,
      host: (e, drv) => {
        if ('target' in e) control.setTargetMiB(e.target);
        else control.requestStats();
        drv.side.hostWake();
      },
      audit: () => {
        const b = bad;
        bad = undefined;
        return b;
      },
      health: (drv) => {
        drv.mem.write32(DATA, 5);
        const r = serve(drv, 0, [{ addr: DATA, len: 4, write: false }]);
        return typeof r === 'string' ? r : undefined;
      },
    };
  },
};

export const consoleFuzz: DeviceFuzz<never> = {
  name: 'virtio-console',
  ciCases: 10_000,
  queues: 2,
  chain: () => fc.array(seg(addrArb, lenArb(1, 16, 80, 4096), fc.boolean()), { minLength: 1, maxLength: 4 }),
  slots: fc.array(u8(80), { maxLength: 4 }),
  rig: () => {
    const out: Uint8Array[] = [];
    const device = new VirtioConsole({ write: (b) => out.push(Uint8Array.from(b)), inputFd: -1, read: () => 0 });
    return {
      device,
      health: (drv) => {
        out.length = 0;
        drv.mem.write(DATA, Buffer.from('hello'));
        const r = serve(drv, 1, [{ addr: DATA, len: 5, write: false }]);
        if (typeof r === 'string') return r;
        return Buffer.concat(out).toString() === 'hello' ? undefined : 'console output lost';
      },
    };
  },
};

export const rngFuzz: DeviceFuzz<never> = {
  name: 'virtio-rng',
  ciCases: 10_000,
  queues: 1,
  chain: () => fc.array(seg(addrArb, lenArb(16, 64, 4096, 0x10000), fc.boolean()), { minLength: 1, maxLength: 4 }),
  slots: fc.constant([]),
  rig: () => ({
    device: new VirtioRng((b) => b.fill(0xa5)),
    health: (drv) => {
      const r = serve(drv, 0, [{ addr: DATA, len: 32, write: true }]);
      if (typeof r === 'string') return r;
      return r.len === 32 && drv.mem.read8(DATA + 31) === 0xa5 ? undefined : `rng answered ${r.len} bytes`;
    },
  }),
};

export const virtioTargets: TargetSpec[] = [
  deviceTarget(blkFuzz(false)),
  deviceTarget(blkFuzz(true)),
  deviceTarget(netFuzz),
  deviceTarget(balloonFuzz),
  deviceTarget(consoleFuzz),
  deviceTarget(rngFuzz),
];

// ---- the transport's register file ----

interface RegOp {
  offset: number;
  size: number;
  value: number;
  write: boolean;
}
const regOp: fc.Arbitrary<RegOp> = fc.record({
  offset: fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...Object.values(R)) },
    { weight: 2, arbitrary: fc.nat(0x1ff) },
    { weight: 1, arbitrary: fc.constantFrom(0xffc, 0xfff, 0x1000, -1) },
  ),
  size: fc.constantFrom(1, 2, 4, 4, 4, 8, 3, 0),
  value: fc.oneof(
    fc.constantFrom(0, 1, 2, 3, 0x7f, 0x80000000, 0xffffffff, 0x7fffffff, 0xfffffffe, 16, 17, 256, 0x8000),
    fc.nat(),
  ),
  write: fc.boolean(),
});

/** Register traffic at any offset, size and value, then a well-behaved probe must still work. */
export const mmioTarget = target('virtio-mmio-registers', 10_000, () => {
  const errors: unknown[] = [];
  let dev: RecordingMemory | undefined;
  const rig = balloonFuzz.rig();
  const drv = new MockMmioDriver(observed(rig.device, errors), RAM, false, (regions) => {
    dev = new RecordingMemory(regions);
    return dev;
  });
  const mem = dev as unknown as RecordingMemory;
  mem.budget = 200_000;
  const offered = drv.deviceFeatures() | (1n << VIRTIO_F_VERSION_1);
  return {
    arbitrary: fc.array(regOp, { maxLength: 40 }),
    close: () => drv.release(),
    run(ops: RegOp[]): Verdict {
      errors.length = 0;
      drv.mem.fill(0, RAM);
      mem.take();
      try {
        for (const o of ops) {
          const b = new Uint8Array(o.size);
          for (let i = 0; i < o.size; i++) b[i] = (o.value >>> (8 * (i & 3))) & 0xff;
          // A vCPU thread does exactly this with an MMIO exit's bytes: neither call may throw.
          if (o.write) drv.transport.write(o.offset, b);
          else drv.transport.read(o.offset, b);
          drv.side.poll();
        }
      } catch (e) {
        return crash(e);
      }
      const bad = errors.find((e) => !isClean(e));
      if (bad !== undefined) return crash(bad);
      const out = outsideRam(mem.take()) ?? rig.audit?.();
      if (out !== undefined) return oob(out);
      try {
        drv.mem.fill(0, RAM);
        if (!probe(drv, balloonFuzz.queues, offered))
          return crash(new Error('a well-behaved probe was refused after the register traffic'));
        const sick = rig.health?.(drv);
        if (sick !== undefined) return crash(new Error(sick));
      } catch (e) {
        return crash(e);
      }
      return outsideRam(mem.take()) === undefined ? OK : oob('after the probe');
    },
  };
});
