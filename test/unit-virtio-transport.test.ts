/**
 * The common virtio transport on its own (src/devices/virtio/transport/common.ts and runner.ts), with
 * no register decoding in between: the operations any transport (MMIO today, PCI later) maps its
 * registers onto, driven directly, with the runner on the same thread. The device status state
 * machine (virtio 1.2 §2.1, §3.1.1), failed feature negotiation, queue layouts refused at DRIVER_OK,
 * and a reset that drops the queues and leaves the device ready for a new initialization.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { STATUS, VIRTIO_F_VERSION_1, type VirtioContext, type VirtioDevice } from '../src/devices/virtio/device.js';
import type { QueueLayout } from '../src/devices/virtio/queue.js';
import { createTransportSpec, Q, type QueueSlot, TransportCore } from '../src/devices/virtio/transport/common.js';
import { TransportRunner } from '../src/devices/virtio/transport/runner.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import { MockSplitQueue } from './support/mock-virtq.js';

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET, FAILED } = STATUS;
const VERSION_1 = 1n << VIRTIO_F_VERSION_1;
/** A device feature the test device offers (bit 0), and one it does not (bit 5). */
const OFFERED = 1n;
const NOT_OFFERED = 1n << 5n;
const MEM = 1 << 20;

/** A device that records what the runner asks of it. */
class RecordingDevice implements VirtioDevice {
  readonly deviceType = 42;
  readonly queueMaxSizes = [16, 8];
  readonly features = OFFERED;
  readonly configSpace = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  readonly configWritable = [[4, 2]] as const;
  readonly counters = {};
  readonly calls: string[] = [];
  ctx: VirtioContext | undefined;
  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.calls.push(`activate ${ctx.queues.map((q) => (q ? 'q' : '-')).join('')}`);
  }
  process(q: number): void {
    this.calls.push(`process ${q}`);
  }
  configWritten(offset: number, length: number): void {
    this.calls.push(`config ${offset}+${length}`);
  }
  reset(): void {
    this.ctx = undefined;
    this.calls.push('reset');
  }
}

/** The common transport and its runner over 1 MiB of guest memory, hooks wired straight through. */
function rig() {
  const mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: MEM }]);
  const mem = new GuestMemory(mapping.descriptors);
  const device = new RecordingDevice();
  const spec = createTransportSpec(device);
  const hooks = { interrupts: 0, notified: [] as number[] };
  let runner: TransportRunner | undefined;
  const core = new TransportCore(spec, mem, {
    notifyQueue: (q) => {
      hooks.notified.push(q);
      runner?.process(q);
    },
    wake: () => runner?.poll(),
    interrupt: () => hooks.interrupts++,
  });
  runner = new TransportRunner(spec, device, mem, () => hooks.interrupts++);
  const r = {
    core,
    runner,
    device,
    mem,
    hooks,
    release: () => mapping.release(),
    status: () => core.status(),
    /** Writes both words of the driver features. */
    accept(features: bigint): void {
      core.selectDriverFeatures(0);
      core.writeDriverFeatures(Number(features & 0xffffffffn));
      core.selectDriverFeatures(1);
      core.writeDriverFeatures(Number(features >> 32n));
    },
    /** ACKNOWLEDGE, DRIVER, the features, FEATURES_OK (§3.1.1 steps 1–5). */
    negotiate(features = VERSION_1 | OFFERED): void {
      core.writeStatus(ACKNOWLEDGE);
      core.writeStatus(ACKNOWLEDGE | DRIVER);
      r.accept(features);
      core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    },
    queue(q: number, l: QueueLayout, ready = true): void {
      core.selectQueue(q);
      const w = (slot: QueueSlot, v: number) => core.writeQueueRegister(slot, v);
      w(Q.num, l.size);
      w(Q.descLo, l.desc % 2 ** 32);
      w(Q.descHi, Math.floor(l.desc / 2 ** 32));
      w(Q.availLo, l.avail % 2 ** 32);
      w(Q.availHi, Math.floor(l.avail / 2 ** 32));
      w(Q.usedLo, l.used % 2 ** 32);
      w(Q.usedHi, Math.floor(l.used / 2 ** 32));
      if (ready) w(Q.ready, 1);
    },
    driverOk(): void {
      core.writeStatus(core.status() | DRIVER_OK);
    },
  };
  return r;
}
type Rig = ReturnType<typeof rig>;

const good = (size: number, at: number): QueueLayout => MockSplitQueue.packed(size, at);

