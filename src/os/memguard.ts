/** memguard: SIGBUS on guest RAM mapped from a file (src/native/memguard.c), loaded through koffi on first use. */
import koffi from 'koffi';
import { SyscallError } from '../common/errors.js';
import { errno } from './libc.js';

interface MemGuardLib {
  install: () => number;
  add: (start: number, len: number) => number;
  remove: (slot: number) => void;
  faults: (slot: number) => number | bigint;
}
let memguardLib: MemGuardLib | undefined;

/** The native guard, loaded (and its handler installed, once per process) on first use. */
function memguard(): MemGuardLib {
  if (memguardLib) return memguardLib;
  const path = new URL('../../native/memguard.so', import.meta.url).pathname;
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load(path);
  } catch (e) {
    throw new SyscallError(
      'dlopen(memguard.so)',
      2,
      `${path}: ${(e as Error).message.split('\n')[0]}; build vireo with npm run build (it needs gcc)`,
    );
  }
  const g: MemGuardLib = {
    install: lib.func('memguard_install', 'int', []) as () => number,
    add: lib.func('memguard_add', 'int', ['uintptr_t', 'size_t']) as (start: number, len: number) => number,
    remove: lib.func('memguard_remove', 'void', ['int']) as (slot: number) => void,
    faults: lib.func('memguard_faults', 'uint64_t', ['int']) as (slot: number) => number | bigint,
  };
  if (g.install() !== 0) throw new SyscallError('sigaction(SIGBUS)', errno());
  memguardLib = g;
  return g;
}

/**
 * Guards [addr, addr+len) (guest RAM mapped from a file): a SIGBUS there (the file was truncated
 * under the mapping) gets a zero page instead of ending the process, and is counted. Returns the
 * guard's slot for guardFaults() and unguardMemory().
 */
export function guardMemory(addr: number, len: number): number {
  const slot = memguard().add(addr, len);
  if (slot < 0) throw new SyscallError('memguard_add', 12, 'too many guarded guest memory regions');
  return slot;
}

/** Removes a guard (before its memory is unmapped). */
export function unguardMemory(slot: number): void {
  memguard().remove(slot);
}

/** How many SIGBUS faults the guard of `slot` has answered. */
export function guardFaults(slot: number): number {
  return Number(memguard().faults(slot));
}
