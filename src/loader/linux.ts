/**
 * The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 32- and 64-bit entry: a bzImage's
 * setup header is parsed and checked, its protected-mode kernel loaded at 1 MiB, the initrd placed as
 * high as the kernel allows, and the zero page (struct boot_params) built with the command line,
 * the initrd, the ACPI RSDP and the e820 map. An ELF vmlinux gets the same zero page with a setup
 * header vireo makes up. Pure functions over GuestMemory: the caller sets the entry registers
 * (RSI = zero page for 64-bit entry, ESI = zero page for 32-bit entry).
 *
 * The image is untrusted: every size and offset is checked against the file and guest memory before
 * anything is written, and a bad image gets one ImageError line.
 */

import {
  BOOT_FLAG_MAGIC,
  BP,
  checkE820,
  HDR,
  HDR_LIMIT,
  HDRS_MAGIC,
  LOADED_HIGH,
  LOADER_UNDEFINED,
  split64,
  VID_MODE_NORMAL,
  writeE820,
  XLF_KERNEL_64,
  ZERO_PAGE_SIZE,
} from '../arch/x86_64/boot-params.js';
import { LAYOUT, MMIO_HOLE_START } from '../arch/x86_64/layout.js';
import { E820_RAM, type MemMapEntry, memoryMap } from '../arch/x86_64/memmap.js';
import { alignUp, hex } from '../common/address.js';
import { ImageError } from '../common/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { loadElf, parseElf } from './elf.js';

/** The oldest protocol vireo boots: 2.06 (Linux 2.6.22) added cmdline_size. */
export const MIN_BOOT_PROTOCOL = 0x0206;
/** The version vireo writes into the header it makes up for an ELF vmlinux. */
export const ELF_BOOT_PROTOCOL = 0x020f;
/** x86 COMMAND_LINE_SIZE (2048) less the NUL: the longest command line a vmlinux takes. */
export const ELF_CMDLINE_MAX = 2047;
/** kernel_alignment written for an ELF vmlinux (Firecracker's value: 16 MiB). */
const ELF_KERNEL_ALIGNMENT = 0x1000000;
const PAGE = 0x1000;
const SECTOR = 512;
/** The 64-bit entry (startup_64) is 0x200 bytes into the protected-mode kernel. */
const ENTRY64_OFFSET = 0x200;
const FOUR_GIB = 2 ** 32;

export type EntryMode = '64' | '32';

/** What a bzImage's setup header says, checked. */
export interface SetupHeader {
  /** Protocol version, (major << 8) | minor. */
  version: number;
  /** setup_sects as used (0 in the file means 4). */
  setupSects: number;
  /** Offset of the protected-mode kernel in the file: (setupSects + 1) * 512. */
  setupBytes: number;
  /** One past the last byte of the setup header in the file (0x202 + the jump's offset byte). */
  headerEnd: number;
  loadflags: number;
  /** 0 below protocol 2.12. */
  xloadflags: number;
  /** The highest address the initrd may occupy (inclusive). */
  initrdAddrMax: number;
  kernelAlignment: number;
  relocatable: boolean;
  /** The longest command line, without its NUL. */
  cmdlineSize: number;
  /** 0 below protocol 2.10. */
  prefAddress: number;
  /** Memory the kernel needs from its runtime start before it reads the memory map; 0 below 2.10. */
  initSize: number;
  /** Bytes of protected-mode kernel in the file (everything after the setup sectors). */
  kernelSize: number;
}

export interface LinuxBootOptions {
  cmdline: string;
  initrd?: Buffer | undefined;
  /** The e820 map for the zero page (and initrd placement); default: memoryMap(mem). */
  e820?: readonly MemMapEntry[] | undefined;
  /** Physical address of the ACPI RSDP, 0 (default) if there is none. */
  rsdpAddr?: number | undefined;
  /** Where the command line goes; default LAYOUT.cmdline. */
  cmdlineAddr?: number | undefined;
  /** Where the zero page goes; default LAYOUT.bootInfo. */
  zeroPageAddr?: number | undefined;
  /** Name of the kernel in messages; default 'kernel'. */
  name?: string | undefined;
}

export interface LinuxLoad {
  /** Guest-physical entry point. */
  entry: number;
  /** '64': long mode, RSI = zeroPage. '32': flat protected mode, paging off, ESI = zeroPage. */
  entryMode: EntryMode;
  zeroPage: number;
  cmdlineAddr: number;
  /** Where the kernel was loaded. */
  kernelLoad: number;
  /** One past the last byte the kernel may use before it reads the memory map (load .. init_size). */
  kernelEnd: number;
  initrd?: { addr: number; size: number } | undefined;
  /** The parsed setup header (bzImage only). */
  header?: SetupHeader | undefined;
}

