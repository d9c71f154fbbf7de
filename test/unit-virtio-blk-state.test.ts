/**
 * virtio-blk's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same;
 * its own record is named and versioned, and a bad one is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { type BlockBackend, VirtioBlock } from '../src/devices/virtio/block.js';

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

import { restoreBlockState } from '../src/devices/virtio/block-state.js';
import { restoredTwin } from './support/state-twin.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const make = () => new VirtioBlock(disk, { id: 'd0' });

test('virtio-blk: save → restore into a fresh device → save is the same, and the device reads the same', () => {
  const drv = new MockMmioDriver(make());
  try {
    drv.probe(16);
    const twin = restoredTwin(drv, make());
    assert.deepEqual(twin.records().side.device, { version: 1 });
    for (let o = 0; o < 0x100; o += 4) assert.equal(twin.read(R.CONFIG + o), drv.read(R.CONFIG + o), `config +${o}`);
    assert.equal(twin.read(R.STATUS), drv.read(R.STATUS));
  } finally {
    drv.release();
  }
});

test('virtio-blk: a record of another version or with unknown fields is refused with its path', () => {
  for (const [bad, re] of [
    [{ version: 2 }, /virtio-blk state is bad at \$\.version: expected state version 1/],
    [{ version: 1, extra: 0 }, /at \$\.extra: unknown field/],
    [[], /at \$: expected an object/],
  ] as const)
    assert.throws(
      () => restoreBlockState(bad),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
    );
});
