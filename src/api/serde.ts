/**
 * Request bodies read the way Firecracker reads them: `serde_json::from_slice::<T>()` into a Rust struct
 * derived with `Deserialize` (most with `deny_unknown_fields`). The reader walks the bytes as serde_json
 * does, checks each value against the Rust type of its field as it meets it, and fails with serde_json's
 * own message and position ("unknown field `x`, expected one of `a`, `b` at line 1 column 12", "missing
 * field `x` at line 1 column 2", "invalid type: string \"a\", expected u64 at line 1 column 5",
 * "EOF while parsing an object at line 1 column 1"), so a client matching on Firecracker's fault
 * messages sees the same text.
 *
 * Positions follow serde_json's SliceRead: the line is 1-based, the column counts bytes on that line:
 * syntax errors found by peeking point at the byte peeked (column of that byte), errors found after
 * reading a value point at its last byte, and errors a struct's visitor raises (unknown, duplicate and
 * missing fields) take the position the reader has reached once the struct's end was looked for.
 *
 * The Rust types are built from the spec's definitions (field order, required fields, enums), with the
 * details the spec does not say taken from Firecracker's structs: integer widths (`vcpu_count` is a u8),
 * fields that take no `null` (`#[serde(default)]` rather than `Option`), structs that accept unknown
 * fields (TokenBucketConfig), and the field order of MachineConfig.
 */
import { type JsonObject, loadSpec } from './spec.js';

export type IntKind = 'u8' | 'u16' | 'u32' | 'u64' | 'usize' | 'i32' | 'i64';

export interface RustField {
  name: string;
  type: RustType;
  /** Absent is an error ("missing field"): neither Option nor #[serde(default)]. */
  required: boolean;
  /** `null` reads as absent (an Option); false for #[serde(default)] fields, whose type takes no null. */
  nullable: boolean;
}

export type RustType =
  | { t: 'int'; kind: IntKind }
  | { t: 'float' }
  | { t: 'bool' }
  | { t: 'string' }
  | { t: 'enum'; name: string; variants: string[]; caseInsensitive?: boolean }
  | { t: 'struct'; name: string; fields: RustField[]; denyUnknown: boolean }
  | { t: 'vec'; inner: RustType }
  | { t: 'map'; inner: RustType }
  | { t: 'any' };

/** serde_json's ErrorCode texts. */
const CODE = {
  EofList: 'EOF while parsing a list',
  EofObject: 'EOF while parsing an object',
  EofString: 'EOF while parsing a string',
  EofValue: 'EOF while parsing a value',
  ExpectedColon: 'expected `:`',
  ExpectedListCommaOrEnd: 'expected `,` or `]`',
  ExpectedObjectCommaOrEnd: 'expected `,` or `}`',
  ExpectedSomeIdent: 'expected ident',
  ExpectedSomeValue: 'expected value',
  InvalidEscape: 'invalid escape',
  InvalidNumber: 'invalid number',
  NumberOutOfRange: 'number out of range',
  InvalidUnicodeCodePoint: 'invalid unicode code point',
  ControlCharacter: 'control character (\\u0000-\\u001F) found while parsing a string',
  KeyMustBeAString: 'key must be a string',
  LoneLeadingSurrogate: 'lone leading surrogate in hex escape',
  TrailingComma: 'trailing comma',
  TrailingCharacters: 'trailing characters',
  UnexpectedEndOfHexEscape: 'unexpected end of hex escape',
  RecursionLimitExceeded: 'recursion limit exceeded',
} as const;

/** A serde_json error: its message, and where (line 0: not placed yet, as serde's custom errors). */
export class SerdeError extends Error {
  override name = 'SerdeError';
  constructor(
    readonly text: string,
    public line = 0,
    public column = 0,
  ) {
    super(text);
  }
  /** As serde_json's Display: "msg at line L column C". */
  override toString(): string {
    return this.line === 0 ? this.text : `${this.text} at line ${this.line} column ${this.column}`;
  }
}

