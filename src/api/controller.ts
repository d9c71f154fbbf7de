/**
 * The microVM behind the API: the pre-boot configuration as Firecracker's resources (boot source,
 * machine config, drives, ...), turned into a VmConfig on InstanceStart (Vm.create, then start), and
 * the running VM's lifecycle (pause, resume, snapshots, exit). Request handlers in resources/ validate
 * and then change this state; the rules about *when* a request is allowed live here, worded as
 * Firecracker words them.
 */
import { TypedEmitter } from '../common/emitter.js';
import {
  type BalloonConfig,
  type DriveConfig,
  type NetConfig,
  parseMac,
  type SerialConfig,
  type VmConfig,
} from '../config/index.js';
import { formatMac } from '../devices/virtio/net.js';
import type { RateLimiterConfig } from '../devices/virtio/rate-limiter.js';
import type { Vm, VmExit } from '../vmm/vm.js';
import { badRequest, notSupportedPostBoot, notSupportedPreBoot, stateError } from './errors.js';
import { ApiLogger } from './logger.js';
import { ApiMetrics, DEFAULT_METRICS_INTERVAL_MS, snakeCase } from './metrics.js';
import { apiRateLimiter, rateLimiterConfig } from './routes.js';
import { apiVersion } from './spec.js';
import type {
  Balloon,
  BootSource,
  Drive,
  EntropyDevice,
  InstanceInfo,
  InstanceState,
  MachineConfiguration,
  NetworkInterface,
  SerialDevice,
  SnapshotCreateParams,
  SnapshotLoadParams,
  Vsock,
} from './types.js';

/**
 * Firecracker's default kernel command line (its DEFAULT_KERNEL_CMDLINE, plus the `pci=off` it adds
 * when PCI is not enabled, which vireo never has), used when PUT /boot-source gives no boot_args.
 */
export const FIRECRACKER_DEFAULT_BOOT_ARGS =
  'reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce pci=off';

export const DEFAULT_INSTANCE_ID = 'anonymous-instance';

/**
 * `app_name` in GET /, as Firecracker answers it: clients that check who answers see Firecracker's API
 * (vireo's own identity is in `vireo --version`).
 */
export const APP_NAME = 'Firecracker';

export type Phase = 'configuring' | 'running' | 'paused' | 'exited';

export interface ControllerOptions {
  /** Instance id (GET /, logs, metrics); Firecracker's --id. */
  id?: string;
  /** Where the serial console goes unless PUT /serial says otherwise (default: discarded). */
  serial?: SerialConfig;
  kvmPath?: string;
  /** Report the time from InstanceStart to the guest's first exit (Firecracker's --boot-timer). */
  bootTimer?: boolean;
  /** Interval of the periodic metrics lines (Firecracker: 60 s). */
  metricsIntervalMs?: number;
  /** Called with each new Vm before it runs (to attach a console, say). */
  onVm?: (vm: Vm) => void;
  /** Called before a VM is built or restored (vireo-firecracker installs its process-wide seccomp filter). */
  beforeVm?: () => void | Promise<void>;
}

export type ControllerEvents = {
  started: [Vm];
  exited: [VmExit];
};

type MachineState = Required<Omit<MachineConfiguration, 'cpu_template'>> & Pick<MachineConfiguration, 'cpu_template'>;

const DEFAULT_MACHINE: MachineState = {
  vcpu_count: 1,
  mem_size_mib: 128,
  smt: false,
  track_dirty_pages: false,
  huge_pages: 'None',
};

type VmmModule = typeof import('../vmm/vm.js');
let vmmModule: Promise<VmmModule> | undefined;

/**
 * The VMM (KVM through koffi, the devices, snapshots): loaded on first need, not with the API, so
 * that the socket answers before it is (it takes tens of ms). vireo-firecracker preloads it as soon
 * as the socket has answered, so InstanceStart and /snapshot/load find it loaded.
 */
