/**
 * The host side of virtio-vsock in Firecracker's hybrid form (after its `unix/muxer.rs`): guest
 * AF_VSOCK streams carried to AF_UNIX stream sockets, through the VsockHost backend interface.
 *
 * - host → guest: a host process connects to `udsPath` and writes `CONNECT <port>\n`; the muxer sends
 *   the guest an OP_REQUEST from the host (CID 2) with an ephemeral local port; on OP_RESPONSE it
 *   writes `OK <local port>\n` to the Unix socket and bytes flow both ways. A refusal (OP_RST) or a
 *   guest that does not answer in time closes the Unix socket.
 * - guest → host: a guest connects to CID 2 port P; the muxer connects to `${udsPath}_${P}` and
 *   answers OP_RESPONSE, or OP_RST when nobody listens there.
 *
 * It owns the connections (by local and peer port), the host sockets waiting for their CONNECT line,
 * the RSTs owed for packets that had no connection, the timeouts, and which sockets are watched:
 * while the driver has no RX buffers (or a connection has no credit) their readability is not
 * watched, so nothing is read that cannot be delivered. It knows no queues: the device hands it each
 * checked guest header (guestPacket) and asks it for the next packet for the guest (nextPacket).
 */
import { POLL_ERR, POLL_HUP, POLL_IN, POLL_OUT, type Poller } from '../device.js';
import { type ConnectionOwner, type ConnState, connKey, VsockConnection, type VsockCounters } from './connection.js';
import type { VsockHost, VsockStream, VsockTimer } from './host.js';
import {
  checkAddress,
  checkGuestHeader,
  hostHeader,
  VSOCK_HDR_SIZE,
  VSOCK_MAX_PKT,
  VSOCK_OP,
  type VsockHeader,
} from './packet.js';

/** Connections (host- and guest-initiated together) at most; more are refused with OP_RST. */
export const VSOCK_MAX_CONNECTIONS = 1024;
/** Host sockets accepted on udsPath that have not yet sent their CONNECT line, at most. */
const MAX_PENDING_HOST = 64;
/** RSTs for packets without a connection, queued at most while the driver gives no RX buffers. */
const MAX_QUEUED_RST = 1024;
/** `CONNECT 4294967295\n` is 19 bytes; a line this long without a newline is refused. */
const CONNECT_LINE_MAX = 32;
/** Host-initiated connections get local ports in [2^30, 2^31), round robin (as Firecracker). */
const LOCAL_PORT_FIRST = 0x40000000;
const LOCAL_PORT_SPAN = 0x40000000;

export interface MuxerConfig {
  /** Host-initiated connections come in here; guest connections to port P go to `${udsPath}_${P}`. */
  udsPath: string;
  /** How long a host socket may take to send its CONNECT line. */
  connectLineTimeoutMs: number;
  /** How long the guest may take to answer a host-initiated OP_REQUEST. */
  requestTimeoutMs: number;
}

/** What the muxer needs from the device. */
export interface MuxerHooks {
  /** Runs the work of a poller callback (the device turns a ring-level failure there into NEEDS_RESET). */
  guard(fn: () => void): void;
  /** The muxer may have packets for the guest now: fill RX buffers. */
  rxReady(): void;
  /** Whether a driver is there to take connections (host sockets are refused before). */
  driverReady(): boolean;
}

/** A packet for the guest: its header and payload (both valid until the next call into the muxer). */
export interface GuestBoundPacket {
  header: Uint8Array;
  payload: Uint8Array;
}

/** A host socket accepted on udsPath, waiting for its `CONNECT <port>\n`. */
interface PendingHost {
  stream: VsockStream;
  deadline: number;
  /** The line so far (bytes are consumed as they come, never past the newline). */
  line: string;
}

const NO_CREDIT_RST = { op: VSOCK_OP.RST, len: 0, flags: 0, bufAlloc: 0, fwdCnt: 0 };

export class VsockMuxer implements ConnectionOwner {
  private poller: Poller | undefined;
  private timer: VsockTimer | undefined;
  private timerAt = 0;
  private readonly conns = new Map<string, VsockConnection>();
  /** Connections with something for the guest, in round-robin order. */
  private readonly rxWanted = new Set<VsockConnection>();
  private readonly pendingHost = new Map<number, PendingHost>();
  private readonly localPorts = new Set<number>();
  private nextLocalPort = LOCAL_PORT_FIRST;
  /** RSTs for packets that had no connection: [local port, peer port]. */
  private readonly rstQueue: [number, number][] = [];
  /** The driver had no RX buffers when the device wanted one: sockets' readability is not watched. */
  private rxStalled = false;
  private readonly scratch = new Uint8Array(VSOCK_MAX_PKT);
  private readonly hdr = new Uint8Array(VSOCK_HDR_SIZE);

