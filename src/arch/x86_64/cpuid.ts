/** CPUID as each vCPU sees it: the host's supported set, normalised per vCPU. */
import type { CpuidEntry } from '../../kvm/structs.js';

const HYPERVISOR_BIT = 1 << 31;
/** CPUID.1:ECX[24]. KVM emulates the TSC-deadline timer but leaves it out of its supported CPUID. */
const TSC_DEADLINE_BIT = 1 << 24;

export interface CpuidOptions {
  /** KVM has KVM_CAP_TSC_DEADLINE_TIMER: offer the LAPIC's TSC-deadline mode (as QEMU does). */
  tscDeadline?: boolean;
}

export function cpuidForVcpu(
  supported: readonly CpuidEntry[],
  vcpuId: number,
  vcpuCount: number,
  opts: CpuidOptions = {},
): CpuidEntry[] {
  return supported.map((e) => {
    const o = { ...e };
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC ID, EBX[23:16] logical processor count; ECX bit 31: running under a hypervisor.
        o.ebx = ((e.ebx & 0x0000ffff) | ((vcpuCount & 0xff) << 16) | ((vcpuId & 0xff) << 24)) >>> 0;
        // Without the TSC-deadline timer a loaded host can fail Linux's LAPIC-timer check at boot, and
        // the guest then takes every timer event through the PIT (seen in the blk benchmark).
        o.ecx = (e.ecx | HYPERVISOR_BIT | (opts.tscDeadline ? TSC_DEADLINE_BIT : 0)) >>> 0;
        if (vcpuCount > 1) o.edx = (e.edx | (1 << 28)) >>> 0; // HTT: more than one logical processor
        break;
      case 0xb:
      case 0x1f: {
        // Extended topology: one thread per core, all vCPUs cores of one package.
        const coreBits = vcpuCount > 1 ? Math.ceil(Math.log2(vcpuCount)) : 0;
        if (e.index === 0) {
          o.eax = 0;
          o.ebx = 1;
          o.ecx = (1 << 8) | 0; // level 0: SMT
        } else if (e.index === 1) {
          o.eax = coreBits;
          o.ebx = vcpuCount;
          o.ecx = (2 << 8) | 1; // level 1: core
        } else {
          o.eax = 0;
          o.ebx = 0;
          o.ecx = e.index; // invalid level: ends the enumeration
        }
        o.edx = vcpuId;
        break;
      }
      case 4:
        // Deterministic cache parameters: EAX[31:26] = cores per package - 1, EAX[25:14] = threads sharing - 1.
        o.eax = ((e.eax & 0x3fff) | ((vcpuCount - 1) << 26)) >>> 0;
        break;
      case 0x80000008:
        // AMD: ECX[7:0] = number of cores - 1.
        o.ecx = ((e.ecx & ~0xff) | ((vcpuCount - 1) & 0xff)) >>> 0;
        break;
    }
    return o;
  });
}
