/**
 * One vsock stream connection between a guest port and a host Unix socket: its state machine, credit
 * in both directions (§5.10.6.3) and shutdown/RST sequencing. It knows no queues and no poller: what
 * it owes the guest it gives as packets on request (nextPacket), and what it needs from whoever
 * multiplexes it (counters, removing its fd from the poller, learning that it ended) comes through
 * ConnectionOwner, so it can be driven alone.
 *
 * Flow control: the device never sends a connection more payload than the guest advertised
 * (buf_alloc − (tx_cnt − fwd_cnt)), and advertises a fixed buffer of its own (VSOCK_BUF_ALLOC),
 * crediting bytes back (fwd_cnt) only once the Unix peer took them; so a slow host peer stops the
 * guest's sender through credit, and the device never holds more guest data than it advertised.
 */
import { POLL_IN, POLL_OUT } from '../device.js';
import type { VsockStream } from './host.js';
import {
  type HostPacket,
  VSOCK_MAX_PKT,
  VSOCK_OP,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_SHUTDOWN_RCV,
  VSOCK_SHUTDOWN_SEND,
  type VsockHeader,
} from './packet.js';

/** The buffer the device advertises per connection (buf_alloc): guest bytes it holds for a slow host peer. */
export const VSOCK_BUF_ALLOC = 256 * 1024;

/** The device's counters (one object, shared by the device, its muxer and its connections). */
export function createVsockCounters() {
  return {
    /** Connections set up, each way. */
    connections: 0,
    hostConnections: 0,
    guestConnections: 0,
    /** Connection attempts that failed (nobody at `${udsPath}_P`, guest refused, timeout, limits). */
    refused: 0,
    /** Payload bytes delivered to the guest (RX) and taken from it (TX). */
    rxBytes: 0,
    txBytes: 0,
    rxPackets: 0,
    txPackets: 0,
    /** RSTs sent to the guest. */
    rst: 0,
    /** Malformed packets and protocol violations from the guest. */
    errors: 0,
    /** Well-formed packets for no connection (answered with RST). */
    unknownConnection: 0,
    /** Host socket failures (reset, broken pipe, refused accept). */
    hostErrors: 0,
    creditUpdates: 0,
    /** Times the guest gave no RX buffer while the device had something to send. */
    rxStalls: 0,
    /** RSTs dropped because too many were queued with no RX buffers. */
    rstDropped: 0,
    transportResets: 0,
  };
}
export type VsockCounters = ReturnType<typeof createVsockCounters>;

/**
 * connecting: guest-initiated, the Unix connect is in progress.
 * requesting: host-initiated, OP_REQUEST queued or sent, waiting for the guest's OP_RESPONSE.
 * established: data flows (each direction may be shut down on its own).
 * closing: the host peer is gone and the guest was told (SHUTDOWN both); waiting for its RST or SHUTDOWN.
 */
export type ConnState = 'connecting' | 'requesting' | 'established' | 'closing';

/** What a connection needs from the muxer that owns it. */
export interface ConnectionOwner {
  readonly counters: VsockCounters;
  /** Stop watching the connection's fd (it is about to be closed); sets `events` to -1. */
  unwatch(c: VsockConnection): void;
  /**
   * The connection ended. `rst`: the guest knows it, and an RST is owed (nextPacket gives it last);
   * otherwise (a host-initiated one the guest never heard of) it can be forgotten at once.
   */
  ended(c: VsockConnection, rst: boolean): void;
}

/** What a guest packet on a live connection came to. */
export type GuestPacketResult = 'ok' | 'refuse' | 'answered';

export const connKey = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;
const u32 = (n: number): number => n >>> 0;

export class VsockConnection {
  readonly key: string;
  /** The events registered with the poller; -1 when the fd is not registered (the owner keeps it). */
  events = -1;
  deadline = 0;

