/**
 * virtio-net (virtio 1.2 §5.1): one receive and one transmit queue over a host backend (a TAP).
 * Every frame carries a 12-byte virtio_net_hdr_v1 in front, both ways, and the TAP takes and gives the
 * same header, so frames go straight between the backend and guest memory with no copy and no parsing.
 *
 * TX: each chain's readable buffers are one frame (header first), written as they are. RX: frames are
 * read straight into the chains the guest posted; with MRG_RXBUF a frame spreads over as many chains as
 * it needs and num_buffers says how many. The device reads the backend only while it holds room for the
 * largest frame the guest may get: when the guest runs out of buffers it stops watching the backend (the
 * host queues the frames) and resumes on the guest's next rx notification. A backend failure drops the
 * frame and is counted; a malformed chain is completed with length 0; a frame larger than the guest's
 * buffers is dropped. Only a ring-level error (the queue itself is broken) escapes, to the transport.
 */
import { ConfigError } from '../../common/errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import {
  bit,
  type DeviceStateRecord,
  type DeviceTimer,
  hasFeature,
  POLL_IN,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';
import { BLOCKED, drainQueue } from './drain.js';
import { restoreNetState, saveNetState } from './net-state.js';
import { type DescriptorChain, type Queue, type Segment, writeToChain } from './queue.js';
import { monotonicMs, RateLimiter, type RateLimiterConfig } from './rate-limiter.js';

export const VIRTIO_NET_F = {
  CSUM: 0n,
  GUEST_CSUM: 1n,
  MTU: 3n,
  MAC: 5n,
  GUEST_TSO4: 7n,
  GUEST_TSO6: 8n,
  GUEST_ECN: 9n,
  GUEST_UFO: 10n,
  HOST_TSO4: 11n,
  HOST_TSO6: 12n,
  HOST_ECN: 13n,
  HOST_UFO: 14n,
  MRG_RXBUF: 15n,
  STATUS: 16n,
} as const;

export const VIRTIO_NET_S_LINK_UP = 1;
/** struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VIRTIO_NET_HDR_LEN = 12;
const NUM_BUFFERS_OFFSET = 10;
/** The largest frame with its header: a 64 KiB GSO frame plus Ethernet and VLAN headers (Firecracker's). */
export const NET_MAX_FRAME = VIRTIO_NET_HDR_LEN + 65550;
/** Ethernet header plus one VLAN tag, added to the MTU for the largest frame without GSO. */
const ETH_OVERHEAD = 18;
/** Offloads the host may use in frames towards the guest (the values of TUN_F_*). */
export const NET_OFFLOAD = { CSUM: 0x01, TSO4: 0x02, TSO6: 0x04, ECN: 0x08, UFO: 0x10 } as const;
export const NET_RX = 0;
export const NET_TX = 1;
const QUEUE_SIZE = 256;
/** Buffers per frame given to the backend: readv/writev take 1024 (UIO_MAXIOV), one kept for the backend. */
export const NET_IOV_MAX = 1023;
/** Frames read per wake-up before the I/O thread serves others (the backend's fd wakes us again). */
const RX_BUDGET = 256;
/** Consecutive read failures after which the backend is left alone until the guest sends or refills. */
const RX_ERROR_RUN = 16;

