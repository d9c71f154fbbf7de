/**
 * The format-2 layouts frozen in src/snapshot/v2.ts are exact: today's devices still lay out their
 * shared buffers as format 2 did, so the raw bytes of a device driven at random, converted by v2.ts,
 * must give the very record the device's own save() gives. (When a device's layout changes, its
 * record does not, and this test is then fixed to the fixture alone: v2.ts must not follow.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Cmos, createCmosState } from '../src/devices/legacy/cmos.js';
import { saveCmosState } from '../src/devices/legacy/cmos-state.js';
import { createI8042State, I8042 } from '../src/devices/legacy/i8042.js';
import { saveI8042State } from '../src/devices/legacy/i8042-state.js';
import { createPostCodeState, PostCode } from '../src/devices/legacy/post-code.js';
import { savePostCodeState } from '../src/devices/legacy/post-code-state.js';
import { createSerialState, Serial16550 } from '../src/devices/legacy/serial.js';
import { saveSerialState } from '../src/devices/legacy/serial-state.js';
import { BalloonControl, VirtioBalloon } from '../src/devices/virtio/balloon.js';
import { saveBalloonControlState } from '../src/devices/virtio/balloon-control-state.js';
import { saveTransportState } from '../src/devices/virtio/transport/common-state.js';
import { upgradeV2Body } from '../src/snapshot/v2.js';
import { MockMmioDriver } from './support/virtio-driver.js';

/** A shared buffer's bytes as format 2 stored them (base64). */
const raw = (s: { buffer: SharedArrayBuffer } | SharedArrayBuffer): string =>
  Buffer.from(new Uint8Array((s instanceof SharedArrayBuffer ? s : s.buffer).slice(0))).toString('base64');
const port = fc.record({
  offset: fc.integer({ min: 0, max: 7 }),
  v: fc.integer({ min: 0, max: 255 }),
  read: fc.boolean(),
});

test('property: the v2 conversion of the legacy devices gives what their own save() gives', () => {
  fc.assert(
    fc.property(
      fc.array(port, { maxLength: 60 }),
      fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 300 }),
      fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 100 }),
      (ops, input, codes) => {
        const serial = createSerialState();
        const uart = new Serial16550(serial, { set: () => {} }, { write: () => {} });
        const kbdState = createI8042State();
        const kbd = new I8042(() => {}, kbdState);
        const cmosState = createCmosState();
        const cmos = new Cmos(cmosState, () => 1_700_000_000_000);
        const post = createPostCodeState();
        for (const o of ops) {
          const d = Uint8Array.of(o.v);
          if (o.read) uart.read(o.offset, d);
          else uart.write(o.offset, d);
          if (o.read) kbd.read(o.offset % 2 === 0 ? 0 : 4, d);
          else kbd.write(o.offset % 2 === 0 ? 0 : 4, d);
          cmos.write(o.offset % 2, Uint8Array.of(o.v));
        }
        uart.enqueueInput(Uint8Array.from(input));
        kbd.injectCtrlAltDel();
        for (const c of codes) new PostCode(post).write(0, Uint8Array.of(c));
        const body = {
          devices: { serial: raw(serial), postCode: raw(post), i8042: raw(kbdState), cmos: raw(cmosState), virtio: [] },
        } as Record<string, unknown>;
        upgradeV2Body(body);
        const d = body.devices as Record<string, unknown>;
        assert.deepEqual(d.serial, saveSerialState(serial));
        assert.deepEqual(d.postCode, savePostCodeState(post));
        assert.deepEqual(d.i8042, saveI8042State(kbdState));
        assert.deepEqual(d.cmos, saveCmosState(cmosState));
      },
    ),
  );
});

test('the v2 conversion of a live virtio transport and the balloon control gives their own records', () => {
  const control = new BalloonControl();
  control.setTargetMiB(3);
  control.requestStats();
  control.recordStat(5, 1 << 30);
  const drv = new MockMmioDriver(new VirtioBalloon(control, () => {}, { deflateOnOom: false, stats: true }));
  try {
    drv.probe(16);
    const side = drv.side.save();
    const body = {
      config: { balloon: { amountMiB: 3, deflateOnOom: false, statsPollingIntervalS: 5 } },
      devices: {
        serial: raw(createSerialState()),
        postCode: raw(createPostCodeState()),
        cmos: raw(createCmosState()),
        virtio: [{ name: 'virtio-balloon', mmio: raw(drv.spec.state), side }],
        balloon: raw(control),
      },
    } as Record<string, unknown>;
    upgradeV2Body(body);
    const d = body.devices as { virtio: { mmio: unknown }[]; balloon: unknown; i8042: unknown };
    assert.deepEqual(d.virtio[0]?.mmio, saveTransportState(drv.spec));
    assert.deepEqual(d.balloon, saveBalloonControlState(control));
    assert.deepEqual(d.i8042, saveI8042State(createI8042State()), 'an absent i8042 (older v2 files): as at power-on');
  } finally {
    drv.release();
  }
});
