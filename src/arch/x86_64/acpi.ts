/**
 * ACPI tables for a PC-style guest with 1..254 vCPUs: RSDP (ACPI 2.0+) → XSDT → FADT (6.3, full
 * ACPI hardware model, i.e. not hardware-reduced) and MADT; the FADT points at the FACS and at a
 * DSDT built with the AML encoder in aml.ts. The guest powers off by writing SLP_TYP=5 with SLP_EN
 * to PM1a_CNT (what `\_S5` says) and resets through the FADT's reset register.
 *
 * Everything is built in host buffers with its checksums, then copied into guest memory through
 * GuestMemory's bounds-checked writes. Layouts follow ACPI 6.3 §5.2.
 */
import { alignUp, hex } from '../../common/address.js';
import { ConfigError, VireoError } from '../../common/errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import {
  type AmlBytes,
  device,
  eisaId,
  extendedInterrupt,
  integer,
  ioPort,
  irqNoFlags,
  memory32Fixed,
  name,
  pkg,
  resourceTemplate,
  scope,
  string,
} from './aml.js';
import {
  ACPI_TABLES_END,
  ACPI_TABLES_START,
  IO_APIC_ADDR,
  LOCAL_APIC_ADDR,
  MAX_XAPIC_CPUS,
} from './firmware-layout.js';

// The fixed hardware the FADT describes: I/O ports a PM device must decode (PIIX4's layout at 0x600).

/** PM1a event block: PM1_STS (16 bits, write 1 to clear) at +0, PM1_EN (16 bits) at +2. */
export const ACPI_PM1A_EVT = 0x600;
export const ACPI_PM1_EVT_LEN = 4;
/** PM1a control block: one 16-bit register. SCI_EN must read as 1. */
export const ACPI_PM1A_CNT = 0x604;
export const ACPI_PM1_CNT_LEN = 2;
/** Where the PM timer goes when `pmTimer` is set: a 24-bit counter at 3.579545 MHz, read as 32 bits. */
export const ACPI_PM_TMR = 0x608;
export const ACPI_PM_TMR_LEN = 4;
/** PM1_CNT bits. */
export const ACPI_SCI_EN = 1 << 0;
export const ACPI_SLP_TYP_SHIFT = 10;
export const ACPI_SLP_TYP_MASK = 0x7 << ACPI_SLP_TYP_SHIFT;
export const ACPI_SLP_EN = 1 << 13;
/** The SLP_TYP values the DSDT's \_S0 and \_S5 packages give. */
export const ACPI_S0_SLP_TYP = 0;
export const ACPI_S5_SLP_TYP = 5;
/** PM1_STS / PM1_EN bit of the fixed-feature power button (FADT PWR_BUTTON flag clear). */
export const ACPI_PWRBTN = 1 << 8;
/** The SCI: ISA IRQ 9 = GSI 9, level-triggered, active high. */
export const ACPI_SCI_IRQ = 9;
/** The FADT's reset register by default: the PIIX/ICH reset control register, hard reset (SYS_RST|RST_CPU). */
export const ACPI_RESET_PORT = 0xcf9;
export const ACPI_RESET_VALUE = 0x06;

export const ACPI_OEM_ID = 'VIREO ';
export const ACPI_OEM_TABLE_ID = 'VIREOVM ';
export const ACPI_OEM_REVISION = 1;
export const ACPI_CREATOR_ID = 'VIRE';
export const ACPI_CREATOR_REVISION = 1;
const HYPERVISOR_VENDOR_ID = 'VIREOKVM';

// Legacy devices the DSDT declares (the platform's fixed ISA ports and IRQs).
const COM1 = { port: 0x3f8, irq: 4 } as const;
const I8042 = { data: 0x60, command: 0x64, irq: 1 } as const;
const RTC = { port: 0x70, irq: 8 } as const;
/** The CMOS register that holds the century (FADT CENTURY), as on PCs. */
export const CMOS_CENTURY_REGISTER = 0x32;

