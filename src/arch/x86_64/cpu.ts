/**
 * The vCPU state a real kernel expects at entry, beyond the entry registers: boot MSRs, the x87/SSE
 * control words, and the local APIC's LINT0/LINT1 wired as on a PC (ExtINT from the PIC, NMI).
 * Functions take the vCPU and return what they did, so the caller can report it.
 */
import type { Vcpu } from '../../kvm/kvm.js';
import type { MsrEntry } from '../../kvm/structs.js';

export const MSR = {
  IA32_TSC: 0x10,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;

const MISC_ENABLE_FAST_STRING = 1n;
const MTRR_ENABLE = 1n << 11n;
const MTRR_MEM_TYPE_WB = 6n;

/** The MSR values Firecracker and QEMU give a vCPU before a Linux kernel starts. */
export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR.IA32_SYSENTER_CS, data: 0n },
    { index: MSR.IA32_SYSENTER_ESP, data: 0n },
    { index: MSR.IA32_SYSENTER_EIP, data: 0n },
    { index: MSR.STAR, data: 0n },
    { index: MSR.CSTAR, data: 0n },
    { index: MSR.KERNEL_GS_BASE, data: 0n },
    { index: MSR.SYSCALL_MASK, data: 0n },
    { index: MSR.LSTAR, data: 0n },
    { index: MSR.IA32_TSC, data: 0n },
    { index: MSR.IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
    { index: MSR.MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_MEM_TYPE_WB },
  ];
}

/**
 * Write the boot MSRs. A host may refuse some (PVM does not model every MSR): those are written
 * one by one and the refused ones returned, so the VM still starts and the caller can say so.
 */
export function setupMsrs(vcpu: Vcpu): number[] {
  const msrs = bootMsrs();
  try {
    vcpu.setMsrs(msrs);
    return [];
  } catch {
    const refused: number[] = [];
    for (const m of msrs) {
      try {
        vcpu.setMsrs([m]);
      } catch {
        refused.push(m.index);
      }
    }
    return refused;
  }
}

/** x87 control word 0x37F and MXCSR 0x1F80, the power-on values. */
export function setupFpu(vcpu: Vcpu): void {
  const fpu = vcpu.getFpu();
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  vcpu.setFpu(fpu);
}

const APIC_LVT_LINT0 = 0x350;
const APIC_LVT_LINT1 = 0x360;
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

/** LINT0 delivers the PIC's interrupts (ExtINT), LINT1 delivers NMI, as on a PC. */
export function setupLapic(vcpu: Vcpu): void {
  const lapic = vcpu.getLapic();
  const setMode = (reg: number, mode: number) => {
    const v = lapic.readUInt32LE(reg);
    lapic.writeUInt32LE(((v & ~0x700) | (mode << 8)) >>> 0, reg);
  };
  setMode(APIC_LVT_LINT0, APIC_MODE_EXTINT);
  setMode(APIC_LVT_LINT1, APIC_MODE_NMI);
  vcpu.setLapic(lapic);
}
