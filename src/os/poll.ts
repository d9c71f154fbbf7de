/** Readiness: an epoll set, and one-fd poll() checks for reading and writing. */
import { SyscallError } from '../common/errors.js';
import { EFD_CLOEXEC } from './eventfd.js';
import { close } from './fd.js';
import { EINTR, errno, libc } from './libc.js';

const c_epoll_create1 = libc.func('epoll_create1', 'int', ['int']);
const c_epoll_ctl = libc.func('epoll_ctl', 'int', ['int', 'int', 'int', 'void *']);
const c_epoll_wait = libc.func('epoll_wait', 'int', ['int', 'void *', 'int', 'int']);
const c_poll = libc.func('poll', 'int', ['void *', 'uint64_t', 'int']);

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

  /** A new epoll set, or (`existing`) a handle on one another thread made, which that thread closes. */
  constructor(
    readonly maxEvents = 64,
    existing?: number,
  ) {
    const fd = existing ?? (c_epoll_create1(EFD_CLOEXEC) as number);
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
