/**
 * virtio-net's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same;
 * its own record is named and versioned, and a bad one is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import type { NetBackend } from '../src/devices/virtio/net.js';
import { VirtioNet } from '../src/devices/virtio/net.js';

const tap: NetBackend = { fd: 1000, offloads: 0, read: () => undefined, write: () => 0, setOffloads: () => {} };

import { restoreNetState } from '../src/devices/virtio/net-state.js';
import { restoredTwin } from './support/state-twin.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const make = () => new VirtioNet(tap, { mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56) });

test('virtio-net: save → restore into a fresh device → save is the same, and the device reads the same', () => {
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

test('virtio-net: a record of another version or with unknown fields is refused with its path', () => {
  for (const [bad, re] of [
    [{ version: 2 }, /virtio-net state is bad at \$\.version: expected state version 1/],
    [{ version: 1, extra: 0 }, /at \$\.extra: unknown field/],
    [[], /at \$: expected an object/],
  ] as const)
    assert.throws(
      () => restoreNetState(bad),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
    );
});
