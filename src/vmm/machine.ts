/**
 * A built machine (what builder.ts returns: every part is there, none is filled in later) and its
 * lifecycle: start, pause and resume through the vCPU handles' replies, stop, and the release of
 * everything it owns, newest first. The runtime calls a running guest takes (console input,
 * Ctrl+Alt+Del, the balloon, counters) are here too; Vm (vm.ts) is the public face of this class.
 */
import { writeSync } from 'node:fs';
import { closeDisk, openDisk } from '../backends/disk.js';
import type { PasstSupervisor } from '../backends/passt-process.js';
import { TypedEmitter } from '../common/emitter.js';
import { ConfigError, VireoError } from '../common/errors.js';
import type { DisposableStore } from '../common/lifecycle.js';
import {
  type DriveConfig,
  type EgressPolicy,
  type NetConfig,
  type PortForward,
  type RngConfig,
  type SerialConfig,
  type UserNetConfig,
  type VmConfig,
  validateBalloonTarget,
  validateEgress,
  validateForwards,
  validatePortForward,
  validateRateLimiter,
  validateStatsInterval,
} from '../config/index.js';
import { PostCode } from '../devices/legacy/post-code.js';
import type { RateLimiterConfig } from '../devices/virtio/rate-limiter.js';
import type { Kvm, Vm as KvmVm } from '../kvm/kvm.js';
import type { CpuidEntry } from '../kvm/structs.js';
import type { GuestMemory, GuestMemoryMapping } from '../memory/guest-memory.js';
import type { ExitReport, VmExit } from '../vcpu/exit.js';
import { stopVcpus, type VcpuHandle } from '../vcpu/handle.js';
import type { BootResult } from './boot.js';
import { blockKind, type LimitDisk, type SwapDisk } from './kinds/block.js';
import { consoleKind } from './kinds/console.js';
import { type LimitNet, netKind } from './kinds/net.js';
import { type Platform, type PlatformSpec, STAT_FIELDS, type StatField } from './platform.js';
import type { VirtioDevices } from './virtio-devices.js';

export type VmEvents = {
  started: [];
  paused: [];
  resumed: [];
  exited: [VmExit];
  error: [VireoError];
};

export type VmState = 'created' | 'running' | 'paused' | 'stopping' | 'exited';

/**
 * A VmConfig with the machine's defaults filled in (what the machine was built from). Device kinds'
 * keys pass through as given: each kind reads its own (device-kind.ts).
 */
export type ResolvedVmConfig = VmConfig &
  Required<Pick<VmConfig, 'cmdline' | 'memMiB' | 'cpus' | 'serial' | 'irqchip' | 'kvmPath' | 'trackDirtyPages'>> & {
    drives: DriveConfig[];
    nets: NetConfig[];
    rng: boolean | RngConfig;
  };

/** The defaults, in one place: what Vm.create and a restore both build from. */
export function resolveVmConfig(config: VmConfig): ResolvedVmConfig {
  return {
    ...config,
    cmdline: config.cmdline ?? '',
    memMiB: config.memMiB ?? 128,
    cpus: config.cpus ?? 1,
    serial: config.serial ?? ({ kind: 'stdio' } satisfies SerialConfig),
    irqchip: config.irqchip ?? true,
    kvmPath: config.kvmPath ?? '/dev/kvm',
    drives: config.drives ?? [],
    nets: config.nets ?? [],
    rng: config.rng ?? false,
    trackDirtyPages: config.trackDirtyPages ?? false,
  };
}

/** Where the machine's guest came from. */
export type MachineOrigin =
  | { kind: 'boot'; boot: BootResult; refusedMsrs: number[] }
  | { kind: 'restore'; image: string; resumed: boolean };

/** Everything a builder made; the machine owns it from here on. */
export interface MachineParts {
  config: ResolvedVmConfig;
  kvm: Kvm;
  vm: KvmVm;
  mapping: GuestMemoryMapping;
  memory: GuestMemory;
  platformSpec: PlatformSpec;
  /** The platform as this thread sees it (i8042 key injection, serial input, counters). */
  platform: Platform;
  devices: VirtioDevices;
  vcpus: VcpuHandle[];
  /** Each vCPU's CPUID, as set (a snapshot saves it). */
  cpuids: CpuidEntry[][];
  /** Releases everything above, newest first (builder.ts says in what order it was added). */
  store: DisposableStore;
  report: ExitReport;
  origin: MachineOrigin;
  /** When the first vCPU exit happened, if one did during the build. */
  firstExitAt: () => number | undefined;
}