/** The host side of a network interface. Its owner closes it. */
export interface NetBackend {
  /** Polls readable (POLL_IN) when a frame is waiting. */
  readonly fd: number;
  /** NET_OFFLOAD bits the host can use towards the guest. */
  readonly offloads: number;
  /**
   * Reads one frame, header first, into the first `count` of `bufs` (at most NET_IOV_MAX). Returns its
   * length; a length larger than those buffers hold means it did not fit (the rest is lost). Undefined
   * when no frame is waiting. Throws on failure.
   */
  read(bufs: readonly Uint8Array[], count: number): number | undefined;
  /**
   * Writes one frame, header first, from the first `count` of `bufs`; returns the bytes taken. Throws
   * on failure. A backend that gathers frames (with flush) may answer 0 when it has no room now: the
   * device keeps the frame in the guest's ring and offers it again once the backend's fd woke it
   * (back-pressure on the guest instead of a lost frame).
   */
  write(bufs: readonly Uint8Array[], count: number): number;
  /** Which NET_OFFLOAD bits the host may use in frames towards the guest. Throws on failure. */
  setOffloads(flags: number): void;
  /**
   * NET_OFFLOAD bits the host takes in frames from the guest (partial checksums, TSO/UFO); absent:
   * all of them (a TAP). A backend that takes none gets whole, checksummed, MTU-sized frames.
   */
  readonly hostOffloads?: number;
  /** For a host side that comes and goes (passt): whether frames can flow now. Absent: always. */
  linkUp?(): boolean;
  /** The VMM woke the device: look at the host side again (a restarted passt to connect to). */
  refresh?(): void;
  /** The device is done with the backend on this thread: release what the backend opened itself. */
  close?(): void;
  /**
   * For a backend that gathers frames (passt's stream): every frame of this transmit batch has been
   * written; send them now. Throws on failure.
   */
  flush?(): void;
  /** For a backend that gathers frames: whether some wait for room (its fd wakes the device when there is). */
  sending?(): boolean;
  /**
   * For a backend whose fd also reports room to send: whether the device wants frames now. While it
   * does not (the guest gave no buffers) the fd must not wake for input, and the device keeps watching
   * it for room. Absent: the device stops watching the fd instead.
   */
  wantFrames?(on: boolean): void;
  /** The backend's fd woke the device: the backend's own work first (sending what waited for room). */
  service?(): void;
}

export interface NetConfig {
  mac: Uint8Array;
  /** Offered to the guest (VIRTIO_NET_F_MTU) when given. */
  mtu?: number | undefined;
  /** Firecracker's rate limiters: frames beyond them wait (in the guest's ring, or in the backend), none is dropped. */
  rxRateLimiter?: RateLimiterConfig | undefined;
  txRateLimiter?: RateLimiterConfig | undefined;
}

/** 6 bytes → "aa:bb:cc:dd:ee:ff" (config/net.ts parses the text form). */
export const formatMac = (mac: Uint8Array): string => Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');

/** The offloads to give the backend for what the guest negotiated (each needs GUEST_CSUM, ECN needs TSO). */
export function offloadsFor(features: bigint, available: number): number {
  const has = (f: bigint): boolean => hasFeature(features, f);
  if (!has(VIRTIO_NET_F.GUEST_CSUM)) return 0;
  let o: number = NET_OFFLOAD.CSUM;
  if (has(VIRTIO_NET_F.GUEST_TSO4)) o |= NET_OFFLOAD.TSO4;
  if (has(VIRTIO_NET_F.GUEST_TSO6)) o |= NET_OFFLOAD.TSO6;
  if (has(VIRTIO_NET_F.GUEST_ECN) && o & (NET_OFFLOAD.TSO4 | NET_OFFLOAD.TSO6)) o |= NET_OFFLOAD.ECN;
  if (has(VIRTIO_NET_F.GUEST_UFO)) o |= NET_OFFLOAD.UFO;
  return o & available;
}

