/**
 * Multiboot 1 (the GNU spec, 0.6.96): find the header in the first 8 KiB, load the image (ELF32,
 * or the a.out kludge when header flag 16 is set), place modules, and build the information
 * structure: memory sizes, command line, modules, memory map, boot loader name.
 */

import { LAYOUT } from '../arch/x86_64/layout.js';
import { memoryMap, upperMemoryKiB } from '../arch/x86_64/memmap.js';
import { alignUp, hex } from '../common/address.js';
import { ImageError } from '../common/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { isElf, loadElf, parseElf } from './elf.js';

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
const SEARCH_LIMIT = 8192;

const FLAG_PAGE_ALIGN = 1 << 0;
const FLAG_MEMORY_INFO = 1 << 1;
const FLAG_VIDEO_MODE = 1 << 2;
const FLAG_AOUT_KLUDGE = 1 << 16;
/** Required-feature bits (0-15) vireo understands. */
const SUPPORTED_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

// multiboot_info flags.
const INFO_MEMORY = 1 << 0;
const INFO_CMDLINE = 1 << 2;
const INFO_MODS = 1 << 3;
const INFO_MEM_MAP = 1 << 6;
const INFO_BOOT_LOADER_NAME = 1 << 9;

export interface MultibootHeader {
  offset: number;
  flags: number;
  headerAddr: number;
  loadAddr: number;
  loadEndAddr: number;
  bssEndAddr: number;
  entryAddr: number;
}

