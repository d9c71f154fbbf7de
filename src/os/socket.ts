/** Unix stream sockets (virtio-vsock's host side), raw and non-blocking. */
import { SyscallError } from '../common/errors.js';
import { EAGAIN, ECONNRESET, EINPROGRESS, EINTR, errno, libc } from './libc.js';

const c_socket = libc.func('socket', 'int', ['int', 'int', 'int']);
const c_bind = libc.func('bind', 'int', ['int', 'void *', 'uint32_t']);
const c_listen = libc.func('listen', 'int', ['int', 'int']);
const c_accept4 = libc.func('accept4', 'int', ['int', 'void *', 'void *', 'int']);
const c_connect = libc.func('connect', 'int', ['int', 'void *', 'uint32_t']);
const c_recv = libc.func('recv', 'intptr_t', ['int', 'void *', 'size_t', 'int']);
const c_send = libc.func('send', 'intptr_t', ['int', 'void *', 'size_t', 'int']);
const c_shutdown = libc.func('shutdown', 'int', ['int', 'int']);
const c_getsockopt = libc.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', 'void *']);

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