function withRig(fn: (r: Rig) => void): void {
  const r = rig();
  try {
    fn(r);
  } finally {
    r.release();
  }
}

/** DEVICE_NEEDS_RESET set, one protocol error counted, a configuration interrupt raised and injected. */
function assertNeedsReset(r: Rig, errors = 1): void {
  assert.ok(r.status() & DEVICE_NEEDS_RESET, 'DEVICE_NEEDS_RESET');
  assert.equal(r.core.st.s.get('protocolErrors'), errors);
  assert.ok(r.core.interruptStatus() & 2, 'a configuration-change interrupt');
  assert.ok(r.hooks.interrupts >= 1, 'the interrupt was injected');
}

describe('device status (§2.1, §3.1.1)', () => {
  test('the initialization sequence activates the device with the enabled queues and the accepted features', () =>
    withRig((r) => {
      assert.equal(r.status(), 0);
      r.negotiate();
      assert.equal(r.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
      r.queue(0, good(16, 0x1000));
      r.driverOk();
      assert.equal(r.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
      assert.deepEqual(r.device.calls, ['activate q-'], 'queue 1 was not enabled');
      assert.equal(r.device.ctx?.features, VERSION_1 | OFFERED);
      assert.ok(r.runner.active);
      r.core.notify(0);
      r.core.notify(1);
      assert.deepEqual(r.device.calls.slice(1), ['process 0', 'process 1'], 'notifications reach the device');
      r.core.notify(2);
      r.core.notify(0xffffffff);
      assert.deepEqual(r.hooks.notified, [0, 1], 'a queue the device lacks is never notified');
      assert.equal(r.hooks.interrupts, 0);
    }));

  test('the driver only adds bits: a write without a bit keeps it, bits above the byte are dropped', () =>
    withRig((r) => {
      r.negotiate();
      r.core.writeStatus(ACKNOWLEDGE);
      assert.equal(r.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
      r.core.writeStatus(0x100);
      assert.equal(r.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK, 'a write of only bits above the byte is ignored');
      r.core.writeStatus(0xff00 | FAILED);
      assert.equal(r.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED);
    }));

  test('DEVICE_NEEDS_RESET is the device’s to set: a driver write of it changes nothing', () =>
    withRig((r) => {
      r.core.writeStatus(ACKNOWLEDGE | DEVICE_NEEDS_RESET);
      assert.equal(r.status(), ACKNOWLEDGE);
      assert.equal(r.core.st.s.get('protocolErrors'), 0);
    }));

  test('DRIVER_OK without FEATURES_OK is refused: DEVICE_NEEDS_RESET, and the device stays inactive', () =>
    withRig((r) => {
      r.core.writeStatus(ACKNOWLEDGE | DRIVER);
      r.core.writeStatus(ACKNOWLEDGE | DRIVER | DRIVER_OK);
      assert.equal(r.status() & DRIVER_OK, 0);
      assertNeedsReset(r);
      assert.deepEqual(r.device.calls, []);
      r.core.notify(0);
      assert.deepEqual(r.hooks.notified, [], 'no notification before DRIVER_OK');
      // Once set, DEVICE_NEEDS_RESET survives every driver write but a reset.
      r.core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
      assert.ok(r.status() & DEVICE_NEEDS_RESET);
    }));
});

describe('feature negotiation (§2.2, §3.1.1)', () => {
  test('the offered features read per 32-bit word, VERSION_1 added; words past the second read 0', () =>
    withRig((r) => {
      const word = (w: number) => {
        r.core.selectDeviceFeatures(w);
        return r.core.deviceFeatures();
      };
      assert.equal(word(0), Number(OFFERED));
      assert.equal(word(1), 1, 'VERSION_1 is bit 32');
      for (const w of [2, 0x80000000, 0xffffffff]) assert.equal(word(w), 0);
    }));

  test('FEATURES_OK stays clear for a feature not offered, for no VERSION_1, and before DRIVER', () => {
    for (const [why, features] of [
      ['a feature not offered', VERSION_1 | NOT_OFFERED],
      ['VERSION_1 missing (a legacy driver)', OFFERED],
    ] as const)
      withRig((r) => {
        r.negotiate(features);
        assert.equal(r.status(), ACKNOWLEDGE | DRIVER, why);
        r.driverOk();
        assert.equal(r.status() & DRIVER_OK, 0, `${why}: DRIVER_OK refused too`);
        assertNeedsReset(r);
        assert.deepEqual(r.device.calls, [], why);
      });
    withRig((r) => {
      r.core.writeStatus(ACKNOWLEDGE);
      r.accept(VERSION_1);
      assert.equal(r.core.st.driverFeatures(), 0n, 'features written before DRIVER are ignored');
      // Features in place without DRIVER (only a restored record can do that): still no FEATURES_OK.
      r.core.st.s.set('driverFeaturesHi', 1);
      r.core.writeStatus(ACKNOWLEDGE | FEATURES_OK);
      assert.equal(r.status(), ACKNOWLEDGE, 'FEATURES_OK without DRIVER');
      r.core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
      assert.equal(r.status(), ACKNOWLEDGE | DRIVER, 'DRIVER and FEATURES_OK in one write');
    });
  });

  test('after FEATURES_OK the accepted features are fixed; selectors past the second word write nothing', () =>
    withRig((r) => {
      r.core.writeStatus(ACKNOWLEDGE | DRIVER);
      r.core.selectDriverFeatures(2);
      r.core.writeDriverFeatures(0xffffffff);
      r.core.selectDriverFeatures(0x80000001);
      r.core.writeDriverFeatures(0xffffffff);
      assert.equal(r.core.st.driverFeatures(), 0n);
      r.negotiate();
      r.accept(VERSION_1 | NOT_OFFERED);
      assert.equal(r.core.st.driverFeatures(), VERSION_1 | OFFERED);
    }));
});

describe('queue layouts (§2.6, §3.1.1 step 7)', () => {
  const outside = MEM - 0x80;
  const bad: [string, (r: Rig) => void][] = [
    ['a size not a power of two', (r) => r.queue(0, { ...good(16, 0x1000), size: 12 })],
    ['a size above the maximum', (r) => r.queue(1, good(16, 0x1000))],
    ['a size of 0', (r) => r.queue(0, { ...good(16, 0x1000), size: 0 })],
    ['a misaligned descriptor table', (r) => r.queue(0, { ...good(16, 0x1000), desc: 0x1008 })],
    ['a misaligned used ring', (r) => r.queue(0, { ...good(16, 0x1000), used: good(16, 0x1000).used + 2 })],
    ['rings outside guest memory', (r) => r.queue(0, { size: 16, desc: outside, avail: 0x8000, used: 0x9000 })],
    ['rings above 2^53', (r) => r.queue(0, { ...good(16, 0x1000), desc: 2 ** 60 })],
    ['overlapping rings', (r) => r.queue(0, { ...good(16, 0x1000), avail: 0x1000 })],
    [
      'a good queue next to a bad one',
      (r) => {
        r.queue(0, good(16, 0x1000));
        r.queue(1, { ...good(8, 0x8000), size: 3 });
      },
    ],
  ];
  for (const [why, setup] of bad)
    test(`DRIVER_OK is refused for ${why}: DEVICE_NEEDS_RESET, no activation`, () =>
      withRig((r) => {
        r.negotiate();
        setup(r);
        r.driverOk();
        assert.equal(r.status() & DRIVER_OK, 0);
        assertNeedsReset(r);
        assert.deepEqual(r.device.calls, []);
        assert.equal(r.runner.active, false);
      }));

  test('a bad layout on a queue the driver did not enable is not checked', () =>
    withRig((r) => {
      r.negotiate();
      r.queue(0, good(16, 0x1000));
      r.queue(1, { size: 3, desc: 1, avail: 1, used: 1 }, false);
      r.driverOk();
      assert.ok(r.status() & DRIVER_OK);
      assert.deepEqual(r.device.calls, ['activate q-']);
    }));

  test('queue registers are written only between FEATURES_OK and DRIVER_OK, and only for queues the device has', () =>
    withRig((r) => {
      const size = (q: number) => r.core.st.q(q, Q.num);
      r.core.writeStatus(ACKNOWLEDGE | DRIVER);
      r.queue(0, good(16, 0x1000));
      assert.equal(size(0), 0, 'before FEATURES_OK');
      assert.equal(r.core.queueRegister(Q.ready), 0);
      r.negotiate();
      r.queue(0, good(16, 0x1000));
      assert.equal(size(0), 16);
      assert.equal(r.core.queueRegister(Q.ready), 1);
      for (const sel of [2, 7, 8, 0x80000000, 0xffffffff]) {
        r.core.selectQueue(sel);
        r.core.writeQueueRegister(Q.num, 4);
        r.core.writeQueueRegister(Q.ready, 1);
        assert.equal(r.core.queueMaxSize(), 0, `queue ${sel} does not exist`);
        assert.equal(r.core.queueRegister(Q.ready), 0);
      }
      for (let q = 2; q < 8; q++) assert.equal(size(q), 0, `queue ${q} untouched`);
      r.core.selectQueue(0);
      r.core.writeQueueRegister(Q.ready, 2);
      assert.equal(r.core.queueRegister(Q.ready), 0, 'ready is 1 or 0');
      r.core.writeQueueRegister(Q.ready, 1);
      r.driverOk();
      r.core.writeQueueRegister(Q.num, 2);
      r.core.writeQueueRegister(Q.ready, 0);
      assert.equal(size(0), 16, 'after DRIVER_OK');
      assert.equal(r.core.queueRegister(Q.ready), 1);
      assert.equal(r.core.queueMaxSize(), 16);
    }));
});

describe('reset (§2.4)', () => {
  test('status 0 clears status, features, interrupts and every queue, resets the device and waits for it', () =>
    withRig((r) => {
      r.negotiate();
      r.queue(0, good(16, 0x1000));
      r.queue(1, good(8, 0x8000));
      r.driverOk();
      r.core.selectQueue(1);
      r.runner.configChanged();
      assert.notEqual(r.core.interruptStatus(), 0);
      const generation = r.core.configGeneration();
      r.core.writeStatus(0);
      assert.equal(r.status(), 0);
      assert.equal(r.core.st.driverFeatures(), 0n);
      assert.equal(r.core.interruptStatus(), 0);
      assert.equal(r.core.st.s.u32('queueSel'), 0);
      assert.ok(
        r.core.st.queues.every((v) => v === 0),
        'every queue register is 0',
      );
      assert.equal(r.core.st.s.get('resetAck'), r.core.st.s.get('resetGen'), 'the runner acknowledged');
      assert.deepEqual(r.device.calls, ['activate qq', 'reset']);
      assert.equal(r.runner.active, false);
      assert.equal(r.core.configGeneration(), generation, 'the configuration generation is not reset');
      r.core.notify(0);
      assert.deepEqual(r.hooks.notified, [], 'no notification after a reset');
      // A new initialization works from scratch, and only with what this one sets up.
      r.negotiate();
      r.queue(1, good(8, 0x8000));
      r.driverOk();
      assert.ok(r.status() & DRIVER_OK);
      assert.deepEqual(r.device.calls.slice(2), ['activate -q']);
    }));

  test('a reset clears DEVICE_NEEDS_RESET and a broken runner', () =>
    withRig((r) => {
      r.negotiate();
      r.queue(0, good(16, 0x1000));
      r.driverOk();
      r.runner.deviceError(new Error('the device failed'));
      assert.equal(r.runner.active, false);
      assert.ok(r.status() & DEVICE_NEEDS_RESET);
      assert.equal(r.runner.lastError, 'the device failed');
      r.core.writeStatus(0);
      assert.equal(r.status(), 0);
      r.negotiate();
      r.queue(0, good(16, 0x1000));
      r.driverOk();
      assert.ok(r.runner.active);
    }));
});

describe('configuration space (§2.5)', () => {
  test('reads what the device defines (0 past it); writes only in a writable range once DRIVER_OK is set', () =>
    withRig((r) => {
      const read = (o: number, n: number) => {
        const b = new Uint8Array(n);
        r.core.readConfig(o, b);
        return [...b];
      };
      assert.deepEqual(read(0, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.deepEqual(read(0xfe, 4), [0, 0, 0, 0]);
      r.core.writeConfig(4, new Uint8Array([9, 9]));
      assert.deepEqual(read(4, 2), [5, 6], 'before DRIVER_OK');
      r.negotiate();
      r.queue(0, good(16, 0x1000));
      r.driverOk();
      r.core.writeConfig(3, new Uint8Array([9, 9]));
      r.core.writeConfig(5, new Uint8Array([9, 9]));
      r.core.writeConfig(0x1000, new Uint8Array([9]));
      assert.deepEqual(read(0, 8), [1, 2, 3, 4, 5, 6, 7, 8], 'outside the writable range');
      r.core.writeConfig(4, new Uint8Array([9, 8]));
      assert.deepEqual(read(4, 2), [9, 8]);
      assert.deepEqual(r.device.calls, ['activate q-', 'config 4+2']);
      const generation = r.core.configGeneration();
      r.runner.configChanged();
      assert.equal(r.core.configGeneration(), generation + 1, 'a device change bumps the generation');
      assert.equal(r.core.interruptStatus() & 2, 2);
      r.core.ackInterrupt(2);
      assert.equal(r.core.interruptStatus(), 0);
    }));
});
