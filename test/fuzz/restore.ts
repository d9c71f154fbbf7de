/**
 * Restored device state (the QEMU class "unvalidated restored state"), through the records a format-3
 * snapshot keeps: a case runs a well-behaved driver on a device, saves the transport's record
 * (transport/common-state.ts), the device side's (transport/runner-state.ts, with the device's own
 * record) and, for the balloon, its host control's (balloon-control-state.ts), as a snapshot does; bends them (register
 * fields, queue sizes and addresses, generations, positions, in-flight counts, the active and broken
 * flags, the device's own fields at and past their ranges; any JSON edit); and restores them the way
 * Vm.restore does: the body check (body-schema.ts) over every record, the transport's record into a
 * fresh device's shared registers, the balloon's control, then, on the I/O thread, the side, a poll and
 * every queue notified. A refusal anywhere (a SnapshotError) ends the case as the restore would. What
 * was restored must snapshot again into records the check accepts; guest memory is audited as in the
 * device targets, and afterwards a well-behaved driver must be served.
 */
import fc from 'fast-check';
import { type Check, checkRecord } from '../../src/common/schema.js';
import {
  checkBalloonControlState,
  restoreBalloonControlState,
  saveBalloonControlState,
} from '../../src/devices/virtio/balloon-control-state.js';
import { checkBalloonState } from '../../src/devices/virtio/balloon-state.js';
import { checkBlockState } from '../../src/devices/virtio/block-state.js';
import { checkNetState } from '../../src/devices/virtio/net-state.js';
import type { QueuePosition } from '../../src/devices/virtio/queue.js';
import { checkRngState } from '../../src/devices/virtio/rng-state.js';
import {
  checkTransportState,
  restoreTransportState,
  saveTransportState,
} from '../../src/devices/virtio/transport/common-state.js';
import type { RunnerState } from '../../src/devices/virtio/transport/runner-state.js';
import { runnerStateCheck } from '../../src/devices/virtio/transport/runner-state.js';
import { RecordingMemory } from '../support/mock-virtq.js';
import { MockMmioDriver } from '../support/virtio-driver.js';
import { crash, isClean, OK, oob, refused, target, type Verdict } from './harness.js';
import { applyEdits, type Edit, editArb, type Json } from './json-mutate.js';
import { recordValues } from './legacy.js';
import { balloonFuzz, blkFuzz, type DeviceFuzz, netFuzz, observed, outsideRam, probe, RAM, rngFuzz } from './virtio.js';

const DEVICES: DeviceFuzz<never>[] = [
  rngFuzz,
  blkFuzz(false),
  netFuzz as unknown as DeviceFuzz<never>,
  balloonFuzz as unknown as DeviceFuzz<never>,
];
/** Each kind's own record check, as body-schema.ts takes it by the slot name's kind. */
const DEVICE_RECORDS: Record<string, Check> = {
  'virtio-rng': checkRngState,
  'virtio-blk': checkBlockState,
  'virtio-net': checkNetState,
  'virtio-balloon': checkBalloonState,
};

const u16 = fc.oneof(fc.constantFrom(0, 1, 15, 16, 17, 0x7fff, 0x8000, 0xfffe, 0xffff), fc.nat(0xffff));
/** The generations are int32 slots: the side record keeps them as read, negative past 2^31. */
const i32 = fc.oneof(
  fc.constantFrom(0, 1, 2, -1, -2, 0x7fffffff, -0x80000000),
  fc.integer({ min: -0x80000000, max: 0x7fffffff }),
);
const position: fc.Arbitrary<QueuePosition> = fc.record({
  nextAvail: u16,
  nextUsed: u16,
  signalledUsed: u16,
  inFlight: fc.oneof(u16, fc.constantFrom(0x8000)),
});

/** Transport record values of each field's own type, within its range where the check has one. */
const NEAR_NUMBERS = [0, 1, 2, 3, 15, 16, 17, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];
const NEAR_HEX = ['', '00', '01', 'ff'.repeat(8), 'ff'.repeat(256), '00'.repeat(255)];
function near(current: Json, n: number): Json {
  if (typeof current === 'boolean') return n % 2 === 0 ? !current : current;
  if (typeof current === 'number') return NEAR_NUMBERS[n % NEAR_NUMBERS.length] as number;
  if (typeof current === 'string') return NEAR_HEX[n % NEAR_HEX.length] as string;
  return current;
}

