/**
 * Initramfs images: a cpio "newc" writer and reader (the format the Linux kernel unpacks into its
 * root file system, Documentation/driver-api/early-userspace/buffer-format.rst), a builder that
 * keeps parents before children, and `outb`, a 256-byte static x86-64 program that writes one byte
 * to an I/O port (busybox has no outb and Debian's cloud kernel has no /dev/port).
 *
 * Written here rather than driving the `cpio` tool: the image needs a /dev/console character
 * device (the kernel opens it for init before devtmpfs exists), which `cpio -o` can only copy from
 * a real node made with mknod as root; here it is one header. The output is deterministic (fixed
 * inode numbers, mtime 0, owner root), so the same inputs give the same bytes.
 */
import { KitError } from './util.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

export type CpioEntry =
  | { type: 'dir'; path: string; mode: number }
  | { type: 'file'; path: string; mode: number; data: Uint8Array }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; mode: number; major: number; minor: number };

const TRAILER = 'TRAILER!!!';
const MAGIC = '070701';
const HEADER_SIZE = 110;

const hex8 = (n: number): string => {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new KitError(`cpio: field value ${n} out of range`);
  return n.toString(16).padStart(8, '0');
};
const pad4 = (n: number): number => (4 - (n % 4)) % 4;

function normalizePath(path: string): string {
  const p = path.replace(/^\.?\/+/, '').replace(/\/+$/, '');
  if (p === '' || p.split('/').some((c) => c === '' || c === '.' || c === '..'))
    throw new KitError(`cpio: bad path '${path}'`);
  return p;
}

function header(
  ino: number,
  mode: number,
  nlink: number,
  size: number,
  rdev: [number, number],
  nameSize: number,
): string {
  // magic ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  return MAGIC + [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], nameSize, 0].map(hex8).join('');
}

/** Encodes entries, in order, as one cpio newc archive ending with the trailer. */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer): void => {
    parts.push(b);
    offset += b.length;
  };
  const record = (ino: number, mode: number, nlink: number, name: string, data: Uint8Array, rdev: [number, number]) => {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8');
    push(Buffer.from(header(ino, mode, nlink, data.length, rdev, nameBytes.length), 'ascii'));
    push(nameBytes);
    push(Buffer.alloc(pad4(HEADER_SIZE + nameBytes.length)));
    if (data.length > 0) {
      push(Buffer.from(data.buffer, data.byteOffset, data.length));
      push(Buffer.alloc(pad4(offset)));
    }
  };
  let ino = 1;
  for (const e of entries) {
    const path = normalizePath(e.path);
    switch (e.type) {
      case 'dir':
        record(ino++, S_IFDIR | (e.mode & 0o7777), 2, path, new Uint8Array(0), [0, 0]);
        break;
      case 'file':
        record(ino++, S_IFREG | (e.mode & 0o7777), 1, path, e.data, [0, 0]);
        break;
      case 'symlink':
        record(ino++, S_IFLNK | 0o777, 1, path, Buffer.from(e.target, 'utf8'), [0, 0]);
        break;
      case 'char':
        record(ino++, S_IFCHR | (e.mode & 0o7777), 1, path, new Uint8Array(0), [e.major, e.minor]);
        break;
    }
  }
  record(0, 0, 1, TRAILER, new Uint8Array(0), [0, 0]);
  // The kernel accepts any length; pad to a 512-byte block like cpio(1) does.
  push(Buffer.alloc((512 - (offset % 512)) % 512));
  return Buffer.concat(parts);
}

/** Decodes a cpio newc archive (uncompressed), up to its trailer. */
export function readCpio(buf: Uint8Array): CpioEntry[] {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const out: CpioEntry[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_SIZE > b.length) throw new KitError('cpio: truncated archive (no trailer)');
    const magic = b.toString('ascii', off, off + 6);
    if (magic !== MAGIC) throw new KitError(`cpio: bad magic '${magic}' at offset ${off}`);
    const field = (i: number): number => Number.parseInt(b.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const rdev: [number, number] = [field(9), field(10)];
    const nameSize = field(11);
    const nameStart = off + HEADER_SIZE;
    const name = b.toString('utf8', nameStart, nameStart + nameSize - 1);
    const dataStart = nameStart + nameSize + pad4(HEADER_SIZE + nameSize);
    if (dataStart + size > b.length) throw new KitError(`cpio: entry '${name}' runs past the end`);
    const data = b.subarray(dataStart, dataStart + size);
    off = dataStart + size + pad4(dataStart + size);
    if (name === TRAILER) return out;
    const perm = mode & 0o7777;
    switch (mode & S_IFMT) {
      case S_IFDIR:
        out.push({ type: 'dir', path: name, mode: perm });
        break;
      case S_IFREG:
        out.push({ type: 'file', path: name, mode: perm, data: new Uint8Array(data) });
        break;
      case S_IFLNK:
        out.push({ type: 'symlink', path: name, target: data.toString('utf8') });
        break;
      case S_IFCHR:
        out.push({ type: 'char', path: name, mode: perm, major: rdev[0], minor: rdev[1] });
        break;
      default:
        throw new KitError(`cpio: entry '${name}' has unsupported mode ${mode.toString(8)}`);
    }
  }
}

