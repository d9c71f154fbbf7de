/**
 * The virtio-mmio transport under hostile register traffic (issue 16, item 1): selector and index
 * registers written with bit 31 set, all ones, or just past the end; every register at every size and
 * alignment; the configuration space at every offset. Nothing may throw (a throw on a vCPU thread ends
 * the VM), and what reads back is what virtio 1.2 §4.2.2 says.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Bus } from '../src/bus/bus.js';
import { BALLOON_PAGE, BalloonControl, VirtioBalloon } from '../src/devices/virtio/balloon.js';
import { STATUS, VIRTIO_F_VERSION_1 } from '../src/devices/virtio/device.js';
import { VirtioRng } from '../src/devices/virtio/rng.js';
import { MMIO_MAGIC, MMIO_MAX_QUEUES, MMIO_WINDOW } from '../src/devices/virtio/transport/mmio.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const SHM_SEL = 0x0ac;
const SHM_LEN_LOW = 0x0b0;
const SHM_LEN_HIGH = 0x0b4;
const SHM_BASE_LOW = 0x0b8;
const SHM_BASE_HIGH = 0x0bc;

/** Values a hostile driver writes to a selector: bit 31, all ones, INT32_MAX, just past the end. */
const HOSTILE = [0x80000000, 0xffffffff, 0x7fffffff, 0xfffffffe, 2, 3, MMIO_MAX_QUEUES, MMIO_MAX_QUEUES + 1, 0x100];

const QUEUE_REGS = [
  R.QUEUE_NUM,
  R.QUEUE_READY,
  R.QUEUE_DESC_LOW,
  R.QUEUE_DESC_HIGH,
  R.QUEUE_DRIVER_LOW,
  R.QUEUE_DRIVER_HIGH,
  R.QUEUE_DEVICE_LOW,
  R.QUEUE_DEVICE_HIGH,
];

function balloonDriver(stats = false): { drv: MockMmioDriver; control: BalloonControl } {
  const control = new BalloonControl();
  const drv = new MockMmioDriver(new VirtioBalloon(control, () => {}, { deflateOnOom: false, stats }));
  return { drv, control };
}

/** Every register of the window below the configuration space, read as a 32-bit value. */
function readAllRegisters(drv: MockMmioDriver): number[] {
  const out: number[] = [];
  for (let o = 0; o < R.CONFIG; o += 4) out.push(drv.read(o));
  return out;
}

/** The whole shared register state, to see that a write changed nothing. */
function stateBytes(drv: MockMmioDriver): Uint8Array {
  return drv.transport.st.s.snapshot();
}