  constructor(
    private readonly host: VsockHost,
    private readonly config: MuxerConfig,
    readonly counters: VsockCounters,
    private readonly hooks: MuxerHooks,
  ) {}

  /** Open connections. */
  get size(): number {
    return this.conns.size;
  }

  /** Whether anything is owed to the guest (an RST, or a connection's packet). */
  get hasRxWork(): boolean {
    return this.rstQueue.length > 0 || this.rxWanted.size > 0;
  }

  attach(poller: Poller): void {
    this.poller = poller;
    poller.add(this.host.listener.fd, POLL_IN, () => this.hooks.guard(() => this.onAccept()));
    const timer = this.host.createTimer();
    this.timer = timer;
    poller.add(timer.fd, POLL_IN, () =>
      this.hooks.guard(() => {
        timer.ack();
        this.timerAt = 0;
        this.expire();
      }),
    );
  }

  /** Stops watching the listener and closes the timer (after dropAll). */
  detach(): void {
    if (this.poller) {
      this.poller.remove(this.host.listener.fd);
      if (this.timer) this.poller.remove(this.timer.fd);
    }
    this.timer?.close();
    this.timer = undefined;
    this.poller = undefined;
  }

  /** Closes every connection and host socket (the listener stays); forgets queued packets. */
  dropAll(): void {
    for (const c of this.conns.values()) c.closeStream();
    this.conns.clear();
    this.localPorts.clear();
    this.rxWanted.clear();
    for (const [fd, p] of this.pendingHost) {
      this.poller?.remove(fd);
      p.stream.close();
    }
    this.pendingHost.clear();
    this.rstQueue.length = 0;
    this.rxStalled = false;
    this.armTimer();
  }

  // ---- ConnectionOwner ----------------------------------------------------------------------------

  unwatch(c: VsockConnection): void {
    if (c.stream && c.events >= 0) this.poller?.remove(c.stream.fd);
    c.events = -1;
  }

  ended(c: VsockConnection, rst: boolean): void {
    if (rst) this.rxWanted.add(c);
    else this.drop(c, false);
  }

  // ---- the guest side ---------------------------------------------------------------------------

  /**
   * A packet from the guest whose header is `h`; `payloadRoom` bytes follow it in the chain and
   * `payload(len)` reads `len` of them. Every field is checked first: a violation is answered with RST.
   */
  guestPacket(h: VsockHeader, guestCid: number, payloadRoom: number, payload: (len: number) => Uint8Array): void {
    const local = h.dstPort;
    const peer = h.srcPort;
    if (h.op === VSOCK_OP.RST) {
      // Never answer an RST; a valid one ends its connection.
      const c = this.conns.get(connKey(local, peer));
      if (checkAddress(h, guestCid) !== undefined) this.counters.errors++;
      else if (c) this.drop(c, true);
      return;
    }
    if (checkGuestHeader(h, guestCid, payloadRoom) !== undefined) {
      this.refuse(local, peer);
      return;
    }
    const c = this.conns.get(connKey(local, peer));
    if (c === undefined) {
      if (h.op === VSOCK_OP.REQUEST) this.guestConnect(h);
      else {
        // Often a race, not an attack: a packet the guest sent before it saw our RST.
        this.counters.unknownConnection++;
        this.resetConn(local, peer);
      }
      return;
    }
    const r = c.guestPacket(h, () => payload(h.len));
    if (r === 'refuse') {
      this.refuse(local, peer);
      return;
    }
    if (r === 'answered') this.armTimer();
    if (this.conns.get(c.key) === c) this.settle(c);
  }

  /** The next packet for the guest, with at most `room` payload bytes; undefined when none is due. */
  nextPacket(guestCid: number, room: number): GuestBoundPacket | undefined {
    const rst = this.rstQueue.shift();
    if (rst !== undefined) {
      this.counters.rst++;
      return {
        header: hostHeader(guestCid, rst[0], rst[1], NO_CREDIT_RST, this.hdr),
        payload: this.scratch.subarray(0, 0),
      };
    }
    for (const c of [...this.rxWanted]) {
      this.rxWanted.delete(c);
      const p = c.nextPacket(room, this.scratch);
      if (p?.op === VSOCK_OP.RST) {
        this.drop(c, false);
        this.counters.rst++;
      }
      if (this.conns.get(c.key) === c) this.settle(c); // back at the end of the round robin when it has more
      if (p !== undefined)
        return {
          header: hostHeader(guestCid, c.localPort, c.peerPort, p, this.hdr),
          payload: this.scratch.subarray(0, p.op === VSOCK_OP.RW ? p.len : 0),
        };
    }
    return undefined;
  }

  /** The driver gave no RX buffer when one was wanted: stop reading sockets until it does. */
  stallRx(): void {
    if (this.rxStalled) return;
    this.rxStalled = true;
    this.counters.rxStalls++;
    for (const c of this.conns.values()) this.updateInterest(c);
  }

