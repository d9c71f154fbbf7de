/**
 * The RTC/CMOS state record: save → restore into a fresh chip → save gives the same record; the
 * restored chip reads the same clock (the guest's offset from the host clock is kept) and RAM; a
 * bad record is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { VireoError } from '../src/common/errors.js';
import { Cmos, createCmosState, setCmosMemorySizes } from '../src/devices/legacy/cmos.js';
import { restoreCmosState, saveCmosState } from '../src/devices/legacy/cmos-state.js';

const HOST = Date.UTC(2026, 11, 2, 15, 0, 0);
const chip = () => {
  const state = createCmosState();
  return { state, dev: new Cmos(state, () => HOST) };
};
const rd = (c: Cmos, index: number): number => {
  c.write(0, Uint8Array.of(index));
  const d = new Uint8Array(1);
  c.read(1, d);
  return d[0] as number;
};

test('property: save → restore → save is the same record, and the restored chip reads the same', () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 })), { maxLength: 40 }),
      (writes) => {
        const a = chip();
        setCmosMemorySizes(a.state, 64 << 20, 0);
        for (const [index, v] of writes) {
          a.dev.write(0, Uint8Array.of(index));
          a.dev.write(1, Uint8Array.of(v));
        }
        const saved = saveCmosState(a.state);
        const b = chip();
        restoreCmosState(b.state, JSON.parse(JSON.stringify(saved)));
        assert.deepEqual(saveCmosState(b.state), saved);
        assert.equal(b.dev.guestTime().getTime(), a.dev.guestTime().getTime());
        for (let i = 0; i < 128; i++) assert.equal(rd(b.dev, i), rd(a.dev, i), `register ${i}`);
      },
    ),
  );
});

test('a negative clock offset survives; a bad record is refused with the field path', () => {
  const a = chip();
  a.dev.write(0, Uint8Array.of(0x09));
  a.dev.write(1, Uint8Array.of(0x99)); // year 99 (BCD) of this century: 2099
  a.dev.write(0, Uint8Array.of(0x32));
  a.dev.write(1, Uint8Array.of(0x19)); // century 19: 1999, far behind the host's 2026
  const s = saveCmosState(a.state);
  assert.ok(s.clockOffsetMs < 0, `offset ${s.clockOffsetMs}`);
  const b = chip();
  restoreCmosState(b.state, s);
  assert.equal(b.dev.guestTime().getUTCFullYear(), 1999);
  for (const [mutate, re] of [
    [(r: Record<string, unknown>) => (r.ram = '00'), /at \$\.ram: expected 128 bytes/],
    [(r: Record<string, unknown>) => (r.clockOffsetMs = 1.5), /at \$\.clockOffsetMs/],
    [(r: Record<string, unknown>) => (r.index = 300), /at \$\.index/],
  ] as const) {
    const r = structuredClone(s) as unknown as Record<string, unknown>;
    mutate(r);
    assert.throws(
      () => restoreCmosState(chip().state, r),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
    );
  }
});