/** A transport record field replaced: `queue` null a register, else a field of queue `queue`. */
interface MmioEdit {
  queue: number | null;
  field: number;
  /** null: a value of the field's own type (`near` picks it). */
  value: Json | null;
  near: number;
}
const mmioEdit: fc.Arbitrary<MmioEdit> = fc.record({
  queue: fc.option(fc.nat(3), { freq: 2, nil: null }),
  field: fc.nat(),
  value: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: recordValues }),
  near: fc.nat(),
});

interface RestoreCase {
  device: number;
  /** Well-behaved requests before the snapshot. */
  served: number;
  mmio: MmioEdit[];
  side: {
    gens: (number | null)[];
    active: boolean | null;
    broken: boolean | null;
    positions: ({ at: number; p: QueuePosition | null } | null)[];
    /** The device's own record: a field replaced (the balloon's are u32 or null). */
    device: { field: number; value: Json } | null;
  };
  /** The balloon's control record: a field replaced. */
  control: { field: number; value: Json } | null;
  /** Edits anywhere in the records, last. */
  edits: Edit[];
}

const caseArb: fc.Arbitrary<RestoreCase> = fc.record({
  device: fc.nat(DEVICES.length - 1),
  served: fc.nat(3),
  mmio: fc.array(mmioEdit, { maxLength: 4 }),
  side: fc.record({
    gens: fc.array(
      fc.oneof(
        { weight: 12, arbitrary: fc.constant(null) },
        { weight: 7, arbitrary: i32 },
        { weight: 1, arbitrary: fc.constantFrom(0x80000000, 0xffffffff, 1.5) },
      ),
      { minLength: 3, maxLength: 3 },
    ),
    active: fc.option(fc.boolean(), { freq: 3, nil: null }),
    broken: fc.option(fc.boolean(), { freq: 3, nil: null }),
    positions: fc.array(
      fc.option(fc.record({ at: fc.nat(8), p: fc.option(position, { freq: 5, nil: null }) }), { freq: 2, nil: null }),
      { maxLength: 3 },
    ),
    device: fc.option(
      fc.record({
        field: fc.nat(),
        value: fc.oneof(fc.constantFrom<Json>(null, 0, 1, 256, 0xffffffff), recordValues),
      }),
      { freq: 3, nil: null },
    ),
  }),
  control: fc.option(
    fc.record({ field: fc.nat(), value: fc.oneof(fc.constantFrom<Json>(0, 1, 256, 0xffffffff), recordValues) }),
    { freq: 3, nil: null },
  ),
  edits: fc.oneof(
    { weight: 5, arbitrary: fc.constant<Edit[]>([]) },
    { weight: 1, arbitrary: fc.array(editArb(recordValues), { minLength: 1, maxLength: 2 }) },
  ),
});

/** Replaces the `field`th key's value of `rec` (an object), if it has keys other than `version`. */
function replaceField(rec: Json, field: number, value: Json): void {
  if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) return;
  const keys = Object.keys(rec).filter((k) => k !== 'version');
  const key = keys[field % Math.max(keys.length, 1)];
  if (key !== undefined) rec[key] = structuredClone(value);
}

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

/** Runs a restore step: a clean error is the restore's refusal (undefined: it went on). */
function step(fn: () => void): Verdict | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return isClean(e) ? refused(String((e as Error).message)) : crash(e);
  }
}