  /** The driver added RX buffers: watch the sockets again. */
  unstallRx(): void {
    if (!this.rxStalled) return;
    this.rxStalled = false;
    for (const c of this.conns.values()) this.settle(c);
  }

  /** A protocol violation on (local, peer): end that connection, if any, and answer RST. */
  private refuse(local: number, peer: number): void {
    this.counters.errors++;
    this.resetConn(local, peer);
  }

  /** Ends the connection (local, peer), if any; the guest gets an RST either way. */
  private resetConn(local: number, peer: number): void {
    const c = this.conns.get(connKey(local, peer));
    if (c) c.finish();
    // A connection the guest never heard of is dropped without its RST: answer this packet anyway.
    if (!c?.sendRst) this.queueRst(local, peer);
  }

  /** The guest asks for host port P: connect to `${udsPath}_P`. */
  private guestConnect(h: VsockHeader): void {
    const local = h.dstPort;
    const peer = h.srcPort;
    if (this.conns.size >= VSOCK_MAX_CONNECTIONS) {
      this.counters.refused++;
      this.queueRst(local, peer);
      return;
    }
    let r: { stream: VsockStream; inProgress: boolean };
    try {
      r = this.host.connect(`${this.config.udsPath}_${local}`);
    } catch {
      this.counters.refused++;
      this.queueRst(local, peer);
      return;
    }
    const c = this.newConn(local, peer, false, r.inProgress ? 'connecting' : 'established', r.stream);
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    if (!r.inProgress) c.connected();
    this.settle(c);
  }

  private newConn(
    local: number,
    peer: number,
    hostInitiated: boolean,
    state: ConnState,
    stream: VsockStream,
  ): VsockConnection {
    const c = new VsockConnection(local, peer, hostInitiated, state, stream, this);
    this.conns.set(c.key, c);
    if (hostInitiated) this.localPorts.add(local);
    if (this.poller) {
      this.poller.add(stream.fd, 0, (ev) => this.hooks.guard(() => this.onStream(c, ev)));
      c.events = 0;
    }
    return c;
  }

  /**
   * After any change to a connection: move it on when both sides are done, then bring its poll
   * interest and its place in the RX round robin up to date.
   */
  private settle(c: VsockConnection): void {
    c.advance();
    if (this.conns.get(c.key) !== c) return;
    if (c.wantsRx()) this.rxWanted.add(c);
    else this.rxWanted.delete(c);
    this.updateInterest(c);
  }

  private updateInterest(c: VsockConnection): void {
    if (c.stream === undefined || c.events < 0 || this.poller === undefined) return;
    const ev = c.interest(this.rxStalled);
    if (ev !== c.events) {
      this.poller.modify(c.stream.fd, ev);
      c.events = ev;
    }
  }

  /** Forgets a connection (its RST, if any, was sent or is not needed). */
  private drop(c: VsockConnection, guestRst: boolean): void {
    c.closeStream();
    if (this.conns.get(c.key) === c) this.conns.delete(c.key);
    if (c.hostInitiated) this.localPorts.delete(c.localPort);
    this.rxWanted.delete(c);
    if (guestRst && c.state !== 'established' && c.state !== 'closing') this.counters.refused++;
  }

  private queueRst(local: number, peer: number): void {
    if (this.rstQueue.length >= MAX_QUEUED_RST) {
      this.counters.rstDropped++;
      return;
    }
    this.rstQueue.push([local, peer]);
  }

  // ---- the host side ----------------------------------------------------------------------------

  private onAccept(): void {
    for (;;) {
      let s: VsockStream | undefined;
      try {
        s = this.host.listener.accept();
      } catch {
        this.counters.hostErrors++;
        return;
      }
      if (s === undefined) return;
      if (this.pendingHost.size >= MAX_PENDING_HOST || this.poller === undefined) {
        this.counters.refused++;
        s.close();
        continue;
      }
      const p: PendingHost = { stream: s, deadline: performance.now() + this.config.connectLineTimeoutMs, line: '' };
      this.pendingHost.set(s.fd, p);
      this.poller.add(s.fd, POLL_IN, (ev) => this.hooks.guard(() => this.onConnectLine(p, ev)));
      this.armTimer();
    }
  }

  private dropPending(s: VsockStream): void {
    this.pendingHost.delete(s.fd);
    this.poller?.remove(s.fd);
    s.close();
    this.armTimer();
  }