  // guest → host
  /** Payload bytes taken from the guest; `fwdCnt` of them written to the Unix peer. */
  rxCnt = 0;
  fwdCnt = 0;
  /** fwd_cnt as last told to the guest. */
  advFwd = 0;
  /** Guest bytes not yet written to the Unix peer (at most VSOCK_BUF_ALLOC: the guest's credit). */
  out: Uint8Array[] = [];
  outBytes = 0;
  /** Bytes for the Unix peer ahead of guest data (the `OK <port>\n` line); not credit. */
  prefix: Uint8Array | undefined;
  /** The guest's SHUTDOWN flags so far. */
  guestShut = 0;
  /** shutdown(SHUT_WR) done on the Unix socket. */
  hostWriteShut = false;

  // host → guest
  /** Payload bytes sent to the guest (tx_cnt), and its last advertised buffer and fwd_cnt. */
  txCnt = 0;
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  /** The Unix socket may have bytes to read (set by readability, cleared when recv finds none). */
  readable = false;
  /** recv() returned end of stream. */
  hostEof = false;
  /** The Unix peer closed both ways (HUP): the fd is no longer watched, only drained. */
  hostGone = false;

  // control packets owed to the guest, sent in this order (after any data, before the RST)
  sendRequest = false;
  sendResponse = false;
  sendCredit = false;
  sendShutdown = 0;
  /** Finished: the RST goes out last, then the connection is forgotten. */
  sendRst = false;
  /** An OP_REQUEST went out (a later RST must then reach the guest). */
  requested = false;

  constructor(
    /** The host side's vsock port (P for guest-initiated, the ephemeral port for host-initiated). */
    readonly localPort: number,
    /** The guest side's port. */
    readonly peerPort: number,
    readonly hostInitiated: boolean,
    public state: ConnState,
    public stream: VsockStream | undefined,
    private readonly owner: ConnectionOwner,
  ) {
    this.key = connKey(localPort, peerPort);
  }

