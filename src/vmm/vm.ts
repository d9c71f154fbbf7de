/**
 * A running virtual machine: KVM objects, guest memory, the platform and one worker thread per
 * vCPU. Every resource has one owner here and is released by stop(), also after a failed start.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, writeSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { setupFpu, setupLapic, setupMsrs } from '../arch/x86_64/cpu.js';
import { cpuidForVcpu } from '../arch/x86_64/cpuid.js';
import { ramRanges } from '../arch/x86_64/layout.js';
import { openOutputFile } from '../backends/output-file.js';
import { MiB } from '../common/address.js';
import { TypedEmitter } from '../common/emitter.js';
import { ConfigError, SnapshotError, VireoError } from '../common/errors.js';
import { DisposableStore, toDisposable } from '../common/lifecycle.js';
import {
  type BalloonConfig,
  type PortForward,
  type SerialConfig,
  type VmConfig,
  type VsockConfig,
  validateBalloonTarget,
  validateForwards,
  validatePortForward,
  validateStatsInterval,
  validateVmConfig,
} from '../config/index.js';
import { setCmosMemorySizes } from '../devices/legacy/cmos.js';
import { PostCode } from '../devices/legacy/post-code.js';
import { KVM_MEM_LOG_DIRTY_PAGES } from '../kvm/abi.js';
import { Kvm, type Vm as KvmVm, type Vcpu } from '../kvm/kvm.js';
import { type CpuidEntry, encodeCpuid, encodeMsrs } from '../kvm/structs.js';
import { GuestMemory, GuestMemoryMapping, memoryFileLostMessage, PAGE_SIZE } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { encodeStateFile } from '../snapshot/format.js';
import { openMemoryFile } from '../snapshot/memory-file.js';
import { type MemoryTag, readTag } from '../snapshot/memory-tag.js';
import { writeSnapshotPair } from '../snapshot/pair.js';
import {
  applyVcpu,
  applyVm,
  captureVcpu,
  captureVm,
  readSnapshotBody,
  type SnapshotBody,
  type VcpuState,
} from '../snapshot/state.js';
import {
  Cmd,
  CTRL_CMD,
  CTRL_SLOTS,
  CTRL_STATE,
  State,
  type VcpuMessage,
  type VcpuStop,
  type VcpuWorkerInit,
} from '../vcpu/protocol.js';
import { recycleVcpuThread, takeVcpuThread } from './vcpu-threads.js';
import { VirtioDevices } from './virtio-devices.js';

export { prewarmIoThread, prewarmVcpuThreads } from './vcpu-threads.js';

import { type BootResult, loadKernel } from './boot.js';
import {
  buildPlatform,
  createPlatformSpec,
  type Platform,
  type PlatformSpec,
  restorePlatformState,
  STAT_FIELDS,
  type StatField,
  savePlatformState,
} from './platform.js';

export type { SerialConfig, VmConfig } from '../config/index.js';

/** How the VM ended, and the process exit status that goes with it. */
export interface VmExit {
  reason: VcpuStop;
  vcpu: number;
  status: number;
  message: string;
}

export type VmEvents = {
  started: [];
  paused: [];
  resumed: [];
  exited: [VmExit];
  error: [VireoError];
};

export const VIREO_VERSION = '0.1.0';

export { MAX_STATS_INTERVAL_S } from '../config/index.js';

export interface SnapshotOptions {
  statePath: string;
  memPath: string;
  /**
   * Firecracker's snapshot_type (default Full). Diff writes only the pages written since the previous
   * snapshot (or the restore) of this VM; it needs trackDirtyPages.
   */
  type?: 'Full' | 'Diff' | undefined;
}

export interface SnapshotResult {
  type: 'Full' | 'Diff';
  /** The memory image written (a diff's state goes with its base merged up to this image). */
  image: string;
  stateMs: number;
  memoryMs: number;
  /** Guest RAM covered by the memory file. */
  memoryBytes: number;
  /** Non-zero bytes actually written (the rest are holes). */
  memoryWritten: number;
}

export interface RestoreOptions {
  statePath: string;
  memPath: string;
  /** Run the guest right away (else the VM is restored paused). */
  resume?: boolean | undefined;
  /** Track dirty pages in the restored VM (its Diff snapshots are then diffs of this snapshot). */
  trackDirtyPages?: boolean | undefined;
  serial?: SerialConfig | undefined;
  kvmPath?: string | undefined;
}

interface RestoreSource {
  body: SnapshotBody;
  memFd: number;
  memPath: string;
  /** Let the vCPUs run as soon as their threads are built. */
  resume: boolean;
}

