/**
 * Firecracker's token buckets (src/devices/virtio/rate-limiter.ts) on a clock the test moves, and a
 * virtio-blk device behind one: requests beyond the limit wait in the ring (held, counted, never
 * dropped), its timer brings them back, a snapshot gives the held one back to the ring and keeps the
 * buckets, and a limiter changed at run time takes over.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { validateRateLimiter } from '../src/config/index.js';
import { type BlockBackend, VIRTIO_BLK_S, VIRTIO_BLK_T, VirtioBlock } from '../src/devices/virtio/block.js';
import { restoreBlockState } from '../src/devices/virtio/block-state.js';
import type { DeviceTimer, Poller } from '../src/devices/virtio/device.js';
import { bucketProblem, RateLimiter, TokenBucket } from '../src/devices/virtio/rate-limiter.js';
import { VirtioRng } from '../src/devices/virtio/rng.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver } from './support/virtio-driver.js';

test('a bucket: full at the start, refilled at size per refill time, burst first, a request larger than it leaves a debt', () => {
  const b = new TokenBucket({ size: 1000, refillTimeMs: 100, oneTimeBurst: 500 }, 0);
  assert.ok(b.take(1500, 0), 'burst and budget together');
  assert.equal(b.take(1, 0), false, 'empty');
  assert.equal(b.waitMs(100, 0), 10, '100 tokens come in 10 ms');
  assert.equal(b.take(100, 9), false);
  assert.ok(b.take(100, 10));
  assert.ok(b.take(900, 100), 'refilled to the size by now');
  assert.equal(b.take(1, 100), false);
  // Never more than the size, however long it waited.
  assert.ok(b.take(1000, 10_000));
  assert.equal(b.take(1, 10_000), false);
  // 2500 tokens: allowed once the bucket is full, then 1500 in debt.
  assert.equal(b.waitMs(2500, 10_000), 100, 'the wait is for a full bucket');
  assert.ok(b.take(2500, 10_100));
  assert.equal(b.waitMs(1, 10_100), 151, 'the debt is paid before the next token');
  assert.deepEqual(b.state(), { budget: -1500, burst: 0 });
  // giveBack and a state restored (clipped to the config).
  const c = new TokenBucket({ size: 10, refillTimeMs: 1000 }, 0, { budget: 50, burst: 7 });
  assert.deepEqual(c.state(), { budget: 10, burst: 0 });
});

test('a limiter: both buckets or neither; size 0 limits nothing; problems are one line', () => {
  const l = new RateLimiter({ bandwidth: { size: 4096, refillTimeMs: 1000 }, ops: { size: 2, refillTimeMs: 1000 } }, 0);
  assert.ok(l.take(1000, 0));
  assert.ok(l.take(1000, 0));
  assert.equal(l.take(1000, 0), false, 'no op left');
  assert.deepEqual(l.state().bandwidth, { budget: 2096, burst: 0 }, 'the bytes of the refused one given back');
  assert.equal(l.waitMs(1000, 0), 500, 'the next op in half a second');
  assert.equal(new RateLimiter({ bandwidth: { size: 0, refillTimeMs: 0 } }, 0).limits, false);
  assert.match(bucketProblem({ size: 10, refillTimeMs: 0 }, 'x') ?? '', /x.refill_time must be above 0/);
  assert.match(bucketProblem({ size: -1, refillTimeMs: 10 }, 'x') ?? '', /x.size must be a whole number/);
  assert.throws(
    () => validateRateLimiter('drive d: rate_limiter', { bandwidth: { size: 1.5, refillTimeMs: 1 } }),
    /size must be a whole number/,
  );
  assert.throws(
    () => validateRateLimiter('drive d: rate_limiter', { speed: 1 } as never),
    /drive d: rate_limiter has no setting "speed"/,
  );
});

/** A poller whose one timer the test fires by hand. */
class TimerPoller implements Poller {
  armedMs = 0;
  fire: (() => void) | undefined;
  add(): void {}
  modify(): void {}
  remove(): void {}
  timer(handler: () => void): DeviceTimer {
    this.fire = handler;
    return {
      set: (ms) => {
        this.armedMs = ms;
      },
      close: () => {
        this.fire = undefined;
      },
    };
  }
}

const memDisk = (): BlockBackend & { reads: number } => {
  const data = Buffer.alloc(1 << 20);
  const d = {
    size: data.length,
    readOnly: false,
    canDiscard: false,
    reads: 0,
    readv(bufs: Uint8Array[], pos: number): number {
      d.reads++;
      let n = 0;
      for (const b of bufs) {
        b.set(data.subarray(pos + n, pos + n + b.length));
        n += b.length;
      }
      return n;
    },
    writev: (bufs: Uint8Array[]) => bufs.reduce((n, b) => n + b.length, 0),
    flush: () => {},
    discard: () => {},
    writeZeroes: () => {},
  };
  return d;
};

