/** The guest's physical memory map (e820 style), shared by the Multiboot and Linux loaders. */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { LAYOUT, MMIO_HOLE_START } from './layout.js';

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface MemMapEntry {
  addr: number;
  size: number;
  type: number;
}

export function memoryMap(mem: GuestMemory): MemMapEntry[] {
  const out: MemMapEntry[] = [
    { addr: 0, size: LAYOUT.lowRamEnd, type: E820_RAM },
    { addr: LAYOUT.lowRamEnd, size: 0xa0000 - LAYOUT.lowRamEnd, type: E820_RESERVED },
    { addr: 0xf0000, size: 0x10000, type: E820_RESERVED },
  ];
  for (const r of mem.descriptors) {
    const start = Math.max(r.gpa, LAYOUT.highMemory);
    const end = r.gpa + r.size;
    if (end > start) out.push({ addr: start, size: end - start, type: E820_RAM });
  }
  return out;
}

/** KiB of RAM from 1 MiB up to the first hole (Multiboot's mem_upper). */
export function upperMemoryKiB(mem: GuestMemory): number {
  const low = mem.descriptors.find((r) => r.gpa === 0);
  if (!low) return 0;
  return Math.max(0, Math.min(low.size, MMIO_HOLE_START) - LAYOUT.highMemory) / 1024;
}
