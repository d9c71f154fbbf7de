/**
 * virtio-blk's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same; its
 * own record (version 2: the rate limiter's buckets, null without one; version 1 still read) is
 * named and versioned, and a bad one is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { type BlockBackend, VirtioBlock } from '../src/devices/virtio/block.js';
import { restoreBlockState } from '../src/devices/virtio/block-state.js';
import { restoredTwin } from './support/state-twin.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const disk: BlockBackend = {
  size: 1 << 20,
  readOnly: true,
  canDiscard: false,
  readv: () => 0,
  writev: () => 0,
  flush: () => {},
  discard: () => {},
  writeZeroes: () => {},
};

const limited = {
  bandwidth: { size: 1 << 20, refillTimeMs: 1000 },
  ops: { size: 100, refillTimeMs: 1000, oneTimeBurst: 5 },
};

for (const rateLimiter of [undefined, limited]) {
  const make = () => new VirtioBlock(disk, { id: 'd0', rateLimiter });
  test(`virtio-blk${rateLimiter ? ' with a rate limiter' : ''}: save → restore into a fresh device → save is the same, and the device reads the same`, () => {
    const drv = new MockMmioDriver(make());
    try {
      drv.probe(16);
      const twin = restoredTwin(drv, make());
      const rec = twin.records().side.device as { version: number; rateLimiter: unknown };
      assert.equal(rec.version, 2);
      if (rateLimiter)
        assert.deepEqual(rec.rateLimiter, { bandwidth: { budget: 1 << 20, burst: 0 }, ops: { budget: 100, burst: 5 } });
      else assert.equal(rec.rateLimiter, null);
      for (let o = 0; o < 0x100; o += 4) assert.equal(twin.read(R.CONFIG + o), drv.read(R.CONFIG + o), `config +${o}`);
      assert.equal(twin.read(R.STATUS), drv.read(R.STATUS));
    } finally {
      drv.release();
    }
  });
}

test('virtio-blk: version 1 records are read; other versions, unknown fields and bad buckets are refused with their path', () => {
  assert.equal(restoreBlockState({ version: 1 }), null);
  assert.deepEqual(restoreBlockState({ version: 2, rateLimiter: { bandwidth: null, ops: { budget: -3, burst: 0 } } }), {
    bandwidth: null,
    ops: { budget: -3, burst: 0 },
  });
  for (const [bad, re] of [
    [{ version: 3 }, /virtio-blk state is bad at \$\.version: expected state version 1 or 2/],
    [{ version: 1, extra: 0 }, /at \$\.extra: unknown field/],
    [{ version: 2 }, /at \$\.rateLimiter: missing/],
    [
      { version: 2, rateLimiter: { bandwidth: { budget: 0.5, burst: 0 }, ops: null } },
      /rateLimiter\.bandwidth\.budget/,
    ],
    [{ version: 2, rateLimiter: { bandwidth: null, ops: { budget: 1, burst: -1 } } }, /rateLimiter\.ops\.burst/],
    [[], /at \$: expected an object/],
  ] as const)
    assert.throws(
      () => restoreBlockState(bad),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
      JSON.stringify(bad),
    );
});