const INT_RANGE: Record<IntKind, [bigint, bigint]> = {
  u8: [0n, 0xffn],
  u16: [0n, 0xffffn],
  u32: [0n, 0xffff_ffffn],
  u64: [0n, 0xffff_ffff_ffff_ffffn],
  usize: [0n, 0xffff_ffff_ffff_ffffn],
  i32: [-0x8000_0000n, 0x7fff_ffffn],
  i64: [-0x8000_0000_0000_0000n, 0x7fff_ffff_ffff_ffffn],
};

/** f64 as Rust's ryu prints it (serde_json's "floating point `...`"): 1.0, 1.5, 1e20, 1.8446744073709552e19. */
export function ryuFormat(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v < 0 ? '-inf' : 'inf';
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const sign = v < 0 ? '-' : '';
  const [mant, exp] = Math.abs(v).toExponential().split('e') as [string, string];
  const digits = mant.replace('.', '');
  const n = digits.length;
  const kk = Number(exp) + 1; // 10^(kk-1) <= v < 10^kk
  const k = kk - n;
  let out: string;
  if (k >= 0 && kk <= 16) out = `${digits}${'0'.repeat(k)}.0`;
  else if (kk > 0 && kk <= 16) out = `${digits.slice(0, kk)}.${digits.slice(kk)}`;
  else if (kk > -5 && kk <= 0) out = `0.${'0'.repeat(-kk)}${digits}`;
  else if (n === 1) out = `${digits}e${kk - 1}`;
  else out = `${digits[0]}.${digits.slice(1)}e${kk - 1}`;
  return sign + out;
}

/** A string as Rust's `{:?}` writes it (serde's "string \"...\""). */
export function rustDebugStr(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c === 0) out += '\\0';
    else if (c < 0x20 || c === 0x7f) out += `\\u{${c.toString(16)}}`;
    else out += ch;
  }
  return `${out}"`;
}

/** serde's OneOf: "`a`", "`a` or `b`", "one of `a`, `b`, `c`". */
function oneOf(names: readonly string[]): string {
  const q = names.map((n) => `\`${n}\``);
  if (q.length === 1) return q[0] as string;
  if (q.length === 2) return `${q[0]} or ${q[1]}`;
  return `one of ${q.join(', ')}`;
}

/** What serde names as expected for a type ("u64", "a boolean", "struct MachineConfig"). */
function expecting(t: RustType): string {
  switch (t.t) {
    case 'int':
      return t.kind;
    case 'float':
      return 'f64';
    case 'bool':
      return 'a boolean';
    case 'string':
      return 'a string';
    case 'enum':
      return `enum ${t.name}`;
    case 'struct':
      return `struct ${t.name}`;
    case 'vec':
      return 'a sequence';
    case 'map':
      return 'a map';
    case 'any':
      return 'any valid JSON value';
  }
}

type Num = { k: 'u'; v: bigint } | { k: 'i'; v: bigint } | { k: 'f'; v: number };

function unexpectedNum(n: Num): string {
  return n.k === 'f' ? `floating point \`${ryuFormat(n.v)}\`` : `integer \`${n.v}\``;
}

const isDigit = (b: number | undefined): b is number => b !== undefined && b >= 0x30 && b <= 0x39;

/** A reader over one body, with serde_json's Deserializer's moves. */
class Reader {
  i = 0;
  private depth = 128;
  constructor(private readonly b: Buffer) {}

  private positionOf(i: number): [number, number] {
    let line = 1;
    let start = 0;
    for (let j = 0; j < i; j++)
      if (this.b[j] === 0x0a) {
        line++;
        start = j + 1;
      }
    return [line, i - start];
  }
  /** serde_json's `error()`: at the bytes read so far. */
  error(text: string): SerdeError {
    const [l, c] = this.positionOf(this.i);
    return new SerdeError(text, l, c);
  }
  /** serde_json's `peek_error()`: at the byte peeked. */
  peekError(text: string): SerdeError {
    const [l, c] = this.positionOf(Math.min(this.b.length, this.i + 1));
    return new SerdeError(text, l, c);
  }
  fix(e: unknown): unknown {
    if (e instanceof SerdeError && e.line === 0) {
      const [l, c] = this.positionOf(this.i);
      e.line = l;
      e.column = c;
    }
    return e;
  }

