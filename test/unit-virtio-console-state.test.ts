/**
 * virtio-console's state record: host input the device read but could not deliver yet (the guest
 * had no buffer) is in the record, and a restored console delivers it first, as the original would;
 * save → restore → save gives the same records; a bad record is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { type ConsoleBackend, VirtioConsole } from '../src/devices/virtio/console.js';
import type { Poller } from '../src/devices/virtio/device.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { restoredTwin } from './support/state-twin.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

class FakeConsole implements ConsoleBackend {
  readonly inputFd = 42;
  input: Buffer[] = [];
  write(): void {}
  read(buf: Uint8Array): number {
    const next = this.input.shift();
    if (next === undefined) return 0;
    buf.set(next.subarray(0, buf.length));
    return Math.min(buf.length, next.length);
  }
}
const poller = (): Poller & { fire(): void } => {
  let h: ((e: number) => void) | undefined;
  return {
    add: (_fd, _e, handler) => {
      h = handler;
    },
    modify: () => {},
    remove: () => {
      h = undefined;
    },
    fire: () => h?.(1),
  };
};

test('input not yet delivered survives a snapshot and reaches the guest first after the restore', () => {
  const backend = new FakeConsole();
  const p = poller();
  const dev = new VirtioConsole(backend);
  dev.attach(p);
  const drv = new MockMmioDriver(dev);
  try {
    const [rx] = drv.probe(8) as [MockSplitQueue];
    const a = drv.alloc(4);
    rx.addChain([{ addr: a, len: 4, write: true }]);
    drv.notify(0);
    backend.input.push(Buffer.from('0123456789'));
    p.fire();
    assert.equal(drv.mem.read(a, 4).toString(), '0123');
    rx.takeUsed();
    assert.deepEqual(dev.saveState(), { version: 1, pendingInput: Buffer.from('456789').toString('hex') });
    const fresh = new VirtioConsole(new FakeConsole());
    fresh.attach(poller());
    const twin = restoredTwin(drv, fresh);
    const b = drv.alloc(8);
    rx.addChain([{ addr: b, len: 8, write: true }]);
    twin.write(R.QUEUE_NOTIFY, 0);
    assert.deepEqual(
      rx.takeUsed().map((u) => u.len),
      [6],
    );
    assert.equal(drv.mem.read(b, 6).toString(), '456789', 'the kept bytes, from the restored device');
    assert.deepEqual(fresh.saveState(), { version: 1, pendingInput: '' });
  } finally {
    drv.release();
  }
});

test('a bad console record is refused with its path', () => {
  for (const [bad, re] of [
    [{ version: 1, pendingInput: 'xy' }, /virtio-console state is bad at \$\.pendingInput/],
    [{ version: 1, pendingInput: '00'.repeat(4097) }, /at \$\.pendingInput: expected at most 4096 bytes/],
    [{ version: 1 }, /at \$\.pendingInput: missing/],
  ] as const)
    assert.throws(
      () => new VirtioConsole(new FakeConsole()).restoreState(bad),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
    );
});