/** Refuses a memory file that is not the whole image the state goes with, saying what to do. */
function checkMemoryTag(tag: MemoryTag, body: SnapshotBody, path: string): void {
  if (tag.size !== body.memory.size)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `memory file ${path} lays out ${tag.size} bytes; the snapshot expects ${body.memory.size}: wrong or truncated file`,
    );
  if (tag.merging !== undefined)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `memory file ${path} is half-way through a merge (of image ${tag.merging}): run vireo snapshot merge again with that diff`,
    );
  if (tag.kind === 'diff')
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `memory file ${path} is a diff (only the pages changed since image ${tag.parent}): merge it onto its base first — vireo snapshot merge --base BASE_MEM --diff ${path} — and restore from the base`,
    );
  if (tag.id !== body.memory.id)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `memory file ${path} holds memory image ${tag.id}, but the snapshot goes with image ${body.memory.id}${body.memory.type === 'Diff' && body.memory.parent !== undefined ? ` (a diff of ${body.memory.parent}): merge the diffs up to it onto the base` : ''}: give the memory file written with the snapshot`,
    );
}

/**
 * A dry run of the restore path's JavaScript on this thread, with no KVM call: V8 compiles each
 * function on its first call, so a VMM that runs this while it waits for work (vireo-firecracker
 * does, once its socket has answered) restores with compiled code. (vCPU threads warm their own
 * part while parked: src/vmm/vcpu-thread.ts.)
 */
export function prewarmRestorePath(): void {
  const msrs = Array.from({ length: 64 }, (_, i) => ({ index: i, data: BigInt(i) }));
  const cpuid = Array.from({ length: 16 }, (_, i) => ({
    function: i,
    index: 0,
    flags: 0,
    eax: i,
    ebx: 0,
    ecx: 0,
    edx: 0,
  }));
  for (let i = 0; i < 4; i++) {
    encodeMsrs(msrs);
    encodeCpuid(cpuid);
  }
  buildPlatform(createPlatformSpec(-1, -1, false), new GuestMemory([]));
}

export type VmState = 'created' | 'running' | 'paused' | 'stopping' | 'exited';

interface VcpuThread {
  vcpu: Vcpu;
  worker: Worker;
  control: Int32Array;
  thread: bigint | undefined;
  ready: Promise<void>;
  exited: Promise<void>;
  paused: boolean;
  /** The OS thread has ended, or left this VM: its pthread_t must not be signalled any more. */
  gone: boolean;
  /** It reported its stop and waits for another VM: it goes back to the pool (vcpu-threads.ts). */
  recyclable: boolean;
}

export function describeExit(reason: VcpuStop, vcpu: number): { status: number; message: string } {
  const regs = (r: Record<string, string>) =>
    `\n${Object.entries(r)
      .map(([k, v]) => `  ${k.padEnd(7)} ${v}`)
      .join('\n')}`;
  switch (reason.kind) {
    case 'debug-exit':
      return {
        status: reason.status,
        message: `guest wrote 0x${reason.value.toString(16)} to the debug-exit port: exit status ${reason.status}`,
      };
    case 'shutdown':
      return { status: 0, message: 'guest powered off' };
    case 'reset':
      return { status: 0, message: `guest requested a reset (${reason.source}); the VM ends` };
    case 'stopped':
      return { status: 0, message: 'VM stopped' };
    case 'memory-file-lost':
      return { status: 1, message: memoryFileLostMessage(reason.path) };
    case 'hlt':
      return { status: 0, message: `vCPU ${vcpu} halted (HLT exit)${regs(reason.registers)}` };
    case 'triple-fault': {
      // KVM on AMD re-initialises a vCPU after a shutdown intercept (its VMCB is undefined then):
      // what it reports is the reset state, not where the guest faulted. Say so rather than mislead.
      const r = reason.registers;
      const reset = /^0x0*fff0$/.test(r.rip ?? '') && (r.cs ?? '').includes('base=0xffff0000');
      const note = reset
        ? '\n  (these are reset values: KVM on AMD re-initialises a vCPU after a shutdown, so the state that faulted is gone)'
        : '';
      return { status: 1, message: `vCPU ${vcpu}: triple fault (KVM_EXIT_SHUTDOWN)${regs(r)}${note}` };
    }
    case 'fail-entry':
      return {
        status: 1,
        message: `vCPU ${vcpu}: KVM could not enter the guest (hardware entry failure reason ${reason.hardwareEntryFailureReason})${regs(reason.registers)}`,
      };
    case 'internal-error':
      return {
        status: 1,
        message: `vCPU ${vcpu}: KVM internal error, suberror ${reason.suberror} [${reason.data.join(' ')}]${regs(reason.registers)}`,
      };
    case 'panic':
      return { status: 1, message: 'guest kernel panicked (reported through pvpanic)' };
    case 'crash':
      return { status: 1, message: `guest crashed (system event) [${reason.data.join(' ')}]` };
    case 'error':
      return { status: 1, message: `vCPU ${vcpu}: ${reason.message}${reason.registers ? regs(reason.registers) : ''}` };
  }
}