export interface AcpiConfig {
  /** vCPUs, 1..254; vCPU i has local APIC ID i and ACPI processor UID i. */
  cpus: number;
  /** The RSDP's guest-physical address: 16-byte aligned. Default ACPI_TABLES_START (0xF0000). */
  rsdpAddr?: number;
  /** The tables (RSDP first) must end at or below this. Default ACPI_TABLES_END with the default rsdpAddr. */
  limit?: number;
  /**
   * Describe ISA IRQ 0 (the PIT) as wired to GSI 2 (an Interrupt Source Override, as QEMU does).
   * Only right if the VMM routes GSI 0 to I/O APIC pin 2 with KVM_SET_GSI_ROUTING, as QEMU does: KVM's
   * default routing, which vireo keeps, sends the in-kernel PIT's GSI 0 to pin 0. Default false.
   */
  irq0ToGsi2?: boolean;
  /** Declare the ACPI PM timer at ACPI_PM_TMR (the VMM must then decode it). Default false. */
  pmTimer?: boolean;
  /** A CMOS RTC at 0x70/0x71 with IRQ 8 and a century register (0x32). Default true. */
  cmosRtc?: boolean;
  /** COM1 (0x3F8, IRQ 4) in the DSDT. Default true. */
  serial?: boolean;
  /** The i8042 keyboard controller (0x60/0x64, IRQ 1; FADT 8042 flag). Default true. */
  i8042?: boolean;
  /** Declare QEMU's pvpanic device (ACPI ID QEMU0001) at this I/O port. Default: absent. */
  pvpanicPort?: number;
  /** The FADT reset register: an I/O port and the byte that resets. Default 0xCF9 ← 0x06. */
  reset?: { port: number; value: number };
  /** virtio-mmio devices, declared as LNRO0005 (Linux's virtio_mmio ACPI match) with their window and GSI. */
  virtioMmio?: readonly VirtioMmioAcpi[];
}

export interface VirtioMmioAcpi {
  base: number;
  size: number;
  /** GSI, edge-triggered and active high (as the irqfd raises it). */
  irq: number;
}

export interface AcpiTableInfo {
  /** The signature: RSDP, XSDT, FACP, FACS, APIC, DSDT. */
  name: string;
  addr: number;
  length: number;
}

export interface AcpiTables {
  rsdpAddr: number;
  tables: AcpiTableInfo[];
  /** The first byte past the last table. */
  end: number;
}

/** A little-endian byte buffer for building one table. */
class TableBytes {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  constructor(length: number) {
    this.bytes = new Uint8Array(length);
    this.dv = new DataView(this.bytes.buffer);
  }
  u8(off: number, v: number): void {
    this.dv.setUint8(off, v);
  }
  u16(off: number, v: number): void {
    this.dv.setUint16(off, v, true);
  }
  u32(off: number, v: number): void {
    this.dv.setUint32(off, v >>> 0, true);
  }
  u64(off: number, v: number | bigint): void {
    this.dv.setBigUint64(off, BigInt(v), true);
  }
  ascii(off: number, s: string, len: number): void {
    if (s.length !== len) throw new VireoError('VIREO_ERR_CONFIG', `ACPI field '${s}' must be ${len} characters`);
    for (let i = 0; i < len; i++) this.u8(off + i, s.charCodeAt(i));
  }
  set(off: number, data: readonly number[] | Uint8Array): void {
    this.bytes.set(data, off);
  }
  /** Store at `off` the byte that makes bytes [start, end) sum to zero. */
  checksum(off: number, start = 0, end = this.bytes.length): void {
    this.u8(off, 0);
    this.u8(off, (0x100 - byteSum(this.bytes.subarray(start, end))) & 0xff);
  }
}

/** The 8-bit sum of some bytes (zero for a table with a correct checksum). */
export function byteSum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

const HEADER_LEN = 36;

/** A table with the standard 36-byte System Description Table header; the checksum is set by `finish`. */
function sdt(signature: string, length: number, revision: number): TableBytes {
  const t = new TableBytes(length);
  t.ascii(0, signature, 4);
  t.u32(4, length);
  t.u8(8, revision);
  t.ascii(10, ACPI_OEM_ID, 6);
  t.ascii(16, ACPI_OEM_TABLE_ID, 8);
  t.u32(24, ACPI_OEM_REVISION);
  t.ascii(28, ACPI_CREATOR_ID, 4);
  t.u32(32, ACPI_CREATOR_REVISION);
  return t;
}

function finish(t: TableBytes): Uint8Array {
  t.checksum(9);
  return t.bytes;
}

// Generic Address Structure (§5.2.3.2).
const GAS_SYSTEM_IO = 1;
const ACCESS_BYTE = 1;
const ACCESS_WORD = 2;
const ACCESS_DWORD = 3;

