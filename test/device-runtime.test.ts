/**
 * Device state the VMM reads or changes while the guest runs. Live counters: the real I/O thread
 * serves a virtio-rng that a mock driver on this thread drives through the transport's registers (the
 * way vCPU threads do: notifications through the queue eventfds), and the counters grow as requests
 * complete — read through VirtioDevices.liveCounters() and Vm.deviceCounters(), not at exit. The
 * balloon's statistics interval changes at run time (node:test's mock timers count the requests). With
 * /dev/kvm: a running VM's Ctrl+Alt+Del and statistics-interval rules. A virtio-blk drive on a qcow2
 * overlay, opened by the device manager as a VM's drives are and served by the real I/O thread: what
 * the driver writes reads back, the base shows through elsewhere, and after the VM's devices stop the
 * overlay passes qemu-img check and compare.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, mock, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createQcow2Overlay } from '../src/backends/qcow2/create.js';
import type { VireoError } from '../src/common/errors.js';
import { BalloonControl } from '../src/devices/virtio/balloon.js';
import { VIRTIO_BLK_S, VIRTIO_BLK_T } from '../src/devices/virtio/block.js';
import { STATUS, VIRTIO_F_VERSION_1 } from '../src/devices/virtio/device.js';
import { VirtioMmioTransport } from '../src/devices/virtio/transport/mmio.js';
import type { Vm as KvmVm } from '../src/kvm/kvm.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import * as sys from '../src/os/sys.js';
import { SharedCounters } from '../src/vmm/device-counters.js';
import { VirtioDevices } from '../src/vmm/virtio-devices.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { MockSplitQueue } from './support/mock-virtq.js';
import { qemu, qemuCheck, qemuContent } from './support/qcow2.js';
import { kvmSkipReason } from './support/vireo.js';
import { R } from './support/virtio-driver.js';

/** KVM's part of the device manager, refused: interrupts go to an unread eventfd, notifications through the transport. */
const noKvm = {
  irqfd: () => {},
  ioeventfd: () => {
    throw new Error('no ioeventfd in this test');
  },
} as unknown as KvmVm;

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`gave up waiting for ${what}`);
    await sleep(5);
  }
}

describe('SharedCounters', () => {
  test('values published by one side are read by another over the same buffer, past 2^32', () => {
    const w = new SharedCounters(['a', 'b', 'c']);
    const r = new SharedCounters(['a', 'b', 'c'], w.buffer);
    assert.deepEqual(r.read(), { a: 0, b: 0, c: 0 });
    w.publish({ a: 1, b: 2 ** 40 + 3 });
    assert.deepEqual(r.read(), { a: 1, b: 2 ** 40 + 3, c: 0 });
    w.publish({ a: 2, b: 2 ** 40 + 3, c: 7 });
    assert.deepEqual(r.read(), { a: 2, b: 2 ** 40 + 3, c: 7 });
  });
});

