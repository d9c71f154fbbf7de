/**
 * virtio-vsock (virtio 1.2 §5.10) in Firecracker's hybrid form: guest AF_VSOCK stream sockets are
 * carried to AF_UNIX stream sockets on the host.
 *
 * - host → guest: a host process connects to `udsPath` and writes `CONNECT <port>\n`; the device sends
 *   the guest an OP_REQUEST from the host (CID 2) with an ephemeral local port; on OP_RESPONSE it
 *   writes `OK <local port>\n` to the Unix socket and bytes flow both ways. A refusal (OP_RST) or a
 *   guest that does not answer in time closes the Unix socket.
 * - guest → host: a guest connects to CID 2 port P; the device connects to `${udsPath}_${P}` and
 *   answers OP_RESPONSE, or OP_RST when nobody listens there.
 *
 * Queues: RX (0, device → driver), TX (1, driver → device), EVENT (2). Configuration: guest_cid (u64).
 *
 * Flow control is credit based in both directions (§5.10.6.3): the device never sends a connection more
 * payload than the guest advertised (buf_alloc − (tx_cnt − fwd_cnt)), and it advertises a fixed buffer of
 * its own per connection, crediting bytes back (fwd_cnt) only once the Unix peer took them. A slow host
 * peer thus stops the guest's sender through credit; the device never buffers more than its advertised
 * buffer. While the driver has no RX buffers (or a connection has no credit) the device stops watching
 * those sockets' readability, so nothing is read that cannot be delivered.
 *
 * The guest is the attacker: every header field is checked. A packet with a wrong src_cid or dst_cid, a
 * type other than STREAM, an unknown op, a length above the chain or above 64 KiB, payload on a control
 * op, unknown shutdown flags, more data than its credit allows, or one for a connection that does not
 * exist is answered with OP_RST (and ends the connection it names, if any); the device goes on. The
 * guest's buf_alloc and fwd_cnt are taken as given but only ever shrink its own credit (a fwd_cnt ahead
 * of what was sent reads as none); flags on ops other than SHUTDOWN are ignored (streams define none).
 *
 * The device talks to the host only through `VsockHost` (the Unix socket backend lives in
 * src/backends/unix-socket.ts); host fds are watched through the I/O thread's Poller.
 */
