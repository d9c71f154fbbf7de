/** eventfd counters and timerfds (a timerfd is read as an eventfd is: an 8-byte count). */
import { SyscallError } from '../common/errors.js';
import { EAGAIN, errno, libc } from './libc.js';

const c_eventfd = libc.func('eventfd', 'int', ['unsigned int', 'int']);
const c_read = libc.func('read', 'intptr_t', ['int', 'void *', 'size_t']);
const c_write = libc.func('write', 'intptr_t', ['int', 'void *', 'size_t']);
const c_timerfd_create = libc.func('timerfd_create', 'int', ['int', 'int']);
const c_timerfd_settime = libc.func('timerfd_settime', 'int', ['int', 'int', 'void *', 'void *']);

export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

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
