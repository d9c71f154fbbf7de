/**
 * virtio over MMIO, version 2 register layout (virtio 1.2 §4.2.2).
 *
 * The registers live in shared state so that every vCPU thread serves register accesses without a
 * thread hop (`VirtioMmioTransport`, a bus device), while the device itself runs on the I/O thread
 * (`VirtioMmioDeviceSide`, mmio-device-side.ts), woken by ioeventfd for queue notifications and by a control eventfd for
 * status changes. The transport checks the status state machine and the queue layout; a protocol error
 * sets DEVICE_NEEDS_RESET and raises a configuration interrupt instead of failing.
 */
import type { BusDevice } from '../../bus/bus.js';
import { SharedState } from '../../common/shared-state.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { hasFeature, INTERRUPT_CONFIG_CHANGE, STATUS, VIRTIO_F_VERSION_1, type VirtioDevice } from './device.js';
import { checkLayout, type QueueLayout } from './queue.js';

export type { DeviceSideState } from './side-state.js';

export const MMIO_MAGIC = 0x74726976; // "virt"
export const MMIO_VERSION = 2;
export const MMIO_VENDOR_ID = 0x4f524956; // "VIRO"
/** Each device gets a 4 KiB window: registers below 0x100, configuration space above. */
export const MMIO_WINDOW = 0x1000;
export const MMIO_CONFIG_OFFSET = 0x100;
export const MMIO_CONFIG_SIZE = 0x100;
export const MMIO_QUEUE_NOTIFY = 0x050;
export const MMIO_MAX_QUEUES = 8;

const REG = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: MMIO_QUEUE_NOTIFY,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  CONFIG_GENERATION: 0x0fc,
} as const;

export const FIELDS = [
  'status',
  'deviceFeaturesSel',
  'driverFeaturesSel',
  'driverFeaturesLo',
  'driverFeaturesHi',
  'queueSel',
  'interruptStatus',
  'configGeneration',
  /** Bumped at each DRIVER_OK; the device side activates when it sees a new value. */
  'activeGen',
  /** Bumped at each reset; the device side acknowledges in resetAck. */
  'resetGen',
  'resetAck',
  /** Bumped at each driver write of the configuration space; offset/len of the last one follow. */
  'configWrites',
  'configWriteOffset',
  'configWriteLength',
  /** Protocol errors seen (each set DEVICE_NEEDS_RESET). */
  'protocolErrors',
] as const;
export type MmioField = (typeof FIELDS)[number];
type Field = MmioField;

/**
 * Every register the guest writes is a u32 kept in an int32 slot: selectors and indexes are read back
 * with `>>> 0` (SharedState.u32) and range-checked, so bit 31 never turns into a negative index.
 */
const isQueueIndex = (i: number): boolean => Number.isInteger(i) && i >= 0 && i < MMIO_MAX_QUEUES;

/** Per-queue register slots, in the extra bytes (mmio-state.ts names them). */
export const Q = { num: 0, ready: 1, descLo: 2, descHi: 3, availLo: 4, availHi: 5, usedLo: 6, usedHi: 7 } as const;
const Q_SLOTS = 8;
const QUEUE_BYTES = MMIO_MAX_QUEUES * Q_SLOTS * 4;

/** What both sides need to build their half of one device's transport; postable to a worker. */
export interface VirtioMmioSpec {
  deviceType: number;
  queueMaxSizes: number[];
  /** Offered features, VERSION_1 included. */
  features: bigint;
  configWritable: [number, number][];
  state: SharedArrayBuffer;
}

export class VirtioMmioState {
  readonly s: SharedState<Field>;
  readonly queues: Int32Array;
  readonly config: Uint8Array;
  readonly configView: DataView;

  constructor(buffer?: SharedArrayBuffer) {
    this.s = new SharedState(FIELDS, QUEUE_BYTES + MMIO_CONFIG_SIZE, buffer);
    const base = SharedState.bytesOffset(FIELDS.length);
    this.queues = new Int32Array(this.s.buffer, base, MMIO_MAX_QUEUES * Q_SLOTS);
    this.config = new Uint8Array(this.s.buffer, base + QUEUE_BYTES, MMIO_CONFIG_SIZE);
    this.configView = new DataView(this.s.buffer, base + QUEUE_BYTES, MMIO_CONFIG_SIZE);
  }