export class Vm extends TypedEmitter<VmEvents> {
  private kvm: Kvm | undefined;
  private vm: KvmVm | undefined;
  private mapping: GuestMemoryMapping | undefined;
  private serialFd = -1;
  private threads: VcpuThread[] = [];
  private platformSpec: PlatformSpec | undefined;
  private platformHere: Platform | undefined;
  private exitInfo: VmExit | undefined;
  private exitResolve!: (e: VmExit) => void;
  private readonly exitPromise: Promise<VmExit>;
  private stopping: Promise<void> | undefined;
  private _state: VmState = 'created';
  memory: GuestMemory | undefined;
  boot: BootResult | undefined;
  private devices: VirtioDevices | undefined;
  /** The memory image the guest's memory was equal to at the last snapshot or restore (Diff's parent). */
  private image: string | undefined;
  readonly config: Required<Omit<VmConfig, 'initrd' | 'rng' | 'virtioConsole' | 'balloon' | 'vsock'>> & {
    initrd: string | undefined;
    rng: boolean;
    virtioConsole: VmConfig['virtioConsole'];
    balloon: BalloonConfig | undefined;
    vsock: VsockConfig | undefined;
  };
  /**
   * Everything this VM created, added at the moment each is created, released newest first by
   * stop() (also after a failed create or restore: exactly what was created). Where order matters,
   * it is the order of adding; build() and spawn() say why.
   */
  private readonly store = new DisposableStore();
  private consoleInputFd = -1;

  /** `boot`: false for a restore, which loads no kernel. */
  private constructor(config: VmConfig, boot = true) {
    super();
    this.exitPromise = new Promise((res) => {
      this.exitResolve = res;
    });
    this.config = {
      kernel: config.kernel,
      initrd: config.initrd,
      cmdline: config.cmdline ?? '',
      memMiB: config.memMiB ?? 128,
      cpus: config.cpus ?? 1,
      serial: config.serial ?? { kind: 'stdio' },
      irqchip: config.irqchip ?? true,
      kvmPath: config.kvmPath ?? '/dev/kvm',
      drives: config.drives ?? [],
      nets: config.nets ?? [],
      rng: config.rng ?? false,
      virtioConsole: config.virtioConsole,
      balloon: config.balloon,
      vsock: config.vsock,
      trackDirtyPages: config.trackDirtyPages ?? false,
    };
    validateVmConfig(this.config, boot);
  }

  get state(): VmState {
    return this._state;
  }

  /** Build a VM from a config: KVM objects, memory, platform, kernel loaded, vCPU threads parked. */
  static async create(config: VmConfig): Promise<Vm> {
    const vm = new Vm(config);
    try {
      await vm.build();
    } catch (e) {
      // Threads may already be attached to the vCPUs and memory: stop them before unmapping.
      await vm.stop();
      throw e;
    }
    return vm;
  }