  peek(): number | undefined {
    return this.b[this.i];
  }
  eat(): void {
    this.i++;
  }
  next(): number | undefined {
    const c = this.b[this.i];
    if (c !== undefined) this.i++;
    return c;
  }
  ws(): number | undefined {
    for (;;) {
      const c = this.b[this.i];
      if (c === 0x20 || c === 0x0a || c === 0x09 || c === 0x0d) this.i++;
      else return c;
    }
  }
  enter(): void {
    this.depth--;
    if (this.depth === 0) throw this.peekError(CODE.RecursionLimitExceeded);
  }
  leave(): void {
    this.depth++;
  }

  ident(rest: string): void {
    for (const ch of rest) {
      const c = this.next();
      if (c === undefined) throw this.error(CODE.EofValue);
      if (c !== ch.charCodeAt(0)) throw this.error(CODE.ExpectedSomeIdent);
    }
  }

  /** After the opening quote: the string's text (SliceRead::parse_str). */
  str(): string {
    const parts: Buffer[] = [];
    let start = this.i;
    for (;;) {
      const c = this.b[this.i];
      if (c === undefined) throw this.error(CODE.EofString);
      if (c === 0x22) {
        parts.push(this.b.subarray(start, this.i));
        this.i++;
        break;
      }
      if (c === 0x5c) {
        parts.push(this.b.subarray(start, this.i));
        this.i++;
        parts.push(Buffer.from(this.escape(), 'utf8'));
        start = this.i;
        continue;
      }
      if (c < 0x20) {
        this.i++;
        throw this.error(CODE.ControlCharacter);
      }
      this.i++;
    }
    const bytes = Buffer.concat(parts);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw this.error(CODE.InvalidUnicodeCodePoint);
    }
  }

  private hex4(): number {
    if (this.i + 4 > this.b.length) {
      this.i = this.b.length;
      throw this.error(CODE.EofString);
    }
    let n = 0;
    for (let j = 0; j < 4; j++) {
      const c = this.b[this.i] as number;
      const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : (c | 0x20) >= 0x61 && (c | 0x20) <= 0x66 ? (c | 0x20) - 0x57 : -1;
      this.i++;
      if (d < 0) throw this.error(CODE.InvalidEscape);
      n = n * 16 + d;
    }
    return n;
  }

  private escape(): string {
    const c = this.next();
    if (c === undefined) throw this.error(CODE.EofString);
    switch (c) {
      case 0x22:
        return '"';
      case 0x5c:
        return '\\';
      case 0x2f:
        return '/';
      case 0x62:
        return '\b';
      case 0x66:
        return '\f';
      case 0x6e:
        return '\n';
      case 0x72:
        return '\r';
      case 0x74:
        return '\t';
      case 0x75: {
        const n = this.hex4();
        if (n >= 0xdc00 && n <= 0xdfff) throw this.error(CODE.LoneLeadingSurrogate);
        if (n < 0xd800 || n > 0xdbff) return String.fromCharCode(n);
        if (this.next() !== 0x5c || this.next() !== 0x75) throw this.error(CODE.UnexpectedEndOfHexEscape);
        const lo = this.hex4();
        if (lo < 0xdc00 || lo > 0xdfff) throw this.error(CODE.LoneLeadingSurrogate);
        return String.fromCharCode(n, lo);
      }
      default:
        throw this.error(CODE.InvalidEscape);
    }
  }

  /** parse_integer and what follows (decimal part, exponent, overflow to f64). */
  integer(positive: boolean): Num {
    const start = positive ? this.i : this.i - 1;
    const first = this.next();
    if (first === undefined) throw this.error(CODE.EofValue);
    if (first === 0x30) {
      if (isDigit(this.peek())) throw this.peekError(CODE.InvalidNumber);
    } else if (first >= 0x31 && first <= 0x39) {
      while (isDigit(this.peek())) this.eat();
    } else throw this.error(CODE.InvalidNumber);
    let float = false;
    if (this.peek() === 0x2e) {
      float = true;
      this.eat();
      if (!isDigit(this.peek()))
        throw this.peek() === undefined ? this.peekError(CODE.EofValue) : this.peekError(CODE.InvalidNumber);
      while (isDigit(this.peek())) this.eat();
    }
    const e = this.peek();
    if (e === 0x65 || e === 0x45) {
      float = true;
      this.eat();
      const s = this.peek();
      if (s === 0x2b || s === 0x2d) this.eat();
      const d = this.next();
      if (d === undefined) throw this.error(CODE.EofValue);
      if (!isDigit(d)) throw this.error(CODE.InvalidNumber);
      while (isDigit(this.peek())) this.eat();
    }
    const text = this.b.toString('latin1', start, this.i);
    if (float) {
      const v = Number(text);
      if (!Number.isFinite(v)) throw this.error(CODE.NumberOutOfRange);
      return { k: 'f', v };
    }
    const big = BigInt(text);
    if (big > INT_RANGE.u64[1]) return { k: 'f', v: Number(text) };
    if (positive) return { k: 'u', v: big };
    // -0 and values below i64::MIN become floats (serde_json's parse_number).
    if (big === 0n || big < INT_RANGE.i64[0]) return { k: 'f', v: Number(text) };
    return { k: 'i', v: big };
  }

  /** peek_invalid_type: reads the offending value and says what it was. */
  invalidType(exp: string): SerdeError {
    const c = this.peek();
    let what: string;
    switch (c) {
      case 0x6e:
        this.eat();
        this.ident('ull');
        what = 'null';
        break;
      case 0x74:
        this.eat();
        this.ident('rue');
        what = 'boolean `true`';
        break;
      case 0x66:
        this.eat();
        this.ident('alse');
        what = 'boolean `false`';
        break;
      case 0x2d:
        this.eat();
        what = unexpectedNum(this.integer(false));
        break;
      case 0x22:
        this.eat();
        what = `string ${rustDebugStr(this.str())}`;
        break;
      case 0x5b:
        what = 'sequence';
        break;
      case 0x7b:
        what = 'map';
        break;
      default:
        if (isDigit(c)) {
          what = unexpectedNum(this.integer(true));
          break;
        }
        return this.peekError(CODE.ExpectedSomeValue);
    }
    return this.fix(new SerdeError(`invalid type: ${what}, expected ${exp}`)) as SerdeError;
  }

  value(t: RustType): unknown {
    switch (t.t) {
      case 'int':
        return this.int(t.kind);
      case 'float':
        return this.float();
      case 'bool':
        return this.bool();
      case 'string':
        return this.string(expecting(t));
      case 'enum':
        return this.enumValue(t);
      case 'struct':
        return this.struct(t);
      case 'vec':
        return this.seq(t.inner);
      case 'map':
        return this.map(t.inner);
      case 'any':
        return this.any();
    }
  }

  private wrap<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      throw this.fix(e);
    }
  }

  private int(kind: IntKind): number {
    const c = this.ws();
    if (c === undefined) throw this.peekError(CODE.EofValue);
    return this.wrap(() => {
      let n: Num;
      if (c === 0x2d) {
        this.eat();
        n = this.integer(false);
      } else if (isDigit(c)) n = this.integer(true);
      else throw this.invalidType(kind);
      if (n.k === 'f') throw new SerdeError(`invalid type: ${unexpectedNum(n)}, expected ${kind}`);
      const [lo, hi] = INT_RANGE[kind];
      if (n.v < lo || n.v > hi) throw new SerdeError(`invalid value: ${unexpectedNum(n)}, expected ${kind}`);
      return Number(n.v);
    });
  }

  private float(): number {
    const c = this.ws();
    if (c === undefined) throw this.peekError(CODE.EofValue);
    return this.wrap(() => {
      if (c === 0x2d) {
        this.eat();
        const n = this.integer(false);
        return Number(n.v);
      }
      if (isDigit(c)) return Number(this.integer(true).v);
      throw this.invalidType('f64');
    });
  }

  private bool(): boolean {
    const c = this.ws();
    if (c === undefined) throw this.peekError(CODE.EofValue);
    return this.wrap(() => {
      if (c === 0x74) {
        this.eat();
        this.ident('rue');
        return true;
      }
      if (c === 0x66) {
        this.eat();
        this.ident('alse');
        return false;
      }
      throw this.invalidType('a boolean');
    });
  }

  private string(exp: string): string {
    const c = this.ws();
    if (c === undefined) throw this.peekError(CODE.EofValue);
    return this.wrap(() => {
      if (c !== 0x22) throw this.invalidType(exp);
      this.eat();
      return this.str();
    });
  }

  /** An identifier (field or variant name) read with deserialize_str: its errors placed after it. */
  private variant(t: Extract<RustType, { t: 'enum' }>): string {
    const s = this.string('variant identifier');
    const hit = t.caseInsensitive ? t.variants.find((v) => v.toLowerCase() === s.toLowerCase()) : s;
    if (hit === undefined || !t.variants.includes(hit)) {
      const [l, c] = this.positionOf(this.i);
      throw new SerdeError(
        `unknown variant \`${s}\`, ${t.variants.length ? `expected ${oneOf(t.variants)}` : 'there are no variants'}`,
        l,
        c,
      );
    }
    return hit;
  }

  private enumValue(t: Extract<RustType, { t: 'enum' }>): string {
    const c = this.ws();
    if (c === 0x22) return this.variant(t);
    if (c === 0x7b) {
      // {"Variant": null}: an externally tagged unit variant.
      this.enter();
      this.eat();
      this.ws();
      const v = this.variant(t);
      this.colon();
      const u = this.ws();
      if (u === undefined) throw this.peekError(CODE.EofValue);
      this.wrap(() => {
        if (u !== 0x6e) throw this.invalidType('unit');
        this.eat();
        this.ident('ull');
      });
      this.leave();
      const end = this.ws();
      if (end === 0x7d) {
        this.eat();
        return v;
      }
      throw end === undefined ? this.error(CODE.EofObject) : this.error(CODE.ExpectedSomeValue);
    }
    throw c === undefined ? this.peekError(CODE.EofValue) : this.peekError(CODE.ExpectedSomeValue);
  }

  private colon(): void {
    const c = this.ws();
    if (c === 0x3a) {
      this.eat();
      return;
    }
    throw c === undefined ? this.peekError(CODE.EofObject) : this.peekError(CODE.ExpectedColon);
  }

  /** MapAccess::next_key: the next key's opening quote is next (true), or the map ends (false). */
  private nextKey(first: { v: boolean }): boolean {
    let c = this.ws();
    if (c === 0x7d) return false;
    if (c === 0x2c && !first.v) {
      this.eat();
      c = this.ws();
    } else if (c === undefined) throw this.peekError(CODE.EofObject);
    else if (first.v) first.v = false;
    else throw this.peekError(CODE.ExpectedObjectCommaOrEnd);
    if (c === 0x22) return true;
    if (c === 0x7d) throw this.peekError(CODE.TrailingComma);
    if (c === undefined) throw this.peekError(CODE.EofValue);
    throw this.peekError(CODE.KeyMustBeAString);
  }

  private endMap(): void {
    const c = this.ws();
    if (c === 0x7d) {
      this.eat();
      return;
    }
    if (c === 0x2c) throw this.peekError(CODE.TrailingComma);
    throw c === undefined ? this.peekError(CODE.EofObject) : this.peekError(CODE.TrailingCharacters);
  }

  /** SeqAccess::next_element: an element is next (true), or the list ends (false). */
  private nextElement(first: { v: boolean }): boolean {
    let c = this.ws();
    if (c === 0x5d) return false;
    if (c === 0x2c && !first.v) {
      this.eat();
      c = this.ws();
    } else if (c === undefined) throw this.peekError(CODE.EofList);
    else if (first.v) first.v = false;
    else throw this.peekError(CODE.ExpectedListCommaOrEnd);
    if (c === 0x5d) throw this.peekError(CODE.TrailingComma);
    if (c === undefined) throw this.peekError(CODE.EofValue);
    return true;
  }

  private endSeq(): void {
    const c = this.ws();
    if (c === 0x5d) {
      this.eat();
      return;
    }
    if (c === 0x2c) {
      this.eat();
      throw this.ws() === 0x5d ? this.peekError(CODE.TrailingComma) : this.peekError(CODE.TrailingCharacters);
    }
    throw c === undefined ? this.peekError(CODE.EofList) : this.peekError(CODE.TrailingCharacters);
  }

  /** A container: its visit, then its end looked for even when the visit failed (serde_json's order). */
  private container<T>(open: number, visit: () => T, end: () => void, exp: string): T {
    const c = this.ws();
    if (c === undefined) throw this.peekError(CODE.EofValue);
    if (c !== open) throw this.fix(this.invalidType(exp));
    this.enter();
    this.eat();
    let out: T | undefined;
    let err: unknown;
    try {
      out = visit();
    } catch (e) {
      err = e;
    }
    this.leave();
    try {
      end();
    } catch (e) {
      err ??= e;
    }
    if (err !== undefined) throw this.fix(err);
    return out as T;
  }

  private struct(t: Extract<RustType, { t: 'struct' }>): JsonObject {
    const c = this.ws();
    if (c === 0x5b) return this.structSeq(t);
    return this.container(
      0x7b,
      () => {
        const out: JsonObject = {};
        const seen = new Set<string>();
        const first = { v: true };
        while (this.nextKey(first)) {
          this.eat();
          const key = this.str();
          const field = t.fields.find((f) => f.name === key);
          if (!field) {
            if (t.denyUnknown)
              throw new SerdeError(
                `unknown field \`${key}\`, ${t.fields.length ? `expected ${oneOf(t.fields.map((f) => f.name))}` : 'there are no fields'}`,
              );
            this.colon();
            this.any();
            continue;
          }
          if (seen.has(key)) throw new SerdeError(`duplicate field \`${key}\``);
          seen.add(key);
          this.colon();
          const v = this.fieldValue(field);
          if (v !== undefined) out[key] = v;
        }
        for (const f of t.fields)
          if (f.required && !seen.has(f.name)) throw new SerdeError(`missing field \`${f.name}\``);
        return out;
      },
      () => this.endMap(),
      expecting(t),
    );
  }

  /** A struct given as a list: its fields in declaration order (serde's visit_seq). */
  private structSeq(t: Extract<RustType, { t: 'struct' }>): JsonObject {
    return this.container(
      0x5b,
      () => {
        const out: JsonObject = {};
        const first = { v: true };
        const n = t.fields.length;
        for (const [i, f] of t.fields.entries()) {
          if (!this.nextElement(first)) {
            // Only #[serde(default)] fields may be left off the end; an Option may not.
            if (!f.required && !f.nullable) continue;
            throw new SerdeError(
              `invalid length ${i}, expected struct ${t.name} with ${n} element${n === 1 ? '' : 's'}`,
            );
          }
          const v = this.fieldValue(f);
          if (v !== undefined) out[f.name] = v;
        }
        return out;
      },
      () => this.endSeq(),
      expecting(t),
    );
  }

  private fieldValue(f: RustField): unknown {
    if (f.nullable && this.ws() === 0x6e) {
      this.eat();
      this.ident('ull');
      return undefined;
    }
    return this.value(f.type);
  }

  private seq(inner: RustType): unknown[] {
    return this.container(
      0x5b,
      () => {
        const out: unknown[] = [];
        const first = { v: true };
        while (this.nextElement(first)) out.push(this.value(inner));
        return out;
      },
      () => this.endSeq(),
      'a sequence',
    );
  }

  private map(inner: RustType): JsonObject {
    return this.container(
      0x7b,
      () => {
        const out: JsonObject = {};
        const first = { v: true };
        while (this.nextKey(first)) {
          this.eat();
          const key = this.str();
          this.colon();
          out[key] = this.value(inner);
        }
        return out;
      },
      () => this.endMap(),
      'a map',
    );
  }

  /** serde_json::Value (and what an ignored field holds). */
  any(): unknown {
    const c = this.ws();
    if (c === undefined) throw this.peekError(CODE.EofValue);
    switch (c) {
      case 0x6e:
        this.eat();
        this.ident('ull');
        return null;
      case 0x74:
        this.eat();
        this.ident('rue');
        return true;
      case 0x66:
        this.eat();
        this.ident('alse');
        return false;
      case 0x2d:
        this.eat();
        return this.wrap(() => Number(this.integer(false).v));
      case 0x22:
        this.eat();
        return this.str();
      case 0x5b:
        return this.seq({ t: 'any' });
      case 0x7b:
        return this.map({ t: 'any' });
      default:
        if (isDigit(c)) return this.wrap(() => Number(this.integer(true).v));
        throw this.peekError(CODE.ExpectedSomeValue);
    }
  }

  /** Deserializer::end: nothing but whitespace may follow. */
  end(): void {
    if (this.ws() !== undefined) throw this.peekError(CODE.TrailingCharacters);
  }
}

