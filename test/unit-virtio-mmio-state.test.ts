/**
 * The virtio-mmio transport's state record and the device side's: a device mid-use (features
 * negotiated, queues live, a request served, an interrupt pending) saved and restored into a fresh
 * device reads back every register the same, gives the same records again, and serves the next
 * request from where the original stood; a bad record is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { checkRecord } from '../src/common/schema.js';
import { VirtioRng } from '../src/devices/virtio/rng.js';
import { checkRngState } from '../src/devices/virtio/rng-state.js';
import { createTransportSpec } from '../src/devices/virtio/transport/common.js';
import { restoreTransportState, saveTransportState } from '../src/devices/virtio/transport/common-state.js';
import { runnerStateCheck } from '../src/devices/virtio/transport/runner-state.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { restoredTwin } from './support/state-twin.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const rng = () => new VirtioRng((b) => b.fill(0xab));
const corrupt = (re: RegExp) => (e: unknown) =>
  e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message);

test('a live device restored from its records reads the same and serves the next request where it stood', () => {
  const drv = new MockMmioDriver(rng());
  try {
    const [q] = drv.probe(8) as [MockSplitQueue];
    const a = drv.alloc(16);
    q.addChain([{ addr: a, len: 16, write: true }]);
    drv.notify(0);
    assert.equal(q.takeUsed().length, 1);
    drv.write(R.QUEUE_SEL, 5); // a selector left on a queue the device lacks
    const twin = restoredTwin(drv, rng());
    for (let reg = 0; reg < 0x100; reg += 4)
      assert.equal(twin.read(reg), drv.read(reg), `register ${reg.toString(16)}`);
    twin.write(R.QUEUE_SEL, 0);
    drv.write(R.QUEUE_SEL, 0);
    for (const reg of [R.QUEUE_NUM_MAX, R.QUEUE_READY, R.INTERRUPT_STATUS, R.STATUS])
      assert.equal(twin.read(reg), drv.read(reg), `queue 0 register ${reg.toString(16)}`);
    // The next request, through the restored device only: it lands at the next used slot.
    const b = drv.alloc(8);
    q.addChain([{ addr: b, len: 8, write: true }]);
    twin.write(R.QUEUE_NOTIFY, 0);
    const used = q.takeUsed();
    assert.equal(used.length, 1, 'the restored device served it');
    assert.equal(used[0]?.len, 8);
    assert.equal(drv.mem.read(b, 8).toString('hex'), 'ab'.repeat(8));
  } finally {
    drv.release();
  }
});

test('the transport record names its registers; a bad one is refused with the field path', () => {
  const drv = new MockMmioDriver(rng());
  try {
    drv.probe(8);
    const s = saveTransportState(drv.spec);
    assert.equal(s.version, 1);
    assert.equal(s.queues.length, 1, 'one record per queue the device has');
    assert.equal(s.queues[0]?.size, 8);
    assert.equal(s.queues[0]?.ready, true);
    assert.equal(s.config, '', 'virtio-rng has no configuration space');
    const cases: [string, (r: Record<string, unknown>) => void, RegExp][] = [
      ['status past a byte', (r) => (r.status = 256), /virtio-mmio state is bad at \$\.status/],
      ['an interrupt bit that does not exist', (r) => (r.interruptStatus = 4), /at \$\.interruptStatus/],
      [
        'queues of another device',
        (r) => (r.queues = []),
        /at \$\.queues: expected a list of 1 \(the device's queues\)/,
      ],
      [
        'a queue address not a u32',
        (r) => (((r.queues as Record<string, unknown>[])[0] as Record<string, unknown>).descLow = -1),
        /at \$\.queues\[0\]\.descLow/,
      ],
      ['a config that is not hex', (r) => (r.config = 'xyz'), /at \$\.config/],
      ['a config past the window', (r) => (r.config = '00'.repeat(257)), /at \$\.config: expected at most 256 bytes/],
      ['a missing register', (r) => delete r.queueSel, /at \$\.queueSel: missing/],
    ];
    for (const [name, mutate, re] of cases) {
      const r = structuredClone(s) as unknown as Record<string, unknown>;
      mutate(r);
      assert.throws(() => restoreTransportState(createTransportSpec(rng()), r, 'virtio-mmio'), corrupt(re), name);
    }
    const side = drv.side.save();
    const check = runnerStateCheck(checkRngState);
    checkRecord(check, structuredClone(side), 'side');
    assert.throws(
      () =>
        checkRecord(
          check,
          { ...side, positions: [{ nextAvail: 70000, nextUsed: 0, signalledUsed: 0, inFlight: 0 }] },
          'side',
        ),
      corrupt(/at \$\.positions\[0\]\.nextAvail/),
    );
    assert.throws(
      () => checkRecord(check, { ...side, device: { version: 9 } }, 'side'),
      corrupt(/at \$\.device\.version/),
    );
    // The device side checks the record itself too, and the device its own part.
    const fresh = new MockMmioDriver(rng());
    try {
      assert.throws(
        // (negative values are legal: the side saves its int32 copies as read, see transport/runner-state.ts)
        () => fresh.side.restore({ ...side, activeGen: 0x1_0000_0000 }),
        corrupt(/virtio device side state is bad at \$\.activeGen/),
      );
      assert.throws(
        () => fresh.side.restore({ ...side, device: { version: 1, x: 1 } }),
        corrupt(/virtio-rng state is bad at \$\.x/),
      );
    } finally {
      fresh.release();
    }
  } finally {
    drv.release();
  }
});