describe('live device counters from the I/O thread', () => {
  test('a virtio-rng served by the I/O thread: counters grow while it runs and match the final ones', async () => {
    const devices = new VirtioDevices(noKvm);
    const mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: 4 << 20 }]);
    after(() => mapping.release());
    try {
      devices.addAll({ rng: true });
      const slot = devices.slots[0];
      assert.ok(slot);
      assert.deepEqual(slot.counterNames, ['requests', 'bytes', 'malformed', 'rateLimited', 'protocolErrors']);
      await devices.start(mapping.descriptors, true);
      const mem = new GuestMemory(mapping.descriptors);
      const t = new VirtioMmioTransport(slot.mmio, mem, {
        notifyQueue: (q) => sys.eventfdWrite(slot.queueFds[q] as number),
        wake: () => sys.eventfdWrite(devices.controlFd),
        interrupt: () => sys.eventfdWrite(slot.irqFd),
      });
      const w32 = (reg: number, v: number): void => {
        const b = new Uint8Array(4);
        new DataView(b.buffer).setUint32(0, v >>> 0, true);
        t.write(reg, b);
      };
      const r32 = (reg: number): number => {
        const b = new Uint8Array(4);
        t.read(reg, b);
        return new DataView(b.buffer).getUint32(0, true);
      };
      // The probe Linux's virtio_mmio does: status handshake, VERSION_1, one queue, DRIVER_OK.
      w32(R.STATUS, 0);
      w32(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
      w32(R.DRIVER_FEATURES_SEL, 1);
      w32(R.DRIVER_FEATURES, Number(1n << (VIRTIO_F_VERSION_1 - 32n)));
      w32(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
      const layout = MockSplitQueue.packed(16, 0x10000);
      w32(R.QUEUE_SEL, 0);
      w32(R.QUEUE_NUM, 16);
      w32(R.QUEUE_DESC_LOW, layout.desc);
      w32(R.QUEUE_DRIVER_LOW, layout.avail);
      w32(R.QUEUE_DEVICE_LOW, layout.used);
      w32(R.QUEUE_READY, 1);
      const q = new MockSplitQueue(mem, layout);
      w32(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
      assert.equal(r32(R.STATUS) & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
      const rng = () => devices.liveCounters()['virtio-rng'] ?? {};
      assert.equal(rng().bytes, 0);

      q.addChain([{ addr: 0x20000, len: 64, write: true }]);
      w32(R.QUEUE_NOTIFY, 0);
      await until('64 bytes counted', () => rng().bytes === 64);
      assert.equal(rng().requests, 1);
      q.addChain([{ addr: 0x21000, len: 100, write: true }]);
      q.addChain([{ addr: 0x22000, len: 36, write: true }]);
      w32(R.QUEUE_NOTIFY, 0);
      await until('200 bytes counted', () => rng().bytes === 200);
      assert.equal(rng().requests, 3);
      assert.equal(q.takeUsed().length, 3, 'the driver got its buffers back');
      const live = devices.liveCounters();
      await devices.stop();
      assert.deepEqual(devices.finalCounters, live, 'the final counters are the live ones');
      assert.deepEqual(devices.liveCounters(), live, 'and read the same after the I/O thread stopped');
    } finally {
      await devices.stop();
    }
  });
});

describe('virtio-blk on a qcow2 overlay, served by the I/O thread', () => {
  test('writes, a flush and reads through the transport; the overlay then passes qemu-img check and compare', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vireo-blk-qcow2-'));
    const devices = new VirtioDevices(noKvm);
    const mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: 4 << 20 }]);
    after(() => {
      mapping.release();
      rmSync(dir, { recursive: true, force: true });
    });
    try {
      const base = Buffer.alloc(2 << 20);
      for (let s = 0; s < base.length / 512; s++) base.fill(s & 0xff, s * 512, s * 512 + 512);
      writeFileSync(join(dir, 'base.raw'), base);
      const overlay = join(dir, 'clone.qcow2');
      createQcow2Overlay(overlay, join(dir, 'base.raw'));
      devices.addAll({ drives: [{ id: 'clone', path: overlay }] });
      const slot = devices.slots[0];
      assert.ok(slot);
      await devices.start(mapping.descriptors, true);
      const mem = new GuestMemory(mapping.descriptors);
      const t = new VirtioMmioTransport(slot.mmio, mem, {
        notifyQueue: (q) => sys.eventfdWrite(slot.queueFds[q] as number),
        wake: () => sys.eventfdWrite(devices.controlFd),
        interrupt: () => sys.eventfdWrite(slot.irqFd),
      });
      const w32 = (reg: number, v: number): void => {
        const b = new Uint8Array(4);
        new DataView(b.buffer).setUint32(0, v >>> 0, true);
        t.write(reg, b);
      };
      const r32 = (reg: number): number => {
        const b = new Uint8Array(4);
        t.read(reg, b);
        return new DataView(b.buffer).getUint32(0, true);
      };
      assert.equal(r32(R.DEVICE_ID), 2, 'a block device');
      const capacity = (): number => r32(R.CONFIG) + r32(R.CONFIG + 4) * 2 ** 32;
      assert.equal(capacity(), base.length / 512, "the overlay has the base's size");
      w32(R.STATUS, 0);
      w32(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
      w32(R.DEVICE_FEATURES_SEL, 0);
      const features = r32(R.DEVICE_FEATURES);
      w32(R.DRIVER_FEATURES_SEL, 0);
      w32(R.DRIVER_FEATURES, features & (1 << 9)); // VIRTIO_BLK_F_FLUSH
      w32(R.DRIVER_FEATURES_SEL, 1);
      w32(R.DRIVER_FEATURES, Number(1n << (VIRTIO_F_VERSION_1 - 32n)));
      w32(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
      const layout = MockSplitQueue.packed(16, 0x10000);
      w32(R.QUEUE_SEL, 0);
      w32(R.QUEUE_NUM, 16);
      w32(R.QUEUE_DESC_LOW, layout.desc);
      w32(R.QUEUE_DRIVER_LOW, layout.avail);
      w32(R.QUEUE_DEVICE_LOW, layout.used);
      w32(R.QUEUE_READY, 1);
      const q = new MockSplitQueue(mem, layout);
      w32(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);

      let done = 0;
      const HDR = 0x20000;
      const DATA = 0x40000;
      const STATUS_AT = 0x30000;
      /** One request: header, data (len > 0), status; waits for its answer and returns the status. */
      const request = async (type: number, sector: number, len: number, deviceWrites: boolean): Promise<number> => {
        const hdr = new DataView(new ArrayBuffer(16));
        hdr.setUint32(0, type, true);
        hdr.setBigUint64(8, BigInt(sector), true);
        mem.write(HDR, new Uint8Array(hdr.buffer));
        mem.write8(STATUS_AT, 0xff);
        const chain = [{ addr: HDR, len: 16, write: false }];
        if (len > 0) chain.push({ addr: DATA, len, write: deviceWrites });
        chain.push({ addr: STATUS_AT, len: 1, write: true });
        assert.notEqual(q.addChain(chain), undefined, 'room in the queue');
        w32(R.QUEUE_NOTIFY, 0);
        done++;
        await until(
          `request ${done} answered`,
          () =>
            (devices.liveCounters()['virtio-blk:clone']?.reads ?? 0) +
              (devices.liveCounters()['virtio-blk:clone']?.writes ?? 0) +
              (devices.liveCounters()['virtio-blk:clone']?.flushes ?? 0) >=
            done,
        );
        for (const u of q.takeUsed()) q.recycle(u.id);
        return mem.read8(STATUS_AT);
      };
      const expected = Buffer.from(base);
      // 8 sectors at sector 100 (inside the overlay's first cluster: a copy-on-write of the base's), and
      // 128 KiB across a cluster boundary further on.
      const a = Buffer.alloc(8 * 512, 0xa5);
      mem.write(DATA, a);
      assert.equal(await request(VIRTIO_BLK_T.OUT, 100, a.length, false), VIRTIO_BLK_S.OK);
      a.copy(expected, 100 * 512);
      const b = Buffer.alloc(128 * 1024);
      for (let i = 0; i < b.length; i++) b[i] = (i * 13) & 0xff;
      mem.write(DATA, b);
      assert.equal(await request(VIRTIO_BLK_T.OUT, 1000, b.length, false), VIRTIO_BLK_S.OK);
      b.copy(expected, 1000 * 512);
      assert.equal(await request(VIRTIO_BLK_T.FLUSH, 0, 0, false), VIRTIO_BLK_S.OK);
      // Read back across what was written and what still comes from the base.
      for (const [sector, sectors] of [
        [96, 16],
        [990, 300],
        [3000, 64],
      ] as const) {
        mem.write(DATA, new Uint8Array(sectors * 512));
        assert.equal(await request(VIRTIO_BLK_T.IN, sector, sectors * 512, true), VIRTIO_BLK_S.OK);
        assert.ok(
          Buffer.from(mem.read(DATA, sectors * 512)).equals(expected.subarray(sector * 512, (sector + sectors) * 512)),
          `sectors ${sector}+${sectors} read what the disk holds`,
        );
      }
      await devices.stop();
      const c = qemuCheck(overlay);
      assert.ok(c.clean, c.out);
      writeFileSync(join(dir, 'expected.raw'), expected);
      qemu('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', overlay, join(dir, 'expected.raw')]);
      assert.ok(qemuContent(overlay, join(dir, 'out.raw')).equals(expected));
      assert.ok(readFileSync(join(dir, 'base.raw')).equals(base), 'the base is untouched');
    } finally {
      await devices.stop();
    }
  });
});

