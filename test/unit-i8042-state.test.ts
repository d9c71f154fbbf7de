/**
 * The i8042's state record: save → restore into a fresh controller → save gives the same record,
 * and the restored controller answers the next accesses (status, data, resets, IRQ edges) as the
 * original; a bad record is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { VireoError } from '../src/common/errors.js';
import { createI8042State, I8042 } from '../src/devices/legacy/i8042.js';
import { restoreI8042State, saveI8042State } from '../src/devices/legacy/i8042-state.js';

function kbc() {
  const log: string[] = [];
  const state = createI8042State();
  const dev = new I8042(() => log.push('reset'), state, { set: (l) => log.push(l ? 'irq+' : 'irq-') });
  return { state, dev, log };
}
type Op = { r: 0 | 4 } | { w: 0 | 4; v: number } | { ctrlAltDel: true };
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ r: fc.constantFrom(0 as const, 4 as const) }),
  fc.record({
    w: fc.constantFrom(0 as const, 4 as const),
    v: fc.oneof(fc.constantFrom(0x20, 0x60, 0xaa, 0xab, 0xd0, 0xd1, 0x45, 0x01), fc.integer({ min: 0, max: 255 })),
  }),
  fc.record({ ctrlAltDel: fc.constant(true as const) }),
);
function run(k: ReturnType<typeof kbc>, ops: Op[]): number[] {
  const seen: number[] = [];
  for (const o of ops) {
    if ('r' in o) {
      const d = new Uint8Array(1);
      k.dev.read(o.r, d);
      seen.push(d[0] as number);
    } else if ('w' in o) k.dev.write(o.w, Uint8Array.of(o.v));
    else seen.push(k.dev.injectCtrlAltDel() ? 1 : 0);
  }
  return seen;
}

test('property: save → restore → save is the same record, and the restored controller behaves the same', () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 50 }), fc.array(op, { minLength: 1, maxLength: 30 }), (before, next) => {
      const a = kbc();
      run(a, before);
      const saved = saveI8042State(a.state);
      const b = kbc();
      restoreI8042State(b.state, JSON.parse(JSON.stringify(saved)));
      assert.deepEqual(saveI8042State(b.state), saved);
      a.log.length = 0;
      assert.deepEqual(run(b, next), run(a, next));
      assert.deepEqual(b.log, a.log, 'the same resets and IRQ edges');
      assert.deepEqual(saveI8042State(b.state), saveI8042State(a.state));
    }),
  );
});

test('the pending controller write is named; a bad record is refused with the field path', () => {
  const a = kbc();
  a.dev.write(4, Uint8Array.of(0x60)); // write command byte: the data byte follows
  const s = saveI8042State(a.state);
  assert.equal(s.pendingWrite, 'commandByte');
  for (const [mutate, re] of [
    [(r: Record<string, unknown>) => (r.pendingWrite = 'x'), /at \$\.pendingWrite: expected one of none, commandByte/],
    [(r: Record<string, unknown>) => (r.output = '00'.repeat(17)), /at \$\.output: expected at most 16 bytes/],
    [(r: Record<string, unknown>) => (r.irqs = -1), /at \$\.irqs/],
  ] as const) {
    const r = structuredClone(s) as unknown as Record<string, unknown>;
    mutate(r);
    assert.throws(
      () => restoreI8042State(kbc().state, r),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && re.test(e.message),
    );
  }
});