function gas(t: TableBytes, off: number, port: number, bitWidth: number, accessSize: number): void {
  if (port === 0) return; // an absent register: all zero
  t.u8(off, GAS_SYSTEM_IO);
  t.u8(off + 1, bitWidth);
  t.u8(off + 2, 0);
  t.u8(off + 3, accessSize);
  t.u64(off + 4, port);
}

interface Resolved {
  cpus: number;
  irq0ToGsi2: boolean;
  pmTimer: boolean;
  cmosRtc: boolean;
  serial: boolean;
  i8042: boolean;
  pvpanicPort: number | undefined;
  reset: { port: number; value: number };
  virtioMmio: readonly VirtioMmioAcpi[];
}

function resolve(config: AcpiConfig): Resolved {
  const { cpus } = config;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_XAPIC_CPUS)
    throw new ConfigError(`ACPI tables describe 1 to ${MAX_XAPIC_CPUS} vCPUs (xAPIC IDs); got ${cpus}`);
  const reset = config.reset ?? { port: ACPI_RESET_PORT, value: ACPI_RESET_VALUE };
  if (
    !isPort(reset.port) ||
    reset.port === 0 ||
    !Number.isInteger(reset.value) ||
    reset.value < 0 ||
    reset.value > 0xff
  )
    throw new ConfigError(`bad ACPI reset register: port ${reset.port}, value ${reset.value}`);
  if (config.pvpanicPort !== undefined && (!isPort(config.pvpanicPort) || config.pvpanicPort === 0))
    throw new ConfigError(`bad pvpanic port ${config.pvpanicPort}`);
  return {
    cpus,
    irq0ToGsi2: config.irq0ToGsi2 ?? false,
    pmTimer: config.pmTimer ?? false,
    cmosRtc: config.cmosRtc ?? true,
    serial: config.serial ?? true,
    i8042: config.i8042 ?? true,
    pvpanicPort: config.pvpanicPort,
    reset,
    virtioMmio: config.virtioMmio ?? [],
  };
}

function isPort(p: number): boolean {
  return Number.isInteger(p) && p >= 0 && p <= 0xffff;
}

/** RSDP (§5.2.5.3), revision 2: 36 bytes with the ACPI 1.0 checksum over 20 and the extended one over all. */
function buildRsdp(xsdtAddr: number): Uint8Array {
  const t = new TableBytes(36);
  t.ascii(0, 'RSD PTR ', 8);
  t.ascii(9, ACPI_OEM_ID, 6);
  t.u8(15, 2); // revision: ACPI 2.0+
  t.u32(16, 0); // RsdtAddress: no RSDT, the XSDT is the root
  t.u32(20, 36);
  t.u64(24, xsdtAddr);
  t.checksum(8, 0, 20);
  t.checksum(32, 0, 36);
  return t.bytes;
}

/** XSDT (§5.2.8): 64-bit pointers to the other description tables (not the DSDT or FACS). */
function buildXsdt(entries: readonly number[]): Uint8Array {
  const t = sdt('XSDT', HEADER_LEN + 8 * entries.length, 1);
  for (const [i, a] of entries.entries()) t.u64(HEADER_LEN + 8 * i, a);
  return finish(t);
}

export const FADT_LEN = 276;
/** FADT flags (§5.2.9, table 5.35). */
export const FADT_F = {
  WBINVD: 1 << 0,
  PROC_C1: 1 << 2,
  PWR_BUTTON: 1 << 4,
  SLP_BUTTON: 1 << 5,
  FIX_RTC: 1 << 6,
  TMR_VAL_EXT: 1 << 8,
  RESET_REG_SUP: 1 << 10,
  HW_REDUCED_ACPI: 1 << 20,
} as const;
/** IA-PC boot architecture flags (§5.2.9.3). */
export const IAPC_BOOT_ARCH = {
  LEGACY_DEVICES: 1 << 0,
  I8042: 1 << 1,
  VGA_NOT_PRESENT: 1 << 2,
  MSI_NOT_SUPPORTED: 1 << 3,
  PCIE_ASPM_CONTROLS: 1 << 4,
  CMOS_RTC_NOT_PRESENT: 1 << 5,
} as const;

