/**
 * Hardening suite for the device side of the split virtqueue (virtio 1.2 §2.7): the guest is the
 * attacker, so every index, address and length it writes must end in a typed error, never in an access
 * outside guest memory or outside the rings the device may touch. Property tests fuzz the rings against
 * a reference model (a), round-trip driver-built chains across the 16-bit index wrap (b), check event-idx
 * suppression against vring_need_event (c) and the chain copy helpers (d); directed tests pin one known
 * bug class each. VQ_RUNS=n overrides the number of runs of every property (for soak runs).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { MiB } from '../src/common/address.js';
import {
  type ChainErrorCode,
  chainViews,
  checkLayout,
  type DescriptorChain,
  Queue,
  QueueError,
  type QueueErrorCode,
  type QueueFeatures,
  type QueueLayout,
  type QueuePosition,
  readFromChain,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_MAX_SIZE,
  VIRTQ_USED_F_NO_NOTIFY,
  writeToChain,
} from '../src/devices/virtio/queue.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import {
  type Access,
  type BufSpec,
  type Desc,
  MockSplitQueue,
  RecordingMemory,
  ringBytes,
  type UsedElem,
} from './support/mock-virtq.js';

// Region 0, a hole, then regions 1 and 2 back to back (separate mappings: nothing may span them).
const R0 = { gpa: 0, size: 1 * MiB };
const R1 = { gpa: 2 * MiB, size: 1 * MiB };
const R2 = { gpa: 3 * MiB, size: 1 * MiB };
const REGIONS = [R0, R1, R2];
const END = R2.gpa + R2.size;
const HOLE = R0.size + 0x80000;
const RING_BASE = 0x1000;
const INDIRECT_AREA = 0x80000; // property (b) indirect tables
const SCRATCH = 0xa0000; // fuzzed indirect tables for property (a)

const stats = { runs: 0, properties: 0, directed: 0, crashes: 0, oob: 0 };
let mapping: GuestMemoryMapping;
let drv: GuestMemory; // the driver's view: unrecorded
let dev: RecordingMemory; // the device's view: every access logged

before(() => {
  mapping = GuestMemoryMapping.allocate(REGIONS);
  drv = new GuestMemory(mapping.descriptors);
  dev = new RecordingMemory(mapping.descriptors);
});
after(() => {
  mapping.release();
  console.log(
    `virtqueue hardening: ${stats.runs} property runs (${stats.properties} properties), ${stats.directed} directed cases, ` +
      `${stats.crashes} crashes, ${stats.oob} out-of-bounds accesses`,
  );
});

const zeroRam = (): void => {
  for (const r of REGIONS) drv.fill(r.gpa, r.size);
};

// ---- the model: what guest memory is, what the device may touch, and how a chain must walk ----

interface Area {
  start: number;
  end: number;
}
const rings = (l: QueueLayout) => {
  const b = ringBytes(l.size);
  return {
    desc: { start: l.desc, end: l.desc + b.desc },
    avail: { start: l.avail, end: l.avail + b.avail },
    used: { start: l.used, end: l.used + b.used },
  };
};
const segArea = (s: { addr: number; len: number }): Area => ({ start: s.addr, end: s.addr + s.len });

/** [addr, addr+max(len,1)) inside one region, in exact 64-bit arithmetic. */
const inRam = (addr: bigint, len: number): boolean =>
  REGIONS.some((r) => addr >= BigInt(r.gpa) && addr + BigInt(Math.max(len, 1)) <= BigInt(r.gpa + r.size));

/** Checks a device access log: all in guest memory, reads in `read`, writes in `write`, views in either. */
function audit(log: readonly Access[], read: readonly Area[], write: readonly Area[]): void {
  for (const a of log) {
    const inside = (areas: readonly Area[]) => areas.some((r) => a.gpa >= r.start && a.gpa + a.len <= r.end);
    const ok = a.kind === 'read' ? inside(read) : a.kind === 'write' ? inside(write) : inside([...read, ...write]);
    const inMemory = Number.isSafeInteger(a.gpa) && Number.isSafeInteger(a.len) && inRam(BigInt(a.gpa), a.len);
    if (!inMemory || !ok) {
      stats.oob++;
      assert.fail(`device ${a.kind} of ${a.len} bytes at 0x${a.gpa.toString(16)} is outside what it may touch`);
    }
  }
}
const RAM: Area[] = REGIONS.map((r) => ({ start: r.gpa, end: r.gpa + r.size }));

/** §2.7's rules for a layout, with the memory check done on the region model. */
function refLayout(l: QueueLayout, maxSize: number): QueueErrorCode | undefined {
  const { size } = l;
  if (!Number.isInteger(size) || size < 1 || size > Math.min(maxSize, VIRTQ_MAX_SIZE) || (size & (size - 1)) !== 0)
    return 'VIRTQ_ERR_SIZE';
  if (l.desc % 16 !== 0 || l.avail % 2 !== 0 || l.used % 4 !== 0) return 'VIRTQ_ERR_ALIGNMENT';
  const areas = Object.values(rings(l));
  if (areas.some((a) => !inRam(BigInt(a.start), a.end - a.start))) return 'VIRTQ_ERR_RING_OUTSIDE_MEMORY';
  const overlap = (a: Area, b: Area) => a !== b && a.start < b.end && b.start < a.end;
  return areas.some((a) => areas.some((b) => overlap(a, b))) ? 'VIRTQ_ERR_RINGS_OVERLAP' : undefined;
}

type Outcome<T> = { ok: true; value: T } | { ok: false; code: QueueErrorCode };
/** Runs a device call: a QueueError is an outcome, anything else a crash. */
function attempt<T>(f: () => T): Outcome<T> {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    if (e instanceof QueueError) return { ok: false, code: e.code };
    stats.crashes++;
    throw e;
  }
}

interface RefChain {
  chain: DescriptorChain;
  /** The 16-byte descriptors the walk looked at, in order. */
  descs: Area[];
  /** Entries of the indirect table the chain went into (0 if none). */
  tableN: number;
}

