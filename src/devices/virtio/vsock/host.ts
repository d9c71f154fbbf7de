/**
 * The host side of virtio-vsock as the device sees it: the interface a backend implements (the Unix
 * socket one is src/backends/unix-socket.ts; tests give fakes). All non-blocking; fds are watched
 * through the I/O thread's Poller.
 */

/** A connected host stream socket, non-blocking. Methods throw (with an errno) when the socket failed. */
export interface VsockStream {
  readonly fd: number;
  /** Reads into buf: bytes read, 0 at end of stream, -1 when nothing is there now. `peek` leaves them queued. */
  recv(buf: Uint8Array, peek?: boolean): number;
  /** Writes from buf: bytes written, -1 when the socket buffer is full. Throws when the peer is gone. */
  send(buf: Uint8Array): number;
  /** No more writes: the peer reads end of stream. */
  shutdownWrite(): void;
  /** After a connect in progress reported writability: 0 when it connected, else the errno. */
  connectResult(): number;
  close(): void;
}

/** The listening socket at udsPath (owned by whoever opened it; the device only accepts). */
export interface VsockListener {
  readonly fd: number;
  /** A newly connected host socket, or undefined when none is waiting. */
  accept(): VsockStream | undefined;
}

/** A one-shot timer with an fd that becomes readable when it fires. */
export interface VsockTimer {
  readonly fd: number;
  /** Fire once after ms milliseconds (replacing any earlier setting); ms <= 0 disarms. */
  set(ms: number): void;
  /** Consume the expiry after the fd became readable. */
  ack(): void;
  close(): void;
}

export interface VsockHost {
  readonly listener: VsockListener;
  /**
   * Starts connecting to the Unix socket at `path`. `inProgress` means: wait for writability, then ask
   * connectResult(). Throws when it fails at once (nobody listens: ENOENT, ECONNREFUSED; EAGAIN: backlog full).
   */
  connect(path: string): { stream: VsockStream; inProgress: boolean };
  createTimer(): VsockTimer;
}
