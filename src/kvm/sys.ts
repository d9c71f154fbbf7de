/**
 * libc through koffi: the only place in vireo that declares native functions.
 * Every call that can fail is wrapped so that failure becomes a SyscallError with errno.
 * Module state is per thread: each vCPU worker loads its own copy.
 */
import koffi from 'koffi';
import { SyscallError } from '../common/errors.js';

const libc = koffi.load('libc.so.6');

const c_open = libc.func('open', 'int', ['str', 'int', 'int']);
const c_close = libc.func('close', 'int', ['int']);
const c_ioctlPtr = libc.func('ioctl', 'int', ['int', 'unsigned long', 'void *']);
const c_ioctlInt = libc.func('ioctl', 'int', ['int', 'unsigned long', 'uintptr_t']);
const c_mmap = libc.func('mmap', 'uintptr_t', ['uintptr_t', 'size_t', 'int', 'int', 'int', 'int64_t']);
const c_munmap = libc.func('munmap', 'int', ['uintptr_t', 'size_t']);
const c_madvise = libc.func('madvise', 'int', ['uintptr_t', 'size_t', 'int']);
const c_eventfd = libc.func('eventfd', 'int', ['unsigned int', 'int']);
const c_read = libc.func('read', 'intptr_t', ['int', 'void *', 'size_t']);
const c_write = libc.func('write', 'intptr_t', ['int', 'void *', 'size_t']);
const c_pthread_self = libc.func('pthread_self', 'uint64_t', []);
const c_pthread_kill = libc.func('pthread_kill', 'int', ['uint64_t', 'int']);
const c_sigaction = libc.func('sigaction', 'int', ['int', 'void *', 'void *']);
const c_dlsym = libc.func('dlsym', 'uintptr_t', ['uintptr_t', 'str']);
const c_fcntl = libc.func('fcntl', 'int', ['int', 'int', 'int']);
const c_fcntlPtr = libc.func('fcntl', 'int', ['int', 'int', 'void *']);
const c_epoll_create1 = libc.func('epoll_create1', 'int', ['int']);
const c_epoll_ctl = libc.func('epoll_ctl', 'int', ['int', 'int', 'int', 'void *']);
const c_epoll_wait = libc.func('epoll_wait', 'int', ['int', 'void *', 'int', 'int']);
const c_pipe2 = libc.func('pipe2', 'int', ['void *', 'int']);
const c_fallocate = libc.func('fallocate', 'int', ['int', 'int', 'int64_t', 'int64_t']);
const c_poll = libc.func('poll', 'int', ['void *', 'uint64_t', 'int']);
const c_readv = libc.func('readv', 'intptr_t', ['int', 'void *', 'int']);
const c_writev = libc.func('writev', 'intptr_t', ['int', 'void *', 'int']);
const c_lseek = libc.func('lseek', 'int64_t', ['int', 'int64_t', 'int']);

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MADV_DONTNEED = 4;
export const MADV_DONTFORK = 10;
export const MADV_MERGEABLE = 12;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EINTR = 4;
export const EAGAIN = 11;
const MAP_FAILED = 2 ** 64 - 1;

export const errno = (): number => koffi.errno();