/** The reference walk of §2.7.5, on the driver's view with 64-bit addresses. */
function refWalk(l: QueueLayout, indirectOk: boolean, head: number): RefChain {
  const chain: DescriptorChain = { head, readable: [], writable: [], readLen: 0, writeLen: 0 };
  const out: RefChain = { chain, descs: [], tableN: 0 };
  const fail = (error: ChainErrorCode): RefChain => {
    chain.error = error;
    return out;
  };
  let [table, n, i, hops] = [l.desc, l.size, head, 0];
  for (;;) {
    if (++hops > n) return fail('CHAIN_LOOP');
    const at = table + 16 * i;
    out.descs.push({ start: at, end: at + 16 });
    const [addr, len, flags, next] = [drv.read64(at), drv.read32(at + 8), drv.read16(at + 12), drv.read16(at + 14)];
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      if (!indirectOk) return fail('CHAIN_INDIRECT_NOT_NEGOTIATED');
      if (out.tableN > 0) return fail('CHAIN_INDIRECT_NESTED');
      if (flags & VIRTQ_DESC_F_NEXT || len === 0 || len % 16 !== 0 || len > 16 * VIRTQ_MAX_SIZE)
        return fail('CHAIN_INDIRECT_BAD_TABLE');
      if (!inRam(addr, len)) return fail('CHAIN_OUTSIDE_MEMORY');
      [table, n, i, hops, out.tableN] = [Number(addr), len / 16, 0, 0, len / 16];
      continue;
    }
    if (!inRam(addr, len)) return fail('CHAIN_OUTSIDE_MEMORY');
    const seg = { addr: Number(addr), len };
    if (flags & VIRTQ_DESC_F_WRITE) {
      chain.writable.push(seg);
      chain.writeLen += len;
    } else {
      if (chain.writable.length > 0) return fail('CHAIN_ORDER');
      chain.readable.push(seg);
      chain.readLen += len;
    }
    if (chain.readLen + chain.writeLen > 0xffffffff) return fail('CHAIN_TOO_LONG');
    if (!(flags & VIRTQ_DESC_F_NEXT)) return out;
    if (next >= n) return fail('CHAIN_NEXT_INDEX');
    i = next;
  }
}

/** vring_need_event, stated directly: did the used index pass used_event going from old to new? */
const crossed = (event: number, newIdx: number, old: number): boolean =>
  ((event - old) & 0xffff) < ((newIdx - old) & 0xffff);
/** vring_need_event as Linux writes it, in u16 arithmetic. */
const vringNeedEvent = (event: number, newIdx: number, old: number): boolean => {
  const u = Uint16Array.of(newIdx - event - 1, newIdx - old);
  return (u[0] as number) < (u[1] as number);
};

// ---- property (a): arbitrary rings against the model ----

type Op =
  | { op: 'pop' | 'notify' | 'enable' | 'disable' }
  | { op: 'push'; pick: number; len: number }
  | { op: 'kick'; by: number }
  | { op: 'scribble'; at: number; bytes: Uint8Array };

const EDGES = [0, R0.size, R1.gpa, R2.gpa, END];
const inRamAddr = fc
  .record({ r: fc.constantFrom(...REGIONS), off: fc.nat({ max: R0.size - 1 }) })
  .map(({ r, off }) => r.gpa + off);
const gpaNear = fc.oneof(
  { weight: 3, arbitrary: inRamAddr },
  fc.integer({ min: 0, max: END + 4096 }),
  fc.constantFrom(...EDGES).chain((e) => fc.integer({ min: Math.max(0, e - 64), max: e + 64 })),
  fc.integer({ min: 0, max: 15 }).map((k) => SCRATCH + 16 * k),
);
const addr64 = fc.oneof(
  { weight: 6, arbitrary: gpaNear.map(BigInt) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        fc.constantFrom(1n << 32n, 1n << 52n, 1n << 53n, 1n << 63n, 1n << 64n),
        fc.integer({ min: -4096, max: 4096 }),
      )
      .map(([b, o]) => BigInt.asUintN(64, b + BigInt(o))),
  },
);
const len32 = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 64 }) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 16 }).map((k) => 16 * k) },
  fc.constantFrom(0xffffffff, 0xfffffff0, 0x80000000, 0x100000, 16 * VIRTQ_MAX_SIZE, 16 * (VIRTQ_MAX_SIZE + 1)),
  fc.nat({ max: 0xffffffff }),
);
/** A well-formed buffer descriptor (direction and links still random). */
const goodDesc = (n: number): fc.Arbitrary<Desc> =>
  fc.record({
    addr: fc.nat({ max: R0.size - 64 }).chain((o) => fc.constantFrom(...REGIONS).map((r) => BigInt(r.gpa + o))),
    len: fc.nat({ max: 64 }),
    flags: fc.constantFrom(0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, 3),
    next: fc.nat({ max: n - 1 }),
  });
/** An indirect descriptor aimed at the fuzzed tables in SCRATCH. */
const toScratch = (n: number): fc.Arbitrary<Desc> =>
  fc.record({
    addr: fc.nat({ max: 15 }).map((k) => BigInt(SCRATCH + 16 * k)),
    len: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 16 }).map((k) => 16 * k) }, len32),
    flags: fc.oneof({ weight: 4, arbitrary: fc.constant(VIRTQ_DESC_F_INDIRECT) }, fc.integer({ min: 4, max: 7 })),
    next: fc.nat({ max: n }),
  });
const anyDesc = (n: number): fc.Arbitrary<Desc> =>
  fc.record({
    addr: addr64,
    len: len32,
    flags: fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, 3) },
      { weight: 2, arbitrary: fc.integer({ min: 0, max: 7 }) },
      fc.nat({ max: 0xffff }),
    ),
    next: fc.oneof({ weight: 4, arbitrary: fc.nat({ max: n - 1 }) }, fc.nat({ max: n + 1 }), fc.nat({ max: 0xffff })),
  });
/** Descriptors for a table of `n` entries: mostly plausible, often not. */
const descArb = (n: number): fc.Arbitrary<Desc> =>
  fc.oneof({ weight: 4, arbitrary: goodDesc(n) }, { weight: 3, arbitrary: anyDesc(n) }, toScratch(n));
const ringAddr = fc.oneof(
  { weight: 4, arbitrary: gpaNear },
  fc.constantFrom(-16, -1, 0.5, 2 ** 53, 2 ** 64, 2 ** 64 - 4096, Number.NaN, Number.POSITIVE_INFINITY),
  fc.double(),
);
const usedLen = fc.oneof(
  fc.nat({ max: 0xffffffff }),
  fc.constantFrom(-5, 1.7, 2 ** 32, 2 ** 60, Number.NaN, -Infinity),
);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.constant<Op>({ op: 'pop' }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('push' as const), pick: fc.nat(), len: usedLen }) },
  fc.constantFrom<Op>({ op: 'notify' }, { op: 'enable' }, { op: 'disable' }),
  { weight: 2, arbitrary: fc.record({ op: fc.constant('kick' as const), by: fc.integer({ min: 0, max: 4 }) }) },
  fc.record({
    op: fc.constant('scribble' as const),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
);
const u16 = fc.nat({ max: 0xffff });

const fuzzCase = fc.constantFrom(1, 2, 4, 8, 16, 64, 256).chain((size) =>
  fc.record({
    layout: fc.oneof(
      { weight: 6, arbitrary: fc.nat({ max: 0x8000 }).map((b) => MockSplitQueue.packed(size, 16 * b)) },
      { weight: 2, arbitrary: fc.record({ size: fc.constant(size), desc: ringAddr, avail: ringAddr, used: ringAddr }) },
      fc.record({ size: fc.oneof(fc.integer(), fc.double()), desc: ringAddr, avail: ringAddr, used: ringAddr }),
    ),
    maxSize: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(VIRTQ_MAX_SIZE, 256, size) }, fc.constant(size / 2)),
    features: fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean() }),
    start: fc.record({ nextAvail: u16, nextUsed: u16, signalledUsed: u16, inFlight: fc.nat({ max: 2 * size }) }),
    desc: fc.oneof(
      { weight: 3, arbitrary: fc.array(descArb(size), { minLength: size, maxLength: size }) },
      fc.uint8Array({ minLength: 16 * size, maxLength: 16 * size }),
    ),
    scratch: fc.array(descArb(16), { maxLength: 16 }),
    avail: fc.oneof(
      {
        weight: 4,
        arbitrary: fc.record({
          flags: u16,
          ahead: fc.oneof({ weight: 8, arbitrary: fc.nat({ max: size }) }, fc.nat({ max: size + 2 }), u16),
          ring: fc.array(fc.oneof({ weight: 8, arbitrary: fc.nat({ max: size - 1 }) }, u16), {
            minLength: size,
            maxLength: size,
          }),
          usedEvent: u16,
        }),
      },
      fc.uint8Array({ minLength: 6 + 2 * size, maxLength: 6 + 2 * size }),
    ),
    ops: fc.array(opArb, { maxLength: 24 }),
  }),
);
type FuzzCase = typeof fuzzCase extends fc.Arbitrary<infer T> ? T : never;

