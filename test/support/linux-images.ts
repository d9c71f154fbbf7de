/**
 * bzImages and vmlinux ELF images (with PVH notes) built byte by byte, for the Linux loader tests and
 * the loader fuzz targets.
 */
import {
  HDR,
  KASLR_FLAG,
  LOADED_HIGH,
  XLF_CAN_BE_LOADED_ABOVE_4G,
  XLF_KERNEL_64,
} from '../../src/arch/x86_64/boot-params.js';

// ---------------------------------------------------------------------------------------------
// Image builders.

/** A recognisable payload. */
export const pattern = (n: number, seed = 1): Buffer =>
  Buffer.from(Array.from({ length: n }, (_, i) => ((i * 31 + seed) & 0xff) | 1));

export interface BzSpec {
  version?: number;
  setupSects?: number;
  /** The byte after the 0xeb jump: the header ends at 0x202 + this. */
  jumpLen?: number;
  jumpOp?: number;
  loadflags?: number;
  xloadflags?: number;
  initrdAddrMax?: number;
  kernelAlignment?: number;
  relocatable?: boolean;
  cmdlineSize?: number;
  prefAddress?: bigint;
  initSize?: number;
  kernel?: Buffer;
  /** In bytes; default: the kernel's length rounded up to 16. */
  syssize?: number;
  bootFlag?: number;
  magic?: number;
}

export const KERNEL = pattern(64 * 1024, 5);

/**
 * A bzImage: setup sectors full of a pattern (so stray copies show), a 2.15 header whose
 * loader-written fields hold garbage the loader must overwrite, then the protected-mode kernel.
 */
export function buildBzImage(spec: BzSpec = {}): Buffer {
  const sects = spec.setupSects ?? 4;
  const setupBytes = ((sects === 0 ? 4 : sects) + 1) * 512;
  const kernel = spec.kernel ?? KERNEL;
  const b = Buffer.concat([pattern(setupBytes, 9), kernel]);
  b[HDR.setupSects] = sects;
  b.writeUInt16LE(0x0001, HDR.rootFlags);
  b.writeUInt32LE(Math.ceil((spec.syssize ?? kernel.length) / 16), HDR.syssize);
  b.writeUInt16LE(0xfffd, HDR.vidMode); // "ask": the loader writes "normal".
  b.writeUInt16LE(0x0801, 0x1fc); // root_dev
  b.writeUInt16LE(spec.bootFlag ?? 0xaa55, HDR.bootFlag);
  b[HDR.jump] = spec.jumpOp ?? 0xeb;
  b[HDR.jump + 1] = spec.jumpLen ?? 0x6a;
  b.writeUInt32LE(spec.magic ?? 0x53726448, HDR.header);
  b.writeUInt16LE(spec.version ?? 0x020f, HDR.version);
  b.writeUInt32LE(0, 0x208); // realmode_swtch
  b.writeUInt16LE(0x1000, 0x20c);
  b.writeUInt16LE(0x3a00, 0x20e); // kernel_version
  b[HDR.typeOfLoader] = 0x55;
  b[HDR.loadflags] = spec.loadflags ?? LOADED_HIGH | 0x80 | KASLR_FLAG;
  b.writeUInt16LE(0x8000, 0x212);
  b.writeUInt32LE(0x100000, HDR.code32Start);
  b.writeUInt32LE(0x12345678, HDR.ramdiskImage);
  b.writeUInt32LE(0x9abc, HDR.ramdiskSize);
  b.writeUInt32LE(0, 0x220);
  b.writeUInt16LE(0x1234, HDR.heapEndPtr);
  b[HDR.extLoaderVer] = 3;
  b[HDR.extLoaderType] = 7;
  b.writeUInt32LE(0xdeadbeef, HDR.cmdLinePtr);
  b.writeUInt32LE(spec.initrdAddrMax ?? 0x7fffffff, HDR.initrdAddrMax);
  b.writeUInt32LE(spec.kernelAlignment ?? 0x200000, HDR.kernelAlignment);
  b[HDR.relocatableKernel] = (spec.relocatable ?? true) ? 1 : 0;
  b[HDR.minAlignment] = 21;
  b.writeUInt16LE(spec.xloadflags ?? XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G, HDR.xloadflags);
  b.writeUInt32LE(spec.cmdlineSize ?? 2047, HDR.cmdlineSize);
  b.writeUInt32LE(2, HDR.hardwareSubarch); // Xen: the loader writes PC (0).
  b.writeBigUInt64LE(0x1111n, HDR.hardwareSubarch + 4);
  b.writeUInt32LE(0x3c0, 0x248); // payload_offset
  b.writeUInt32LE(0xd000, 0x24c); // payload_length
  b.writeBigUInt64LE(0x1122334455667788n, HDR.setupData);
  b.writeBigUInt64LE(spec.prefAddress ?? 0x1000000n, HDR.prefAddress);
  b.writeUInt32LE(spec.initSize ?? 0x800000, HDR.initSize);
  b.writeUInt32LE(0x190, HDR.handoverOffset);
  b.writeUInt32LE(0xd000, HDR.kernelInfoOffset);
  return b;
}