/** `serde_json::from_slice::<T>(body)`: the value, or a SerdeError with serde_json's text and position. */
export function fromSlice(t: RustType, body: Buffer): unknown {
  const r = new Reader(body);
  const v = r.value(t);
  r.end();
  return v;
}

// ---- Rust types of the spec's definitions ----

/** Firecracker's struct names (serde's "expected struct X"), where they differ from the spec's. */
const RUST_NAME: Record<string, string> = {
  InstanceActionInfo: 'ActionBody',
  MachineConfiguration: 'MachineConfig',
  BootSource: 'BootSourceConfig',
  Drive: 'BlockDeviceConfig',
  PartialDrive: 'BlockDeviceUpdateConfig',
  NetworkInterface: 'NetworkInterfaceConfig',
  PartialNetworkInterface: 'NetworkInterfaceUpdateConfig',
  Vsock: 'VsockDeviceConfig',
  Balloon: 'BalloonDeviceConfig',
  BalloonUpdate: 'BalloonUpdateConfig',
  BalloonStatsUpdate: 'BalloonUpdateStatsConfig',
  Logger: 'LoggerConfig',
  Metrics: 'MetricsConfig',
  SnapshotCreateParams: 'CreateSnapshotParams',
  SnapshotLoadParams: 'LoadSnapshotConfig',
  MemoryBackend: 'MemBackendConfig',
  EntropyDevice: 'EntropyDeviceConfig',
  SerialDevice: 'SerialConfig',
  TokenBucket: 'TokenBucketConfig',
  RateLimiter: 'RateLimiterConfig',
  NetworkOverride: 'NetworkOverride',
  VsockOverride: 'VsockOverride',
};

