/**
 * Restored device state (the QEMU class "unvalidated restored state"): a snapshot's body passes its
 * schema (src/snapshot/body-schema.ts) with any u16 queue position and any bytes of the right size for
 * a device's registers, so what a restore must survive is exactly that. A case runs a well-behaved
 * driver on a device, saves the transport's register bytes and the device side's state as a snapshot
 * does (src/vmm/vm.ts), bends them (register words, layouts and queue sizes among them; positions,
 * in-flight counts, generations, the active and broken flags), and restores them into a fresh device
 * and device side over a copy of the guest's RAM, as Vm.restore does; then every queue is notified.
 * Guest memory is audited as in the device targets, and afterwards a well-behaved driver must be served.
 */
import fc from 'fast-check';
import { SharedState } from '../../src/common/shared-state.js';
import type { DeviceSideState } from '../../src/devices/virtio/mmio.js';
import type { QueuePosition } from '../../src/devices/virtio/queue.js';
import { RecordingMemory } from '../support/mock-virtq.js';
import { MockMmioDriver } from '../support/virtio-driver.js';
import { crash, isClean, OK, oob, refused, target, type Verdict } from './harness.js';
import { balloonFuzz, blkFuzz, type DeviceFuzz, netFuzz, observed, outsideRam, probe, RAM, rngFuzz } from './virtio.js';

const DEVICES: DeviceFuzz<never>[] = [
  rngFuzz,
  blkFuzz(false),
  netFuzz as unknown as DeviceFuzz<never>,
  balloonFuzz as unknown as DeviceFuzz<never>,
];

const u16 = fc.oneof(fc.constantFrom(0, 1, 15, 16, 17, 0x7fff, 0x8000, 0xfffe, 0xffff), fc.nat(0xffff));
const u32 = fc.oneof(fc.constantFrom(0, 1, 2, 0x7fffffff, 0x80000000, 0xffffffff), fc.nat());
const position: fc.Arbitrary<QueuePosition> = fc.record({
  nextAvail: u16,
  nextUsed: u16,
  signalledUsed: u16,
  inFlight: u16,
});

interface RestoreCase {
  device: number;
  /** Well-behaved requests before the snapshot. */
  served: number;
  words: { index: number; value: number }[];
  side: {
    gens: (number | null)[];
    active: boolean | null;
    broken: boolean | null;
    positions: ({ at: number; p: QueuePosition | null } | null)[];
  };
}

const caseArb: fc.Arbitrary<RestoreCase> = fc.record({
  device: fc.nat(DEVICES.length - 1),
  served: fc.nat(3),
  words: fc.array(fc.record({ index: fc.nat(), value: u32 }), { maxLength: 6 }),
  side: fc.record({
    gens: fc.array(fc.option(u32, { freq: 3, nil: null }), { minLength: 3, maxLength: 3 }),
    active: fc.option(fc.boolean(), { freq: 3, nil: null }),
    broken: fc.option(fc.boolean(), { freq: 3, nil: null }),
    positions: fc.array(
      fc.option(fc.record({ at: fc.nat(8), p: fc.option(position, { freq: 5, nil: null }) }), { freq: 2, nil: null }),
      { maxLength: 3 },
    ),
  }),
});

/** A driver over `d`'s device whose device side sees guest memory through a RecordingMemory. */
function audited(d: DeviceFuzz<never>, errors: unknown[]) {
  const rig = d.rig();
  let mem: RecordingMemory | undefined;
  const drv = new MockMmioDriver(observed(rig.device, errors), RAM, false, (regions) => {
    mem = new RecordingMemory(regions);
    return mem;
  });
  (mem as RecordingMemory).budget = 200_000;
  return { rig, drv, mem: mem as RecordingMemory };
}

export const restoreTarget = target(
  'restored-device-state',
  // The slowest target per case: two fresh devices, transports and 1 MiB guest mappings (the restore
  // must start from nothing, as Vm.restore's I/O thread does) and a copy of RAM, ~1.6 ms a case here;
  // 10k take ~16 s of test/fuzz.test.ts's budget.
  10_000,
  () => ({
    arbitrary: caseArb,
    run(c: RestoreCase): Verdict {
      const d = DEVICES[c.device] as DeviceFuzz<never>;
      const errors: unknown[] = [];
      const src = audited(d, errors);
      const dst = audited(d, errors);
      try {
        // The VM that took the snapshot: probed and served, then its registers and side saved.
        if (!probe(src.drv, d.queues, src.drv.deviceFeatures() | (1n << 32n)))
          return crash(new Error('the source probe was refused'));
        for (let i = 0; i < c.served; i++) {
          const sick = src.rig.health?.(src.drv);
          if (sick !== undefined) return crash(new Error(`before the snapshot: ${sick}`));
        }
        const bytes = new Uint8Array(src.drv.spec.state.slice(0));
        const side: DeviceSideState = src.drv.side.save();
        // The snapshot, bent within what its schema allows.
        const dv = new DataView(bytes.buffer);
        for (const w of c.words) dv.setUint32(4 * (w.index % (bytes.length / 4)), w.value >>> 0, true);
        const [ag, rg, cw] = c.side.gens;
        if (ag != null) side.activeGen = ag;
        if (rg != null) side.resetGen = rg;
        if (cw != null) side.configWrites = cw;
        if (c.side.active !== null) side.active = c.side.active;
        if (c.side.broken !== null) side.broken = c.side.broken;
        for (const e of c.side.positions) if (e !== null) side.positions[e.at % 8] = e.p;
        // The restore: RAM from the memory file, registers into the shared buffer, then the side.
        dst.drv.mem.write(0, src.drv.mem.readView(0, RAM));
        SharedState.restore(dst.drv.spec.state, bytes); // what Vm.restore's copyInto does
        src.mem.take();
        dst.mem.take();
        try {
          dst.drv.side.restore(side);
        } catch (e) {
          if (!isClean(e)) return crash(e);
        }
        dst.drv.side.poll();
        for (let q = 0; q < d.queues; q++) dst.drv.notify(q);
        let verdict: Verdict = dst.drv.status & 64 ? refused(`NEEDS_RESET: ${dst.drv.side.lastError}`) : OK;
        const bad = errors.find((e) => !isClean(e));
        if (bad !== undefined) return crash(bad);
        const out = outsideRam(dst.mem.take()) ?? dst.rig.audit?.();
        if (out !== undefined) return oob(out);
        // A driver that resets the restored device gets a working one.
        dst.drv.mem.fill(0, RAM);
        if (!probe(dst.drv, d.queues, dst.drv.deviceFeatures() | (1n << 32n)))
          return crash(new Error('a well-behaved probe was refused after the restore'));
        const sick = dst.rig.health?.(dst.drv);
        if (sick !== undefined) return crash(new Error(`after the restore: ${sick}`));
        const late = errors.find((e) => !isClean(e));
        if (late !== undefined) return crash(late);
        const out2 = outsideRam(dst.mem.take());
        if (out2 !== undefined) verdict = oob(out2);
        return verdict;
      } catch (e) {
        return crash(e);
      } finally {
        src.rig.close?.();
        dst.rig.close?.();
        src.drv.release();
        dst.drv.release();
      }
    },
  }),
);
