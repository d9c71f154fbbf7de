/**
 * A restored twin of a device driven by MockMmioDriver: its transport and side state saved (through
 * JSON, as a snapshot file carries them) and restored into a fresh device over the same guest
 * memory, the way a restore builds it. The round-trip tests of every virtio device use it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VireoError } from '../../src/common/errors.js';
import type { VirtioDevice } from '../../src/devices/virtio/device.js';
import { createTransportSpec } from '../../src/devices/virtio/transport/common.js';
import { restoreTransportState, saveTransportState } from '../../src/devices/virtio/transport/common-state.js';
import { VirtioMmioTransport } from '../../src/devices/virtio/transport/mmio.js';
import { TransportRunner } from '../../src/devices/virtio/transport/runner.js';
import type { RunnerState } from '../../src/devices/virtio/transport/runner-state.js';
import { MockMmioDriver, R } from './virtio-driver.js';

export interface Twin {
  transport: VirtioMmioTransport;
  side: TransportRunner;
  device: VirtioDevice;
  interrupts: number;
  read(reg: number): number;
  write(reg: number, v: number): void;
  /** The twin's records now, for comparing with the original's. */
  records(): { transport: unknown; side: RunnerState };
}

const viaJson = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

/** Saves `drv`'s device, restores it into `fresh`; asserts save → restore → save gives the same records. */
export function restoredTwin(drv: MockMmioDriver, fresh: VirtioDevice): Twin {
  const transport = viaJson(saveTransportState(drv.spec));
  const side = viaJson(drv.side.save());
  const spec = createTransportSpec(fresh);
  restoreTransportState(spec, transport, 'twin transport');
  let twinSide: TransportRunner | undefined;
  const twin: Twin = {
    device: fresh,
    interrupts: 0,
    transport: new VirtioMmioTransport(spec, drv.mem, {
      notifyQueue: (q) => twinSide?.process(q),
      wake: () => twinSide?.poll(),
      interrupt: () => twin.interrupts++,
    }),
    side: new TransportRunner(spec, fresh, drv.mem, () => twin.interrupts++),
    read(reg) {
      const b = new Uint8Array(4);
      twin.transport.read(reg, b);
      return new DataView(b.buffer).getUint32(0, true);
    },
    write(reg, v) {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, v >>> 0, true);
      twin.transport.write(reg, b);
    },
    records: () => ({ transport: saveTransportState(spec), side: twin.side.save() }),
  };
  twinSide = twin.side;
  twin.side.restore(side);
  const again = twin.records();
  assert.deepEqual(again.transport, transport, 'save → restore → save: the same transport record');
  assert.deepEqual(again.side, side, 'save → restore → save: the same side record');
  return twin;
}

/**
 * The two tests of a device whose own record is only a version (blk, net, rng, vsock): a live device
 * restored into a fresh one reads the same, and a record of another version or with unknown fields is
 * refused with its path.
 */
export function emptyRecordTests(kind: string, make: () => VirtioDevice, restore: (state: unknown) => void): void {
  test(`${kind}: save → restore into a fresh device → save is the same, and the device reads the same`, () => {
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

  test(`${kind}: a record of another version or with unknown fields is refused with its path`, () => {
    const versionRe = new RegExp(`${kind} state is bad at \\$\\.version: expected state version 1`);
    for (const [bad, re] of [
      [{ version: 2 }, versionRe],
      [{ version: 1, extra: 0 }, /at \$\.extra: unknown field/],
      [[], /at \$: expected an object/],
    ] as const)
      assert.throws(
        () => restore(bad),
        (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
      );
  });
}
