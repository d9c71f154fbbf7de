/**
 * Two builders over shared steps (Firecracker's builder.rs: build_microvm_for_boot and
 * build_microvm_from_snapshot): each returns a Machine whose every part is built, or releases exactly
 * what it made and throws. The steps, in the order both paths take them: KVM and the VM fd, guest
 * memory and its slots, the irqchip, the platform and the virtio devices, the vCPUs and their
 * threads; then boot loads a kernel and sets up each vCPU, and a restore puts every saved state back.
 */
import { setupFpu, setupLapic, setupMsrs } from '../arch/x86_64/cpu.js';
import { cpuidForVcpu } from '../arch/x86_64/cpuid.js';
import { ramRanges } from '../arch/x86_64/layout.js';
import { MiB } from '../common/address.js';
import { DisposableStore, toDisposable } from '../common/lifecycle.js';
import { type VmConfig, validateVmConfig } from '../config/index.js';
import { setCmosMemorySizes } from '../devices/legacy/cmos.js';
import { KVM_MEM_LOG_DIRTY_PAGES } from '../kvm/abi.js';
import { Kvm, type Vm as KvmVm } from '../kvm/kvm.js';
import type { CpuidEntry } from '../kvm/structs.js';
import { GuestMemory, GuestMemoryMapping } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { applyVcpu, applyVm, type VcpuState } from '../snapshot/state.js';
import { ExitReport } from '../vcpu/exit.js';
import { stopVcpus, VcpuHandle } from '../vcpu/handle.js';
import { loadKernel } from './boot.js';
import { openOutput } from './device-kind.js';
import { Machine, type MachineOrigin, type ResolvedVmConfig, resolveVmConfig } from './machine.js';
import {
  buildPlatform,
  createPlatformSpec,
  type Platform,
  type PlatformSpec,
  restorePlatformState,
} from './platform.js';
import { ResourceAllocator } from './resources.js';
import type { SnapshotBody } from './snapshot-body.js';
import { recycleVcpuThread, takeVcpuThread } from './vcpu-threads.js';
import { VirtioDevices } from './virtio-devices.js';

/** What a restore builds from: the checked state file's body and the open memory file. */
export interface SnapshotSource {
  body: SnapshotBody;
  memFd: number;
  memPath: string;
  /** Let the vCPUs run as soon as their threads are built. */
  resume: boolean;
  /** Advance the guest's kvmclock by the wall-clock time since the snapshot (KVM_CLOCK_REALTIME). */
  clockRealtime?: boolean | undefined;
}

/** The parts the shared steps made, before the path-specific steps. */
interface Assembly {
  kvm: Kvm;
  vm: KvmVm;
  mapping: GuestMemoryMapping;
  memory: GuestMemory;
  platformSpec: PlatformSpec;
  devices: VirtioDevices;
}

/**
 * One build in progress: the store every resource is added to the moment it is created, the exit
 * report the vCPU threads already talk to, and the undo of a build that failed.
 */
class Build {
  readonly store = new DisposableStore();
  readonly report = new ExitReport();
  firstExitAt: number | undefined;
  private vcpus: VcpuHandle[] = [];
  private devices: VirtioDevices | undefined;

  /** Whether this VM's threads confine themselves (kvm/seccomp-policy.ts). */
  readonly seccomp: boolean;

  constructor(readonly cfg: ResolvedVmConfig) {
    this.seccomp = cfg.seccomp !== false && sys.seccompEnvMode() !== 'off';
    warnIfUnconfined(this.seccomp);
  }

