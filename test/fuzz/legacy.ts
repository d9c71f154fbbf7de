/**
 * The legacy port devices (UART, i8042, CMOS, ACPI PM, debug-exit, POST code, pvpanic) on vireo's port
 * map, each fenced (test/support/legacy-platform.ts): sequences of port accesses at any size and value
 * around every device's range. No access may throw (a throw on a vCPU thread ends the VM), the bus may
 * never hand a device bytes outside its range, and afterwards the CMOS and the UART still answer.
 */
import fc from 'fast-check';
import { ACPI_PM1A_CNT, ACPI_PM1A_EVT, ACPI_RESET_PORT } from '../../src/arch/x86_64/acpi.js';
import { restoreAcpiPmState, saveAcpiPmState } from '../../src/devices/legacy/acpi-pm-state.js';
import { CMOS_BASE } from '../../src/devices/legacy/cmos.js';
import { restoreCmosState, saveCmosState } from '../../src/devices/legacy/cmos-state.js';
import { DEBUG_EXIT_PORT } from '../../src/devices/legacy/debug-exit.js';
import { I8042_BASE } from '../../src/devices/legacy/i8042.js';
import { restoreI8042State, saveI8042State } from '../../src/devices/legacy/i8042-state.js';
import { POST_CODE_PORT } from '../../src/devices/legacy/post-code.js';
import { restorePostCodeState, savePostCodeState } from '../../src/devices/legacy/post-code-state.js';
import { PVPANIC_PORT } from '../../src/devices/legacy/pvpanic.js';
import { COM1_PORT } from '../../src/devices/legacy/serial.js';
import { restoreSerialState, saveSerialState } from '../../src/devices/legacy/serial-state.js';
import { legacyPlatform } from '../support/legacy-platform.js';
import { crash, isClean, OK, refused, target, type Verdict } from './harness.js';
import { applyEdits, type Edit, editArb, type Json } from './json-mutate.js';

const BASES = [
  COM1_PORT,
  I8042_BASE,
  CMOS_BASE,
  ACPI_PM1A_EVT,
  ACPI_PM1A_CNT,
  ACPI_RESET_PORT,
  DEBUG_EXIT_PORT,
  POST_CODE_PORT,
  PVPANIC_PORT,
];

interface PortOp {
  port: number;
  size: number;
  value: number;
  write: boolean;
}
const portOp: fc.Arbitrary<PortOp> = fc.record({
  port: fc.tuple(fc.constantFrom(...BASES), fc.integer({ min: -3, max: 9 })).map(([b, o]) => (b + o) & 0xffff),
  size: fc.constantFrom(1, 1, 2, 4),
  value: fc.oneof(fc.constantFrom(0, 0x80, 0xff, 0x7f, 0x0e, 0x32, 0x8e, 0xffff, 0xffffffff, 0x2000, 0x3c00), fc.nat()),
  write: fc.boolean(),
});

export const legacyTarget = target('legacy-ports', 10_000, () => {
  return {
    arbitrary: fc.array(portOp, { maxLength: 60 }),
    run(ops: PortOp[]): Verdict {
      // A fresh platform per case: cheap, and a case cannot depend on the ones before it.
      const p = legacyPlatform();
      try {
        for (const o of ops) {
          if (o.write) {
            // The debug-exit and reset ports end the VM only through their callbacks: recorded, no more.
            p.out(o.port, o.size, o.value);
          } else p.inp(o.port, o.size);
        }
        // The devices still answer: CMOS register 0x0e (a byte of NVRAM) round-trips, the UART's LSR reads.
        p.out(CMOS_BASE, 1, 0x0e);
        p.out(CMOS_BASE + 1, 1, 0x5a);
        p.out(CMOS_BASE, 1, 0x0e);
        if (p.inp(CMOS_BASE + 1, 1) !== 0x5a) return crash(new Error('CMOS NVRAM no longer round-trips'));
        p.inp(COM1_PORT + 5, 1);
      } catch (e) {
        // Fenced's own error (bytes outside a device's range) lands here too: both are findings.
        return crash(e);
      }
      return OK;
    },
  };
});

