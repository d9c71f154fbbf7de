/**
 * The host side of virtio-vsock: AF_UNIX stream sockets, raw and non-blocking, driven by the I/O
 * thread's epoll (Node's `net` needs an event loop, which that thread never returns to).
 *
 * The listener on `uds_path` is opened in the main thread when the VM is built, so a bad path is a
 * ConfigError before anything starts; its fd travels to the I/O thread in the device's spec (as a
 * disk's fd does), and the main thread closes it and removes the path when the VM stops. Connections
 * are created and closed on the I/O thread by the device.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { ConfigError, SyscallError } from '../common/errors.js';
import type { VsockConfig, VsockHost, VsockListener, VsockStream, VsockTimer } from '../devices/virtio/vsock/index.js';
import * as sys from '../os/sys.js';

/** What the VMM opens in the main thread and posts to the I/O thread (plain data). */
export interface VsockSpec extends VsockConfig {
  /** The listening socket bound at udsPath. */
  listenFd: number;
}

/** A connected, non-blocking Unix stream socket. */
export class UnixStream implements VsockStream {
  private closed = false;
  constructor(readonly fd: number) {}

  recv(buf: Uint8Array, peek = false): number {
    return sys.recv(this.fd, buf, peek ? sys.MSG_PEEK : 0);
  }

  send(buf: Uint8Array): number {
    return sys.send(this.fd, buf);
  }

  shutdownWrite(): void {
    sys.shutdown(this.fd, sys.SHUT_WR);
  }

  connectResult(): number {
    return sys.socketError(this.fd);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    sys.close(this.fd);
  }
}

/** Connects to the Unix socket at `path` without blocking (a Unix connect is usually done at once). */
export function connectUnix(path: string): { stream: UnixStream; inProgress: boolean } {
  const fd = sys.unixSocket();
  try {
    const r = sys.connectUnix(fd, path);
    return { stream: new UnixStream(fd), inProgress: r === sys.EINPROGRESS };
  } catch (e) {
    sys.close(fd);
    throw e;
  }
}

export class UnixListener implements VsockListener {
  constructor(readonly fd: number) {}

  accept(): UnixStream | undefined {
    const fd = sys.accept(this.fd);
    return fd < 0 ? undefined : new UnixStream(fd);
  }
}

class TimerFd implements VsockTimer {
  readonly fd = sys.timerfd();
  set(ms: number): void {
    sys.timerfdSet(this.fd, ms);
  }
  ack(): void {
    sys.eventfdRead(this.fd); // 8-byte expiry count, like an eventfd
  }
  close(): void {
    sys.close(this.fd);
  }
}

/** The device's view of the host: the listener from the spec, outgoing connects, a timerfd. No side effects until used. */
export class UnixVsockHost implements VsockHost {
  readonly listener: UnixListener;
  constructor(spec: VsockSpec) {
    this.listener = new UnixListener(spec.listenFd);
  }
  connect(path: string): { stream: VsockStream; inProgress: boolean } {
    return connectUnix(path);
  }
  createTimer(): VsockTimer {
    return new TimerFd();
  }
}

/** Whether a process still owns a Unix socket path: only a refused connect proves it stale. */
function socketAlive(path: string): boolean {
  try {
    const { stream } = connectUnix(path);
    stream.close();
    return true;
  } catch (e) {
    const errno = e instanceof SyscallError ? e.errno : 0;
    return errno !== sys.ECONNREFUSED && errno !== sys.ENOENT; // EAGAIN: alive, its backlog is full
  }
}

/**
 * Binds the listener at udsPath (in the main thread; the configuration was checked by validateVsock,
 * config/vsock.ts). A socket left behind by a process that is gone (nobody accepts on it) is replaced;
 * anything else at the path is an error.
 */
export function openVsock(config: VsockConfig): VsockSpec {
  const path = config.udsPath;
  let existing: ReturnType<typeof lstatSync> | undefined;
  try {
    existing = lstatSync(path);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isSocket())
      throw new ConfigError(`vsock uds path ${path} exists and is not a socket: remove it or choose another path`);
    if (socketAlive(path))
      throw new ConfigError(`vsock uds path ${path} is in use by another process: choose another path`);
    unlinkSync(path); // stale: its owner is gone
  }
  const fd = sys.unixSocket();
  try {
    sys.bindListen(fd, path);
  } catch (e) {
    sys.close(fd);
    const errno = e instanceof SyscallError ? e.errno : 0;
    const hint =
      errno === sys.ENOENT
        ? 'its directory does not exist'
        : errno === 13
          ? 'permission denied: choose a writable directory'
          : (e as Error).message;
    throw new ConfigError(`cannot listen on vsock uds path ${path}: ${hint}`);
  }
  return { ...config, listenFd: fd };
}

/** Closes the listener and removes the socket path (after the I/O thread stopped). Safe to call twice. */
export function closeVsock(spec: VsockSpec): void {
  if (spec.listenFd < 0) return;
  sys.close(spec.listenFd);
  spec.listenFd = -1;
  try {
    unlinkSync(spec.udsPath);
  } catch {
    // already gone
  }
}