  /**
   * A host socket on udsPath is readable: collect `CONNECT <port>\n` (Firecracker's syntax: the word is
   * case-insensitive, at most 32 bytes in all) without consuming anything past the newline, which
   * belongs to the connection's data.
   */
  private onConnectLine(p: PendingHost, events: number): void {
    const s = p.stream;
    if (this.pendingHost.get(s.fd) !== p) return;
    const refuse = (hostError = false): void => {
      if (hostError) this.counters.hostErrors++;
      else this.counters.refused++;
      this.dropPending(s);
    };
    let n: number;
    try {
      n = s.recv(this.scratch.subarray(0, CONNECT_LINE_MAX - p.line.length), true);
    } catch {
      refuse(true);
      return;
    }
    if (n < 0) {
      if (events & (POLL_HUP | POLL_ERR)) refuse();
      return;
    }
    if (n === 0) {
      refuse(); // end of stream before a whole line
      return;
    }
    const nl = this.scratch.subarray(0, n).indexOf(0x0a);
    const take = nl < 0 ? n : nl + 1;
    p.line += Buffer.from(this.scratch.subarray(0, take)).toString('latin1');
    try {
      s.recv(this.scratch.subarray(0, take)); // consume what was peeked, up to the newline
    } catch {
      refuse(true);
      return;
    }
    if (nl < 0) {
      if (p.line.length >= CONNECT_LINE_MAX) refuse();
      return;
    }
    const m = /^\s*connect\s+([0-9]{1,10})\s*$/i.exec(p.line);
    const port = m ? Number(m[1]) : Number.NaN;
    if (!(port <= 0xffffffff) || !this.hooks.driverReady() || this.conns.size >= VSOCK_MAX_CONNECTIONS) {
      refuse(); // malformed, no driver yet, or too many connections: the host sees the socket closed
      return;
    }
    this.pendingHost.delete(s.fd);
    this.poller?.remove(s.fd);
    const local = this.allocLocalPort(port);
    const c = this.newConn(local, port, true, 'requesting', s);
    c.sendRequest = true;
    c.deadline = performance.now() + this.config.requestTimeoutMs;
    this.armTimer();
    this.settle(c);
    this.hooks.rxReady();
  }

  private allocLocalPort(peer: number): number {
    for (;;) {
      const p = this.nextLocalPort;
      this.nextLocalPort = LOCAL_PORT_FIRST + ((p - LOCAL_PORT_FIRST + 1) % LOCAL_PORT_SPAN);
      if (!this.localPorts.has(p) && !this.conns.has(connKey(p, peer))) return p;
    }
  }

  /** Readiness of a connection's Unix socket. */
  private onStream(c: VsockConnection, events: number): void {
    if (this.conns.get(c.key) !== c || c.stream === undefined) return;
    if (c.state === 'connecting') {
      if (!(events & (POLL_OUT | POLL_HUP | POLL_ERR))) return;
      let err: number;
      try {
        err = c.stream.connectResult();
      } catch {
        err = -1;
      }
      if (err === 0 && !(events & (POLL_HUP | POLL_ERR))) c.connected();
      else {
        this.counters.refused++;
        c.finish();
      }
      this.settle(c);
      this.hooks.rxReady();
      return;
    }
    if (events & POLL_ERR) {
      this.counters.hostErrors++;
      c.finish();
      this.hooks.rxReady();
      return;
    }
    if (events & POLL_HUP) {
      // The peer closed both ways. Unsent guest data cannot arrive: reset, as TCP would. Otherwise
      // drain what it left without watching the fd (HUP would be reported on every wait).
      if (c.state === 'requesting' || c.outBytes > 0 || c.prefix !== undefined) {
        c.finish();
        this.hooks.rxReady();
        return;
      }
      c.hostGone = true;
      this.unwatch(c);
    }
    if (events & (POLL_IN | POLL_HUP)) c.readable = true;
    if (events & POLL_OUT) c.flushOut();
    if (this.conns.get(c.key) === c) this.settle(c);
    this.hooks.rxReady();
  }

  // ---- timeouts ---------------------------------------------------------------------------------

  private armTimer(): void {
    const t = this.timer;
    if (t === undefined) return;
    let next = Number.POSITIVE_INFINITY;
    for (const p of this.pendingHost.values()) next = Math.min(next, p.deadline);
    for (const c of this.conns.values()) if (c.deadline > 0) next = Math.min(next, c.deadline);
    if (next === Number.POSITIVE_INFINITY) {
      if (this.timerAt !== 0) t.set(0);
      this.timerAt = 0;
      return;
    }
    if (next === this.timerAt) return;
    this.timerAt = next;
    t.set(Math.max(1, next - performance.now()));
  }

  private expire(): void {
    const now = performance.now();
    for (const p of [...this.pendingHost.values()])
      if (p.deadline <= now) {
        this.counters.refused++;
        this.dropPending(p.stream);
      }
    for (const c of [...this.conns.values()])
      if (c.deadline > 0 && c.deadline <= now) {
        // The guest did not answer a host-initiated request in time.
        this.counters.refused++;
        c.finish();
      }
    this.armTimer();
    this.hooks.rxReady();
  }
}
