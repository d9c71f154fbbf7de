/**
 * applyVm's kvmclock (snapshot/state.ts): restored with flags 0 (the guest's clock goes on from where
 * it stopped), or with KVM_CLOCK_REALTIME for Firecracker's clock_realtime (KVM then advances it by the
 * wall-clock time since the record's `realtime`), which a record without one refuses in one line.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Vm as KvmVm } from '../src/kvm/kvm.js';
import { applyVm, KVM_CLOCK_REALTIME } from '../src/snapshot/state.js';

function fakeVm(): { vm: KvmVm; clock: () => Buffer | undefined } {
  let clock: Buffer | undefined;
  const vm = {
    setIrqchip: () => {},
    setRaw: (kind: string, b: Buffer) => {
      if (kind === 'clock') clock = Buffer.from(b);
    },
  } as unknown as KvmVm;
  return { vm, clock: () => clock };
}

/** A kvm_clock_data record: clock, flags, realtime. */
function record(flags: number): { irqchip: string[]; pit2: string; clock: string } {
  const c = Buffer.alloc(48);
  c.writeBigUInt64LE(123_456_789n, 0);
  c.writeUInt32LE(flags, 8);
  c.writeBigUInt64LE(1_700_000_000_000_000_000n, 16);
  return { irqchip: [], pit2: Buffer.alloc(112).toString('base64'), clock: c.toString('base64') };
}

test('kvmclock: flags cleared by default, KVM_CLOCK_REALTIME with clock_realtime, refused when the record has no wall-clock time', () => {
  const a = fakeVm();
  applyVm(a.vm, record(KVM_CLOCK_REALTIME | 2));
  assert.equal(a.clock()?.readUInt32LE(8), 0, 'from where it stopped');
  assert.equal(a.clock()?.readBigUInt64LE(0), 123_456_789n);
  const b = fakeVm();
  applyVm(b.vm, record(KVM_CLOCK_REALTIME | 2), true);
  assert.equal(b.clock()?.readUInt32LE(8), KVM_CLOCK_REALTIME, 'advanced by the wall-clock time since');
  assert.equal(b.clock()?.readBigUInt64LE(16), 1_700_000_000_000_000_000n, "the record's realtime is passed on");
  const c = fakeVm();
  assert.throws(() => applyVm(c.vm, record(2), true), /clock_realtime: the snapshot's clock has no wall-clock time/);
  assert.equal(c.clock(), undefined, 'nothing set');
});
