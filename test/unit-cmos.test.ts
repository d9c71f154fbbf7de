/** The MC146818 RTC/CMOS model: BCD and binary, 12/24-hour, guest-set time, registers A-D, RAM. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Cmos, createCmosState, setCmosMemorySizes } from '../src/devices/legacy/cmos.js';

const HOST = Date.UTC(2026, 10, 23, 21, 45, 7, 500); // Mon 2026-11-23 21:45:07.5 UTC

function rig(now = () => HOST) {
  const cmos = new Cmos(createCmosState(), now);
  const read = (index: number): number => {
    cmos.write(0, Uint8Array.of(index));
    const d = new Uint8Array(1);
    cmos.read(1, d);
    return d[0] as number;
  };
  const write = (index: number, v: number): void => {
    cmos.write(0, Uint8Array.of(index));
    cmos.write(1, Uint8Array.of(v));
  };
  return { cmos, read, write };
}

test('reads the host date in BCD, 24-hour, by default', () => {
  const { read } = rig();
  assert.equal(read(0x00), 0x07);
  assert.equal(read(0x02), 0x45);
  assert.equal(read(0x04), 0x21);
  assert.equal(read(0x06), 0x02); // Monday = 2 (Sunday = 1)
  assert.equal(read(0x07), 0x23);
  assert.equal(read(0x08), 0x11);
  assert.equal(read(0x09), 0x26);
  assert.equal(read(0x32), 0x20);
  assert.equal(read(0x0b), 0x02);
  assert.equal(read(0x0d), 0x80, 'RAM and time valid');
  assert.equal(read(0x0a) & 0x7f, 0x26);
});

test('binary mode and 12-hour mode', () => {
  const { read, write } = rig();
  write(0x0b, 0x04 | 0x02);
  assert.equal(read(0x04), 21);
  assert.equal(read(0x09), 26);
  write(0x0b, 0x00); // BCD, 12-hour
  assert.equal(read(0x04), 0x80 | 0x09, '9 PM');
});

test('a guest that sets the clock keeps its offset as the host clock moves', () => {
  let now = HOST;
  const { cmos, read, write } = rig(() => now);
  write(0x09, 0x30); // year 2030
  write(0x04, 0x08); // 08h
  assert.equal(read(0x09), 0x30);
  assert.equal(read(0x04), 0x08);
  now += 3_600_000;
  assert.equal(read(0x04), 0x09, 'an hour later on the host is an hour later in the guest');
  assert.equal(cmos.guestTime().getUTCFullYear(), 2030);
});

test('update-in-progress shows only at the end of a second', () => {
  const early = rig(() => HOST - 500 + 100);
  assert.equal(early.read(0x0a) & 0x80, 0);
  const late = rig(() => HOST - 500 + 999);
  assert.equal(late.read(0x0a) & 0x80, 0x80);
});

test('register C clears on read; C and D are read-only; RAM bytes persist; the index port reads all ones', () => {
  const { cmos, read, write } = rig();
  write(0x0d, 0x00);
  assert.equal(read(0x0d), 0x80);
  write(0x40, 0x5a);
  assert.equal(read(0x40), 0x5a);
  write(0x80 | 0x41, 0xa5); // bit 7 of the index is the NMI mask
  assert.equal(read(0x41), 0xa5);
  const d = new Uint8Array(1);
  cmos.read(0, d);
  assert.equal(d[0], 0xff);
});

test('memory sizes in the standard CMOS bytes', () => {
  const state = createCmosState();
  setCmosMemorySizes(state, 512 * 1024 * 1024, 2 * 1024 * 1024 * 1024);
  const { read } = (() => {
    const cmos = new Cmos(state, () => HOST);
    return {
      read: (i: number) => {
        cmos.write(0, Uint8Array.of(i));
        const d = new Uint8Array(1);
        cmos.read(1, d);
        return d[0] as number;
      },
    };
  })();
  assert.equal(read(0x15) | (read(0x16) << 8), 640);
  assert.equal(read(0x17) | (read(0x18) << 8), 0xffff, 'extended memory saturates at 64 MiB');
  assert.equal(read(0x34) | (read(0x35) << 8), (512 - 16) * 16);
  assert.equal(read(0x5b) | (read(0x5c) << 8) | (read(0x5d) << 16), 2 * 16384);
});