test('virtio-blk behind a limiter: requests beyond it wait in the ring, the timer serves them, a snapshot keeps the buckets', () => {
  const disk = memDisk();
  // Two 4 KiB reads a "second" of bytes, ten ops.
  const dev = new VirtioBlock(disk, {
    id: 'd',
    rateLimiter: { bandwidth: { size: 8192, refillTimeMs: 60_000 }, ops: { size: 10, refillTimeMs: 60_000 } },
  });
  const poller = new TimerPoller();
  dev.attach(poller);
  const drv = new MockMmioDriver(dev);
  try {
    const q = drv.probe(16)[0] as MockSplitQueue;
    const stat: number[] = [];
    for (let i = 0; i < 3; i++) {
      const hdr = drv.alloc(16);
      const h = Buffer.alloc(16);
      h.writeUInt32LE(VIRTIO_BLK_T.IN, 0);
      h.writeBigUInt64LE(BigInt(i * 8), 8);
      drv.mem.write(hdr, h);
      const st = drv.alloc(1);
      drv.mem.write8(st, 0xee);
      stat.push(st);
      q.addChain([
        { addr: hdr, len: 16, write: false },
        { addr: drv.alloc(4096), len: 4096, write: true },
        { addr: st, len: 1, write: true },
      ]);
    }
    drv.notify(0);
    assert.equal(q.takeUsed().length, 2, 'two fit the bucket');
    assert.equal(disk.reads, 2);
    assert.equal(dev.counters.rateLimited, 1, 'the third is held, not dropped');
    assert.deepEqual(dev.heldChains(), [1], 'and given back to the ring by a snapshot');
    assert.ok(
      poller.armedMs > 0 && poller.armedMs <= 30_000,
      `the timer is set for when it may go (${poller.armedMs} ms)`,
    );
    const saved = dev.saveState();
    assert.equal(saved.version, 2);
    const buckets = restoreBlockState(saved);
    assert.ok(buckets?.bandwidth && buckets.bandwidth.budget < 1, 'the spent budget is in the record');
    // The guest kicks: still held (no tokens), nothing served.
    drv.notify(0);
    assert.equal(q.takeUsed().length, 0);
    // The limit is raised at run time: the held request goes at once.
    dev.setRateLimiter({ bandwidth: { size: 1 << 20, refillTimeMs: 1000 } });
    const used = q.takeUsed();
    assert.equal(used.length, 1, 'served under the new limiter');
    assert.equal(drv.mem.read8(stat[2] as number), VIRTIO_BLK_S.OK);
    assert.deepEqual(dev.heldChains(), [0]);
    // The timer firing with nothing held does nothing.
    poller.fire?.();
    assert.equal(q.takeUsed().length, 0);
    // Version 1 records (before the limiter) are still taken; others are refused.
    assert.equal(restoreBlockState({ version: 1 }), null);
    assert.throws(() => restoreBlockState({ version: 3 }), /expected state version 1 or 2/);
    assert.throws(() => restoreBlockState({ version: 2, rateLimiter: null, x: 1 }), /unknown field/);
  } finally {
    drv.release();
  }
});

test('virtio-rng behind a limiter: requests beyond it wait (held, counted), the timer serves them', () => {
  let filled = 0;
  const dev = new VirtioRng(
    (b) => {
      b.fill(7);
      filled += b.length;
    },
    { bandwidth: { size: 64, refillTimeMs: 60_000 } },
  );
  const poller = new TimerPoller();
  dev.attach(poller);
  const drv = new MockMmioDriver(dev);
  try {
    const q = drv.probe(16)[0] as MockSplitQueue;
    for (let i = 0; i < 3; i++) q.addChain([{ addr: drv.alloc(32), len: 32, write: true }]);
    drv.notify(0);
    assert.equal(q.takeUsed().length, 2, 'two requests of 32 bytes fit a bucket of 64');
    assert.equal(filled, 64);
    assert.equal(dev.counters.rateLimited, 1);
    assert.deepEqual(dev.heldChains(), [1]);
    assert.ok(poller.armedMs > 0, 'the timer is set');
    poller.fire?.();
    assert.equal(q.takeUsed().length, 0, 'too early');
  } finally {
    drv.release();
  }
});

test('the entropy device in a snapshot: true without a limiter, its settings with one; both read back', async () => {
  const { rngKind } = await import('../src/vmm/kinds/rng.js');
  assert.equal(rngKind.snapshot.save({}), true);
  assert.equal(rngKind.snapshot.save(undefined), false);
  const withLimit = { rateLimiter: { ops: { size: 10, refillTimeMs: 1000 } } };
  assert.deepEqual(rngKind.snapshot.save(withLimit), withLimit);
  const check = rngKind.snapshot.check as (v: unknown, at: string) => void;
  check(true, '$');
  check(withLimit, '$');
  assert.throws(() => check({ rateLimiter: { ops: { size: -1, refillTimeMs: 1 } } }, '$'), /size/);
  assert.throws(() => check(7, '$'), /expected true, false or the device settings/);
  assert.deepEqual(rngKind.snapshot.restore(true, { serial: undefined }), {});
  assert.deepEqual(rngKind.snapshot.restore(withLimit, { serial: undefined }), withLimit);
});