  private async build(restore?: RestoreSource): Promise<void> {
    const cfg = this.config;
    const store = this.store;
    const kvm = Kvm.open(cfg.kvmPath);
    this.kvm = kvm;
    // /dev/kvm last of all.
    store.add(
      toDisposable(() => {
        kvm.close();
        this.kvm = undefined;
      }),
    );
    kvm.requireCapabilities();
    sys.installKickSignal();
    // Order: KVM holds the guest memory in its slots until the VM fd is closed, so the memory is
    // unmapped after it: its store is added before the VM's handle (a store disposes newest first).
    const memoryStore = store.add(new DisposableStore());
    const vm = kvm.createVm();
    this.vm = vm;
    // Closes the vCPU fds (and their kvm_run mappings) with the VM fd: every thread added after this
    // one is out of KVM_RUN and given back before it runs.
    store.add(
      toDisposable(() => {
        vm.close();
        this.vm = undefined;
      }),
    );
    vm.setTssAddr(0xfffbd000);
    const mapping = restore
      ? GuestMemoryMapping.mapFile(restore.memFd, restore.body.memory.regions, restore.memPath)
      : GuestMemoryMapping.allocate(ramRanges(cfg.memMiB * MiB));
    this.mapping = mapping;
    memoryStore.add(
      toDisposable(() => {
        mapping.release();
        this.mapping = undefined;
        this.memory = undefined;
      }),
    );
    // The VMM itself met a truncated memory file (the SIGBUS guard answered): this VM's RAM is gone.
    this.mapping.watchLoss((path) => this.onVcpuStopped(0, { kind: 'memory-file-lost', path }));
    if (cfg.trackDirtyPages) this.mapping.trackDirty();
    const slotFlags = cfg.trackDirtyPages ? KVM_MEM_LOG_DIRTY_PAGES : 0;
    this.mapping.descriptors.forEach((d, slot) => {
      vm.setUserMemoryRegion(slot, d.gpa, d.size, d.hostAddr, slotFlags);
    });
    // Memory slots before the irqchip and PIT: once those exist, every slot change waits for an
    // SRCU grace period in KVM (measured 3–8 ms a slot here, against 0.2 ms before them).
    if (cfg.irqchip) {
      vm.createIrqchip();
      vm.createPit2();
    }
    this.memory = new GuestMemory(this.mapping.descriptors);

    this.serialFd = this.outputFd(cfg.serial, 'serial');
    this.platformSpec = createPlatformSpec(vm.fd, this.serialFd, cfg.irqchip);
    // Its fds and backends, each added as it opens; released by this store only after release()
    // stopped the I/O thread (which polls them and touches guest memory).
    const devices = store.add(new VirtioDevices(vm));
    this.devices = devices;
    let console: { outFd: number; inFd: number } | undefined;
    if (cfg.virtioConsole) {
      const [r, w] = sys.pipe();
      store.add(toDisposable(() => closeSync(r)));
      store.add(toDisposable(() => closeSync(w)));
      this.consoleInputFd = w;
      console = { outFd: this.outputFd(cfg.virtioConsole.output, 'virtio-console'), inFd: r };
    }
    devices.addAll({
      drives: cfg.drives,
      nets: cfg.nets,
      rng: cfg.rng,
      console,
      balloon: cfg.balloon,
      vsock: cfg.vsock,
    });
    // (validateVmConfig refused virtio devices without the in-kernel irqchip.)
    if (!devices.empty) this.platformSpec.virtio = devices.platformSpec();
    if (restore) {
      // Device registers as they were: each device's record goes back into its shared state.
      restorePlatformState(this.platformSpec, restore.body.devices);
      devices.restoreStates(restore.body.devices);
    }
    // Restoring, the I/O thread (a new worker: tens of ms) starts first, to load while the rest is built.
    const devicesReady = restore
      ? devices.start(
          this.mapping.descriptors,
          restore.body.devices.virtio.map((v) => v.side),
        )
      : undefined;
    devicesReady?.catch(() => undefined); // awaited below; a failure before that must not go unhandled
    const vcpus: Vcpu[] = [];
    for (let id = 0; id < cfg.cpus; id++) vcpus.push(vm.createVcpu(id));
    // The threads attach while this thread goes on (kernel load, state restore); none runs the
    // guest before start() or, restoring, before every state is in place.
    for (const vcpu of vcpus) this.threads.push(this.spawn(vcpu));
    this.vcpus = vcpus;
    this.platformHere = buildPlatform(this.platformSpec, this.memory);
    const low = this.mapping.descriptors.find((d) => d.gpa === 0)?.size ?? 0;
    if (!restore) setCmosMemorySizes(this.platformHere.cmosState, low, cfg.memMiB * MiB - low);
    if (restore) {
      // The VM-wide state first (the LAPICs' timers need the irqchip), then each vCPU.
      if (restore.body.vm && cfg.irqchip) applyVm(vm, restore.body.vm);
      vcpus.forEach((vcpu, i) => {
        const st = restore.body.vcpus[i] as VcpuState;
        this.cpuids.push(st.cpuid);
        applyVcpu(vcpu, st);
      });
      await devicesReady;
      devices.reassertInterrupts();
      // Every state is in place: a resumed VM's threads enter the guest as soon as each is built,
      // without waiting for the round trip of its 'ready' message.
      if (restore.resume)
        for (const t of this.threads) {
          Atomics.store(t.control, CTRL_CMD, Cmd.RUN);
          Atomics.notify(t.control, CTRL_CMD);
        }
      await Promise.all(this.threads.map((t) => t.ready));
      return;
    }
    const supported = kvm.supportedCpuid();
    const tscDeadline = cfg.irqchip && kvm.checkExtension('KVM_CAP_TSC_DEADLINE_TIMER') > 0;
    for (const vcpu of vcpus) {
      const cpuid = cpuidForVcpu(supported, vcpu.id, cfg.cpus, { tscDeadline });
      this.cpuids.push(cpuid);
      vcpu.setCpuid(cpuid);
      this.refusedMsrs = setupMsrs(vcpu);
      setupFpu(vcpu);
      if (cfg.irqchip) setupLapic(vcpu);
    }
    this.boot = loadKernel(this.memory, vcpus[0] as Vcpu, {
      kernel: cfg.kernel,
      initrd: cfg.initrd,
      cmdline: cfg.cmdline,
      cpus: cfg.cpus,
      virtioMmio: devices.acpi(),
    });
    await Promise.all([...this.threads.map((t) => t.ready), devices.start(this.mapping.descriptors)]);
  }