export class Machine extends TypedEmitter<VmEvents> {
  readonly config: ResolvedVmConfig;
  readonly kvm: Kvm;
  readonly vm: KvmVm;
  readonly mapping: GuestMemoryMapping;
  readonly memory: GuestMemory;
  readonly platformSpec: PlatformSpec;
  readonly platform: Platform;
  readonly devices: VirtioDevices;
  readonly vcpus: readonly VcpuHandle[];
  readonly cpuids: readonly CpuidEntry[][];
  readonly origin: MachineOrigin;
  /**
   * The memory image the guest's memory was equal to at the last snapshot or restore (a Diff's
   * parent); undefined while nothing but boot made it.
   */
  image: string | undefined;
  private readonly store: DisposableStore;
  private readonly report: ExitReport;
  private readonly firstExit: () => number | undefined;
  private _state: VmState;
  private stopping: Promise<void> | undefined;
  private released = false;
  private exitResolve!: (e: VmExit) => void;
  private readonly exitPromise = new Promise<VmExit>((res) => {
    this.exitResolve = res;
  });

  constructor(p: MachineParts) {
    super();
    this.config = p.config;
    this.kvm = p.kvm;
    this.vm = p.vm;
    this.mapping = p.mapping;
    this.memory = p.memory;
    this.platformSpec = p.platformSpec;
    this.platform = p.platform;
    this.devices = p.devices;
    this.vcpus = p.vcpus;
    this.cpuids = p.cpuids;
    this.store = p.store;
    this.report = p.report;
    this.origin = p.origin;
    this.firstExit = p.firstExitAt;
    this.image = p.origin.kind === 'restore' ? p.origin.image : undefined;
    this._state = p.origin.kind === 'restore' ? (p.origin.resumed ? 'running' : 'paused') : 'created';
    // Any vCPU's stop ends the VM (its own stop request included); one that came during the build
    // (a restored guest that ended at once) ends it now.
    p.report.onStop(() => {
      if (this._state !== 'stopping' && this._state !== 'exited') void this.stop();
    });
    if (p.report.exit !== undefined) void this.stop();
  }

  get state(): VmState {
    return this._state;
  }

  /** Whether stop() released everything (guest memory is unmapped then). */
  get isReleased(): boolean {
    return this.released;
  }

  get firstExitAt(): number | undefined {
    return this.firstExit();
  }

  start(): void {
    if (this._state !== 'created') throw new VireoError('VIREO_ERR_STATE', `cannot start a VM that is ${this._state}`);
    this._state = 'running';
    for (const v of this.vcpus) v.run();
    this.emit('started');
  }

  /** Resolves once every vCPU answered that it paused (or the VM ended meanwhile). */
  async pause(): Promise<void> {
    if (this._state !== 'running') throw new VireoError('VIREO_ERR_STATE', `cannot pause a VM that is ${this._state}`);
    await Promise.race([Promise.all(this.vcpus.map((v) => v.pause())), this.report.recorded]);
    if (this._state === 'running') {
      this._state = 'paused';
      this.emit('paused');
    }
  }