export function loadVmm(): Promise<VmmModule> {
  vmmModule ??= import('../vmm/vm.js');
  return vmmModule;
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The entropy device's settings: true without a limiter (the shape VmConfig.rng had before one). */
function entropyConfig(e: EntropyDevice): true | { rateLimiter: RateLimiterConfig } {
  const rateLimiter = rateLimiterConfig(e.rate_limiter);
  return rateLimiter === undefined ? true : { rateLimiter };
}

export class VmController extends TypedEmitter<ControllerEvents> {
  readonly id: string;
  readonly logger: ApiLogger;
  readonly metrics: ApiMetrics;
  phase: Phase = 'configuring';
  vm: Vm | undefined;
  exit: VmExit | undefined;
  machine: MachineState = { ...DEFAULT_MACHINE };
  bootSource: BootSource | undefined;
  /** In the order they were first put (the root device goes first at start, as /dev/vda). */
  readonly drives = new Map<string, Drive>();
  readonly nets = new Map<string, NetworkInterface>();
  vsock: Vsock | undefined;
  balloon: Balloon | undefined;
  entropy: EntropyDevice | undefined;
  serial: SerialDevice | undefined;
  /** A boot-specific resource was configured: loading a snapshot is no longer allowed. */
  bootPath = false;
  restored = false;

  constructor(readonly options: ControllerOptions = {}) {
    super();
    this.id = options.id ?? DEFAULT_INSTANCE_ID;
    this.logger = new ApiLogger(this.id);
    this.metrics = new ApiMetrics(this.id, {
      vcpu: () =>
        this.vm ? Object.fromEntries(Object.entries(this.vm.stats()).map(([k, v]) => [snakeCase(k), v])) : {},
      devices: () => this.vm?.deviceCounters() ?? {},
      state: () => this.instanceState(),
      log: () => ({ ...this.logger.counters }),
    });
  }

  get started(): boolean {
    return this.phase !== 'configuring';
  }

  get metricsIntervalMs(): number {
    return this.options.metricsIntervalMs ?? DEFAULT_METRICS_INTERVAL_MS;
  }

  /** Configuration requests: only before InstanceStart (or a snapshot load). */
  requirePreBoot(): void {
    if (this.started) throw notSupportedPostBoot();
  }

  /** Runtime requests: only once the VM exists and while it has not ended. */
  requireVm(): Vm {
    if (this.phase === 'configuring' || !this.vm) throw notSupportedPreBoot();
    if (this.phase === 'exited') throw stateError(`The microVM has stopped: ${this.exit?.message ?? 'it exited'}.`);
    return this.vm;
  }

  instanceState(): InstanceState {
    if (this.phase === 'configuring') return 'Not started';
    return this.phase === 'paused' ? 'Paused' : 'Running';
  }

  instanceInfo(): InstanceInfo {
    return { app_name: APP_NAME, id: this.id, state: this.instanceState(), vmm_version: apiVersion() };
  }

  /** MachineConfig as Firecracker serializes it (field order; cpu_template only when there is one). */
  machineConfig(): MachineConfiguration {
    const m = this.machine;
    return {
      vcpu_count: m.vcpu_count,
      mem_size_mib: m.mem_size_mib,
      smt: m.smt,
      ...(m.cpu_template !== undefined && m.cpu_template !== 'None' ? { cpu_template: m.cpu_template } : {}),
      track_dirty_pages: m.track_dirty_pages,
      huge_pages: m.huge_pages,
    };
  }

  /**
   * GET /vm/config as Firecracker writes it (its VmmConfig, serialized from the resources): every
   * section in its order, an absent one as null (an empty list for drives, interfaces and pmem), each
   * device with all its fields, unset ones null. As in Firecracker, logger and metrics are always
   * null (it does not report them back), and so is everything vireo does not have (cpu-config,
   * memory-hotplug, mmds-config); a restored VM has the empty boot source Firecracker reports.
   */
  fullConfig(): Record<string, unknown> {
    const boot = !this.restored ? this.bootSource : undefined;
    return {
      balloon: this.balloon ? this.balloonConfig() : null,
      drives: [...this.drives.values()].map((d) => ({
        drive_id: d.drive_id,
        partuuid: d.partuuid ?? null,
        is_root_device: d.is_root_device,
        cache_type: d.cache_type ?? 'Unsafe',
        is_read_only: d.is_read_only ?? false,
        path_on_host: d.path_on_host ?? null,
        rate_limiter: d.rate_limiter ?? null,
        io_engine: d.io_engine ?? 'Sync',
        socket: null,
      })),
      'boot-source': {
        kernel_image_path: boot?.kernel_image_path ?? '',
        initrd_path: boot?.initrd_path ?? null,
        boot_args: boot?.boot_args ?? null,
      },
      'cpu-config': null,
      logger: null,
      'machine-config': this.machineConfig(),
      metrics: null,
      'memory-hotplug': null,
      'mmds-config': null,
      'network-interfaces': [...this.nets.values()].map((n) => ({
        iface_id: n.iface_id,
        host_dev_name: n.host_dev_name,
        guest_mac: n.guest_mac ?? null,
        ...(n.mtu !== undefined ? { mtu: n.mtu } : {}),
        rx_rate_limiter: n.rx_rate_limiter ?? null,
        tx_rate_limiter: n.tx_rate_limiter ?? null,
      })),
      pmem: [],
      vsock: this.vsock ? { guest_cid: this.vsock.guest_cid, uds_path: this.vsock.uds_path } : null,
      entropy: this.entropy ? { rate_limiter: this.entropy.rate_limiter ?? null } : null,
    };
  }

  /** The balloon as configured, with the current target once the VM runs. */
  balloonConfig(): Balloon {
    const b = this.balloon;
    if (!b) throw badRequest('Balloon config error: No balloon device found.');
    const status = this.vm?.balloonStatus();
    return {
      amount_mib: status ? status.targetMiB : b.amount_mib,
      deflate_on_oom: b.deflate_on_oom,
      stats_polling_interval_s: b.stats_polling_interval_s ?? 0,
      free_page_hinting: false,
      free_page_reporting: false,
    };
  }

  /** The VmConfig InstanceStart boots (Firecracker's builder: root device first, root= on the command line). */
  vmConfig(): VmConfig {
    const boot = this.bootSource;
    if (!boot) throw badRequest('Start microvm error: Cannot start microvm without kernel configuration.');
    const all = [...this.drives.values()];
    const root = all.find((d) => d.is_root_device);
    const ordered = root ? [root, ...all.filter((d) => d !== root)] : all;
    let cmdline = boot.boot_args ?? FIRECRACKER_DEFAULT_BOOT_ARGS;
    if (root) {
      cmdline += root.partuuid ? ` root=PARTUUID=${root.partuuid}` : ' root=/dev/vda';
      cmdline += root.is_read_only ? ' ro' : ' rw';
    }
    const drives: DriveConfig[] = ordered.map((d) => ({
      id: d.drive_id,
      path: d.path_on_host ?? '',
      readOnly: d.is_read_only ?? false,
      rateLimiter: rateLimiterConfig(d.rate_limiter),
    }));
    const nets: NetConfig[] = [...this.nets.values()].map((n) => {
      const mac = n.guest_mac === undefined ? undefined : parseMac(n.guest_mac);
      return {
        id: n.iface_id,
        tap: n.host_dev_name,
        mac: mac ? [...mac] : undefined,
        mtu: n.mtu,
        rxRateLimiter: rateLimiterConfig(n.rx_rate_limiter),
        txRateLimiter: rateLimiterConfig(n.tx_rate_limiter),
      };
    });
    const balloon: BalloonConfig | undefined = this.balloon && {
      amountMiB: this.balloon.amount_mib,
      deflateOnOom: this.balloon.deflate_on_oom,
      statsPollingIntervalS: this.balloon.stats_polling_interval_s ?? 0,
    };
    return {
      kernel: boot.kernel_image_path,
      initrd: boot.initrd_path,
      cmdline,
      memMiB: this.machine.mem_size_mib,
      cpus: this.machine.vcpu_count,
      serial: this.serialConfig(),
      kvmPath: this.options.kvmPath,
      drives,
      nets,
      rng: this.entropy === undefined ? false : entropyConfig(this.entropy),
      balloon,
      vsock: this.vsock && { cid: this.vsock.guest_cid, udsPath: this.vsock.uds_path },
      trackDirtyPages: this.machine.track_dirty_pages ?? false,
    };
  }

  private serialConfig(): SerialConfig {
    const path = this.serial?.serial_out_path;
    return path !== undefined ? { kind: 'file', path } : (this.options.serial ?? { kind: 'none' });
  }

  /** InstanceStart: build the VM from the configuration and let it run. */
  async start(): Promise<void> {
    this.requirePreBoot();
    const config = this.vmConfig();
    const t0 = performance.now();
    let vm: Vm;
    try {
      const { Vm } = await loadVmm();
      await this.options.beforeVm?.();
      vm = await Vm.create(config);
    } catch (e) {
      this.logger.error('vmm', `InstanceStart failed: ${message(e)}`);
      throw badRequest(`Start microvm error: ${message(e)}`);
    }
    this.adopt(vm, 'running');
    vm.start();
    this.logger.info('vmm', 'microVM started', { vcpus: config.cpus, mem_mib: config.memMiB });
    if (this.options.bootTimer) this.reportBootTime(vm, t0);
    this.emit('started', vm);
  }

  private reportBootTime(vm: Vm, t0: number): void {
    const deadline = Date.now() + 60_000;
    const check = (): void => {
      if (vm.firstExitAt !== undefined) {
        const ms = vm.firstExitAt - performance.timeOrigin - t0;
        const line = `Guest-boot-time = ${Math.round(ms * 1000)} us ${Math.round(ms)} ms (InstanceStart to the guest's first exit)`;
        this.logger.info('vmm::boot_timer', line);
        process.stderr.write(`vireo: boot timer: ${line}\n`);
      } else if (this.phase !== 'exited' && Date.now() < deadline) setTimeout(check, 5).unref();
    };
    check();
  }

  /** Takes ownership of a new Vm (started or restored). */
  private adopt(vm: Vm, phase: 'running' | 'paused'): void {
    this.vm = vm;
    this.phase = phase;
    vm.on('exited', (exit) => {
      this.phase = 'exited';
      this.exit = exit;
      this.logger.info('vmm', `microVM exited: ${exit.message}`, { status: exit.status });
      this.emit('exited', exit);
    });
    this.options.onVm?.(vm);
  }

  /** Firecracker's latencies_us: the API-level and the VMM-level durations of an operation, in µs. */
  private latency(name: string, apiStart: number, vmmStart: number, vmmEnd: number): void {
    this.metrics.store('latencies_us', name, (performance.now() - apiStart) * 1000);
    this.metrics.store('latencies_us', `vmm_${name}`, (vmmEnd - vmmStart) * 1000);
  }

  async pause(): Promise<void> {
    const t0 = performance.now();
    const vm = this.requireVm();
    if (this.phase === 'paused') return;
    const t1 = performance.now();
    try {
      await vm.pause();
    } catch (e) {
      throw stateError(`Failed to pause the microVM: ${message(e)}`);
    }
    this.latency('pause_vm', t0, t1, performance.now());
    if (vm.state === 'paused') this.phase = 'paused';
    this.logger.info('vmm', 'microVM paused');
  }

  async resume(): Promise<void> {
    const t0 = performance.now();
    const vm = this.requireVm();
    if (this.phase === 'running') return;
    const t1 = performance.now();
    try {
      await vm.resume();
    } catch (e) {
      throw stateError(`Failed to resume the microVM: ${message(e)}`);
    }
    this.latency('resume_vm', t0, t1, performance.now());
    if (vm.state === 'running') this.phase = 'running';
    this.logger.info('vmm', 'microVM resumed');
  }

  async createSnapshot(p: SnapshotCreateParams): Promise<void> {
    const t0 = performance.now();
    const vm = this.requireVm();
    if (this.phase !== 'paused')
      throw stateError(
        'Create snapshot error: Cannot create a snapshot of a running microVM: pause it first (PATCH /vm with {"state": "Paused"}).',
      );
    const type = p.snapshot_type ?? 'Full';
    if (type === 'Diff' && !this.machine.track_dirty_pages)
      throw badRequest(
        'Create snapshot error: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.',
      );
    const t1 = performance.now();
    try {
      await vm.snapshot({ statePath: p.snapshot_path, memPath: p.mem_file_path, type });
    } catch (e) {
      throw badRequest(`Create snapshot error: ${message(e)}`);
    }
    this.latency(type === 'Diff' ? 'diff_create_snapshot' : 'full_create_snapshot', t0, t1, performance.now());
    this.logger.info('vmm', `snapshot created (${type})`, { snapshot_path: p.snapshot_path });
  }

  async loadSnapshot(p: SnapshotLoadParams, memPath: string): Promise<void> {
    const t0 = performance.now();
    this.requirePreBoot();
    if (this.bootPath)
      throw stateError(
        'Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.',
      );
    let vm: Vm;
    const t1 = performance.now();
    try {
      const { Vm } = await loadVmm();
      await this.options.beforeVm?.();
      vm = await Vm.restore({
        statePath: p.snapshot_path,
        memPath,
        resume: p.resume_vm ?? false,
        trackDirtyPages: p.track_dirty_pages ?? p.enable_diff_snapshots ?? false,
        kvmPath: this.options.kvmPath,
        serial: this.serialConfig(),
        clockRealtime: p.clock_realtime ?? false,
        overrides: {
          ...(p.vsock_override ? { vsockUdsPath: p.vsock_override.uds_path } : {}),
          ...(p.network_overrides?.length
            ? { nets: Object.fromEntries(p.network_overrides.map((n) => [n.iface_id, { tap: n.host_dev_name }])) }
            : {}),
        },
      });
    } catch (e) {
      throw badRequest(`Load snapshot error: Failed to restore from snapshot: ${message(e)}`);
    }
    const t2 = performance.now();
    this.restored = true;
    this.adoptRestoredDevices(vm);
    this.machine = {
      ...this.machine,
      vcpu_count: vm.config.cpus,
      mem_size_mib: vm.config.memMiB,
      track_dirty_pages: p.track_dirty_pages ?? p.enable_diff_snapshots ?? false,
    };
    this.adopt(vm, vm.state === 'running' ? 'running' : 'paused');
    this.latency('load_snapshot', t0, t1, t2);
    this.logger.info('vmm', 'snapshot loaded', { snapshot_path: p.snapshot_path, resumed: this.phase === 'running' });
    this.emit('started', vm);
  }

  /** A restored VM's devices, in the API's shapes (GET /vm/config, PATCH on drives and interfaces). */
  private adoptRestoredDevices(vm: Vm): void {
    const c = vm.config;
    // Which drive was the root device is not in the snapshot: none is reported as one.
    for (const d of c.drives)
      this.drives.set(d.id, {
        drive_id: d.id,
        is_root_device: false,
        path_on_host: d.path,
        is_read_only: d.readOnly ?? false,
        ...(d.rateLimiter ? { rate_limiter: apiRateLimiter(d.rateLimiter) } : {}),
      });
    // A user-mode network (passt) has no Firecracker shape: the API speaks of TAPs only.
    for (const n of c.nets)
      if (n.kind !== 'user')
        this.nets.set(n.id, {
          iface_id: n.id,
          host_dev_name: n.tap,
          ...(n.mac ? { guest_mac: formatMac(Uint8Array.from(n.mac)) } : {}),
          ...(n.mtu !== undefined ? { mtu: n.mtu } : {}),
          ...(n.rxRateLimiter ? { rx_rate_limiter: apiRateLimiter(n.rxRateLimiter) } : {}),
          ...(n.txRateLimiter ? { tx_rate_limiter: apiRateLimiter(n.txRateLimiter) } : {}),
        });
    if (c.vsock) this.vsock = { guest_cid: c.vsock.cid, uds_path: c.vsock.udsPath };
    if (c.balloon)
      this.balloon = {
        amount_mib: c.balloon.amountMiB,
        deflate_on_oom: c.balloon.deflateOnOom,
        stats_polling_interval_s: c.balloon.statsPollingIntervalS,
      };
    if (c.rng)
      this.entropy =
        typeof c.rng === 'object' && c.rng.rateLimiter ? { rate_limiter: apiRateLimiter(c.rng.rateLimiter) } : {};
  }

  /** Stops the VM (if any) and closes the log and metrics files after a last metrics line. */
  async shutdown(): Promise<void> {
    if (this.vm && this.phase !== 'exited') await this.vm.stop();
    this.metrics.close(true);
    this.logger.close();
  }
}