/** FADT (§5.2.9), revision 6.3, 276 bytes. */
function buildFadt(cfg: Resolved, dsdtAddr: number, facsAddr: number): Uint8Array {
  const t = sdt('FACP', FADT_LEN, 6);
  t.u32(36, facsAddr); // FIRMWARE_CTRL (X_FIRMWARE_CTRL holds the same address)
  t.u32(40, dsdtAddr); // DSDT (X_DSDT holds the same address)
  t.u8(45, 0); // Preferred_PM_Profile: unspecified
  t.u16(46, ACPI_SCI_IRQ);
  t.u32(48, 0); // SMI_CMD 0: no SMM handshake, ACPI is always enabled (SCI_EN reads 1)
  t.u8(52, 0); // ACPI_ENABLE
  t.u8(53, 0); // ACPI_DISABLE
  t.u32(56, ACPI_PM1A_EVT);
  t.u32(64, ACPI_PM1A_CNT);
  t.u32(76, cfg.pmTimer ? ACPI_PM_TMR : 0);
  t.u8(88, ACPI_PM1_EVT_LEN);
  t.u8(89, ACPI_PM1_CNT_LEN);
  t.u8(91, cfg.pmTimer ? ACPI_PM_TMR_LEN : 0);
  t.u16(96, 0x0fff); // P_LVL2_LAT > 100: no C2
  t.u16(98, 0x0fff); // P_LVL3_LAT > 1000: no C3
  t.u8(108, cfg.cmosRtc ? CMOS_CENTURY_REGISTER : 0); // CENTURY
  let boot = IAPC_BOOT_ARCH.LEGACY_DEVICES | IAPC_BOOT_ARCH.VGA_NOT_PRESENT;
  if (cfg.i8042) boot |= IAPC_BOOT_ARCH.I8042;
  if (!cfg.cmosRtc) boot |= IAPC_BOOT_ARCH.CMOS_RTC_NOT_PRESENT;
  t.u16(109, boot);
  // The power button is a fixed feature (PWR_BUTTON clear: PM1 PWRBTN_STS/EN); no sleep button; no RTC wake.
  t.u32(112, FADT_F.WBINVD | FADT_F.PROC_C1 | FADT_F.SLP_BUTTON | FADT_F.FIX_RTC | FADT_F.RESET_REG_SUP);
  gas(t, 116, cfg.reset.port, 8, ACCESS_BYTE); // RESET_REG
  t.u8(128, cfg.reset.value);
  t.u16(129, 0); // ARM_BOOT_ARCH
  t.u8(131, 3); // FADT minor version: 6.3
  t.u64(132, facsAddr); // X_FIRMWARE_CTRL
  t.u64(140, dsdtAddr); // X_DSDT
  gas(t, 148, ACPI_PM1A_EVT, 8 * ACPI_PM1_EVT_LEN, ACCESS_WORD); // X_PM1a_EVT_BLK
  gas(t, 172, ACPI_PM1A_CNT, 8 * ACPI_PM1_CNT_LEN, ACCESS_WORD); // X_PM1a_CNT_BLK
  if (cfg.pmTimer) gas(t, 208, ACPI_PM_TMR, 8 * ACPI_PM_TMR_LEN, ACCESS_DWORD); // X_PM_TMR_BLK
  // X_PM1b_*, X_PM2_CNT, X_GPE0/1 and the hardware-reduced sleep registers stay zero (absent).
  t.ascii(268, HYPERVISOR_VENDOR_ID, 8);
  return finish(t);
}

export const FACS_LEN = 64;

/** FACS (§5.2.10): no checksum; 64-byte aligned. Holds the global lock and the (unused) waking vector. */
function buildFacs(): Uint8Array {
  const t = new TableBytes(FACS_LEN);
  t.ascii(0, 'FACS', 4);
  t.u32(4, FACS_LEN);
  t.u8(32, 2); // version
  return t.bytes;
}

/** MADT structure types (§5.2.12). */
export const MADT_TYPE = { LOCAL_APIC: 0, IO_APIC: 1, INTERRUPT_OVERRIDE: 2, LOCAL_APIC_NMI: 4 } as const;
/** MPS INTI flags: polarity bits 1:0, trigger mode bits 3:2. */
export const MPS_INTI = {
  CONFORMS: 0,
  ACTIVE_HIGH: 0x1,
  ACTIVE_LOW: 0x3,
  EDGE: 0x1 << 2,
  LEVEL: 0x3 << 2,
} as const;

export interface InterruptOverride {
  irq: number;
  gsi: number;
  flags: number;
}

/** The Interrupt Source Overrides for a configuration: IRQ0→GSI2 only when asked, and the SCI. */
export function interruptOverrides(config: Pick<AcpiConfig, 'irq0ToGsi2'>): InterruptOverride[] {
  const out: InterruptOverride[] = [];
  if (config.irq0ToGsi2) out.push({ irq: 0, gsi: 2, flags: MPS_INTI.CONFORMS });
  out.push({ irq: ACPI_SCI_IRQ, gsi: ACPI_SCI_IRQ, flags: MPS_INTI.ACTIVE_HIGH | MPS_INTI.LEVEL });
  return out;
}