/** The legacy devices' records in a snapshot body (src/vmm/platform.ts PlatformState), in restore order. */
const RECORDS = {
  serial: { save: saveSerialState, restore: restoreSerialState },
  postCode: { save: savePostCodeState, restore: restorePostCodeState },
  i8042: { save: saveI8042State, restore: restoreI8042State },
  cmos: { save: saveCmosState, restore: restoreCmosState },
  acpiPm: { save: saveAcpiPmState, restore: restoreAcpiPmState },
} as const;
type RecordName = keyof typeof RECORDS;
const NAMES = Object.keys(RECORDS) as RecordName[];
type States = ReturnType<typeof legacyPlatform>['states'];
const save = (states: States, name: RecordName): Json =>
  (RECORDS[name].save as (s: unknown) => unknown)(states[name]) as Json;
const restore = (states: States, name: RecordName, record: unknown): void =>
  (RECORDS[name].restore as (s: unknown, r: unknown) => void)(states[name], record);

/**
 * Values a record field may hold where the device wrote something else: the edges of u8, u16, i32 and
 * u32, fractions, hex strings at and past each device's byte limits (16-byte FIFO, 64-code history,
 * 128-byte CMOS RAM, 4096-byte host ring), bad hex, wrong types.
 */
export const recordValues: fc.Arbitrary<Json> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<Json>(0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000) },
  {
    weight: 3,
    arbitrary: fc.constantFrom<Json>(
      -1,
      2 ** 31 - 1,
      2 ** 31,
      -(2 ** 31),
      -(2 ** 31) - 1,
      2 ** 32 - 1,
      2 ** 32,
      2 ** 53,
    ),
  },
  { weight: 1, arbitrary: fc.constantFrom<Json>(1.5, -0.5, 1e308, -1e308) },
  {
    weight: 3,
    arbitrary: fc.constantFrom<Json>(
      '',
      '00',
      '0',
      'FF',
      'zz',
      'ff'.repeat(15),
      '5a'.repeat(16),
      '5a'.repeat(17),
      '00'.repeat(64),
      '00'.repeat(65),
      '0f'.repeat(128),
      'a5'.repeat(4096),
      'a5'.repeat(4097),
      '00'.repeat(1 << 16),
      'none',
      'commandByte',
      'outputPort',
    ),
  },
  { weight: 2, arbitrary: fc.constantFrom<Json>(null, true, false, [], {}, '1', [1], { version: 1 }) },
  { weight: 2, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.nat(255) },
);

/**
 * A record field replaced: `field` picks among the record's keys; `value` null means a value of the
 * field's own type within what a device could have written (`near` picks it), so the restore goes on.
 */
interface FieldEdit {
  dev: RecordName;
  field: number;
  value: Json | null;
  near: number;
}
const fieldEdit: fc.Arbitrary<FieldEdit> = fc.record({
  dev: fc.constantFrom(...NAMES),
  field: fc.nat(),
  value: fc.oneof({ weight: 2, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: recordValues }),
  near: fc.nat(),
});
const NEAR_NUMBERS = [0, 1, 0x0f, 0x7f, 0x80, 0xc1, 0xff];
const NEAR_HEX = ['', '00', '5a', 'ff'.repeat(16), '0d'.repeat(64), '8a'.repeat(128), 'a5'.repeat(4096)];
function near(current: Json, n: number): Json {
  if (typeof current === 'boolean') return n % 2 === 0 ? !current : current;
  if (typeof current === 'number') return NEAR_NUMBERS[n % NEAR_NUMBERS.length] as number;
  if (typeof current === 'string' && /^[0-9a-f]*$/.test(current)) return NEAR_HEX[n % NEAR_HEX.length] as string;
  return current;
}