export const PT_LOAD = 1;
export const PT_NOTE = 4;

export interface SegSpec {
  type?: number;
  paddr: number;
  data: Buffer;
  memsz?: number;
  align?: number;
}

/** A little-endian x86 ELF: header, program headers, then each segment's bytes (16-aligned). */
export function buildElf(cls: 32 | 64, entry: number, segs: SegSpec[]): Buffer {
  const is64 = cls === 64;
  const eh = is64 ? 64 : 52;
  const ph = is64 ? 56 : 32;
  let cursor = eh + segs.length * ph;
  const offsets = segs.map((s) => {
    cursor = Math.ceil(cursor / 16) * 16;
    const o = cursor;
    cursor += s.data.length;
    return o;
  });
  const b = Buffer.alloc(cursor);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = is64 ? 2 : 1;
  b[5] = 1;
  b[6] = 1;
  b.writeUInt16LE(2, 16);
  b.writeUInt16LE(is64 ? 62 : 3, 18);
  b.writeUInt32LE(1, 20);
  if (is64) {
    b.writeBigUInt64LE(BigInt(entry), 24);
    b.writeBigUInt64LE(BigInt(eh), 32);
  } else {
    b.writeUInt32LE(entry, 24);
    b.writeUInt32LE(eh, 28);
  }
  b.writeUInt16LE(eh, is64 ? 52 : 40);
  b.writeUInt16LE(ph, is64 ? 54 : 42);
  b.writeUInt16LE(segs.length, is64 ? 56 : 44);
  segs.forEach((s, i) => {
    const p = eh + i * ph;
    const o = offsets[i] as number;
    const memsz = s.memsz ?? s.data.length;
    b.writeUInt32LE(s.type ?? PT_LOAD, p);
    if (is64) {
      b.writeUInt32LE(7, p + 4);
      b.writeBigUInt64LE(BigInt(o), p + 8);
      b.writeBigUInt64LE(BigInt(s.paddr) + 0xffffffff80000000n, p + 16);
      b.writeBigUInt64LE(BigInt(s.paddr), p + 24);
      b.writeBigUInt64LE(BigInt(s.data.length), p + 32);
      b.writeBigUInt64LE(BigInt(memsz), p + 40);
      b.writeBigUInt64LE(BigInt(s.align ?? 4), p + 48);
    } else {
      b.writeUInt32LE(o, p + 4);
      b.writeUInt32LE(s.paddr, p + 8);
      b.writeUInt32LE(s.paddr, p + 12);
      b.writeUInt32LE(s.data.length, p + 16);
      b.writeUInt32LE(memsz, p + 20);
      b.writeUInt32LE(7, p + 24);
      b.writeUInt32LE(s.align ?? 4, p + 28);
    }
    s.data.copy(b, o);
  });
  return b;
}

/** One ELF note: namesz, descsz, type, the name with its NUL and the desc, each padded to `align`. */
export function note(name: string, type: number, desc: Buffer, align = 4): Buffer {
  const pad = (x: Buffer): Buffer => Buffer.concat([x, Buffer.alloc((align - (x.length % align)) % align)]);
  const n = Buffer.from(`${name}\0`, 'latin1');
  const h = Buffer.alloc(12);
  h.writeUInt32LE(n.length, 0);
  h.writeUInt32LE(desc.length, 4);
  h.writeUInt32LE(type, 8);
  return Buffer.concat([h, pad(n), pad(desc)]);
}
export const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
export const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};

export const VMLINUX_TEXT = pattern(0x3000, 11);
/** A vmlinux-like ELF: text at 16 MiB, data with BSS after it. */
export function buildVmlinux(cls: 32 | 64 = 64, notes?: Buffer, noteAlign = 4): Buffer {
  const segs: SegSpec[] = [
    { paddr: 0x1000000, data: VMLINUX_TEXT },
    { paddr: 0x1004000, data: pattern(0x100, 3), memsz: 0x2000 },
  ];
  if (notes) segs.push({ type: PT_NOTE, paddr: 0, data: notes, align: noteAlign });
  return buildElf(cls, 0x1000000, segs);
}