/** MADT (§5.2.12), revision 5: local APICs 0..cpus-1, one I/O APIC (ID = cpus), overrides, LINT1 = NMI. */
function buildMadt(cfg: Resolved): Uint8Array {
  const overrides = interruptOverrides(cfg);
  const length = HEADER_LEN + 8 + 8 * cfg.cpus + 12 + 10 * overrides.length + 6;
  const t = sdt('APIC', length, 5);
  t.u32(36, LOCAL_APIC_ADDR);
  t.u32(40, 1); // PCAT_COMPAT: dual 8259s present (Linux masks them when it uses the I/O APIC)
  let o = 44;
  for (let i = 0; i < cfg.cpus; i++) {
    t.set(o, [MADT_TYPE.LOCAL_APIC, 8, i, i]); // ACPI processor UID, APIC ID
    t.u32(o + 4, 1); // enabled
    o += 8;
  }
  t.set(o, [MADT_TYPE.IO_APIC, 12, cfg.cpus, 0]); // I/O APIC ID after the local APICs'
  t.u32(o + 4, IO_APIC_ADDR);
  t.u32(o + 8, 0); // GSI base
  o += 12;
  for (const ov of overrides) {
    t.set(o, [MADT_TYPE.INTERRUPT_OVERRIDE, 10, 0, ov.irq]); // bus 0 = ISA
    t.u32(o + 4, ov.gsi);
    t.u16(o + 8, ov.flags);
    o += 10;
  }
  t.set(o, [MADT_TYPE.LOCAL_APIC_NMI, 6, 0xff]); // all processors
  t.u16(o + 3, MPS_INTI.CONFORMS);
  t.u8(o + 5, 1); // LINT1
  return finish(t);
}

/** The DSDT's AML: sleep states, processors, and the legacy devices with their resources. */
export function dsdtAml(config: AcpiConfig): AmlBytes {
  const cfg = resolve(config);
  const sb: AmlBytes[] = [];
  for (let i = 0; i < cfg.cpus; i++) {
    sb.push(device(processorName(i), [name('_HID', string('ACPI0007')), name('_UID', integer(i))]));
  }
  if (cfg.serial) {
    sb.push(
      device('COM1', [
        name('_HID', eisaId('PNP0501')),
        name('_UID', integer(1)),
        name('_CRS', resourceTemplate([ioPort(COM1.port, COM1.port, 0, 8), irqNoFlags([COM1.irq])])),
      ]),
    );
  }
  if (cfg.i8042) {
    sb.push(
      device('PS2K', [
        name('_HID', eisaId('PNP0303')),
        name(
          '_CRS',
          resourceTemplate([
            ioPort(I8042.data, I8042.data, 1, 1),
            ioPort(I8042.command, I8042.command, 1, 1),
            irqNoFlags([I8042.irq]),
          ]),
        ),
      ]),
    );
  }
  if (cfg.cmosRtc) {
    sb.push(
      device('RTC', [
        name('_HID', eisaId('PNP0B00')),
        name('_CRS', resourceTemplate([ioPort(RTC.port, RTC.port, 1, 2), irqNoFlags([RTC.irq])])),
      ]),
    );
  }
  if (cfg.pvpanicPort !== undefined) {
    const p = cfg.pvpanicPort;
    sb.push(device('PEVT', [name('_HID', string('QEMU0001')), name('_CRS', resourceTemplate([ioPort(p, p, 1, 1)]))]));
  }
  cfg.virtioMmio.forEach((v, i) => {
    if (i > 0xff) throw new ConfigError('ACPI describes at most 256 virtio-mmio devices');
    sb.push(
      device(`VR${i.toString(16).toUpperCase().padStart(2, '0')}`, [
        name('_HID', string('LNRO0005')),
        name('_UID', integer(i)),
        name('_CCA', integer(1)), // cache-coherent DMA
        name('_CRS', resourceTemplate([memory32Fixed(v.base, v.size), extendedInterrupt(v.irq, true, false)])),
      ]),
    );
  });
  const sleep = (typ: number): AmlBytes => pkg([integer(typ), integer(typ), integer(0), integer(0)]);
  return [...name('_S0_', sleep(ACPI_S0_SLP_TYP)), ...name('_S5_', sleep(ACPI_S5_SLP_TYP)), ...scope('_SB_', sb)];
}

