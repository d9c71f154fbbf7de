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
import { gdtEntry } from './gdt.js';

import { enableLongMode, enableProtectedMode, loadFlatGdt } from './regs.js';

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

const LINUX_GDT = { code: BOOT_CS / 8, data: BOOT_DS / 8, tss: TSS_INDEX };

/** 32-bit bzImage entry: flat protected mode, paging off, __BOOT_CS/__BOOT_DS. */
export function setupLinuxProtectedMode(mem: GuestMemory, sregs: Sregs): Sregs {
  loadFlatGdt(mem, sregs, GDT_LINUX_32, LINUX_GDT);
  enableProtectedMode(sregs);
  return sregs;
}

/**
 * 64-bit bzImage entry: long mode with the first 4 GiB identity mapped (covering the kernel's
 * init_size range, the zero page and the command line, as boot.rst asks), __BOOT_CS/__BOOT_DS.
 */
export function setupLinuxLongMode(mem: GuestMemory, sregs: Sregs): Sregs {
  loadFlatGdt(mem, sregs, GDT_LINUX_64, LINUX_GDT);
  enableLongMode(mem, sregs);
  return sregs;
}
