/**
 * The seccomp allow-lists of vireo's threads, one per thread kind: the data behind every filter
 * (src/os/seccomp-bpf.ts assembles them, src/os/seccomp.ts installs them). Each thread installs its
 * kind's list on itself once its setup is done (its fds open, its memory mapped), before it reads
 * anything a guest controls:
 *   vcpu  src/vmm/vcpu-thread.ts, after Vcpu.attach (kvm_run mapped) and the platform's buses are built
 *   io    src/vmm/io-thread.ts, after every virtio device is built (and restored)
 *   disk  src/backends/io-pool-worker.ts, when a pool hands it an open image
 *   fs    src/backends/fs/worker-entry.ts (one virtio-fs share's FUSE server), once its server is built
 *         over the share's root fd and guest memory is mapped, before its first request. The inline
 *         server (VIREO_FS_THREAD=0, on the I/O thread) is not given the fs calls on the io list: the
 *         I/O thread, which also holds every socket and device, stays without openat and friends, and
 *         that mode needs --no-seccomp (src/vmm/kinds/fs.ts refuses it otherwise).
 *   main  no allow-list (decision, see the end of this file); in vireo's own processes it and every other
 *         thread carry the process-wide deny-list (processEntries below), installed first
 * Anything else a filtered thread calls ends the process with `vireo: seccomp: thread KIND made syscall
 * NAME (NR) which is not allowed` (src/native/seccomp-trap.c), exit status 159.
 *
 * How the lists were found, and how to find them again: scripts/seccomp-gen.mjs runs the tests under
 * `strace -f -ff` with VIREO_SECCOMP=trace, in which each thread marks the point where it would install
 * its filter; what every thread called after its mark, per kind, is the observed set (with the ioctl
 * requests, mmap/mprotect protections and socket families used). The lists below are those sets, plus the
 * few calls marked RUNTIME: made by Node, V8 or glibc only under conditions the tests rarely reach (a
 * heap that grows through brk, a realloc through mremap, a signal interrupting a sleep). Then
 *   node scripts/seccomp-gen.mjs check OBSERVED.json
 * fails for any observed call a list lacks. The commands that produced the current lists are in the
 * script's header and in the test that checks them (test/unit-seccomp.test.ts).
 *
 * What cannot be narrowed, and why:
 * - mprotect with PROT_EXEC: V8 flips its code pages between RW and RX (observed: 0, 3 and 7 = RWX) in
 *   every isolate, and a worker's isolate compiles on its own thread; the page is not known to a filter.
 *   mmap is limited to mappings without PROT_EXEC (V8 reserves with PROT_NONE and mprotects later), so
 *   no file can be mapped executable: no new library is loaded into a confined thread.
 * - read/write/close on any fd: a filter sees fd numbers, not what they are.
 *
 * A confined thread starts no threads: a new one would inherit its filter and die loading its modules.
 * No clone is listed; io-pool.ts only reuses idle disk threads once the I/O thread is confined
 * (poolThreadsAvailable); and these threads use no libuv thread pool work (no async fs, crypto, zlib, dns),
 * whose pool is created by the first thread that submits to it. KVM's own kernel worker
 * (kvm-nx-lpage-recovery), started from a vCPU's first KVM_RUN, inherits the vCPU filter; it makes no
 * system calls.
 */

import { AT_FDCWD, O_CREAT, O_NOFOLLOW, S_IFMT, S_IFREG } from '../os/fsat.js';
import { type ConfineResult, confineProcess, confineThread, seccompEnvMode } from '../os/seccomp.js';
import type { AllowEntry, ArgCheck, ArgRule } from '../os/seccomp-bpf.js';
import { SYSCALLS, type SyscallName } from '../os/seccomp-syscalls.js';
import { IOCTL, type IoctlName } from './abi.js';

export type ThreadKind = 'vcpu' | 'io' | 'disk' | 'fs';

