/**
 * Installing a seccomp filter on the calling thread (seccomp-bpf.ts assembles it; kvm/seccomp-policy.ts
 * holds the allow-lists). A filter applies to the thread that installs it and to threads it creates
 * afterwards, never to the others: each vireo thread confines itself once its setup is done. No
 * SECCOMP_FILTER_FLAG_TSYNC: the other threads have their own (or, for the main thread, none).
 *
 * Calls off the list get SECCOMP_RET_TRAP, and the SIGSYS handler in src/native/seccomp-trap.c names the
 * thread and the call on stderr and ends the process (status 159). VIREO_SECCOMP in the environment:
 *   trace  install nothing; each thread makes a marker call write(-1, "vireo-seccomp:KIND") where it would
 *          install, for scripts/seccomp-gen.mjs, which runs vireo under strace to find the lists
 *   log    install with SECCOMP_RET_LOG as the default action: off-list calls run, and the kernel logs
 *          them (dmesg: type=1326 ... syscall=NR); for finding what a new feature needs on a live system
 *   off    install nothing (as --no-seccomp does, loudly)
 */
import koffi from 'koffi';
import { SyscallError } from '../common/errors.js';
import { errno, libc } from './libc.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, munmap, PROT_READ, PROT_WRITE, view } from './mman.js';
import {
  type AllowEntry,
  assembleFilter,
  encodeFilter,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_LOG,
  SECCOMP_RET_TRAP,
} from './seccomp-bpf.js';
import { SYSCALLS } from './seccomp-syscalls.js';

const PR_SET_NO_NEW_PRIVS = 38;
const SYS_seccomp = SYSCALLS.seccomp;
const SECCOMP_SET_MODE_FILTER = 1;
/** Exit status of a process a filter ended (seccomp-trap.c). */
export const SECCOMP_EXIT_STATUS = 159;

const c_prctl = libc.func(
  'int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)',
);
const c_syscall = libc.func('long syscall(long nr, ...)');
const c_write = libc.func('long write(int fd, const char *buf, size_t len)');

export type SeccompMode = 'on' | 'off' | 'trace' | 'log';

/** VIREO_SECCOMP (see above); 'on' when unset. */
export function seccompEnvMode(): SeccompMode {
  const v = process.env['VIREO_SECCOMP'];
  return v === 'off' || v === 'trace' || v === 'log' ? v : 'on';
}

interface TrapLib {
  install: (table: string) => number;
  kind: (kind: string) => void;
}
let trapLib: TrapLib | undefined;

function trap(): TrapLib {
  if (trapLib) return trapLib;
  const path = new URL('../../native/seccomp-trap.so', import.meta.url).pathname;
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load(path);
  } catch (e) {
    throw new SyscallError(
      'dlopen(seccomp-trap.so)',
      2,
      `${path}: ${(e as Error).message.split('\n')[0]}; build vireo with npm run build (it needs gcc)`,
    );
  }
  const t: TrapLib = {
    install: lib.func('seccomp_trap_install', 'int', ['str']) as (table: string) => number,
    kind: lib.func('seccomp_trap_kind', 'void', ['str']) as (kind: string) => void,
  };
  const table = Object.entries(SYSCALLS)
    .map(([name, nr]) => `${nr} ${name}\n`)
    .join('');
  if (t.install(table) !== 0) throw new SyscallError('sigaction(SIGSYS)', errno());
  trapLib = t;
  return t;
}

/** The kind this thread's filter was installed for (one filter per thread: threads are reused). */
let installedKind: string | undefined;

/** What confineThread did. */
export type ConfineResult = 'installed' | 'already' | 'traced' | 'off';

/**
 * Installs `entries` as this thread's filter, named `kind` in reports. Once per thread: a later call (the
 * thread serving its next VM) finds the filter in place and returns 'already'. Throws SyscallError when
 * the kernel refuses the filter.
 */