  /** The fd a console's output goes to (-1: discarded); files are opened here and closed on release. */
  private outputFd(out: SerialConfig, what: string): number {
    if (out.kind === 'stdio') return 1;
    if (out.kind === 'fd') return out.fd;
    if (out.kind === 'none') return -1;
    try {
      // Non-blocking, as Firecracker opens it: a FIFO must not hang the build (nor the API) in open(2).
      const fd = openOutputFile(out.path, 'truncate');
      this.store.add(toDisposable(() => closeSync(fd)));
      return fd;
    } catch (e) {
      throw new ConfigError(`cannot open ${what} output file ${out.path}: ${(e as NodeJS.ErrnoException).code}`);
    }
  }

  /** Boot MSRs this host's KVM refused (PVM does not model every MSR). */
  refusedMsrs: number[] = [];

  /** When the first vCPU exit happened (epoch ms, sub-ms precision): boot timing. */
  firstExitAt: number | undefined;

  private spawn(vcpu: Vcpu): VcpuThread {
    const control = new Int32Array(new SharedArrayBuffer(CTRL_SLOTS * 4));
    const init: VcpuWorkerInit<PlatformSpec> = {
      vcpu: vcpu.descriptor,
      vmFd: (this.vm as KvmVm).fd,
      memory: (this.mapping as GuestMemoryMapping).descriptors,
      control: control.buffer as SharedArrayBuffer,
      platform: this.platformSpec as PlatformSpec,
    };
    const worker = takeVcpuThread();
    worker.postMessage(init);
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    ready.catch(() => undefined); // awaited by build(); a build that failed first must not leave it unhandled
    let exitedResolve!: () => void;
    const t: VcpuThread = {
      vcpu,
      worker,
      control,
      thread: undefined,
      ready,
      exited: new Promise<void>((res) => {
        exitedResolve = res;
        worker.once('exit', () => {
          t.gone = true;
          // A thread that ended before it was ready (it never will be): the build must not wait on it.
          readyReject(new Error(`vCPU ${vcpu.id} thread ended before it was ready`));
          res();
        });
      }),
      paused: false,
      gone: false,
      recyclable: false,
    };
    // Given back for another VM only once it reported 'stopped' (stop() waited for that, or
    // terminated it); added after the VM's handle, so this runs before the vCPU fds are closed.
    this.store.add(
      toDisposable(() => {
        if (t.recyclable) recycleVcpuThread(worker);
      }),
    );
    worker.on('message', (m: VcpuMessage) => {
      switch (m.type) {
        case 'loaded':
          break;
        case 'ready':
          t.thread = m.thread;
          readyResolve();
          break;
        case 'first-exit':
          this.firstExitAt ??= m.at;
          break;
        case 'paused':
          t.paused = true;
          break;
        case 'resumed':
          t.paused = false;
          break;
        case 'stopped':
          readyResolve();
          // The thread is out of this VM for good (it waits for the next one): never kick it again.
          t.gone = true;
          t.recyclable = true;
          exitedResolve();
          this.onVcpuStopped(m.id, m.stop);
          break;
      }
    });
    worker.on('error', (e) => {
      readyReject(e);
      this.onVcpuStopped(vcpu.id, {
        kind: 'error',
        code: 'VIREO_ERR_VCPU',
        message: `vCPU thread failed: ${e.message}`,
      });
    });
    return t;
  }

  private onVcpuStopped(id: number, stop: VcpuStop): void {
    // The first reason other than our own stop request decides how the VM ended.
    if (this.exitInfo === undefined && (stop.kind !== 'stopped' || this._state === 'stopping')) {
      const d = describeExit(stop, id);
      this.exitInfo = { reason: stop, vcpu: id, status: d.status, message: d.message };
    }
    if (this._state !== 'stopping' && this._state !== 'exited') void this.stop();
  }

  private vcpus: Vcpu[] = [];
  private cpuids: CpuidEntry[][] = [];