  /** A queue register as an unsigned 32-bit value; 0 for a queue index the transport does not have. */
  q(index: number, slot: number): number {
    if (!isQueueIndex(index)) return 0;
    return Atomics.load(this.queues, index * Q_SLOTS + slot) >>> 0;
  }
  /** Sets a queue register; a queue index the transport does not have changes nothing. */
  setQ(index: number, slot: number, v: number): void {
    if (!isQueueIndex(index)) return;
    Atomics.store(this.queues, index * Q_SLOTS + slot, v);
  }

  layout(index: number): QueueLayout {
    const addr = (lo: number, hi: number): number => {
      const h = this.q(index, hi);
      // Above 2^53 cannot be RAM; checkLayout will refuse it.
      return h >= 0x200000 ? Number.MAX_SAFE_INTEGER : h * 0x100000000 + this.q(index, lo);
    };
    return {
      size: this.q(index, Q.num),
      desc: addr(Q.descLo, Q.descHi),
      avail: addr(Q.availLo, Q.availHi),
      used: addr(Q.usedLo, Q.usedHi),
    };
  }

  driverFeatures(): bigint {
    return (BigInt(this.s.u32('driverFeaturesHi')) << 32n) | BigInt(this.s.u32('driverFeaturesLo'));
  }

  /** Mark a protocol error: DEVICE_NEEDS_RESET plus a configuration interrupt (§2.1.2). */
  needsReset(): void {
    this.s.locked(() => {
      this.s.set('status', this.s.get('status') | STATUS.DEVICE_NEEDS_RESET);
      this.s.add('protocolErrors', 1);
      this.raise(INTERRUPT_CONFIG_CHANGE);
    });
  }

  raise(bits: number): void {
    this.s.or('interruptStatus', bits);
  }
}

/** Builds the shared state for a device, with its initial configuration space. */
export function createVirtioMmioSpec(device: VirtioDevice): VirtioMmioSpec {
  if (device.queueMaxSizes.length > MMIO_MAX_QUEUES) throw new Error('virtio-mmio: too many queues');
  if (device.configSpace.length > MMIO_CONFIG_SIZE) throw new Error('virtio-mmio: configuration space too large');
  for (const [o, l] of device.configWritable ?? [])
    if (!(Number.isInteger(o) && Number.isInteger(l) && o >= 0 && l > 0 && o + l <= device.configSpace.length))
      throw new Error(`virtio-mmio: writable configuration range ${o}+${l} is outside the configuration space`);
  const st = new VirtioMmioState();
  st.config.set(device.configSpace);
  return {
    deviceType: device.deviceType,
    queueMaxSizes: [...device.queueMaxSizes],
    features: device.features | (1n << VIRTIO_F_VERSION_1),
    configWritable: (device.configWritable ?? []).map(([o, l]) => [o, l]),
    state: st.s.buffer,
  };
}

/** The vCPU side hooks: how to reach the I/O thread and the interrupt line. */
export interface MmioHooks {
  /** A queue notification arrived as an MMIO exit (no ioeventfd for it): forward it. */
  notifyQueue(q: number): void;
  /** Wake the I/O thread to look at the state (activation, reset, config write). */
  wake(): void;
  /** Inject the device's interrupt. */
  interrupt(): void;
}

/** The register file, as seen by the driver; one instance per vCPU thread over the same state. */
export class VirtioMmioTransport implements BusDevice {
  readonly st: VirtioMmioState;
  private readonly s: SharedState<Field>;

  constructor(
    private readonly spec: VirtioMmioSpec,
    private readonly mem: GuestMemory,
    private readonly hooks: MmioHooks,
  ) {
    this.st = new VirtioMmioState(spec.state);
    this.s = this.st.s;
  }