export interface PolicyEntry {
  readonly name: SyscallName;
  /** Absent: always allowed. Present: allowed when any rule holds. */
  readonly rules?: readonly ArgRule[];
  /** Instead of allowing (e.g. an errno): none here so far. */
  readonly action?: number;
}

const PROT_EXEC = 4;
/** <linux/if_tun.h>: _IOW('T', 208, unsigned int) (backends/tap.ts has the TUN set). */
const TUNSETOFFLOAD = 0x400454d0;
const AF_UNIX = 1;

/** A 32-bit argument equal to `value` (an int or an ioctl request: the kernel reads the low half only). */
const eq32 = (arg: ArgCheck['arg'], value: number): ArgCheck => ({ arg, width: 32, value: BigInt(value >>> 0) });
/** A 32-bit argument with the bits of `mask` set. */
const set32 = (arg: ArgCheck['arg'], mask: number): ArgCheck => ({
  arg,
  width: 32,
  mask: BigInt(mask),
  value: BigInt(mask),
});
/** A 32-bit argument with the bits of `mask` clear. */
const clear32 = (arg: ArgCheck['arg'], mask: number): ArgCheck => ({ arg, width: 32, mask: BigInt(mask), value: 0n });

const ioctls = (requests: readonly number[]): PolicyEntry => ({
  name: 'ioctl',
  rules: requests.map((r) => [eq32(1, r)]),
});

/** Any protection but PROT_EXEC. */
const mmapNoExec: PolicyEntry = { name: 'mmap', rules: [[clear32(2, PROT_EXEC)]] };

/**
 * Every Node worker thread, once set up: its event loop (epoll), waits (futex: Atomics.wait, locks),
 * its heap (mmap/munmap/madvise/mprotect), postMessage (write to an eventfd, read on the other side),
 * and the end of the thread or process.
 */
const NODE_WORKER: readonly PolicyEntry[] = [
  { name: 'read' },
  { name: 'write' },
  { name: 'close' },
  { name: 'futex' },
  { name: 'epoll_pwait' },
  { name: 'epoll_wait' },
  { name: 'poll' },
  mmapNoExec,
  { name: 'munmap' },
  { name: 'madvise' },
  { name: 'mprotect' },
  { name: 'rt_sigprocmask' },
  { name: 'rt_sigreturn' },
  { name: 'getpid' },
  { name: 'exit' },
  { name: 'exit_group' },
  // RUNTIME: glibc's malloc (brk, mremap), a sleep or wait a signal interrupted (restart_syscall),
  // a spinning lock (sched_yield), V8's thread id (gettid). And the clock: Date.now() is gettimeofday
  // and performance.now() clock_gettime, which the vDSO answers without a system call where the host's
  // clocksource allows (here: never seen by strace) and which are real system calls where it does not
  // (the nested lane's emulated machine: a vCPU thread died on gettimeofday before this was listed).
  { name: 'brk' },
  { name: 'mremap' },
  { name: 'restart_syscall' },
  { name: 'sched_yield' },
  { name: 'gettid' },
  { name: 'clock_gettime' },
  { name: 'clock_getres' },
  { name: 'gettimeofday' },
  { name: 'time' },
  { name: 'clock_nanosleep' },
];

/**
 * KVM ioctls a vCPU thread makes: KVM_RUN, and its own vCPU's state (a stop's register dump, a reset,
 * pause/resume) and the VM's interrupt lines (KVM_IRQ_LINE, legacy devices on the in-kernel irqchip).
 * Not here, on purpose: KVM_SET_USER_MEMORY_REGION (it would map host memory into the guest), the
 * KVM_CREATE_* calls, KVM_IRQFD/KVM_IOEVENTFD, KVM_SET_IRQCHIP/CLOCK/PIT2, KVM_ENABLE_CAP.
 */