export const restoreTarget = target(
  'restored-device-state',
  // The slowest target per case: two fresh devices, transports and 1 MiB guest mappings (the restore
  // must start from nothing, as Vm.restore's I/O thread does) and a copy of RAM, ~0.6-1 ms a case here
  // (a refused record ends it early); 10k take 6-10 s of test/fuzz.test.ts's budget.
  10_000,
  () => ({
    arbitrary: caseArb,
    run(c: RestoreCase): Verdict {
      const d = DEVICES[c.device] as DeviceFuzz<never>;
      const kind = DEVICE_RECORDS[d.name] as Check;
      const sideCheck = runnerStateCheck(kind);
      const errors: unknown[] = [];
      const src = audited(d, errors);
      const dst = audited(d, errors);
      try {
        // The VM that took the snapshot: probed and served, then its records saved (Vm.snapshot).
        if (!probe(src.drv, d.queues, src.drv.deviceFeatures() | (1n << 32n)))
          return crash(new Error('the source probe was refused'));
        for (let i = 0; i < c.served; i++) {
          const sick = src.rig.health?.(src.drv);
          if (sick !== undefined) return crash(new Error(`before the snapshot: ${sick}`));
        }
        const mmio = saveTransportState(src.drv.spec) as unknown as { [k: string]: Json };
        const side = src.drv.side.save() as unknown as { [k: string]: Json };
        const records: { [k: string]: Json } = { mmio, side };
        if (src.rig.control) records.control = saveBalloonControlState(src.rig.control) as unknown as Json;
        // The snapshot, bent.
        for (const e of c.mmio) {
          const qs = mmio.queues as Json[];
          const rec = e.queue === null ? mmio : (qs[e.queue % qs.length] ?? null);
          const keys = rec !== null && typeof rec === 'object' && !Array.isArray(rec) ? Object.keys(rec) : [];
          const key = keys.filter((k) => k !== 'version' && k !== 'queues')[e.field % Math.max(keys.length - 1, 1)];
          if (key === undefined) continue;
          const r = rec as { [k: string]: Json };
          r[key] = e.value === null ? near(r[key] as Json, e.near) : structuredClone(e.value);
        }
        const [ag, rg, cw] = c.side.gens;
        if (ag != null) side.activeGen = ag;
        if (rg != null) side.resetGen = rg;
        if (cw != null) side.configWrites = cw;
        if (c.side.active !== null) side.active = c.side.active;
        if (c.side.broken !== null) side.broken = c.side.broken;
        const positions = side.positions as (QueuePosition | null)[];
        for (const e of c.side.positions) if (e !== null) positions[e.at % 8] = e.p;
        if (c.side.device !== null) replaceField(side.device as Json, c.side.device.field, c.side.device.value);
        if (c.control !== null && records.control !== undefined)
          replaceField(records.control, c.control.field, c.control.value);
        // Through JSON, as the state file is (a position set past the end leaves holes: written as null).
        const json = JSON.parse(JSON.stringify(records)) as Json;
        const body = JSON.parse(JSON.stringify(applyEdits(json, c.edits))) as { [k: string]: unknown };
        if (body === null || typeof body !== 'object' || Array.isArray(body)) return refused('not an object');
        // The restore. First the body check, over every record (readSnapshotBody).
        const checked = step(() => {
          checkRecord(checkTransportState, body.mmio, `${d.name} transport`);
          checkRecord(sideCheck, body.side, `${d.name} side`);
          if (records.control !== undefined) checkRecord(checkBalloonControlState, body.control, 'balloon');
        });
        if (checked !== undefined) return checked;
        // RAM from the memory file; the records into the shared state (VirtioDevices.restoreStates).
        dst.drv.mem.write(0, src.drv.mem.readView(0, RAM));
        src.mem.take();
        dst.mem.take();
        const put = step(() => {
          restoreTransportState(dst.drv.spec, body.mmio, `${d.name} transport`);
          if (dst.rig.control) restoreBalloonControlState(dst.rig.control, body.control);
        });
        if (put !== undefined) return put;
        // The I/O thread: each side takes its record, then polls (io-thread.ts).
        const taken = step(() => dst.drv.side.restore(body.side as RunnerState));
        if (taken !== undefined) return taken;
        dst.drv.side.poll();
        // The restored VM snapshots again into records a restore accepts.
        const again = step(() => {
          checkRecord(checkTransportState, saveTransportState(dst.drv.spec), 'transport saved again');
          let saved: RunnerState | undefined;
          try {
            saved = dst.drv.side.save();
          } catch (e) {
            // Hostile positions left requests "in flight": the snapshot is refused (save-failed).
            if (!/still in flight/.test(String((e as Error).message))) throw e;
          }
          if (saved !== undefined) checkRecord(sideCheck, JSON.parse(JSON.stringify(saved)), 'side saved again');
          if (dst.rig.control)
            checkRecord(checkBalloonControlState, saveBalloonControlState(dst.rig.control), 'balloon');
        });
        if (again !== undefined)
          return crash(
            new Error(`the restored device's records are refused by the next restore: ${JSON.stringify(again)}`),
          );
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
