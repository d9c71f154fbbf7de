/**
 * PVH direct boot (Xen's x86/HVM direct boot ABI, as QEMU, Firecracker and Cloud Hypervisor use it
 * for KVM): an ELF kernel that carries the Xen note XEN_ELFNOTE_PHYS32_ENTRY is entered at that
 * address in flat 32-bit protected mode, paging off, with EBX pointing at a struct hvm_start_info
 * (xen/include/public/arch-x86/hvm/start_info.h): command line, modules (the initrd), RSDP and a
 * memory map. Pure functions over GuestMemory; the caller sets the registers.
 */

import { LAYOUT, MMIO_HOLE_START } from '../arch/x86_64/layout.js';
import { hex } from '../common/address.js';
import { ImageError } from '../common/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { isElf, loadElf, parseElf } from './elf.js';
import { type LinuxBootOptions, planBoot, writeBootPayload } from './linux.js';

const PT_NOTE = 4;
/** xen/include/public/elfnote.h */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
export const XEN_HVM_START_MAGIC_VALUE = 0x336ec578;
const START_INFO_VERSION = 1;
/** The longest command line vireo hands a PVH kernel (the room at LAYOUT.cmdline, less the NUL). */
export const PVH_CMDLINE_MAX = LAYOUT.cmdlineMax - 1;

/** Layout of the 4 KiB boot-info page vireo builds: start info, module list, memory map. */
export const START_INFO_SIZE = 56;
export const MODLIST_OFFSET = 0x40;
export const MODLIST_ENTRY_SIZE = 32;
export const MEMMAP_OFFSET = 0x80;
export const MEMMAP_ENTRY_SIZE = 24;

const FOUR_GIB = 2 ** 32;

/** Offsets in struct hvm_start_info. */
export const START_INFO = {
  magic: 0,
  version: 4,
  flags: 8,
  nrModules: 12,
  modlistPaddr: 16,
  cmdlinePaddr: 24,
  rsdpPaddr: 32,
  memmapPaddr: 40,
  memmapEntries: 48,
  reserved: 52,
} as const;

/**
 * The PVH entry point from an ELF image's PT_NOTE segments, or undefined when the image is not ELF or
 * has no XEN_ELFNOTE_PHYS32_ENTRY note. A malformed ELF or note is an ImageError.
 */
export function findPvhEntry(image: Buffer, name = 'kernel'): number | undefined {
  if (!isElf(image)) return undefined;
  const elf = parseElf(image, name); // Validates the header and program header table.
  const is64 = elf.class === 64;
  const phoff = is64 ? Number(image.readBigUInt64LE(32)) : image.readUInt32LE(28);
  const phentsize = image.readUInt16LE(is64 ? 54 : 42);
  const phnum = image.readUInt16LE(is64 ? 56 : 44);
  const fail = (why: string): never => {
    throw new ImageError(`${name} has a bad ELF note: ${why}`);
  };
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (image.readUInt32LE(o) !== PT_NOTE) continue;
    const offset = is64 ? Number(image.readBigUInt64LE(o + 8)) : image.readUInt32LE(o + 4);
    const filesz = is64 ? Number(image.readBigUInt64LE(o + 32)) : image.readUInt32LE(o + 16);
    const palign = is64 ? Number(image.readBigUInt64LE(o + 48)) : image.readUInt32LE(o + 28);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(filesz) || offset + filesz > image.length)
      fail(`PT_NOTE segment ${i} extends past the end of the file`);
    // Notes are 4-byte aligned; a segment declaring 8 (GNU property notes) pads to 8.
    const align = palign === 8 ? 8 : 4;
    const pad = (n: number): number => Math.ceil(n / align) * align;
    const end = offset + filesz;
    let at = offset;
    while (at + 12 <= end) {
      const namesz = image.readUInt32LE(at);
      const descsz = image.readUInt32LE(at + 4);
      const type = image.readUInt32LE(at + 8);
      const nameAt = at + 12;
      const descAt = nameAt + pad(namesz);
      const next = descAt + pad(descsz);
      if (descAt + descsz > end) fail(`a note in PT_NOTE segment ${i} extends past the segment`);
      const noteName = image.subarray(nameAt, nameAt + namesz);
      const nul = noteName.indexOf(0);
      const isXen = (nul < 0 ? noteName : noteName.subarray(0, nul)).toString('latin1') === 'Xen';
      if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY) {
        // "Numeric types are either 4 or 8 bytes depending on the content of the desc field."
        let entry: number;
        if (descsz === 4) entry = image.readUInt32LE(descAt);
        else if (descsz === 8) {
          const v = image.readBigUInt64LE(descAt);
          if (v >= BigInt(FOUR_GIB)) fail(`the PVH entry point ${hex(v)} is above 4 GiB`);
          entry = Number(v);
        } else return fail(`XEN_ELFNOTE_PHYS32_ENTRY has a ${descsz}-byte value (4 or 8 expected)`);
        return entry;
      }
      at = next;
    }
  }
  return undefined;
}

