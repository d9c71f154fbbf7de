/**
 * virtio-balloon (virtio 1.2 §5.5): the host sets a target; the guest inflates (gives pages back,
 * which the host then frees) or deflates (takes them again); with the stats queue the guest reports
 * its memory statistics when asked. The host side talks to the device through `BalloonControl`, a
 * shared buffer, so the VMM thread never waits on the I/O thread.
 */
import { SharedState } from '../../common/shared-state.js';
import { checkBalloonRecord } from './balloon-state.js';
import { bit, type DeviceStateRecord, VIRTIO_ID, type VirtioContext, type VirtioDevice } from './device.js';
import { drainQueue, KEPT } from './drain.js';
import { readFromChain } from './queue.js';

export const VIRTIO_BALLOON_F = { MUST_TELL_HOST: 0n, STATS_VQ: 1n, DEFLATE_ON_OOM: 2n } as const;
export const BALLOON_PAGE = 4096;
const INFLATE = 0;
const DEFLATE = 1;
const STATS = 2;
const QUEUE_SIZE = 256;

/** The statistics tags of §5.5.6.3, by name (Firecracker's names). */
export const BALLOON_STAT_TAGS = [
  'swap_in',
  'swap_out',
  'major_faults',
  'minor_faults',
  'free_memory',
  'total_memory',
  'available_memory',
  'disk_caches',
  'hugetlb_allocations',
  'hugetlb_failures',
] as const;
export type BalloonStatName = (typeof BALLOON_STAT_TAGS)[number];

const FIELDS = ['targetPages', 'actualPages', 'statsRequests', 'statsUpdates', 'inflated', 'deflated'] as const;
type Field = (typeof FIELDS)[number];

/** The host's handle on a balloon; usable from any thread over the same buffer. */
export class BalloonControl {
  readonly s: SharedState<Field>;
  private readonly stats: Float64Array;
  private readonly present: Int32Array;

  constructor(buffer?: SharedArrayBuffer) {
    const n = BALLOON_STAT_TAGS.length;
    this.s = new SharedState(FIELDS, n * 8 + n * 4, buffer);
    const base = SharedState.bytesOffset(FIELDS.length);
    this.stats = new Float64Array(this.s.buffer, base, n);
    this.present = new Int32Array(this.s.buffer, base + n * 8, n);
  }

  get buffer(): SharedArrayBuffer {
    return this.s.buffer;
  }

  /** The size the guest should give back, in MiB (the guest learns it through a config interrupt). */
  setTargetMiB(mib: number): void {
    this.s.set('targetPages', Math.round((mib * 1024 * 1024) / BALLOON_PAGE));
  }

  targetMiB(): number {
    return (this.s.get('targetPages') * BALLOON_PAGE) / (1024 * 1024);
  }

  /** What the guest says it has given back. */
  actualMiB(): number {
    // The guest writes `actual` as a u32 (config offset 4); kept in an int32 slot, read it unsigned.
    return (this.s.u32('actualPages') * BALLOON_PAGE) / (1024 * 1024);
  }

  /** Ask the guest for fresh statistics (answered asynchronously; statsUpdates counts answers). */
  requestStats(): void {
    this.s.add('statsRequests', 1);
  }

  /** The latest statistics the guest reported (bytes for the memory ones, counts otherwise). */
  latestStats(): Partial<Record<BalloonStatName, number>> {
    const out: Partial<Record<BalloonStatName, number>> = {};
    BALLOON_STAT_TAGS.forEach((name, i) => {
      if (Atomics.load(this.present, i)) out[name] = this.stats[i] as number;
    });
    return out;
  }

  /** Forgets every statistic (a restore then records the saved ones). */
  clearStats(): void {
    this.stats.fill(0);
    this.present.fill(0);
  }

  recordStat(tag: number, value: number): void {
    if (tag < 0 || tag >= BALLOON_STAT_TAGS.length) return;
    this.stats[tag] = value;
    Atomics.store(this.present, tag, 1);
  }
}

/** Frees host memory behind guest pages the guest gave back (madvise DONTNEED). */
export type ReleasePages = (gpa: number, length: number) => void;

export interface BalloonConfig {
  deflateOnOom: boolean;
  /** Offer the statistics queue. */
  stats: boolean;
}