const VCPU_IOCTLS: readonly IoctlName[] = [
  'KVM_RUN',
  'KVM_IRQ_LINE',
  'KVM_GET_REGS',
  'KVM_SET_REGS',
  'KVM_GET_SREGS',
  'KVM_SET_SREGS',
  'KVM_GET_FPU',
  'KVM_SET_FPU',
  'KVM_GET_MSRS',
  'KVM_SET_MSRS',
  'KVM_GET_LAPIC',
  'KVM_SET_LAPIC',
  'KVM_GET_MP_STATE',
  'KVM_SET_MP_STATE',
  'KVM_GET_VCPU_EVENTS',
  'KVM_SET_VCPU_EVENTS',
  'KVM_GET_XSAVE',
  'KVM_SET_XSAVE',
  'KVM_GET_XCRS',
  'KVM_SET_XCRS',
  'KVM_GET_CPUID2',
];

/**
 * An open image or file: positioned reads and writes, flushes, holes (qcow2 and raw images on the I/O
 * thread when it has no pool, and on the disk threads), fstat (Node's fstatSync is statx on the fd).
 */
const FILES: readonly PolicyEntry[] = [
  { name: 'pread64' },
  { name: 'pwrite64' },
  { name: 'preadv' },
  { name: 'pwritev' },
  { name: 'fdatasync' },
  { name: 'fsync' },
  { name: 'fallocate' },
  { name: 'lseek' },
  { name: 'fstat' },
  { name: 'statx' },
];

const F_GETFD = 1;
const F_SETFD = 2;
const F_GETFL = 3;
const F_SETFL = 4;
/** fcntl for O_NONBLOCK and FD_CLOEXEC only (no locks, no F_DUPFD, no leases or signals). */
const FCNTL_FLAGS: readonly ArgRule[] = [F_GETFD, F_SETFD, F_GETFL, F_SETFL].map((c) => [eq32(1, c)]);

/**
 * A share's FUSE server (backends/fs/, every host call in os/fsat.ts): the *at calls on the node and
 * handle fds it holds, reads and writes of open files, xattrs through /proc/self/fd/N, and the
 * completion eventfd's write (NODE_WORKER's write). No socket, connect, execve, clone, ioctl, fcntl.
 *
 * A filter sees numbers, not paths, so what reaches where is the server's own work (O_PATH fds,
 * checked names, O_NOFOLLOW; backends/fs/server.ts); the argument rules here fix the shape of each
 * call to the shapes the server makes:
 * - openat: a lookup, CREATE and a restore's walk open one name below a held directory fd, always with
 *   O_NOFOLLOW; OPEN, OPENDIR, CREATE's O_PATH node and a restore's handles re-open a held fd through
 *   its /proc/self/fd/N link from AT_FDCWD, where O_NOFOLLOW would refuse the magic link itself, and
 *   never with O_CREAT. So: O_NOFOLLOW set, or AT_FDCWD without O_CREAT. Nothing is created through a
 *   last component that is a symlink (a filter cannot see the components before it: the server opens
 *   only one checked name below a held fd, and that is what keeps it inside the share).
 * - mknodat: regular files only (MKNOD refuses the rest before the call): no device node, FIFO or
 *   socket, whatever the thread is made to do.
 */
const FS_CALLS: readonly PolicyEntry[] = [
  { name: 'openat', rules: [[set32(2, O_NOFOLLOW)], [eq32(0, AT_FDCWD), clear32(2, O_CREAT)]] },
  { name: 'mknodat', rules: [[{ arg: 2, width: 32, mask: BigInt(S_IFMT), value: BigInt(S_IFREG) }]] },
  { name: 'statx' },
  { name: 'mkdirat' },
  { name: 'unlinkat' },
  // glibc's renameat2() is the renameat call when no flags are given (RENAME without NOREPLACE/EXCHANGE).
  { name: 'renameat' },
  { name: 'renameat2' },
  { name: 'symlinkat' },
  { name: 'readlinkat' },
  { name: 'linkat' },
  { name: 'fchmodat' },
  { name: 'fchownat' },
  { name: 'utimensat' },
  { name: 'truncate' },
  { name: 'ftruncate' },
  { name: 'fstatfs' },
  { name: 'getdents64' },
  { name: 'lseek' },
  { name: 'pread64' },
  { name: 'pwrite64' },
  { name: 'fsync' },
  { name: 'fdatasync' },
  { name: 'fallocate' },
  { name: 'faccessat2' },
  // RUNTIME: glibc's faccessat() is faccessat2, and falls back to faccessat where the host's kernel
  // has no faccessat2 (before 5.8: ENOSYS); this host never took that path.
  { name: 'faccessat' },
  { name: 'getxattr' },
  { name: 'setxattr' },
  { name: 'listxattr' },
  { name: 'removexattr' },
];