  /**
   * Writes a full snapshot of a paused VM: every vCPU's registers, special registers, XSAVE, XCRs,
   * MSRs, LAPIC, events and MP state; the irqchip, PIT and clock; every device's registers and queue
   * positions — to `statePath`; guest memory to `memPath` (sparse). Both through a temporary name.
   */
  async snapshot(opts: SnapshotOptions): Promise<SnapshotResult> {
    if (this._state !== 'paused')
      throw new VireoError('VIREO_ERR_STATE', `cannot snapshot a VM that is ${this._state}: pause it first`);
    const type = opts.type ?? 'Full';
    if (type === 'Diff' && !this.config.trackDirtyPages)
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        'diff snapshots need dirty page tracking: create the VM with trackDirtyPages (track_dirty_pages in machine-config)',
      );
    // A Diff holds the pages changed since this VM's previous snapshot or restore. With neither, it is
    // a diff against boot, as in Firecracker: memory nobody wrote is zero, so that image is the whole
    // memory with its zero pages as holes — a full image, restorable on its own (and tagged so).
    const parent = this.image;
    const kvm = this.kvm as Kvm;
    const vm = this.vm as KvmVm;
    const t0 = performance.now();
    const devices = this.devices as VirtioDevices;
    const sides = await devices.hold();
    try {
      const cfg = this.config;
      const spec = this.platformSpec as PlatformSpec;
      const body: SnapshotBody = {
        vireo: VIREO_VERSION,
        createdAt: new Date().toISOString(),
        config: {
          memMiB: cfg.memMiB,
          cpus: cfg.cpus,
          irqchip: cfg.irqchip,
          drives: cfg.drives,
          nets: cfg.nets,
          vsock: cfg.vsock,
          rng: cfg.rng,
          balloon: cfg.balloon,
          virtioConsole: cfg.virtioConsole !== undefined,
        },
        memory: { size: 0, regions: [], id: randomUUID(), type, parent: type === 'Diff' ? parent : undefined },
        vcpus: this.vcpus.map((v, i) => captureVcpu(kvm, v, this.cpuids[i] as CpuidEntry[], cfg.irqchip)),
        vm: cfg.irqchip ? captureVm(vm) : undefined,
        devices: { ...savePlatformState(spec), ...devices.saveStates(sides) },
      };
      const t1 = performance.now();
      const mem = this.memory as GuestMemory;
      const id = body.memory.id;
      // With tracking, every snapshot restarts the log: the next diff is against this one.
      const dirty = cfg.trackDirtyPages
        ? mem.takeDirty((r) => {
            const slot = (this.mapping as GuestMemoryMapping).descriptors.findIndex((d) => d.gpa === r.gpa);
            return vm.getDirtyLog(slot, r.size / PAGE_SIZE);
          })
        : undefined;
      try {
        const layout = writeSnapshotPair(
          opts,
          mem,
          type === 'Diff' && dirty && parent !== undefined
            ? { kind: 'diff', id, parent, pages: dirty }
            : { kind: 'full', id },
          (l) => {
            body.memory = { ...body.memory, size: l.size, regions: l.regions };
            return encodeStateFile(body);
          },
        );
        this.image = id;
        return {
          type,
          image: id,
          stateMs: t1 - t0,
          memoryMs: performance.now() - t1,
          memoryBytes: layout.size,
          memoryWritten: layout.written,
        };
      } catch (e) {
        if (dirty) mem.restoreDirty(dirty);
        throw e;
      }
    } finally {
      devices.release();
    }
  }

  /**
   * A VM restored from a snapshot (taken by this or another vireo process), paused unless
   * `resume`. Guest memory is mapped from the memory file MAP_PRIVATE, so restoring costs the same
   * for any guest size and the file is never written.
   */
  static async restore(opts: RestoreOptions): Promise<Vm> {
    const body = readSnapshotBody(opts.statePath);
    const memFd = openMemoryFile(opts.memPath, body.memory.size);
    try {
      checkMemoryTag(readTag(memFd, opts.memPath), body, opts.memPath);
      const c = body.config;
      const vm = new Vm(
        {
          kernel: '',
          memMiB: c.memMiB,
          cpus: c.cpus,
          irqchip: c.irqchip,
          drives: c.drives,
          nets: c.nets,
          vsock: c.vsock,
          rng: c.rng,
          balloon: c.balloon,
          virtioConsole: c.virtioConsole ? { output: opts.serial ?? { kind: 'stdio' } } : undefined,
          serial: opts.serial,
          kvmPath: opts.kvmPath,
          trackDirtyPages: opts.trackDirtyPages,
        },
        false,
      );
      vm.image = body.memory.id;
      try {
        await vm.build({ body, memFd, memPath: opts.memPath, resume: opts.resume === true });
      } catch (e) {
        await vm.stop();
        throw e;
      }
      // (A guest that ended already has moved the VM to stopping or exited.)
      if (vm._state === 'created') vm._state = opts.resume ? 'running' : 'paused';
      return vm;
    } finally {
      closeSync(memFd);
    }
  }

  /** Let every vCPU run. */
  start(): void {
    if (this._state !== 'created') throw new VireoError('VIREO_ERR_STATE', `cannot start a VM that is ${this._state}`);
    this._state = 'running';
    for (const t of this.threads) this.command(t, Cmd.RUN);
    this.emit('started');
  }

  private command(t: VcpuThread, cmd: number): void {
    Atomics.store(t.control, CTRL_CMD, cmd);
    Atomics.notify(t.control, CTRL_CMD);
    this.kick(t);
  }

  /** Force a vCPU out of KVM_RUN: set immediate_exit, then signal its thread. */
  private kick(t: VcpuThread): void {
    // Signalling a joined thread's pthread_t is undefined behaviour (glibc may fault): never do it.
    if (t.gone || Atomics.load(t.control, CTRL_STATE) === State.EXITED) return;
    t.vcpu.run.immediateExit = true;
    if (t.thread !== undefined) sys.pthreadKill(t.thread, sys.KICK_SIGNAL);
  }

  /** Pause every vCPU; resolves once each has left KVM_RUN. */
  async pause(): Promise<void> {
    if (this._state !== 'running') throw new VireoError('VIREO_ERR_STATE', `cannot pause a VM that is ${this._state}`);
    for (const t of this.threads) this.command(t, Cmd.PAUSE);
    await this.waitFor(() => this.threads.every((t) => t.paused || this.exitInfo !== undefined));
    if (this._state === 'running') {
      this._state = 'paused';
      this.emit('paused');
    }
  }

  async resume(): Promise<void> {
    if (this._state !== 'paused') throw new VireoError('VIREO_ERR_STATE', `cannot resume a VM that is ${this._state}`);
    for (const t of this.threads) this.command(t, Cmd.RUN);
    await this.waitFor(() => this.threads.every((t) => !t.paused || this.exitInfo !== undefined));
    if (this._state === 'paused') {
      this._state = 'running';
      this.emit('resumed');
    }
  }

  private async waitFor(cond: () => boolean): Promise<void> {
    while (!cond()) await new Promise((r) => setTimeout(r, 1));
  }

  /** Stop every vCPU and release everything. Never hangs: kicks repeat until each thread is out. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this._state !== 'exited') this._state = 'stopping';
    for (const t of this.threads) this.command(t, Cmd.STOP);
    const all = Promise.all(this.threads.map((t) => t.exited));
    let done = false;
    void all.then(() => {
      done = true;
    });
    const deadline = Date.now() + 5000;
    while (!done && Date.now() < deadline) {
      await Promise.race([all, new Promise((r) => setTimeout(r, 20))]);
      for (const t of this.threads) this.kick(t);
    }
    if (!done) await Promise.all(this.threads.filter((t) => !t.recyclable).map((t) => t.worker.terminate()));
    // Every vCPU thread is out of KVM_RUN: release() may close what they used.
    await this.release();
    this._state = 'exited';
    const info = this.exitInfo ?? { reason: { kind: 'stopped' as const }, vcpu: 0, status: 0, message: 'VM stopped' };
    this.exitInfo = info;
    this.exitResolve(info);
    this.emit('exited', info);
  }

  private async release(): Promise<void> {
    // The I/O thread touches guest memory and polls the devices' fds: it stops before the store
    // unmaps or closes any of them.
    await this.devices?.stopThread();
    if (this.devices) this.lastDeviceCounters = this.devices.finalCounters;
    this.devices = undefined;
    // Newest first: the vCPU threads given back, the console and devices' fds and backends, the
    // serial file, the VM fd with its vCPUs, guest memory, /dev/kvm.
    this.store.dispose();
    this.serialFd = -1;
    this.consoleInputFd = -1;
  }

  /** Resolves when the VM has ended and every resource is released. */
  waitForExit(): Promise<VmExit> {
    return this.exitPromise;
  }

  /** Type bytes into the console: hvc0 when the VM has a virtio-console, else the serial port. */
  sendConsoleInput(bytes: Uint8Array): number {
    if (this.consoleInputFd < 0) return this.sendSerialInput(bytes);
    try {
      return writeSync(this.consoleInputFd, bytes);
    } catch {
      return 0; // the guest is not reading: a full pipe drops what was typed
    }
  }

  /**
   * Press and release Ctrl+Alt+Del on the guest's keyboard (Firecracker's SendCtrlAltDel): the
   * scancodes go into the i8042's output buffer with IRQ 1 for each byte. Linux with its default
   * ctrl-alt-del setting reboots (with reboot=k that ends the VM with status 0); systemd starts
   * ctrl-alt-del.target. The VM must have started.
   */
  sendCtrlAltDel(): void {
    const p = this.platformHere;
    if (!p || (this._state !== 'running' && this._state !== 'paused'))
      throw new VireoError(
        'VIREO_ERR_STATE',
        `cannot send Ctrl+Alt+Del to a VM that is ${this._state}: start it first`,
      );
    if (!p.i8042.injectCtrlAltDel())
      throw new VireoError(
        'VIREO_ERR_STATE',
        'the guest has not read the previous keys from its i8042 output buffer yet: try again later',
      );
  }

  /** Set the balloon's target (MiB the guest should give back). */
  setBalloonTarget(mib: number): void {
    const b = this.devices?.balloon;
    if (!b) throw new VireoError('VIREO_ERR_STATE', 'this VM has no balloon device');
    validateBalloonTarget(mib, this.config.memMiB);
    b.setTargetMiB(mib);
    this.devices?.wake();
  }

  /**
   * Change how often the balloon asks the guest for statistics (Firecracker's PATCH
   * /balloon/statistics): only when statistics were enabled at boot, and never to 0 (the guest
   * negotiated the statistics queue at boot; it cannot be added or removed now).
   */
  setBalloonStatsInterval(seconds: number): void {
    const devices = this.devices;
    const b = this.config.balloon;
    if (!devices?.balloon || !b) throw new VireoError('VIREO_ERR_STATE', 'this VM has no balloon device');
    validateStatsInterval(seconds);
    if (seconds === b.statsPollingIntervalS) return;
    if (b.statsPollingIntervalS === 0 || seconds === 0)
      throw new ConfigError(
        'cannot enable or disable balloon statistics after boot: give a nonzero interval, and enable statistics (stats=SECONDS) when the VM is created',
      );
    devices.setStatsInterval(seconds);
    this.config.balloon = { ...b, statsPollingIntervalS: seconds };
  }

  /** The balloon's target and actual size (MiB) and the guest's latest statistics. */
  balloonStatus(): { targetMiB: number; actualMiB: number; stats: Record<string, number> } | undefined {
    const b = this.devices?.balloon;
    if (!b) return undefined;
    return { targetMiB: b.targetMiB(), actualMiB: b.actualMiB(), stats: b.latestStats() };
  }

  /**
   * Replaces the host port forwards of the user-mode interface `id` (`--net user`). passt (2023) takes
   * its forwards only on its command line and has no control socket, so vireo starts a new passt with
   * them: the guest's link goes down and up, and connections through the old passt are reset. Resolves
   * true once the new passt serves (false if it did not within 30 s: it keeps being restarted).
   */
  async setPortForwards(id: string, forwards: PortForward[]): Promise<boolean> {
    const passt = this.devices?.passts.get(id);
    const i = this.config.nets.findIndex((n) => n.id === id && n.kind === 'user');
    const net = this.config.nets[i];
    if (!passt || net?.kind !== 'user')
      throw new VireoError(
        'VIREO_ERR_STATE',
        `this VM has no user-mode network interface "${id}" (--net user,id=${id})`,
      );
    if (!Array.isArray(forwards)) throw new ConfigError('port forwards must be a list');
    for (const f of forwards) validatePortForward(f);
    validateForwards(id, forwards);
    const copy = forwards.map((f) => ({ ...f }));
    this.config.nets[i] = { ...net, hostfwd: copy };
    return passt.setForwards(copy);
  }

  /** Type bytes into the serial console (as from a terminal). */
  sendSerialInput(bytes: Uint8Array): number {
    return this.platformHere?.serial.enqueueInput(bytes) ?? 0;
  }

  /** Shared counters: exits by kind and unclaimed accesses. */
  stats(): Record<StatField, number> {
    const p = this.platformHere;
    return Object.fromEntries(STAT_FIELDS.map((f) => [f, p ? p.stats.get(f) : 0])) as Record<StatField, number>;
  }

  /** Device counters by device: current while the VM runs (the I/O thread publishes them), final once it has exited. */
  deviceCounters(): Record<string, Record<string, number>> {
    return this.lastDeviceCounters ?? this.devices?.liveCounters() ?? {};
  }
  private lastDeviceCounters: Record<string, Record<string, number>> | undefined;

  /** POST codes written to port 0x80, oldest first. */
  postCodes(): number[] {
    const p = this.platformHere;
    return p ? PostCode.history(p.postCodeState) : [];
  }
}