export class VirtioBalloon implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.balloon;
  readonly queueMaxSizes: number[];
  readonly features: bigint;
  readonly configSpace = new Uint8Array(8);
  /** actual (offset 4) is the driver's to write. */
  readonly configWritable = [[4, 4]] as const;
  readonly counters = { inflatedPages: 0, deflatedPages: 0, invalidPages: 0, statsUpdates: 0, malformed: 0 };
  private ctx: VirtioContext | undefined;
  private target = -1;
  private statsAsked = 0;
  /** The stats buffer the driver left with us, returned when the host wants fresh numbers. */
  private statsHead: number | undefined;
  /** From a snapshot: what the driver had been told, taken at the next activation. */
  private fromSnapshot: { target: number; statsAsked: number | undefined } | undefined;

  constructor(
    private readonly control: BalloonControl,
    private readonly release: ReleasePages,
    config: BalloonConfig,
  ) {
    this.queueMaxSizes = config.stats ? [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE] : [QUEUE_SIZE, QUEUE_SIZE];
    this.features =
      (config.stats ? bit(VIRTIO_BALLOON_F.STATS_VQ) : 0n) |
      (config.deflateOnOom ? bit(VIRTIO_BALLOON_F.DEFLATE_ON_OOM) : 0n);
    new DataView(this.configSpace.buffer).setUint32(0, control.s.get('targetPages'), true);
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    // A fresh activation announces the target; a restored one goes on from what the driver knows.
    this.target = this.fromSnapshot?.target ?? -1;
    this.statsHead = undefined;
    this.statsAsked = this.fromSnapshot?.statsAsked ?? this.control.s.get('statsRequests');
    this.fromSnapshot = undefined;
    this.hostWake();
    this.process(INFLATE);
    this.process(DEFLATE);
    this.process(STATS);
  }

  /** The stats buffer the device keeps (the only pop of that queue): a snapshot gives it back to the ring. */
  heldChains(): number[] {
    return [0, 0, this.statsHead === undefined ? 0 : 1];
  }

  reset(): void {
    this.ctx = undefined;
    this.statsHead = undefined;
  }

  saveState(): DeviceStateRecord {
    const active = this.ctx !== undefined;
    return {
      version: 1,
      announcedTargetPages: active && this.target !== -1 ? this.target >>> 0 : null,
      statsRequestsSeen: active ? this.statsAsked >>> 0 : null,
    };
  }

  restoreState(state: unknown): void {
    checkBalloonRecord(state);
    this.fromSnapshot = {
      target: state.announcedTargetPages === null ? -1 : state.announcedTargetPages | 0,
      statsAsked: state.statsRequestsSeen === null ? undefined : state.statsRequestsSeen | 0,
    };
  }

  configWritten(): void {
    const ctx = this.ctx;
    if (ctx) this.control.s.set('actualPages', ctx.config.getUint32(4, true));
  }

  /** The host changed the target or wants statistics. */
  hostWake(): void {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    const t = this.control.s.get('targetPages');
    if (t !== this.target) {
      this.target = t;
      ctx.config.setUint32(0, t, true);
      ctx.signalConfig();
    }
    const asked = this.control.s.get('statsRequests');
    const queue = ctx.queues[STATS];
    if (asked !== this.statsAsked && this.statsHead !== undefined && queue) {
      this.statsAsked = asked;
      queue.pushUsed(ctx.mem, this.statsHead, 0);
      this.statsHead = undefined;
      ctx.signalUsed(STATS);
    }
  }

  process(q: number): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[q];
    if (ctx === undefined || queue === undefined) return;
    const mem = ctx.mem;
    drainQueue(ctx, q, (chain) => {
      if (chain.error !== undefined) {
        this.counters.malformed++;
        return 0;
      }
      if (q === STATS) {
        this.readStats(chain.readLen, readFromChain(mem, chain.readable, Math.min(chain.readLen, 10 * 64)));
        // Keep the buffer: returning it is how the host asks for the next report. The one kept before
        // goes back now (drainQueue counts it in the interrupt it raises).
        if (this.statsHead !== undefined) queue.pushUsed(mem, this.statsHead, 0);
        this.statsHead = chain.head;
        return KEPT;
      }
      const pfns = readFromChain(mem, chain.readable, Math.min(chain.readLen, 4 * QUEUE_SIZE * 256));
      const dv = new DataView(pfns.buffer, pfns.byteOffset, pfns.byteLength);
      for (let o = 0; o + 4 <= pfns.length; o += 4) {
        const gpa = dv.getUint32(o, true) * BALLOON_PAGE;
        // The guest is the attacker: only pages of its own RAM are ever released.
        if (!mem.isValid(gpa, BALLOON_PAGE)) {
          this.counters.invalidPages++;
          continue;
        }
        if (q === INFLATE) {
          this.release(gpa, BALLOON_PAGE);
          this.counters.inflatedPages++;
          this.control.s.add('inflated', 1);
        } else {
          this.counters.deflatedPages++;
          this.control.s.add('deflated', 1);
        }
      }
      return 0;
    });
  }

  private readStats(len: number, bytes: Uint8Array): void {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    // Entries are packed: le16 tag, le64 value (§5.5.6.3).
    for (let o = 0; o + 10 <= Math.min(len, bytes.length); o += 10) {
      this.control.recordStat(dv.getUint16(o, true), Number(dv.getBigUint64(o + 2, true)));
    }
    this.counters.statsUpdates++;
    this.control.s.add('statsUpdates', 1);
  }
}