/** The lists: the observed sets (see the header), by kind. */
export const POLICY: Record<ThreadKind, readonly PolicyEntry[]> = {
  // A stop with a memory file checks it (fstat: statx on the fd).
  vcpu: [...NODE_WORKER, ioctls(VCPU_IOCTLS.map((n) => IOCTL[n])), { name: 'fstat' }, { name: 'statx' }],
  io: [
    ...NODE_WORKER,
    ...FILES,
    { name: 'epoll_create1' },
    { name: 'epoll_ctl' },
    { name: 'eventfd2' },
    { name: 'timerfd_create' },
    { name: 'timerfd_settime' },
    // virtio-rng: randomFillSync is OpenSSL's DRBG, which reseeds from getrandom now and then (and
    // checks getpid for a fork): rare, so the tests may not see it.
    { name: 'getrandom' },
    { name: 'readv' },
    { name: 'writev' },
    { name: 'fcntl', rules: FCNTL_FLAGS },
    // vsock (Firecracker's hybrid vsock: host Unix sockets), passt's socket, the agent's channel.
    { name: 'socket', rules: [[eq32(0, AF_UNIX)]] },
    { name: 'connect' },
    { name: 'accept4' },
    { name: 'recvfrom' },
    { name: 'sendto' },
    { name: 'recvmsg' },
    { name: 'sendmsg' },
    { name: 'shutdown' },
    { name: 'getsockopt' },
    // virtio-net over a TAP: the offloads the guest negotiated go to the TAP when the device activates
    // (backends/tap.ts setOffloads); nothing else. linux-net in the lane died on it before it was listed.
    ioctls([TUNSETOFFLOAD]),
  ],
  disk: [...NODE_WORKER, ...FILES],
  fs: [...NODE_WORKER, ...FS_CALLS],
};

/** A kind's list with the numbers of its calls (x86_64). */
export function policyEntries(kind: ThreadKind): AllowEntry[] {
  return POLICY[kind].map((e) => ({ ...e, nr: SYSCALLS[e.name] }));
}

/**
 * Installs `kind`'s filter on the calling thread when `enabled` (the VM's seccomp option) and
 * VIREO_SECCOMP allows; once per thread (a thread serving its next VM keeps its filter).
 */
export function confine(kind: ThreadKind, enabled: boolean): ConfineResult {
  return confineThread(kind, policyEntries(kind), enabled ? seccompEnvMode() : 'off');
}

/**
 * The process-wide filter (os/seccomp.ts confineProcess): a deny-list on every thread of a vireo process
 * (the CLI's `run`, `vireo-firecracker`, `vireo serve`: processes vireo owns; a program that embeds `Vm`
 * keeps its own main thread), installed with TSYNC before any thread's own allow-list, so the main thread,
 * Node's own threads (V8's platform workers, libuv's pool) and the passt processes the main thread starts
 * (a filter survives execve) all carry it. It refuses what neither vireo, nor Node, nor passt's own
 * sandboxing (unshare, mount, pivot_root, its own seccomp) ever needs and what attacks on a kernel reach
 * for: other processes' memory (ptrace, process_vm_*), kernel code (modules, kexec, bpf), keyrings, perf
 * events, userfaultfd, raw handles into file systems (open_by_handle_at), the machine's clocks, swap and
 * reboot, port I/O, and sockets of families vireo never opens (packet, crypto, the old and rare protocols).
 * io_uring answers ENOSYS instead (libuv falls back to its thread pool when it is refused).
 */
