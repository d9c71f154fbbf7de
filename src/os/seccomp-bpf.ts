/**
 * A seccomp-bpf program assembler (classic BPF over struct seccomp_data), and an interpreter of the
 * programs it makes, so tests can run a filter on chosen system calls without installing it.
 *
 * The program an allow-list becomes:
 *   ld arch; jeq AUDIT_ARCH_X86_64 or kill the process (a call through another ABI is an attack)
 *   ld nr;   nr >= 0x40000000 (the x32 ABI) gets the default action
 *   a binary search on nr (jgt + ja, so no conditional jump is ever longer than 255), down to leaves of a
 *   few entries, each `jeq nr` followed by its block: `ret ALLOW`, or its argument rules (any rule whose
 *   every check holds allows the call), then `ret DEFAULT`.
 * An argument check compares (arg & mask) == value on the low 32 bits, and on the high 32 bits too when
 * the argument is 64 bits wide (a 32-bit argument is an int the kernel truncates, so its high half is
 * ignored, as the kernel ignores it).
 *
 * struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; } (little endian).
 */

export const AUDIT_ARCH_X86_64 = 0xc000003e;
/** Calls with this bit set in nr are x32-ABI calls. */
export const X32_SYSCALL_BIT = 0x40000000;

export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

const BPF_LD_W_ABS = 0x20;
const BPF_ALU_AND_K = 0x54;
const BPF_JMP_JA = 0x05;
const BPF_JMP_JEQ_K = 0x15;
const BPF_JMP_JGT_K = 0x25;
const BPF_JMP_JGE_K = 0x35;
const BPF_RET_K = 0x06;

/** Offsets in struct seccomp_data. */
const OFF_NR = 0;
const OFF_ARCH = 4;
const OFF_ARGS = 16;

/** The most instructions the kernel takes in one program (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096;
/** A leaf of the search holds at most this many calls. */
const LEAF = 4;

/** (args[arg] & mask) == value, on the low 32 bits (width 32) or all 64. */
export interface ArgCheck {
  readonly arg: 0 | 1 | 2 | 3 | 4 | 5;
  readonly width: 32 | 64;
  readonly value: bigint;
  /** All ones when absent. */
  readonly mask?: bigint;
}

/** Every check must hold. */
export type ArgRule = readonly ArgCheck[];

/** One allowed call: always (no rules), or when any of its rules holds; `action` replaces ALLOW (e.g. an errno). */
export interface AllowEntry {
  readonly nr: number;
  readonly name: string;
  readonly rules?: readonly ArgRule[];
  readonly action?: number;
}

/** One sock_filter instruction. jt/jf are relative (0-255); k is 32 bits. */
export interface BpfInsn {
  readonly code: number;
  readonly jt: number;
  readonly jf: number;
  readonly k: number;
}

/** An instruction whose jumps may still name labels. */
interface PendingInsn {
  code: number;
  jt: number | string;
  jf: number | string;
  k: number | string;
}

type Item = PendingInsn | { label: string };

class Asm {
  readonly items: Item[] = [];
  private n = 0;
  label(): string {
    return `L${this.n++}`;
  }
  here(label: string): void {
    this.items.push({ label });
  }
  ins(code: number, k: number | string, jt: number | string = 0, jf: number | string = 0): void {
    this.items.push({ code, jt, jf, k });
  }
  /** Resolves labels; throws when a conditional jump is out of reach (a bug in the layout). */
  assemble(): BpfInsn[] {
    const at = new Map<string, number>();
    let pc = 0;
    for (const it of this.items) {
      if ('label' in it) at.set(it.label, pc);
      else pc++;
    }
    const out: BpfInsn[] = [];
    const rel = (t: number | string, from: number): number => {
      if (typeof t === 'number') return t;
      const to = at.get(t);
      if (to === undefined) throw new Error(`seccomp-bpf: label ${t} is not defined`);
      return to - (from + 1);
    };
    for (const it of this.items) {
      if ('label' in it) continue;
      const pcHere = out.length;
      if (it.code === BPF_JMP_JA) {
        out.push({ code: it.code, jt: 0, jf: 0, k: rel(it.k, pcHere) });
        continue;
      }
      const jt = rel(it.jt, pcHere);
      const jf = rel(it.jf, pcHere);
      if (jt < 0 || jt > 255 || jf < 0 || jf > 255) throw new Error(`seccomp-bpf: jump out of reach at ${pcHere}`);
      out.push({ code: it.code, jt, jf, k: it.k as number });
    }
    return out;
  }
}

const lo32 = (v: bigint): number => Number(BigInt.asUintN(32, v));
const hi32 = (v: bigint): number => Number(BigInt.asUintN(32, v >> 32n));
const ONES = (1n << 64n) - 1n;

function emitEntry(a: Asm, e: AllowEntry, defaultAction: number): void {
  const allow = e.action ?? SECCOMP_RET_ALLOW;
  if (!e.rules || e.rules.length === 0) {
    a.ins(BPF_RET_K, allow);
    return;
  }
  for (const rule of e.rules) {
    const next = a.label();
    for (const c of rule) {
      const mask = BigInt.asUintN(64, c.mask ?? ONES);
      const value = BigInt.asUintN(64, c.value);
      const off = OFF_ARGS + 8 * c.arg;
      const halves: [number, number, number][] = [[off, lo32(mask), lo32(value)]];
      if (c.width === 64) halves.push([off + 4, hi32(mask), hi32(value)]);
      for (const [o, m, v] of halves) {
        a.ins(BPF_LD_W_ABS, o);
        if (m !== 0xffffffff) a.ins(BPF_ALU_AND_K, m);
        a.ins(BPF_JMP_JEQ_K, v, 0, next);
      }
    }
    a.ins(BPF_RET_K, allow);
    a.here(next);
  }
  a.ins(BPF_RET_K, defaultAction);
}

