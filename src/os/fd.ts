/** File descriptors: open/close, ioctl, fcntl flags, pipes, fallocate and SEEK_DATA/SEEK_HOLE. */
import { SyscallError } from '../common/errors.js';
import { EINTR, errno, libc } from './libc.js';

const c_open = libc.func('open', 'int', ['str', 'int', 'int']);
const c_close = libc.func('close', 'int', ['int']);
const c_ioctlPtr = libc.func('ioctl', 'int', ['int', 'unsigned long', 'void *']);
const c_ioctlInt = libc.func('ioctl', 'int', ['int', 'unsigned long', 'uintptr_t']);
const c_fcntl = libc.func('fcntl', 'int', ['int', 'int', 'int']);
const c_pipe2 = libc.func('pipe2', 'int', ['void *', 'int']);
const c_fallocate = libc.func('fallocate', 'int', ['int', 'int', 'int64_t', 'int64_t']);
const c_lseek = libc.func('lseek', 'int64_t', ['int', 'int64_t', 'int']);

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;

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

export function setNonBlocking(fd: number): void {
  const F_GETFL = 3;
  const F_SETFL = 4;
  const O_NONBLOCK = 0o4000;
  const flags = c_fcntl(fd, F_GETFL, 0) as number;
  if (flags < 0 || (c_fcntl(fd, F_SETFL, flags | O_NONBLOCK) as number) < 0) throw new SyscallError('fcntl', errno());
}

const F_DUPFD_CLOEXEC = 1030;

/** A second fd for the same open file description (close-on-exec): it shares the file's OFD locks. */
export function dupFd(fd: number): number {
  const r = c_fcntl(fd, F_DUPFD_CLOEXEC, 0) as number;
  if (r < 0) throw new SyscallError('fcntl(F_DUPFD_CLOEXEC)', errno());
  return r;
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
