/**
 * ELF loading into guest memory: 64-bit kernels (entered in long mode) and 32-bit images
 * (Multiboot). Segments are loaded at their physical addresses; every offset and size from the
 * file is checked against the file and against guest memory first, and a bad image gets one line.
 */

import { hex } from '../common/address.js';
import { ImageError } from '../common/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';

const PT_LOAD = 1;
const EM_386 = 3;
const EM_X86_64 = 62;
const ET_EXEC = 2;
const ET_DYN = 3;

export interface ElfSegment {
  offset: number;
  paddr: number;
  vaddr: number;
  filesz: number;
  memsz: number;
}

export interface ElfImage {
  class: 32 | 64;
  entry: number;
  segments: ElfSegment[];
  /** Note segments/sections are left to callers (PVH looks for its note). */
  raw: Buffer;
}

export function isElf(image: Buffer): boolean {
  return image.length >= 4 && image.readUInt32BE(0) === 0x7f454c46;
}

export function parseElf(image: Buffer, name = 'kernel'): ElfImage {
  const fail = (why: string): never => {
    throw new ImageError(`${name} is not a loadable ELF image: ${why}`);
  };
  if (!isElf(image)) fail('bad magic (not an ELF file)');
  if (image.length < 52) fail('file is shorter than an ELF header');
  const cls = image[4];
  if (cls !== 1 && cls !== 2) fail(`unknown ELF class ${cls}`);
  if (image[5] !== 1) fail('not little-endian');
  const is64 = cls === 2;
  if (is64 && image.length < 64) fail('file is shorter than an ELF64 header');
  const type = image.readUInt16LE(16);
  const machine = image.readUInt16LE(18);
  if (type !== ET_EXEC && type !== ET_DYN) fail(`ELF type ${type} is not an executable`);
  if (is64 && machine !== EM_X86_64) fail(`machine ${machine} is not x86_64`);
  if (!is64 && machine !== EM_386) fail(`machine ${machine} is not i386`);
  const entry = is64 ? Number(image.readBigUInt64LE(24)) : image.readUInt32LE(24);
  const phoff = is64 ? Number(image.readBigUInt64LE(32)) : image.readUInt32LE(28);
  const phentsize = image.readUInt16LE(is64 ? 54 : 42);
  const phnum = image.readUInt16LE(is64 ? 56 : 44);
  const minEnt = is64 ? 56 : 32;
  if (phnum === 0) fail('no program headers');
  if (phentsize < minEnt) fail(`program header size ${phentsize} is too small`);
  if (!Number.isSafeInteger(phoff) || phoff + phnum * phentsize > image.length)
    fail('program headers lie outside the file');
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (image.readUInt32LE(o) !== PT_LOAD) continue;
    const seg: ElfSegment = is64
      ? {
          offset: Number(image.readBigUInt64LE(o + 8)),
          vaddr: Number(image.readBigUInt64LE(o + 16)),
          paddr: Number(image.readBigUInt64LE(o + 24)),
          filesz: Number(image.readBigUInt64LE(o + 32)),
          memsz: Number(image.readBigUInt64LE(o + 40)),
        }
      : {
          offset: image.readUInt32LE(o + 4),
          vaddr: image.readUInt32LE(o + 8),
          paddr: image.readUInt32LE(o + 12),
          filesz: image.readUInt32LE(o + 16),
          memsz: image.readUInt32LE(o + 20),
        };
    if (![seg.offset, seg.paddr, seg.filesz, seg.memsz].every(Number.isSafeInteger))
      fail(`segment ${i} has addresses beyond 2^53`);
    if (seg.filesz > seg.memsz) fail(`segment ${i} has filesz > memsz`);
    if (seg.offset + seg.filesz > image.length) fail(`segment ${i} extends past the end of the file`);
    segments.push(seg);
  }
  if (segments.length === 0) fail('no PT_LOAD segments');
  return { class: is64 ? 64 : 32, entry, segments, raw: image };
}

export interface LoadedImage {
  entry: number;
  /** Lowest and one past the highest guest-physical byte the image occupies. */
  low: number;
  high: number;
}

/** Copy PT_LOAD segments to their physical addresses, zeroing the BSS. */
export function loadElf(mem: GuestMemory, elf: ElfImage, name = 'kernel', minAddr = 0): LoadedImage {
  let low = Number.MAX_SAFE_INTEGER;
  let high = 0;
  for (const seg of elf.segments) {
    if (seg.memsz === 0) continue;
    if (seg.paddr < minAddr || !mem.isValid(seg.paddr, seg.memsz))
      throw new ImageError(
        `${name}: segment at ${hex(seg.paddr)} (${seg.memsz} bytes) does not fit in guest memory; give the VM more memory (--mem)`,
      );
    mem.write(seg.paddr, elf.raw.subarray(seg.offset, seg.offset + seg.filesz));
    mem.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz);
    low = Math.min(low, seg.paddr);
    high = Math.max(high, seg.paddr + seg.memsz);
  }
  return { entry: elf.entry, low, high };
}
