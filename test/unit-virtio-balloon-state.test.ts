/**
 * virtio-balloon's records: the host side (BalloonControl: target, actual, statistics by name) and
 * the device's own. Save → restore into a fresh control → save is the same and reads the same target,
 * actual size and statistics; a live balloon restored into a fresh device gives the same records; a
 * bad record is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { BalloonControl, VirtioBalloon } from '../src/devices/virtio/balloon.js';
import { restoreBalloonControlState, saveBalloonControlState } from '../src/devices/virtio/balloon-control-state.js';
import { restoredTwin } from './support/state-twin.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const corrupt = (re: RegExp) => (e: unknown) =>
  e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message);

test('the host side: save → restore → save is the same, with target, actual and statistics', () => {
  const a = new BalloonControl();
  a.setTargetMiB(12);
  a.s.set('actualPages', 1000);
  a.requestStats();
  a.recordStat(4, 123456789); // free_memory
  a.recordStat(0, 0); // swap_in, reported as 0: present, not absent
  const saved = JSON.parse(JSON.stringify(saveBalloonControlState(a)));
  assert.deepEqual(saved.stats, { swap_in: 0, free_memory: 123456789 });
  const b = new BalloonControl();
  b.recordStat(1, 5); // a statistic the snapshot does not have is forgotten
  restoreBalloonControlState(b, saved);
  assert.deepEqual(saveBalloonControlState(b), saved);
  assert.equal(b.targetMiB(), 12);
  assert.equal(b.actualMiB(), a.actualMiB());
  assert.deepEqual(b.latestStats(), a.latestStats());
});

test('the device: a live balloon restored into a fresh one gives the same records and target', () => {
  const control = new BalloonControl();
  control.setTargetMiB(4);
  const make = () => new VirtioBalloon(control, () => {}, { deflateOnOom: true, stats: true });
  const drv = new MockMmioDriver(make());
  try {
    drv.probe(16);
    const twin = restoredTwin(drv, make());
    assert.deepEqual(twin.records().side.device, { version: 1, announcedTargetPages: 1024, statsRequestsSeen: 0 });
    assert.equal(twin.interrupts, 0, 'the restored balloon does not re-announce a target the driver has');
    assert.equal(twin.read(R.CONFIG), 1024, 'num_pages');
  } finally {
    drv.release();
  }
});

test('bad balloon records are refused with their path', () => {
  const good = saveBalloonControlState(new BalloonControl());
  for (const [bad, re] of [
    [{ ...good, targetPages: -1 }, /balloon state is bad at \$\.targetPages/],
    [{ ...good, stats: { nope: 1 } }, /at \$\.stats\.nope: unknown field/],
    [{ ...good, stats: { free_memory: -1 } }, /at \$\.stats\.free_memory: expected a number, 0 or more/],
    [{ ...good, version: 0 }, /at \$\.version: expected state version 1/],
  ] as const)
    assert.throws(() => restoreBalloonControlState(new BalloonControl(), bad), corrupt(re));
  assert.throws(
    () => make2().restoreState({ version: 1, x: 1 }),
    corrupt(/virtio-balloon state is bad at \$\.x: unknown field/),
  );
});
const make2 = () => new VirtioBalloon(new BalloonControl(), () => {}, { deflateOnOom: false, stats: false });