const versionString = (v: number): string => `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;

/** A quick look: does the image carry a Linux setup header (boot flag and "HdrS")? */
export function isBzImage(image: Buffer): boolean {
  return (
    image.length >= HDR.header + 4 &&
    image.readUInt16LE(HDR.bootFlag) === BOOT_FLAG_MAGIC &&
    image.readUInt32LE(HDR.header) === HDRS_MAGIC
  );
}

/** Parse and check a bzImage's setup header. */
export function parseBzImage(image: Buffer, name = 'kernel'): SetupHeader {
  const fail = (why: string): never => {
    throw new ImageError(`${name} is not a bootable bzImage: ${why}`);
  };
  if (image.length < HDR.version + 2) fail(`file is ${image.length} bytes, too short for a setup header`);
  const bootFlag = image.readUInt16LE(HDR.bootFlag);
  if (bootFlag !== BOOT_FLAG_MAGIC) fail(`boot_flag at 0x1fe is ${hex(bootFlag)}, not 0xaa55`);
  if (image.readUInt32LE(HDR.header) !== HDRS_MAGIC)
    fail('no "HdrS" signature at 0x202 (a pre-2.00 zImage, or not a Linux kernel)');
  const version = image.readUInt16LE(HDR.version);
  if (version < MIN_BOOT_PROTOCOL)
    throw new ImageError(
      `${name} uses Linux boot protocol ${versionString(version)}; vireo needs 2.06 or later (Linux 2.6.22+)`,
    );
  if (image[HDR.jump] !== 0xeb) fail(`no short jump at 0x200 to give the setup header's length`);
  const headerEnd = HDR.header + (image[HDR.jump + 1] as number);
  // The fields vireo reads must lie inside the header the kernel declares.
  const needed = version >= 0x020a ? HDR.initSize + 4 : HDR.cmdlineSize + 4;
  if (headerEnd < needed)
    fail(`setup header ends at ${hex(headerEnd)} but protocol ${versionString(version)} fields reach ${hex(needed)}`);
  if (headerEnd > HDR_LIMIT) fail(`setup header ends at ${hex(headerEnd)}, past boot_params' limit of 0x290`);
  if (headerEnd > image.length) fail(`file ends at ${hex(image.length)}, inside the setup header`);

  const sects = image[HDR.setupSects] as number;
  const setupSects = sects === 0 ? 4 : sects;
  const setupBytes = (setupSects + 1) * SECTOR;
  if (setupBytes >= image.length)
    fail(`setup_sects ${setupSects} puts the kernel at ${hex(setupBytes)}, past the end of the file`);
  const kernelSize = image.length - setupBytes;
  const syssize = image.readUInt32LE(HDR.syssize) * 16;
  if (syssize > kernelSize)
    fail(`syssize says ${syssize} bytes of kernel but the file has ${kernelSize} after the setup (truncated?)`);

  const loadflags = image[HDR.loadflags] as number;
  if (!(loadflags & LOADED_HIGH))
    fail('loadflags lacks LOADED_HIGH: a zImage loaded at 0x10000, which vireo does not boot');

  const relocatable = image[HDR.relocatableKernel] !== 0;
  const kernelAlignment = image.readUInt32LE(HDR.kernelAlignment);
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0))
    fail(`kernel_alignment ${hex(kernelAlignment)} is not a power of two`);

  let prefAddress = 0;
  let initSize = 0;
  if (version >= 0x020a) {
    const pref = image.readBigUInt64LE(HDR.prefAddress);
    if (pref >= BigInt(FOUR_GIB)) fail(`pref_address ${hex(pref)} is above 4 GiB`);
    prefAddress = Number(pref);
    initSize = image.readUInt32LE(HDR.initSize);
  }

  return {
    version,
    setupSects,
    setupBytes,
    headerEnd,
    loadflags,
    xloadflags: version >= 0x020c ? image.readUInt16LE(HDR.xloadflags) : 0,
    initrdAddrMax: image.readUInt32LE(HDR.initrdAddrMax),
    kernelAlignment,
    relocatable,
    cmdlineSize: image.readUInt32LE(HDR.cmdlineSize),
    prefAddress,
    initSize,
    kernelSize,
  };
}

