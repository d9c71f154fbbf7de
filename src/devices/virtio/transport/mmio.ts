/**
 * virtio over MMIO, version 2 register layout (virtio 1.2 §4.2.2): only the decoding. Each offset a
 * vCPU reads or writes maps onto an operation of the common transport (common.ts), which holds the
 * status state machine, feature negotiation, queue configuration and reset; this file answers the
 * identification registers and the access rules of §4.2.2.2 itself. One instance per vCPU thread
 * over the same shared state; the device runs on the I/O thread (runner.ts).
 */
import type { BusDevice } from '../../../bus/bus.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import {
  Q,
  type QueueSlot,
  TRANSPORT_CONFIG_SIZE,
  TRANSPORT_MAX_QUEUES,
  TransportCore,
  type TransportHooks,
  type TransportRegisters,
  type TransportSpec,
} from './common.js';

export const MMIO_MAGIC = 0x74726976; // "virt"
export const MMIO_VERSION = 2;
export const MMIO_VENDOR_ID = 0x4f524956; // "VIRO"
/** Each device gets a 4 KiB window: registers below 0x100, configuration space above. */
export const MMIO_WINDOW = 0x1000;
export const MMIO_CONFIG_OFFSET = 0x100;
export const MMIO_CONFIG_SIZE = TRANSPORT_CONFIG_SIZE;
export const MMIO_QUEUE_NOTIFY = 0x050;
export const MMIO_MAX_QUEUES = TRANSPORT_MAX_QUEUES;

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

/** The per-queue registers (of the queue QueueSel names) and their slot in the common state. */
const QUEUE_REG_SLOT = new Map<number, QueueSlot>([
  [REG.QUEUE_NUM, Q.num],
  [REG.QUEUE_READY, Q.ready],
  [REG.QUEUE_DESC_LOW, Q.descLo],
  [REG.QUEUE_DESC_HIGH, Q.descHi],
  [REG.QUEUE_DRIVER_LOW, Q.availLo],
  [REG.QUEUE_DRIVER_HIGH, Q.availHi],
  [REG.QUEUE_DEVICE_LOW, Q.usedLo],
  [REG.QUEUE_DEVICE_HIGH, Q.usedHi],
]);

/** The register file, as seen by the driver; one instance per vCPU thread over the same state. */
export class VirtioMmioTransport implements BusDevice {
  readonly core: TransportCore;
  /** The shared registers behind the window (tests look at them). */
  readonly st: TransportRegisters;

  constructor(
    private readonly spec: TransportSpec,
    mem: GuestMemory,
    hooks: TransportHooks,
  ) {
    this.core = new TransportCore(spec, mem, hooks);
    this.st = this.core.st;
  }

  read(offset: number, data: Uint8Array): void {
    if (offset >= MMIO_CONFIG_OFFSET) {
      this.core.readConfig(offset - MMIO_CONFIG_OFFSET, data);
      return;
    }
    // §4.2.2.2: the driver uses 32-bit accesses below the configuration space; others read as 0.
    const v = data.length === 4 && offset % 4 === 0 ? this.readReg(offset) >>> 0 : 0;
    for (let i = 0; i < data.length; i++) data[i] = (v >>> (8 * i)) & 0xff;
  }

  private readReg(offset: number): number {
    const c = this.core;
    switch (offset) {
      case REG.MAGIC:
        return MMIO_MAGIC;
      case REG.VERSION:
        return MMIO_VERSION;
      case REG.DEVICE_ID:
        return this.spec.deviceType;
      case REG.VENDOR_ID:
        return MMIO_VENDOR_ID;
      case REG.DEVICE_FEATURES:
        return c.deviceFeatures();
      case REG.QUEUE_NUM_MAX:
        return c.queueMaxSize();
      case REG.QUEUE_READY:
        return c.queueRegister(Q.ready);
      case REG.INTERRUPT_STATUS:
        return c.interruptStatus();
      case REG.STATUS:
        return c.status();
      case REG.SHM_LEN_LOW:
      case REG.SHM_LEN_HIGH:
      case REG.SHM_BASE_LOW:
      case REG.SHM_BASE_HIGH:
        // No device here has shared memory regions, so every SHMSel names a non-existent one:
        // its length reads as -1 and its base as 0xffffffffffffffff (§4.2.2).
        return 0xffffffff;
      case REG.CONFIG_GENERATION:
        return c.configGeneration();
      default:
        // Write-only registers (QueueNum, the ring addresses, the selectors…) and holes read 0.
        return 0;
    }
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= MMIO_CONFIG_OFFSET) {
      this.core.writeConfig(offset - MMIO_CONFIG_OFFSET, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) return;
    const v =
      ((data[0] as number) | ((data[1] as number) << 8) | ((data[2] as number) << 16) | ((data[3] as number) << 24)) >>>
      0;
    this.writeReg(offset, v);
  }

  private writeReg(offset: number, v: number): void {
    const c = this.core;
    switch (offset) {
      case REG.DEVICE_FEATURES_SEL:
        c.selectDeviceFeatures(v);
        return;
      case REG.DRIVER_FEATURES_SEL:
        c.selectDriverFeatures(v);
        return;
      case REG.DRIVER_FEATURES:
        c.writeDriverFeatures(v);
        return;
      case REG.QUEUE_SEL:
        c.selectQueue(v);
        return;
      case REG.QUEUE_NOTIFY:
        c.notify(v);
        return;
      case REG.INTERRUPT_ACK:
        c.ackInterrupt(v);
        return;
      case REG.STATUS:
        c.writeStatus(v);
        return;
      case REG.SHM_SEL:
        return;
    }
    const slot = QUEUE_REG_SLOT.get(offset);
    if (slot !== undefined) c.writeQueueRegister(slot, v);
  }
}
