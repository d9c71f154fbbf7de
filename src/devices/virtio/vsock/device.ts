/**
 * virtio-vsock (virtio 1.2 §5.10) in Firecracker's hybrid form: guest AF_VSOCK stream sockets are
 * carried to AF_UNIX stream sockets on the host (muxer.ts says how).
 *
 * This file is the device: its queues, RX (0, device → driver), TX (1, driver → device) and EVENT (2),
 * its configuration (guest_cid, u64) and its lifecycle. Packets from the guest are decoded here and
 * handed to the muxer, which checks every field (packet.ts) and answers what is wrong with OP_RST;
 * the device goes on. Packets for the guest are whatever the muxer has next, as long as the driver
 * gives RX buffers; without any, the muxer stops reading host sockets.
 *
 * The device talks to the host only through `VsockHost` (the Unix socket backend lives in
 * src/backends/unix-socket.ts); host fds are watched through the I/O thread's Poller.
 */
import {
  bit,
  type DeviceStateRecord,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from '../device.js';
import { drainQueue, popOrArm } from '../drain.js';
import { type DescriptorChain, readFromChain, writeToChain } from '../queue.js';
import { createVsockCounters } from './connection.js';
import type { VsockHost } from './host.js';
import { VsockMuxer } from './muxer.js';
import {
  decodeHeader,
  VSOCK_EVENT_TRANSPORT_RESET,
  VSOCK_HDR_SIZE,
  VSOCK_MAX_GUEST_CID,
  VSOCK_MIN_GUEST_CID,
} from './packet.js';
import { restoreVsockState, saveVsockState } from './state.js';

/** Feature bit: stream sockets (§5.10.3; with no bit offered, stream is implied). */
export const VIRTIO_VSOCK_F_STREAM = 0n;
const QUEUE_SIZE = 256;
const RXQ = 0;
const TXQ = 1;
const EVQ = 2;

/** The device's configuration: config/vsock.ts's VsockConfig (the user's part) and the timeouts. */
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

/**
 * The guest CID is a 64-bit field whose reserved values (0-2, 2^32-1 and above) the driver must never
 * be given: the device's own invariant. What a user may configure is checked before a device is built
 * (validateVsock in config/vsock.ts, with the same bounds).
 */
function checkCid(cid: number): void {
  if (!Number.isInteger(cid) || cid < VSOCK_MIN_GUEST_CID || cid > VSOCK_MAX_GUEST_CID)
    throw new RangeError(`vsock guest CID ${cid} is reserved or out of range`);
}

export class VirtioVsock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.vsock;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly features = bit(VIRTIO_VSOCK_F_STREAM) | bit(VIRTIO_F_RING_EVENT_IDX) | bit(VIRTIO_F_RING_INDIRECT_DESC);
  readonly configSpace: Uint8Array;
  readonly counters = createVsockCounters();
  /** The guest CID as the device uses it (the transport holds the driver-visible copy). */
  private cid: number;
  private readonly config: Required<VsockConfig>;
  private ctx: VirtioContext | undefined;
  private readonly muxer: VsockMuxer;
  /** An RX chain taken from the ring that nothing could be written into yet. */
  private held: DescriptorChain | undefined;
  private pendingResetEvent = false;

  constructor(host: VsockHost, config: VsockConfig) {
    checkCid(config.cid);
    this.config = { connectLineTimeoutMs: 10_000, requestTimeoutMs: 5_000, ...config };
    this.cid = config.cid;
    const cfg = new DataView(new ArrayBuffer(8));
    cfg.setBigUint64(0, BigInt(config.cid), true); // guest_cid
    this.configSpace = new Uint8Array(cfg.buffer);
    this.muxer = new VsockMuxer(host, this.config, this.counters, {
      guard: (fn) => this.guard(fn),
      rxReady: () => this.fillRx(),
      driverReady: () => this.ctx !== undefined,
    });
  }

  get guestCid(): number {
    return this.cid;
  }

  /** Open connections (for tests and metrics). */
  get openConnections(): number {
    return this.muxer.size;
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  attach(poller: Poller): void {
    this.muxer.attach(poller);
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

  saveState(): DeviceStateRecord {
    return saveVsockState();
  }

  restoreState(state: unknown): void {
    restoreVsockState(state);
  }

  close(): void {
    this.ctx = undefined;
    this.held = undefined;
    this.dropAll();
    this.muxer.detach();
  }

  /** After a snapshot restore every host connection is gone: reset the guest's transport. */
  restored(): void {
    this.transportReset();
  }

  /**
   * After a snapshot restore (or a migration): every connection is gone, so tell the driver with
   * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.6); it resets its sockets and re-reads guest_cid.
   * A new CID can be given; the driver reads it from the configuration space.
   */
  transportReset(newCid?: number): void {
    if (newCid !== undefined) {
      checkCid(newCid);
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
      else if (q === RXQ)
        this.muxer.unstallRx(); // the driver added RX buffers: watch the sockets again
      else if (q === EVQ) this.deliverEvents();
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
    this.pendingResetEvent = false;
    this.muxer.dropAll();
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

  private txPacket(ctx: VirtioContext, chain: DescriptorChain): void {
    this.counters.txPackets++;
    if (chain.error !== undefined || chain.readLen < VSOCK_HDR_SIZE) {
      // No header to answer: drop it (the chain goes back to the driver unused).
      this.counters.errors++;
      return;
    }
    const h = decodeHeader(readFromChain(ctx.mem, chain.readable, VSOCK_HDR_SIZE));
    this.muxer.guestPacket(h, this.cid, chain.readLen - VSOCK_HDR_SIZE, (len) =>
      readFromChain(ctx.mem, chain.readable, len, VSOCK_HDR_SIZE),
    );
  }

  // ---- RX: packets to the guest -----------------------------------------------------------------

  /** Fills RX buffers with what the device has for the guest, as long as the driver gives buffers. */
  private fillRx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[RXQ];
    if (ctx === undefined || queue === undefined) return;
    let used = 0;
    while (this.muxer.hasRxWork) {
      const chain = this.held ?? popOrArm(ctx.mem, queue);
      this.held = undefined;
      if (chain === undefined) {
        this.muxer.stallRx();
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

  /** Writes the muxer's next packet into an RX chain (at least a header long); its length, 0 when none was due. */
  private writePacket(ctx: VirtioContext, chain: DescriptorChain): number {
    const p = this.muxer.nextPacket(this.cid, chain.writeLen - VSOCK_HDR_SIZE);
    if (p === undefined) return 0;
    if (p.payload.length > 0) writeToChain(ctx.mem, chain.writable, p.payload, VSOCK_HDR_SIZE);
    return writeToChain(ctx.mem, chain.writable, p.header) + p.payload.length;
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