/** Collects entries for an initramfs; parent directories are created first, each path once. */
export class InitramfsBuilder {
  private readonly entries = new Map<string, CpioEntry>();

  dir(path: string, mode = 0o755): this {
    const p = normalizePath(path);
    const existing = this.entries.get(p);
    if (existing) {
      if (existing.type !== 'dir') throw new KitError(`initramfs: '${p}' is already a ${existing.type}`);
      return this;
    }
    this.parents(p);
    this.entries.set(p, { type: 'dir', path: p, mode });
    return this;
  }

  file(path: string, data: Uint8Array | string, mode = 0o644): this {
    return this.add({ type: 'file', path, mode, data: typeof data === 'string' ? Buffer.from(data, 'utf8') : data });
  }

  symlink(path: string, target: string): this {
    return this.add({ type: 'symlink', path, target });
  }

  charDevice(path: string, major: number, minor: number, mode = 0o600): this {
    return this.add({ type: 'char', path, mode, major, minor });
  }

  has(path: string): boolean {
    return this.entries.has(normalizePath(path));
  }

  /** The entries in the order they will be written. */
  list(): CpioEntry[] {
    return [...this.entries.values()];
  }

  build(): Buffer {
    return writeCpio(this.list());
  }

  private add(e: CpioEntry): this {
    const p = normalizePath(e.path);
    if (this.entries.has(p)) throw new KitError(`initramfs: '${p}' added twice`);
    this.parents(p);
    this.entries.set(p, { ...e, path: p });
    return this;
  }

  private parents(p: string): void {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) this.dir(parts.slice(0, i).join('/'));
  }
}

/**
 * `outb PORT VALUE` (decimal): ioperm(PORT, 1, 1) then `out dx, al`; exits 0, or 1 on bad
 * arguments or a refused ioperm. Position-independent machine code, assembled from:
 *
 *   _start: cmp qword ptr [rsp], 3 ; jne fail          # argc must be 3
 *           mov rsi, [rsp+16] ; call parse ; mov rbx, rax   # port
 *           mov rsi, [rsp+24] ; call parse               # value
 *           cmp rax, 255 ; ja fail ; mov r12, rax
 *           mov eax, 173 ; mov rdi, rbx ; mov esi, 1 ; mov edx, 1 ; syscall   # ioperm
 *           test rax, rax ; jnz fail
 *           mov edx, ebx ; mov eax, r12d ; out dx, al
 *           xor edi, edi ; mov eax, 60 ; syscall         # exit(0)
 *   fail:   mov edi, 1 ; mov eax, 60 ; syscall           # exit(1)
 *   parse:  xor eax, eax ; cmp byte ptr [rsi], 0 ; je fail
 *     1:    movzx ecx, byte ptr [rsi] ; test ecx, ecx ; jz 2f
 *           sub ecx, 48 ; cmp ecx, 9 ; ja fail
 *           imul rax, rax, 10 ; add rax, rcx ; cmp rax, 65535 ; ja fail
 *           inc rsi ; jmp 1b
 *     2:    ret
 */
const OUTB_CODE = Buffer.from(
  '48833c2403754a488b742410e84c0000004889c3488b742418e83f000000483dff000000772b' +
    '4989c4b8ad0000004889dfbe01000000ba010000000f054885c0750f89da4489e0ee31ffb8' +
    '3c0000000f05bf01000000b83c0000000f0531c0803e0074ed0fb60e85c9741c83e93083f9' +
    '0977de486bc00a4801c8483dffff000077cf48ffc6ebddc3',
  'hex',
);

/** The `outb` tool as a static ELF64 executable: one PT_LOAD segment (R+X) holding header and code. */
export function outbElf(): Buffer {
  const base = 0x400000;
  const codeOff = 64 + 56;
  const size = codeOff + OUTB_CODE.length;
  const b = Buffer.alloc(codeOff);
  b.write('\x7fELF', 0, 'latin1');
  b[4] = 2; // ELFCLASS64
  b[5] = 1; // little endian
  b[6] = 1; // EV_CURRENT
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(0x3e, 18); // EM_X86_64
  b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(BigInt(base + codeOff), 24); // e_entry
  b.writeBigUInt64LE(64n, 32); // e_phoff
  b.writeUInt16LE(64, 52); // e_ehsize
  b.writeUInt16LE(56, 54); // e_phentsize
  b.writeUInt16LE(1, 56); // e_phnum
  b.writeUInt16LE(64, 58); // e_shentsize
  // program header
  b.writeUInt32LE(1, 64); // PT_LOAD
  b.writeUInt32LE(5, 68); // PF_R | PF_X
  b.writeBigUInt64LE(0n, 72); // p_offset
  b.writeBigUInt64LE(BigInt(base), 80); // p_vaddr
  b.writeBigUInt64LE(BigInt(base), 88); // p_paddr
  b.writeBigUInt64LE(BigInt(size), 96); // p_filesz
  b.writeBigUInt64LE(BigInt(size), 104); // p_memsz
  b.writeBigUInt64LE(0x1000n, 112); // p_align
  return Buffer.concat([b, OUTB_CODE]);
}
