/**
 * The virtio device manager: turns configuration into devices on the MMIO bus, kind by kind as the
 * registry lists them (device-registry.ts; this file names no kind). For each device it takes an MMIO
 * window and a GSI from the resource allocator (resources.ts), creates the eventfds (one per queue for
 * notifications, one for the interrupt), wires them into KVM (ioeventfd: a queue notification never
 * exits to a vCPU thread; irqfd: the I/O thread injects interrupts itself), and runs every device on
 * one I/O thread.
 */
import type { VirtioMmioAcpi } from '../arch/x86_64/acpi.js';
import { hex } from '../common/address.js';
import { SnapshotError } from '../common/errors.js';
import { type Disposable, DisposableStore, toDisposable } from '../common/lifecycle.js';
import type { VirtioDevice } from '../devices/virtio/device.js';
import { createTransportSpec, TransportRegisters, type TransportSpec } from '../devices/virtio/transport/common.js';
import {
  restoreTransportState,
  saveTransportState,
  type TransportState,
} from '../devices/virtio/transport/common-state.js';
import { MMIO_QUEUE_NOTIFY, MMIO_WINDOW } from '../devices/virtio/transport/mmio.js';
import type { RunnerState } from '../devices/virtio/transport/runner-state.js';
import type { Vm as KvmVm } from '../kvm/kvm.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { SharedCounters } from './device-counters.js';
import type { AnyDeviceKind, CommandContext, DeviceConfigs, DeviceKind } from './device-kind.js';
import { DEVICE_KINDS, kindOfSlot } from './device-registry.js';
import { IoThreadHandle } from './io-thread-handle.js';
import { balloonKind } from './kinds/balloon.js';
import { ResourceAllocator, type SlotTransport } from './resources.js';

export type { BalloonConfig, DriveConfig, NetConfig } from '../config/index.js';

/** A device's host side, as plain data the I/O thread can rebuild it from: its kind's name and what its open() made. */
export interface DeviceSpec {
  kind: string;
  spec: unknown;
}

/**
 * Builds the device model for a spec (in the main thread for its features, in the I/O thread to run
 * it); `memory` is where guest RAM is mapped in this process.
 */
export function buildDevice(spec: DeviceSpec, memory: readonly RegionDescriptor[] = []): VirtioDevice {
  const kind = DEVICE_KINDS.find((k) => k.name === spec.kind);
  if (!kind) throw new Error(`no virtio device kind ${spec.kind}`);
  return kind.build(spec.spec, memory);
}

/** Runs `spec`'s kind's command() on its device model (on the I/O thread). */
export function commandDevice(spec: DeviceSpec, device: VirtioDevice, command: unknown, ctx: CommandContext): void {
  const kind = DEVICE_KINDS.find((k) => k.name === spec.kind);
  if (!kind?.command) throw new Error(`a ${spec.kind} device takes no changes while it runs`);
  kind.command(device, command, ctx);
}

/** One device on the bus: what the vCPU threads and the I/O thread both need. */
export interface VirtioSlot {
  name: string;
  /** How the guest reaches it. */
  transport: SlotTransport;
  mmio: TransportSpec;
  device: DeviceSpec;
  irqFd: number;
  queueFds: number[];
  /** Whether KVM took the queue-notify ioeventfds (else notifications exit and are forwarded). */
  ioeventfd: boolean;
  /** The device's counters (its model's, then protocolErrors), published live by the I/O thread. */
  counterNames: string[];
  counters: SharedArrayBuffer;
}

/** Posted to vCPU threads with the platform. */
export interface VirtioPlatformSpec {
  slots: VirtioSlot[];
  controlFd: number;
}

/** One slot's records in a snapshot: its transport, the transport's registers and the I/O-thread side. */
export interface VirtioDeviceRecords {
  name: string;
  /** Absent in snapshots written before the resource allocator (the slot order then decided it). */
  transport?: SlotTransport | undefined;
  mmio: TransportState;
  side: RunnerState;
}

/** The slots' records, and beside them each kind's host record by its key (devices.balloon). */
export type VirtioDevicesState = { virtio: VirtioDeviceRecords[] } & Record<string, unknown>;

export class VirtioDevices implements Disposable {
  readonly slots: VirtioSlot[] = [];
  /**
   * Every fd and backend this manager opened, added as each is created (so a failed addAll releases
   * exactly what it opened); disposed by stop() once the I/O thread is out, or by the VM's store.
   */
  private readonly store = new DisposableStore();
  readonly controlFd: number;
  private readonly thread: IoThreadHandle;
  /** Each kind's host handle, by kind name (those that have one). */
  private readonly hosts = new Map<string, unknown>();

  /** `resources`: where windows and GSIs come from (a restore passes the snapshot's allocator). */
  constructor(
    private readonly vm: KvmVm,
    readonly resources = new ResourceAllocator(),
  ) {
    this.controlFd = this.eventfd();
    this.thread = new IoThreadHandle(this.controlFd);
  }

