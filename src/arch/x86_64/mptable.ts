/**
 * The Intel MultiProcessor Specification 1.4 tables: a floating pointer structure and the MP
 * configuration table it points at, for kernels booted without ACPI (`acpi=off`) or that look for
 * it first. Entries: one processor per vCPU (APIC ID = vCPU index, vCPU 0 the bootstrap processor),
 * one ISA bus, the I/O APIC, an I/O interrupt assignment for each ISA IRQ 0..15, and the local
 * interrupts (LINT0 = ExtINT from the 8259s, LINT1 = NMI). The interrupt routing matches the ACPI
 * MADT that acpi.ts writes for the same choice of `irq0ToGsi2`.
 */
import { hex } from '../../common/address.js';
import { ConfigError, VireoError } from '../../common/errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import {
  IO_APIC_ADDR,
  IO_APIC_VERSION,
  LOCAL_APIC_ADDR,
  LOCAL_APIC_VERSION,
  MAX_XAPIC_CPUS,
  MPTABLE_END,
  MPTABLE_START,
} from './firmware-layout.js';

/** Entry types and their sizes (MP spec §4.3). */
export const MP_ENTRY = {
  PROCESSOR: 0,
  BUS: 1,
  IOAPIC: 2,
  IO_INTERRUPT: 3,
  LOCAL_INTERRUPT: 4,
} as const;
export const MP_ENTRY_SIZE: Readonly<Record<number, number>> = { 0: 20, 1: 8, 2: 8, 3: 8, 4: 8 };

/** Interrupt types of I/O and local interrupt assignment entries. */
export const MP_INT = { INT: 0, NMI: 1, SMI: 2, EXTINT: 3 } as const;

export const MP_FLOATING_LEN = 16;
export const MP_HEADER_LEN = 44;
export const MP_SPEC_REV = 4; // 1.4
const CPU_ENABLED = 1 << 0;
const CPU_BSP = 1 << 1;
/** CPU signature (family 6) and feature flags (FPU, APIC) for processor entries. */
const CPU_SIGNATURE = 0x600;
const CPU_FEATURES = (1 << 0) | (1 << 9);
const ISA_BUS_ID = 0;
const MP_OEM_ID = 'VIREO   ';
const MP_PRODUCT_ID = 'VIREOVM     ';

export interface MpTableOptions {
  /** Where the floating pointer goes (16-byte aligned); the configuration table follows it. Default 0xF8000. */
  addr?: number;
  /** The tables must end at or below this. Default MPTABLE_END with the default address. */
  limit?: number;
  /** Route ISA IRQ 0 to I/O APIC pin 2 (and none to pin 0), as the ACPI option of that name. Default false. */
  irq0ToGsi2?: boolean;
}

function sum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

