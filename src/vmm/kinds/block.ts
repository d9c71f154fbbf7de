/** virtio-blk: one device per drive, each over a raw or qcow2 disk (its request threads beside the I/O thread). */
import { closeDisk, createBlockBackend, type DiskSpec, openDisk } from '../../backends/disk.js';
import { toDisposable } from '../../common/lifecycle.js';
import { array, bool, object, oneOf, opt, str } from '../../common/schema.js';
import type { DriveConfig } from '../../config/index.js';
import { VirtioBlock } from '../../devices/virtio/block.js';
import { checkBlockState } from '../../devices/virtio/block-state.js';
import type { RateLimiterConfig } from '../../devices/virtio/rate-limiter.js';
import type { DeviceKind } from '../device-kind.js';
import { MAX_DEVICES, NAME, PATH, RATE_LIMITER } from './limits.js';

/**
 * Threads per disk beside the I/O thread: requests that arrive together run in parallel (Linux splits
 * large I/O into several requests); a lone request is served on the I/O thread itself.
 * VIREO_DISK_THREADS sets another count (0: every request on the I/O thread).
 */
const DISK_IO_THREADS = diskThreads(process.env.VIREO_DISK_THREADS);

function diskThreads(v: string | undefined): number {
  const n = v === undefined || v === '' ? 2 : Number(v);
  return Number.isInteger(n) && n >= 0 && n <= 16 ? n : 2;
}

/**
 * The host side of each drive by id: the disk open now (a running drive's file can be replaced:
 * Machine.updateDrive), closed with the VM whatever it is by then.
 */
export type DriveDisks = Map<string, { disk: DiskSpec }>;

/** What the VMM posts to the I/O thread to give a running drive a new file (DRIVE_COMMAND). */
export interface SwapDisk {
  swap: DiskSpec;
}

/** What the VMM posts to give a running drive another rate limiter (undefined: none). */
export interface LimitDisk {
  limit: RateLimiterConfig | null;
}

export const blockKind: DeviceKind<
  DriveConfig[],
  { id: string; disk: DiskSpec; rateLimiter?: RateLimiterConfig | undefined },
  DriveDisks
> = {
  name: 'virtio-blk',
  configKey: 'drives',
  config: (c) => (c.drives && c.drives.length > 0 ? c.drives : undefined),
  snapshot: {
    save: (c) => c ?? [],
    check: array(
      object({
        id: str(NAME),
        path: str(PATH),
        readOnly: opt(bool),
        format: opt(oneOf('raw', 'qcow2')),
        rateLimiter: RATE_LIMITER,
      }),
      0,
      MAX_DEVICES,
    ),
    restore: (saved) => saved as DriveConfig[],
  },
  open(drives, ctx) {
    const host: DriveDisks = new Map();
    const devices = drives.map((d) => {
      const disk = openDisk(d.path, d.readOnly ?? false, d.format);
      const entry = { disk };
      host.set(d.id, entry);
      ctx.store.add(toDisposable(() => closeDisk(entry.disk)));
      return { name: `virtio-blk:${d.id}`, spec: { id: d.id, disk, rateLimiter: d.rateLimiter } };
    });
    return { devices, host };
  },
  command(device, command, ctx) {
    if (!(device instanceof VirtioBlock)) throw new Error('not a drive');
    const limit = (command as Partial<LimitDisk>)?.limit;
    if (limit !== undefined) {
      device.setRateLimiter(limit ?? undefined);
      return;
    }
    const swap = (command as Partial<SwapDisk>)?.swap;
    if (swap === undefined) throw new Error('not a drive change');
    // A confined I/O thread cannot start the disk's threads: the new file is served on it.
    const pool = !ctx.seccomp && ctx.memory.length > 0 ? { memory: ctx.memory, threads: DISK_IO_THREADS } : undefined;
    const next = createBlockBackend(swap, pool);
    try {
      device.replaceBackend(next);
    } catch (e) {
      next.close?.();
      throw e;
    }
  },
  build: (spec, memory) =>
    new VirtioBlock(
      createBlockBackend(spec.disk, memory.length > 0 ? { memory, threads: DISK_IO_THREADS } : undefined),
      { id: spec.id, rateLimiter: spec.rateLimiter },
    ),
  recordCheck: checkBlockState,
};
