/** Per-vCPU CPUID: APIC ID and counts in leaf 1, the hypervisor bit, and the TSC-deadline bit when KVM has it. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cpuidForVcpu } from '../src/arch/x86_64/cpuid.js';

const leaf1 = { function: 1, index: 0, flags: 0, eax: 0x800f12, ebx: 0x0101_0800, ecx: 0x7ed8_320b, edx: 0x178b_fbff };

test('leaf 1: APIC ID, logical count, hypervisor bit; TSC-deadline only when asked', () => {
  const [plain] = cpuidForVcpu([leaf1], 3, 4);
  assert.ok(plain);
  assert.equal(plain.ebx >>> 24, 3, 'initial APIC ID');
  assert.equal((plain.ebx >>> 16) & 0xff, 4, 'logical processors');
  assert.ok(plain.ecx & (1 << 31), 'hypervisor bit');
  assert.equal(plain.ecx & (1 << 24), 0, 'no TSC-deadline bit by default');
  const [td] = cpuidForVcpu([leaf1], 0, 1, { tscDeadline: true });
  assert.ok(td && td.ecx & (1 << 24), 'TSC-deadline bit with KVM_CAP_TSC_DEADLINE_TIMER');
});
