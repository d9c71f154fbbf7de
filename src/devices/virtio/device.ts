/**
 * What a virtio device is, independent of its transport (virtio 1.2 §2, §5). A device sees its queues,
 * guest memory and an interrupt callback through a context; it never sees MMIO or PCI registers, so a
 * PCI transport can be added beside the MMIO one without touching any device.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Queue } from './queue.js';

export const VIRTIO_ID = {
  net: 1,
  block: 2,
  console: 3,
  rng: 4,
  balloon: 5,
  vsock: 19,
  fs: 26,
} as const;

/** Feature bits every transport understands (§6). */
export const VIRTIO_F_RING_INDIRECT_DESC = 28n;
export const VIRTIO_F_RING_EVENT_IDX = 29n;
export const VIRTIO_F_VERSION_1 = 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 33n;

export const bit = (n: bigint): bigint => 1n << n;
export const hasFeature = (features: bigint, n: bigint): boolean => (features & bit(n)) !== 0n;

/** Device status bits (§2.1). */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

export const INTERRUPT_USED_BUFFER = 1;
export const INTERRUPT_CONFIG_CHANGE = 2;

/** Everything a device may touch while it is active; handed over by the transport at DRIVER_OK. */
export interface VirtioContext {
  readonly mem: GuestMemory;
  /** Indexed by queue number; undefined where the driver did not enable that queue. */
  readonly queues: readonly (Queue | undefined)[];
  /** The features the driver accepted. */
  readonly features: bigint;
  /** Tell the driver about used buffers on queue q (honours its interrupt suppression). */
  signalUsed(q: number): void;
  /** The device changed its configuration space (bumps the generation and interrupts). */
  signalConfig(): void;
  /** Writes into the device's configuration space as seen by the driver. */
  readonly config: DataView;
}

/** Readiness bits for Poller (the values of EPOLLIN / EPOLLOUT / EPOLLERR / EPOLLHUP). */
export const POLL_IN = 0x001;
export const POLL_OUT = 0x004;
export const POLL_ERR = 0x008;
export const POLL_HUP = 0x010;

/**
 * Host fds a device wants watched (a TAP, sockets), on the I/O thread that runs it. Handlers run on
 * that thread, between queue notifications; they must not block.
 */
export interface Poller {
  add(fd: number, events: number, handler: (events: number) => void): void;
  modify(fd: number, events: number): void;
  remove(fd: number): void;
  /** A one-shot timer whose handler runs on this thread (a rate limiter's wait). */
  timer?(handler: () => void): DeviceTimer;
}

export interface DeviceTimer {
  /** Fires the handler once after `ms` milliseconds (at least 1); `ms` <= 0 disarms it. */
  set(ms: number): void;
  close(): void;
}

/**
 * A device's own persisted state (beside each device: block-state.ts, console-state.ts, …): named
 * fields of plain JSON values and a version, so a new field is a new version, not a broken snapshot.
 */
export type DeviceStateRecord = { readonly version: number } & { readonly [field: string]: unknown };

/** Counters every device keeps; named so metrics can show them. */
export type DeviceCounters = Record<string, number>;

export interface VirtioDevice {
  readonly deviceType: number;
  /** The largest size of each queue; the length is the number of queues. */
  readonly queueMaxSizes: readonly number[];
  /** Features offered (the transport adds VIRTIO_F_VERSION_1). */
  readonly features: bigint;
  /** Initial configuration space bytes (the transport owns the live copy). */
  readonly configSpace: Uint8Array;
  /** [offset, length] ranges of the configuration space the driver may write. */
  readonly configWritable?: readonly (readonly [number, number])[];
  readonly counters: DeviceCounters;
  /** Called once on the I/O thread before anything else, for devices with host fds to watch. */
  attach?(poller: Poller): void;
  /** The driver set DRIVER_OK: start serving. */
  activate(ctx: VirtioContext): void;
  /** The driver notified queue q (or a backend woke us for it). */
  process(q: number): void;
  /** The host side changed something the device should look at (balloon target, stats request). */
  hostWake?(): void;
  /** The driver wrote the configuration space. */
  configWritten?(offset: number, length: number): void;
  /**
   * Per queue, how many of the most recently popped chains the device still holds unused (rx buffers
   * waiting for data). A snapshot rewinds the queue over them, so the restored device pops them again.
   */
  heldChains?(): number[];
  /** Before a snapshot: finish and answer every request in flight on other threads. */
  quiesce?(): void;
  /**
   * The VM was restored from a snapshot and this device re-activated with its queues where they
   * stood: re-attach host connections (vsock resets its transport, as the spec asks after migration).
   */
  restored?(): void;
  /**
   * The device's own state for a snapshot (the VM paused, the device quiesced), beyond what the
   * transport keeps (registers, configuration space, queue positions).
   */
  saveState?(): DeviceStateRecord;
  /**
   * Before the restored device is re-activated: check `state` (SnapshotError
   * VIREO_ERR_SNAPSHOT_CORRUPT naming the bad field) and take it.
   */
  restoreState?(state: unknown): void;
  /** The driver reset the device: drop queues and anything in flight, stay usable. */
  reset(): void;
  /** Release host resources for good. */
  close?(): void;
}
