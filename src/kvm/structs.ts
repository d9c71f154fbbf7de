/** Typed records for KVM structs and their byte codecs (little-endian, x86_64). */
import { OFFSET, REG_NAMES, SIZE } from './abi.js';

export type Regs = Record<(typeof REG_NAMES)[number], bigint>;

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface DTable {
  base: bigint;
  limit: number;
}

export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DTable;
  idt: DTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** The raw 256-bit pending-interrupt bitmap, preserved across get/set. */
  interruptBitmap: Buffer;
}

export interface Fpu {
  fcw: number;
  fsw: number;
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  mxcsr: number;
  /** The raw 416 bytes, so registers vireo does not model survive a round trip. */
  raw: Buffer;
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export interface MsrEntry {
  index: number;
  data: bigint;
}

export function decodeRegs(b: Buffer): Regs {
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => {
    r[n] = b.readBigUInt64LE(i * 8);
  });
  return r;
}

export function encodeRegs(r: Regs, b: Buffer = Buffer.alloc(SIZE.kvm_regs)): Buffer {
  REG_NAMES.forEach((n, i) => {
    b.writeBigUInt64LE(BigInt.asUintN(64, r[n]), i * 8);
  });
  return b;
}

const SEG = OFFSET.kvm_segment;

function decodeSegment(b: Buffer, o: number): Segment {
  return {
    base: b.readBigUInt64LE(o + SEG.base),
    limit: b.readUInt32LE(o + SEG.limit),
    selector: b.readUInt16LE(o + SEG.selector),
    type: b[o + SEG.type] as number,
    present: b[o + SEG.present] as number,
    dpl: b[o + SEG.dpl] as number,
    db: b[o + SEG.db] as number,
    s: b[o + SEG.s] as number,
    l: b[o + SEG.l] as number,
    g: b[o + SEG.g] as number,
    avl: b[o + SEG.avl] as number,
    unusable: b[o + SEG.unusable] as number,
  };
}

function encodeSegment(s: Segment, b: Buffer, o: number): void {
  b.writeBigUInt64LE(BigInt.asUintN(64, s.base), o + SEG.base);
  b.writeUInt32LE(s.limit >>> 0, o + SEG.limit);
  b.writeUInt16LE(s.selector, o + SEG.selector);
  b[o + SEG.type] = s.type;
  b[o + SEG.present] = s.present;
  b[o + SEG.dpl] = s.dpl;
  b[o + SEG.db] = s.db;
  b[o + SEG.s] = s.s;
  b[o + SEG.l] = s.l;
  b[o + SEG.g] = s.g;
  b[o + SEG.avl] = s.avl;
  b[o + SEG.unusable] = s.unusable;
}

const SR = OFFSET.kvm_sregs;
const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;

export function decodeSregs(b: Buffer): Sregs {
  const seg = (n: (typeof SEGMENT_NAMES)[number]) => decodeSegment(b, SR[n]);
  return {
    cs: seg('cs'),
    ds: seg('ds'),
    es: seg('es'),
    fs: seg('fs'),
    gs: seg('gs'),
    ss: seg('ss'),
    tr: seg('tr'),
    ldt: seg('ldt'),
    gdt: { base: b.readBigUInt64LE(SR.gdt), limit: b.readUInt16LE(SR.gdt + 8) },
    idt: { base: b.readBigUInt64LE(SR.idt), limit: b.readUInt16LE(SR.idt + 8) },
    cr0: b.readBigUInt64LE(SR.cr0),
    cr2: b.readBigUInt64LE(SR.cr2),
    cr3: b.readBigUInt64LE(SR.cr3),
    cr4: b.readBigUInt64LE(SR.cr4),
    cr8: b.readBigUInt64LE(SR.cr8),
    efer: b.readBigUInt64LE(SR.efer),
    apicBase: b.readBigUInt64LE(SR.apic_base),
    interruptBitmap: Buffer.from(b.subarray(SR.interrupt_bitmap, SR.interrupt_bitmap + 32)),
  };
}