  /** Device counters, as the I/O thread reported them when it stopped. */
  get finalCounters(): Record<string, Record<string, number>> {
    return this.thread.finalCounters;
  }

  /** The devices' last errors, as the I/O thread reported them when it stopped. */
  get errors(): string[] {
    return this.thread.errors;
  }

  get empty(): boolean {
    return this.slots.length === 0;
  }

  private eventfd(): number {
    const fd = sys.eventfd(0, sys.EFD_NONBLOCK);
    this.store.add(toDisposable(() => sys.close(fd)));
    return fd;
  }

  /**
   * Adds every device the config asks for (checked by validateVmConfig: config/), kind by kind in the
   * registry's order; throws ConfigError when a backend cannot be opened (the caller releases).
   * `transports`: restoring, each slot's transport as the snapshot recorded it, in slot order.
   * `seccomp`: whether the VM's threads will confine themselves (the same flag start() gets).
   */
  addAll(config: DeviceConfigs, transports?: readonly (SlotTransport | undefined)[], seccomp = true): void {
    const ctx = { store: this.store, wake: () => this.wake(), seccomp };
    for (const kind of DEVICE_KINDS) {
      const c = kind.config(config);
      if (c === undefined) continue;
      const opened = kind.open(c, ctx);
      if (opened.host !== undefined) this.hosts.set(kind.name, opened.host);
      for (const d of opened.devices) {
        const saved = transports?.[this.slots.length];
        if (transports && !saved)
          throw new SnapshotError(
            'VIREO_ERR_SNAPSHOT',
            'the snapshot and its configuration disagree on the virtio devices',
          );
        this.add(d.name, { kind: kind.name, spec: d.spec }, saved);
      }
    }
  }

  /** A kind's host handle, when this VM has the kind and the kind has one. */
  host<C, S, H>(kind: DeviceKind<C, S, H>): H | undefined {
    // The handle under a kind's name is the one that kind's own open() returned.
    return this.hosts.get(kind.name) as H | undefined;
  }

  /** Asks the running I/O thread to apply `command` to the device on slot `name` (its kind's command()). */
  command(name: string, command: unknown): Promise<void> {
    const i = this.slots.findIndex((s) => s.name === name);
    if (i < 0) return Promise.reject(new Error(`no device ${name}`));
    return this.thread.command(i, command);
  }

  /** The balloon's host control, when there is one. */
  get balloon() {
    return this.host(balloonKind)?.control;
  }

  /** Asks the balloon for statistics every `seconds` from now on (the caller checked that it has the stats queue). */
  setStatsInterval(seconds: number): void {
    this.host(balloonKind)?.setStatsInterval(seconds);
  }

  /** Every device's counters as the I/O thread last published them (current while it runs). */
  liveCounters(): Record<string, Record<string, number>> {
    if (!this.thread.running) return this.finalCounters;
    const out: Record<string, Record<string, number>> = {};
    for (const slot of this.slots) out[slot.name] = new SharedCounters(slot.counterNames, slot.counters).read();
    return out;
  }

  /**
   * Tell the I/O thread to look at host-side device state (balloon target, stats requests, a passt
   * that came up). Also before the thread starts: the eventfd keeps the count and the thread sees it
   * once it runs — a backend that became ready in between is not missed.
   */
  wake(): void {
    if (!this.disposed) sys.eventfdWrite(this.controlFd);
  }

  /** Puts one device on a slot: `saved` is its transport when restoring, else one is allocated. */
  add(name: string, device: DeviceSpec, saved?: SlotTransport): VirtioSlot {
    let transport: SlotTransport;
    if (saved) {
      this.resources.claim(saved, MMIO_WINDOW, name);
      transport = saved;
    } else transport = this.resources.allocateMmioSlot(MMIO_WINDOW);
    const model = buildDevice(device);
    const { base, gsi } = transport;
    const irqFd = this.eventfd();
    this.vm.irqfd(irqFd, gsi);
    const queueFds = model.queueMaxSizes.map(() => this.eventfd());
    let ioeventfd = true;
    try {
      queueFds.forEach((fd, q) => {
        this.vm.ioeventfd({ fd, addr: base + MMIO_QUEUE_NOTIFY, len: 4, pio: false, datamatch: BigInt(q) });
      });
    } catch {
      ioeventfd = false; // notifications then exit to the vCPU thread, which forwards them
    }
    const counterNames = [...Object.keys(model.counters), 'protocolErrors'];
    const counters = new SharedCounters(counterNames).buffer;
    const slot: VirtioSlot = {
      name,
      transport,
      mmio: createTransportSpec(model),
      device,
      irqFd,
      queueFds,
      ioeventfd,
      counterNames,
      counters,
    };
    this.slots.push(slot);
    return slot;
  }

