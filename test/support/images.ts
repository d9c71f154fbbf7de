/**
 * ELF and Multiboot images built byte by byte, for the loader tests and the loader fuzz targets.
 */
import { MULTIBOOT_HEADER_MAGIC } from '../../src/loader/multiboot.js';

// ---------------------------------------------------------------------------------------------
// Image builders.

export const PT_LOAD = 1;
export const PT_NOTE = 4;

export interface SegSpec {
  type?: number;
  paddr: number;
  vaddr?: number;
  data: Uint8Array;
  /** Defaults to data.length. */
  memsz?: number;
}

export interface ElfSpec {
  cls: 32 | 64;
  entry: number;
  segs: SegSpec[];
  machine?: number;
  type?: number;
}

export const EH_SIZE = { 32: 52, 64: 64 } as const;
export const PH_SIZE = { 32: 32, 64: 56 } as const;

/** Where a program header field lives in a file built by buildElf. */
export function phField(cls: 32 | 64, i: number, field: 'type' | 'offset' | 'paddr' | 'filesz' | 'memsz'): number {
  const base = EH_SIZE[cls] + i * PH_SIZE[cls];
  const at64 = { type: 0, offset: 8, paddr: 24, filesz: 32, memsz: 40 } as const;
  const at32 = { type: 0, offset: 4, paddr: 12, filesz: 16, memsz: 20 } as const;
  return base + (cls === 64 ? at64 : at32)[field];
}

/** Header layout offsets that differ between the classes. */
export const EH = {
  64: { phoff: 32, phentsize: 54, phnum: 56 },
  32: { phoff: 28, phentsize: 42, phnum: 44 },
} as const;

/** A little-endian x86 ELF: header, program headers right after it, then each segment's bytes (16-aligned). */
export function buildElf(spec: ElfSpec): Buffer {
  const { cls } = spec;
  const is64 = cls === 64;
  let cursor = EH_SIZE[cls] + spec.segs.length * PH_SIZE[cls];
  const offsets = spec.segs.map((s) => {
    cursor = Math.ceil(cursor / 16) * 16;
    const o = cursor;
    cursor += s.data.length;
    return o;
  });
  const b = Buffer.alloc(cursor);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = is64 ? 2 : 1; // EI_CLASS
  b[5] = 1; // EI_DATA: little-endian
  b[6] = 1; // EI_VERSION
  b.writeUInt16LE(spec.type ?? 2, 16);
  b.writeUInt16LE(spec.machine ?? (is64 ? 62 : 3), 18);
  b.writeUInt32LE(1, 20);
  if (is64) {
    b.writeBigUInt64LE(BigInt(spec.entry), 24);
    b.writeBigUInt64LE(BigInt(EH_SIZE[64]), 32);
  } else {
    b.writeUInt32LE(spec.entry, 24);
    b.writeUInt32LE(EH_SIZE[32], 28);
  }
  b.writeUInt16LE(EH_SIZE[cls], is64 ? 52 : 40);
  b.writeUInt16LE(PH_SIZE[cls], EH[cls].phentsize);
  b.writeUInt16LE(spec.segs.length, EH[cls].phnum);
  spec.segs.forEach((s, i) => {
    const p = EH_SIZE[cls] + i * PH_SIZE[cls];
    const memsz = s.memsz ?? s.data.length;
    const vaddr = s.vaddr ?? s.paddr;
    b.writeUInt32LE(s.type ?? PT_LOAD, p);
    if (is64) {
      b.writeUInt32LE(7, p + 4);
      b.writeBigUInt64LE(BigInt(offsets[i] as number), p + 8);
      b.writeBigUInt64LE(BigInt(vaddr), p + 16);
      b.writeBigUInt64LE(BigInt(s.paddr), p + 24);
      b.writeBigUInt64LE(BigInt(s.data.length), p + 32);
      b.writeBigUInt64LE(BigInt(memsz), p + 40);
      b.writeBigUInt64LE(16n, p + 48);
    } else {
      b.writeUInt32LE(offsets[i] as number, p + 4);
      b.writeUInt32LE(vaddr, p + 8);
      b.writeUInt32LE(s.paddr, p + 12);
      b.writeUInt32LE(s.data.length, p + 16);
      b.writeUInt32LE(memsz, p + 20);
      b.writeUInt32LE(7, p + 24);
      b.writeUInt32LE(16, p + 28);
    }
    b.set(s.data, offsets[i] as number);
  });
  return b;
}

/** A recognisable payload. */
export const pattern = (n: number, seed = 1): Buffer =>
  Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

/** A 12-byte Multiboot header (magic, flags, checksum) plus the five a.out-kludge fields when given. */
export function mbHeader(flags: number, aout?: number[]): Buffer {
  const b = Buffer.alloc(aout ? 32 : 12);
  b.writeUInt32LE(MULTIBOOT_HEADER_MAGIC, 0);
  b.writeUInt32LE(flags >>> 0, 4);
  b.writeUInt32LE(-(MULTIBOOT_HEADER_MAGIC + flags) >>> 0, 8);
  aout?.forEach((v, i) => {
    b.writeUInt32LE(v >>> 0, 12 + i * 4);
  });
  return b;
}

export interface AoutSpec {
  /** Where the header sits in the file. */
  headerOffset?: number;
  loadAddr?: number;
  payload?: Buffer;
  bss?: number;
  entryOffset?: number;
  flags?: number;
  /** Raw overrides of the header fields. */
  headerAddr?: number;
  loadEndAddr?: number;
  bssEndAddr?: number;
  entryAddr?: number;
}

export const AOUT = 1 << 16;

/** An a.out-kludge Multiboot image whose file starts at load_addr. */
export function buildAout(spec: AoutSpec = {}): Buffer {
  const headerOffset = spec.headerOffset ?? 0;
  const loadAddr = spec.loadAddr ?? 0x100000;
  const payload = spec.payload ?? pattern(200);
  const size = headerOffset + 32 + payload.length;
  const loadEnd = loadAddr + size;
  const file = Buffer.alloc(size, 0x90);
  mbHeader(spec.flags ?? AOUT | 0x3, [
    spec.headerAddr ?? loadAddr + headerOffset,
    loadAddr,
    spec.loadEndAddr ?? loadEnd,
    spec.bssEndAddr ?? loadEnd + (spec.bss ?? 0x1000),
    spec.entryAddr ?? loadAddr + (spec.entryOffset ?? headerOffset + 32),
  ]).copy(file, headerOffset);
  payload.copy(file, headerOffset + 32);
  return file;
}

/** A 32-bit ELF Multiboot kernel at 1 MiB with the header at the start of its text. */
export function buildMultibootElf(cls: 32 | 64 = 32, flags = 0x3): Buffer {
  const text = Buffer.concat([mbHeader(flags), pattern(100, 7)]);
  return buildElf({ cls, entry: 0x10000c, segs: [{ paddr: 0x100000, data: text, memsz: text.length + 0x800 }] });
}