  /**
   * The shared steps up to the vCPUs. Restoring, guest memory is mapped from the memory file and the
   * device records go back into their shared state before any thread builds its buses over them.
   */
  assemble(snapshot: SnapshotSource | undefined): Assembly {
    const cfg = this.cfg;
    const store = this.store;
    const kvm = Kvm.open(cfg.kvmPath);
    // /dev/kvm last of all.
    store.add(toDisposable(() => kvm.close()));
    kvm.requireCapabilities();
    sys.installKickSignal();
    // Order: KVM holds the guest memory in its slots until the VM fd is closed, so the memory is
    // unmapped after it: its store is added before the VM's handle (a store disposes newest first).
    const memoryStore = store.add(new DisposableStore());
    const vm = kvm.createVm();
    // Closes the vCPU fds (and their kvm_run mappings) with the VM fd: every thread added after this
    // one is out of KVM_RUN and given back before it runs.
    store.add(toDisposable(() => vm.close()));
    vm.setTssAddr(0xfffbd000);
    const mapping = snapshot
      ? GuestMemoryMapping.mapFile(snapshot.memFd, snapshot.body.memory.regions, snapshot.memPath)
      : GuestMemoryMapping.allocate(ramRanges(cfg.memMiB * MiB));
    memoryStore.add(toDisposable(() => mapping.release()));
    // The VMM itself met a truncated memory file (the SIGBUS guard answered): this VM's RAM is gone.
    mapping.watchLoss((path) => this.report.vcpuStopped(0, { kind: 'memory-file-lost', path }));
    if (cfg.trackDirtyPages) mapping.trackDirty();
    const slotFlags = cfg.trackDirtyPages ? KVM_MEM_LOG_DIRTY_PAGES : 0;
    mapping.descriptors.forEach((d, slot) => {
      vm.setUserMemoryRegion(slot, d.gpa, d.size, d.hostAddr, slotFlags);
    });
    // Memory slots before the irqchip and PIT: once those exist, every slot change waits for an
    // SRCU grace period in KVM (measured 3–8 ms a slot here, against 0.2 ms before them).
    if (cfg.irqchip) {
      vm.createIrqchip();
      vm.createPit2();
    }
    const memory = new GuestMemory(mapping.descriptors);

    const platformSpec = createPlatformSpec(vm.fd, openOutput(cfg.serial, 'serial', store), cfg.irqchip);
    // Its fds and backends, each added as it opens; released by this store only after the machine
    // stopped the I/O thread (which polls them and touches guest memory). Restoring, each device gets
    // the window and GSI the snapshot's allocator recorded (one from before it: allocated afresh, in
    // slot order, as then).
    const resources = snapshot?.body.resources;
    const devices = store.add(
      new VirtioDevices(vm, resources ? ResourceAllocator.restore(resources) : new ResourceAllocator()),
    );
    this.devices = devices;
    devices.addAll(cfg, resources ? snapshot?.body.devices.virtio.map((v) => v.transport) : undefined, this.seccomp);
    // (validateVmConfig refused virtio devices without the in-kernel irqchip.)
    if (!devices.empty) platformSpec.virtio = devices.platformSpec();
    if (snapshot) {
      // Device registers as they were: each device's record goes back into its shared state.
      restorePlatformState(platformSpec, snapshot.body.devices);
      devices.restoreStates(snapshot.body.devices);
    }
    return { kvm, vm, mapping, memory, platformSpec, devices };
  }

  /**
   * Creates the vCPUs and gives each a thread; they attach while this thread goes on (kernel load,
   * state restore); none runs the guest before start() or, restoring, before every state is in place.
   */
  spawnVcpus(a: Pick<Assembly, 'vm' | 'mapping' | 'platformSpec'>): VcpuHandle[] {
    for (let id = 0; id < this.cfg.cpus; id++) {
      const vcpu = a.vm.createVcpu(id);
      const h = new VcpuHandle(
        vcpu,
        takeVcpuThread(),
        { vmFd: a.vm.fd, memory: a.mapping.descriptors, platform: a.platformSpec, seccomp: this.seccomp },
        {
          stopped: (i, stop) => this.report.vcpuStopped(i, stop),
          firstExit: (at) => {
            this.firstExitAt ??= at;
          },
        },
      );
      // Given back for another VM only once it reported 'stopped' (the machine's stop waited for
      // that, or terminated it); added after the VM's handle, so this runs before the vCPU fds close.
      this.store.add(
        toDisposable(() => {
          if (h.recyclable) recycleVcpuThread(h.worker);
        }),
      );
      this.vcpus.push(h);
    }
    return this.vcpus;
  }

  finish(a: Assembly, platform: Platform, cpuids: CpuidEntry[][], origin: MachineOrigin): Machine {
    return new Machine({
      ...a,
      platform,
      vcpus: this.vcpus,
      config: this.cfg,
      cpuids,
      store: this.store,
      report: this.report,
      origin,
      firstExitAt: () => this.firstExitAt,
    });
  }

  /** Undoes a failed build: threads out of the VM first, then the I/O thread, then every resource. */
  async abort(): Promise<void> {
    this.report.stopRequested();
    await stopVcpus(this.vcpus);
    await this.devices?.stopThread();
    this.store.dispose();
  }
}

/**
 * Loud, every VM: a VM without seccomp filters (--no-seccomp, seccomp: false, VIREO_SECCOMP=off) gives a
 * guest that escapes into the VMM every system call of the process.
 */