/**
 * The range a bzImage loaded at `load` may touch before it reads the memory map. boot.rst gives the
 * runtime start of a relocatable kernel as align_up(load, kernel_alignment); the decompressor
 * (arch/x86/boot/compressed/head_{32,64}.S) in fact runs at no lower than LOAD_PHYSICAL_ADDR, which
 * is pref_address. Both are covered: [load, max(load + file size, runtime start + init_size)).
 */
export function bzImageFootprint(h: SetupHeader, load: number): { start: number; end: number } {
  const loadedEnd = load + h.kernelSize;
  if (h.version < 0x020a) return { start: load, end: loadedEnd };
  const runtime = h.relocatable
    ? Math.max(alignUp(load, h.kernelAlignment), h.prefAddress)
    : h.prefAddress === 0
      ? load
      : h.prefAddress;
  return { start: Math.min(load, runtime), end: Math.max(loadedEnd, runtime + h.initSize) };
}

export interface Range {
  start: number;
  end: number;
}

const overlaps = (a: Range, b: Range): boolean => a.start < b.end && b.start < a.end;

/**
 * The highest page-aligned address at which `size` bytes lie wholly in guest RAM (an e820 RAM entry
 * and one memory region), at or above 1 MiB, below `ceiling`, and clear of every `avoid` range.
 */
export function placeHigh(
  mem: GuestMemory,
  e820: readonly MemMapEntry[],
  size: number,
  ceiling: number,
  avoid: readonly Range[],
): number | undefined {
  // Free intervals: e820 RAM ∩ memory regions ∩ [1 MiB, ceiling), less the avoided ranges.
  let free: Range[] = [];
  for (const e of e820) {
    if (e.type !== E820_RAM) continue;
    for (const r of mem.descriptors) {
      const start = Math.max(e.addr, r.gpa, LAYOUT.highMemory);
      const end = Math.min(e.addr + e.size, r.gpa + r.size, ceiling);
      if (end > start) free.push({ start, end });
    }
  }
  for (const a of avoid) {
    free = free.flatMap((f) => {
      if (!overlaps(f, a)) return [f];
      const out: Range[] = [];
      if (f.start < a.start) out.push({ start: f.start, end: a.start });
      if (a.end < f.end) out.push({ start: a.end, end: f.end });
      return out;
    });
  }
  let best: number | undefined;
  for (const f of free) {
    const at = Math.floor((f.end - size) / PAGE) * PAGE;
    if (at >= f.start && (best === undefined || at > best)) best = at;
  }
  return best;
}

/** Where the boot data goes, checked; nothing written yet. */
export interface BootPlan {
  /** The command line with its NUL. */
  cmdline: Buffer;
  cmdlineAddr: number;
  /** The zero page (or PVH start info) address: 4 KiB reserved there. */
  zeroPage: number;
  e820: readonly MemMapEntry[];
  rsdpAddr: number;
  initrd?: { addr: number; size: number } | undefined;
}

/**
 * Check the command line, boot-info page and e820 options, and place the initrd; nothing is written.
 * `kernel` is the range the kernel occupies, `initrdCeiling` one past the highest initrd byte,
 * `info` names the 4 KiB page at zeroPageAddr in messages (the PVH loader shares this).
 */