import {
  bit,
  POLL_ERR,
  POLL_HUP,
  POLL_IN,
  POLL_OUT,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';
import { drainQueue, popOrArm } from './drain.js';
import { type DescriptorChain, readFromChain, writeToChain } from './queue.js';

export const VSOCK_HOST_CID = 2;
/** CIDs a guest may not have: 0 (hypervisor), 1 (local), 2 (host), and VMADDR_CID_ANY. */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xfffffffe;
export const VSOCK_HDR_SIZE = 44;
export const VSOCK_TYPE_STREAM = 1;
export const VSOCK_OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;
export const VSOCK_SHUTDOWN_RCV = 1;
export const VSOCK_SHUTDOWN_SEND = 2;
const SHUTDOWN_BOTH = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
/** Feature bit: stream sockets (§5.10.3; with no bit offered, stream is implied). */
export const VIRTIO_VSOCK_F_STREAM = 0n;
export const VSOCK_EVENT_TRANSPORT_RESET = 0;
/** The largest payload one packet may carry either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const VSOCK_MAX_PKT = 64 * 1024;
/** The buffer the device advertises per connection (buf_alloc): guest bytes it holds for a slow host peer. */
export const VSOCK_BUF_ALLOC = 256 * 1024;
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
const QUEUE_SIZE = 256;
const RXQ = 0;
const TXQ = 1;
const EVQ = 2;

// ---- the host side, injected --------------------------------------------------------------------

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

/** The user's configuration of the device (Firecracker's `guest_cid` and `uds_path`). */
export interface VsockConfig {
  /** The guest's context id, 3 to 2^32 − 2. */
  cid: number;
  /** Host-initiated connections come in here; guest connections to port P go to `${udsPath}_${P}`. */
  udsPath: string;
  /** How long a host socket may take to send its CONNECT line (default 10 s). */
  connectLineTimeoutMs?: number;
  /** How long the guest may take to answer a host-initiated OP_REQUEST (default 5 s). */
  requestTimeoutMs?: number;
}

/** Why a configuration is unusable, or undefined. Paths: the Unix socket path limit is 107 bytes. */
export function checkVsockConfig(c: VsockConfig): string | undefined {
  if (!Number.isInteger(c.cid) || c.cid < VSOCK_MIN_GUEST_CID || c.cid > VSOCK_MAX_GUEST_CID)
    return `vsock guest CID ${c.cid} is out of range: give ${VSOCK_MIN_GUEST_CID} to ${VSOCK_MAX_GUEST_CID} (0-2 and 2^32-1 are reserved)`;
  const len = Buffer.byteLength(c.udsPath, 'utf8');
  if (len === 0 || c.udsPath.includes('\0')) return 'vsock uds path is empty or contains a NUL byte';
  // `${udsPath}_${port}` must fit too (up to 11 more bytes) for guest-initiated connections.
  if (len + 11 > 107)
    return `vsock uds path ${c.udsPath} is ${len} bytes: give at most 96 (Unix socket paths hold 107, and _PORT is appended)`;
  return undefined;
}

// ---- packets ------------------------------------------------------------------------------------

export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

export function decodeHeader(b: Uint8Array): VsockHeader {
  const v = new DataView(b.buffer, b.byteOffset, VSOCK_HDR_SIZE);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

export function encodeHeader(h: VsockHeader, out = new Uint8Array(VSOCK_HDR_SIZE)): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset, VSOCK_HDR_SIZE);
  v.setBigUint64(0, h.srcCid, true);
  v.setBigUint64(8, h.dstCid, true);
  v.setUint32(16, h.srcPort >>> 0, true);
  v.setUint32(20, h.dstPort >>> 0, true);
  v.setUint32(24, h.len >>> 0, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags >>> 0, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
  return out;
}

// ---- connections --------------------------------------------------------------------------------

/**
 * connecting: guest-initiated, the Unix connect is in progress.
 * requesting: host-initiated, OP_REQUEST queued or sent, waiting for the guest's OP_RESPONSE.
 * established: data flows (each direction may be shut down on its own).
 * closing: the host peer is gone and the guest was told (SHUTDOWN both); waiting for its RST or SHUTDOWN.
 */
type ConnState = 'connecting' | 'requesting' | 'established' | 'closing';

interface Conn {
  readonly key: string;
  /** The host side's vsock port (P for guest-initiated, the ephemeral port for host-initiated). */
  readonly localPort: number;
  /** The guest side's port. */
  readonly peerPort: number;
  readonly hostInitiated: boolean;
  state: ConnState;
  stream: VsockStream | undefined;
  /** The events registered with the poller; -1 when the fd is not registered. */
  events: number;
  deadline: number;

  // guest → host
  /** Payload bytes taken from the guest; `fwdCnt` of them written to the Unix peer. */
  rxCnt: number;
  fwdCnt: number;
  /** fwd_cnt as last told to the guest. */
  advFwd: number;
  /** Guest bytes not yet written to the Unix peer (at most VSOCK_BUF_ALLOC: the guest's credit). */
  out: Uint8Array[];
  outBytes: number;
  /** Bytes for the Unix peer ahead of guest data (the `OK <port>\n` line); not credit. */
  prefix: Uint8Array | undefined;
  /** The guest's SHUTDOWN flags so far. */
  guestShut: number;
  /** shutdown(SHUT_WR) done on the Unix socket. */
  hostWriteShut: boolean;

  // host → guest
  /** Payload bytes sent to the guest (tx_cnt), and its last advertised buffer and fwd_cnt. */
  txCnt: number;
  peerBufAlloc: number;
  peerFwdCnt: number;
  /** The Unix socket may have bytes to read (set by readability, cleared when recv finds none). */
  readable: boolean;
  /** recv() returned end of stream. */
  hostEof: boolean;
  /** The Unix peer closed both ways (HUP): the fd is no longer watched, only drained. */
  hostGone: boolean;

  // control packets owed to the guest, sent in this order (after any data, before the RST)
  sendRequest: boolean;
  sendResponse: boolean;
  sendCredit: boolean;
  sendShutdown: number;
  /** Finished: the RST goes out last, then the connection is forgotten. */
  sendRst: boolean;
  /** An OP_REQUEST went out (a later RST must then reach the guest). */
  requested: boolean;
}

/** A host socket accepted on udsPath, waiting for its `CONNECT <port>\n`. */
interface PendingHost {
  stream: VsockStream;
  deadline: number;
  /** The line so far (bytes are consumed as they come, never past the newline). */
  line: string;
}

const keyOf = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;
const u32 = (n: number): number => n >>> 0;

export class VirtioVsock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.vsock;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly features = bit(VIRTIO_VSOCK_F_STREAM) | bit(VIRTIO_F_RING_EVENT_IDX) | bit(VIRTIO_F_RING_INDIRECT_DESC);
  readonly configSpace: Uint8Array;
  readonly counters = {
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
  /** The guest CID as the device uses it (the transport holds the driver-visible copy). */
  private cid: number;
  private readonly config: Required<VsockConfig>;
  private ctx: VirtioContext | undefined;
  private poller: Poller | undefined;
  private timer: VsockTimer | undefined;
  private timerAt = 0;
  private readonly conns = new Map<string, Conn>();
  /** Connections with something for the guest, in round-robin order. */
  private readonly rxWanted = new Set<Conn>();
  private readonly pendingHost = new Map<number, PendingHost>();
  private readonly localPorts = new Set<number>();
  private nextLocalPort = LOCAL_PORT_FIRST;
  /** RSTs for packets that had no connection: [local port, peer port]. */
  private readonly rstQueue: [number, number][] = [];
  /** An RX chain taken from the ring that nothing could be written into yet. */
  private held: DescriptorChain | undefined;
  /** The driver had no RX buffers when the device wanted one: sockets' readability is not watched. */
  private rxStalled = false;
  private pendingResetEvent = false;
  private readonly scratch = new Uint8Array(VSOCK_MAX_PKT);
  private readonly hdr = new Uint8Array(VSOCK_HDR_SIZE);

  constructor(
    private readonly host: VsockHost,
    config: VsockConfig,
  ) {
    const why = checkVsockConfig(config);
    if (why) throw new RangeError(why);
    this.config = { connectLineTimeoutMs: 10_000, requestTimeoutMs: 5_000, ...config };
    this.cid = config.cid;
    const cfg = new DataView(new ArrayBuffer(8));
    cfg.setBigUint64(0, BigInt(config.cid), true); // guest_cid
    this.configSpace = new Uint8Array(cfg.buffer);
  }

  get guestCid(): number {
    return this.cid;
  }

  /** Open connections (for tests and metrics). */
  get openConnections(): number {
    return this.conns.size;
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  attach(poller: Poller): void {
    this.poller = poller;
    poller.add(this.host.listener.fd, POLL_IN, () => this.guard(() => this.onAccept()));
    const timer = this.host.createTimer();
    this.timer = timer;
    poller.add(timer.fd, POLL_IN, () =>
      this.guard(() => {
        timer.ack();
        this.timerAt = 0;
        this.expire();
      }),
    );
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    ctx.config.setBigUint64(0, BigInt(this.cid), true);
    this.process(TXQ);
    this.process(EVQ);
    this.process(RXQ);
  }

  /** The rx chain kept for later (the most recent rx pop): a snapshot gives it back to the ring. */
  heldChains(): number[] {
    const out = [0, 0, 0];
    out[RXQ] = this.held ? 1 : 0;
    return out;
  }

  reset(): void {
    this.ctx = undefined;
    this.held = undefined; // its queue is gone with the reset
    this.dropAll();
  }

  close(): void {
    this.ctx = undefined;
    this.held = undefined;
    this.dropAll();
    if (this.poller) {
      this.poller.remove(this.host.listener.fd);
      if (this.timer) this.poller.remove(this.timer.fd);
    }
    this.timer?.close();
    this.timer = undefined;
    this.poller = undefined;
  }

  /**
   * After a snapshot restore (or a migration): every connection is gone, so tell the driver with
   * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.6); it resets its sockets and re-reads guest_cid.
   * A new CID can be given; the driver reads it from the configuration space.
   */
  /** After a snapshot restore every host connection is gone: reset the guest's transport. */
  restored(): void {
    this.transportReset();
  }

  transportReset(newCid?: number): void {
    if (newCid !== undefined) {
      const why = checkVsockConfig({ ...this.config, cid: newCid });
      if (why) throw new RangeError(why);
      this.cid = newCid;
      this.ctx?.config.setBigUint64(0, BigInt(newCid), true);
    }
    this.counters.transportResets++;
    this.dropAll();
    this.pendingResetEvent = true;
    this.guard(() => this.deliverEvents());
  }

  process(q: number): void {
    this.guard(() => {
      if (q === TXQ) this.processTx();
      else if (q === RXQ) {
        // The driver added RX buffers: watch the sockets again.
        if (this.rxStalled) {
          this.rxStalled = false;
          for (const c of this.conns.values()) this.settle(c);
        }
      } else if (q === EVQ) this.deliverEvents();
      this.fillRx();
    });
  }

  /**
   * Runs device work; on a ring-level failure (a QueueError from a misbehaving driver) the device stops
   * touching guest memory and drops its connections before the error marks it DEVICE_NEEDS_RESET.
   */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.ctx = undefined;
      this.held = undefined;
      this.dropAll();
      throw e;
    }
  }

  /** Closes every connection and host socket (the listener stays); forgets queued packets. */
  private dropAll(): void {
    for (const c of this.conns.values()) this.closeStream(c);
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
    this.pendingResetEvent = false;
    this.armTimer();
  }

  // ---- TX: packets from the guest ---------------------------------------------------------------

  private processTx(): void {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    drainQueue(ctx, TXQ, (chain) => {
      this.txPacket(ctx, chain);
      return 0;
    });
  }

  /** A protocol violation on (local, peer): end that connection, if any, and answer RST. */
  private refuse(local: number, peer: number): void {
    this.counters.errors++;
    this.resetConn(local, peer);
  }

  /** Ends the connection (local, peer), if any; the guest gets an RST either way. */
  private resetConn(local: number, peer: number): void {
    const c = this.conns.get(keyOf(local, peer));
    if (c) this.finish(c);
    // A connection the guest never heard of is dropped without its RST: answer this packet anyway.
    if (!c?.sendRst) this.queueRst(local, peer);
  }

  private txPacket(ctx: VirtioContext, chain: DescriptorChain): void {
    this.counters.txPackets++;
    if (chain.error !== undefined || chain.readLen < VSOCK_HDR_SIZE) {
      // No header to answer: drop it (the chain goes back to the driver unused).
      this.counters.errors++;
      return;
    }
    const h = decodeHeader(readFromChain(ctx.mem, chain.readable, VSOCK_HDR_SIZE));
    const local = h.dstPort;
    const peer = h.srcPort;
    if (h.op === VSOCK_OP.RST) {
      // Never answer an RST; a valid one ends its connection.
      const c = this.conns.get(keyOf(local, peer));
      if (h.srcCid !== BigInt(this.cid) || h.dstCid !== BigInt(VSOCK_HOST_CID)) this.counters.errors++;
      else if (c) this.drop(c, true);
      return;
    }
    if (
      h.srcCid !== BigInt(this.cid) ||
      h.dstCid !== BigInt(VSOCK_HOST_CID) ||
      h.type !== VSOCK_TYPE_STREAM ||
      h.op === VSOCK_OP.INVALID ||
      h.op > VSOCK_OP.CREDIT_REQUEST ||
      h.len > VSOCK_MAX_PKT ||
      h.len > chain.readLen - VSOCK_HDR_SIZE ||
      (h.op !== VSOCK_OP.RW && h.len !== 0) ||
      (h.op === VSOCK_OP.SHUTDOWN && (h.flags & ~SHUTDOWN_BOTH) !== 0)
    ) {
      this.refuse(local, peer);
      return;
    }
    const c = this.conns.get(keyOf(local, peer));
    if (c === undefined) {
      if (h.op === VSOCK_OP.REQUEST) this.guestConnect(h);
      else {
        // Often a race, not an attack: a packet the guest sent before it saw our RST.
        this.counters.unknownConnection++;
        this.resetConn(local, peer);
      }
      return;
    }
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    switch (h.op) {
      case VSOCK_OP.REQUEST:
        this.refuse(local, peer); // a second request on a live connection
        return;
      case VSOCK_OP.RESPONSE:
        if (c.state !== 'requesting' || !c.requested) {
          this.refuse(local, peer);
          return;
        }
        c.state = 'established';
        c.deadline = 0;
        c.prefix = Buffer.from(`OK ${c.localPort}\n`, 'latin1');
        this.counters.connections++;
        this.counters.hostConnections++;
        this.flushOut(c);
        this.armTimer();
        break;
      case VSOCK_OP.RW:
        // In 'closing' the host peer is gone and the guest was told; data it sent before it knew is dropped.
        if ((c.state !== 'established' && c.state !== 'closing') || c.guestShut & VSOCK_SHUTDOWN_SEND) {
          this.refuse(local, peer);
          return;
        }
        // The guest may not have more in flight than the buffer we advertised.
        if (c.rxCnt + h.len - c.fwdCnt > VSOCK_BUF_ALLOC) {
          this.refuse(local, peer);
          return;
        }
        this.guestData(c, readFromChain(ctx.mem, chain.readable, h.len, VSOCK_HDR_SIZE));
        break;
      case VSOCK_OP.SHUTDOWN:
        if (c.state === 'connecting' || c.state === 'requesting') {
          this.refuse(local, peer);
          return;
        }
        c.guestShut |= h.flags;
        this.flushOut(c);
        break;
      case VSOCK_OP.CREDIT_REQUEST:
        c.sendCredit = true;
        break;
      case VSOCK_OP.CREDIT_UPDATE:
        break; // the credit fields were taken above
    }
    if (this.conns.get(c.key) === c) this.settle(c);
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
    if (!r.inProgress) this.connected(c);
    this.settle(c);
  }

  private connected(c: Conn): void {
    c.state = 'established';
    c.sendResponse = true;
    this.counters.connections++;
    this.counters.guestConnections++;
  }

  private newConn(local: number, peer: number, hostInitiated: boolean, state: ConnState, stream: VsockStream): Conn {
    const c: Conn = {
      key: keyOf(local, peer),
      localPort: local,
      peerPort: peer,
      hostInitiated,
      state,
      stream,
      events: -1,
      deadline: 0,
      rxCnt: 0,
      fwdCnt: 0,
      advFwd: 0,
      out: [],
      outBytes: 0,
      prefix: undefined,
      guestShut: 0,
      hostWriteShut: false,
      txCnt: 0,
      peerBufAlloc: 0,
      peerFwdCnt: 0,
      readable: false,
      hostEof: false,
      hostGone: false,
      sendRequest: false,
      sendResponse: false,
      sendCredit: false,
      sendShutdown: 0,
      sendRst: false,
      requested: false,
    };
    this.conns.set(c.key, c);
    if (hostInitiated) this.localPorts.add(local);
    if (this.poller) {
      this.poller.add(stream.fd, 0, (ev) => this.guard(() => this.onStream(c, ev)));
      c.events = 0;
    }
    return c;
  }

  /** Guest payload for the Unix peer: write what the socket takes, keep the rest (within credit). */
  private guestData(c: Conn, data: Uint8Array): void {
    c.rxCnt += data.length;
    this.counters.txBytes += data.length;
    if (c.stream === undefined || c.hostGone || c.state === 'closing') {
      // The host peer is gone and the guest was told; data still in flight is dropped (and credited).
      c.fwdCnt += data.length;
      return;
    }
    if (data.length > 0) {
      c.out.push(data);
      c.outBytes += data.length;
    }
    this.flushOut(c);
  }

  /** Writes pending bytes to the Unix peer until it would block. */
  private flushOut(c: Conn): void {
    const s = c.stream;
    if (s === undefined || c.state === 'connecting' || c.state === 'requesting') return;
    try {
      while (c.prefix !== undefined) {
        const n = s.send(c.prefix);
        if (n < 0) return;
        c.prefix = n >= c.prefix.length ? undefined : c.prefix.subarray(n);
      }
      while (c.out.length > 0) {
        const b = c.out[0] as Uint8Array;
        const n = s.send(b);
        if (n < 0) break;
        c.fwdCnt += n;
        c.outBytes -= n;
        if (n >= b.length) c.out.shift();
        else c.out[0] = b.subarray(n);
      }
    } catch {
      // EPIPE or ECONNRESET: the peer is gone with data unsent; as TCP would, reset the connection.
      this.counters.hostErrors++;
      this.finish(c);
      return;
    }
    // Credit back what the peer took: at once when the guest may be short of it.
    const unadvertised = c.fwdCnt - c.advFwd;
    const guestSeesFree = VSOCK_BUF_ALLOC - (c.rxCnt - c.advFwd);
    if (unadvertised > 0 && (unadvertised >= VSOCK_BUF_ALLOC / 4 || guestSeesFree < VSOCK_MAX_PKT)) c.sendCredit = true;
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
      this.poller.add(s.fd, POLL_IN, (ev) => this.guard(() => this.onConnectLine(p, ev)));
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
    if (!(port <= 0xffffffff) || this.ctx === undefined || this.conns.size >= VSOCK_MAX_CONNECTIONS) {
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
    this.fillRx();
  }

  private allocLocalPort(peer: number): number {
    for (;;) {
      const p = this.nextLocalPort;
      this.nextLocalPort = LOCAL_PORT_FIRST + ((p - LOCAL_PORT_FIRST + 1) % LOCAL_PORT_SPAN);
      if (!this.localPorts.has(p) && !this.conns.has(keyOf(p, peer))) return p;
    }
  }

  /** Readiness of a connection's Unix socket. */
  private onStream(c: Conn, events: number): void {
    if (this.conns.get(c.key) !== c || c.stream === undefined) return;
    if (c.state === 'connecting') {
      if (!(events & (POLL_OUT | POLL_HUP | POLL_ERR))) return;
      let err: number;
      try {
        err = c.stream.connectResult();
      } catch {
        err = -1;
      }
      if (err === 0 && !(events & (POLL_HUP | POLL_ERR))) this.connected(c);
      else {
        this.counters.refused++;
        this.finish(c);
      }
      this.settle(c);
      this.fillRx();
      return;
    }
    if (events & POLL_ERR) {
      this.counters.hostErrors++;
      this.finish(c);
      this.fillRx();
      return;
    }
    if (events & POLL_HUP) {
      // The peer closed both ways. Unsent guest data cannot arrive: reset, as TCP would. Otherwise
      // drain what it left without watching the fd (HUP would be reported on every wait).
      if (c.state === 'requesting' || c.outBytes > 0 || c.prefix !== undefined) {
        this.finish(c);
        this.fillRx();
        return;
      }
      c.hostGone = true;
      this.unwatch(c);
    }
    if (events & (POLL_IN | POLL_HUP)) c.readable = true;
    if (events & POLL_OUT) this.flushOut(c);
    if (this.conns.get(c.key) === c) this.settle(c);
    this.fillRx();
  }

  private unwatch(c: Conn): void {
    if (c.stream && c.events >= 0) this.poller?.remove(c.stream.fd);
    c.events = -1;
  }

  private closeStream(c: Conn): void {
    this.unwatch(c);
    c.stream?.close();
    c.stream = undefined;
  }

  // ---- connection state -------------------------------------------------------------------------

  /** Credit the guest gives this connection now. */
  private credit(c: Conn): number {
    const inFlight = u32(u32(c.txCnt) - c.peerFwdCnt);
    return inFlight >= c.peerBufAlloc ? 0 : c.peerBufAlloc - inFlight;
  }

  private canReadHost(c: Conn): boolean {
    return c.state === 'established' && c.stream !== undefined && !c.hostEof && !(c.guestShut & VSOCK_SHUTDOWN_RCV);
  }

  private wantsRx(c: Conn): boolean {
    return (
      c.sendRequest ||
      c.sendResponse ||
      c.sendCredit ||
      c.sendShutdown !== 0 ||
      c.sendRst ||
      (c.readable && this.canReadHost(c) && this.credit(c) > 0)
    );
  }

  /**
   * After any change to a connection: move it on when both sides are done, then bring its poll
   * interest and its place in the RX round robin up to date.
   */
  private settle(c: Conn): void {
    if (!c.sendRst && c.state === 'established') {
      const flushed = c.outBytes === 0 && c.prefix === undefined;
      if (c.guestShut & VSOCK_SHUTDOWN_SEND && flushed && c.stream && !c.hostWriteShut && !c.hostGone) {
        try {
          c.stream.shutdownWrite();
          c.hostWriteShut = true;
        } catch {
          this.counters.hostErrors++;
        }
      }
      const guestDone = (c.guestShut & VSOCK_SHUTDOWN_SEND) !== 0 && flushed;
      if ((c.guestShut === SHUTDOWN_BOTH && flushed) || (guestDone && c.hostEof && c.sendShutdown === 0)) {
        // The guest closed (or both sides finished sending): close the Unix socket and end with RST.
        this.finish(c);
      } else if (c.hostGone && c.hostEof) {
        // Everything the peer left was delivered: tell the guest it is gone, wait for its RST.
        c.state = 'closing';
        c.sendShutdown |= SHUTDOWN_BOTH;
        this.closeStream(c);
      }
    } else if (c.state === 'closing' && c.guestShut === SHUTDOWN_BOTH && !c.sendRst && c.sendShutdown === 0) {
      this.finish(c);
    }
    if (this.conns.get(c.key) !== c) return;
    if (this.wantsRx(c)) this.rxWanted.add(c);
    else this.rxWanted.delete(c);
    this.updateInterest(c);
  }

  private updateInterest(c: Conn): void {
    if (c.stream === undefined || c.events < 0 || this.poller === undefined) return;
    let ev = 0;
    if (c.state === 'connecting') ev = POLL_OUT;
    else if (c.state === 'established') {
      if (this.canReadHost(c) && !c.readable && !this.rxStalled && this.credit(c) > 0) ev |= POLL_IN;
      if (c.outBytes > 0 || c.prefix !== undefined) ev |= POLL_OUT;
    }
    if (ev !== c.events) {
      this.poller.modify(c.stream.fd, ev);
      c.events = ev;
    }
  }

  /** Ends a connection: close the Unix socket; the guest gets an RST when it knows the connection. */
  private finish(c: Conn): void {
    this.closeStream(c);
    c.out = [];
    c.outBytes = 0;
    c.prefix = undefined;
    c.sendRequest = false;
    c.sendResponse = false;
    c.sendCredit = false;
    c.deadline = 0;
    if (c.hostInitiated && !c.requested) {
      this.drop(c, false); // the guest never heard of it
      return;
    }
    c.sendRst = true;
    this.rxWanted.add(c);
  }

  /** Forgets a connection (its RST, if any, was sent or is not needed). */
  private drop(c: Conn, guestRst: boolean): void {
    this.closeStream(c);
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
        this.finish(c);
      }
    this.armTimer();
    this.fillRx();
  }

  // ---- RX: packets to the guest -----------------------------------------------------------------

  private header(c: { localPort: number; peerPort: number }, op: number, len = 0, flags = 0, conn?: Conn): Uint8Array {
    if (conn) conn.advFwd = conn.fwdCnt;
    return encodeHeader(
      {
        srcCid: BigInt(VSOCK_HOST_CID),
        dstCid: BigInt(this.cid),
        srcPort: c.localPort,
        dstPort: c.peerPort,
        len,
        type: VSOCK_TYPE_STREAM,
        op,
        flags,
        bufAlloc: conn ? VSOCK_BUF_ALLOC : 0,
        fwdCnt: conn ? u32(conn.fwdCnt) : 0,
      },
      this.hdr,
    );
  }

  /** Fills RX buffers with what the device has for the guest, as long as the driver gives buffers. */
  private fillRx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[RXQ];
    if (ctx === undefined || queue === undefined) return;
    let used = 0;
    while (this.rstQueue.length > 0 || this.rxWanted.size > 0) {
      const chain = this.held ?? popOrArm(ctx.mem, queue);
      this.held = undefined;
      if (chain === undefined) {
        if (!this.rxStalled) {
          this.rxStalled = true;
          this.counters.rxStalls++;
          for (const c of this.conns.values()) this.updateInterest(c);
        }
        break;
      }
      if (chain.error !== undefined || chain.writeLen < VSOCK_HDR_SIZE) {
        this.counters.errors++;
        queue.pushUsed(ctx.mem, chain.head, 0);
        used++;
        continue;
      }
      const n = this.writePacket(ctx, chain);
      if (n === 0) {
        if (chain.writeLen > VSOCK_HDR_SIZE) {
          this.held = chain; // nothing could be produced after all: keep the buffer for later
          break;
        }
        // A header-only buffer cannot carry the data that is due: give it back empty.
        this.counters.errors++;
        queue.pushUsed(ctx.mem, chain.head, 0);
        used++;
        continue;
      }
      queue.pushUsed(ctx.mem, chain.head, n);
      this.counters.rxPackets++;
      used++;
    }
    if (used > 0) ctx.signalUsed(RXQ);
  }

  /** Writes one packet into an RX chain (at least a header long); returns its length, 0 when none was due. */
  private writePacket(ctx: VirtioContext, chain: DescriptorChain): number {
    const rst = this.rstQueue.shift();
    if (rst !== undefined) {
      this.counters.rst++;
      return writeToChain(ctx.mem, chain.writable, this.header({ localPort: rst[0], peerPort: rst[1] }, VSOCK_OP.RST));
    }
    for (const c of [...this.rxWanted]) {
      this.rxWanted.delete(c);
      const n = this.connPacket(ctx, chain, c);
      if (this.conns.get(c.key) === c) this.settle(c); // back at the end of the round robin when it has more
      if (n > 0) return n;
    }
    return 0;
  }

  /** The next packet one connection owes the guest, in protocol order; 0 when it had nothing after all. */
  private connPacket(ctx: VirtioContext, chain: DescriptorChain, c: Conn): number {
    const put = (h: Uint8Array): number => writeToChain(ctx.mem, chain.writable, h);
    if (c.sendRequest) {
      c.sendRequest = false;
      c.requested = true;
      return put(this.header(c, VSOCK_OP.REQUEST, 0, 0, c));
    }
    if (c.sendResponse) {
      c.sendResponse = false;
      return put(this.header(c, VSOCK_OP.RESPONSE, 0, 0, c));
    }
    if (c.readable && this.canReadHost(c)) {
      const room = Math.min(chain.writeLen - VSOCK_HDR_SIZE, this.credit(c), VSOCK_MAX_PKT);
      if (room > 0) {
        const n = this.readHost(c, room);
        if (n > 0) {
          writeToChain(ctx.mem, chain.writable, this.scratch.subarray(0, n), VSOCK_HDR_SIZE);
          c.txCnt += n;
          this.counters.rxBytes += n;
          c.sendCredit = false;
          return put(this.header(c, VSOCK_OP.RW, n, 0, c)) + n;
        }
      }
    }
    if (c.sendCredit) {
      c.sendCredit = false;
      this.counters.creditUpdates++;
      return put(this.header(c, VSOCK_OP.CREDIT_UPDATE, 0, 0, c));
    }
    if (c.sendShutdown !== 0) {
      const flags = c.sendShutdown;
      c.sendShutdown = 0;
      return put(this.header(c, VSOCK_OP.SHUTDOWN, 0, flags, c));
    }
    if (c.sendRst) {
      this.drop(c, false);
      this.counters.rst++;
      return put(this.header(c, VSOCK_OP.RST));
    }
    return 0;
  }

  /** Reads up to `room` bytes of the Unix peer into scratch; handles end of stream and errors. */
  private readHost(c: Conn, room: number): number {
    const s = c.stream;
    if (s === undefined) return 0;
    let n: number;
    try {
      n = s.recv(this.scratch.subarray(0, room));
    } catch {
      this.counters.hostErrors++;
      this.finish(c);
      return 0;
    }
    if (n < 0) {
      c.readable = false; // watch readability again
      return 0;
    }
    if (n === 0) {
      // End of stream: the peer sends no more (it may still read, unless it is gone).
      c.readable = false;
      c.hostEof = true;
      c.sendShutdown |= VSOCK_SHUTDOWN_SEND | (c.hostGone ? VSOCK_SHUTDOWN_RCV : 0);
      return 0;
    }
    return n;
  }

  // ---- EVENT queue ------------------------------------------------------------------------------

  private deliverEvents(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[EVQ];
    if (!this.pendingResetEvent || ctx === undefined || queue === undefined) return;
    for (;;) {
      const chain = popOrArm(ctx.mem, queue);
      if (chain === undefined) return;
      if (chain.error !== undefined || chain.writeLen < 4) {
        this.counters.errors++;
        queue.pushUsed(ctx.mem, chain.head, 0);
        ctx.signalUsed(EVQ);
        continue;
      }
      const ev = new Uint8Array(4);
      new DataView(ev.buffer).setUint32(0, VSOCK_EVENT_TRANSPORT_RESET, true);
      queue.pushUsed(ctx.mem, chain.head, writeToChain(ctx.mem, chain.writable, ev));
      ctx.signalUsed(EVQ);
      this.pendingResetEvent = false;
      return;
    }
  }
}
