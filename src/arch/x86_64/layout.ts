/** The x86_64 guest-physical memory map vireo builds. */
import { GiB, MiB } from '../../common/address.js';

/** Start of the 32-bit MMIO hole (as Firecracker: 768 MiB below 4 GiB). */
export const MMIO_HOLE_START = 4 * GiB - 768 * MiB;
export const MMIO_HOLE_END = 4 * GiB;
/** Where vireo puts virtio-mmio and other MMIO devices: the start of the hole. */
export const MMIO_DEVICES_START = MMIO_HOLE_START;

/** Fixed low-memory addresses used by the loaders. */
export const LAYOUT = {
  /** GDT for 32/64-bit entry. */
  gdt: 0x500,
  /** IDT (empty) for entry. */
  idt: 0x520,
  /** Page tables: PML4, PDPT, and 4 page directories (identity 4 GiB in 2 MiB pages). */
  pml4: 0x9000,
  pdpt: 0xa000,
  pd: 0xb000,
  /** Boot stack top for 64-bit ELF entry. */
  bootStack: 0x8ff0,
  /** Zero page / boot info area. */
  bootInfo: 0x7000,
  /** Kernel command line. */
  cmdline: 0x20000,
  cmdlineMax: 0x10000,
  /** Multiboot info area and module list. */
  multibootInfo: 0x30000,
  /** End of conventional memory the guest may use (EBDA starts). */
  lowRamEnd: 0x9fc00,
  /** Kernels load at or above 1 MiB. */
  highMemory: 0x100000,
} as const;

/** RAM ranges for a guest of `size` bytes, split around the 32-bit MMIO hole. */
export function ramRanges(size: number): { gpa: number; size: number }[] {
  if (size <= MMIO_HOLE_START) return [{ gpa: 0, size }];
  return [
    { gpa: 0, size: MMIO_HOLE_START },
    { gpa: MMIO_HOLE_END, size: size - MMIO_HOLE_START },
  ];
}
