/**
 * virtio-rng (virtio 1.2 §5.4): fills each device-writable buffer with host randomness.
 * The entropy source is passed in (the VMM gives it the host's CSPRNG).
 */
import {
  bit,
  type DeviceStateRecord,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';
import { drainQueue } from './drain.js';
import { chainViews } from './queue.js';
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
  readonly counters = { requests: 0, bytes: 0, malformed: 0 };
  private ctx: VirtioContext | undefined;

  constructor(private readonly source: EntropySource) {}

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.process(0);
  }

  reset(): void {
    this.ctx = undefined;
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
    drainQueue(ctx, q, (chain) => {
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
    });
  }
}