  read(offset: number, data: Uint8Array): void {
    if (offset >= MMIO_CONFIG_OFFSET) {
      const o = offset - MMIO_CONFIG_OFFSET;
      for (let i = 0; i < data.length; i++) data[i] = o + i < MMIO_CONFIG_SIZE ? (this.st.config[o + i] as number) : 0;
      return;
    }
    // §4.2.2.2: the driver uses 32-bit accesses below the configuration space; others read as 0.
    const v = data.length === 4 && offset % 4 === 0 ? this.readReg(offset) >>> 0 : 0;
    for (let i = 0; i < data.length; i++) data[i] = (v >>> (8 * i)) & 0xff;
  }

  private readReg(offset: number): number {
    const s = this.s;
    const sel = s.u32('queueSel');
    const hasQueue = sel < this.spec.queueMaxSizes.length;
    switch (offset) {
      case REG.MAGIC:
        return MMIO_MAGIC;
      case REG.VERSION:
        return MMIO_VERSION;
      case REG.DEVICE_ID:
        return this.spec.deviceType;
      case REG.VENDOR_ID:
        return MMIO_VENDOR_ID;
      case REG.DEVICE_FEATURES: {
        // Words past the second hold no feature bits (§2.2): they read as 0.
        const fs = s.u32('deviceFeaturesSel');
        if (fs > 1) return 0;
        return Number((this.spec.features >> BigInt(32 * fs)) & 0xffffffffn);
      }
      case REG.QUEUE_NUM_MAX:
        return hasQueue ? (this.spec.queueMaxSizes[sel] as number) : 0;
      case REG.QUEUE_READY:
        return hasQueue ? this.st.q(sel, Q.ready) : 0;
      case REG.INTERRUPT_STATUS:
        return s.get('interruptStatus');
      case REG.STATUS:
        return s.get('status');
      case REG.SHM_LEN_LOW:
      case REG.SHM_LEN_HIGH:
      case REG.SHM_BASE_LOW:
      case REG.SHM_BASE_HIGH:
        // No device here has shared memory regions, so every SHMSel names a non-existent one:
        // its length reads as -1 and its base as 0xffffffffffffffff (§4.2.2).
        return 0xffffffff;
      case REG.CONFIG_GENERATION:
        return s.get('configGeneration');
      default:
        return 0;
    }
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= MMIO_CONFIG_OFFSET) {
      this.writeConfig(offset - MMIO_CONFIG_OFFSET, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) return;
    const v =
      ((data[0] as number) | ((data[1] as number) << 8) | ((data[2] as number) << 16) | ((data[3] as number) << 24)) >>>
      0;
    this.writeReg(offset, v);
  }

  private writeConfig(o: number, data: Uint8Array): void {
    const ok = this.spec.configWritable.some(([wo, wl]) => o >= wo && o + data.length <= wo + wl);
    if (!ok || (this.s.get('status') & STATUS.DRIVER_OK) === 0) return;
    this.s.locked(() => {
      this.st.config.set(data, o);
      this.s.set('configWriteOffset', o);
      this.s.set('configWriteLength', data.length);
      this.s.add('configWrites', 1);
    });
    this.hooks.wake();
  }

  private writeReg(offset: number, v: number): void {
    const s = this.s;
    switch (offset) {
      case REG.DEVICE_FEATURES_SEL:
        s.set('deviceFeaturesSel', v);
        return;
      case REG.DRIVER_FEATURES_SEL:
        s.set('driverFeaturesSel', v);
        return;
      case REG.DRIVER_FEATURES: {
        // Only while negotiating: after FEATURES_OK the features are fixed (§3.1.1).
        const st = s.get('status');
        if ((st & STATUS.DRIVER) === 0 || st & STATUS.FEATURES_OK) return;
        const sel = s.u32('driverFeaturesSel');
        if (sel === 0) s.set('driverFeaturesLo', v | 0);
        else if (sel === 1) s.set('driverFeaturesHi', v | 0);
        return;
      }
      case REG.QUEUE_SEL:
        s.set('queueSel', v);
        return;
      case REG.QUEUE_NOTIFY:
        if (v < this.spec.queueMaxSizes.length && s.get('status') & STATUS.DRIVER_OK) this.hooks.notifyQueue(v);
        return;
      case REG.INTERRUPT_ACK:
        s.and('interruptStatus', ~v);
        return;
      case REG.STATUS:
        this.writeStatus(v);
        return;
      case REG.SHM_SEL:
        return;
    }
    const slot = QUEUE_REG_SLOT.get(offset);
    if (slot === undefined) return;
    // A queue the device does not have: writes to its registers change nothing (QueueNumMax reads 0).
    const sel = s.u32('queueSel');
    if (sel >= this.spec.queueMaxSizes.length) return;
    // Queues are configured between FEATURES_OK and DRIVER_OK; later writes are ignored (§4.2.3.2).
    const st = s.get('status');
    if ((st & STATUS.FEATURES_OK) === 0 || st & STATUS.DRIVER_OK) return;
    if (slot === Q.ready) this.st.setQ(sel, Q.ready, v === 1 ? 1 : 0);
    else this.st.setQ(sel, slot, v | 0);
  }