/** The processor device for vCPU i: C000, C001, … (its _UID is i, the MADT's processor UID). */
export function processorName(i: number): string {
  return `C${i.toString(16).toUpperCase().padStart(3, '0')}`;
}

function buildDsdt(config: AcpiConfig): Uint8Array {
  const aml = dsdtAml(config);
  const t = sdt('DSDT', HEADER_LEN + aml.length, 2); // revision 2: 64-bit integers
  t.set(HEADER_LEN, aml);
  return finish(t);
}

/**
 * Build every table for `config` as it would sit at `rsdpAddr`: RSDP, XSDT, FADT, FACS (64-byte
 * aligned), MADT, DSDT, each 16-byte aligned. Pure: touches no guest memory.
 */
export function buildAcpiTables(
  config: AcpiConfig,
  rsdpAddr: number = ACPI_TABLES_START,
): { name: string; addr: number; bytes: Uint8Array }[] {
  const cfg = resolve(config);
  if (!Number.isSafeInteger(rsdpAddr) || rsdpAddr < 0 || rsdpAddr % 16 !== 0)
    throw new ConfigError(`the RSDP address must be 16-byte aligned; got ${rsdpAddr}`);
  const dsdt = buildDsdt(config);
  const madt = buildMadt(cfg);
  const xsdtLen = HEADER_LEN + 8 * 2;
  const xsdtAddr = alignUp(rsdpAddr + 36, 16);
  const fadtAddr = alignUp(xsdtAddr + xsdtLen, 16);
  const facsAddr = alignUp(fadtAddr + FADT_LEN, 64);
  const madtAddr = alignUp(facsAddr + FACS_LEN, 16);
  const dsdtAddr = alignUp(madtAddr + madt.length, 16);
  if (dsdtAddr + dsdt.length > 0x1_0000_0000)
    throw new ConfigError(`ACPI tables at ${hex(rsdpAddr)} would cross 4 GiB (32-bit DSDT/FACS pointers)`);
  return [
    { name: 'RSDP', addr: rsdpAddr, bytes: buildRsdp(xsdtAddr) },
    { name: 'XSDT', addr: xsdtAddr, bytes: buildXsdt([fadtAddr, madtAddr]) },
    { name: 'FACP', addr: fadtAddr, bytes: buildFadt(cfg, dsdtAddr, facsAddr) },
    { name: 'FACS', addr: facsAddr, bytes: buildFacs() },
    { name: 'APIC', addr: madtAddr, bytes: madt },
    { name: 'DSDT', addr: dsdtAddr, bytes: dsdt },
  ];
}

/**
 * Write the ACPI tables into guest memory. The RSDP goes at `config.rsdpAddr` (default 0xF0000,
 * where a kernel scanning 0xE0000..0xFFFFF finds it; a Linux loader should also put it in
 * boot_params.acpi_rsdp_addr). Fails, writing nothing, if the tables would pass `limit` or leave guest memory.
 */
export function writeAcpiTables(mem: GuestMemory, config: AcpiConfig): AcpiTables {
  const rsdpAddr = config.rsdpAddr ?? ACPI_TABLES_START;
  const limit = config.limit ?? (config.rsdpAddr === undefined ? ACPI_TABLES_END : undefined);
  const built = buildAcpiTables(config, rsdpAddr);
  const last = built[built.length - 1];
  const end = last === undefined ? rsdpAddr : last.addr + last.bytes.length;
  if (limit !== undefined && end > limit)
    throw new VireoError(
      'VIREO_ERR_MEMORY_LAYOUT',
      `ACPI tables for ${config.cpus} vCPUs need ${hex(rsdpAddr)}..${hex(end)}, past ${hex(limit)}`,
    );
  for (const t of built) {
    if (!mem.isValid(t.addr, t.bytes.length))
      throw new VireoError(
        'VIREO_ERR_MEMORY_LAYOUT',
        `ACPI table ${t.name} at ${hex(t.addr)}+${hex(t.bytes.length)} is outside guest memory`,
      );
  }
  mem.fill(rsdpAddr, end - rsdpAddr, 0);
  for (const t of built) mem.write(t.addr, t.bytes);
  return { rsdpAddr, end, tables: built.map((t) => ({ name: t.name, addr: t.addr, length: t.bytes.length })) };
}
