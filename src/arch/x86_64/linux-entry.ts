/**
 * Entry state for the Linux 32/64-bit boot protocol. boot.rst requires a GDT with flat 4 GiB
 * descriptors at __BOOT_CS (0x10, execute/read) and __BOOT_DS (0x18, read/write), CS = __BOOT_CS and
 * DS = ES = SS = __BOOT_DS. vireo's generic GDTs (gdt.ts) put code at 0x08 and the TSS at 0x18, which
 * a kernel that reloads DS with __BOOT_DS before loading its own GDT (the compressed startup_32 of
 * kernels before 5.x) would turn into a #GP. These GDTs keep the TSS at 0x08 instead, in the same
 * 32 bytes at LAYOUT.gdt. PVH entry has no selector requirement and may use either.
 */
import type { Sregs } from '../../kvm/structs.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { gdtEntry, segmentFromGdt } from './gdt.js';
import { LAYOUT } from './layout.js';
import { writeIdentityPageTables } from './regs.js';

export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
const TSS_INDEX = 1;

const TSS = gdtEntry(0x808b, 0, 0xfffff);

/** Index: selector / 8. */
export const GDT_LINUX_32 = [
  0n,
  TSS, // 0x08
  gdtEntry(0xc09b, 0, 0xfffff), // 0x10: __BOOT_CS, 32-bit flat code
  gdtEntry(0xc093, 0, 0xfffff), // 0x18: __BOOT_DS, flat data
];

export const GDT_LINUX_64 = [
  0n,
  TSS, // 0x08
  gdtEntry(0xa09b, 0, 0xfffff), // 0x10: __BOOT_CS, 64-bit code
  gdtEntry(0xc093, 0, 0xfffff), // 0x18: __BOOT_DS, flat data
];

const CR0_PE = 0x1n;
const CR0_ET = 0x10n;
const CR0_PG = 0x80000000n;
const CR4_PAE = 0x20n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;

function applyLinuxGdt(mem: GuestMemory, sregs: Sregs, gdt: readonly bigint[]): void {
  gdt.forEach((e, i) => {
    mem.write64(LAYOUT.gdt + i * 8, e);
  });
  mem.write64(LAYOUT.idt, 0n);
  const cs = segmentFromGdt(gdt[BOOT_CS / 8] as bigint, BOOT_CS / 8);
  const ds = segmentFromGdt(gdt[BOOT_DS / 8] as bigint, BOOT_DS / 8);
  sregs.gdt = { base: BigInt(LAYOUT.gdt), limit: gdt.length * 8 - 1 };
  sregs.idt = { base: BigInt(LAYOUT.idt), limit: 7 };
  sregs.cs = cs;
  sregs.ds = { ...ds };
  sregs.es = { ...ds };
  sregs.fs = { ...ds };
  sregs.gs = { ...ds };
  sregs.ss = { ...ds };
  sregs.tr = segmentFromGdt(gdt[TSS_INDEX] as bigint, TSS_INDEX);
}

/** 32-bit bzImage entry: flat protected mode, paging off, __BOOT_CS/__BOOT_DS. */
export function setupLinuxProtectedMode(mem: GuestMemory, sregs: Sregs): Sregs {
  applyLinuxGdt(mem, sregs, GDT_LINUX_32);
  sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & ~CR0_PG;
  sregs.cr4 &= ~CR4_PAE;
  sregs.efer &= ~(EFER_LME | EFER_LMA);
  return sregs;
}

/**
 * 64-bit bzImage entry: long mode with the first 4 GiB identity mapped (covering the kernel's
 * init_size range, the zero page and the command line, as boot.rst asks), __BOOT_CS/__BOOT_DS.
 */
export function setupLinuxLongMode(mem: GuestMemory, sregs: Sregs): Sregs {
  applyLinuxGdt(mem, sregs, GDT_LINUX_64);
  writeIdentityPageTables(mem);
  sregs.cr3 = BigInt(LAYOUT.pml4);
  sregs.cr4 |= CR4_PAE;
  sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
  sregs.efer |= EFER_LME | EFER_LMA;
  return sregs;
}
