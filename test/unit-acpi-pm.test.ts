/** ACPI PM1 fixed hardware and the reset register. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Pm1Control, Pm1Event, type PmRequest, ResetRegister } from '../src/devices/legacy/acpi-pm.js';

const word = (v: number) => Uint8Array.of(v & 0xff, (v >> 8) & 0xff);
const readWord = (d: { read(o: number, b: Uint8Array): void }, o = 0) => {
  const b = new Uint8Array(2);
  d.read(o, b);
  return b[0]! | (b[1]! << 8);
};

test('SLP_TYP=S5 with SLP_EN powers off; other sleep types are reported as such', () => {
  const reqs: PmRequest[] = [];
  const cnt = new Pm1Control(5, (r) => reqs.push(r));
  assert.equal(readWord(cnt) & 1, 1, 'SCI_EN reads as set');
  cnt.write(0, word(5 << 10)); // type without SLP_EN: nothing happens
  assert.deepEqual(reqs, []);
  cnt.write(0, word((5 << 10) | 0x2000));
  assert.deepEqual(reqs, ['poweroff']);
  assert.equal(readWord(cnt) & 0x2000, 0, 'SLP_EN reads as zero');
  cnt.write(0, word((3 << 10) | 0x2000));
  assert.deepEqual(reqs, ['poweroff', { sleep: 3 }]);
});

test('byte writes to the high byte of PM1_CNT work as Linux issues them', () => {
  const reqs: PmRequest[] = [];
  const cnt = new Pm1Control(5, (r) => reqs.push(r));
  cnt.write(1, Uint8Array.of(((5 << 10) | 0x2000) >> 8));
  assert.deepEqual(reqs, ['poweroff']);
});

test('PM1_STS is write-one-to-clear, PM1_EN read/write', () => {
  const evt = new Pm1Event();
  evt.write(2, word(0x0120));
  assert.equal(readWord(evt, 2), 0x0120);
  assert.equal(readWord(evt, 0), 0);
  evt.write(0, word(0xffff));
  assert.equal(readWord(evt, 0), 0);
});

test('the reset register resets on the FADT value or RST_CPU', () => {
  const reqs: PmRequest[] = [];
  const r = new ResetRegister(0x06, (x) => reqs.push(x));
  r.write(0, Uint8Array.of(0x02));
  assert.deepEqual(reqs, []);
  r.write(0, Uint8Array.of(0x06));
  assert.deepEqual(reqs, ['reset']);
});

test('pvpanic: advertises its events and reports a panic', async () => {
  const { PvPanic } = await import('../src/devices/legacy/pvpanic.js');
  const events: string[] = [];
  const p = new PvPanic((e) => events.push(e));
  const d = new Uint8Array(1);
  p.read(0, d);
  assert.equal(d[0], 3);
  p.write(0, Uint8Array.of(1));
  p.write(0, Uint8Array.of(2));
  assert.deepEqual(events, ['panicked', 'crash-loaded']);
});