/** The floating pointer and configuration table as bytes, for a floating pointer at `addr`. Pure. */
export function buildMpTable(cpus: number, addr: number = MPTABLE_START, irq0ToGsi2 = false): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_XAPIC_CPUS)
    throw new ConfigError(`the MP table describes 1 to ${MAX_XAPIC_CPUS} vCPUs (xAPIC IDs); got ${cpus}`);
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % 16 !== 0 || addr + MP_FLOATING_LEN > 0x1_0000_0000)
    throw new ConfigError(`the MP floating pointer must be 16-byte aligned below 4 GiB; got ${addr}`);
  const ioapicId = cpus;
  // I/O interrupt assignments: ISA IRQ n → I/O APIC pin n; with the IRQ0 override, IRQ 0 → pin 2 and
  // IRQ 2 (the cascade) unassigned, as SeaBIOS writes it for QEMU.
  const irqs: [number, number][] = [];
  for (let irq = 0; irq < 16; irq++) {
    if (irq0ToGsi2 && irq === 2) continue;
    irqs.push([irq, irq0ToGsi2 && irq === 0 ? 2 : irq]);
  }
  const entries = cpus + 1 + 1 + irqs.length + 2;
  const tableLen = MP_HEADER_LEN + 20 * cpus + 8 + 8 + 8 * irqs.length + 8 * 2;
  const bytes = new Uint8Array(MP_FLOATING_LEN + tableLen);
  const dv = new DataView(bytes.buffer);
  const ascii = (off: number, s: string): void => {
    for (let i = 0; i < s.length; i++) bytes[off + i] = s.charCodeAt(i);
  };

  // Floating pointer structure (§4.1).
  const tableAddr = addr + MP_FLOATING_LEN;
  ascii(0, '_MP_');
  dv.setUint32(4, tableAddr, true);
  bytes[8] = 1; // length in 16-byte paragraphs
  bytes[9] = MP_SPEC_REV;
  // bytes[11] feature 1 = 0: a configuration table is present; bytes[12] bit 7 = 0: virtual wire mode (no IMCR).
  bytes[10] = (0x100 - sum(bytes.subarray(0, MP_FLOATING_LEN))) & 0xff;

  // Configuration table header (§4.2).
  const h = MP_FLOATING_LEN;
  ascii(h, 'PCMP');
  dv.setUint16(h + 4, tableLen, true);
  bytes[h + 6] = MP_SPEC_REV;
  ascii(h + 8, MP_OEM_ID);
  ascii(h + 16, MP_PRODUCT_ID);
  // OEM table pointer and size (h+28, h+32) stay zero.
  dv.setUint16(h + 34, entries, true);
  dv.setUint32(h + 36, LOCAL_APIC_ADDR, true);
  // Extended table length and checksum (h+40, h+42) stay zero.

  let o = h + MP_HEADER_LEN;
  for (let i = 0; i < cpus; i++) {
    bytes.set([MP_ENTRY.PROCESSOR, i, LOCAL_APIC_VERSION, CPU_ENABLED | (i === 0 ? CPU_BSP : 0)], o);
    dv.setUint32(o + 4, CPU_SIGNATURE, true);
    dv.setUint32(o + 8, CPU_FEATURES, true);
    o += 20;
  }
  bytes[o] = MP_ENTRY.BUS;
  bytes[o + 1] = ISA_BUS_ID;
  ascii(o + 2, 'ISA   ');
  o += 8;
  bytes.set([MP_ENTRY.IOAPIC, ioapicId, IO_APIC_VERSION, 1], o); // flags: usable
  dv.setUint32(o + 4, IO_APIC_ADDR, true);
  o += 8;
  for (const [irq, pin] of irqs) {
    // Flags 0: polarity and trigger conform to the ISA bus (edge, active high).
    bytes.set([MP_ENTRY.IO_INTERRUPT, MP_INT.INT, 0, 0, ISA_BUS_ID, irq, ioapicId, pin], o);
    o += 8;
  }
  bytes.set([MP_ENTRY.LOCAL_INTERRUPT, MP_INT.EXTINT, 0, 0, ISA_BUS_ID, 0, 0x00, 0], o); // BSP LINT0
  o += 8;
  bytes.set([MP_ENTRY.LOCAL_INTERRUPT, MP_INT.NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1], o); // every LINT1
  o += 8;
  bytes[h + 7] = (0x100 - sum(bytes.subarray(h, h + tableLen))) & 0xff;
  return bytes;
}

/**
 * Write the MP floating pointer at `options.addr` (default 0xF8000, in the BIOS area Linux scans)
 * with the configuration table right after it; returns the floating pointer's address.
 */
export function writeMpTable(mem: GuestMemory, cpus: number, options: MpTableOptions = {}): number {
  const addr = options.addr ?? MPTABLE_START;
  const limit = options.limit ?? (options.addr === undefined ? MPTABLE_END : undefined);
  const bytes = buildMpTable(cpus, addr, options.irq0ToGsi2 ?? false);
  if (limit !== undefined && addr + bytes.length > limit)
    throw new VireoError(
      'VIREO_ERR_MEMORY_LAYOUT',
      `the MP table for ${cpus} vCPUs needs ${hex(addr)}..${hex(addr + bytes.length)}, past ${hex(limit)}`,
    );
  if (!mem.isValid(addr, bytes.length))
    throw new VireoError(
      'VIREO_ERR_MEMORY_LAYOUT',
      `the MP table at ${hex(addr)}+${hex(bytes.length)} is outside guest memory`,
    );
  mem.write(addr, bytes);
  return addr;
}
