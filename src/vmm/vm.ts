/**
 * The public face of a virtual machine: `Vm.create(config)` boots one, `Vm.restore(opts)` brings one
 * back from a snapshot. Everything here forwards to a built Machine (machine.ts): the builders
 * (builder.ts) make it, persist.ts snapshots and restores it, the vCPU handles (vcpu/handle.ts)
 * run it. Every resource has one owner and is released by stop(), also after a failed start.
 *
 * Lifecycle: created → start() → running ⇄ pause()/resume() → paused; a restore begins paused (or
 * running, with `resume`). Any vCPU that stops (the guest powered off, crashed, wrote the debug-exit
 * port…) ends the VM: 'exited' carries the first reason, and waitForExit() resolves with it once
 * every thread is out and every fd, mapping and thread released.
 */
import { AgentClient } from '../agent/client.js';
import { TypedEmitter } from '../common/emitter.js';
import { VireoError } from '../common/errors.js';
import type { EgressPolicy, PortForward, VmConfig } from '../config/index.js';
import type { RateLimiterConfig } from '../devices/virtio/rate-limiter.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { VmExit } from '../vcpu/exit.js';
import type { BootResult } from './boot.js';
import { buildForBoot } from './builder.js';
import type { Machine, ResolvedVmConfig, VmEvents, VmState } from './machine.js';
import {
  type RestoreOptions,
  restoreMachine,
  type SnapshotOptions,
  type SnapshotResult,
  snapshotMachine,
} from './persist.js';
import type { StatField } from './platform.js';

export type { SerialConfig, VmConfig } from '../config/index.js';
export { MAX_STATS_INTERVAL_S } from '../config/index.js';
export { describeExit, type VmExit } from '../vcpu/exit.js';
export type { VmEvents, VmState } from './machine.js';
export {
  prewarmRestorePath,
  type RestoreOptions,
  type RestoreOverrides,
  type SnapshotOptions,
  type SnapshotResult,
  VIREO_VERSION,
} from './persist.js';
export { prewarmIoThread, prewarmVcpuThreads } from './vcpu-threads.js';

export class Vm extends TypedEmitter<VmEvents> {
  private constructor(private readonly m: Machine) {
    super();
    m.on('started', () => this.emit('started'));
    m.on('paused', () => this.emit('paused'));
    m.on('resumed', () => this.emit('resumed'));
    m.on('exited', (e) => this.emit('exited', e));
    m.on('error', (e) => this.emit('error', e));
  }

  /** Build a VM from a config: KVM objects, memory, platform, kernel loaded, vCPU threads parked. */
  static async create(config: VmConfig): Promise<Vm> {
    return new Vm(await buildForBoot(config));
  }

  /**
   * A VM restored from a snapshot (taken by this or another vireo process), paused unless
   * `resume`. Guest memory is mapped from the memory file MAP_PRIVATE, so restoring costs the same
   * for any guest size and the file is never written.
   */
  static async restore(opts: RestoreOptions): Promise<Vm> {
    return new Vm(await restoreMachine(opts));
  }

  get state(): VmState {
    return this.m.state;
  }

  /** The configuration the VM was built from, defaults filled in. */
  get config(): ResolvedVmConfig {
    return this.m.config;
  }

  private agentClient: AgentClient | undefined;

  /**
   * The guest agent (vireo-agent, envd's protocol) behind this VM's hybrid vsock socket, with
   * AGENT_DEFAULT_TIMEOUTS; `AgentClient.forVsock(vm.config.vsock.udsPath, opts)` for other timeouts.
   * It holds no connection: each call opens its own.
   */
  get agent(): AgentClient {
    const vsock = this.config.vsock;
    if (!vsock)
      throw new VireoError(
        'VIREO_ERR_STATE',
        'this VM has no vsock device: create it with vsock: { cid, udsPath } to reach its agent',
      );
    this.agentClient ??= AgentClient.forVsock(vsock.udsPath);
    return this.agentClient;
  }

  /** Guest memory, until stop() unmaps it. */
  get memory(): GuestMemory | undefined {
    return this.m.isReleased ? undefined : this.m.memory;
  }

  /** How the kernel was loaded (a restored VM loaded none). */
  get boot(): BootResult | undefined {
    return this.m.origin.kind === 'boot' ? this.m.origin.boot : undefined;
  }

  /** Boot MSRs this host's KVM refused (PVM does not model every MSR). */
  get refusedMsrs(): number[] {
    return this.m.origin.kind === 'boot' ? this.m.origin.refusedMsrs : [];
  }

  /** When the first vCPU exit happened (epoch ms, sub-ms precision): boot timing. */
  get firstExitAt(): number | undefined {
    return this.m.firstExitAt;
  }

  /** Let every vCPU run. */
  start(): void {
    this.m.start();
  }

  /** Pause every vCPU; resolves once each has answered that it left KVM_RUN. */
  pause(): Promise<void> {
    return this.m.pause();
  }

  resume(): Promise<void> {
    return this.m.resume();
  }