export class VirtioNet implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.net;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;
  readonly configSpace: Uint8Array;
  readonly counters = {
    rxPackets: 0,
    rxBytes: 0,
    txPackets: 0,
    txBytes: 0,
    rxDropped: 0,
    txDropped: 0,
    tapErrors: 0,
    malformed: 0,
    /** Times receiving stopped because the guest had posted too few buffers. */
    rxNoBuffers: 0,
    /** Times sending stopped because the backend had no room (the frame kept, not dropped). */
    txBackpressure: 0,
    /** Times the rate limiters held a frame back (it waited, it was not dropped). */
    txRateLimited: 0,
    rxRateLimited: 0,
    /** Milliseconds a held frame waited for room, in all and the longest wait (whole ms). */
    txHeldMs: 0,
    txHeldMaxMs: 0,
    /** Times the backend's fd woke the device while a frame was held (room to look for). */
    txHeldWakes: 0,
  };
  /** When the frame now held was held (performance.now()). */
  private txHeldSince = 0;
  private ctx: VirtioContext | undefined;
  private poller: Poller | undefined;
  private watching = false;
  /** Set when a ring-level error escaped: nothing more is done until reset. */
  private failed = false;
  private mrg = false;
  /** Bytes of buffers (header included) that must be held before a frame is read. */
  private rxNeed = 0;
  private readonly mtu: number;
  /** rx chains taken from the ring and not yet used, in ring order. */
  private held: DescriptorChain[] = [];
  /** Views of the held chains' writable buffers, one per segment, all chains in a row (made once, when a chain is taken). */
  private heldViews: Uint8Array[] = [];
  /** Views of the tx chain being sent (reused: only the first chain.readable.length are its). */
  private readonly txViews: Uint8Array[] = [];
  private heldBytes = 0;
  private heldSegs = 0;
  private errorRun = 0;
  /** The link status the driver was last told (VIRTIO_NET_S_LINK_UP). */
  private linkUp: boolean;
  /** Receiving is stopped for want of buffers. */
  private starved = false;
  /** Receiving waits for the guest (no buffers, or a run of errors): the backend's input is not watched. */
  private rxParked = false;
  /** A tx chain the backend had no room for: offered again when its fd wakes the device (the latest pop). */
  private txHeld: DescriptorChain | undefined;
  private rxLimiter: RateLimiter | undefined;
  private txLimiter: RateLimiter | undefined;
  /** Fires when a rate limiter's tokens are there again: tx and rx are looked at again. */
  private limitTimer: DeviceTimer | undefined;
  /** Receiving waits for the rx limiter (parked until limitTimer fires). */
  private rxLimited = false;
  /** The last frame send() held back was held by the tx limiter (not by a full backend). */
  private heldByLimiter = false;
  private readonly onReadable = (events: number): void => this.backendReady(events);

  constructor(
    private readonly backend: NetBackend,
    config: NetConfig,
  ) {
    if (config.mac.length !== 6 || (config.mac[0] as number) & 1)
      throw new ConfigError(`MAC address ${formatMac(config.mac)} is not a unicast address of 6 bytes`);
    if (config.mtu !== undefined && (!Number.isInteger(config.mtu) || config.mtu < 68 || config.mtu > 65535))
      throw new ConfigError(`MTU ${config.mtu} is out of range: give 68 to 65535`);
    this.mtu = config.mtu ?? 1500;
    const F = VIRTIO_NET_F;
    const o = backend.offloads;
    const h = backend.hostOffloads ?? NET_OFFLOAD.CSUM | NET_OFFLOAD.TSO4 | NET_OFFLOAD.TSO6 | NET_OFFLOAD.ECN;
    let f =
      bit(F.MAC) | bit(F.STATUS) | bit(F.MRG_RXBUF) | bit(VIRTIO_F_RING_EVENT_IDX) | bit(VIRTIO_F_RING_INDIRECT_DESC);
    if (h & NET_OFFLOAD.CSUM) {
      f |= bit(F.CSUM);
      if (h & NET_OFFLOAD.TSO4) f |= bit(F.HOST_TSO4);
      if (h & NET_OFFLOAD.TSO6) f |= bit(F.HOST_TSO6);
      if (h & NET_OFFLOAD.ECN && h & (NET_OFFLOAD.TSO4 | NET_OFFLOAD.TSO6)) f |= bit(F.HOST_ECN);
      if (o & NET_OFFLOAD.UFO && (backend.hostOffloads === undefined || h & NET_OFFLOAD.UFO)) f |= bit(F.HOST_UFO);
    }
    if (o & NET_OFFLOAD.CSUM) {
      f |= bit(F.GUEST_CSUM);
      if (o & NET_OFFLOAD.TSO4) f |= bit(F.GUEST_TSO4);
      if (o & NET_OFFLOAD.TSO6) f |= bit(F.GUEST_TSO6);
      if (o & NET_OFFLOAD.ECN && o & (NET_OFFLOAD.TSO4 | NET_OFFLOAD.TSO6)) f |= bit(F.GUEST_ECN);
      if (o & NET_OFFLOAD.UFO) f |= bit(F.GUEST_UFO);
    }
    if (config.mtu !== undefined) f |= bit(F.MTU);
    this.features = f;
    this.setRateLimiters(config.rxRateLimiter, config.txRateLimiter);
    const cfg = new DataView(new ArrayBuffer(12));
    config.mac.forEach((b, i) => {
      cfg.setUint8(i, b);
    });
    this.linkUp = backend.linkUp?.() ?? true;
    cfg.setUint16(6, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true); // status
    cfg.setUint16(8, 1, true); // max_virtqueue_pairs
    cfg.setUint16(10, this.mtu, true); // mtu
    this.configSpace = new Uint8Array(cfg.buffer);
  }

  attach(poller: Poller): void {
    this.poller = poller;
    this.limitTimer = poller.timer?.(() => this.limitsElapsed());
    this.backend.refresh?.();
  }

  /**
   * Replaces the rate limiters (Firecracker's PATCH /network-interfaces rx_rate_limiter and
   * tx_rate_limiter; undefined or size 0: none), their buckets full; frames they held go again.
   */
  setRateLimiters(rx: RateLimiterConfig | undefined, tx: RateLimiterConfig | undefined): void {
    const make = (c: RateLimiterConfig | undefined): RateLimiter | undefined => {
      const l = c === undefined ? undefined : new RateLimiter(c, monotonicMs());
      return l?.limits ? l : undefined;
    };
    this.rxLimiter = make(rx);
    this.txLimiter = make(tx);
    this.limitsElapsed();
  }

  private limitsElapsed(): void {
    this.guarded(() => {
      if (this.txHeld !== undefined) this.tx();
      if (this.rxLimited) {
        this.rxLimited = false;
        this.rx();
      }
    });
  }

  activate(ctx: VirtioContext): void {
    this.dropHeld();
    this.ctx = ctx;
    this.failed = false;
    this.errorRun = 0;
    this.starved = false;
    this.rxLimited = false;
    if (this.rxParked) {
      this.rxParked = false;
      this.backend.wantFrames?.(true);
    }
    const f = ctx.features;
    this.mrg = hasFeature(f, VIRTIO_NET_F.MRG_RXBUF);
    const gso = [VIRTIO_NET_F.GUEST_TSO4, VIRTIO_NET_F.GUEST_TSO6, VIRTIO_NET_F.GUEST_UFO].some((b) =>
      hasFeature(f, b),
    );
    this.rxNeed = gso ? NET_MAX_FRAME : VIRTIO_NET_HDR_LEN + ETH_OVERHEAD + this.mtu;
    this.setOffloads(offloadsFor(f, this.backend.offloads));
    this.backend.refresh?.();
    this.linkUp = this.backend.linkUp?.() ?? true;
    // The driver may already have read the status: Linux reads it as soon as it wrote DRIVER_OK, which
    // reaches this thread later. A link that came up (or went) meanwhile gets a configuration interrupt,
    // else that driver keeps the stale status (its carrier off for good, as no later change comes).
    const status = this.linkUp ? VIRTIO_NET_S_LINK_UP : 0;
    if (ctx.config.getUint16(6, true) !== status) {
      ctx.config.setUint16(6, status, true);
      ctx.signalConfig();
    }
    this.process(NET_TX);
    this.process(NET_RX);
  }

  /** Rx chains taken and not yet used (the most recent pops): a snapshot gives them back to the ring. */
  heldChains(): number[] {
    return [this.held.length, this.txHeld === undefined ? 0 : 1];
  }

  reset(): void {
    this.unwatch();
    this.ctx = undefined;
    this.rxLimited = false;
    this.limitTimer?.set(0);
    this.dropHeld();
    this.setOffloads(0);
  }

  saveState(): DeviceStateRecord {
    return saveNetState();
  }

  restoreState(state: unknown): void {
    restoreNetState(state);
  }

  close(): void {
    this.unwatch();
    this.limitTimer?.close();
    this.limitTimer = undefined;
    this.backend.close?.();
  }

  /** The VMM woke the I/O thread: the backend may have come back (or gone). */
  hostWake(): void {
    this.backend.refresh?.();
    this.syncLink();
    // A frame held for room on a connection that went (or came back): offered again, since the
    // guest, its notifications off, will not kick for it.
    if (this.txHeld !== undefined) this.guarded(() => this.tx());
  }

  /**
   * Tells the driver when the backend's link went down or came back (status field and a
   * configuration interrupt, VIRTIO_NET_F_STATUS); a link back up is read at once.
   */
  private syncLink(): void {
    const up = this.backend.linkUp?.() ?? true;
    if (up === this.linkUp) return;
    this.linkUp = up;
    const ctx = this.ctx;
    if (ctx === undefined) return;
    ctx.config.setUint16(6, up ? VIRTIO_NET_S_LINK_UP : 0, true);
    ctx.signalConfig();
    if (up) this.guarded(() => this.rx());
  }

  process(q: number): void {
    if (q === NET_TX) this.guarded(() => this.tx());
    else if (q === NET_RX) this.guarded(() => this.rx());
  }

  private setOffloads(flags: number): void {
    try {
      this.backend.setOffloads(flags);
    } catch {
      // The host then checksums and segments frames itself: slower, still correct.
      this.counters.tapErrors++;
    }
  }

  /** Runs fn; a throw (a broken ring) stops the device, backend watch included, and goes to the transport. */
  private guarded(fn: () => void): void {
    if (this.failed) return;
    try {
      fn();
    } catch (e) {
      this.failed = true;
      this.unwatch();
      throw e;
    }
  }

  private watch(): void {
    if (this.watching || this.poller === undefined) return;
    this.poller.add(this.backend.fd, POLL_IN, this.onReadable);
    this.watching = true;
  }

  private unwatch(): void {
    if (!this.watching || this.poller === undefined) return;
    this.poller.remove(this.backend.fd);
    this.watching = false;
  }

  private backendReady(events: number): void {
    if (!(events & POLL_IN)) {
      // Error or hang-up without data (the interface went away): stop until the guest acts again.
      this.counters.tapErrors++;
      this.unwatch();
      return;
    }
    this.guarded(() => {
      this.backend.service?.();
      if (this.txHeld !== undefined) {
        this.counters.txHeldWakes++;
        this.tx();
      }
      if (!this.rxParked) this.rx();
      else this.syncLink();
    });
  }

  /** Receiving goes on: the backend's input wakes the device. */
  private armRx(): void {
    if (this.rxParked) {
      this.rxParked = false;
      this.backend.wantFrames?.(true);
    }
    this.watch();
  }

  /** Receiving waits for the guest; a backend that reports room to send stays watched for that. */
  private parkRx(): void {
    this.rxParked = true;
    if (this.backend.wantFrames) {
      this.backend.wantFrames(false);
      this.watch();
    } else this.unwatch();
  }

  private dropHeld(): void {
    this.txHeld = undefined;
    this.held = [];
    this.heldViews = [];
    this.heldBytes = 0;
    this.heldSegs = 0;
  }

  private tx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[NET_TX];
    if (ctx === undefined || queue === undefined) return;
    const mem = ctx.mem;
    // A frame held for room goes first; while it still finds none, the rest of the ring waits too, its
    // notifications off (the backend's fd brings the device back).
    const held = this.txHeld;
    let heldSent = false;
    if (held !== undefined) {
      this.txHeld = undefined;
      if (this.send(mem, held)) {
        queue.pushUsed(mem, held.head, 0);
        heldSent = true;
        const waited = Math.round(performance.now() - this.txHeldSince);
        this.counters.txHeldMs += waited;
        if (waited > this.counters.txHeldMaxMs) this.counters.txHeldMaxMs = waited;
      } else this.txHeld = held;
    }
    // The drain's interrupt covers the held chain's completion too; without one, it gets its own.
    if (this.txHeld === undefined && drainQueue(ctx, NET_TX, (chain) => this.sendOrHold(mem, chain)) === 0 && heldSent)
      ctx.signalUsed(NET_TX);
    if (this.backend.flush) {
      try {
        this.backend.flush();
      } catch {
        this.counters.tapErrors++;
      }
      this.syncLink();
    }
    if (this.txHeld !== undefined) this.watch(); // the backend's fd reports room
    // The guest is alive: a receive path paused on errors gets another chance.
    if (this.errorRun >= RX_ERROR_RUN) {
      this.errorRun = 0;
      this.rx();
    }
  }

  /** A drain's serve: the chain sent (or dropped), or held for room. */
  private sendOrHold(mem: GuestMemory, chain: DescriptorChain): number | typeof BLOCKED {
    if (this.send(mem, chain)) return 0;
    this.txHeld = chain;
    this.txHeldSince = performance.now();
    if (!this.heldByLimiter) this.counters.txBackpressure++;
    return BLOCKED;
  }

  /**
   * Writes one TX chain to the backend; failures are counted (the frame dropped), never thrown. False
   * when the backend had no room for it: the chain is the caller's to keep and offer again.
   */
  private send(mem: GuestMemory, c: DescriptorChain): boolean {
    if (
      c.error !== undefined ||
      c.writable.length > 0 ||
      c.readLen < VIRTIO_NET_HDR_LEN ||
      c.readable.length > NET_IOV_MAX
    ) {
      this.counters.malformed++;
      return true;
    }
    if (c.readLen > NET_MAX_FRAME) {
      this.counters.txDropped++;
      return true;
    }
    // The tx limiter: a frame beyond it is held in the ring until its tokens are there.
    const tl = this.txLimiter;
    if (tl !== undefined) {
      const now = monotonicMs();
      const bytes = c.readLen - VIRTIO_NET_HDR_LEN;
      this.heldByLimiter = false;
      if (!tl.take(bytes, now)) {
        this.heldByLimiter = true;
        this.counters.txRateLimited++;
        this.limitTimer?.set(Math.max(1, tl.waitMs(bytes, now)));
        return false;
      }
    }
    try {
      // The queue checked every segment to lie in guest memory: one view each, no copy (read-only:
      // the guest's frame is not dirtied).
      const views = this.txViews;
      const segs = c.readable;
      for (let i = 0; i < segs.length; i++) {
        const g = segs[i] as Segment;
        views[i] = mem.readView(g.addr, g.len);
      }
      const n = this.backend.write(views, segs.length);
      if (n === 0 && this.backend.flush !== undefined) return false;
      if (n !== c.readLen) throw new Error(`short write: ${n} of ${c.readLen} bytes`);
    } catch {
      this.counters.txDropped++;
      this.counters.tapErrors++;
      this.syncLink();
      return true;
    }
    this.counters.txPackets++;
    this.counters.txBytes += c.readLen - VIRTIO_NET_HDR_LEN;
    return true;
  }

  private rx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[NET_RX];
    if (ctx === undefined || queue === undefined) return;
    const mem = ctx.mem;
    let used = 0;
    let frames = 0;
    for (;;) {
      used += this.fill(mem, queue);
      if (!this.ready(queue)) {
        if (queue.enableNotification(mem)) continue; // buffers arrived meanwhile
        if (!this.starved) this.counters.rxNoBuffers++;
        this.starved = true;
        this.parkRx(); // the guest's next rx notification brings us back
        break;
      }
      this.starved = false;
      if (frames >= RX_BUDGET || this.errorRun >= RX_ERROR_RUN) {
        if (this.errorRun >= RX_ERROR_RUN) this.parkRx();
        else this.armRx();
        break;
      }
      // The rx limiter: frames wait in the backend while its buckets are empty (or in debt).
      const rl = this.rxLimiter;
      if (rl !== undefined) {
        const wait = rl.waitMs(1, monotonicMs());
        if (wait > 0) {
          this.counters.rxRateLimited++;
          this.rxLimited = true;
          this.parkRx();
          this.limitTimer?.set(wait);
          break;
        }
      }
      const r = this.receive(mem, queue);
      if (r < 0) {
        this.armRx(); // nothing waiting: the backend's fd wakes us
        this.syncLink(); // or the backend lost its host side
        break;
      }
      // Each frame goes to the guest at once, so that it works on it while the next one is read;
      // event-idx spares the interrupt while the guest's driver is polling the ring anyway.
      if (r > 0) ctx.signalUsed(NET_RX);
      frames++;
    }
    if (used > 0) ctx.signalUsed(NET_RX);
  }

  /** Takes rx chains until room for the largest frame is held or the ring is empty; returns the malformed ones completed. */
  private fill(mem: GuestMemory, queue: Queue): number {
    let bad = 0;
    while (this.mrg ? this.heldBytes < NET_MAX_FRAME && this.heldSegs < NET_IOV_MAX : this.held.length === 0) {
      const c = queue.pop(mem);
      if (c === undefined) break;
      if (
        c.error !== undefined ||
        c.readable.length > 0 ||
        c.writeLen < VIRTIO_NET_HDR_LEN ||
        c.writable.length > NET_IOV_MAX
      ) {
        this.counters.malformed++;
        queue.pushUsed(mem, c.head, 0);
        bad++;
        continue;
      }
      this.held.push(c);
      for (const g of c.writable) this.heldViews.push(mem.slice(g.addr, g.len));
      this.heldBytes += c.writeLen;
      this.heldSegs += c.writable.length;
    }
    return bad;
  }

  /** Whether a frame may be read now: enough room held, or all the guest can give. */
  private ready(queue: Queue): boolean {
    if (this.held.length === 0) return false;
    if (!this.mrg) return true;
    return (
      this.heldBytes >= this.rxNeed ||
      this.heldSegs >= NET_IOV_MAX ||
      this.held.length >= queue.size ||
      this.heldSegs >= queue.size
    );
  }

  /** Reads one frame into the held chains; returns the chains completed, or -1 when none was waiting. */
  private receive(mem: GuestMemory, queue: Queue): number {
    // The backend gets the views of as many held chains as the largest frame needs (one without
    // MRG_RXBUF), at most NET_IOV_MAX of them: the views were made when the chains were taken.
    let cap = 0;
    let count = 0;
    const chains = this.mrg ? this.held.length : 1;
    for (let i = 0; i < chains && cap < NET_MAX_FRAME; i++) {
      const vc = (this.held[i] as DescriptorChain).writable.length;
      if (count + vc > NET_IOV_MAX) break;
      count += vc;
      cap += (this.held[i] as DescriptorChain).writeLen;
    }
    let n: number | undefined;
    try {
      n = this.backend.read(this.heldViews, count);
    } catch {
      this.counters.rxDropped++;
      this.counters.tapErrors++;
      this.errorRun++;
      return 0;
    }
    if (n === undefined) return -1;
    this.errorRun = 0;
    if (!Number.isInteger(n) || n < VIRTIO_NET_HDR_LEN || n > cap) {
      // Larger than the buffers (truncated) or a runt: dropped; the buffers serve the next frame.
      this.counters.rxDropped++;
      return 0;
    }
    let k = 0;
    let views = 0;
    let left = n;
    for (; left > 0; k++) {
      const c = this.held[k] as DescriptorChain;
      const len = Math.min(c.writeLen, left);
      // Its views were made when the chain was taken; a snapshot since then cleared their pages.
      for (const g of c.writable) mem.markWritten(g.addr, g.len);
      queue.pushUsedDeferred(mem, c.head, len);
      left -= len;
      views += c.writable.length;
      this.heldBytes -= c.writeLen;
      this.heldSegs -= c.writable.length;
    }
    // The backend skips num_buffers; it must be right before the driver can see the chains.
    const first = this.heldViews[0] as Uint8Array;
    if (first.length >= VIRTIO_NET_HDR_LEN) {
      first[NUM_BUFFERS_OFFSET] = k & 0xff;
      first[NUM_BUFFERS_OFFSET + 1] = k >> 8;
    } else
      writeToChain(
        mem,
        (this.held[0] as DescriptorChain).writable,
        Uint8Array.of(k & 0xff, k >> 8),
        NUM_BUFFERS_OFFSET,
      );
    queue.publishUsed(mem);
    this.held.splice(0, k);
    this.heldViews.splice(0, views);
    this.counters.rxPackets++;
    this.counters.rxBytes += n - VIRTIO_NET_HDR_LEN;
    this.rxLimiter?.charge(n - VIRTIO_NET_HDR_LEN, monotonicMs());
    return k;
  }
}