  /** The devices for the DSDT (how Linux finds them: LNRO0005, with its window and GSI). */
  acpi(): VirtioMmioAcpi[] {
    return this.slots.map((s) => ({ base: s.transport.base, size: MMIO_WINDOW, irq: s.transport.gsi }));
  }

  /**
   * `virtio_mmio.device=` parameters for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES and no ACPI
   * (Debian's kernels find the devices through ACPI instead; giving both would register each twice).
   */
  cmdline(): string {
    return this.slots.map((s) => `virtio_mmio.device=4K@${hex(s.transport.base)}:${s.transport.gsi}`).join(' ');
  }

  platformSpec(): VirtioPlatformSpec {
    return { slots: this.slots, controlFd: this.controlFd };
  }

  /** Starts the I/O thread (once); resolves when it serves (confined with its seccomp filter when `seccomp`). */
  async start(memory: RegionDescriptor[], seccomp: boolean, restore?: RunnerState[]): Promise<void> {
    if (this.empty) return;
    // A device whose model starts threads needs an I/O thread that is not confined yet.
    const fresh = this.slots.some((s) => DEVICE_KINDS.find((k) => k.name === s.device.kind)?.startsThreads);
    await this.thread.start({ memory, slots: this.slots, controlFd: this.controlFd, restore, seccomp }, fresh);
  }

  /**
   * Holds the I/O thread still and returns each device side's state (the VM must be paused, so no
   * request is in flight). Call release() afterwards.
   */
  hold(): Promise<RunnerState[]> {
    return this.thread.hold();
  }

  /**
   * After a restore, raises again the interrupt of every device whose interrupt status is set: one
   * raised while the irqchip state was being put back (the restored devices start before it), or
   * still on its way into KVM when the snapshot read the irqchip, would otherwise be lost. A driver
   * that finds nothing to do treats it as spurious.
   */
  reassertInterrupts(): void {
    for (const slot of this.slots)
      if (new TransportRegisters(slot.mmio.state).s.get('interruptStatus') !== 0) sys.eventfdWrite(slot.irqFd);
  }

  /** Every device's records for a snapshot, from the side states hold() returned (the VM paused). */
  saveStates(sides: RunnerState[]): VirtioDevicesState {
    const state: VirtioDevicesState = {
      virtio: this.slots.map((slot, i) => ({
        name: slot.name,
        transport: slot.transport,
        mmio: saveTransportState(slot.mmio),
        side: sides[i] as RunnerState,
      })),
    };
    for (const kind of DEVICE_KINDS) this.saveHost(kind, state);
    return state;
  }

  private saveHost(kind: AnyDeviceKind, state: VirtioDevicesState): void {
    const r = kind.hostRecord;
    if (r) state[r.key] = this.hosts.has(kind.name) ? r.save(this.hosts.get(kind.name)) : undefined;
  }

  /**
   * Puts saved records into the devices' shared state before the I/O thread starts (it takes the
   * side records, start()). The records must be this configuration's devices, in slot order.
   */
  restoreStates(state: VirtioDevicesState): void {
    if (
      state.virtio.length !== this.slots.length ||
      state.virtio.some((v, i) => v.name !== (this.slots[i] as VirtioSlot).name || kindOfSlot(v.name) === undefined)
    )
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        'the snapshot and its configuration disagree on the virtio devices',
      );
    this.slots.forEach((slot, i) => {
      restoreTransportState(slot.mmio, (state.virtio[i] as VirtioDeviceRecords).mmio, `${slot.name} transport`);
    });
    for (const kind of DEVICE_KINDS) {
      const r = kind.hostRecord;
      const saved = r ? state[r.key] : undefined;
      if (r && saved !== undefined && this.hosts.has(kind.name)) r.restore(this.hosts.get(kind.name), saved);
    }
  }

  /** Lets the I/O thread go on after hold(). */
  release(): void {
    this.thread.release();
  }

  /** Stops the I/O thread and closes every fd this manager opened. Safe to call twice. */
  async stop(): Promise<void> {
    await this.stopThread();
    this.dispose();
  }

  /**
   * Stops the I/O thread (it touches guest memory and polls this manager's fds: it must be out
   * before either goes) and gives it back for another VM once it reported its stop. Safe to call twice.
   */
  stopThread(): Promise<void> {
    return this.thread.stop();
  }

  /**
   * Closes every fd and backend this manager opened, newest first; the I/O thread must be stopped
   * already (stop() does both). Safe to call twice.
   */
  private disposed = false;

  dispose(): void {
    this.disposed = true;
    this.store.dispose();
  }
}

/** The guest-visible address of a slot, for messages. */
export const describeSlot = (s: VirtioSlot): string => `${s.name} at ${hex(s.transport.base)} irq ${s.transport.gsi}`;
