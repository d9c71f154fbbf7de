/**
 * virtio-console and virtio-balloon through the MMIO transport, driven by a mock guest driver:
 * console output and input with back-pressure (the input fd is watched only while the guest has
 * receive buffers), balloon inflate/deflate with out-of-RAM page numbers refused, the host's target
 * reaching the driver as a config interrupt, and statistics on request.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BALLOON_PAGE, BalloonControl, VirtioBalloon } from '../src/devices/virtio/balloon.js';
import { type ConsoleBackend, VirtioConsole } from '../src/devices/virtio/console.js';
import { INTERRUPT_CONFIG_CHANGE, type Poller } from '../src/devices/virtio/device.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

class FakePoller implements Poller {
  readonly watched = new Map<number, (events: number) => void>();
  add(fd: number, _events: number, handler: (events: number) => void): void {
    assert.ok(!this.watched.has(fd), 'an fd is never watched twice');
    this.watched.set(fd, handler);
  }
  modify(): void {}
  remove(fd: number): void {
    this.watched.delete(fd);
  }
  fire(fd: number): void {
    this.watched.get(fd)?.(1);
  }
}

class FakeConsole implements ConsoleBackend {
  readonly inputFd = 42;
  out = '';
  input: Buffer[] = [];
  write(bytes: Uint8Array): void {
    this.out += Buffer.from(bytes).toString('latin1');
  }
  read(buf: Uint8Array): number {
    const next = this.input.shift();
    if (next === undefined) return 0;
    const n = Math.min(buf.length, next.length);
    buf.set(next.subarray(0, n));
    if (n < next.length) this.input.unshift(next.subarray(n));
    return n;
  }
}

test('virtio-console: output reaches the host; input waits for guest buffers and is never lost', () => {
  const backend = new FakeConsole();
  const poller = new FakePoller();
  const dev = new VirtioConsole(backend);
  dev.attach(poller);
  const drv = new MockMmioDriver(dev);
  try {
    const [rx, tx] = drv.probe(8) as [MockSplitQueue, MockSplitQueue];
    assert.equal(poller.watched.size, 0, 'no receive buffers yet: the input fd is not watched');
    const msg = Buffer.from('hello from hvc0\n');
    const a = drv.alloc(msg.length);
    drv.mem.write(a, msg);
    tx.addChain([{ addr: a, len: msg.length, write: false }]);
    drv.notify(1);
    assert.equal(backend.out, 'hello from hvc0\n');
    // Two 4-byte receive buffers; 10 bytes of input: 8 delivered, 2 kept until the guest adds more.
    const bufs = [drv.alloc(4), drv.alloc(4), drv.alloc(4)];
    rx.addChain([{ addr: bufs[0] as number, len: 4, write: true }]);
    rx.addChain([{ addr: bufs[1] as number, len: 4, write: true }]);
    drv.notify(0);
    assert.ok(poller.watched.has(42), 'buffers posted: input is watched');
    backend.input.push(Buffer.from('0123456789'));
    poller.fire(42);
    const used = rx.takeUsed();
    assert.deepEqual(
      used.map((u) => u.len),
      [4, 4],
    );
    assert.equal(
      drv.mem.read(bufs[0] as number, 4).toString() + drv.mem.read(bufs[1] as number, 4).toString(),
      '01234567',
    );
    assert.equal(poller.watched.size, 0, 'no buffers left: input no longer watched (back-pressure)');
    rx.addChain([{ addr: bufs[2] as number, len: 4, write: true }]);
    drv.notify(0);
    assert.deepEqual(
      rx.takeUsed().map((u) => u.len),
      [2],
    );
    assert.equal(drv.mem.read(bufs[2] as number, 2).toString(), '89', 'the kept bytes arrive first');
    assert.equal(dev.counters.rxBytes, 10);
  } finally {
    drv.release();
  }
});

test('virtio-balloon: inflate frees guest pages (never outside RAM), deflate, target as a config interrupt, stats', () => {
  const control = new BalloonControl();
  control.setTargetMiB(4);
  const released: [number, number][] = [];
  const dev = new VirtioBalloon(control, (gpa, len) => released.push([gpa, len]), { deflateOnOom: true, stats: true });
  const drv = new MockMmioDriver(dev);
  try {
    assert.equal(Buffer.from(drv.readConfig(0, 4)).readUInt32LE(0), 1024, 'num_pages: 4 MiB of 4 KiB pages');
    const [inflate, deflate, stats] = drv.probe(16) as [MockSplitQueue, MockSplitQueue, MockSplitQueue];
    // Inflate three pages, one of them far outside guest RAM (4 MiB here): that one is refused.
    const pfns = Buffer.alloc(12);
    pfns.writeUInt32LE(0x100, 0);
    pfns.writeUInt32LE(0x101, 4);
    pfns.writeUInt32LE(0xfffff, 8);
    const a = drv.alloc(12);
    drv.mem.write(a, pfns);
    inflate.addChain([{ addr: a, len: 12, write: false }]);
    drv.notify(0);
    assert.equal(inflate.takeUsed().length, 1);
    assert.deepEqual(released, [
      [0x100 * BALLOON_PAGE, BALLOON_PAGE],
      [0x101 * BALLOON_PAGE, BALLOON_PAGE],
    ]);
    assert.equal(dev.counters.invalidPages, 1);
    deflate.addChain([{ addr: a, len: 4, write: false }]);
    drv.notify(1);
    assert.equal(dev.counters.deflatedPages, 1);
    // The driver writes `actual`; the host sees it.
    const w = new Uint8Array(4);
    new DataView(w.buffer).setUint32(0, 2, true);
    drv.transport.write(R.CONFIG + 4, w);
    assert.equal(control.actualMiB(), (2 * BALLOON_PAGE) / (1 << 20));
    // A new target: the driver gets a config interrupt and reads it.
    drv.write(R.INTERRUPT_ACK, 3);
    control.setTargetMiB(8);
    drv.side.hostWake();
    assert.ok(drv.read(R.INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE);
    assert.equal(Buffer.from(drv.readConfig(0, 4)).readUInt32LE(0), 2048);
    // Stats: the driver's first report, then the host asks again and the buffer comes back.
    const st = Buffer.alloc(20);
    st.writeUInt16LE(4, 0); // free_memory
    st.writeBigUInt64LE(123456789n, 2);
    st.writeUInt16LE(5, 10); // total_memory
    st.writeBigUInt64LE(4n << 20n, 12);
    const sa = drv.alloc(20);
    drv.mem.write(sa, st);
    stats.addChain([{ addr: sa, len: 20, write: false }]);
    drv.notify(2);
    assert.deepEqual(control.latestStats(), { free_memory: 123456789, total_memory: 4 << 20 });
    assert.equal(stats.takeUsed().length, 0, 'the device keeps the stats buffer');
    control.requestStats();
    drv.side.hostWake();
    assert.equal(stats.takeUsed().length, 1, 'asking for stats returns the buffer to the driver');
  } finally {
    drv.release();
  }
});
