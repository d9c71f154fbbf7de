/**
 * virtio-rng (virtio 1.2 §5.4): fills each device-writable buffer with host randomness.
 * The entropy source is passed in (the VMM gives it the host's CSPRNG).
 */
import {
  bit,
  type DeviceStateRecord,
  type DeviceTimer,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';
import { BLOCKED, drainQueue } from './drain.js';
import { chainViews, type DescriptorChain } from './queue.js';
import { monotonicMs, RateLimiter, type RateLimiterConfig } from './rate-limiter.js';
import { restoreRngState, saveRngState } from './rng-state.js';

/** Fills a buffer with random bytes. */
export type EntropySource = (buf: Uint8Array) => void;

const QUEUE_SIZE = 256;
/** Bytes served per request at most: a greedy guest cannot make one request drain the host's pool. */
export const RNG_MAX_REQUEST = 64 * 1024;

export class VirtioRng implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.rng;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly features = bit(VIRTIO_F_RING_EVENT_IDX);
  readonly configSpace = new Uint8Array(0);
  readonly counters = { requests: 0, bytes: 0, malformed: 0, rateLimited: 0 };
  private ctx: VirtioContext | undefined;
  private readonly limiter: RateLimiter | undefined;
  /** A request the rate limiter holds (the latest pop): served when the timer says it may be. */
  private limited: DescriptorChain | undefined;
  private timer: DeviceTimer | undefined;

  constructor(
    private readonly source: EntropySource,
    rateLimiter?: RateLimiterConfig,
  ) {
    const l = rateLimiter === undefined ? undefined : new RateLimiter(rateLimiter, monotonicMs());
    this.limiter = l?.limits ? l : undefined;
  }

  attach(poller: Poller): void {
    this.timer = poller.timer?.(() => this.process(0));
  }

  /** A request the rate limiter holds is the latest pop: a snapshot gives it back to the ring. */
  heldChains(): number[] {
    return [this.limited === undefined ? 0 : 1];
  }

  close(): void {
    this.timer?.close();
    this.timer = undefined;
  }

  /** Whether the rate limiter lets `chain` go now; when not, the timer is set for when it may. */
  private admit(chain: DescriptorChain): boolean {
    const l = this.limiter;
    if (l === undefined || chain.error !== undefined) return true;
    const bytes = Math.min(chain.writeLen, RNG_MAX_REQUEST);
    const now = monotonicMs();
    if (l.take(bytes, now)) return true;
    this.counters.rateLimited++;
    this.timer?.set(Math.max(1, l.waitMs(bytes, now)));
    return false;
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.process(0);
  }

  reset(): void {
    this.ctx = undefined;
    this.limited = undefined;
    this.timer?.set(0);
  }

  saveState(): DeviceStateRecord {
    return saveRngState();
  }

  restoreState(state: unknown): void {
    restoreRngState(state);
  }

  process(q: number): void {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    const mem = ctx.mem;
    const held = this.limited;
    if (held !== undefined) {
      if (!this.admit(held)) return;
      this.limited = undefined;
      ctx.queues[q]?.pushUsed(mem, held.head, this.fill(held));
      ctx.signalUsed(q);
    }
    drainQueue(ctx, q, (chain) => {
      if (!this.admit(chain)) {
        this.limited = chain;
        return BLOCKED;
      }
      return this.fill(chain);
    });
  }

  /** Fills a request's buffers from the source; returns the bytes written. */
  private fill(chain: DescriptorChain): number {
    const mem = (this.ctx as VirtioContext).mem;
    if (chain.error !== undefined) {
      this.counters.malformed++;
      return 0;
    }
    let n = 0;
    for (const v of chainViews(mem, chain.writable, 0, Math.min(chain.writeLen, RNG_MAX_REQUEST))) {
      this.source(v);
      n += v.length;
    }
    this.counters.requests++;
    this.counters.bytes += n;
    return n;
  }
}