export interface PvhBootOptions extends Omit<LinuxBootOptions, 'zeroPageAddr'> {
  /** Where hvm_start_info, the module list and the memory map go (4 KiB); default LAYOUT.bootInfo. */
  startInfoAddr?: number | undefined;
}

export interface PvhLoad {
  /** The 32-bit entry point: flat protected mode, paging off, EBX = startInfo. */
  entry: number;
  startInfo: number;
  cmdlineAddr: number;
  kernelLoad: number;
  kernelEnd: number;
  initrd?: { addr: number; size: number } | undefined;
}

/** Load a PVH kernel (an ELF with XEN_ELFNOTE_PHYS32_ENTRY) and build its hvm_start_info. */
export function loadPvh(mem: GuestMemory, image: Buffer, opts: PvhBootOptions): PvhLoad {
  const name = opts.name ?? 'kernel';
  const elf = parseElf(image, name);
  const entry = findPvhEntry(image, name);
  if (entry === undefined) throw new ImageError(`${name} has no XEN_ELFNOTE_PHYS32_ENTRY note: it is not a PVH kernel`);
  let start = Number.MAX_SAFE_INTEGER;
  let end = 0;
  for (const s of elf.segments) {
    if (s.memsz === 0) continue;
    if (!mem.isValid(s.paddr, s.memsz))
      throw new ImageError(
        `${name}: segment at ${hex(s.paddr)} (${s.memsz} bytes) does not fit in guest memory; give the VM more memory (--mem)`,
      );
    start = Math.min(start, s.paddr);
    end = Math.max(end, s.paddr + s.memsz);
  }
  if (end === 0) throw new ImageError(`${name} has no PT_LOAD segment with memory`);
  if (start < LAYOUT.highMemory)
    throw new ImageError(`${name}: a segment at ${hex(start)} lies below 1 MiB, where vireo keeps boot data`);
  if (!mem.isValid(entry, 1)) throw new ImageError(`${name}: PVH entry point ${hex(entry)} is outside guest memory`);

  const p = planBoot(
    mem,
    { ...opts, zeroPageAddr: opts.startInfoAddr ?? LAYOUT.bootInfo },
    { start, end },
    PVH_CMDLINE_MAX,
    MMIO_HOLE_START,
    name,
    'PVH start info',
  );

  loadElf(mem, elf, name, LAYOUT.highMemory);
  writeBootPayload(mem, p, opts.initrd);
  const si = p.zeroPage;
  const modlist = si + MODLIST_OFFSET;
  const memmap = si + MEMMAP_OFFSET;
  mem.fill(si, 0x1000);
  mem.write32(si + START_INFO.magic, XEN_HVM_START_MAGIC_VALUE);
  mem.write32(si + START_INFO.version, START_INFO_VERSION);
  mem.write32(si + START_INFO.flags, 0);
  if (p.initrd) {
    mem.write32(si + START_INFO.nrModules, 1);
    mem.write64(si + START_INFO.modlistPaddr, BigInt(modlist));
    mem.write64(modlist, BigInt(p.initrd.addr));
    mem.write64(modlist + 8, BigInt(p.initrd.size));
    // cmdline_paddr and reserved stay 0: no module command line.
  }
  mem.write64(si + START_INFO.cmdlinePaddr, BigInt(p.cmdlineAddr));
  mem.write64(si + START_INFO.rsdpPaddr, BigInt(p.rsdpAddr));
  mem.write64(si + START_INFO.memmapPaddr, BigInt(memmap));
  mem.write32(si + START_INFO.memmapEntries, p.e820.length);
  p.e820.forEach((e, i) => {
    const o = memmap + i * MEMMAP_ENTRY_SIZE;
    mem.write64(o, BigInt(e.addr));
    mem.write64(o + 8, BigInt(e.size));
    mem.write32(o + 16, e.type);
    mem.write32(o + 20, 0);
  });

  return { entry, startInfo: si, cmdlineAddr: p.cmdlineAddr, kernelLoad: start, kernelEnd: end, initrd: p.initrd };
}