export function confineThread(kind: string, entries: readonly AllowEntry[], mode: SeccompMode): ConfineResult {
  if (installedKind !== undefined) return 'already';
  if (mode === 'off') return 'off';
  if (mode === 'trace') {
    const mark = `vireo-seccomp:${kind}`;
    c_write(-1, mark, mark.length);
    installedKind = kind;
    return 'traced';
  }
  const t = trap();
  const bytes = encodeFilter(assembleFilter(entries, mode === 'log' ? SECCOMP_RET_LOG : SECCOMP_RET_TRAP));
  // The program in native memory (the kernel copies it), and struct sock_fprog { u16 len; sock_filter *filter; }.
  const size = Math.ceil(bytes.length / 4096) * 4096;
  const addr = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  try {
    new Uint8Array(view(addr, bytes.length)).set(bytes);
    const fprog = Buffer.alloc(16);
    fprog.writeUInt16LE(bytes.length / 8, 0);
    fprog.writeBigUInt64LE(BigInt(addr), 8);
    if ((c_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as number) !== 0)
      throw new SyscallError('prctl(PR_SET_NO_NEW_PRIVS)', errno());
    t.kind(kind);
    const r = c_syscall(SYS_seccomp, 'long', SECCOMP_SET_MODE_FILTER, 'unsigned int', 0, 'void *', fprog) as number;
    if (r !== 0) throw new SyscallError('seccomp(SECCOMP_SET_MODE_FILTER)', errno());
  } finally {
    munmap(addr, size);
  }
  installedKind = kind;
  return 'installed';
}

const SECCOMP_FILTER_FLAG_TSYNC = 1;
/** Whether confineProcess installed its filter in this process. */
let processFiltered = false;

/**
 * Installs `entries` on every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC), and so on
 * every thread started afterwards: a deny-list (the default action ALLOW, each entry its own action:
 * TRAP, reported and fatal as above, or an errno). It must come before any thread installs its own
 * filter (TSYNC refuses threads whose filters are not this thread's), and those threads' allow-lists
 * then stack on it (the stricter answer wins). In 'log' mode the entries' trapping actions become LOG;
 * 'trace' and 'off' install nothing. Once per process.
 */
export function confineProcess(entries: readonly AllowEntry[], mode: SeccompMode): ConfineResult {
  if (processFiltered) return 'already';
  if (mode === 'off' || mode === 'trace') return mode === 'off' ? 'off' : 'traced';
  const t = trap();
  const list =
    mode === 'log'
      ? entries.map((e) => (e.action === SECCOMP_RET_TRAP ? { ...e, action: SECCOMP_RET_LOG } : e))
      : entries;
  const bytes = encodeFilter(assembleFilter(list, SECCOMP_RET_ALLOW));
  const size = Math.ceil(bytes.length / 4096) * 4096;
  const addr = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  try {
    new Uint8Array(view(addr, bytes.length)).set(bytes);
    const fprog = Buffer.alloc(16);
    fprog.writeUInt16LE(bytes.length / 8, 0);
    fprog.writeBigUInt64LE(BigInt(addr), 8);
    if ((c_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as number) !== 0)
      throw new SyscallError('prctl(PR_SET_NO_NEW_PRIVS)', errno());
    if (installedKind === undefined) t.kind('main');
    const r = c_syscall(
      SYS_seccomp,
      'long',
      SECCOMP_SET_MODE_FILTER,
      'unsigned int',
      SECCOMP_FILTER_FLAG_TSYNC,
      'void *',
      fprog,
    ) as number;
    // TSYNC answers the id of a thread it could not synchronise (one with a filter of its own).
    if (r > 0)
      throw new SyscallError('seccomp(SECCOMP_FILTER_FLAG_TSYNC)', 16, `thread ${r} already has a filter of its own`);
    if (r !== 0) throw new SyscallError('seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)', errno());
  } finally {
    munmap(addr, size);
  }
  processFiltered = true;
  return 'installed';
}

/** Whether the process-wide filter is in place. */
export const processConfined = (): boolean => processFiltered;

/** The kind of this thread's filter, if it has one. */
export const confinedAs = (): string | undefined => installedKind;