describe('virtio-mmio selectors with hostile values', () => {
  test('QueueSel out of range: QueueNumMax and QueueReady read 0, every register reads without a throw', () => {
    const { drv } = balloonDriver();
    const n = drv.device.queueMaxSizes.length;
    for (const sel of HOSTILE) {
      drv.write(R.QUEUE_SEL, sel);
      assert.doesNotThrow(() => readAllRegisters(drv), `QueueSel ${sel.toString(16)}`);
      if (sel >= n) {
        assert.equal(drv.read(R.QUEUE_NUM_MAX), 0, `QueueNumMax for queue ${sel.toString(16)}`);
        assert.equal(drv.read(R.QUEUE_READY), 0, `QueueReady for queue ${sel.toString(16)}`);
      }
      assert.equal(drv.read(R.MAGIC), MMIO_MAGIC);
    }
    drv.write(R.QUEUE_SEL, 1);
    assert.equal(drv.read(R.QUEUE_NUM_MAX), drv.device.queueMaxSizes[1], 'a real queue still reads its size');
    drv.release();
  });

  test('writes to the registers of a queue that does not exist change nothing', () => {
    const { drv } = balloonDriver();
    drv.negotiate(drv.deviceFeatures() | (1n << VIRTIO_F_VERSION_1));
    assert.ok(drv.status & STATUS.FEATURES_OK, 'queue set-up phase: queue writes would apply to a real queue');
    for (const sel of HOSTILE.filter((s) => s >= drv.device.queueMaxSizes.length)) {
      drv.write(R.QUEUE_SEL, sel);
      const before = stateBytes(drv);
      for (const reg of QUEUE_REGS) for (const v of [1, 0x80000000, 0xffffffff]) drv.write(reg, v);
      assert.deepEqual(stateBytes(drv), before, `queue ${sel.toString(16)}`);
      assert.equal(drv.read(R.QUEUE_READY), 0);
    }
    // The real queues were not touched either, and still come up.
    drv.write(R.QUEUE_SEL, 0);
    assert.equal(drv.read(R.QUEUE_READY), 0);
    for (let q = 0; q < drv.device.queueMaxSizes.length; q++) drv.setupQueue(q, 16);
    assert.ok(drv.driverOk(), 'the device still accepts DRIVER_OK');
    drv.release();
  });

  test('DeviceFeaturesSel: words past the second read 0; the first two read the offer', () => {
    const { drv } = balloonDriver(true);
    const offer = drv.deviceFeatures();
    for (const sel of HOSTILE) {
      drv.write(R.DEVICE_FEATURES_SEL, sel);
      assert.equal(drv.read(R.DEVICE_FEATURES), 0, `DeviceFeaturesSel ${sel.toString(16)}`);
    }
    assert.equal(drv.deviceFeatures(), offer);
    assert.ok(offer & (1n << VIRTIO_F_VERSION_1));
    drv.release();
  });

  test('DriverFeaturesSel out of range: DriverFeatures writes change nothing', () => {
    const { drv } = balloonDriver();
    drv.write(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    drv.write(R.DRIVER_FEATURES_SEL, 1);
    drv.write(R.DRIVER_FEATURES, 1); // VERSION_1
    const before = drv.transport.st.driverFeatures();
    for (const sel of HOSTILE.filter((s) => s > 1)) {
      drv.write(R.DRIVER_FEATURES_SEL, sel);
      drv.write(R.DRIVER_FEATURES, 0xffffffff);
    }
    assert.equal(drv.transport.st.driverFeatures(), before);
    drv.write(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    assert.ok(drv.status & STATUS.FEATURES_OK, 'VERSION_1 alone is still accepted');
    drv.release();
  });

  test('SHMSel: every region is non-existent, so length and base read as all ones', () => {
    const { drv } = balloonDriver();
    for (const sel of [0, 1, ...HOSTILE]) {
      drv.write(SHM_SEL, sel);
      for (const reg of [SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH])
        assert.equal(drv.read(reg), 0xffffffff, `register ${reg.toString(16)} with SHMSel ${sel.toString(16)}`);
    }
    drv.release();
  });
});

describe('virtio-mmio: the other guest-written registers', () => {
  test('hostile queue sizes and addresses are refused at DRIVER_OK with DEVICE_NEEDS_RESET, not a throw', () => {
    const bad: [number, number][] = [
      [R.QUEUE_NUM, 0x80000000],
      [R.QUEUE_NUM, 0xffffffff],
      [R.QUEUE_NUM, 0],
      [R.QUEUE_NUM, 3],
      [R.QUEUE_NUM, 0x10000],
      [R.QUEUE_DESC_HIGH, 0xffffffff],
      [R.QUEUE_DESC_LOW, 0xfffffff0],
      [R.QUEUE_DRIVER_HIGH, 0x80000000],
      [R.QUEUE_DEVICE_HIGH, 0x001fffff],
      [R.QUEUE_DEVICE_LOW, 0xffffffff],
    ];
    for (const [reg, v] of bad) {
      const drv = new MockMmioDriver(new VirtioRng(() => {}));
      assert.ok(drv.negotiate(drv.deviceFeatures()));
      drv.setupQueue(0, 16);
      drv.write(R.QUEUE_READY, 0); // reopen the queue for a rewrite: ready queues' registers are not touched
      drv.write(reg, v);
      drv.write(R.QUEUE_READY, 1);
      assert.doesNotThrow(() => drv.write(R.STATUS, drv.status | STATUS.DRIVER_OK));
      const st = drv.status;
      assert.equal(st & STATUS.DRIVER_OK, 0, `register ${reg.toString(16)} = ${v.toString(16)} refused`);
      assert.ok(st & STATUS.DEVICE_NEEDS_RESET);
      drv.release();
    }
  });

  test('Status: all ones does not throw, bits above the status byte are dropped, 0 resets', () => {
    const { drv } = balloonDriver();
    for (const v of [0x80000000, 0xffffff00, 0xffffffff]) {
      assert.doesNotThrow(() => drv.write(R.STATUS, v));
      assert.equal(drv.status & ~0xff, 0, `status after writing ${v.toString(16)}`);
    }
    assert.equal(drv.status & STATUS.DRIVER_OK, 0, 'DRIVER_OK without FEATURES_OK is refused');
    drv.write(R.STATUS, 0);
    assert.equal(drv.status, 0);
    drv.probe(16);
    assert.ok(drv.status & STATUS.DRIVER_OK, 'the device comes up after the reset');
    drv.release();
  });

  test('InterruptACK with all ones clears the status; read-only registers ignore writes', () => {
    const { drv } = balloonDriver();
    drv.probe(16);
    drv.side.configChanged();
    assert.notEqual(drv.read(R.INTERRUPT_STATUS), 0);
    const gen = drv.read(R.CONFIG_GENERATION);
    drv.write(R.INTERRUPT_ACK, 0xffffffff);
    assert.equal(drv.read(R.INTERRUPT_STATUS), 0);
    const before = readAllRegisters(drv);
    for (const reg of [R.MAGIC, R.VERSION, R.DEVICE_ID, 0x00c, R.DEVICE_FEATURES, R.QUEUE_NUM_MAX, R.INTERRUPT_STATUS])
      drv.write(reg, 0xffffffff);
    drv.write(R.CONFIG_GENERATION, 0x80000000);
    for (const reg of [SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH]) drv.write(reg, 0);
    assert.deepEqual(readAllRegisters(drv), before);
    assert.equal(drv.read(R.CONFIG_GENERATION), gen);
    drv.release();
  });

  test('QueueNotify with hostile values is ignored', () => {
    const { drv } = balloonDriver();
    drv.probe(16);
    for (const v of HOSTILE) assert.doesNotThrow(() => drv.write(R.QUEUE_NOTIFY, v));
    assert.ok(drv.status & STATUS.DRIVER_OK);
    assert.equal(drv.status & STATUS.DEVICE_NEEDS_RESET, 0);
    drv.release();
  });

  test('registers at odd sizes or unaligned offsets read 0 and writes change nothing', () => {
    const { drv } = balloonDriver();
    drv.negotiate(drv.deviceFeatures() | (1n << VIRTIO_F_VERSION_1));
    const before = stateBytes(drv);
    for (let o = 0; o < R.CONFIG; o++)
      for (const size of [1, 2, 3, 8]) {
        const d = new Uint8Array(size).fill(0xcc);
        drv.transport.read(o, d);
        assert.deepEqual([...d], new Array(size).fill(0), `read ${size} at ${o.toString(16)}`);
        drv.transport.write(o, new Uint8Array(size).fill(0xff));
      }
    for (let o = 1; o < R.CONFIG; o += 4) drv.transport.write(o, new Uint8Array(4).fill(0xff));
    assert.deepEqual(stateBytes(drv), before);
    drv.release();
  });
});

describe('virtio-mmio configuration space', () => {
  test('reads at every offset and size stay inside the window and read 0 past the device config', () => {
    const { drv } = balloonDriver();
    for (let o = R.CONFIG; o < MMIO_WINDOW; o++)
      for (const size of [1, 2, 4, 8]) {
        if (o + size > MMIO_WINDOW) continue;
        const d = new Uint8Array(size).fill(0xcc);
        drv.transport.read(o, d);
        if (o >= R.CONFIG + 8) assert.deepEqual([...d], new Array(size).fill(0), `read ${size} at ${o.toString(16)}`);
      }
    drv.release();
  });

  test('writes outside the writable field change nothing; the balloon actual is taken as a u32', () => {
    const { drv, control } = balloonDriver();
    drv.probe(16);
    const before = drv.readConfig(0, 8);
    for (let o = R.CONFIG; o < MMIO_WINDOW; o++)
      for (const size of [1, 2, 4, 8]) {
        if (o + size > MMIO_WINDOW) continue;
        const inActual = o >= R.CONFIG + 4 && o + size <= R.CONFIG + 8;
        if (!inActual) drv.transport.write(o, new Uint8Array(size).fill(0xff));
      }
    assert.deepEqual(drv.readConfig(0, 8), before);
    for (let o = R.CONFIG + 8; o < MMIO_WINDOW; o += 8)
      assert.deepEqual([...drv.readConfig(o - R.CONFIG, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
    drv.transport.write(R.CONFIG + 4, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
    assert.equal(control.actualMiB(), (0xffffffff * BALLOON_PAGE) / (1024 * 1024), 'all ones is 2^32-1 pages, not -1');
    drv.transport.write(R.CONFIG + 4, Uint8Array.of(0, 0, 0, 0x80));
    assert.equal(control.actualMiB(), (0x80000000 * BALLOON_PAGE) / (1024 * 1024));
    drv.release();
  });
});

describe('virtio-mmio property', () => {
  const access = fc.record({
    offset: fc.oneof(fc.integer({ min: 0, max: 0x0ff }), fc.integer({ min: 0, max: MMIO_WINDOW - 1 })),
    size: fc.constantFrom(1, 2, 4, 8),
    value: fc.oneof(fc.constantFrom(...HOSTILE, 0, 1, 0xf, 0xff), fc.integer({ min: 0, max: 0xffffffff })),
    write: fc.boolean(),
  });

  test('any sequence of accesses through the bus: no throw, and the spec answers for selected things', () => {
    fc.assert(
      fc.property(fc.array(access, { maxLength: 60 }), (ops) => {
        const { drv } = balloonDriver();
        try {
          const bus = new Bus('mmio');
          bus.insert(0, MMIO_WINDOW, 'balloon', drv.transport);
          const n = drv.device.queueMaxSizes.length;
          for (const op of ops) {
            const d = new Uint8Array(op.size);
            for (let i = 0; i < op.size; i++) d[i] = (op.value / 256 ** (i % 4)) & 0xff;
            if (op.write) bus.write(op.offset, d);
            else bus.read(op.offset, d);
          }
          assert.equal(drv.read(R.MAGIC), MMIO_MAGIC);
          const sel = drv.transport.st.s.u32('queueSel');
          assert.equal(drv.read(R.QUEUE_NUM_MAX), sel < n ? drv.device.queueMaxSizes[sel] : 0);
          if (sel >= n) assert.equal(drv.read(R.QUEUE_READY), 0);
          if (drv.transport.st.s.u32('deviceFeaturesSel') > 1) assert.equal(drv.read(R.DEVICE_FEATURES), 0);
          assert.equal(drv.read(SHM_LEN_LOW), 0xffffffff);
          assert.equal(drv.status & ~0xff, 0);
          // Whatever the guest did, a reset and a full probe bring the device up.
          drv.write(R.STATUS, 0);
          drv.probe(16);
          assert.ok(drv.status & STATUS.DRIVER_OK);
        } finally {
          drv.release();
        }
      }),
      { numRuns: 300 },
    );
  });
});
