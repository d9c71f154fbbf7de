/**
 * virtio-net driven by a mock guest driver through the virtio-mmio transport, over real guest memory
 * and a fake backend (a TAP stand-in that records what it is given): TX with the header split across
 * buffers, RX with and without MRG_RXBUF (num_buffers), receiving that waits while the guest has too few
 * buffers (no backend reads, the fd unwatched, nothing dropped), backend errors dropped and counted,
 * malformed chains completed with length 0, a broken ring (DEVICE_NEEDS_RESET, backend fd released).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { parseMac } from '../src/config/index.js';
import {
  bit,
  type DeviceTimer,
  POLL_ERR,
  STATUS,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
} from '../src/devices/virtio/device.js';
import {
  NET_MAX_FRAME,
  NET_OFFLOAD,
  offloadsFor,
  VIRTIO_NET_F,
  VIRTIO_NET_HDR_LEN,
  VirtioNet,
} from '../src/devices/virtio/net.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../src/devices/virtio/queue.js';
import { ALL_OFFLOADS, FakePoller, FakeTap } from './support/fake-net.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const HDR = VIRTIO_NET_HDR_LEN;

interface Rig {
  tap: FakeTap;
  poller: FakePoller;
  dev: VirtioNet;
  drv: MockMmioDriver;
  rx: MockSplitQueue;
  tx: MockSplitQueue;
  /** Guest address of each posted rx chain's buffer, by head. */
  rxBufs: Map<number, number>;
}

const F = VIRTIO_NET_F;
const without = (f: bigint, ...bits: bigint[]): bigint => bits.reduce((a, b) => a & ~bit(b), f);

function rig(
  opts: { offloads?: number; features?: (offered: bigint) => bigint; trackDirty?: boolean; tap?: FakeTap } = {},
): Rig {
  const tap = opts.tap ?? new FakeTap(opts.offloads);
  const poller = new FakePoller();
  const dev = new VirtioNet(tap, { mac: MAC });
  dev.attach(poller);
  const drv = new MockMmioDriver(dev, 16 << 20, opts.trackDirty ?? false);
  const offered = drv.deviceFeatures();
  const [rx, tx] = drv.probe(256, opts.features ? opts.features(offered) : offered) as [MockSplitQueue, MockSplitQueue];
  return { tap, poller, dev, drv, rx, tx, rxBufs: new Map() };
}