/** Chains property (a) popped, to check that the fuzzer gets past the first checks. */
const reached = { ok: 0, malformed: 0 };

function runFuzzCase(c: FuzzCase): void {
  stats.runs++;
  zeroRam();
  dev.take();
  const bad = attempt(() => checkLayout(dev, c.layout, c.maxSize));
  assert.ok(bad.ok, 'checkLayout returns its error, never throws');
  audit(dev.take(), [], []);
  assert.equal(bad.value?.code, refLayout(c.layout, c.maxSize));
  if (bad.value !== undefined) return;
  const l = c.layout;
  const { size } = l;
  const area = rings(l);
  const mock = new MockSplitQueue(drv, l);
  for (const [i, d] of c.scratch.entries()) mock.writeDesc(i, d, SCRATCH);
  // The layout's size may differ from the one the bytes were drawn for: write only what fits.
  if (c.desc instanceof Uint8Array) drv.write(l.desc, c.desc.subarray(0, 16 * size));
  else for (const [i, d] of c.desc.slice(0, size).entries()) mock.writeDesc(i, d);
  if (c.avail instanceof Uint8Array) drv.write(l.avail, c.avail.subarray(0, 6 + 2 * size));
  else {
    mock.setAvailFlags(c.avail.flags);
    for (const [i, h] of c.avail.ring.slice(0, size).entries()) mock.setAvailEntry(i, h);
    mock.availIdx = c.start.nextAvail + c.avail.ahead;
    mock.setUsedEvent(c.avail.usedEvent);
  }
  const q = new Queue(l, c.features, c.start);
  const m = { ...c.start };
  const popped: number[] = [];

  const pop = (): boolean => {
    const n = (mock.availIdx - m.nextAvail) & 0xffff;
    const head = drv.read16(l.avail + 4 + 2 * (m.nextAvail & (size - 1)));
    const ref = n === 0 || n > size || head >= size ? undefined : refWalk(l, c.features.indirect, head);
    const got = attempt(() => q.pop(dev));
    const log = dev.take();
    audit(log, [area.avail, ...(ref?.descs ?? [])], []);
    const bytes = log.reduce((s, a) => s + a.len, 0);
    assert.ok(bytes <= 4 + 16 * (ref?.descs.length ?? 0), `pop read ${bytes} bytes: a field was fetched twice`);
    const fault: Outcome<unknown> | undefined =
      n > size
        ? { ok: false, code: 'VIRTQ_ERR_AVAIL_INDEX' }
        : n === 0
          ? { ok: true, value: undefined }
          : m.inFlight >= size
            ? { ok: false, code: 'VIRTQ_ERR_USED_OVERFLOW' }
            : head >= size
              ? { ok: false, code: 'VIRTQ_ERR_HEAD_INDEX' }
              : undefined;
    if (fault !== undefined) {
      assert.deepEqual(got, fault);
      return false;
    }
    assert.ok(got.ok && got.value !== undefined && ref !== undefined);
    const chain = got.value;
    m.nextAvail = (m.nextAvail + 1) & 0xffff;
    m.inFlight++;
    popped.push(head);
    assert.equal(chain.error, ref.chain.error, `chain at head ${head}`);
    reached[chain.error === undefined ? 'ok' : 'malformed']++;
    if (chain.error !== undefined) return true;
    assert.deepEqual(chain, ref.chain);
    const segs = [...chain.readable, ...chain.writable];
    for (const s of segs) assert.ok(drv.isValid(s.addr, s.len), `segment ${s.addr}+${s.len} outside guest memory`);
    assert.ok(segs.length <= size + ref.tableN);
    assert.ok(chain.readLen + chain.writeLen <= 0xffffffff);
    // The helpers touch only the chain's own buffers, in the right direction.
    const data = Uint8Array.from({ length: Math.min(chain.writeLen, 64) }, (_, i) => i);
    assert.equal(writeToChain(dev, chain.writable, data), data.length);
    audit(dev.take(), [], chain.writable.map(segArea));
    assert.equal(readFromChain(dev, chain.readable, Math.min(chain.readLen, 64)).length, Math.min(chain.readLen, 64));
    audit(dev.take(), chain.readable.map(segArea), []);
    return true;
  };

  for (const op of c.ops) {
    if (op.op === 'pop') pop();
    else if (op.op === 'push') {
      const head = popped.length > 0 ? (popped[op.pick % popped.length] as number) : op.pick & 0xffff;
      const got = attempt(() => q.pushUsed(dev, head, op.len));
      audit(dev.take(), [], [area.used]);
      if (m.inFlight <= 0) assert.deepEqual(got, { ok: false, code: 'VIRTQ_ERR_USED_OVERFLOW' });
      else if (head >= size) assert.deepEqual(got, { ok: false, code: 'VIRTQ_ERR_HEAD_INDEX' });
      else {
        assert.ok(got.ok);
        const len = Number.isNaN(op.len) ? 0 : Math.min(Math.max(0, Math.trunc(op.len)), 0xffffffff);
        assert.deepEqual(mock.usedElem(m.nextUsed), { id: head, len });
        m.nextUsed = (m.nextUsed + 1) & 0xffff;
        m.inFlight--;
        assert.equal(mock.usedIdx, m.nextUsed);
      }
    } else if (op.op === 'notify') {
      const event = drv.read16(l.avail + 4 + 2 * size);
      const want =
        m.nextUsed !== m.signalledUsed &&
        (c.features.eventIdx
          ? crossed(event, m.nextUsed, m.signalledUsed)
          : (drv.read16(l.avail) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0);
      assert.equal(q.needsNotification(dev), want);
      m.signalledUsed = m.nextUsed;
      audit(dev.take(), [area.avail], []);
    } else if (op.op === 'enable') {
      const n = (mock.availIdx - m.nextAvail) & 0xffff;
      const got = attempt(() => q.enableNotification(dev));
      audit(dev.take(), [area.avail], [area.used]);
      assert.deepEqual(got, n > size ? { ok: false, code: 'VIRTQ_ERR_AVAIL_INDEX' } : { ok: true, value: n > 0 });
      if (c.features.eventIdx) assert.equal(mock.availEvent, m.nextAvail);
      else assert.equal(mock.usedFlags, 0);
    } else if (op.op === 'disable') {
      q.disableNotification(dev);
      audit(dev.take(), [], [area.used]);
    } else if (op.op === 'kick') mock.availIdx += op.by;
    else if (op.op === 'scribble') {
      const into = op.at % 2 === 0 ? area.desc : area.avail;
      const bytes = op.bytes.subarray(0, into.end - into.start);
      drv.write(into.start + ((op.at >>> 1) % (into.end - into.start - bytes.length + 1)), bytes);
    }
  }
  // Draining terminates: at most `size` chains, then empty or a ring-level fault.
  let pops = 0;
  while (pop()) assert.ok(++pops <= size, 'pop kept returning chains past the queue size');
  assert.deepEqual(q.position(), m);
}

describe('virtqueue properties', () => {
  const runs = (n: number) => ({ numRuns: Number(process.env.VQ_RUNS ?? n) });

  test('(a) arbitrary rings: only QueueError, only allowed accesses, chains match the reference walk', () => {
    stats.properties++;
    const r = runs(400);
    fc.assert(fc.property(fuzzCase, runFuzzCase), r);
    if (r.numRuns >= 100) assert.ok(reached.ok > 0 && reached.malformed > 0, `reached ${JSON.stringify(reached)}`);
  });

  test('(b) round trip: driver-built chains pop exactly as built and completions land in the used ring', () => {
    stats.properties++;
    const region = fc.constantFrom({ gpa: 0xc0000, size: 0x40000 }, R1, R2);
    const buf = fc
      .record({ r: region, off: fc.nat(), len: fc.oneof(fc.integer({ min: 0, max: 4096 }), fc.nat({ max: 0x10000 })) })
      .map(({ r, off, len }) => ({ addr: r.gpa + (off % (r.size - Math.max(len, 1) + 1)), len }));
    const chainArb = fc.record({
      indirect: fc.boolean(),
      bufs: fc.array(fc.record({ b: buf, write: fc.boolean() }), { minLength: 1, maxLength: 6 }),
    });
    const caseArb = fc.record({
      size: fc.constantFrom(1, 2, 4, 8, 16, 64, 256),
      start: fc.oneof(fc.integer({ min: 0xffff - 40, max: 0xffff }), u16),
      eventIdx: fc.boolean(),
      seed: fc.nat(),
      batches: fc.array(fc.array(chainArb, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 12 }),
    });
    fc.assert(
      fc.property(caseArb, (c) => {
        stats.runs++;
        zeroRam();
        let seed = c.seed;
        const rand = (n: number): number => {
          seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
          return (seed >>> 8) % n;
        };
        const l = MockSplitQueue.packed(c.size, RING_BASE);
        assert.equal(checkLayout(dev, l, VIRTQ_MAX_SIZE), undefined);
        const mock = new MockSplitQueue(drv, l);
        mock.availIdx = c.start;
        mock.usedIdx = c.start;
        const at = { nextAvail: c.start, nextUsed: c.start, signalledUsed: c.start, inFlight: 0 };
        const q = new Queue(l, { eventIdx: c.eventIdx, indirect: true }, at);
        let tables = 0;
        for (const batch of c.batches) {
          mock.shuffleFree(rand);
          const want: DescriptorChain[] = [];
          for (const spec of batch) {
            // Readable buffers first, as a driver must.
            const bufs: BufSpec[] = [...spec.bufs.filter((b) => !b.write), ...spec.bufs.filter((b) => b.write)].map(
              ({ b, write }) => ({ ...b, write }),
            );
            const at = spec.indirect ? INDIRECT_AREA + 128 * (tables++ % 512) : undefined;
            const head = mock.addChain(bufs, at);
            if (head === undefined) continue;
            const seg = (w: boolean) => bufs.filter((b) => b.write === w).map(({ addr, len }) => ({ addr, len }));
            const sum = (w: boolean) => seg(w).reduce((s, b) => s + b.len, 0);
            want.push({ head, readable: seg(false), writable: seg(true), readLen: sum(false), writeLen: sum(true) });
          }
          const got: DescriptorChain[] = [];
          for (let ch = q.pop(dev); ch !== undefined; ch = q.pop(dev)) got.push(ch);
          assert.deepEqual(got, want);
          // Complete them in a random order, with random lengths.
          const done = got.map((ch) => ({ id: ch.head, len: rand(0x10000) }));
          for (let i = done.length - 1; i > 0; i--) {
            const j = rand(i + 1);
            [done[i], done[j]] = [done[j] as UsedElem, done[i] as UsedElem];
          }
          for (const u of done) q.pushUsed(dev, u.id, u.len);
          assert.deepEqual(mock.takeUsed(), done);
          for (const u of done) mock.recycle(u.id);
          const area = rings(l);
          audit(
            dev.take(),
            [area.desc, area.avail, { start: INDIRECT_AREA, end: INDIRECT_AREA + 128 * 512 }],
            [area.used],
          );
        }
        assert.equal(q.position().nextAvail, mock.availIdx);
        assert.equal(q.position().nextUsed, mock.usedIdx);
        assert.equal(q.pending, 0);
      }),
      runs(200),
    );
  });

  test('(c) event-idx: needsNotification is vring_need_event for any (used_event, old, new)', () => {
    stats.properties++;
    const l = MockSplitQueue.packed(8, RING_BASE);
    const near = (base: number) => fc.integer({ min: -3, max: 3 }).map((d) => (base + d) & 0xffff);
    const arb = fc
      .record({
        old: u16,
        delta: fc.oneof(fc.integer({ min: 0, max: 10 }), u16, fc.constantFrom(0x7fff, 0x8000, 0xffff)),
      })
      .chain(({ old, delta }) => {
        const newIdx = (old + delta) & 0xffff;
        return fc.record({
          old: fc.constant(old),
          newIdx: fc.constant(newIdx),
          event: fc.oneof(u16, near(old), near(newIdx)),
        });
      });
    fc.assert(
      fc.property(arb, ({ old, newIdx, event }) => {
        stats.runs++;
        const mock = new MockSplitQueue(drv, l);
        mock.setUsedEvent(event);
        const q = new Queue(
          l,
          { eventIdx: true, indirect: false },
          { nextAvail: 0, nextUsed: newIdx, signalledUsed: old, inFlight: 0 },
        );
        const want = vringNeedEvent(event, newIdx, old);
        assert.equal(crossed(event, newIdx, old), want, 'the two statements of the formula agree');
        assert.equal(q.needsNotification(dev), want);
        assert.equal(q.position().signalledUsed, newIdx);
        assert.equal(q.needsNotification(dev), false, 'nothing new since the last call');
        audit(dev.take(), [rings(l).avail], []);
      }),
      runs(2000),
    );
  });

  test('(d) chain helpers copy only inside the chain and read back what they wrote', () => {
    stats.properties++;
    // Disjoint buffers: one per 64 KiB slot of regions 1 and 2.
    const seg = fc
      .record({
        slot: fc.nat({ max: 31 }),
        off: fc.nat({ max: 0x1000 }),
        len: fc.oneof(fc.nat({ max: 64 }), fc.nat({ max: 0x1000 })),
      })
      .map(({ slot, off, len }) => ({ slot, addr: R1.gpa + 0x10000 * slot + off, len }));
    const arb = fc.record({
      segs: fc
        .uniqueArray(seg, { selector: (s) => s.slot, maxLength: 8 })
        .map((a) => a.map(({ addr, len }) => ({ addr, len }))),
      data: fc.uint8Array({ maxLength: 0x3000 }),
      offset: fc.oneof(fc.nat({ max: 64 }), fc.nat({ max: 0x5000 })),
      viewLen: fc.nat({ max: 0x5000 }),
    });
    fc.assert(
      fc.property(arb, ({ segs, data, offset, viewLen }) => {
        stats.runs++;
        const areas = segs.map(segArea);
        const room = Math.max(0, segs.reduce((s, b) => s + b.len, 0) - offset);
        dev.take();
        const n = writeToChain(dev, segs, data, offset);
        assert.equal(n, Math.min(data.length, room));
        audit(dev.take(), [], areas);
        assert.deepEqual(readFromChain(dev, segs, n, offset), data.subarray(0, n));
        const views = chainViews(dev, segs, offset, viewLen);
        const seen = Buffer.concat(views);
        assert.equal(seen.length, Math.min(viewLen, room));
        assert.deepEqual(new Uint8Array(seen.subarray(0, n)), data.subarray(0, Math.min(n, seen.length)));
        audit(dev.take(), areas, []);
      }),
      runs(300),
    );
  });
});

// ---- directed cases: one per known bug class ----

let current: QueueLayout | undefined; // the layout of the directed case's queue: its used ring may be written
/** The device's accesses since the last call, audited: in guest memory, writes only to the used ring. */
const take = (): Access[] => {
  const log = dev.take();
  audit(log, RAM, current ? [rings(current).used] : []);
  return log;
};
const bytesIn = (log: readonly Access[], a: Area): number =>
  log.filter((x) => x.kind === 'read' && x.gpa >= a.start && x.gpa < a.end).reduce((s, x) => s + x.len, 0);

function directed(name: string, fn: () => void): void {
  test(name, () => {
    current = undefined;
    dev.take();
    try {
      fn();
    } catch (e) {
      if (!(e instanceof assert.AssertionError)) stats.crashes++;
      throw e;
    }
    take();
    stats.directed++;
  });
}

interface Rig {
  q: Queue;
  d: MockSplitQueue;
  l: QueueLayout;
}
function rig(size = 8, features: Partial<QueueFeatures> = {}, at?: QueuePosition): Rig {
  zeroRam();
  const l = MockSplitQueue.packed(size, RING_BASE);
  assert.equal(checkLayout(dev, l, VIRTQ_MAX_SIZE), undefined);
  current = l;
  const d = new MockSplitQueue(drv, l);
  if (at) {
    d.availIdx = at.nextAvail;
    d.usedIdx = at.nextUsed;
  }
  return { q: new Queue(l, { eventIdx: false, indirect: true, ...features }, at), d, l };
}

const [N, W, I] = [VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT];
const desc = (addr: number | bigint, len: number, flags = 0, next = 0): Desc => ({
  addr: BigInt(addr),
  len,
  flags,
  next,
});
/** Writes `ds` at entries 0.. of `table`, each linked to the following one. */
function linked(r: Rig, ds: readonly Desc[], table = r.l.desc): void {
  for (const [i, x] of ds.entries())
    r.d.writeDesc(i, i < ds.length - 1 ? { ...x, flags: x.flags | N, next: i + 1 } : x, table);
}
/** Publishes `head`, pops it, completes it with 0 bytes (the queue must go on), and returns the chain. */
function popHead(r: Rig, head = 0): DescriptorChain {
  r.d.addAvail(head);
  const ch = r.q.pop(dev);
  assert.ok(ch !== undefined, 'a published head pops');
  assert.equal(ch.head, head);
  r.q.pushUsed(dev, head, 0);
  return ch;
}
const chainError = (r: Rig, ds: readonly Desc[], table?: number): ChainErrorCode | undefined => {
  linked(r, ds, table);
  return popHead(r).error;
};
const qerr = (code: QueueErrorCode) => (e: unknown) => e instanceof QueueError && e.code === code;
const TABLE = R1.gpa + 0x8000; // an indirect table for the directed cases

describe('directed: layout', () => {
  const ok = MockSplitQueue.packed(8, RING_BASE);
  const code = (l: Partial<QueueLayout>, max = 256) => checkLayout(dev, { ...ok, ...l }, max)?.code;

  directed('queue size not a power of two', () => {
    for (const size of [3, 6, 12, 100, 255, 257, 32767])
      assert.equal(code(MockSplitQueue.packed(size, RING_BASE), VIRTQ_MAX_SIZE), 'VIRTQ_ERR_SIZE', `size ${size}`);
  });
  directed('queue size zero, negative, fractional, NaN or infinite', () => {
    for (const size of [0, -0, -8, 2.5, Number.NaN, Number.POSITIVE_INFINITY])
      assert.equal(code({ size }), 'VIRTQ_ERR_SIZE', `size ${size}`);
  });
  directed('queue size above the maximum', () => {
    assert.equal(code({ size: 512 }, 256), 'VIRTQ_ERR_SIZE');
    assert.equal(code({ size: 65536 }, 65536), 'VIRTQ_ERR_SIZE', 'the spec caps split queues at 32768');
    assert.equal(code({ size: 2 ** 32 }, 2 ** 32), 'VIRTQ_ERR_SIZE');
    assert.equal(code(MockSplitQueue.packed(256, RING_BASE), 256), undefined);
    assert.equal(code(MockSplitQueue.packed(VIRTQ_MAX_SIZE, R1.gpa), VIRTQ_MAX_SIZE), undefined);
  });
  directed('misaligned descriptor table (16), available ring (2), used ring (4)', () => {
    for (let o = 1; o < 16; o++) assert.equal(code({ desc: ok.desc + o }), 'VIRTQ_ERR_ALIGNMENT', `desc +${o}`);
    assert.equal(code({ avail: ok.avail + 1 }), 'VIRTQ_ERR_ALIGNMENT');
    for (const o of [1, 2, 3]) assert.equal(code({ used: ok.used + 4 + o }), 'VIRTQ_ERR_ALIGNMENT', `used +${o}`);
    assert.equal(code({ size: 8, desc: 0x1000, avail: 0x1082, used: 0x109c }), undefined, 'the minimum alignments');
  });
  directed('rings outside guest memory, or at addresses near 2^53 and 2^64', () => {
    for (const at of [END, END + 0x1000, 8 * 2 ** 30, -16, 2 ** 53, 2 ** 64 - 4096, 2 ** 64])
      for (const ring of ['desc', 'avail', 'used'] as const)
        assert.equal(code({ [ring]: at }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY', `${ring} at ${at}`);
  });
  directed('rings straddling two regions (across the hole, across adjacent mappings)', () => {
    assert.equal(code({ desc: R0.size - 64 }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY');
    assert.equal(code({ avail: R0.size - 8 }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY');
    assert.equal(code({ used: R2.gpa - 32 }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY', 'R1 and R2 touch but are two mappings');
  });
  directed('rings in the hole', () => {
    for (const ring of ['desc', 'avail', 'used'] as const)
      assert.equal(code({ [ring]: HOLE }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY', ring);
  });
  directed('rings at the very end of memory', () => {
    const b = ringBytes(8);
    assert.equal(code({ desc: END - b.desc }), undefined, 'a table ending at the last byte');
    assert.equal(code({ desc: END - b.desc + 16 }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY');
    assert.equal(code({ avail: END - b.avail }), undefined);
    assert.equal(code({ avail: END - b.avail + 2 }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY');
    assert.equal(code({ used: END - 72 }), undefined, 'the used ring (70 bytes) ends 2 bytes short');
    assert.equal(code({ used: END - 68 }), 'VIRTQ_ERR_RING_OUTSIDE_MEMORY');
  });
  directed('rings overlapping each other', () => {
    assert.equal(code({ avail: ok.desc + 126 }), 'VIRTQ_ERR_RINGS_OVERLAP', 'avail in the last descriptor');
    assert.equal(code({ used: ok.avail + 20 }), 'VIRTQ_ERR_RINGS_OVERLAP', 'used over used_event');
    assert.equal(code({ used: ok.desc + 64 }), 'VIRTQ_ERR_RINGS_OVERLAP');
    assert.equal(code({ desc: 0x4000, avail: 0x4000, used: 0x4000 }), 'VIRTQ_ERR_RINGS_OVERLAP');
    assert.equal(code({ desc: 0x1000, avail: 0x1080, used: 0x1098 }), undefined, 'touching is not overlapping');
  });
});

describe('directed: ring indices', () => {
  directed('avail idx more than the queue size ahead', () => {
    for (const start of [0, 0xfffc]) {
      const r = rig(8, {}, { nextAvail: start, nextUsed: start, signalledUsed: start, inFlight: 0 });
      for (const ahead of [9, 0x8000, 0xffff]) {
        r.d.availIdx = start + ahead;
        assert.throws(() => r.q.pop(dev), qerr('VIRTQ_ERR_AVAIL_INDEX'), `${ahead} ahead of ${start}`);
        assert.throws(() => r.q.enableNotification(dev), qerr('VIRTQ_ERR_AVAIL_INDEX'));
        assert.deepEqual(r.q.position(), { nextAvail: start, nextUsed: start, signalledUsed: start, inFlight: 0 });
      }
      r.d.availIdx = start + 8; // exactly a full ring is fine, across the wrap too
      for (let i = 0; i < 8; i++) assert.deepEqual(r.q.pop(dev)?.readable, [{ addr: 0, len: 0 }]);
      assert.equal(r.q.pop(dev), undefined);
      assert.equal(r.q.position().nextAvail, (start + 8) & 0xffff);
    }
  });
  directed('head index not below the queue size', () => {
    const r = rig(8);
    for (const head of [8, 0xffff]) {
      r.d.setAvailEntry(0, head);
      r.d.availIdx = 1;
      assert.throws(() => r.q.pop(dev), qerr('VIRTQ_ERR_HEAD_INDEX'), `head ${head}`);
      assert.equal(r.q.pending, 0, 'nothing was taken');
    }
    r.d.setAvailEntry(0, 7);
    assert.equal(r.q.pop(dev)?.head, 7);
    for (const head of [8, -1, 1.5, Number.NaN])
      assert.throws(() => r.q.pushUsed(dev, head, 0), qerr('VIRTQ_ERR_HEAD_INDEX'), `used head ${head}`);
    r.q.pushUsed(dev, 7, 3);
    assert.deepEqual(r.d.takeUsed(), [{ id: 7, len: 3 }]);
  });
  directed('more completions than requests', () => {
    const r = rig(8);
    assert.throws(() => r.q.pushUsed(dev, 0, 0), qerr('VIRTQ_ERR_USED_OVERFLOW'));
    assert.equal(take().length, 0, 'a refused completion writes nothing');
    linked(r, [desc(R1.gpa, 8)]);
    popHead(r);
    assert.throws(() => r.q.pushUsed(dev, 0, 0), qerr('VIRTQ_ERR_USED_OVERFLOW'));
    assert.equal(r.d.usedIdx, 1);
    assert.deepEqual(r.d.takeUsed(), [{ id: 0, len: 0 }]);
  });
  directed('requests never completed: a driver republishing heads in flight is stopped at queue size', () => {
    const r = rig(4);
    for (let i = 0; i < 4; i++) r.d.writeDesc(i, desc(R1.gpa + 64 * i, 64));
    for (let i = 0; i < 4; i++) r.d.addAvail(i);
    for (let i = 0; i < 4; i++) assert.deepEqual(r.q.pop(dev)?.readable, [{ addr: R1.gpa + 64 * i, len: 64 }]);
    // Republishing heads still in flight (a driver bug, or an attack on the used ring): refused.
    r.d.addAvail(0);
    assert.throws(() => r.q.pop(dev), qerr('VIRTQ_ERR_USED_OVERFLOW'));
    assert.equal(r.q.pending, 4);
    for (let i = 0; i < 4; i++) r.q.pushUsed(dev, i, 0);
    assert.throws(() => r.q.pushUsed(dev, 0, 0), qerr('VIRTQ_ERR_USED_OVERFLOW'));
    // Once completions are back the ring goes on, and an empty ring costs one read of avail.idx.
    assert.deepEqual(r.q.pop(dev)?.readable, [{ addr: R1.gpa, len: 64 }]);
    take();
    for (let i = 0; i < 10; i++) assert.equal(r.q.pop(dev), undefined);
    assert.deepEqual(
      take().map((a) => [a.kind, a.gpa, a.len]),
      Array.from({ length: 10 }, () => ['read', r.l.avail + 2, 2]),
      'an empty pop reads avail.idx and nothing else',
    );
    r.d.availIdx += 5;
    assert.throws(() => r.q.pop(dev), qerr('VIRTQ_ERR_AVAIL_INDEX'));
  });
  directed('a restored position continues where the queue stopped', () => {
    const r = rig(8, {}, { nextAvail: 0xfffe, nextUsed: 0xfffe, signalledUsed: 0xfffe, inFlight: 0 });
    for (let i = 0; i < 3; i++) r.d.writeDesc(i, desc(R1.gpa + i, 1));
    for (let i = 0; i < 3; i++) r.d.addAvail(i);
    r.q.pop(dev);
    r.q.pop(dev);
    r.q.pushUsed(dev, 0, 1);
    const q2 = new Queue(r.l, r.q.features, r.q.position());
    assert.deepEqual(q2.pop(dev)?.readable, [{ addr: R1.gpa + 2, len: 1 }]);
    q2.pushUsed(dev, 1, 2);
    q2.pushUsed(dev, 2, 3);
    assert.throws(() => q2.pushUsed(dev, 2, 3), qerr('VIRTQ_ERR_USED_OVERFLOW'));
    assert.deepEqual(r.d.takeUsed(), [
      { id: 0, len: 1 },
      { id: 1, len: 2 },
      { id: 2, len: 3 },
    ]);
    assert.equal(r.d.usedIdx, 1);
  });
});

describe('directed: descriptor chains', () => {
  directed('descriptor self-loop and 2-cycle end in CHAIN_LOOP after at most size hops', () => {
    const r = rig(8);
    r.d.writeDesc(0, desc(R1.gpa, 16, N, 0));
    take();
    assert.equal(popHead(r).error, 'CHAIN_LOOP');
    assert.ok(bytesIn(take(), rings(r.l).desc) <= 16 * 8);
    r.d.writeDesc(0, desc(R1.gpa, 16, N, 1));
    r.d.writeDesc(1, desc(R1.gpa, 16, N, 0));
    assert.equal(popHead(r).error, 'CHAIN_LOOP');
    assert.ok(bytesIn(take(), rings(r.l).desc) <= 16 * 8);
  });
  directed('a chain through every descriptor is not a loop', () => {
    const r = rig(8);
    linked(
      r,
      Array.from({ length: 8 }, (_, i) => desc(R1.gpa + 16 * i, 16)),
    );
    const ch = popHead(r);
    assert.equal(ch.error, undefined);
    assert.equal(ch.readable.length, 8);
    assert.equal(ch.readLen, 128);
  });
  directed('next not below the queue size is CHAIN_NEXT_INDEX', () => {
    const r = rig(8);
    for (const next of [8, 0xffff]) {
      r.d.writeDesc(0, desc(R1.gpa, 16, N, next));
      assert.equal(popHead(r).error, 'CHAIN_NEXT_INDEX', `next ${next}`);
    }
  });
  directed('a 0xffffffff length is outside memory', () => {
    const r = rig(8);
    for (const [addr, flags] of [
      [0, 0],
      [R1.gpa, 0],
      [R1.gpa, W],
    ] as const)
      assert.equal(chainError(r, [desc(addr, 0xffffffff, flags)]), 'CHAIN_OUTSIDE_MEMORY');
  });
  directed('lengths summing past 2^32 - 1 are CHAIN_TOO_LONG; exactly 2^32 - 1 is fine', () => {
    const r = rig(8192);
    const ds = Array.from({ length: 4096 }, (_, i) => desc(R1.gpa, R1.size, i < 2048 ? 0 : W));
    ds[4095] = desc(R1.gpa, R1.size - 1, W);
    linked(r, ds);
    const ch = popHead(r);
    assert.equal(ch.error, undefined);
    assert.equal(ch.readLen + ch.writeLen, 0xffffffff);
    r.d.writeDesc(4095, desc(R1.gpa, R1.size, W));
    assert.equal(popHead(r).error, 'CHAIN_TOO_LONG');
  });
  directed('addresses that wrap past 2^64 or 2^53, or carry bits above guest RAM', () => {
    const r = rig(8);
    const cases: [bigint, number][] = [
      [(1n << 64n) - 4096n, 8192],
      [(1n << 64n) - 1n, 1],
      [(1n << 64n) - 16n, 16],
      [(1n << 64n) - (1n << 32n) + 0x1000n, 16],
      [(1n << 63n) + 0x1000n, 16],
      [(1n << 53n) - 16n, 32],
      [1n << 53n, 16],
      [(1n << 53n) + 0x1000n, 16],
      [(1n << 52n) + 0x1000n, 16],
      [(1n << 32n) + 0x1000n, 16],
      [(1n << 32n) + BigInt(R1.gpa), 16],
    ];
    for (const [addr, len] of cases)
      for (const flags of [0, W])
        assert.equal(chainError(r, [desc(addr, len, flags)]), 'CHAIN_OUTSIDE_MEMORY', `0x${addr.toString(16)}+${len}`);
  });
  directed('buffers straddling regions, in the hole, at the end of memory', () => {
    const r = rig(8);
    const cases: [number, number, ChainErrorCode | undefined][] = [
      [R0.size - 8, 16, 'CHAIN_OUTSIDE_MEMORY'],
      [R2.gpa - 8, 16, 'CHAIN_OUTSIDE_MEMORY'],
      [R1.gpa, R1.size + 1, 'CHAIN_OUTSIDE_MEMORY'],
      [HOLE, 1, 'CHAIN_OUTSIDE_MEMORY'],
      [END - 16, 17, 'CHAIN_OUTSIDE_MEMORY'],
      [END, 1, 'CHAIN_OUTSIDE_MEMORY'],
      [R1.gpa, R1.size, undefined],
      [END - 16, 16, undefined],
      [END - 1, 1, undefined],
    ];
    for (const [addr, len, want] of cases) assert.equal(chainError(r, [desc(addr, len)]), want, `${addr}+${len}`);
  });
  directed('zero-length buffers must still point into guest memory', () => {
    const r = rig(8);
    linked(r, [desc(R1.gpa + 5, 0), desc(R2.gpa, 0, W)]);
    const ch = popHead(r);
    assert.deepEqual(
      [ch.error, ch.readable, ch.writable],
      [undefined, [{ addr: R1.gpa + 5, len: 0 }], [{ addr: R2.gpa, len: 0 }]],
    );
    for (const addr of [BigInt(HOLE), BigInt(END), (1n << 64n) - 16n, 1n << 53n])
      assert.equal(chainError(r, [desc(addr, 0, W)]), 'CHAIN_OUTSIDE_MEMORY', `0x${addr.toString(16)}`);
  });
  directed('readable after writable is CHAIN_ORDER, in the ring and in an indirect table', () => {
    const r = rig(8);
    assert.equal(chainError(r, [desc(R1.gpa, 8, W), desc(R1.gpa + 8, 8)]), 'CHAIN_ORDER');
    linked(r, [desc(R1.gpa, 8), desc(R1.gpa + 8, 8, W), desc(R1.gpa + 16, 8)], TABLE);
    assert.equal(chainError(r, [desc(TABLE, 48, I)]), 'CHAIN_ORDER');
  });
});

describe('directed: indirect tables', () => {
  const one = [desc(R2.gpa, 32)];
  directed('indirect without VIRTIO_F_INDIRECT_DESC', () => {
    const r = rig(8, { indirect: false });
    linked(r, one, TABLE);
    assert.equal(chainError(r, [desc(TABLE, 16, I)]), 'CHAIN_INDIRECT_NOT_NEGOTIATED');
  });
  directed('a nested indirect table', () => {
    const r = rig(8);
    linked(r, [desc(R2.gpa, 8), desc(TABLE + 0x100, 16, I)], TABLE);
    assert.equal(chainError(r, [desc(TABLE, 32, I)]), 'CHAIN_INDIRECT_NESTED');
  });
  directed('an indirect descriptor with NEXT', () => {
    const r = rig(8);
    linked(r, one, TABLE);
    r.d.writeDesc(1, desc(R2.gpa, 8));
    r.d.writeDesc(0, desc(TABLE, 16, I | N, 1));
    assert.equal(popHead(r).error, 'CHAIN_INDIRECT_BAD_TABLE');
  });
  directed('indirect table length 0, not a multiple of 16, or huge', () => {
    const r = rig(8);
    linked(r, one, TABLE);
    for (const len of [0, 8, 24, 0xfffffff0, 0xffffffff, 16 * (VIRTQ_MAX_SIZE + 1)])
      assert.equal(chainError(r, [desc(TABLE, len, I)]), 'CHAIN_INDIRECT_BAD_TABLE', `len ${len}`);
    linked(r, one, R1.gpa);
    const ch = popHead(r, 0);
    assert.equal(ch.error, 'CHAIN_INDIRECT_BAD_TABLE', 'desc 0 still holds the huge table');
    r.d.writeDesc(0, desc(R1.gpa, 16 * VIRTQ_MAX_SIZE, I));
    assert.deepEqual(popHead(r).readable, [{ addr: R2.gpa, len: 32 }], 'a 32768-entry table is the largest allowed');
  });
  directed('an indirect table outside memory', () => {
    const r = rig(8);
    const at: [bigint, number][] = [
      [BigInt(HOLE), 32],
      [BigInt(R0.size - 16), 32],
      [BigInt(R2.gpa - 16), 32],
      [BigInt(END - 16), 32],
      [(1n << 64n) - 16n, 16],
      [1n << 53n, 16],
      [(1n << 32n) + BigInt(TABLE), 16],
    ];
    for (const [addr, len] of at)
      assert.equal(chainError(r, [desc(addr, len, I)]), 'CHAIN_OUTSIDE_MEMORY', `0x${addr.toString(16)}`);
  });
  directed('a loop inside an indirect table ends after at most the table size', () => {
    const r = rig(8);
    r.d.writeDesc(0, desc(R2.gpa, 8, N, 1), TABLE);
    r.d.writeDesc(1, desc(R2.gpa, 8, N, 2), TABLE);
    r.d.writeDesc(2, desc(R2.gpa, 8, N, 1), TABLE);
    take();
    assert.equal(chainError(r, [desc(TABLE, 48, I)]), 'CHAIN_LOOP');
    assert.ok(bytesIn(take(), { start: TABLE, end: TABLE + 48 }) <= 48);
  });
  directed('next not below the indirect table size (though below the queue size)', () => {
    const r = rig(8);
    r.d.writeDesc(0, desc(R2.gpa, 8), TABLE);
    r.d.writeDesc(1, desc(R2.gpa, 8, N, 2), TABLE);
    r.d.writeDesc(0, desc(R2.gpa, 8, N, 1), TABLE);
    assert.equal(chainError(r, [desc(TABLE, 32, I)]), 'CHAIN_NEXT_INDEX');
  });
  directed('the WRITE flag of an indirect descriptor is ignored', () => {
    const r = rig(8);
    linked(r, [desc(R2.gpa, 8), desc(R2.gpa + 8, 4, W)], TABLE);
    r.d.writeDesc(0, desc(TABLE, 32, I | W));
    const ch = popHead(r);
    assert.deepEqual(ch, {
      head: 0,
      readable: [{ addr: R2.gpa, len: 8 }],
      writable: [{ addr: R2.gpa + 8, len: 4 }],
      readLen: 8,
      writeLen: 4,
    });
  });
});

describe('directed: the queue goes on', () => {
  directed('a valid chain after malformed ones pops exactly', () => {
    const r = rig(8);
    r.d.writeDesc(0, desc(R1.gpa, 8, N, 0)); // loop
    r.d.writeDesc(2, desc(R1.gpa, 16, N, 3));
    r.d.writeDesc(3, desc(R2.gpa, 8, W));
    r.d.writeDesc(5, desc(R1.gpa, 8, N, 9)); // next out of range
    r.d.writeDesc(6, desc(HOLE, 8)); // outside memory
    r.d.writeDesc(7, desc(R1.gpa + 64, 1));
    for (const h of [0, 2, 5, 6, 7]) r.d.addAvail(h);
    const got = [0, 1, 2, 3, 4].map(() => r.q.pop(dev));
    assert.equal(r.q.pop(dev), undefined);
    assert.deepEqual(
      got.map((c) => [c?.head, c?.error]),
      [
        [0, 'CHAIN_LOOP'],
        [2, undefined],
        [5, 'CHAIN_NEXT_INDEX'],
        [6, 'CHAIN_OUTSIDE_MEMORY'],
        [7, undefined],
      ],
    );
    assert.deepEqual(got[1], {
      head: 2,
      readable: [{ addr: R1.gpa, len: 16 }],
      writable: [{ addr: R2.gpa, len: 8 }],
      readLen: 16,
      writeLen: 8,
    });
    assert.deepEqual(got[4]?.readable, [{ addr: R1.gpa + 64, len: 1 }]);
    for (const c of got) if (c) r.q.pushUsed(dev, c.head, c.error ? 0 : c.writeLen);
    assert.deepEqual(r.d.takeUsed(), [
      { id: 0, len: 0 },
      { id: 2, len: 8 },
      { id: 5, len: 0 },
      { id: 6, len: 0 },
      { id: 7, len: 0 },
    ]);
  });
  directed('event idx: enableNotification publishes avail_event and reports late arrivals', () => {
    const r = rig(8, { eventIdx: true }, { nextAvail: 0xffff, nextUsed: 0xffff, signalledUsed: 0xffff, inFlight: 0 });
    assert.equal(r.q.enableNotification(dev), false);
    assert.equal(r.d.availEvent, 0xffff);
    r.q.disableNotification(dev);
    assert.equal(take().filter((a) => a.kind === 'write').length, 1, 'disable writes nothing with event idx');
    r.d.writeDesc(0, desc(R1.gpa, 1));
    r.d.addAvail(0);
    assert.equal(r.q.enableNotification(dev), true, 'a chain arrived while notifications were off');
    r.q.pop(dev);
    assert.equal(r.q.enableNotification(dev), false);
    assert.equal(r.d.availEvent, 0);
    r.d.setUsedEvent(0xffff);
    r.q.pushUsed(dev, 0, 0);
    assert.equal(r.q.needsNotification(dev), true, 'used idx passed used_event across the wrap');
  });
  directed('without event idx: NO_NOTIFY and NO_INTERRUPT flags', () => {
    const r = rig(8);
    r.q.disableNotification(dev);
    assert.equal(r.d.usedFlags, VIRTQ_USED_F_NO_NOTIFY);
    assert.equal(r.q.enableNotification(dev), false);
    assert.equal(r.d.usedFlags, 0);
    r.d.writeDesc(0, desc(R1.gpa, 1));
    r.d.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    popHead(r);
    assert.equal(r.q.needsNotification(dev), false);
    r.d.setAvailFlags(0);
    popHead(r);
    assert.equal(r.q.needsNotification(dev), true);
    assert.equal(r.q.needsNotification(dev), false, 'nothing new');
  });
});