/** A binary search over `entries` (sorted by nr); A holds nr on entry and every path ends in a ret. */
function emitTree(a: Asm, entries: readonly AllowEntry[], defaultAction: number): void {
  if (entries.length <= LEAF) {
    for (const e of entries) {
      const skip = a.label();
      a.ins(BPF_JMP_JEQ_K, e.nr, 0, skip);
      emitEntry(a, e, defaultAction);
      a.here(skip);
    }
    a.ins(BPF_RET_K, defaultAction);
    return;
  }
  const mid = entries.length >> 1;
  const right = a.label();
  // nr > last of the left half: the right half (a long jump, so no conditional jump grows with the tree).
  a.ins(BPF_JMP_JGT_K, (entries[mid - 1] as AllowEntry).nr, 0, 1);
  a.ins(BPF_JMP_JA, right);
  emitTree(a, entries.slice(0, mid), defaultAction);
  a.here(right);
  emitTree(a, entries.slice(mid), defaultAction);
}

/**
 * The program for an allow-list. `defaultAction` is what every other call gets (SECCOMP_RET_TRAP in
 * vireo, SECCOMP_RET_LOG when learning). A wrong architecture always kills the process.
 */
export function assembleFilter(entries: readonly AllowEntry[], defaultAction: number): BpfInsn[] {
  const seen = new Set<number>();
  for (const e of entries) {
    if (!Number.isInteger(e.nr) || e.nr < 0 || e.nr >= X32_SYSCALL_BIT) throw new Error(`seccomp-bpf: bad nr ${e.nr}`);
    if (seen.has(e.nr)) throw new Error(`seccomp-bpf: ${e.name} (${e.nr}) listed twice`);
    seen.add(e.nr);
  }
  const sorted = [...entries].sort((x, y) => x.nr - y.nr);
  const a = new Asm();
  a.ins(BPF_LD_W_ABS, OFF_ARCH);
  a.ins(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0);
  a.ins(BPF_RET_K, SECCOMP_RET_KILL_PROCESS);
  a.ins(BPF_LD_W_ABS, OFF_NR);
  a.ins(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1);
  a.ins(BPF_RET_K, defaultAction);
  emitTree(a, sorted, defaultAction);
  const prog = a.assemble();
  if (prog.length > BPF_MAXINSNS)
    throw new Error(`seccomp-bpf: ${prog.length} instructions, more than ${BPF_MAXINSNS}`);
  return prog;
}

/** struct sock_filter[] as bytes: u16 code, u8 jt, u8 jf, u32 k. */
export function encodeFilter(prog: readonly BpfInsn[]): Uint8Array {
  const out = new Uint8Array(prog.length * 8);
  const dv = new DataView(out.buffer);
  prog.forEach((p, i) => {
    dv.setUint16(i * 8, p.code, true);
    dv.setUint8(i * 8 + 2, p.jt);
    dv.setUint8(i * 8 + 3, p.jf);
    dv.setUint32(i * 8 + 4, p.k >>> 0, true);
  });
  return out;
}

/** A call as the filter sees it. */
export interface SeccompData {
  nr: number;
  arch?: number;
  args?: readonly bigint[];
}

/**
 * Runs a program on one call, as the kernel would (for the instructions assembleFilter emits); throws on
 * anything else, on a jump out of the program, or on running off its end.
 */
export function runFilter(prog: readonly BpfInsn[], d: SeccompData): number {
  const word = (off: number): number => {
    if (off === OFF_NR) return d.nr >>> 0;
    if (off === OFF_ARCH) return (d.arch ?? AUDIT_ARCH_X86_64) >>> 0;
    const i = (off - OFF_ARGS) >> 3;
    if (off < OFF_ARGS || i > 5 || off % 4 !== 0) throw new Error(`runFilter: load at ${off}`);
    const v = BigInt.asUintN(64, d.args?.[i] ?? 0n);
    return (off - OFF_ARGS) % 8 === 0 ? lo32(v) : hi32(v);
  };
  let acc = 0;
  let pc = 0;
  for (let steps = 0; steps <= prog.length; steps++) {
    const p = prog[pc];
    if (!p) throw new Error(`runFilter: pc ${pc} outside the program`);
    switch (p.code) {
      case BPF_LD_W_ABS:
        acc = word(p.k);
        pc++;
        break;
      case BPF_ALU_AND_K:
        acc = (acc & p.k) >>> 0;
        pc++;
        break;
      case BPF_JMP_JA:
        pc += 1 + p.k;
        break;
      case BPF_JMP_JEQ_K:
        pc += 1 + (acc === p.k >>> 0 ? p.jt : p.jf);
        break;
      case BPF_JMP_JGT_K:
        pc += 1 + (acc > p.k >>> 0 ? p.jt : p.jf);
        break;
      case BPF_JMP_JGE_K:
        pc += 1 + (acc >= p.k >>> 0 ? p.jt : p.jf);
        break;
      case BPF_RET_K:
        return p.k >>> 0;
      default:
        throw new Error(`runFilter: opcode 0x${p.code.toString(16)}`);
    }
  }
  throw new Error('runFilter: loop');
}