interface RestoredCase {
  /** Traffic on the VM that took the snapshot, so the records hold FIFO bytes, codes, RAM. */
  before: PortOp[];
  beforeInput: Uint8Array;
  fields: FieldEdit[];
  /** Edits anywhere in the records (dropped and added keys, wrapped records) after the field edits. */
  edits: Edit[];
  ops: PortOp[];
  input: Uint8Array;
}

/**
 * The legacy devices restored from hostile records (src/devices/legacy/*-state.ts): a platform's
 * records as savePlatformState takes them, fields replaced by values at and past their ranges and the
 * JSON edited anywhere, then each put into a fresh platform through its device's own restore
 * (restorePlatformState's order). A refusal (SnapshotError) is fine; a record that restores must save
 * back as the same record, and port traffic and host input afterwards may not throw or hang, and stay
 * inside each device's ports.
 */
export const legacyRestoreTarget = target('legacy-restored-state', 10_000, () => ({
  arbitrary: fc.record({
    before: fc.array(portOp, { maxLength: 20 }),
    beforeInput: fc.uint8Array({ maxLength: 24 }),
    fields: fc.oneof(
      { weight: 1, arbitrary: fc.constant<FieldEdit[]>([]) },
      { weight: 4, arbitrary: fc.array(fieldEdit, { minLength: 1, maxLength: 4 }) },
    ),
    edits: fc.oneof(
      { weight: 4, arbitrary: fc.constant<Edit[]>([]) },
      { weight: 1, arbitrary: fc.array(editArb(recordValues), { minLength: 1, maxLength: 2 }) },
    ),
    ops: fc.array(portOp, { maxLength: 30 }),
    input: fc.uint8Array({ maxLength: 40 }),
  }),
  run(c: RestoredCase): Verdict {
    try {
      // The VM that took the snapshot.
      const src = legacyPlatform();
      src.serial.enqueueInput(c.beforeInput);
      for (const o of c.before) {
        if (o.write) src.out(o.port, o.size, o.value);
        else src.inp(o.port, o.size);
      }
      const saved: { [k: string]: Json } = {};
      for (const name of NAMES) saved[name] = save(src.states, name);
      // The state file: records bent, through JSON as the body is.
      let doc: Json = saved;
      for (const f of c.fields) {
        const rec = (doc as { [k: string]: Json })[f.dev];
        if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) continue;
        const keys = Object.keys(rec);
        const key = keys[f.field % keys.length];
        if (key === undefined || key === 'version') continue;
        rec[key] = f.value === null ? near(rec[key] as Json, f.near) : structuredClone(f.value);
      }
      doc = JSON.parse(JSON.stringify(applyEdits(doc, c.edits))) as Json;
      const body = (doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? doc : {}) as {
        [k: string]: unknown;
      };
      // The restore: each record into a fresh platform, in restorePlatformState's order.
      const p = legacyPlatform();
      for (const name of NAMES) {
        try {
          restore(p.states, name, body[name]);
        } catch (e) {
          if (isClean(e)) return refused(String((e as Error).message));
          throw e;
        }
      }
      // What was restored is what the next snapshot saves: no field lost or changed on the way in.
      for (const name of NAMES) {
        const again = JSON.stringify(save(p.states, name));
        if (again !== JSON.stringify(body[name]))
          return crash(new Error(`${name}: restored ${JSON.stringify(body[name])}, saved back ${again}`));
      }
      p.serial.enqueueInput(c.input);
      for (const o of c.ops) {
        if (o.write) p.out(o.port, o.size, o.value);
        else p.inp(o.port, o.size);
      }
      p.serial.enqueueInput(c.input);
      for (let i = 0; i < 8; i++) p.inp(COM1_PORT, 1);
    } catch (e) {
      return crash(e);
    }
    return OK;
  },
}));