  /** Stop every vCPU and release everything. Never hangs: kicks repeat until each thread is out. */
  stop(): Promise<void> {
    return this.m.stop();
  }

  /** Resolves when the VM has ended and every resource is released. */
  waitForExit(): Promise<VmExit> {
    return this.m.waitForExit();
  }

  /**
   * Writes a snapshot of a paused VM: state to `statePath`, guest memory to `memPath` (sparse), both
   * through a temporary name (persist.ts says what it holds).
   */
  snapshot(opts: SnapshotOptions): Promise<SnapshotResult> {
    return snapshotMachine(this.m, opts);
  }

  /** Type bytes into the console: hvc0 when the VM has a virtio-console, else the serial port. */
  sendConsoleInput(bytes: Uint8Array): number {
    return this.m.sendConsoleInput(bytes);
  }

  /** Type bytes into the serial console (as from a terminal). */
  sendSerialInput(bytes: Uint8Array): number {
    return this.m.sendSerialInput(bytes);
  }

  /**
   * Press and release Ctrl+Alt+Del on the guest's keyboard (Firecracker's SendCtrlAltDel): the
   * scancodes go into the i8042's output buffer with IRQ 1 for each byte. Linux with its default
   * ctrl-alt-del setting reboots (with reboot=k that ends the VM with status 0); systemd starts
   * ctrl-alt-del.target. The VM must have started.
   */
  sendCtrlAltDel(): void {
    this.m.sendCtrlAltDel();
  }

  /** Set the balloon's target (MiB the guest should give back). */
  setBalloonTarget(mib: number): void {
    this.m.setBalloonTarget(mib);
  }

  /**
   * Change how often the balloon asks the guest for statistics (Firecracker's PATCH
   * /balloon/statistics): only when statistics were enabled at boot, and never to 0 (the guest
   * negotiated the statistics queue at boot; it cannot be added or removed now).
   */
  setBalloonStatsInterval(seconds: number): void {
    this.m.setBalloonStatsInterval(seconds);
  }

  /** The balloon's target and actual size (MiB) and the guest's latest statistics. */
  balloonStatus(): { targetMiB: number; actualMiB: number; stats: Record<string, number> } | undefined {
    return this.m.balloonStatus();
  }

  /**
   * Gives the running drive `id` a new backing file (Firecracker's PATCH /drives/{id} with
   * `path_on_host`): requests in flight finish against the old file, then the guest sees the new one
   * and its capacity (a configuration interrupt). The file is opened as the drive was (its format, or
   * probed), locked, and attached as read-only as the drive. Throws a one-line ConfigError when it cannot be used (the drive
   * keeps its old file).
   */
  updateDrive(id: string, path: string): Promise<void> {
    return this.m.updateDrive(id, path);
  }

  /**
   * Gives the running drive `id` another rate limiter (Firecracker's PATCH /drives/{id} rate_limiter),
   * its buckets full; undefined removes it. Requests the old one held wait for the new one.
   */
  setDriveRateLimiter(id: string, limiter: RateLimiterConfig | undefined): Promise<void> {
    return this.m.setDriveRateLimiter(id, limiter);
  }

  /**
   * Gives the running interface `id` other rate limiters (Firecracker's PATCH /network-interfaces
   * rx_rate_limiter, tx_rate_limiter), their buckets full; undefined: none that way. Frames beyond a
   * limit wait (tx in the guest's ring, rx in the backend), none is dropped.
   */
  setNetRateLimiters(id: string, rx: RateLimiterConfig | undefined, tx: RateLimiterConfig | undefined): Promise<void> {
    return this.m.setNetRateLimiters(id, rx, tx);
  }

  /**
   * Replaces the host port forwards of the user-mode interface `id` (`--net user`). passt (2023) takes
   * its forwards only on its command line and has no control socket, so vireo starts a new passt with
   * them: the guest's link goes down and up, and connections through the old passt are reset. Resolves
   * true once the new passt serves (false if it did not within 30 s: it keeps being restarted).
   */
  setPortForwards(id: string, forwards: PortForward[]): Promise<boolean> {
    return this.m.setPortForwards(id, forwards);
  }

  /**
   * Replaces the egress policy of the user-mode interface `id` (backends/egress.ts says how it
   * applies); it holds from the guest's next frame on, without restarting passt.
   */
  setEgressPolicy(id: string, policy: EgressPolicy): void {
    this.m.setEgressPolicy(id, policy);
  }

  /** Frames from the guest the egress policy of interface `id` dropped, by reason. */
  egressDrops(id: string): Record<string, number> {
    return this.m.egressDrops(id);
  }

  /** Shared counters: exits by kind and unclaimed accesses. */
  stats(): Record<StatField, number> {
    return this.m.stats();
  }

  /** Device counters by device: current while the VM runs (the I/O thread publishes them), final once it has exited. */
  deviceCounters(): Record<string, Record<string, number>> {
    return this.m.deviceCounters();
  }

  /** POST codes written to port 0x80, oldest first. */
  postCodes(): number[] {
    return this.m.postCodes();
  }
}