export function open(path: string, flags: number): number {
  const fd = c_open(path, flags | O_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError(`open(${path})`, errno());
  return fd;
}

export function close(fd: number): void {
  c_close(fd);
}

/**
 * ioctl with a pointer argument (a Buffer, or null). Returns the non-negative result. A signal
 * (a profiler's, a kick) can interrupt a KVM ioctl with EINTR before it did anything: it is retried.
 */
export function ioctl(fd: number, request: number, arg: Buffer | null, name: string): number {
  for (;;) {
    const r = c_ioctlPtr(fd, request, arg) as number;
    if (r >= 0) return r;
    const e = errno();
    if (e !== EINTR) throw new SyscallError(`ioctl(${name})`, e);
  }
}

/** ioctl with an integer argument (EINTR retried, as for ioctl). */
export function ioctlInt(fd: number, request: number, arg: number, name: string): number {
  for (;;) {
    const r = c_ioctlInt(fd, request, arg) as number;
    if (r >= 0) return r;
    const e = errno();
    if (e !== EINTR) throw new SyscallError(`ioctl(${name})`, e);
  }
}

/** ioctl returning -errno instead of throwing: for KVM_RUN, where EINTR is routine. */
export function ioctlRaw(fd: number, request: number, arg: number): number {
  const r = c_ioctlInt(fd, request, arg) as number;
  return r < 0 ? -errno() : r;
}

/** Raw ioctl function for the vCPU hot loop (no wrapper, no allocation). */
export const ioctlHot = c_ioctlInt as (fd: number, request: number, arg: number) => number;

export function mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number {
  const p = c_mmap(addr, length, prot, flags, fd, offset) as number;
  if (p === MAP_FAILED || p === -1) throw new SyscallError('mmap', errno(), `${length} bytes`);
  return p;
}

export function munmap(addr: number, length: number): void {
  if ((c_munmap(addr, length) as number) < 0) throw new SyscallError('munmap', errno());
}

export function madvise(addr: number, length: number, advice: number): void {
  if ((c_madvise(addr, length, advice) as number) < 0) throw new SyscallError('madvise', errno());
}

export function eventfd(initval: number, flags: number): number {
  const fd = c_eventfd(initval, flags | EFD_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

const u64buf = Buffer.alloc(8);
/** Read an eventfd counter; returns 0 when nothing was pending (non-blocking fd). */
export function eventfdRead(fd: number): number {
  const r = c_read(fd, u64buf, 8) as number;
  if (r < 0) {
    const e = errno();
    if (e === EAGAIN) return 0;
    throw new SyscallError('read(eventfd)', e);
  }
  return Number(u64buf.readBigUInt64LE(0));
}

export function eventfdWrite(fd: number, value = 1): void {
  u64buf.writeBigUInt64LE(BigInt(value), 0);
  if ((c_write(fd, u64buf, 8) as number) < 0) throw new SyscallError('write(eventfd)', errno());
}

export function setNonBlocking(fd: number): void {
  const F_GETFL = 3;
  const F_SETFL = 4;
  const O_NONBLOCK = 0o4000;
  const flags = c_fcntl(fd, F_GETFL, 0) as number;
  if (flags < 0 || (c_fcntl(fd, F_SETFL, flags | O_NONBLOCK) as number) < 0) throw new SyscallError('fcntl', errno());
}

const F_DUPFD_CLOEXEC = 1030;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;

/** A second fd for the same open file description (close-on-exec): it shares the file's OFD locks. */
export function dupFd(fd: number): number {
  const r = c_fcntl(fd, F_DUPFD_CLOEXEC, 0) as number;
  if (r < 0) throw new SyscallError('fcntl(F_DUPFD_CLOEXEC)', errno());
  return r;
}

/** struct flock (x86_64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid. */
function flock(type: number): Buffer {
  const b = Buffer.alloc(32); // l_whence SEEK_SET, l_start 0, l_len 0 (the whole file), l_pid 0 (OFD locks need 0)
  b.writeInt16LE(type, 0);
  return b;
}

/** What holds a lock that conflicts with ours. */
export type LockHolder = 'shared' | 'exclusive';

/**
 * Takes an open-file-description lock on the whole file (fcntl F_OFD_SETLK, as QEMU locks its images):
 * shared or exclusive, without waiting. OFD locks belong to the open file, not the process, so two
 * opens in one process conflict as two processes do, and the lock goes when the last fd of that open
 * file closes (also when the process dies). Returns undefined when taken, else the kind of lock that
 * stands in the way (F_OFD_GETLK; 'exclusive' when it went away in between and cannot be told).
 */
export function lockFile(fd: number, kind: LockHolder): LockHolder | undefined {
  const type = kind === 'shared' ? F_RDLCK : F_WRLCK;
  if ((c_fcntlPtr(fd, F_OFD_SETLK, flock(type)) as number) === 0) return undefined;
  const e = errno();
  if (e !== EAGAIN && e !== 13 /* EACCES */) throw new SyscallError('fcntl(F_OFD_SETLK)', e);
  const probe = flock(type);
  if ((c_fcntlPtr(fd, F_OFD_GETLK, probe) as number) < 0) throw new SyscallError('fcntl(F_OFD_GETLK)', errno());
  const held = probe.readInt16LE(0);
  return held === F_RDLCK ? 'shared' : 'exclusive';
}

/** Whether lockFile() failed because the file system has no OFD locks (ENOLCK, EINVAL, EOPNOTSUPP). */
export function locksUnsupported(e: unknown): boolean {
  return e instanceof SyscallError && (e.errno === 37 || e.errno === 22 || e.errno === 95);
}

/** Drops this open file's OFD lock (closing its last fd does the same). */
export function unlockFile(fd: number): void {
  if ((c_fcntlPtr(fd, F_OFD_SETLK, flock(F_UNLCK)) as number) < 0)
    throw new SyscallError('fcntl(F_OFD_SETLK)', errno());
}

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

/** The native address of each ArrayBuffer view() made (readv/writev point straight into them). */
const viewBases = new WeakMap<ArrayBufferLike, number>();

/** A zero-copy view of native memory at a raw address. Views are per thread. */
export function view(addr: number, length: number): ArrayBuffer {
  const buf = koffi.view(BigInt(addr), length);
  viewBases.set(buf, addr);
  return buf;
}

/** struct iovec { void *iov_base; size_t iov_len; } */
const IOVEC_SIZE = 16;

/**
 * A reusable struct iovec array over views of native memory made by view() (guest RAM): readv/writev
 * straight between a file and those bytes, with no Node wrapper and no allocation per call. Only
 * bytes a view covers can be named, so the kernel touches nothing the caller's views did not allow.
 */
export class IoVec {
  private readonly buf: Buffer;
  private readonly dv: DataView;
  /** Entries set. */
  count = 0;
  private lastBuffer: ArrayBufferLike | undefined;
  private lastBase = 0;

  constructor(readonly max: number) {
    this.buf = Buffer.alloc(IOVEC_SIZE * max);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  clear(): void {
    this.count = 0;
  }

  /** Adds a view; false (nothing added) when the vector is full or the view is not of memory view() made. */
  push(v: Uint8Array): boolean {
    if (this.count >= this.max) return false;
    let base: number | undefined;
    if (v.buffer === this.lastBuffer) base = this.lastBase;
    else {
      base = viewBases.get(v.buffer);
      if (base === undefined) return false;
      this.lastBuffer = v.buffer;
      this.lastBase = base;
    }
    const addr = base + v.byteOffset;
    const o = this.count * IOVEC_SIZE;
    this.dv.setUint32(o, addr >>> 0, true);
    this.dv.setUint32(o + 4, Math.floor(addr / 0x100000000), true);
    this.dv.setUint32(o + 8, v.byteLength, true);
    this.dv.setUint32(o + 12, 0, true);
    this.count++;
    return true;
  }

  /** readv(2) into the entries set; -1 for EAGAIN, SyscallError for other failures. */
  readv(fd: number): number {
    const n = c_readv(fd, this.buf, this.count) as number;
    if (n >= 0) return n;
    const e = errno();
    if (e === EAGAIN) return -1;
    throw new SyscallError('readv', e);
  }

  /** writev(2) from the entries set; -1 for EAGAIN, SyscallError for other failures. */
  writev(fd: number): number {
    const n = c_writev(fd, this.buf, this.count) as number;
    if (n >= 0) return n;
    const e = errno();
    if (e === EAGAIN) return -1;
    throw new SyscallError('writev', e);
  }
}

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
/** struct epoll_event is packed on x86_64: u32 events, u64 data. */
const EPOLL_EVENT_SIZE = 12;

/** An epoll set whose events carry a 32-bit token. */
export class Epoll {
  readonly fd: number;
  private readonly ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  private readonly out: Buffer;

  constructor(readonly maxEvents = 64) {
    const fd = c_epoll_create1(EFD_CLOEXEC) as number;
    if (fd < 0) throw new SyscallError('epoll_create1', errno());
    this.fd = fd;
    this.out = Buffer.alloc(EPOLL_EVENT_SIZE * maxEvents);
  }

  private ctl(op: number, fd: number, events: number, token: number): void {
    this.ev.writeUInt32LE(events, 0);
    this.ev.writeBigUInt64LE(BigInt(token >>> 0), 4);
    if ((c_epoll_ctl(this.fd, op, fd, this.ev) as number) < 0) throw new SyscallError('epoll_ctl', errno());
  }

  add(fd: number, events: number, token: number): void {
    this.ctl(EPOLL_CTL_ADD, fd, events, token);
  }
  modify(fd: number, events: number, token: number): void {
    this.ctl(EPOLL_CTL_MOD, fd, events, token);
  }
  remove(fd: number): void {
    this.ctl(EPOLL_CTL_DEL, fd, 0, 0);
  }

  /** Blocks up to timeoutMs (-1: forever); calls fn(token, events) for each ready fd. EINTR returns 0. */
  wait(timeoutMs: number, fn: (token: number, events: number) => void): number {
    const n = c_epoll_wait(this.fd, this.out, this.maxEvents, timeoutMs) as number;
    if (n < 0) {
      const e = errno();
      if (e === EINTR) return 0;
      throw new SyscallError('epoll_wait', e);
    }
    for (let i = 0; i < n; i++) {
      const o = i * EPOLL_EVENT_SIZE;
      fn(this.out.readUInt32LE(o + 4), this.out.readUInt32LE(o));
    }
    return n;
  }

  close(): void {
    close(this.fd);
  }
}

/** struct pollfd { int fd; short events; short revents; } for readable(). */
const pollFd = Buffer.alloc(8);
const POLLIN = 0x001;

/**
 * Whether `fd` has data to read now (poll with no wait). Lets a caller skip a read that would fail
 * with EAGAIN, which Node's fs functions turn into a thrown error (costly on a hot path). A poll
 * error answers true: the read then reports it.
 */
export function readable(fd: number): boolean {
  pollFd.writeInt32LE(fd, 0);
  pollFd.writeInt16LE(POLLIN, 4);
  pollFd.writeInt16LE(0, 6);
  const n = c_poll(pollFd, 1, 0) as number;
  return n !== 0;
}

const POLLOUT = 0x004;

/**
 * Waits up to `timeoutMs` for `fd` to take a write (poll for POLLOUT): true when it would, or when
 * poll reports an error on the fd (POLLERR, POLLHUP: the write then reports it). Blocks without
 * spinning. A signal (a vCPU kick) does not end the wait: poll goes on for the time left. When poll
 * itself fails the answer is false: the fd may be a blocking one, whose write would then wait for
 * its reader in the kernel, where a kick (SA_RESTART) never gets the thread back.
 */
export function waitWritable(fd: number, timeoutMs: number): boolean {
  const deadline = Date.now() + timeoutMs;
  for (let wait = timeoutMs; ; wait = Math.max(0, deadline - Date.now())) {
    pollFd.writeInt32LE(fd, 0);
    pollFd.writeInt16LE(POLLOUT, 4);
    pollFd.writeInt16LE(0, 6);
    const n = c_poll(pollFd, 1, wait) as number;
    if (n >= 0) return n > 0;
    if (errno() !== EINTR || wait === 0) return false;
  }
}

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fallocate(2); throws SyscallError (errno EOPNOTSUPP where the file system cannot). */
export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  if ((c_fallocate(fd, mode, offset, length) as number) < 0) throw new SyscallError('fallocate', errno());
}

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
const ENXIO = 6;

/**
 * lseek(2) with SEEK_DATA or SEEK_HOLE: the next offset at or after `from` where data (or a hole)
 * starts, or -1 when there is none before the end of the file (ENXIO).
 */
export function seekExtent(fd: number, from: number, whence: typeof SEEK_DATA | typeof SEEK_HOLE): number {
  const r = Number(c_lseek(fd, from, whence));
  if (r >= 0) return r;
  const e = errno();
  if (e === ENXIO) return -1;
  throw new SyscallError('lseek', e);
}

/** pipe2(O_CLOEXEC | O_NONBLOCK): [read end, write end]. */
export function pipe(): [number, number] {
  // A buffer, not a JS array: koffi copies arrays in but never back out through a plain pointer.
  const fds = Buffer.alloc(8);
  if ((c_pipe2(fds, O_CLOEXEC | 0o4000) as number) < 0) throw new SyscallError('pipe2', errno());
  return [fds.readInt32LE(0), fds.readInt32LE(4)];
}

// --- Unix stream sockets (virtio-vsock's host side) and timerfd ------------------------------

const c_socket = libc.func('socket', 'int', ['int', 'int', 'int']);
const c_bind = libc.func('bind', 'int', ['int', 'void *', 'uint32_t']);
const c_listen = libc.func('listen', 'int', ['int', 'int']);
const c_accept4 = libc.func('accept4', 'int', ['int', 'void *', 'void *', 'int']);
const c_connect = libc.func('connect', 'int', ['int', 'void *', 'uint32_t']);
const c_recv = libc.func('recv', 'intptr_t', ['int', 'void *', 'size_t', 'int']);
const c_send = libc.func('send', 'intptr_t', ['int', 'void *', 'size_t', 'int']);
const c_shutdown = libc.func('shutdown', 'int', ['int', 'int']);
const c_getsockopt = libc.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', 'void *']);
const c_timerfd_create = libc.func('timerfd_create', 'int', ['int', 'int']);
const c_timerfd_settime = libc.func('timerfd_settime', 'int', ['int', 'int', 'void *', 'void *']);

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;
export const MSG_PEEK = 0x2;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const ENOENT = 2;
export const EPIPE = 32;
export const ECONNRESET = 104;
export const ECONNREFUSED = 111;
export const EINPROGRESS = 115;
/** sun_path holds 108 bytes including the terminating NUL. */
export const UNIX_PATH_MAX = 107;
const SOL_SOCKET = 1;
const SO_ERROR = 4;

/** struct sockaddr_un for `path`; throws when the path does not fit. */
function sockaddrUn(path: string, call: string): Buffer {
  const p = Buffer.from(path, 'utf8');
  if (p.length === 0 || p.length > UNIX_PATH_MAX || p.includes(0))
    throw new SyscallError(call, 36, `Unix socket path must be 1-${UNIX_PATH_MAX} bytes without NUL: ${path}`);
  const sa = Buffer.alloc(110);
  sa.writeUInt16LE(AF_UNIX, 0);
  p.copy(sa, 2);
  return sa;
}

/** A new non-blocking, close-on-exec AF_UNIX stream socket. */
export function unixSocket(): number {
  const fd = c_socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError('socket(AF_UNIX)', errno());
  return fd;
}

/** bind(2) + listen(2) on a Unix socket path. */
export function bindListen(fd: number, path: string, backlog = 128): void {
  const sa = sockaddrUn(path, `bind(${path})`);
  if ((c_bind(fd, sa, 2 + Buffer.byteLength(path) + 1) as number) < 0) throw new SyscallError(`bind(${path})`, errno());
  if ((c_listen(fd, backlog) as number) < 0) throw new SyscallError(`listen(${path})`, errno());
}

/** accept4(2), non-blocking and close-on-exec; -1 when no connection is waiting. */
export function accept(fd: number): number {
  for (;;) {
    const r = c_accept4(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
    if (r >= 0) return r;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return -1;
    // The connection went away between poll and accept: nothing to accept now.
    if (e === ECONNRESET || e === 103 /* ECONNABORTED */) return -1;
    throw new SyscallError('accept4', e);
  }
}

/**
 * connect(2) a non-blocking socket to a Unix socket path: 0 when connected, EINPROGRESS when it goes
 * on in the background (wait for writability, then socketError()); any other failure throws.
 */
export function connectUnix(fd: number, path: string): number {
  const sa = sockaddrUn(path, `connect(${path})`);
  for (;;) {
    if ((c_connect(fd, sa, 2 + Buffer.byteLength(path) + 1) as number) === 0) return 0;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EINPROGRESS) return EINPROGRESS;
    throw new SyscallError(`connect(${path})`, e);
  }
}

/** recv(2) without blocking: bytes read, 0 at end of stream, -1 when nothing is there. Throws on errors. */
export function recv(fd: number, buf: Uint8Array, flags = 0): number {
  for (;;) {
    const n = c_recv(fd, buf, buf.length, flags | MSG_DONTWAIT) as number;
    if (n >= 0) return n;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return -1;
    throw new SyscallError('recv', e);
  }
}

/** send(2) without blocking and without SIGPIPE: bytes written, -1 when the buffer is full. Throws on errors. */
export function send(fd: number, buf: Uint8Array): number {
  for (;;) {
    const n = c_send(fd, buf, buf.length, MSG_DONTWAIT | MSG_NOSIGNAL) as number;
    if (n >= 0) return n;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return -1;
    throw new SyscallError('send', e);
  }
}

export function shutdown(fd: number, how: number): void {
  if ((c_shutdown(fd, how) as number) < 0) throw new SyscallError('shutdown', errno());
}

/** getsockopt(SO_ERROR): the pending error of a socket (0: none), which it also clears. */
export function socketError(fd: number): number {
  const v = Buffer.alloc(4);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(4, 0);
  if ((c_getsockopt(fd, SOL_SOCKET, SO_ERROR, v, len) as number) < 0) throw new SyscallError('getsockopt', errno());
  return v.readInt32LE(0);
}

const CLOCK_MONOTONIC = 1;
export const TFD_NONBLOCK = 0o4000;
export const TFD_CLOEXEC = 0o2000000;

/** A non-blocking CLOCK_MONOTONIC timerfd. */
export function timerfd(): number {
  const fd = c_timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('timerfd_create', errno());
  return fd;
}

/** Arms a timerfd to fire once after `ms` milliseconds (at least 1); `ms` <= 0 disarms it. Read it with eventfdRead(). */
export function timerfdSet(fd: number, ms: number): void {
  const spec = Buffer.alloc(32); // struct itimerspec: it_interval, then it_value (each tv_sec, tv_nsec)
  if (ms > 0) {
    const t = Math.max(1, Math.ceil(ms));
    spec.writeBigInt64LE(BigInt(Math.floor(t / 1000)), 16);
    spec.writeBigInt64LE(BigInt((t % 1000) * 1_000_000), 24);
  }
  if ((c_timerfd_settime(fd, 0, spec, null) as number) < 0) throw new SyscallError('timerfd_settime', errno());
}

// --- memguard: SIGBUS on guest RAM mapped from a file (src/native/memguard.c) ---------------------

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
