/**
 * A mock guest driver for virtio-mmio: probes a device through the transport's registers the way
 * Linux's virtio_mmio does (32-bit accesses, status handshake, queue setup), and runs the device side
 * synchronously in the same thread (notifications and wakes call straight into it). KVM-free.
 */
import type { VirtioDevice } from '../../src/devices/virtio/device.js';
import { STATUS, VIRTIO_F_VERSION_1 } from '../../src/devices/virtio/device.js';
import type { QueueLayout } from '../../src/devices/virtio/queue.js';
import { createTransportSpec, type TransportSpec } from '../../src/devices/virtio/transport/common.js';
import { VirtioMmioTransport } from '../../src/devices/virtio/transport/mmio.js';
import { TransportRunner } from '../../src/devices/virtio/transport/runner.js';
import { GuestMemory, GuestMemoryMapping, type RegionDescriptor } from '../../src/memory/guest-memory.js';
import { MockSplitQueue } from './mock-virtq.js';

export const R = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

export class MockMmioDriver {
  readonly mapping: GuestMemoryMapping;
  readonly mem: GuestMemory;
  /** The transport's and device's view of the same mappings (a RecordingMemory when a test audits them). */
  readonly deviceMem: GuestMemory;
  readonly spec: TransportSpec;
  readonly transport: VirtioMmioTransport;
  readonly side: TransportRunner;
  readonly queues: MockSplitQueue[] = [];
  interrupts = 0;
  /** Where the next queue's rings and data go. */
  private next = 0x10000;

  readonly device: VirtioDevice;

  /** `device` may be a function of the guest memory's mappings, for devices that need them. */
  constructor(
    device: VirtioDevice | ((memory: RegionDescriptor[]) => VirtioDevice),
    memBytes = 4 << 20,
    trackDirty = false,
    /** Builds the device side's view of guest memory, for tests that audit every access it makes. */
    deviceMemory?: (regions: RegionDescriptor[]) => GuestMemory,
  ) {
    this.mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: memBytes }]);
    if (trackDirty) this.mapping.trackDirty();
    this.mem = new GuestMemory(this.mapping.descriptors);
    this.deviceMem = deviceMemory ? deviceMemory(this.mapping.descriptors) : this.mem;
    this.device = typeof device === 'function' ? device(this.mapping.descriptors) : device;
    this.spec = createTransportSpec(this.device);
    let side: TransportRunner | undefined;
    this.transport = new VirtioMmioTransport(this.spec, this.deviceMem, {
      notifyQueue: (q) => side?.process(q),
      wake: () => side?.poll(),
      interrupt: () => this.interrupts++,
    });
    side = new TransportRunner(this.spec, this.device, this.deviceMem, () => this.interrupts++);
    this.side = side;
  }

  release(): void {
    this.mapping.release();
  }

  read(reg: number): number {
    const b = new Uint8Array(4);
    this.transport.read(reg, b);
    return new DataView(b.buffer).getUint32(0, true);
  }

  write(reg: number, v: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    this.transport.write(reg, b);
  }

  readConfig(offset: number, len: number): Uint8Array {
    const b = new Uint8Array(len);
    this.transport.read(R.CONFIG + offset, b);
    return b;
  }

  get status(): number {
    return this.read(R.STATUS);
  }

  deviceFeatures(): bigint {
    this.write(R.DEVICE_FEATURES_SEL, 0);
    const lo = this.read(R.DEVICE_FEATURES);
    this.write(R.DEVICE_FEATURES_SEL, 1);
    const hi = this.read(R.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns whether the device kept FEATURES_OK. */
  negotiate(features: bigint): boolean {
    this.write(R.STATUS, 0);
    this.write(R.STATUS, STATUS.ACKNOWLEDGE);
    this.write(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    this.write(R.DRIVER_FEATURES_SEL, 0);
    this.write(R.DRIVER_FEATURES, Number(features & 0xffffffffn));
    this.write(R.DRIVER_FEATURES_SEL, 1);
    this.write(R.DRIVER_FEATURES, Number(features >> 32n));
    this.write(R.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    return (this.status & STATUS.FEATURES_OK) !== 0;
  }

  /** Programs queue q with `layout` (default: packed rings at the next free area) and marks it ready. */
  setupQueue(q: number, size: number, layout?: QueueLayout): MockSplitQueue {
    const l = layout ?? MockSplitQueue.packed(size, this.next);
    if (!layout) this.next = Math.ceil((l.used + 6 + 8 * size) / 4096) * 4096 + 4096;
    this.write(R.QUEUE_SEL, q);
    this.write(R.QUEUE_NUM, l.size);
    this.write(R.QUEUE_DESC_LOW, l.desc % 2 ** 32);
    this.write(R.QUEUE_DESC_HIGH, Math.floor(l.desc / 2 ** 32));
    this.write(R.QUEUE_DRIVER_LOW, l.avail % 2 ** 32);
    this.write(R.QUEUE_DRIVER_HIGH, Math.floor(l.avail / 2 ** 32));
    this.write(R.QUEUE_DEVICE_LOW, l.used % 2 ** 32);
    this.write(R.QUEUE_DEVICE_HIGH, Math.floor(l.used / 2 ** 32));
    this.write(R.QUEUE_READY, 1);
    const mq = new MockSplitQueue(this.mem, l);
    this.queues[q] = mq;
    return mq;
  }

  driverOk(): boolean {
    this.write(R.STATUS, this.status | STATUS.DRIVER_OK);
    return (this.status & STATUS.DRIVER_OK) !== 0;
  }

  /** The whole probe with every offered feature accepted (or `features`); queues of `size`. */
  probe(size = 16, features?: bigint): MockSplitQueue[] {
    const f = features ?? this.deviceFeatures();
    if (!this.negotiate(f | (1n << VIRTIO_F_VERSION_1))) throw new Error('device refused FEATURES_OK');
    for (let q = 0; q < this.device.queueMaxSizes.length; q++) this.setupQueue(q, size);
    if (!this.driverOk()) throw new Error('device refused DRIVER_OK');
    return this.queues;
  }

  notify(q: number): void {
    this.write(R.QUEUE_NOTIFY, q);
  }

  /** A bump allocator for data buffers in guest memory. */
  alloc(len: number, align = 16): number {
    const a = Math.ceil(this.next / align) * align;
    this.next = a + len;
    return a;
  }
}