  async resume(): Promise<void> {
    if (this._state !== 'paused') throw new VireoError('VIREO_ERR_STATE', `cannot resume a VM that is ${this._state}`);
    await Promise.race([Promise.all(this.vcpus.map((v) => v.resume())), this.report.recorded]);
    if (this._state === 'paused') {
      this._state = 'running';
      this.emit('resumed');
    }
  }

  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this._state !== 'exited') this._state = 'stopping';
    this.report.stopRequested();
    await stopVcpus(this.vcpus);
    // Every vCPU thread is out of KVM_RUN: the store may close what they used.
    await this.release();
    this._state = 'exited';
    const info = this.report.final();
    this.exitResolve(info);
    this.emit('exited', info);
  }

  private async release(): Promise<void> {
    // The I/O thread touches guest memory and polls the devices' fds: it stops before the store
    // unmaps or closes any of them.
    await this.devices.stopThread();
    this.released = true;
    // Newest first: the vCPU threads given back, the console and devices' fds and backends, the
    // serial file, the VM fd with its vCPUs, guest memory, /dev/kvm.
    this.store.dispose();
  }

  waitForExit(): Promise<VmExit> {
    return this.exitPromise;
  }

  sendConsoleInput(bytes: Uint8Array): number {
    const console = this.released ? undefined : this.devices.host(consoleKind);
    if (!console) return this.sendSerialInput(bytes);
    try {
      return writeSync(console.inputFd, bytes);
    } catch {
      return 0; // the guest is not reading: a full pipe drops what was typed
    }
  }

  sendSerialInput(bytes: Uint8Array): number {
    return this.platform.serial.enqueueInput(bytes);
  }

  sendCtrlAltDel(): void {
    if (this._state !== 'running' && this._state !== 'paused')
      throw new VireoError(
        'VIREO_ERR_STATE',
        `cannot send Ctrl+Alt+Del to a VM that is ${this._state}: start it first`,
      );
    if (!this.platform.i8042.injectCtrlAltDel())
      throw new VireoError(
        'VIREO_ERR_STATE',
        'the guest has not read the previous keys from its i8042 output buffer yet: try again later',
      );
  }

  /** The balloon's host handle while the VM holds its devices (none once released). */
  private get balloon() {
    return this.released ? undefined : this.devices.balloon;
  }

  setBalloonTarget(mib: number): void {
    const b = this.balloon;
    if (!b) throw new VireoError('VIREO_ERR_STATE', 'this VM has no balloon device');
    validateBalloonTarget(mib, this.config.memMiB);
    b.setTargetMiB(mib);
    this.devices.wake();
  }

  setBalloonStatsInterval(seconds: number): void {
    const b = this.config.balloon;
    if (!this.balloon || !b) throw new VireoError('VIREO_ERR_STATE', 'this VM has no balloon device');
    validateStatsInterval(seconds);
    if (seconds === b.statsPollingIntervalS) return;
    if (b.statsPollingIntervalS === 0 || seconds === 0)
      throw new ConfigError(
        'cannot enable or disable balloon statistics after boot: give a nonzero interval, and enable statistics (stats=SECONDS) when the VM is created',
      );
    this.devices.setStatsInterval(seconds);
    this.config.balloon = { ...b, statsPollingIntervalS: seconds };
  }

  /**
   * Gives running drive `id` a new backing file (Vm.updateDrive): opened and checked here (the
   * drive's format or probed, locked, as read-only as the drive), taken by the device on the I/O thread once the
   * requests in flight on the old file are answered; the old file is closed after. A snapshot from
   * then on names the new path.
   */
  async updateDrive(id: string, path: string): Promise<void> {
    if (this._state !== 'running' && this._state !== 'paused')
      throw new VireoError('VIREO_ERR_STATE', `cannot change a drive of a VM that is ${this._state}`);
    const i = this.config.drives.findIndex((d) => d.id === id);
    const drive = this.config.drives[i];
    const entry = this.released ? undefined : this.devices.host(blockKind)?.get(id);
    if (drive === undefined || entry === undefined) throw new ConfigError(`this VM has no drive "${id}"`);
    if (typeof path !== 'string' || path === '') throw new ConfigError(`drive ${id}: give the new file's path`);
    if (path === drive.path)
      throw new ConfigError(
        `drive ${id} already uses ${path}: vireo does not reopen a drive's own file (give the new file's path)`,
      );
    // As the drive was opened: its format if one was given, else probed.
    const next = openDisk(path, drive.readOnly ?? false, drive.format);
    try {
      const swap: SwapDisk = { swap: next };
      await this.devices.command(`virtio-blk:${id}`, swap);
    } catch (e) {
      closeDisk(next);
      throw new ConfigError(`drive ${id}: cannot use ${path}: ${(e as Error).message}`);
    }
    const old = entry.disk;
    entry.disk = next;
    closeDisk(old);
    this.config.drives[i] = { ...drive, path };
  }

  /** Gives running drive `id` another rate limiter, its buckets full (undefined: none). */
  async setDriveRateLimiter(id: string, limiter: RateLimiterConfig | undefined): Promise<void> {
    if (this._state !== 'running' && this._state !== 'paused')
      throw new VireoError('VIREO_ERR_STATE', `cannot change a drive of a VM that is ${this._state}`);
    const i = this.config.drives.findIndex((d) => d.id === id);
    const drive = this.config.drives[i];
    if (drive === undefined || this.released) throw new ConfigError(`this VM has no drive "${id}"`);
    if (limiter !== undefined) validateRateLimiter(`drive ${id}: rate_limiter`, limiter);
    const limit: LimitDisk = { limit: limiter ?? null };
    await this.devices.command(`virtio-blk:${id}`, limit);
    this.config.drives[i] = { ...drive, rateLimiter: limiter };
  }

  /** Gives running interface `id` other rate limiters, their buckets full (undefined: none that way). */
  async setNetRateLimiters(
    id: string,
    rx: RateLimiterConfig | undefined,
    tx: RateLimiterConfig | undefined,
  ): Promise<void> {
    if (this._state !== 'running' && this._state !== 'paused')
      throw new VireoError('VIREO_ERR_STATE', `cannot change a network interface of a VM that is ${this._state}`);
    const i = this.config.nets.findIndex((n) => n.id === id);
    const net = this.config.nets[i];
    if (net === undefined || this.released) throw new ConfigError(`this VM has no network interface "${id}"`);
    if (rx !== undefined) validateRateLimiter(`network interface ${id}: rx_rate_limiter`, rx);
    if (tx !== undefined) validateRateLimiter(`network interface ${id}: tx_rate_limiter`, tx);
    const limits: LimitNet = { limits: { rx: rx ?? null, tx: tx ?? null } };
    await this.devices.command(`virtio-net:${id}`, limits);
    this.config.nets[i] = { ...net, rxRateLimiter: rx, txRateLimiter: tx };
  }

  /** Replaces a user-mode interface's host port forwards (Vm.setPortForwards says what it costs). */
  setPortForwards(id: string, forwards: PortForward[]): Promise<boolean> {
    const { passt, i, net } = this.userNet(id);
    if (!Array.isArray(forwards)) throw new ConfigError('port forwards must be a list');
    for (const f of forwards) validatePortForward(f);
    validateForwards(id, forwards);
    const copy = forwards.map((f) => ({ ...f }));
    this.config.nets[i] = { ...net, hostfwd: copy };
    return passt.setForwards(copy);
  }

  /** A user-mode interface's passt supervisor and its config's index, or a one-line error. */
  private userNet(id: string): { passt: PasstSupervisor; i: number; net: UserNetConfig } {
    const passt = this.released ? undefined : this.devices.host(netKind)?.get(id);
    const i = this.config.nets.findIndex((n) => n.id === id && n.kind === 'user');
    const net = this.config.nets[i];
    if (!passt || net?.kind !== 'user')
      throw new VireoError(
        'VIREO_ERR_STATE',
        `this VM has no user-mode network interface "${id}" (--net user,id=${id})`,
      );
    return { passt, i, net };
  }

  /** Replaces a user-mode interface's egress policy, from the guest's next frame on. */
  setEgressPolicy(id: string, policy: EgressPolicy): void {
    const { passt, i, net } = this.userNet(id);
    validateEgress(id, policy);
    const copy: EgressPolicy = {
      allow: [...(policy.allow ?? [])],
      deny: [...(policy.deny ?? [])],
      allowHost: policy.allowHost ?? false,
    };
    passt.setEgress({ allow: copy.allow ?? [], deny: copy.deny ?? [], allowHost: copy.allowHost ?? false });
    this.config.nets[i] = { ...net, egress: copy };
  }

  /** Frames the egress policy of user-mode interface `id` dropped, by reason. */
  egressDrops(id: string): Record<string, number> {
    return this.userNet(id).passt.egressDrops();
  }

  balloonStatus(): { targetMiB: number; actualMiB: number; stats: Record<string, number> } | undefined {
    const b = this.balloon;
    if (!b) return undefined;
    return { targetMiB: b.targetMiB(), actualMiB: b.actualMiB(), stats: b.latestStats() };
  }

  stats(): Record<StatField, number> {
    const s = this.platform.stats;
    return Object.fromEntries(STAT_FIELDS.map((f) => [f, s.get(f)])) as Record<StatField, number>;
  }

  deviceCounters(): Record<string, Record<string, number>> {
    return this.released ? this.devices.finalCounters : this.devices.liveCounters();
  }

  postCodes(): number[] {
    return PostCode.history(this.platform.postCodeState);
  }
}
