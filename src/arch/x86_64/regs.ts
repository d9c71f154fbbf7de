/**
 * Register and page-table setup for the entry modes vireo offers: 64-bit long mode (ELF kernels,
 * as Firecracker enters vmlinux) and flat 32-bit protected mode (Multiboot).
 */

import type { Regs, Sregs } from '../../kvm/structs.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { GDT_32, GDT_64, segmentFromGdt } from './gdt.js';
import { LAYOUT } from './layout.js';

const X86_CR0_PE = 0x1n;
const X86_CR0_ET = 0x10n;
const X86_CR0_PG = 0x80000000n;
const X86_CR4_PAE = 0x20n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;

const PDE_PRESENT_RW = 0x3n;
const PDE_PS = 0x80n;

export function zeroRegs(): Regs {
  return {
    rax: 0n,
    rbx: 0n,
    rcx: 0n,
    rdx: 0n,
    rsi: 0n,
    rdi: 0n,
    rsp: 0n,
    rbp: 0n,
    r8: 0n,
    r9: 0n,
    r10: 0n,
    r11: 0n,
    r12: 0n,
    r13: 0n,
    r14: 0n,
    r15: 0n,
    rip: 0n,
    rflags: 2n,
  };
}

/** GDT indices of the flat code, data and TSS descriptors in a table. */
export interface GdtLayout {
  code: number;
  data: number;
  tss: number;
}

/** Write `gdt` (and an empty IDT) at vireo's fixed addresses and load flat segments from it. */
export function loadFlatGdt(mem: GuestMemory, sregs: Sregs, gdt: readonly bigint[], at: GdtLayout): void {
  gdt.forEach((e, i) => {
    mem.write64(LAYOUT.gdt + i * 8, e);
  });
  mem.write64(LAYOUT.idt, 0n);
  const data = segmentFromGdt(gdt[at.data] as bigint, at.data);
  sregs.gdt = { base: BigInt(LAYOUT.gdt), limit: gdt.length * 8 - 1 };
  sregs.idt = { base: BigInt(LAYOUT.idt), limit: 7 };
  sregs.cs = segmentFromGdt(gdt[at.code] as bigint, at.code);
  sregs.ds = { ...data };
  sregs.es = { ...data };
  sregs.fs = { ...data };
  sregs.gs = { ...data };
  sregs.ss = { ...data };
  sregs.tr = segmentFromGdt(gdt[at.tss] as bigint, at.tss);
}

/** Paging on in long mode over vireo's identity page tables. */
export function enableLongMode(mem: GuestMemory, sregs: Sregs): void {
  writeIdentityPageTables(mem);
  sregs.cr3 = BigInt(LAYOUT.pml4);
  sregs.cr4 |= X86_CR4_PAE;
  sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
  sregs.efer |= EFER_LME | EFER_LMA;
}

/** Flat protected mode with paging off. */
export function enableProtectedMode(sregs: Sregs): void {
  sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & ~X86_CR0_PG;
  sregs.cr4 &= ~X86_CR4_PAE;
  sregs.efer &= ~(EFER_LME | EFER_LMA);
}

const VIREO_GDT: GdtLayout = { code: 1, data: 2, tss: 3 };

/** Identity-map the first 4 GiB with 2 MiB pages. */
export function writeIdentityPageTables(mem: GuestMemory): void {
  mem.fill(LAYOUT.pml4, 0x1000);
  mem.fill(LAYOUT.pdpt, 0x1000);
  mem.write64(LAYOUT.pml4, BigInt(LAYOUT.pdpt) | PDE_PRESENT_RW);
  for (let d = 0; d < 4; d++) {
    const pd = LAYOUT.pd + d * 0x1000;
    mem.write64(LAYOUT.pdpt + d * 8, BigInt(pd) | PDE_PRESENT_RW);
    for (let i = 0; i < 512; i++) {
      mem.write64(pd + i * 8, (BigInt(d * 512 + i) << 21n) | PDE_PRESENT_RW | PDE_PS);
    }
  }
}

/** Long mode, paging on, flat 64-bit segments: the state Firecracker enters vmlinux in. */
export function setupLongMode(mem: GuestMemory, sregs: Sregs): Sregs {
  loadFlatGdt(mem, sregs, GDT_64, VIREO_GDT);
  enableLongMode(mem, sregs);
  return sregs;
}

/** Flat 32-bit protected mode, paging off: the state Multiboot requires. */
export function setupProtectedMode(mem: GuestMemory, sregs: Sregs): Sregs {
  loadFlatGdt(mem, sregs, GDT_32, VIREO_GDT);
  enableProtectedMode(sregs);
  return sregs;
}