/** Integer fields narrower than u64 in Firecracker's structs. */
const INT_KIND: Record<string, IntKind> = {
  'MachineConfiguration.vcpu_count': 'u8',
  'MachineConfiguration.mem_size_mib': 'usize',
  'Balloon.amount_mib': 'u32',
  'BalloonUpdate.amount_mib': 'u32',
  'Balloon.stats_polling_interval_s': 'u16',
  'BalloonStatsUpdate.stats_polling_interval_s': 'u16',
  'Vsock.guest_cid': 'u32',
  'NetworkInterface.mtu': 'u16',
};

/** Fields that are `#[serde(default)]` values rather than Options in Firecracker: `null` is refused. */
const NOT_NULLABLE = new Set([
  'MachineConfiguration.smt',
  'MachineConfiguration.track_dirty_pages',
  'MachineConfiguration.huge_pages',
  'Balloon.stats_polling_interval_s',
  'Balloon.free_page_hinting',
  'Balloon.free_page_reporting',
  'Drive.cache_type',
  'Drive.io_engine',
  'SnapshotCreateParams.snapshot_type',
  'SnapshotLoadParams.enable_diff_snapshots',
  'SnapshotLoadParams.track_dirty_pages',
  'SnapshotLoadParams.resume_vm',
  'SnapshotLoadParams.clock_realtime',
  'SnapshotLoadParams.network_overrides',
]);

