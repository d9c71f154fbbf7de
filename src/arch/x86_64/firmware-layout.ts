/**
 * Where vireo puts the tables firmware would leave for an OS: ACPI and the Intel MP table. Both sit
 * in the BIOS area 0xF0000..0xFFFFF, which the e820 map already marks reserved and which a kernel
 * scans for the RSDP (0xE0000..0xFFFFF, 16-byte steps) and the MP floating pointer (0xF0000..0xFFFFF).
 */

/** The 64 KiB BIOS area, reserved in the e820 map. */
export const BIOS_AREA_START = 0xf0000;
export const BIOS_AREA_END = 0x100000;

/** ACPI: the RSDP at the start, then XSDT, FADT, FACS, MADT and DSDT. 32 KiB holds 254 vCPUs' worth. */
export const ACPI_TABLES_START = 0xf0000;
export const ACPI_TABLES_END = 0xf8000;

/** The MP floating pointer, then the MP configuration table (5.3 KiB at 254 vCPUs). */
export const MPTABLE_START = 0xf8000;
export const MPTABLE_END = 0x100000;

/** The most vCPUs the xAPIC tables can describe: APIC IDs 0..253, the I/O APIC takes the next ID. */
export const MAX_XAPIC_CPUS = 254;

/** Platform interrupt controllers, at the addresses every PC uses. */
export const LOCAL_APIC_ADDR = 0xfee00000;
export const IO_APIC_ADDR = 0xfec00000;
/** KVM's in-kernel I/O APIC: version register 0x11, 24 pins. */
export const IO_APIC_VERSION = 0x11;
export const IO_APIC_PINS = 24;
/** Local APIC version (integrated APIC), as KVM's LAPIC reports it. */
export const LOCAL_APIC_VERSION = 0x14;
