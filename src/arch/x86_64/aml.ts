/**
 * A small ACPI Machine Language encoder: just the terms a static DSDT needs (names, integers,
 * strings, packages, buffers, scopes, devices, EISA IDs and small resource descriptors).
 * Encodings follow ACPI 6.3 §20.2 (AML grammar) and §6.4 (resource data types). Each function
 * returns the term's bytes; a term list is the concatenation of its terms.
 */
import { VireoError } from '../../common/errors.js';

export type AmlBytes = number[];

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const ONES_OP = 0xff;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const METHOD_OP = 0x14;
const RETURN_OP = 0xa4;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82;
const ROOT_CHAR = 0x5c;
const PARENT_PREFIX = 0x5e;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;

function amlError(message: string): VireoError {
  return new VireoError('VIREO_ERR_CONFIG', `AML: ${message}`);
}

/** PkgLength (§20.2.4): the length of what follows the opcode, counting the PkgLength bytes themselves. */
export function pkgLength(bodyLength: number): AmlBytes {
  if (bodyLength + 1 <= 0x3f) return [bodyLength + 1];
  for (let extra = 1; extra <= 3; extra++) {
    const total = bodyLength + 1 + extra;
    if (total < 1 << (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >>> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw amlError(`package of ${bodyLength} bytes is too long`);
}

/** One NameSeg: 1 to 4 characters, a leading letter or underscore, padded with '_'. */
function nameSeg(seg: string): AmlBytes {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw amlError(`bad name segment '${seg}'`);
  return [...seg.padEnd(4, '_')].map((c) => c.charCodeAt(0));
}

/** NameString (§20.2.2): `\_S5_`, `_SB_.COM1`, `^FOO`, `_HID`. */
export function nameString(path: string): AmlBytes {
  const out: AmlBytes = [];
  let rest = path;
  if (rest.startsWith('\\')) {
    out.push(ROOT_CHAR);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith('^')) {
      out.push(PARENT_PREFIX);
      rest = rest.slice(1);
    }
  }
  if (rest === '') {
    out.push(0x00); // NullName
    return out;
  }
  const segs = rest.split('.');
  if (segs.length === 2) out.push(DUAL_NAME_PREFIX);
  else if (segs.length > 2) {
    if (segs.length > 255) throw amlError(`name path '${path}' is too deep`);
    out.push(MULTI_NAME_PREFIX, segs.length);
  }
  for (const s of segs) out.push(...nameSeg(s));
  return out;
}

/** An integer constant with the shortest encoding (§20.2.3): Zero, One, Ones, or a prefixed 1/2/4/8-byte value. */
export function integer(value: number | bigint): AmlBytes {
  if (typeof value === 'number' && !Number.isSafeInteger(value)) throw amlError(`bad integer ${value}`);
  const v = typeof value === 'bigint' ? value : BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw amlError(`integer ${v} is out of range`);
  if (v === 0n) return [ZERO_OP];
  if (v === 1n) return [ONE_OP];
  if (v === 0xffff_ffff_ffff_ffffn) return [ONES_OP];
  const le = (n: number): AmlBytes => Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
  if (v <= 0xffn) return [BYTE_PREFIX, ...le(1)];
  if (v <= 0xffffn) return [WORD_PREFIX, ...le(2)];
  if (v <= 0xffff_ffffn) return [DWORD_PREFIX, ...le(4)];
  return [QWORD_PREFIX, ...le(8)];
}

/** A string constant: ASCII 0x01..0x7f, NUL-terminated. */
export function string(s: string): AmlBytes {
  const out: AmlBytes = [STRING_PREFIX];
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (ch.length !== 1 || c < 0x01 || c > 0x7f) throw amlError(`string ${JSON.stringify(s)} is not ASCII`);
    out.push(c);
  }
  out.push(0x00);
  return out;
}

/** A 32-bit compressed EISA ID ("PNP0501" → 0x0105d041), as ASL's EISAID() encodes it. */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw amlError(`bad EISA ID '${id}'`);
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const mfg = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = Number.parseInt(id.slice(3), 16);
  // Stored big-endian: manufacturer in the first two bytes, product in the last two.
  return ((mfg >> 8) | ((mfg & 0xff) << 8) | ((product >> 8) << 16) | ((product & 0xff) << 24)) >>> 0;
}