/** Structs Firecracker derives without deny_unknown_fields (unknown fields are skipped). */
const ACCEPTS_UNKNOWN = new Set(['TokenBucket']);

/** Declaration order of Firecracker's struct where the spec lists the fields otherwise. */
const FIELD_ORDER: Record<string, string[]> = {
  MachineConfiguration: ['vcpu_count', 'mem_size_mib', 'smt', 'cpu_template', 'track_dirty_pages', 'huge_pages'],
  TokenBucket: ['size', 'one_time_burst', 'refill_time'],
  RateLimiter: ['bandwidth', 'ops'],
  BootSource: ['kernel_image_path', 'initrd_path', 'boot_args'],
};

/** Enums whose names Firecracker reads in any case (the logger level). */
const CASE_INSENSITIVE = new Set(['Logger.level']);

const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

function typeOf(schema: JsonObject, where: string, defs: Record<string, JsonObject>, partial: boolean): RustType {
  const ref = schema.$ref;
  if (typeof ref === 'string') {
    const name = ref.replace(/^.*\//, '');
    const def = defs[name];
    if (!def) return { t: 'any' };
    return Array.isArray(def.enum) || def.type !== 'object'
      ? typeOf(def, name, defs, false)
      : structOf(name, defs, false);
  }
  if (Array.isArray(schema.enum))
    return {
      t: 'enum',
      name: where.replace(/^.*\./, ''),
      variants: schema.enum.map(String),
      ...(CASE_INSENSITIVE.has(where) ? { caseInsensitive: true } : {}),
    };
  switch (schema.type) {
    case 'integer':
      return { t: 'int', kind: INT_KIND[where] ?? (schema.format === 'int32' ? 'i32' : 'u64') };
    case 'number':
      return { t: 'float' };
    case 'boolean':
      return { t: 'bool' };
    case 'string':
      return { t: 'string' };
    case 'array':
      return {
        t: 'vec',
        inner: isObject(schema.items) ? typeOf(schema.items, `${where}[]`, defs, false) : { t: 'any' },
      };
    case 'object':
      if (isObject(schema.properties)) return inlineStruct(schema, where, defs, partial);
      if (isObject(schema.additionalProperties))
        return { t: 'map', inner: typeOf(schema.additionalProperties, `${where}{}`, defs, false) };
      return { t: 'any' };
    default:
      return { t: 'any' };
  }
}

function inlineStruct(def: JsonObject, name: string, defs: Record<string, JsonObject>, partial: boolean): RustType {
  const props = isObject(def.properties) ? def.properties : {};
  const required = new Set(partial ? [] : Array.isArray(def.required) ? (def.required as string[]) : []);
  const order = FIELD_ORDER[name];
  const names = order
    ? [...order.filter((n) => n in props), ...Object.keys(props).filter((n) => !order.includes(n))]
    : Object.keys(props);
  const fields: RustField[] = names.map((p) => ({
    name: p,
    type: typeOf(props[p] as JsonObject, `${name}.${p}`, defs, false),
    required: required.has(p),
    nullable: partial || (!required.has(p) && !NOT_NULLABLE.has(`${name}.${p}`)),
  }));
  return {
    t: 'struct',
    name: partial && name === 'MachineConfiguration' ? 'MachineConfigUpdate' : (RUST_NAME[name] ?? name),
    fields,
    denyUnknown: !ACCEPTS_UNKNOWN.has(name),
  };
}

function structOf(name: string, defs: Record<string, JsonObject>, partial: boolean): RustType {
  return inlineStruct(defs[name] as JsonObject, name, defs, partial);
}

const cache = new Map<string, RustType>();

/** The Rust type Firecracker deserializes definition `name` into (`partial`: every field optional). */
export function rustType(name: string, partial = false): RustType {
  const key = `${name}${partial ? '?partial' : ''}`;
  let t = cache.get(key);
  if (!t) {
    const defs = loadSpec().definitions;
    if (!defs[name]) throw new Error(`the API description has no definition ${name}`);
    t = structOf(name, defs, partial);
    cache.set(key, t);
  }
  return t;
}