/** A frame as the TAP gives it: a header with recognisable fields (num_buffers garbage) and a payload. */
function frame(payload: number, seed = 1): Uint8Array {
  const f = new Uint8Array(HDR + payload);
  f.set([1, 0, 0x22, 0, 0x33, 0, 0x44, 0, 0x55, 0, 0xaa, 0xbb]);
  for (let i = HDR; i < f.length; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}

function postRx(r: Rig, count: number, len: number, notify = true): void {
  for (let i = 0; i < count; i++) {
    const a = r.drv.alloc(len);
    const head = r.rx.addChain([{ addr: a, len, write: true }]);
    assert.notEqual(head, undefined, 'free rx descriptors');
    r.rxBufs.set(head as number, a);
  }
  if (notify) r.drv.notify(0);
}

/** The bytes the device wrote into used rx chains, concatenated in order. */
function gather(r: Rig, used: { id: number; len: number }[]): Buffer {
  return Buffer.concat(used.map((u) => r.drv.mem.read(r.rxBufs.get(u.id) as number, u.len)));
}

function sendTx(r: Rig, parts: Uint8Array[], indirectAt?: number): void {
  const bufs = parts.map((p) => {
    const a = r.drv.alloc(Math.max(1, p.length));
    r.drv.mem.write(a, p);
    return { addr: a, len: p.length, write: false };
  });
  assert.notEqual(r.tx.addChain(bufs, indirectAt), undefined);
  r.drv.notify(1);
}

const needsReset = (r: Rig): boolean => (r.drv.status & STATUS.DEVICE_NEEDS_RESET) !== 0;

test('probe: device id 1, features follow the TAP, config space holds MAC, LINK_UP and one queue pair', () => {
  const r = rig();
  try {
    assert.equal(r.drv.read(R.DEVICE_ID), 1);
    const f = r.drv.deviceFeatures();
    for (const b of [
      F.MAC,
      F.STATUS,
      F.MRG_RXBUF,
      F.CSUM,
      F.GUEST_CSUM,
      F.HOST_TSO4,
      F.HOST_TSO6,
      F.HOST_ECN,
      F.HOST_UFO,
      F.GUEST_TSO4,
      F.GUEST_TSO6,
      F.GUEST_ECN,
      F.GUEST_UFO,
      VIRTIO_F_RING_EVENT_IDX,
      VIRTIO_F_RING_INDIRECT_DESC,
    ])
      assert.ok(f & bit(b), `feature ${b} offered`);
    assert.equal(f & bit(F.MTU), 0n, 'no MTU unless configured');
    const cfg = Buffer.from(r.drv.readConfig(0, 10));
    assert.deepEqual([...cfg.subarray(0, 6)], [...MAC]);
    assert.equal(cfg.readUInt16LE(6), 1, 'status: VIRTIO_NET_S_LINK_UP');
    assert.equal(cfg.readUInt16LE(8), 1, 'max_virtqueue_pairs');
    assert.equal(r.drv.read(R.QUEUE_NUM_MAX), 256);
  } finally {
    r.drv.release();
  }
  // A TAP that takes no offloads: no GUEST_* feature; checksum only: GUEST_CSUM alone.
  const none = new VirtioNet(new FakeTap(0), { mac: MAC });
  for (const b of [F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN, F.GUEST_UFO, F.HOST_UFO])
    assert.equal(none.features & bit(b), 0n, `feature ${b} not offered without offloads`);
  const csum = new VirtioNet(new FakeTap(NET_OFFLOAD.CSUM), { mac: MAC, mtu: 9000 });
  assert.ok(csum.features & bit(F.GUEST_CSUM));
  assert.equal(csum.features & bit(F.GUEST_TSO4), 0n);
  assert.ok(csum.features & bit(F.MTU));
  assert.equal(Buffer.from(csum.configSpace).readUInt16LE(10), 9000);
  // Bad configuration: a clear error, never a device.
  assert.throws(() => new VirtioNet(new FakeTap(), { mac: Uint8Array.of(1, 2, 3, 4, 5, 6) }), VireoError);
  assert.throws(() => new VirtioNet(new FakeTap(), { mac: Uint8Array.of(2, 2, 3, 4, 5) }), VireoError);
  assert.throws(() => new VirtioNet(new FakeTap(), { mac: MAC, mtu: 20 }), VireoError);
  assert.deepEqual(parseMac('52:54:00:AB:cd:ef'), Uint8Array.of(0x52, 0x54, 0, 0xab, 0xcd, 0xef));
  assert.equal(parseMac('01:00:5e:00:00:01'), undefined, 'multicast');
  assert.equal(parseMac('52:54:00:ab:cd'), undefined);
});

test('activation sets the TAP offloads from the negotiated GUEST_* features; reset clears them', () => {
  const all = rig();
  try {
    assert.equal(all.tap.offloadCalls.at(-1), ALL_OFFLOADS);
    all.drv.write(R.STATUS, 0);
    assert.equal(all.tap.offloadCalls.at(-1), 0, 'reset: no offloads until the next activation');
  } finally {
    all.drv.release();
  }
  const some = rig({ features: (f) => without(f, F.GUEST_TSO6, F.GUEST_UFO, F.GUEST_ECN) });
  try {
    assert.equal(some.tap.offloadCalls.at(-1), NET_OFFLOAD.CSUM | NET_OFFLOAD.TSO4);
  } finally {
    some.drv.release();
  }
  // TSO without checksum offload breaks the spec's rule: the host gets no offload at all.
  const bad = rig({ features: (f) => without(f, F.GUEST_CSUM) });
  try {
    assert.equal(bad.tap.offloadCalls.at(-1), 0);
  } finally {
    bad.drv.release();
  }
  assert.equal(offloadsFor(bit(F.GUEST_CSUM) | bit(F.GUEST_ECN), ALL_OFFLOADS), NET_OFFLOAD.CSUM, 'ECN needs TSO');
  assert.equal(offloadsFor(bit(F.GUEST_CSUM) | bit(F.GUEST_TSO4), NET_OFFLOAD.CSUM), NET_OFFLOAD.CSUM);
});

test('TX: header split over buffers, direct and indirect chains, written whole to the TAP', () => {
  const r = rig();
  try {
    const f = frame(1000, 3);
    const before = r.drv.interrupts;
    sendTx(r, [f.subarray(0, 5), f.subarray(5, 112), f.subarray(112)]);
    assert.equal(r.tap.sent.length, 1);
    assert.ok(r.tap.sent[0]?.equals(f), 'the frame, header included, as the guest wrote it');
    const used = r.tx.takeUsed();
    assert.equal(used.length, 1);
    assert.equal(used[0]?.len, 0, 'TX buffers are returned with length 0');
    assert.ok(r.drv.interrupts > before, 'the driver is told');
    const g = frame(60, 4);
    sendTx(r, [g.subarray(0, HDR), g.subarray(HDR)], r.drv.alloc(64));
    assert.ok(r.tap.sent[1]?.equals(g), 'indirect chain');
    assert.deepEqual(
      { txPackets: r.dev.counters.txPackets, txBytes: r.dev.counters.txBytes },
      { txPackets: 2, txBytes: 1060 },
    );
  } finally {
    r.drv.release();
  }
});

test('TX: malformed chains, oversized frames and TAP errors are completed, counted, and the queue goes on', () => {
  const r = rig();
  try {
    sendTx(r, [new Uint8Array(8)]); // shorter than the header
    const w = r.drv.alloc(64);
    r.tx.addChain([
      { addr: r.drv.alloc(HDR), len: HDR, write: false },
      { addr: w, len: 64, write: true }, // TX buffers are device-readable only
    ]);
    r.drv.notify(1);
    // A chain whose `next` points outside the table.
    const d = r.drv.alloc(HDR + 10);
    r.tx.writeDesc(200, { addr: BigInt(d), len: HDR + 10, flags: VIRTQ_DESC_F_NEXT, next: 999 });
    r.tx.addAvail(200);
    r.drv.notify(1);
    assert.equal(r.dev.counters.malformed, 3);
    // Larger than any frame: dropped.
    sendTx(r, [new Uint8Array(NET_MAX_FRAME + 1)]);
    assert.equal(r.dev.counters.txDropped, 1);
    // The TAP fails once (EIO): that frame is dropped, the next one goes out.
    r.tap.writeErrors = 1;
    sendTx(r, [frame(100, 1)]);
    sendTx(r, [frame(100, 2)]);
    assert.equal(r.dev.counters.txDropped, 2);
    assert.equal(r.dev.counters.tapErrors, 1);
    assert.equal(r.tap.sent.length, 1);
    assert.ok(r.tap.sent[0]?.equals(frame(100, 2)));
    const used = r.tx.takeUsed();
    assert.equal(used.length, 6, 'every chain completed');
    assert.ok(
      used.every((u) => u.len === 0),
      'with length 0',
    );
    assert.equal(needsReset(r), false, 'the device keeps running');
  } finally {
    r.drv.release();
  }
});

test('RX without MRG_RXBUF: one chain per frame, num_buffers 1; a frame larger than the buffer is dropped', () => {
  const r = rig({ features: (f) => without(f, F.MRG_RXBUF) });
  try {
    const small = frame(60, 1);
    const full = frame(1514, 2);
    r.tap.inbox.push(small, full);
    postRx(r, 4, HDR + 1514);
    const used = r.rx.takeUsed();
    assert.deepEqual(
      used.map((u) => u.len),
      [small.length, full.length],
    );
    for (const [u, f] of [
      [used[0], small],
      [used[1], full],
    ] as const) {
      const got = gather(r, [u as { id: number; len: number }]);
      assert.ok(got.subarray(0, 10).equals(f.subarray(0, 10)), 'the header as the TAP gave it');
      assert.equal(got.readUInt16LE(10), 1, 'num_buffers');
      assert.ok(got.subarray(HDR).equals(f.subarray(HDR)), 'the payload');
    }
    assert.ok(r.poller.watching(r.tap.fd), 'buffers left: the TAP is watched');
    // Too large for the 1526-byte buffer: dropped, the buffer serves the next frame.
    r.tap.inbox.push(frame(3000, 3), frame(100, 4));
    r.poller.fire(r.tap.fd);
    const next = r.rx.takeUsed();
    assert.equal(next.length, 1);
    assert.ok(gather(r, next).subarray(HDR).equals(frame(100, 4).subarray(HDR)));
    assert.deepEqual(
      { rxPackets: r.dev.counters.rxPackets, rxDropped: r.dev.counters.rxDropped, rxBytes: r.dev.counters.rxBytes },
      { rxPackets: 3, rxDropped: 1, rxBytes: 60 + 1514 + 100 },
    );
  } finally {
    r.drv.release();
  }
});

test('RX with MRG_RXBUF: a frame spreads over several chains and num_buffers counts them', () => {
  const r = rig();
  try {
    postRx(r, 64, 1536);
    const mid = frame(4000, 5);
    const tiny = frame(42, 6);
    const max = frame(NET_MAX_FRAME - HDR, 7);
    r.tap.inbox.push(mid, tiny, max);
    r.poller.fire(r.tap.fd);
    const used = r.rx.takeUsed();
    assert.deepEqual(
      used.slice(0, 4).map((u) => u.len),
      [1536, 1536, mid.length - 3072, tiny.length],
    );
    const a = gather(r, used.slice(0, 3));
    assert.equal(a.readUInt16LE(10), 3, 'num_buffers in the first chain');
    a.writeUInt16LE(0xbbaa, 10);
    assert.ok(a.equals(mid), 'the frame across three chains');
    const b = gather(r, used.slice(3, 4));
    assert.equal(b.readUInt16LE(10), 1);
    const big = used.slice(4);
    assert.equal(big.length, Math.ceil(max.length / 1536), 'a 64 KiB frame takes 43 chains');
    const c = gather(r, big);
    assert.equal(c.readUInt16LE(10), big.length);
    assert.ok(c.subarray(HDR).equals(max.subarray(HDR)));
    assert.equal(r.dev.counters.rxPackets, 3);
    assert.equal(r.dev.counters.rxDropped, 0);
  } finally {
    r.drv.release();
  }
});

for (const eventIdx of [true, false]) {
  test(`RX waits while the guest has too few buffers: no read, TAP unwatched, nothing dropped (event idx ${eventIdx})`, () => {
    const r = rig({ features: (f) => (eventIdx ? f : without(f, VIRTIO_F_RING_EVENT_IDX)) });
    try {
      r.tap.inbox.push(frame(100, 1), frame(200, 2));
      assert.equal(r.tap.reads, 0, 'no buffers: the TAP is not read');
      assert.equal(r.poller.watching(r.tap.fd), false, 'nor watched (no busy loop)');
      assert.equal(r.dev.counters.rxNoBuffers, 1);
      // With GSO offloads a frame can be 64 KiB: 10 buffers of 1536 bytes are not enough yet.
      postRx(r, 10, 1536);
      assert.equal(r.tap.reads, 0);
      assert.equal(r.poller.watching(r.tap.fd), false);
      if (eventIdx) assert.equal(r.rx.availEvent, 10, 'notifications re-armed at the next buffer');
      else assert.equal(r.rx.usedFlags, 0, 'notifications enabled');
      postRx(r, 40, 1536);
      const used = r.rx.takeUsed();
      assert.deepEqual(
        used.map((u) => u.len),
        [HDR + 100, HDR + 200],
      );
      assert.ok(r.poller.watching(r.tap.fd), 'room again: the TAP is watched');
      assert.equal(r.dev.counters.rxDropped, 0);
    } finally {
      r.drv.release();
    }
  });
}

test('RX without guest GSO needs only room for one MTU-sized frame', () => {
  const r = rig({ features: (f) => without(f, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_UFO) });
  try {
    r.tap.inbox.push(frame(1514, 1));
    postRx(r, 1, 1536);
    assert.deepEqual(
      r.rx.takeUsed().map((u) => u.len),
      [HDR + 1514],
    );
  } finally {
    r.drv.release();
  }
});

test('RX: TAP read errors drop the frame and are counted; a run of them pauses reading until the guest acts', () => {
  const r = rig();
  try {
    postRx(r, 64, 1536);
    r.tap.readErrors = 1;
    r.tap.inbox.push(frame(100, 1));
    r.poller.fire(r.tap.fd);
    assert.deepEqual(
      r.rx.takeUsed().map((u) => u.len),
      [HDR + 100],
    );
    assert.equal(r.dev.counters.rxDropped, 1);
    assert.equal(r.dev.counters.tapErrors, 1);
    // A TAP that fails every read: the device gives up after a bounded run instead of spinning.
    r.tap.readErrors = 1000;
    r.poller.fire(r.tap.fd);
    assert.ok(r.tap.reads < 40, `${r.tap.reads} reads`);
    assert.equal(r.poller.watching(r.tap.fd), false);
    // The guest sends something: receiving resumes.
    r.tap.readErrors = 0;
    r.tap.inbox.push(frame(50, 2));
    sendTx(r, [frame(10, 3)]);
    assert.deepEqual(
      r.rx.takeUsed().map((u) => u.len),
      [HDR + 50],
    );
    assert.ok(r.poller.watching(r.tap.fd));
    // An error or hang-up without data (the interface went away): unwatched, back on the next notify.
    r.poller.fire(r.tap.fd, POLL_ERR);
    assert.equal(r.poller.watching(r.tap.fd), false);
    r.drv.notify(0);
    assert.ok(r.poller.watching(r.tap.fd));
    assert.equal(needsReset(r), false);
  } finally {
    r.drv.release();
  }
});

test('RX: malformed chains are completed with length 0 and the next good chain gets the frame', () => {
  const r = rig({ features: (f) => without(f, F.MRG_RXBUF) });
  try {
    r.rx.addChain([{ addr: r.drv.alloc(100), len: 100, write: false }]); // device-readable
    r.rx.addChain([{ addr: r.drv.alloc(8), len: 8, write: true }]); // shorter than the header
    r.rx.writeDesc(250, { addr: BigInt(r.drv.alloc(64)), len: 64, flags: VIRTQ_DESC_F_WRITE | 1, next: 4000 });
    r.rx.addAvail(250);
    r.tap.inbox.push(frame(30, 1));
    postRx(r, 1, 1536);
    const used = r.rx.takeUsed();
    assert.deepEqual(
      used.map((u) => u.len),
      [0, 0, 0, HDR + 30],
    );
    assert.equal(r.dev.counters.malformed, 3);
    assert.equal(r.dev.counters.rxPackets, 1);
    assert.equal(needsReset(r), false);
  } finally {
    r.drv.release();
  }
});

test('a broken ring sets DEVICE_NEEDS_RESET and releases the TAP watch (no spinning on a readable TAP)', () => {
  const r = rig();
  try {
    postRx(r, 64, 1536);
    assert.ok(r.poller.watching(r.tap.fd));
    r.tx.availIdx = r.tx.availIdx + 300; // more than the queue size ahead
    r.drv.notify(1);
    assert.ok(needsReset(r), 'DEVICE_NEEDS_RESET');
    assert.equal(r.poller.watching(r.tap.fd), false);
    const reads = r.tap.reads;
    r.tap.inbox.push(frame(10, 1));
    r.poller.fire(r.tap.fd);
    r.drv.notify(0);
    assert.equal(r.tap.reads, reads, 'a failed device reads nothing');
    // Reset and a new probe: it works again.
    r.drv.write(R.STATUS, 0);
    r.drv.probe(256);
    const rx = r.drv.queues[0] as MockSplitQueue;
    const a = r.drv.alloc(1536 * 64);
    for (let i = 0; i < 64; i++) rx.addChain([{ addr: a + i * 1536, len: 1536, write: true }]);
    r.drv.notify(0);
    assert.deepEqual(
      rx.takeUsed().map((u) => u.len),
      [HDR + 10],
    );
  } finally {
    r.drv.release();
  }
});

test('dirty tracking: an rx buffer held across a snapshot is marked again when a frame lands in it', () => {
  const r = rig({ trackDirty: true });
  try {
    const PAGE = 4096;
    const addrs: number[] = [];
    for (let i = 0; i < 20; i++) {
      // Enough room held for the largest (GSO) frame, so the device reads one.
      const a = r.drv.alloc(PAGE, PAGE);
      addrs.push(a);
      const head = r.rx.addChain([{ addr: a, len: PAGE, write: true }]);
      r.rxBufs.set(head as number, a);
    }
    r.drv.notify(0); // the device takes (and holds) the buffers: no frame yet
    assert.deepEqual(r.rx.takeUsed(), []);
    r.drv.mem.takeDirty((reg) => new Uint8Array(Math.ceil(reg.size / PAGE / 8))); // a snapshot clears the log
    r.tap.inbox.push(frame(100, 3));
    r.poller.fire(r.tap.fd);
    const used = r.rx.takeUsed();
    assert.equal(used.length, 1);
    const page = (addrs[0] as number) / PAGE;
    const dirty = r.drv.mem.takeDirty((reg) => new Uint8Array(Math.ceil(reg.size / PAGE / 8)))[0] as Uint8Array;
    assert.equal(dirty[page], 1, 'the page the frame was written to is dirty for the next diff snapshot');
    assert.equal(dirty[page + 1], 0, 'the other held buffers were not written');
  } finally {
    r.drv.release();
  }
});

/**
 * A backend that gathers frames as passt's does: it takes `room` more frames, then answers 0 (no room)
 * until given more; it reports room through its fd, and whether the device wants frames.
 */
class FakeGatherer extends FakeTap {
  room = Number.POSITIVE_INFINITY;
  flushes = 0;
  services = 0;
  wanted: boolean[] = [];
  override write(all: readonly Uint8Array[], count: number): number {
    if (this.room <= 0) return 0;
    this.room--;
    return super.write(all, count);
  }
  flush(): void {
    this.flushes++;
  }
  sending(): boolean {
    return this.room <= 0;
  }
  wantFrames(on: boolean): void {
    this.wanted.push(on);
  }
  service(): void {
    this.services++;
  }
}

test('TX back-pressure: a backend with no room holds the frame in the ring (none lost, order kept) until its fd wakes the device', () => {
  const gather = new FakeGatherer();
  const r = rig({ tap: gather });
  try {
    gather.room = 2;
    const frames = [1, 2, 3, 4, 5].map((i) => frame(200, i));
    for (const f of frames) {
      const a = r.drv.alloc(f.length);
      r.drv.mem.write(a, f);
      assert.notEqual(r.tx.addChain([{ addr: a, len: f.length, write: false }]), undefined);
    }
    r.drv.notify(1);
    assert.equal(gather.sent.length, 2, 'two frames taken');
    assert.equal(r.tx.takeUsed().length, 2, 'and only those completed: the third waits in the ring');
    assert.equal(r.dev.counters.txDropped, 0, 'nothing dropped');
    assert.equal(r.dev.counters.txBackpressure, 1);
    assert.deepEqual(r.dev.heldChains(), [0, 1], 'the held chain is the latest tx pop: a snapshot gives it back');
    assert.ok(r.poller.watching(gather.fd), "the backend's fd is watched for room");
    // A kick meanwhile changes nothing: still no room.
    r.drv.notify(1);
    assert.equal(gather.sent.length, 2);
    // Room: the fd wakes the device, the held frame goes first, then the rest of the ring, in order.
    gather.room = 10;
    r.poller.fire(gather.fd);
    assert.ok(gather.services > 0, "the backend's own work ran on the wake-up");
    assert.equal(gather.sent.length, 5);
    for (const [i, f] of frames.entries()) assert.ok(gather.sent[i]?.equals(f), `frame ${i + 1} in order`);
    assert.equal(r.tx.takeUsed().length, 3, 'the other three completed');
    assert.deepEqual(r.dev.heldChains(), [0, 0]);
    assert.equal(r.dev.counters.txHeldWakes, 1, 'one wake-up while held: the one that found room');
    assert.ok(r.dev.counters.txHeldMaxMs >= 0 && r.dev.counters.txHeldMs === r.dev.counters.txHeldMaxMs);
    assert.equal(r.dev.counters.txPackets, 5);
    // Receiving with no guest buffers parks input (wantFrames(false)) but keeps the fd watched for room.
    gather.inbox.push(frame(100, 9));
    r.poller.fire(gather.fd);
    assert.equal(gather.wanted.at(-1), false, 'input not wanted while the guest has no buffers');
    assert.ok(r.poller.watching(gather.fd), 'the fd still watched (room to send)');
    postRx(r, 64, 1536);
    assert.equal(gather.wanted.at(-1), true, 'wanted again once the guest posts buffers');
    assert.deepEqual(
      r.rx.takeUsed().map((u) => u.len),
      [HDR + 100],
    );
    // A reset forgets a held frame.
    gather.room = 0;
    sendTx(r, [frame(60, 7)]);
    assert.equal(r.dev.heldChains()[1], 1);
    r.dev.reset();
    assert.deepEqual(r.dev.heldChains(), [0, 0]);
    assert.equal(needsReset(r), false);
  } finally {
    r.drv.release();
  }
});

/** A poller with one timer the test fires by hand (rate limiters' waits). */
class TimedPoller extends FakePoller {
  armed = 0;
  fireTimer: (() => void) | undefined;
  timer(handler: () => void): DeviceTimer {
    this.fireTimer = handler;
    return {
      set: (ms) => {
        this.armed = ms;
      },
      close: () => {},
    };
  }
}

test('rate limiters: tx frames beyond the limit wait in the ring, rx frames wait in the backend; the timer and a new limiter let them go, none is dropped', () => {
  const tap = new FakeTap();
  const poller = new TimedPoller();
  // Two 1000-byte frames per minute each way.
  const limit = { bandwidth: { size: 2000, refillTimeMs: 60_000 } };
  const dev = new VirtioNet(tap, { mac: MAC, txRateLimiter: limit, rxRateLimiter: limit });
  dev.attach(poller);
  const drv = new MockMmioDriver(dev, 16 << 20);
  try {
    const [rx, tx] = drv.probe(256, drv.deviceFeatures()) as [MockSplitQueue, MockSplitQueue];
    const r: Rig = { tap, poller, dev, drv, rx, tx, rxBufs: new Map() };
    for (let i = 0; i < 3; i++) {
      const f = frame(1000, i);
      const a = drv.alloc(f.length);
      drv.mem.write(a, f);
      tx.addChain([{ addr: a, len: f.length, write: false }]);
    }
    drv.notify(1);
    assert.equal(tap.sent.length, 2, 'two frames fit the tx bucket');
    assert.equal(tx.takeUsed().length, 2);
    assert.equal(dev.counters.txRateLimited, 1);
    assert.equal(dev.counters.txDropped, 0);
    assert.deepEqual(dev.heldChains(), [0, 1], 'the held frame is the latest tx pop');
    assert.ok(poller.armed > 0, 'the timer is set');
    poller.fireTimer?.();
    assert.equal(tap.sent.length, 2, 'too early: still held');
    // rx: three frames waiting on the TAP; the bucket lets two through, then receiving waits (no reads).
    for (let i = 0; i < 3; i++) tap.inbox.push(frame(1000, 10 + i));
    postRx(r, 64, 1536);
    assert.equal(rx.takeUsed().length, 2, 'two frames received');
    assert.equal(tap.inbox.length, 1, 'the third waits in the backend, not dropped');
    assert.equal(dev.counters.rxRateLimited > 0, true);
    assert.equal(poller.watching(tap.fd), false, 'the TAP is not watched meanwhile (no busy loop)');
    // Lifted at run time: both directions go on.
    dev.setRateLimiters(undefined, undefined);
    assert.equal(tap.sent.length, 3, 'the held frame went');
    assert.equal(tx.takeUsed().length, 1);
    assert.equal(rx.takeUsed().length, 1, 'the waiting frame was received');
    assert.equal(tap.inbox.length, 0);
    assert.equal(dev.counters.rxDropped + dev.counters.txDropped, 0);
  } finally {
    drv.release();
  }
});
