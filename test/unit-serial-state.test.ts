/**
 * The 16550A's state record: after any sequence of guest register accesses and host input, save →
 * restore into a fresh UART → save gives the same record, and the restored UART answers every next
 * access (reads, the interrupt line, bytes sent) exactly as the original; a bad record is refused
 * with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { VireoError } from '../src/common/errors.js';
import { createSerialState, Serial16550 } from '../src/devices/legacy/serial.js';
import { restoreSerialState, type SerialState, saveSerialState } from '../src/devices/legacy/serial-state.js';

function uart() {
  const levels: boolean[] = [];
  const sent: number[] = [];
  const state = createSerialState();
  const dev = new Serial16550(state, { set: (l) => levels.push(l) }, { write: (b) => sent.push(b) });
  return { state, dev, levels, sent };
}

type Op = { kind: 'r'; offset: number } | { kind: 'w'; offset: number; v: number } | { kind: 'in'; bytes: number[] };
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('r' as const), offset: fc.integer({ min: 0, max: 7 }) }),
  fc.record({
    kind: fc.constant('w' as const),
    offset: fc.integer({ min: 0, max: 7 }),
    v: fc.integer({ min: 0, max: 255 }),
  }),
  fc.record({ kind: fc.constant('in' as const), bytes: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 40 }) }),
);

/** Runs `ops`, returning what the guest and the host saw. */
function run(u: ReturnType<typeof uart>, ops: Op[]): number[] {
  const seen: number[] = [];
  for (const o of ops) {
    if (o.kind === 'r') {
      const d = new Uint8Array(1);
      u.dev.read(o.offset, d);
      seen.push(d[0] as number);
    } else if (o.kind === 'w') u.dev.write(o.offset, Uint8Array.of(o.v));
    else seen.push(u.dev.enqueueInput(Uint8Array.from(o.bytes)));
  }
  return seen;
}

test('property: save → restore → save is the same record, and the restored UART behaves the same', () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), fc.array(op, { minLength: 1, maxLength: 30 }), (before, next) => {
      const a = uart();
      run(a, before);
      const saved = saveSerialState(a.state);
      const b = uart();
      restoreSerialState(b.state, JSON.parse(JSON.stringify(saved)));
      assert.deepEqual(saveSerialState(b.state), saved);
      a.levels.length = 0;
      a.sent.length = 0;
      assert.deepEqual(run(b, next), run(a, next), 'the same reads');
      assert.deepEqual(b.sent, a.sent, 'the same bytes sent');
      assert.deepEqual(saveSerialState(b.state), saveSerialState(a.state));
    }),
  );
});

test('a record names its registers and buffers; a bad one is refused with the field path', () => {
  const a = uart();
  a.dev.write(3, Uint8Array.of(0x80)); // DLAB
  a.dev.write(0, Uint8Array.of(1));
  a.dev.write(3, Uint8Array.of(0x03));
  a.dev.write(2, Uint8Array.of(0xc1)); // FIFO on, trigger 14
  a.dev.enqueueInput(Uint8Array.from([0x61, 0x62, 0x63]));
  const s = saveSerialState(a.state);
  assert.equal(s.version, 1);
  assert.equal(s.dll, 1);
  assert.equal(s.fcr, 0xc1);
  assert.equal(s.rxFifo, '616263');
  const bad: [string, (r: Record<string, unknown>) => void, RegExp][] = [
    ['a register out of range', (r) => (r.lcr = 256), /at \$\.lcr: expected an integer from 0 to 255/],
    ['IER bits the UART never keeps', (r) => (r.ier = 0x10), /at \$\.ier: expected a byte with no bits outside 0xf/],
    ['a FIFO over 16 bytes', (r) => (r.rxFifo = '00'.repeat(17)), /at \$\.rxFifo: expected at most 16 bytes/],
    ['not hex', (r) => (r.hostInput = 'zz'), /at \$\.hostInput/],
    ['a missing field', (r) => delete r.msr, /at \$\.msr: missing/],
    ['an unknown field', (r) => (r.extra = 1), /at \$\.extra: unknown field/],
    ['another version', (r) => (r.version = 2), /at \$\.version: expected state version 1/],
  ];
  for (const [name, mutate, re] of bad) {
    const r = structuredClone(s) as unknown as Record<string, unknown>;
    mutate(r);
    assert.throws(
      () => restoreSerialState(uart().state, r),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
      name,
    );
  }
  assert.throws(() => restoreSerialState(uart().state, null), /serial state is bad at \$: expected an object/);
  const ok: SerialState = { ...s };
  restoreSerialState(uart().state, ok);
});