const TRAP = 0x00030000;
const ERRNO_ENOSYS = 0x00050000 | 38;
const DENIED: readonly SyscallName[] = [
  'ptrace',
  'process_vm_readv',
  'process_vm_writev',
  'kcmp',
  'init_module',
  'finit_module',
  'delete_module',
  'kexec_load',
  'kexec_file_load',
  'bpf',
  'perf_event_open',
  'keyctl',
  'add_key',
  'request_key',
  'userfaultfd',
  'open_by_handle_at',
  'name_to_handle_at',
  'lookup_dcookie',
  'settimeofday',
  'clock_settime',
  'clock_adjtime',
  'adjtimex',
  'reboot',
  'swapon',
  'swapoff',
  'acct',
  'quotactl',
  'quotactl_fd',
  'iopl',
  'ioperm',
  'vhangup',
  'uselib',
  'sysfs',
  '_sysctl',
  'nfsservctl',
];
/** Socket families refused everywhere: AF_PACKET, AF_ALG, AF_KEY and the rare ones kernels keep CVEs in. */
const DENIED_FAMILIES: Readonly<Record<string, number>> = {
  AF_AX25: 3,
  AF_IPX: 4,
  AF_APPLETALK: 5,
  AF_NETROM: 6,
  AF_ATMPVC: 8,
  AF_X25: 9,
  AF_ROSE: 11,
  AF_DECnet: 12,
  AF_KEY: 15,
  AF_PACKET: 17,
  AF_ECONET: 19,
  AF_ATMSVC: 20,
  AF_RDS: 21,
  AF_IRDA: 23,
  AF_PPPOX: 24,
  AF_LLC: 26,
  AF_IB: 27,
  AF_MPLS: 28,
  AF_CAN: 29,
  AF_TIPC: 30,
  AF_BLUETOOTH: 31,
  AF_RXRPC: 33,
  AF_ISDN: 34,
  AF_PHONET: 35,
  AF_IEEE802154: 36,
  AF_CAIF: 37,
  AF_ALG: 38,
  AF_NFC: 39,
  AF_KCM: 41,
  AF_QIPCRTR: 42,
  AF_SMC: 43,
  AF_XDP: 44,
  AF_MCTP: 45,
};

/** The process-wide deny-list with its numbers (x86_64). */
export function processEntries(): AllowEntry[] {
  return [
    ...DENIED.map((name) => ({ name, nr: SYSCALLS[name], action: TRAP })),
    {
      name: 'socket',
      nr: SYSCALLS.socket,
      rules: Object.values(DENIED_FAMILIES).map((f) => [eq32(0, f)]),
      action: TRAP,
    },
    ...(['io_uring_setup', 'io_uring_enter', 'io_uring_register'] as const).map((name) => ({
      name,
      nr: SYSCALLS[name],
      action: ERRNO_ENOSYS,
    })),
  ];
}

/** Installs the process-wide filter when `enabled` and VIREO_SECCOMP allows (see processEntries). */
export function confineVmmProcess(enabled: boolean): ConfineResult {
  return confineProcess(processEntries(), enabled ? seccompEnvMode() : 'off');
}

/*
 * The main thread has no allow-list of its own (only the process-wide deny-list above). It spawns processes (passt, for one), opens files and sockets of every kind for the API, the CLI and snapshots, creates VMs and
 * vCPUs and maps guest memory: its list would hold execve, clone, openat, socket of any family and
 * KVM_SET_USER_MEMORY_REGION, and so would not stop what a filter is there to stop. The guest reaches the
 * main thread only through the vCPU and I/O threads' messages (small, typed reports); the threads that
 * parse guest data are the filtered ones.
 */