describe('balloon statistics interval at run time', () => {
  test('the stats timer follows setStatsInterval (mock timers)', async () => {
    mock.timers.enable({ apis: ['setInterval'] });
    const devices = new VirtioDevices(noKvm);
    try {
      devices.addAll({ balloon: { amountMiB: 0, deflateOnOom: false, statsPollingIntervalS: 5 } });
      const b = devices.balloon as BalloonControl;
      assert.ok(b instanceof BalloonControl);
      const requests = () => b.s.get('statsRequests');
      mock.timers.tick(4999);
      assert.equal(requests(), 0);
      mock.timers.tick(1);
      assert.equal(requests(), 1, 'every 5 s as configured');
      devices.setStatsInterval(2);
      mock.timers.tick(2000);
      assert.equal(requests(), 2, 'then every 2 s');
      mock.timers.tick(2000);
      assert.equal(requests(), 3);
      mock.timers.tick(999);
      assert.equal(requests(), 3);
      await devices.stop();
      mock.timers.tick(10_000);
      assert.equal(requests(), 3, 'no requests once stopped');
    } finally {
      mock.timers.reset();
      await devices.stop();
    }
  });
});

describe('a running VM', { skip: kvmSkipReason() }, () => {
  test('Ctrl+Alt+Del only once started; the statistics interval only changes when enabled at boot', async () => {
    const make = (stats: number) =>
      Vm.create({
        kernel: guestPath('modes64'),
        cmdline: 'e',
        memMiB: 16,
        serial: { kind: 'none' },
        balloon: { amountMiB: 0, deflateOnOom: false, statsPollingIntervalS: stats },
      });
    const vm = await make(1);
    try {
      assert.throws(
        () => vm.sendCtrlAltDel(),
        (e: VireoError) => e.code === 'VIREO_ERR_STATE' && /start it/.test(e.message),
      );
      vm.start();
      // The echo guest (interrupts off) never reads the i8042: two sequences fit its 16-byte buffer.
      vm.sendCtrlAltDel();
      vm.sendCtrlAltDel();
      assert.throws(() => vm.sendCtrlAltDel(), /has not read the previous keys/);
      vm.setBalloonStatsInterval(3);
      assert.equal(vm.config.balloon?.statsPollingIntervalS, 3);
      vm.setBalloonStatsInterval(3);
      assert.throws(() => vm.setBalloonStatsInterval(0), /cannot enable or disable balloon statistics after boot/);
      assert.throws(() => vm.setBalloonStatsInterval(1.5), /whole number/);
      assert.throws(() => vm.setBalloonStatsInterval(65536), /up to 65535/);
      assert.ok('virtio-balloon' in vm.deviceCounters(), 'device counters are there while it runs');
    } finally {
      await vm.stop();
    }
    const off = await make(0);
    try {
      off.start();
      off.setBalloonStatsInterval(0);
      assert.throws(() => off.setBalloonStatsInterval(2), /cannot enable or disable/);
    } finally {
      await off.stop();
    }
  });
});
