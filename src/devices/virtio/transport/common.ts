/**
 * What every virtio transport shares, whatever its registers look like: the device status state
 * machine (virtio 1.2 §2.1), feature negotiation (§2.2, §3.1.1), queue configuration and its check
 * at DRIVER_OK (§2.6, §3.1.1 step 7), reset (§2.4), the configuration space and its generation
 * (§2.5), and the interrupt status bits. It lives in shared memory (`TransportRegisters`) so that every
 * vCPU thread serves a register access without a thread hop, while the device itself runs on the I/O
 * thread (`TransportRunner`, runner.ts), woken for activation, reset and configuration writes.
 * `TransportCore` holds the rules: a protocol error sets DEVICE_NEEDS_RESET and raises a
 * configuration interrupt instead of failing, and nothing the driver writes throws.
 *
 * A transport (mmio.ts today; virtio-pci, §4.1, later) is one file here that provides:
 *  - register decoding: it maps the guest's accesses (offsets, widths) onto `TransportCore`'s
 *    operations, and answers its own identification registers (MMIO's magic/version/IDs; PCI's
 *    config-space header and capability list) itself. It never writes the shared registers directly.
 *  - the three `TransportHooks`: forward a queue notification that arrived as an exit, wake the I/O
 *    thread, inject the interrupt (MMIO: a GSI through irqfd; PCI: INTx or the MSI-X vector).
 *  - anything only it has (PCI: BARs, the MSI-X table and vectors) with its own state record beside
 *    it. The common record (common-state.ts), the runner (runner.ts) and its record (runner-state.ts)
 *    are reused unchanged: the snapshot keeps them for every transport.
 * The device model never sees any of this (device.ts): it is handed a `VirtioContext` at activation.
 */
import { SharedState } from '../../../common/shared-state.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import { hasFeature, INTERRUPT_CONFIG_CHANGE, STATUS, VIRTIO_F_VERSION_1, type VirtioDevice } from '../device.js';
import { checkLayout, type QueueLayout } from '../queue.js';

/** The most queues a device may have (the shared state has registers for this many). */
export const TRANSPORT_MAX_QUEUES = 8;
/** The live configuration space's size: no device here defines more. */
export const TRANSPORT_CONFIG_SIZE = 0x100;

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
export type TransportField = (typeof FIELDS)[number];
type Field = TransportField;

/**
 * Every register the guest writes is a u32 kept in an int32 slot: selectors and indexes are read back
 * with `>>> 0` (SharedState.u32) and range-checked, so bit 31 never turns into a negative index.
 */
const isQueueIndex = (i: number): boolean => Number.isInteger(i) && i >= 0 && i < TRANSPORT_MAX_QUEUES;

/**
 * Per-queue register slots, in the extra bytes (common-state.ts names them): the size, whether the
 * driver enabled it, and the three 64-bit ring addresses as low/high halves, as every transport writes them.
 */
export const Q = { num: 0, ready: 1, descLo: 2, descHi: 3, availLo: 4, availHi: 5, usedLo: 6, usedHi: 7 } as const;
export type QueueSlot = (typeof Q)[keyof typeof Q];
const Q_SLOTS = 8;
const QUEUE_BYTES = TRANSPORT_MAX_QUEUES * Q_SLOTS * 4;

/** What both sides need to build their half of one device's transport; postable to a worker. */
export interface TransportSpec {
  deviceType: number;
  queueMaxSizes: number[];
  /** Offered features, VERSION_1 included. */
  features: bigint;
  configWritable: [number, number][];
  state: SharedArrayBuffer;
}

/** The shared registers of one device, as every thread sees them (one view per thread, same memory). */
export class TransportRegisters {
  readonly s: SharedState<Field>;
  readonly queues: Int32Array;
  readonly config: Uint8Array;
  readonly configView: DataView;

