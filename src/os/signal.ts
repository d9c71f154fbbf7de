/** Threads and signals: pthread_self/pthread_kill and the handler of the signal that kicks a vCPU out of KVM_RUN. */
import { SyscallError } from '../common/errors.js';
import { errno, libc } from './libc.js';

const c_pthread_self = libc.func('pthread_self', 'uint64_t', []);
const c_pthread_kill = libc.func('pthread_kill', 'int', ['uint64_t', 'int']);
const c_sigaction = libc.func('sigaction', 'int', ['int', 'void *', 'void *']);
const c_dlsym = libc.func('dlsym', 'uintptr_t', ['uintptr_t', 'str']);

/** The calling thread's pthread_t, so another thread can signal it out of KVM_RUN. */
export const pthreadSelf = (): bigint => BigInt(c_pthread_self() as number | bigint);

export function pthreadKill(thread: bigint, sig: number): void {
  const r = c_pthread_kill(thread, sig) as number;
  // ESRCH: the thread is already gone, which is what the kicker wanted anyway.
  if (r !== 0 && r !== 3) throw new SyscallError('pthread_kill', r);
}

/** The signal used to kick vCPU threads out of KVM_RUN (SIGRTMIN+6; Node reserves SIGUSR1). */
export const KICK_SIGNAL = 40;
let kickInstalled = false;

/**
 * Install a process-wide handler for the kick signal. The handler must be a native function
 * that does nothing harmful when called with an int: libc's abs() is one. Its only job is to
 * exist, so that the signal interrupts KVM_RUN with EINTR instead of being ignored or killing us.
 */
export function installKickSignal(): void {
  if (kickInstalled) return;
  const handler = c_dlsym(0, 'abs') as number;
  if (!handler) throw new SyscallError('dlsym(abs)', 0);
  const sa = Buffer.alloc(152); // struct sigaction (glibc, x86_64)
  sa.writeBigUInt64LE(BigInt(handler), 0); // sa_handler
  sa.writeInt32LE(0x10000000, 136); // sa_flags = SA_RESTART (the kick only needs KVM_RUN's EINTR)
  if ((c_sigaction(KICK_SIGNAL, sa, null) as number) < 0) throw new SyscallError('sigaction', errno());
  kickInstalled = true;
}
