/**
 * The ACPI PM registers' state record: save → restore into fresh registers → save gives the same
 * record, and the restored PM1 event/control and reset registers read as the originals; every vCPU
 * thread's instance shares one copy (a write through one reads back through another); a bad record
 * is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { VireoError } from '../src/common/errors.js';
import {
  createAcpiPmState,
  Pm1Control,
  Pm1Event,
  type PmRequest,
  ResetRegister,
} from '../src/devices/legacy/acpi-pm.js';
import { restoreAcpiPmState, saveAcpiPmState } from '../src/devices/legacy/acpi-pm-state.js';

const regs = (state = createAcpiPmState()) => {
  const reqs: PmRequest[] = [];
  return {
    state,
    reqs,
    evt: new Pm1Event(state),
    cnt: new Pm1Control(5, (r) => reqs.push(r), state),
    rst: new ResetRegister(0x06, (r) => reqs.push(r), state),
  };
};
const read = (d: { read(o: number, b: Uint8Array): void }, offset: number, len: number): number[] => {
  const b = new Uint8Array(len);
  d.read(offset, b);
  return [...b];
};

test('property: save → restore → save is the same record, and the restored registers read the same', () => {
  const write = fc.record({
    dev: fc.constantFrom('evt' as const, 'cnt' as const, 'rst' as const),
    offset: fc.integer({ min: 0, max: 3 }),
    bytes: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 2 }),
  });
  fc.assert(
    fc.property(fc.array(write, { maxLength: 30 }), (writes) => {
      const a = regs();
      // Status bits are set by hardware, not the guest: start with some set, so that clearing shows.
      a.state.set('pm1Status', 0x8121);
      for (const w of writes) {
        const off = w.dev === 'evt' ? w.offset : w.dev === 'cnt' ? w.offset % 2 : 0;
        const len =
          w.dev === 'evt' ? Math.min(w.bytes.length, 4 - off) : w.dev === 'cnt' ? Math.min(w.bytes.length, 2 - off) : 1;
        a[w.dev].write(off, Uint8Array.from(w.bytes.slice(0, len)));
      }
      const saved = saveAcpiPmState(a.state);
      const b = regs();
      restoreAcpiPmState(b.state, JSON.parse(JSON.stringify(saved)));
      assert.deepEqual(saveAcpiPmState(b.state), saved);
      assert.deepEqual(read(b.evt, 0, 4), read(a.evt, 0, 4));
      assert.deepEqual(read(b.cnt, 0, 2), read(a.cnt, 0, 2));
      assert.deepEqual(read(b.rst, 0, 1), read(a.rst, 0, 1));
    }),
  );
});

test('one copy for every vCPU thread: PM1_EN written through one instance reads back through another', () => {
  const a = regs();
  const b = regs(createAcpiPmState(a.state.buffer));
  a.evt.write(2, Uint8Array.of(0x20, 0x01));
  assert.deepEqual(read(b.evt, 2, 2), [0x20, 0x01]);
  assert.equal(saveAcpiPmState(a.state).pm1Control, 1, 'SCI_EN at power-on');
});

test('a bad ACPI PM record is refused with its path', () => {
  const good = saveAcpiPmState(createAcpiPmState());
  for (const [bad, re] of [
    [{ ...good, pm1Status: 0x10000 }, /acpi-pm state is bad at \$\.pm1Status/],
    [{ ...good, resetRegister: 'x' }, /at \$\.resetRegister/],
    [{ ...good, version: 2 }, /at \$\.version/],
  ] as const)
    assert.throws(
      () => restoreAcpiPmState(createAcpiPmState(), bad),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
    );
});
