/**
 * The virtio device manager: turns user configuration into devices on the MMIO bus. For each device it
 * allocates a 4 KiB MMIO window and an IRQ, creates the eventfds (one per queue for notifications, one
 * for the interrupt), wires them into KVM (ioeventfd: a queue notification never exits to a vCPU
 * thread; irqfd: the I/O thread injects interrupts itself), and runs every device on one I/O thread.
 */
import { randomFillSync } from 'node:crypto';
import { closeSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import type { VirtioMmioAcpi } from '../arch/x86_64/acpi.js';
import { MMIO_DEVICES_START } from '../arch/x86_64/layout.js';
import { type ConsoleIoSpec, FdConsole } from '../backends/console-io.js';
import { FileDisk, type FileDiskSpec, openFileDisk } from '../backends/file-disk.js';
import { PasstNet, type PasstSpec } from '../backends/passt.js';
import { PasstSupervisor } from '../backends/passt-process.js';
import { closeTap, openTap, Tap, type TapSpec } from '../backends/tap.js';
import { closeVsock, openVsock, UnixVsockHost, type VsockSpec } from '../backends/unix-socket.js';
import { hex } from '../common/address.js';
import { ConfigError, SnapshotError } from '../common/errors.js';
import { type Disposable, DisposableStore, toDisposable } from '../common/lifecycle.js';
import type { BalloonConfig, DriveConfig, NetConfig, VsockConfig } from '../config/index.js';
import { BalloonControl, VirtioBalloon } from '../devices/virtio/balloon.js';
import {
  type BalloonControlState,
  restoreBalloonControlState,
  saveBalloonControlState,
} from '../devices/virtio/balloon-control-state.js';
import { VirtioBlock } from '../devices/virtio/block.js';
import { VirtioConsole } from '../devices/virtio/console.js';
import type { VirtioDevice } from '../devices/virtio/device.js';
import {
  createVirtioMmioSpec,
  type DeviceSideState,
  MMIO_QUEUE_NOTIFY,
  MMIO_WINDOW,
  type VirtioMmioSpec,
  VirtioMmioState,
} from '../devices/virtio/mmio.js';
import {
  type MmioTransportState,
  restoreMmioTransportState,
  saveMmioTransportState,
} from '../devices/virtio/mmio-state.js';
import { VirtioNet } from '../devices/virtio/net.js';
import { VirtioRng } from '../devices/virtio/rng.js';
import { VirtioVsock } from '../devices/virtio/vsock/index.js';
import type { Vm as KvmVm } from '../kvm/kvm.js';
import { markDirty, type RegionDescriptor } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { SharedCounters } from './device-counters.js';
import { recycleIoThread, takeIoThread } from './vcpu-threads.js';

/** The MTU passt gives its guests (65520: the largest 802.3 frame less its header, in IPv4 words). */
const PASST_MTU = 65520;

/** ISA IRQs free on vireo's platform (0 PIT, 1 i8042, 2 cascade, 3/4 COM, 8 RTC, 9 SCI, 12 PS/2 aux are taken). */
export const VIRTIO_IRQS = [5, 6, 7, 10, 11, 14, 15] as const;

export type { BalloonConfig, DriveConfig, NetConfig } from '../config/index.js';

export interface VirtioConfig {
  drives?: DriveConfig[] | undefined;
  nets?: NetConfig[] | undefined;
  /** A virtio-rng device fed from the host CSPRNG. */
  rng?: boolean | undefined;
  /** A virtio-console (hvc0): guest output to outFd, input from inFd (non-blocking; -1 for none). */
  console?: ConsoleIoSpec | undefined;
  balloon?: BalloonConfig | undefined;
  /** A virtio-vsock device (Firecracker's hybrid form over Unix sockets). */
  vsock?: VsockConfig | undefined;
}

/** A device's host side, as plain data the I/O thread can rebuild it from. */
export type DeviceSpec =
  | { kind: 'block'; id: string; disk: FileDiskSpec }
  | { kind: 'rng' }
  | { kind: 'net'; id: string; tap: TapSpec; mac: number[] }
  | { kind: 'net-user'; id: string; passt: PasstSpec; mac: number[] }
  | { kind: 'console'; io: ConsoleIoSpec }
  | { kind: 'balloon'; control: SharedArrayBuffer; deflateOnOom: boolean; stats: boolean }
  | { kind: 'vsock'; vsock: VsockSpec };

/**
 * Builds the device model for a spec (in the main thread for its features, in the I/O thread to run
 * it); `memory` is where guest RAM is mapped in this process.
 */
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

/** The virtio-vsock device over Unix sockets, for a spec from openVsock() (on the I/O thread, or for its features). */
export function createVsockDevice(spec: VsockSpec): VirtioVsock {
  return new VirtioVsock(new UnixVsockHost(spec), spec);
}

export function buildDevice(spec: DeviceSpec, memory: readonly RegionDescriptor[] = []): VirtioDevice {
  switch (spec.kind) {
    case 'block':
      return new VirtioBlock(
        new FileDisk(spec.disk, memory.length > 0 ? { memory, threads: DISK_IO_THREADS } : undefined),
        { id: spec.id },
      );
    case 'rng':
      return new VirtioRng((b) => randomFillSync(b));
    case 'net':
      return new VirtioNet(new Tap(spec.tap), { mac: Uint8Array.from(spec.mac) });
    case 'net-user':
      // passt's MTU (what its DHCP announces), offered to the guest as virtio-net's own.
      return new VirtioNet(new PasstNet(spec.passt), { mac: Uint8Array.from(spec.mac), mtu: PASST_MTU });
    case 'console':
      return new VirtioConsole(new FdConsole(spec.io));
    case 'balloon':
      return new VirtioBalloon(new BalloonControl(spec.control), releaser(memory), {
        deflateOnOom: spec.deflateOnOom,
        stats: spec.stats,
      });
    case 'vsock':
      return createVsockDevice(spec.vsock);
  }
}

/** Gives the host memory behind guest pages back to the host (they read as zero when touched again). */
function releaser(memory: readonly RegionDescriptor[]): (gpa: number, len: number) => void {
  return (gpa, len) => {
    const r = memory.find((d) => gpa >= d.gpa && gpa + len <= d.gpa + d.size);
    if (!r) return;
    sys.madvise(r.hostAddr + (gpa - r.gpa), len, sys.MADV_DONTNEED);
    // The pages now read as zero: a diff snapshot must carry that.
    if (r.dirty) markDirty(new Uint8Array(r.dirty), gpa - r.gpa, len);
  };
}

/** One device on the bus: what the vCPU threads and the I/O thread both need. */
export interface VirtioSlot {
  name: string;
  base: number;
  irq: number;
  mmio: VirtioMmioSpec;
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

export interface IoThreadInit {
  memory: RegionDescriptor[];
  slots: VirtioSlot[];
  controlFd: number;
  /** [0]: set to 1 to stop; [1]: 1 while a snapshot holds the thread still. */
  control: SharedArrayBuffer;
  /** Restoring from a snapshot: each slot's device side, in slot order. */
  restore?: DeviceSideState[] | undefined;
}

export type IoThreadMessage =
  // Its modules (koffi among them) are loaded: the process may exit without aborting (vcpu-threads.ts).
  | { type: 'loaded' }
  | { type: 'ready' }
  | { type: 'saved'; states: DeviceSideState[] }
  | { type: 'save-failed'; message: string }
  | { type: 'stopped'; counters: Record<string, Record<string, number>>; errors: string[] }
  | { type: 'error'; message: string };

/** One slot's records in a snapshot: the transport's registers and the I/O-thread side. */
export interface VirtioDeviceRecords {
  name: string;
  mmio: MmioTransportState;
  side: DeviceSideState;
}

export interface VirtioDevicesState {
  virtio: VirtioDeviceRecords[];
  balloon: BalloonControlState | undefined;
}

export class VirtioDevices implements Disposable {
  readonly slots: VirtioSlot[] = [];
  /**
   * Every fd and backend this manager opened, added as each is created (so a failed addAll releases
   * exactly what it opened); disposed by stop() once the I/O thread is out, or by the VM's store.
   */
  private readonly store = new DisposableStore();
  readonly controlFd: number;
  private readonly control = new Int32Array(new SharedArrayBuffer(8));
  private onSaved: ((m: IoThreadMessage) => void) | undefined;
  private worker: Worker | undefined;
  private exited: Promise<void> | undefined;
  /** The I/O thread reported its stop and waits for another VM. */
  private recyclable = false;
  /** Device counters and errors, as reported by the I/O thread when it stopped. */
  finalCounters: Record<string, Record<string, number>> = {};
  errors: string[] = [];

  constructor(private readonly vm: KvmVm) {
    this.controlFd = this.eventfd();
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
   * Adds every device the config asks for (checked by validateVmConfig: config/); throws ConfigError
   * when a backend cannot be opened (the caller releases).
   */
  addAll(config: VirtioConfig): void {
    for (const d of config.drives ?? []) {
      const disk = openFileDisk(d.path, d.readOnly ?? false);
      this.store.add(toDisposable(() => closeSync(disk.fd)));
      this.add(`virtio-blk:${d.id}`, { kind: 'block', id: d.id, disk });
    }
    (config.nets ?? []).forEach((n, i) => {
      const mac = n.mac ?? [0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + i];
      if (n.kind === 'user') {
        // passt, started unprivileged and supervised; the link is down until it serves.
        const passt = this.store.add(new PasstSupervisor({ id: n.id, forwards: n.hostfwd, wake: () => this.wake() }));
        this.passts.set(n.id, passt);
        this.add(`virtio-net:${n.id}`, { kind: 'net-user', id: n.id, passt: passt.spec, mac });
        return;
      }
      const tap = openTap(n.tap);
      this.store.add(toDisposable(() => closeTap(tap)));
      this.add(`virtio-net:${n.id}`, { kind: 'net', id: n.id, tap, mac });
    });
    if (config.rng) this.add('virtio-rng', { kind: 'rng' });
    if (config.console) this.add('virtio-console', { kind: 'console', io: config.console });
    if (config.vsock) {
      const vsock = openVsock(config.vsock);
      this.store.add(toDisposable(() => closeVsock(vsock))); // released even when add() fails
      this.add('virtio-vsock', { kind: 'vsock', vsock });
    }
    const b = config.balloon;
    if (b) {
      this.balloon = new BalloonControl();
      this.balloon.setTargetMiB(b.amountMiB);
      this.add('virtio-balloon', {
        kind: 'balloon',
        control: this.balloon.buffer,
        deflateOnOom: b.deflateOnOom,
        stats: b.statsPollingIntervalS > 0,
      });
      if (b.statsPollingIntervalS > 0) this.setStatsInterval(b.statsPollingIntervalS);
    }
  }

  /** Asks the balloon for statistics every `seconds` from now on (the caller checked that it has the stats queue). */
  setStatsInterval(seconds: number): void {
    const balloon = this.balloon;
    if (!balloon) return;
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = setInterval(() => {
      balloon.requestStats();
      this.wake();
    }, seconds * 1000);
    this.statsTimer.unref();
  }

  /** Every device's counters as the I/O thread last published them (current while it runs). */
  liveCounters(): Record<string, Record<string, number>> {
    if (!this.worker) return this.finalCounters;
    const out: Record<string, Record<string, number>> = {};
    for (const slot of this.slots) out[slot.name] = new SharedCounters(slot.counterNames, slot.counters).read();
    return out;
  }

  /** Each user-mode interface's passt, by interface id. */
  readonly passts = new Map<string, PasstSupervisor>();

  /** The balloon's host handle, when there is one. */
  balloon: BalloonControl | undefined;
  private statsTimer: NodeJS.Timeout | undefined;

  /** Tell the I/O thread to look at host-side device state (balloon target, stats requests). */
  wake(): void {
    if (this.worker) sys.eventfdWrite(this.controlFd);
  }

  add(name: string, device: DeviceSpec): VirtioSlot {
    const n = this.slots.length;
    const irq = VIRTIO_IRQS[n];
    if (irq === undefined)
      throw new ConfigError(`too many virtio devices: vireo has IRQs for ${VIRTIO_IRQS.length}; remove some`);
    const model = buildDevice(device);
    const base = MMIO_DEVICES_START + n * MMIO_WINDOW;
    const irqFd = this.eventfd();
    this.vm.irqfd(irqFd, irq);
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
      base,
      irq,
      mmio: createVirtioMmioSpec(model),
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
    return this.slots.map((s) => ({ base: s.base, size: MMIO_WINDOW, irq: s.irq }));
  }

  /**
   * `virtio_mmio.device=` parameters for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES and no ACPI
   * (Debian's kernels find the devices through ACPI instead; giving both would register each twice).
   */
  cmdline(): string {
    return this.slots.map((s) => `virtio_mmio.device=4K@${hex(s.base)}:${s.irq}`).join(' ');
  }

  platformSpec(): VirtioPlatformSpec {
    return { slots: this.slots, controlFd: this.controlFd };
  }

  /** Starts the I/O thread (once); resolves when it serves. */
  async start(memory: RegionDescriptor[], restore?: DeviceSideState[]): Promise<void> {
    if (this.empty || this.worker) return;
    const init: IoThreadInit = {
      memory,
      slots: this.slots,
      controlFd: this.controlFd,
      control: this.control.buffer as SharedArrayBuffer,
      restore,
    };
    const w = takeIoThread();
    this.worker = w;
    let stopped!: () => void;
    this.exited = new Promise((res) => {
      stopped = res;
      w.once('exit', () => res());
    });
    await new Promise<void>((resolve, reject) => {
      w.on('message', (m: IoThreadMessage) => {
        if (m.type === 'ready') resolve();
        else if (m.type === 'saved' || m.type === 'save-failed') this.onSaved?.(m);
        else if (m.type === 'stopped') {
          this.finalCounters = m.counters;
          this.errors = m.errors;
          // Done with this VM: the thread waits for the next one (given back in stop()).
          this.recyclable = true;
          stopped();
          // A failure before 'ready' ends this VM's use of the thread too.
          reject(new Error('virtio I/O thread stopped before it was ready'));
        } else if (m.type === 'error') reject(new Error(`virtio I/O thread failed: ${m.message}`));
      });
      w.once('error', reject);
      w.once('exit', () => reject(new Error('virtio I/O thread exited before it was ready')));
      w.postMessage(init);
    });
  }

  /**
   * Holds the I/O thread still and returns each device side's state (the VM must be paused, so no
   * request is in flight). Call release() afterwards.
   */
  async hold(): Promise<DeviceSideState[]> {
    if (!this.worker) return [];
    const reply = new Promise<IoThreadMessage>((res) => {
      this.onSaved = res;
    });
    Atomics.store(this.control, 1, 1);
    sys.eventfdWrite(this.controlFd);
    const m = await reply;
    this.onSaved = undefined;
    if (m.type === 'save-failed') {
      this.release();
      throw new SnapshotError('VIREO_ERR_SNAPSHOT', `cannot snapshot the devices: ${m.message}`);
    }
    return m.type === 'saved' ? m.states : [];
  }

  /**
   * After a restore, raises again the interrupt of every device whose interrupt status is set: one
   * raised while the irqchip state was being put back (the restored devices start before it), or
   * still on its way into KVM when the snapshot read the irqchip, would otherwise be lost. A driver
   * that finds nothing to do treats it as spurious.
   */
  reassertInterrupts(): void {
    for (const slot of this.slots)
      if (new VirtioMmioState(slot.mmio.state).s.get('interruptStatus') !== 0) sys.eventfdWrite(slot.irqFd);
  }

  /** Every device's records for a snapshot, from the side states hold() returned (the VM paused). */
  saveStates(sides: DeviceSideState[]): VirtioDevicesState {
    return {
      virtio: this.slots.map((slot, i) => ({
        name: slot.name,
        mmio: saveMmioTransportState(slot.mmio),
        side: sides[i] as DeviceSideState,
      })),
      balloon: this.balloon ? saveBalloonControlState(this.balloon) : undefined,
    };
  }

  /**
   * Puts saved records into the devices' shared state before the I/O thread starts (it takes the
   * side records, start()). The records must be this configuration's devices, in slot order.
   */
  restoreStates(state: VirtioDevicesState): void {
    if (
      state.virtio.length !== this.slots.length ||
      state.virtio.some((v, i) => v.name !== (this.slots[i] as VirtioSlot).name)
    )
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        'the snapshot and its configuration disagree on the virtio devices',
      );
    this.slots.forEach((slot, i) => {
      restoreMmioTransportState(slot.mmio, (state.virtio[i] as VirtioDeviceRecords).mmio, `${slot.name} transport`);
    });
    if (state.balloon && this.balloon) restoreBalloonControlState(this.balloon, state.balloon);
  }

  /** Lets the I/O thread go on after hold(). */
  release(): void {
    Atomics.store(this.control, 1, 0);
    Atomics.notify(this.control, 1);
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
  async stopThread(): Promise<void> {
    if (this.statsTimer) clearInterval(this.statsTimer);
    if (this.worker) {
      this.release();
      Atomics.store(this.control, 0, 1);
      sys.eventfdWrite(this.controlFd);
      const w = this.worker;
      const t = setTimeout(() => {
        if (!this.recyclable) void w.terminate();
      }, 5000);
      await this.exited;
      clearTimeout(t);
      this.worker = undefined;
      if (this.recyclable) recycleIoThread(w);
    }
  }

  /**
   * Closes every fd and backend this manager opened, newest first; the I/O thread must be stopped
   * already (stop() does both). Safe to call twice.
   */
  dispose(): void {
    this.store.dispose();
  }
}

/** The guest-visible address of a slot, for messages. */
export const describeSlot = (s: VirtioSlot): string => `${s.name} at ${hex(s.base)} irq ${s.irq}`;