  /** Credit the guest gives this connection now (a fwd_cnt ahead of what was sent reads as none). */
  credit(): number {
    const inFlight = u32(u32(this.txCnt) - this.peerFwdCnt);
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  canReadHost(): boolean {
    return (
      this.state === 'established' &&
      this.stream !== undefined &&
      !this.hostEof &&
      !(this.guestShut & VSOCK_SHUTDOWN_RCV)
    );
  }

  /** Whether the connection has a packet for the guest (a place in the RX round robin). */
  wantsRx(): boolean {
    return (
      this.sendRequest ||
      this.sendResponse ||
      this.sendCredit ||
      this.sendShutdown !== 0 ||
      this.sendRst ||
      (this.readable && this.canReadHost() && this.credit() > 0)
    );
  }

  /** The poll events the fd should be watched for; `rxStalled`: the driver has no RX buffers. */
  interest(rxStalled: boolean): number {
    let ev = 0;
    if (this.state === 'connecting') ev = POLL_OUT;
    else if (this.state === 'established') {
      if (this.canReadHost() && !this.readable && !rxStalled && this.credit() > 0) ev |= POLL_IN;
      if (this.outBytes > 0 || this.prefix !== undefined) ev |= POLL_OUT;
    }
    return ev;
  }

  /** Moves the connection on when both sides are done with a direction (after any change to it). */
  advance(): void {
    if (!this.sendRst && this.state === 'established') {
      const flushed = this.outBytes === 0 && this.prefix === undefined;
      if (this.guestShut & VSOCK_SHUTDOWN_SEND && flushed && this.stream && !this.hostWriteShut && !this.hostGone) {
        try {
          this.stream.shutdownWrite();
          this.hostWriteShut = true;
        } catch {
          this.owner.counters.hostErrors++;
        }
      }
      const guestDone = (this.guestShut & VSOCK_SHUTDOWN_SEND) !== 0 && flushed;
      if (
        (this.guestShut === VSOCK_SHUTDOWN_BOTH && flushed) ||
        (guestDone && this.hostEof && this.sendShutdown === 0)
      ) {
        // The guest closed (or both sides finished sending): close the Unix socket and end with RST.
        this.finish();
      } else if (this.hostGone && this.hostEof) {
        // Everything the peer left was delivered: tell the guest it is gone, wait for its RST.
        this.state = 'closing';
        this.sendShutdown |= VSOCK_SHUTDOWN_BOTH;
        this.closeStream();
      }
    } else if (
      this.state === 'closing' &&
      this.guestShut === VSOCK_SHUTDOWN_BOTH &&
      !this.sendRst &&
      this.sendShutdown === 0
    ) {
      this.finish();
    }
  }

  closeStream(): void {
    this.owner.unwatch(this);
    this.stream?.close();
    this.stream = undefined;
  }

  /** Ends the connection: close the Unix socket; the guest gets an RST when it knows the connection. */
  finish(): void {
    this.closeStream();
    this.out = [];
    this.outBytes = 0;
    this.prefix = undefined;
    this.sendRequest = false;
    this.sendResponse = false;
    this.sendCredit = false;
    this.deadline = 0;
    if (this.hostInitiated && !this.requested) {
      this.owner.ended(this, false); // the guest never heard of it
      return;
    }
    this.sendRst = true;
    this.owner.ended(this, true);
  }

  /** A guest-initiated connection whose Unix connect completed: answer the guest's request. */
  connected(): void {
    this.state = 'established';
    this.sendResponse = true;
    this.owner.counters.connections++;
    this.owner.counters.guestConnections++;
  }

  /**
   * A checked guest packet (not an RST) for this connection; `payload` reads its data. 'refuse': a
   * protocol violation, the owner ends the connection and answers RST; 'answered': a host-initiated
   * request was accepted (its deadline is gone).
   */
  guestPacket(h: VsockHeader, payload: () => Uint8Array): GuestPacketResult {
    this.peerBufAlloc = h.bufAlloc;
    this.peerFwdCnt = h.fwdCnt;
    switch (h.op) {
      case VSOCK_OP.REQUEST:
        return 'refuse'; // a second request on a live connection
      case VSOCK_OP.RESPONSE:
        if (this.state !== 'requesting' || !this.requested) return 'refuse';
        this.state = 'established';
        this.deadline = 0;
        this.prefix = Buffer.from(`OK ${this.localPort}\n`, 'latin1');
        this.owner.counters.connections++;
        this.owner.counters.hostConnections++;
        this.flushOut();
        return 'answered';
      case VSOCK_OP.RW:
        // In 'closing' the host peer is gone and the guest was told; data it sent before it knew is dropped.
        if ((this.state !== 'established' && this.state !== 'closing') || this.guestShut & VSOCK_SHUTDOWN_SEND)
          return 'refuse';
        // The guest may not have more in flight than the buffer we advertised.
        if (this.rxCnt + h.len - this.fwdCnt > VSOCK_BUF_ALLOC) return 'refuse';
        this.guestData(payload());
        return 'ok';
      case VSOCK_OP.SHUTDOWN:
        if (this.state === 'connecting' || this.state === 'requesting') return 'refuse';
        this.guestShut |= h.flags;
        this.flushOut();
        return 'ok';
      case VSOCK_OP.CREDIT_REQUEST:
        this.sendCredit = true;
        return 'ok';
      default:
        return 'ok'; // CREDIT_UPDATE: the credit fields were taken above
    }
  }

  /** Guest payload for the Unix peer: write what the socket takes, keep the rest (within credit). */
  guestData(data: Uint8Array): void {
    this.rxCnt += data.length;
    this.owner.counters.txBytes += data.length;
    if (this.stream === undefined || this.hostGone || this.state === 'closing') {
      // The host peer is gone and the guest was told; data still in flight is dropped (and credited).
      this.fwdCnt += data.length;
      return;
    }
    if (data.length > 0) {
      this.out.push(data);
      this.outBytes += data.length;
    }
    this.flushOut();
  }

  /** Writes pending bytes to the Unix peer until it would block. */
  flushOut(): void {
    const s = this.stream;
    if (s === undefined || this.state === 'connecting' || this.state === 'requesting') return;
    try {
      while (this.prefix !== undefined) {
        const n = s.send(this.prefix);
        if (n < 0) return;
        this.prefix = n >= this.prefix.length ? undefined : this.prefix.subarray(n);
      }
      while (this.out.length > 0) {
        const b = this.out[0] as Uint8Array;
        const n = s.send(b);
        if (n < 0) break;
        this.fwdCnt += n;
        this.outBytes -= n;
        if (n >= b.length) this.out.shift();
        else this.out[0] = b.subarray(n);
      }
    } catch {
      // EPIPE or ECONNRESET: the peer is gone with data unsent; as TCP would, reset the connection.
      this.owner.counters.hostErrors++;
      this.finish();
      return;
    }
    // Credit back what the peer took: at once when the guest may be short of it.
    const unadvertised = this.fwdCnt - this.advFwd;
    const guestSeesFree = VSOCK_BUF_ALLOC - (this.rxCnt - this.advFwd);
    if (unadvertised > 0 && (unadvertised >= VSOCK_BUF_ALLOC / 4 || guestSeesFree < VSOCK_MAX_PKT))
      this.sendCredit = true;
  }

  /**
   * The next packet this connection owes the guest, in protocol order (request, response, data,
   * credit, shutdown, RST), with at most `room` payload bytes read from the Unix peer into `buf`;
   * undefined when it had nothing after all. After the RST the owner forgets the connection.
   */
  nextPacket(room: number, buf: Uint8Array): HostPacket | undefined {
    if (this.sendRequest) {
      this.sendRequest = false;
      this.requested = true;
      return this.control(VSOCK_OP.REQUEST);
    }
    if (this.sendResponse) {
      this.sendResponse = false;
      return this.control(VSOCK_OP.RESPONSE);
    }
    if (this.readable && this.canReadHost()) {
      const n = Math.min(room, this.credit(), VSOCK_MAX_PKT);
      const got = n > 0 ? this.readHost(buf.subarray(0, n)) : 0;
      if (got > 0) {
        this.txCnt += got;
        this.owner.counters.rxBytes += got;
        this.sendCredit = false;
        return this.control(VSOCK_OP.RW, got);
      }
    }
    if (this.sendCredit) {
      this.sendCredit = false;
      this.owner.counters.creditUpdates++;
      return this.control(VSOCK_OP.CREDIT_UPDATE);
    }
    if (this.sendShutdown !== 0) {
      const flags = this.sendShutdown;
      this.sendShutdown = 0;
      return this.control(VSOCK_OP.SHUTDOWN, 0, flags);
    }
    if (this.sendRst) return { op: VSOCK_OP.RST, len: 0, flags: 0, bufAlloc: 0, fwdCnt: 0 };
    return undefined;
  }

  /** A packet carrying this connection's credit; the guest now knows fwd_cnt. */
  private control(op: number, len = 0, flags = 0): HostPacket {
    this.advFwd = this.fwdCnt;
    return { op, len, flags, bufAlloc: VSOCK_BUF_ALLOC, fwdCnt: u32(this.fwdCnt) };
  }

  /** Reads from the Unix peer into buf; handles end of stream and errors. */
  private readHost(buf: Uint8Array): number {
    const s = this.stream;
    if (s === undefined) return 0;
    let n: number;
    try {
      n = s.recv(buf);
    } catch {
      this.owner.counters.hostErrors++;
      this.finish();
      return 0;
    }
    if (n < 0) {
      this.readable = false; // watch readability again
      return 0;
    }
    if (n === 0) {
      // End of stream: the peer sends no more (it may still read, unless it is gone).
      this.readable = false;
      this.hostEof = true;
      this.sendShutdown |= VSOCK_SHUTDOWN_SEND | (this.hostGone ? VSOCK_SHUTDOWN_RCV : 0);
      return 0;
    }
    return n;
  }
}