  private writeStatus(written: number): void {
    if (written === 0) {
      this.reset();
      return;
    }
    // The device status is one byte (§2.1); bits above it are not status bits and are dropped.
    const v = written & 0xff;
    if (v === 0) return;
    let activate = false;
    let failed = false;
    this.s.locked(() => {
      const old = this.s.get('status');
      // The driver only ever adds bits (§2.1.1); DEVICE_NEEDS_RESET is ours to set.
      let next = (old | v) & ~STATUS.DEVICE_NEEDS_RESET;
      next |= old & STATUS.DEVICE_NEEDS_RESET;
      if (v & ~old & STATUS.FEATURES_OK) {
        const drv = this.st.driverFeatures();
        const ok = (drv & ~this.spec.features) === 0n && hasFeature(drv, VIRTIO_F_VERSION_1);
        if (!ok || (old & STATUS.DRIVER) === 0) next &= ~STATUS.FEATURES_OK;
      }
      if (v & ~old & STATUS.DRIVER_OK) {
        if ((next & STATUS.FEATURES_OK) === 0) {
          next &= ~STATUS.DRIVER_OK;
          failed = true;
        } else if (this.queuesValid()) {
          activate = true;
        } else {
          next &= ~STATUS.DRIVER_OK;
          failed = true;
        }
      }
      this.s.set('status', next);
    });
    if (failed) {
      this.st.needsReset();
      this.hooks.interrupt();
    }
    if (activate) {
      this.s.add('activeGen', 1);
      this.hooks.wake();
    }
  }

  private queuesValid(): boolean {
    for (let i = 0; i < this.spec.queueMaxSizes.length; i++) {
      if (this.st.q(i, Q.ready) !== 1) continue;
      if (checkLayout(this.mem, this.st.layout(i), this.spec.queueMaxSizes[i] as number) !== undefined) return false;
    }
    return true;
  }

  /** Back to the initial state; waits (bounded) for the I/O thread to drop the old queues. */
  private reset(): void {
    let gen = 0;
    this.s.locked(() => {
      for (const f of ['status', 'driverFeaturesLo', 'driverFeaturesHi', 'interruptStatus', 'queueSel'] as const)
        this.s.set(f, 0);
      this.st.queues.fill(0);
      // As int32, the way get() reads it back: past 2^31 resets (or from a restored state) the sum would
      // never equal the acknowledgement and every reset would stall the vCPU for the whole deadline.
      gen = (this.s.add('resetGen', 1) + 1) | 0;
    });
    this.hooks.wake();
    const deadline = Date.now() + 1000;
    for (let ack = this.s.get('resetAck'); ack !== gen && Date.now() < deadline; ack = this.s.get('resetAck'))
      this.s.wait('resetAck', ack, 10);
  }
}

const QUEUE_REG_SLOT = new Map<number, number>([
  [REG.QUEUE_NUM, Q.num],
  [REG.QUEUE_READY, Q.ready],
  [REG.QUEUE_DESC_LOW, Q.descLo],
  [REG.QUEUE_DESC_HIGH, Q.descHi],
  [REG.QUEUE_DRIVER_LOW, Q.availLo],
  [REG.QUEUE_DRIVER_HIGH, Q.availHi],
  [REG.QUEUE_DEVICE_LOW, Q.usedLo],
  [REG.QUEUE_DEVICE_HIGH, Q.usedHi],
]);