function warnIfUnconfined(seccomp: boolean): void {
  const env = sys.seccompEnvMode();
  if (!seccomp || env === 'off')
    process.stderr.write(
      `vireo: warning: seccomp filters are OFF for this VM (${seccomp ? 'VIREO_SECCOMP=off' : '--no-seccomp / seccomp: false'}): ` +
        'a guest that escapes into the VMM can make any system call\n',
    );
  else if (env === 'log')
    process.stderr.write('vireo: warning: seccomp filters only log (VIREO_SECCOMP=log): nothing off-list is refused\n');
}

async function building(cfg: ResolvedVmConfig, steps: (b: Build) => Promise<Machine>): Promise<Machine> {
  const b = new Build(cfg);
  try {
    return await steps(b);
  } catch (e) {
    await b.abort();
    throw e;
  }
}

/** A machine booting `config`'s kernel: every part built, the kernel loaded, the vCPUs parked until start(). */
export function buildForBoot(config: VmConfig): Promise<Machine> {
  const cfg = resolveVmConfig(config);
  validateVmConfig(cfg, true);
  return building(cfg, async (b) => {
    const a = b.assemble(undefined);
    const vcpus = b.spawnVcpus(a);
    const platform = buildPlatform(a.platformSpec, a.memory);
    const low = a.mapping.descriptors.find((d) => d.gpa === 0)?.size ?? 0;
    setCmosMemorySizes(platform.cmosState, low, cfg.memMiB * MiB - low);
    const supported = a.kvm.supportedCpuid();
    const tscDeadline = cfg.irqchip && a.kvm.checkExtension('KVM_CAP_TSC_DEADLINE_TIMER') > 0;
    const cpuids: CpuidEntry[][] = [];
    let refusedMsrs: number[] = [];
    for (const { vcpu } of vcpus) {
      const cpuid = cpuidForVcpu(supported, vcpu.id, cfg.cpus, { tscDeadline });
      cpuids.push(cpuid);
      vcpu.setCpuid(cpuid);
      refusedMsrs = setupMsrs(vcpu);
      setupFpu(vcpu);
      if (cfg.irqchip) setupLapic(vcpu);
    }
    const boot = loadKernel(a.memory, (vcpus[0] as VcpuHandle).vcpu, {
      kernel: cfg.kernel,
      initrd: cfg.initrd,
      cmdline: cfg.cmdline,
      cpus: cfg.cpus,
      virtioMmio: a.devices.acpi(),
    });
    await Promise.all([...vcpus.map((v) => v.ready), a.devices.start(a.mapping.descriptors, b.seccomp)]);
    return b.finish(a, platform, cpuids, { kind: 'boot', boot, refusedMsrs });
  });
}

/**
 * A machine restored from a snapshot: guest memory mapped from the memory file, every device record,
 * the VM-wide state and each vCPU's put back; paused, or running when `source.resume`.
 */
export function buildFromSnapshot(config: VmConfig, source: SnapshotSource): Promise<Machine> {
  const cfg = resolveVmConfig(config);
  validateVmConfig(cfg, false);
  return building(cfg, async (b) => {
    const body = source.body;
    const a = b.assemble(source);
    // The I/O thread (a new worker: tens of ms) starts first, to load while the rest is built.
    const devicesReady = a.devices.start(
      a.mapping.descriptors,
      b.seccomp,
      body.devices.virtio.map((v) => v.side),
    );
    devicesReady.catch(() => undefined); // awaited below; a failure before that must not go unhandled
    const vcpus = b.spawnVcpus(a);
    const platform = buildPlatform(a.platformSpec, a.memory);
    // The VM-wide state first (the LAPICs' timers need the irqchip), then each vCPU.
    if (body.vm && cfg.irqchip) applyVm(a.vm, body.vm, source.clockRealtime === true);
    const cpuids = vcpus.map((v, i) => {
      const st = body.vcpus[i] as VcpuState;
      applyVcpu(v.vcpu, st);
      return st.cpuid;
    });
    await devicesReady;
    a.devices.reassertInterrupts();
    // Every state is in place: a resumed VM's threads enter the guest as soon as each is built,
    // without waiting for the round trip of its 'ready' message.
    if (source.resume) for (const v of vcpus) v.runWhenReady();
    await Promise.all(vcpus.map((v) => v.ready));
    return b.finish(a, platform, cpuids, { kind: 'restore', image: body.memory.id, resumed: source.resume });
  });
}