export function findMultibootHeader(image: Buffer): MultibootHeader | undefined {
  const limit = Math.min(image.length - 12, SEARCH_LIMIT - 12);
  for (let o = 0; o <= limit; o += 4) {
    if (image.readUInt32LE(o) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = image.readUInt32LE(o + 4);
    const checksum = image.readUInt32LE(o + 8);
    if (((MULTIBOOT_HEADER_MAGIC + flags + checksum) & 0xffffffff) >>> 0 !== 0) continue;
    const h: MultibootHeader = {
      offset: o,
      flags,
      headerAddr: 0,
      loadAddr: 0,
      loadEndAddr: 0,
      bssEndAddr: 0,
      entryAddr: 0,
    };
    if (flags & FLAG_AOUT_KLUDGE) {
      if (o + 32 > image.length) return undefined;
      h.headerAddr = image.readUInt32LE(o + 12);
      h.loadAddr = image.readUInt32LE(o + 16);
      h.loadEndAddr = image.readUInt32LE(o + 20);
      h.bssEndAddr = image.readUInt32LE(o + 24);
      h.entryAddr = image.readUInt32LE(o + 28);
    }
    return h;
  }
  return undefined;
}

export interface MultibootModule {
  data: Buffer;
  cmdline: string;
}

export interface MultibootLoad {
  entry: number;
  infoAddr: number;
  kernelEnd: number;
  modules: { start: number; end: number }[];
}

export function loadMultiboot(
  mem: GuestMemory,
  image: Buffer,
  cmdline: string,
  modules: readonly MultibootModule[],
  name = 'kernel',
): MultibootLoad {
  const h = findMultibootHeader(image);
  if (!h) throw new ImageError(`${name} has no Multiboot header in its first 8 KiB`);
  const unsupported = h.flags & 0xffff & ~SUPPORTED_REQUIRED;
  if (unsupported & FLAG_VIDEO_MODE)
    throw new ImageError(`${name} requires a video mode (Multiboot flag 2), which vireo does not provide`);
  if (unsupported)
    throw new ImageError(`${name} requires Multiboot features ${hex(unsupported)} that vireo does not support`);

  let entry: number;
  let kernelEnd: number;
  if (h.flags & FLAG_AOUT_KLUDGE) {
    if (h.headerAddr < h.loadAddr) throw new ImageError(`${name}: Multiboot header_addr is below load_addr`);
    const fileStart = h.offset - (h.headerAddr - h.loadAddr);
    if (fileStart < 0) throw new ImageError(`${name}: Multiboot load_addr points before the start of the file`);
    const loadLen = h.loadEndAddr === 0 ? image.length - fileStart : h.loadEndAddr - h.loadAddr;
    if (loadLen <= 0 || fileStart + loadLen > image.length)
      throw new ImageError(`${name}: Multiboot load_end_addr extends past the end of the file`);
    const bssEnd = h.bssEndAddr === 0 ? h.loadAddr + loadLen : h.bssEndAddr;
    if (bssEnd < h.loadAddr + loadLen) throw new ImageError(`${name}: Multiboot bss_end_addr is below load_end_addr`);
    if (h.loadAddr < LAYOUT.highMemory || !mem.isValid(h.loadAddr, bssEnd - h.loadAddr))
      throw new ImageError(
        `${name}: image at ${hex(h.loadAddr)}..${hex(bssEnd)} does not fit in guest memory above 1 MiB`,
      );
    mem.write(h.loadAddr, image.subarray(fileStart, fileStart + loadLen));
    mem.fill(h.loadAddr + loadLen, bssEnd - (h.loadAddr + loadLen));
    entry = h.entryAddr;
    kernelEnd = bssEnd;
  } else {
    if (!isElf(image)) throw new ImageError(`${name}: Multiboot image without the a.out kludge must be ELF`);
    const elf = parseElf(image, name);
    if (elf.class !== 32) throw new ImageError(`${name}: a Multiboot ELF image must be 32-bit`);
    const loaded = loadElf(mem, elf, name, LAYOUT.highMemory);
    entry = loaded.entry;
    kernelEnd = loaded.high;
  }
  if (!mem.isValid(entry, 1)) throw new ImageError(`${name}: entry point ${hex(entry)} is outside guest memory`);

  // Modules go after the kernel, page aligned (always aligned: it costs nothing).
  let cursor = alignUp(kernelEnd, 4096);
  const placed: { start: number; end: number }[] = [];
  for (const m of modules) {
    if (!mem.isValid(cursor, Math.max(1, m.data.length)))
      throw new ImageError(
        `module of ${m.data.length} bytes does not fit in guest memory; give the VM more memory (--mem)`,
      );
    mem.write(cursor, m.data);
    placed.push({ start: cursor, end: cursor + m.data.length });
    cursor = alignUp(cursor + m.data.length, 4096);
  }

  const infoAddr = writeInfo(mem, cmdline, modules, placed);
  return { entry, infoAddr, kernelEnd, modules: placed };
}

function writeInfo(
  mem: GuestMemory,
  cmdline: string,
  modules: readonly MultibootModule[],
  placed: readonly { start: number; end: number }[],
): number {
  const base = LAYOUT.multibootInfo;
  const info = base;
  const modsAddr = base + 0x100;
  const mmapAddr = base + 0x400;
  let strings = base + 0x800;
  const putString = (s: string): number => {
    const bytes = Buffer.from(`${s}\0`, 'latin1');
    if (strings + bytes.length > base + 0x10000)
      throw new ImageError('Multiboot strings are too long (64 KiB at most)');
    const at = strings;
    mem.write(at, bytes);
    strings += bytes.length;
    return at;
  };
  if (modules.length > 48) throw new ImageError('at most 48 Multiboot modules are supported');
  mem.fill(base, 0x800);

  const map = memoryMap(mem);
  map.forEach((e, i) => {
    const o = mmapAddr + i * 24;
    mem.write32(o, 20);
    mem.write64(o + 4, BigInt(e.addr));
    mem.write64(o + 12, BigInt(e.size));
    mem.write32(o + 20, e.type);
  });
  modules.forEach((m, i) => {
    const p = placed[i] as { start: number; end: number };
    const o = modsAddr + i * 16;
    mem.write32(o, p.start);
    mem.write32(o + 4, p.end);
    mem.write32(o + 8, putString(m.cmdline));
    mem.write32(o + 12, 0);
  });

  mem.write32(info + 0, INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME);
  mem.write32(info + 4, LAYOUT.lowRamEnd / 1024);
  mem.write32(info + 8, upperMemoryKiB(mem));
  mem.write32(info + 16, putString(cmdline));
  mem.write32(info + 20, modules.length);
  mem.write32(info + 24, modsAddr);
  mem.write32(info + 44, map.length * 24);
  mem.write32(info + 48, mmapAddr);
  mem.write32(info + 64, putString('vireo'));
  return info;
}