export function encodeSregs(s: Sregs): Buffer {
  const b = Buffer.alloc(SIZE.kvm_sregs);
  for (const n of SEGMENT_NAMES) encodeSegment(s[n], b, SR[n]);
  b.writeBigUInt64LE(s.gdt.base, SR.gdt);
  b.writeUInt16LE(s.gdt.limit, SR.gdt + 8);
  b.writeBigUInt64LE(s.idt.base, SR.idt);
  b.writeUInt16LE(s.idt.limit, SR.idt + 8);
  b.writeBigUInt64LE(s.cr0, SR.cr0);
  b.writeBigUInt64LE(s.cr2, SR.cr2);
  b.writeBigUInt64LE(s.cr3, SR.cr3);
  b.writeBigUInt64LE(s.cr4, SR.cr4);
  b.writeBigUInt64LE(s.cr8, SR.cr8);
  b.writeBigUInt64LE(s.efer, SR.efer);
  b.writeBigUInt64LE(s.apicBase, SR.apic_base);
  s.interruptBitmap.copy(b, SR.interrupt_bitmap, 0, 32);
  return b;
}

const FP = OFFSET.kvm_fpu;

export function decodeFpu(b: Buffer): Fpu {
  return {
    fcw: b.readUInt16LE(FP.fcw),
    fsw: b.readUInt16LE(FP.fsw),
    ftwx: b[FP.ftwx] as number,
    lastOpcode: b.readUInt16LE(FP.last_opcode),
    lastIp: b.readBigUInt64LE(FP.last_ip),
    lastDp: b.readBigUInt64LE(FP.last_dp),
    mxcsr: b.readUInt32LE(FP.mxcsr),
    raw: Buffer.from(b),
  };
}

export function encodeFpu(f: Fpu): Buffer {
  const b = Buffer.from(f.raw.length === SIZE.kvm_fpu ? f.raw : Buffer.alloc(SIZE.kvm_fpu));
  b.writeUInt16LE(f.fcw, FP.fcw);
  b.writeUInt16LE(f.fsw, FP.fsw);
  b[FP.ftwx] = f.ftwx;
  b.writeUInt16LE(f.lastOpcode, FP.last_opcode);
  b.writeBigUInt64LE(f.lastIp, FP.last_ip);
  b.writeBigUInt64LE(f.lastDp, FP.last_dp);
  b.writeUInt32LE(f.mxcsr, FP.mxcsr);
  return b;
}

const CE = OFFSET.kvm_cpuid_entry2;

export function decodeCpuid(b: Buffer): CpuidEntry[] {
  const n = b.readUInt32LE(0);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = SIZE.kvm_cpuid2 + i * SIZE.kvm_cpuid_entry2;
    out.push({
      function: b.readUInt32LE(o + CE.function),
      index: b.readUInt32LE(o + CE.index),
      flags: b.readUInt32LE(o + CE.flags),
      eax: b.readUInt32LE(o + CE.eax),
      ebx: b.readUInt32LE(o + CE.ebx),
      ecx: b.readUInt32LE(o + CE.ecx),
      edx: b.readUInt32LE(o + CE.edx),
    });
  }
  return out;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): Buffer {
  const b = Buffer.alloc(SIZE.kvm_cpuid2 + entries.length * SIZE.kvm_cpuid_entry2);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = SIZE.kvm_cpuid2 + i * SIZE.kvm_cpuid_entry2;
    b.writeUInt32LE(e.function >>> 0, o + CE.function);
    b.writeUInt32LE(e.index >>> 0, o + CE.index);
    b.writeUInt32LE(e.flags >>> 0, o + CE.flags);
    b.writeUInt32LE(e.eax >>> 0, o + CE.eax);
    b.writeUInt32LE(e.ebx >>> 0, o + CE.ebx);
    b.writeUInt32LE(e.ecx >>> 0, o + CE.ecx);
    b.writeUInt32LE(e.edx >>> 0, o + CE.edx);
  });
  return b;
}

export function encodeMsrs(entries: readonly MsrEntry[]): Buffer {
  const b = Buffer.alloc(SIZE.kvm_msrs + entries.length * SIZE.kvm_msr_entry);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = SIZE.kvm_msrs + i * SIZE.kvm_msr_entry;
    b.writeUInt32LE(e.index >>> 0, o + OFFSET.kvm_msr_entry.index);
    b.writeBigUInt64LE(BigInt.asUintN(64, e.data), o + OFFSET.kvm_msr_entry.data);
  });
  return b;
}

export function decodeMsrs(b: Buffer, count: number): MsrEntry[] {
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const o = SIZE.kvm_msrs + i * SIZE.kvm_msr_entry;
    out.push({ index: b.readUInt32LE(o), data: b.readBigUInt64LE(o + OFFSET.kvm_msr_entry.data) });
  }
  return out;
}