export function planBoot(
  mem: GuestMemory,
  opts: LinuxBootOptions,
  kernel: Range,
  cmdlineMax: number,
  initrdCeiling: number,
  name: string,
  info = 'zero page',
): BootPlan {
  const zeroPage = opts.zeroPageAddr ?? LAYOUT.bootInfo;
  const cmdlineAddr = opts.cmdlineAddr ?? LAYOUT.cmdline;
  const rsdpAddr = opts.rsdpAddr ?? 0;
  const e820 = opts.e820 ?? memoryMap(mem);
  checkE820(e820);
  if (!Number.isSafeInteger(rsdpAddr) || rsdpAddr < 0)
    throw new ImageError(`ACPI RSDP address ${rsdpAddr} is not a guest-physical address`);

  if (opts.cmdline.includes('\0')) throw new ImageError('the kernel command line contains a NUL character');
  const cmdline = Buffer.from(`${opts.cmdline}\0`, 'utf8');
  const cmdLen = cmdline.length - 1;
  if (cmdLen > cmdlineMax)
    throw new ImageError(`the kernel command line is ${cmdLen} bytes; ${name} accepts at most ${cmdlineMax}`);

  const zp: Range = { start: zeroPage, end: zeroPage + ZERO_PAGE_SIZE };
  const cl: Range = { start: cmdlineAddr, end: cmdlineAddr + cmdline.length };
  if (!mem.isValid(zeroPage, ZERO_PAGE_SIZE) || zeroPage >= FOUR_GIB)
    throw new ImageError(`the ${info} at ${hex(zeroPage)} is outside guest memory below 4 GiB`);
  if (!mem.isValid(cmdlineAddr, cmdline.length) || cl.end > FOUR_GIB)
    throw new ImageError(`the command line at ${hex(cmdlineAddr)} is outside guest memory below 4 GiB`);
  if (overlaps(zp, cl)) throw new ImageError(`the command line overlaps the ${info}`);
  for (const [what, r] of [
    [info, zp],
    ['command line', cl],
  ] as const)
    if (overlaps(r, kernel))
      throw new ImageError(
        `${name} at ${hex(kernel.start)}..${hex(kernel.end)} overlaps the ${what} at ${hex(r.start)}`,
      );

  let initrd: { addr: number; size: number } | undefined;
  const data = opts.initrd;
  if (data !== undefined && data.length > 0) {
    const addr = placeHigh(mem, e820, data.length, initrdCeiling, [kernel, zp, cl]);
    if (addr === undefined)
      throw new ImageError(
        `initrd of ${data.length} bytes does not fit in guest RAM below ${hex(initrdCeiling)} beside the kernel ` +
          `(${hex(kernel.start)}..${hex(kernel.end)}); give the VM more memory (--mem)`,
      );
    initrd = { addr, size: data.length };
  }
  return { cmdline, cmdlineAddr, zeroPage, e820, rsdpAddr, initrd };
}

/** Write the planned command line and initrd. */
export function writeBootPayload(mem: GuestMemory, p: BootPlan, initrd: Buffer | undefined): void {
  mem.write(p.cmdlineAddr, p.cmdline);
  if (p.initrd && initrd) mem.write(p.initrd.addr, initrd);
}

/** Write the zero page fields both Linux loaders set (over the header copied from the image, if any). */
function writeZeroPageFields(mem: GuestMemory, p: BootPlan): void {
  const zp = p.zeroPage;

  mem.write8(zp + HDR.typeOfLoader, LOADER_UNDEFINED);
  mem.write8(zp + HDR.extLoaderVer, 0);
  mem.write8(zp + HDR.extLoaderType, 0);
  // LOADED_HIGH only: CAN_USE_HEAP (with heap_end_ptr) is for the real-mode setup code vireo skips,
  // KASLR_FLAG is the decompressor's to set, QUIET_FLAG off so early messages print, KEEP_SEGMENTS
  // is obsolete.
  mem.write8(zp + HDR.loadflags, LOADED_HIGH);
  mem.write16(zp + HDR.heapEndPtr, 0);
  mem.write16(zp + HDR.vidMode, VID_MODE_NORMAL);
  const cmd = split64(p.cmdlineAddr);
  mem.write32(zp + HDR.cmdLinePtr, cmd.lo);
  mem.write32(zp + BP.extCmdLinePtr, cmd.hi);
  const rd = split64(p.initrd?.addr ?? 0);
  const rs = split64(p.initrd?.size ?? 0);
  mem.write32(zp + HDR.ramdiskImage, rd.lo);
  mem.write32(zp + BP.extRamdiskImage, rd.hi);
  mem.write32(zp + HDR.ramdiskSize, rs.lo);
  mem.write32(zp + BP.extRamdiskSize, rs.hi);
  // No setup_data list: an image's own pointer here would send the kernel through garbage.
  mem.write64(zp + HDR.setupData, 0n);
  mem.write32(zp + HDR.hardwareSubarch, 0);
  mem.write64(zp + HDR.hardwareSubarch + 4, 0n); // hardware_subarch_data
  mem.write64(zp + BP.acpiRsdpAddr, BigInt(p.rsdpAddr));
  writeE820(mem, zp, p.e820);
}

/**
 * Load a bzImage for the 32/64-bit boot protocol: the protected-mode kernel at 1 MiB, the initrd,
 * the command line and the zero page.
 *
 * 1 MiB, not pref_address: it is where boot.rst puts a bzImage, what QEMU, GRUB's 32-bit path and
 * linux-loader (Firecracker, Cloud Hypervisor) do, and it works for relocatable and fixed kernels
 * alike; a relocatable kernel moves itself to max(align_up(load, kernel_alignment), pref_address)
 * to decompress, so loading higher saves no memory. The range reserved for the kernel (and kept
 * clear of the initrd) is bzImageFootprint's.
 */