  constructor(buffer?: SharedArrayBuffer) {
    this.s = new SharedState(FIELDS, QUEUE_BYTES + TRANSPORT_CONFIG_SIZE, buffer);
    const base = SharedState.bytesOffset(FIELDS.length);
    this.queues = new Int32Array(this.s.buffer, base, TRANSPORT_MAX_QUEUES * Q_SLOTS);
    this.config = new Uint8Array(this.s.buffer, base + QUEUE_BYTES, TRANSPORT_CONFIG_SIZE);
    this.configView = new DataView(this.s.buffer, base + QUEUE_BYTES, TRANSPORT_CONFIG_SIZE);
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
export function createTransportSpec(device: VirtioDevice): TransportSpec {
  if (device.queueMaxSizes.length > TRANSPORT_MAX_QUEUES) throw new Error('virtio transport: too many queues');
  if (device.configSpace.length > TRANSPORT_CONFIG_SIZE)
    throw new Error('virtio transport: configuration space too large');
  for (const [o, l] of device.configWritable ?? [])
    if (!(Number.isInteger(o) && Number.isInteger(l) && o >= 0 && l > 0 && o + l <= device.configSpace.length))
      throw new Error(`virtio transport: writable configuration range ${o}+${l} is outside the configuration space`);
  const st = new TransportRegisters();
  st.config.set(device.configSpace);
  return {
    deviceType: device.deviceType,
    queueMaxSizes: [...device.queueMaxSizes],
    features: device.features | (1n << VIRTIO_F_VERSION_1),
    configWritable: (device.configWritable ?? []).map(([o, l]) => [o, l]),
    state: st.s.buffer,
  };
}

/** The vCPU side hooks a transport supplies: how to reach the I/O thread and the interrupt line. */
export interface TransportHooks {
  /** A queue notification arrived as an exit (no ioeventfd for it): forward it. */
  notifyQueue(q: number): void;
  /** Wake the I/O thread to look at the state (activation, reset, config write). */
  wake(): void;
  /** Inject the device's interrupt. */
  interrupt(): void;
}

/**
 * The operations a transport's register decoding maps onto; one instance per vCPU thread over the same
 * shared state. Every argument is what the guest wrote (a u32, possibly hostile): each is checked here.
 */
export class TransportCore {
  readonly st: TransportRegisters;
  private readonly s: SharedState<Field>;

  constructor(
    readonly spec: TransportSpec,
    private readonly mem: GuestMemory,
    private readonly hooks: TransportHooks,
  ) {
    this.st = new TransportRegisters(spec.state);
    this.s = this.st.s;
  }

  /** The device status byte (§2.1), DEVICE_NEEDS_RESET included. */
  status(): number {
    return this.s.get('status');
  }

  interruptStatus(): number {
    return this.s.get('interruptStatus');
  }

  /** The driver acknowledges the interrupt bits it has handled. */
  ackInterrupt(bits: number): void {
    this.s.and('interruptStatus', ~bits);
  }

  configGeneration(): number {
    return this.s.get('configGeneration');
  }

  selectDeviceFeatures(word: number): void {
    this.s.set('deviceFeaturesSel', word);
  }

  /** The 32 offered feature bits the selector names; words past the second hold none (§2.2) and read 0. */
  deviceFeatures(): number {
    const fs = this.s.u32('deviceFeaturesSel');
    if (fs > 1) return 0;
    return Number((this.spec.features >> BigInt(32 * fs)) & 0xffffffffn);
  }

  selectDriverFeatures(word: number): void {
    this.s.set('driverFeaturesSel', word);
  }

  /** 32 accepted feature bits at the selector; only while negotiating: after FEATURES_OK they are fixed (§3.1.1). */
  writeDriverFeatures(v: number): void {
    const st = this.s.get('status');
    if ((st & STATUS.DRIVER) === 0 || st & STATUS.FEATURES_OK) return;
    const sel = this.s.u32('driverFeaturesSel');
    if (sel === 0) this.s.set('driverFeaturesLo', v | 0);
    else if (sel === 1) this.s.set('driverFeaturesHi', v | 0);
  }

  selectQueue(index: number): void {
    this.s.set('queueSel', index);
  }

  /** The selected queue, if the device has it. */
  private selected(): number | undefined {
    const sel = this.s.u32('queueSel');
    return sel < this.spec.queueMaxSizes.length ? sel : undefined;
  }

  /** The selected queue's largest size; 0 for a queue the device does not have (§4.2.2, §4.1.4.3). */
  queueMaxSize(): number {
    const sel = this.selected();
    return sel === undefined ? 0 : (this.spec.queueMaxSizes[sel] as number);
  }

  /** A register of the selected queue (Q); 0 for a queue the device does not have. */
  queueRegister(slot: QueueSlot): number {
    const sel = this.selected();
    return sel === undefined ? 0 : this.st.q(sel, slot);
  }

  /**
   * Writes a register of the selected queue. A queue the device does not have changes nothing, and
   * queues are configured between FEATURES_OK and DRIVER_OK only: other writes are ignored (§3.1.1,
   * §4.2.3.2). Whether the layout is usable is checked at DRIVER_OK (`writeStatus`).
   */
  writeQueueRegister(slot: QueueSlot, v: number): void {
    const sel = this.selected();
    if (sel === undefined) return;
    const st = this.s.get('status');
    if ((st & STATUS.FEATURES_OK) === 0 || st & STATUS.DRIVER_OK) return;
    if (slot === Q.ready) this.st.setQ(sel, Q.ready, v === 1 ? 1 : 0);
    else this.st.setQ(sel, slot, v | 0);
  }

  /** The driver notified queue q; forwarded only for a queue the device has, once DRIVER_OK is set. */
  notify(q: number): void {
    if (q < this.spec.queueMaxSizes.length && this.s.get('status') & STATUS.DRIVER_OK) this.hooks.notifyQueue(q);
  }

  /** The configuration space as the driver reads it; bytes past it read 0. */
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++)
      data[i] = offset + i < TRANSPORT_CONFIG_SIZE ? (this.st.config[offset + i] as number) : 0;
  }

  /** A driver write of the configuration space: only inside a writable range, and only once DRIVER_OK is set. */
  writeConfig(offset: number, data: Uint8Array): void {
    const ok = this.spec.configWritable.some(([wo, wl]) => offset >= wo && offset + data.length <= wo + wl);
    if (!ok || (this.s.get('status') & STATUS.DRIVER_OK) === 0) return;
    this.s.locked(() => {
      this.st.config.set(data, offset);
      this.s.set('configWriteOffset', offset);
      this.s.set('configWriteLength', data.length);
      this.s.add('configWrites', 1);
    });
    this.hooks.wake();
  }

  /**
   * The driver writes the device status (§2.1, §3.1.1): 0 resets; otherwise the driver only adds bits.
   * FEATURES_OK stays clear unless the accepted features are a subset of the offered ones with
   * VERSION_1; DRIVER_OK without FEATURES_OK, or with an enabled queue whose layout is unusable, is
   * refused and sets DEVICE_NEEDS_RESET; an accepted DRIVER_OK activates the device on the I/O thread.
   */
  writeStatus(written: number): void {
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