export function eisaId(id: string): AmlBytes {
  return integer(eisaIdValue(id));
}

/** Name(path, value). */
export function name(path: string, value: AmlBytes): AmlBytes {
  return [NAME_OP, ...nameString(path), ...value];
}

/** Package(){elements}: each element an encoded data object (integer, string, package, buffer). */
export function pkg(elements: readonly AmlBytes[]): AmlBytes {
  if (elements.length > 255) throw amlError('package has more than 255 elements');
  const body = [elements.length, ...elements.flat()];
  return [PACKAGE_OP, ...pkgLength(body.length), ...body];
}

/** Buffer(){bytes}. */
export function buffer(bytes: readonly number[]): AmlBytes {
  const body = [...integer(bytes.length), ...bytes];
  return [BUFFER_OP, ...pkgLength(body.length), ...body];
}

/** Scope(path){terms}. */
export function scope(path: string, terms: readonly AmlBytes[]): AmlBytes {
  const body = [...nameString(path), ...terms.flat()];
  return [SCOPE_OP, ...pkgLength(body.length), ...body];
}

/** Device(path){terms}. */
export function device(path: string, terms: readonly AmlBytes[]): AmlBytes {
  const body = [...nameString(path), ...terms.flat()];
  return [EXT_OP_PREFIX, DEVICE_OP, ...pkgLength(body.length), ...body];
}

/** Method(path, argCount, NotSerialized){terms}. */
export function method(path: string, argCount: number, terms: readonly AmlBytes[]): AmlBytes {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7) throw amlError(`bad argument count ${argCount}`);
  const body = [...nameString(path), argCount, ...terms.flat()];
  return [METHOD_OP, ...pkgLength(body.length), ...body];
}

/** Return(value). */
export function ret(value: AmlBytes): AmlBytes {
  return [RETURN_OP, ...value];
}

// Small resource descriptors (§6.4.2).

/** IO(Decode16, min, max, alignment, length): the I/O port descriptor. */
export function ioPort(min: number, max: number, alignment: number, length: number): AmlBytes {
  for (const [what, v, lim] of [
    ['min', min, 0xffff],
    ['max', max, 0xffff],
    ['alignment', alignment, 0xff],
    ['length', length, 0xff],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > lim) throw amlError(`IO descriptor ${what} ${v} is out of range`);
  }
  return [0x47, 0x01, min & 0xff, min >> 8, max & 0xff, max >> 8, alignment, length];
}

/** IRQNoFlags(){irqs}: edge-triggered, active-high, exclusive ISA IRQs. */
export function irqNoFlags(irqs: readonly number[]): AmlBytes {
  let mask = 0;
  for (const irq of irqs) {
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) throw amlError(`IRQ ${irq} is not an ISA IRQ`);
    mask |= 1 << irq;
  }
  return [0x22, mask & 0xff, mask >> 8];
}

// Large resource descriptors (§6.4.3).

/** Memory32Fixed(ReadWrite|ReadOnly, base, length). */
export function memory32Fixed(base: number, length: number, writable = true): AmlBytes {
  for (const v of [base, length])
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw amlError(`Memory32Fixed value ${v} is out of range`);
  const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  return [0x86, 0x09, 0x00, writable ? 1 : 0, ...u32(base), ...u32(length)];
}

/** Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive){gsi}: the extended interrupt descriptor. */
export function extendedInterrupt(gsi: number, edge: boolean, activeLow: boolean): AmlBytes {
  if (!Number.isInteger(gsi) || gsi < 0 || gsi > 0xffffffff) throw amlError(`interrupt ${gsi} is out of range`);
  const flags = 0x01 | (edge ? 0x02 : 0) | (activeLow ? 0x04 : 0);
  return [0x89, 0x06, 0x00, flags, 0x01, gsi & 0xff, (gsi >>> 8) & 0xff, (gsi >>> 16) & 0xff, (gsi >>> 24) & 0xff];
}

/** ResourceTemplate(){descriptors}: a buffer ending with the end tag (checksum 0: "treat as valid"). */
export function resourceTemplate(descriptors: readonly AmlBytes[]): AmlBytes {
  return buffer([...descriptors.flat(), 0x79, 0x00]);
}
