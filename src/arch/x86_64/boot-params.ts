/**
 * Linux x86 `struct boot_params` (the "zero page") and its embedded `struct setup_header`:
 * offsets and flag bits from arch/x86/include/uapi/asm/bootparam.h, Documentation/arch/x86/boot.rst
 * and zero-page.rst. Offsets are from the start of the 4 KiB zero page; the setup header sits at
 * 0x1f1 both in the zero page and in a bzImage file, so the same offsets read the image.
 */
import { VireoError } from '../../common/errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { MemMapEntry } from './memmap.js';

export const ZERO_PAGE_SIZE = 0x1000;

/** boot_params fields outside the setup header. */
export const BP = {
  acpiRsdpAddr: 0x070, // u64
  extRamdiskImage: 0x0c0, // u32: ramdisk_image bits 63..32
  extRamdiskSize: 0x0c4, // u32
  extCmdLinePtr: 0x0c8, // u32
  e820Entries: 0x1e8, // u8
  sentinel: 0x1ef, // u8
  e820Table: 0x2d0, // struct boot_e820_entry[128], 20 bytes each
} as const;

/** setup_header fields (offsets in the image and in boot_params alike). */
export const HDR = {
  start: 0x1f1,
  setupSects: 0x1f1, // u8
  rootFlags: 0x1f2, // u16
  syssize: 0x1f4, // u32 (2.04+), 16-byte paragraphs
  vidMode: 0x1fa, // u16
  bootFlag: 0x1fe, // u16: 0xaa55
  jump: 0x200, // u16: 0xeb, then the header's length past 0x202
  header: 0x202, // u32: "HdrS"
  version: 0x206, // u16
  typeOfLoader: 0x210, // u8
  loadflags: 0x211, // u8
  code32Start: 0x214, // u32
  ramdiskImage: 0x218, // u32
  ramdiskSize: 0x21c, // u32
  heapEndPtr: 0x224, // u16
  extLoaderVer: 0x226, // u8
  extLoaderType: 0x227, // u8
  cmdLinePtr: 0x228, // u32
  initrdAddrMax: 0x22c, // u32 (2.03+)
  kernelAlignment: 0x230, // u32 (2.05+)
  relocatableKernel: 0x234, // u8 (2.05+)
  minAlignment: 0x235, // u8 (2.10+)
  xloadflags: 0x236, // u16 (2.12+)
  cmdlineSize: 0x238, // u32 (2.06+)
  hardwareSubarch: 0x23c, // u32 (2.07+)
  setupData: 0x250, // u64 (2.09+)
  prefAddress: 0x258, // u64 (2.10+)
  initSize: 0x260, // u32 (2.10+)
  handoverOffset: 0x264, // u32 (2.11+)
  kernelInfoOffset: 0x268, // u32 (2.15+)
} as const;

/** The setup header can never extend past this: edd_mbr_sig_buffer follows in boot_params. */
export const HDR_LIMIT = 0x290;

export const BOOT_FLAG_MAGIC = 0xaa55;
/** "HdrS" read as a little-endian u32. */
export const HDRS_MAGIC = 0x53726448;

// loadflags
export const LOADED_HIGH = 1 << 0;
export const KASLR_FLAG = 1 << 1;
export const QUIET_FLAG = 1 << 5;
export const KEEP_SEGMENTS = 1 << 6;
export const CAN_USE_HEAP = 1 << 7;

// xloadflags
export const XLF_KERNEL_64 = 1 << 0;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;

/** type_of_loader for a boot loader without an assigned ID. */
export const LOADER_UNDEFINED = 0xff;
/** vid_mode "normal" (the vga=normal value). */
export const VID_MODE_NORMAL = 0xffff;

export const E820_MAX_ENTRIES_ZEROPAGE = 128;
export const E820_ENTRY_SIZE = 20;

/** Check a caller-supplied memory map: at most 128 entries, addresses and sizes that are integers. */
export function checkE820(entries: readonly MemMapEntry[]): void {
  if (entries.length > E820_MAX_ENTRIES_ZEROPAGE)
    throw new VireoError(
      'VIREO_ERR_MEMORY_LAYOUT',
      `the memory map has ${entries.length} entries; the zero page holds at most ${E820_MAX_ENTRIES_ZEROPAGE}`,
    );
  for (const e of entries) {
    const ok =
      Number.isSafeInteger(e.addr) &&
      e.addr >= 0 &&
      Number.isSafeInteger(e.size) &&
      e.size >= 0 &&
      Number.isInteger(e.type) &&
      e.type >= 0 &&
      e.type <= 0xffffffff;
    if (!ok)
      throw new VireoError(
        'VIREO_ERR_MEMORY_LAYOUT',
        `bad memory map entry ${JSON.stringify(e)}: addr and size must be integers below 2^53, type a u32`,
      );
  }
}

/** Write e820_entries and e820_table into the zero page at `zp`. */
export function writeE820(mem: GuestMemory, zp: number, entries: readonly MemMapEntry[]): void {
  checkE820(entries);
  mem.write8(zp + BP.e820Entries, entries.length);
  entries.forEach((e, i) => {
    const o = zp + BP.e820Table + i * E820_ENTRY_SIZE;
    mem.write64(o, BigInt(e.addr));
    mem.write64(o + 8, BigInt(e.size));
    mem.write32(o + 16, e.type);
  });
}

/** Split a guest-physical address into the low and high 32-bit halves boot_params stores. */
export function split64(v: number): { lo: number; hi: number } {
  return { lo: v % 2 ** 32, hi: Math.floor(v / 2 ** 32) };
}
