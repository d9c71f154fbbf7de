/** CPUID as each vCPU sees it: the host's supported set, normalised per vCPU. */
import type { CpuidEntry } from '../../kvm/structs.js';

const HYPERVISOR_BIT = 1 << 31;

export function cpuidForVcpu(supported: readonly CpuidEntry[], vcpuId: number, vcpuCount: number): CpuidEntry[] {
  return supported.map((e) => {
    const o = { ...e };
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC ID, EBX[23:16] logical processor count; ECX bit 31: running under a hypervisor.
        o.ebx = ((e.ebx & 0x0000ffff) | ((vcpuCount & 0xff) << 16) | ((vcpuId & 0xff) << 24)) >>> 0;
        o.ecx = (e.ecx | HYPERVISOR_BIT) >>> 0;
        if (vcpuCount > 1) o.edx = (e.edx | (1 << 28)) >>> 0; // HTT: more than one logical processor
        break;
      case 0xb:
      case 0x1f:
        // Extended topology: x2APIC ID of this vCPU.
        o.edx = vcpuId;
        break;
    }
    return o;
  });
}