export function loadLinux(mem: GuestMemory, image: Buffer, opts: LinuxBootOptions): LinuxLoad {
  const name = opts.name ?? 'kernel';
  const h = parseBzImage(image, name);
  const load = LAYOUT.highMemory;
  const fp = bzImageFootprint(h, load);
  if (!mem.isValid(fp.start, fp.end - fp.start) || fp.end > FOUR_GIB)
    throw new ImageError(
      `${name} needs guest RAM at ${hex(fp.start)}..${hex(fp.end)} (file ${h.kernelSize} bytes, init_size ` +
        `${h.initSize}); give the VM more memory (--mem)`,
    );
  const ceiling = Math.min(h.initrdAddrMax + 1, MMIO_HOLE_START, FOUR_GIB);
  const p = planBoot(mem, opts, fp, h.cmdlineSize, ceiling, name);

  // Everything checked: write.
  mem.write(load, image.subarray(h.setupBytes));
  const zp = p.zeroPage;
  mem.fill(zp, ZERO_PAGE_SIZE);
  // The setup header goes into boot_params at 0x1f1, as far as the kernel says it reaches.
  mem.write(zp + HDR.start, image.subarray(HDR.start, h.headerEnd));
  writeBootPayload(mem, p, opts.initrd);
  writeZeroPageFields(mem, p);
  mem.write32(zp + HDR.code32Start, load);

  const is64 = (h.xloadflags & XLF_KERNEL_64) !== 0;
  return {
    entry: is64 ? load + ENTRY64_OFFSET : load,
    entryMode: is64 ? '64' : '32',
    zeroPage: zp,
    cmdlineAddr: p.cmdlineAddr,
    kernelLoad: load,
    kernelEnd: fp.end,
    initrd: p.initrd,
    header: h,
  };
}

/**
 * Load an ELF vmlinux (segments at their physical addresses, at or above 1 MiB) and build a zero
 * page for it with a setup header made up the way Firecracker's configure_64bit_boot does (boot_flag,
 * "HdrS", type_of_loader, kernel_alignment) plus the protocol version and vid_mode. A 64-bit image is
 * entered at e_entry in long mode, a 32-bit one in protected mode, ESI/RSI = the zero page.
 */
export function loadLinuxElf(mem: GuestMemory, image: Buffer, opts: LinuxBootOptions): LinuxLoad {
  const name = opts.name ?? 'kernel';
  const elf = parseElf(image, name);
  let start = Number.MAX_SAFE_INTEGER;
  let end = 0;
  for (const s of elf.segments) {
    if (s.memsz === 0) continue;
    start = Math.min(start, s.paddr);
    end = Math.max(end, s.paddr + s.memsz);
  }
  if (end === 0) throw new ImageError(`${name} has no PT_LOAD segment with memory`);
  const kernel = { start, end };
  if (start < LAYOUT.highMemory)
    throw new ImageError(`${name}: a segment at ${hex(start)} lies below 1 MiB, where vireo keeps boot data`);
  for (const s of elf.segments)
    if (s.memsz > 0 && !mem.isValid(s.paddr, s.memsz))
      throw new ImageError(
        `${name}: segment at ${hex(s.paddr)} (${s.memsz} bytes) does not fit in guest memory; give the VM more memory (--mem)`,
      );
  if (!mem.isValid(elf.entry, 1) || elf.entry >= FOUR_GIB)
    throw new ImageError(`${name}: entry point ${hex(elf.entry)} is outside guest memory below 4 GiB`);
  const p = planBoot(mem, opts, kernel, ELF_CMDLINE_MAX, MMIO_HOLE_START, name);

  loadElf(mem, elf, name, LAYOUT.highMemory);
  const zp = p.zeroPage;
  mem.fill(zp, ZERO_PAGE_SIZE);
  mem.write16(zp + HDR.bootFlag, BOOT_FLAG_MAGIC);
  mem.write32(zp + HDR.header, HDRS_MAGIC);
  mem.write16(zp + HDR.version, ELF_BOOT_PROTOCOL);
  mem.write32(zp + HDR.kernelAlignment, ELF_KERNEL_ALIGNMENT);
  mem.write32(zp + HDR.cmdlineSize, ELF_CMDLINE_MAX);
  mem.write32(zp + HDR.code32Start, start);
  writeBootPayload(mem, p, opts.initrd);
  writeZeroPageFields(mem, p);

  return {
    entry: elf.entry,
    entryMode: elf.class === 64 ? '64' : '32',
    zeroPage: zp,
    cmdlineAddr: p.cmdlineAddr,
    kernelLoad: start,
    kernelEnd: end,
    initrd: p.initrd,
  };
}
