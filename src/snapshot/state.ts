/**
 * What a snapshot holds, and the capture/apply of KVM state. vCPU and VM state are kept as KVM's own
 * struct bytes (exact, and what KVM itself versions); device state is each device's shared buffer
 * plus what the I/O thread reports (queue positions). Memory lives in a separate file.
 */
import type { DeviceSideState } from '../devices/virtio/mmio.js';
import type { Kvm, Vm as KvmVm, Vcpu } from '../kvm/kvm.js';
import type { CpuidEntry } from '../kvm/structs.js';
import type { BalloonConfig, DriveConfig, NetConfig } from '../vmm/virtio-devices.js';
import { validateBody } from './body-schema.js';
import { b64, unb64 } from './format.js';
import type { MemoryFileRegion } from './memory-file.js';

/** The configuration a restore rebuilds the VM from (paths of drives, TAP names, vsock socket). */
export interface SnapshotConfig {
  memMiB: number;
  cpus: number;
  irqchip: boolean;
  drives: DriveConfig[];
  nets: NetConfig[];
  vsock: { cid: number; udsPath: string } | undefined;
  rng: boolean;
  balloon: BalloonConfig | undefined;
  virtioConsole: boolean;
}

export interface VcpuState {
  cpuid: CpuidEntry[];
  regs: string;
  sregs: string;
  xsave: string;
  xcrs: string;
  lapic: string;
  vcpu_events: string;
  mp_state: string;
  /** [index, value as a decimal string]. */
  msrs: [number, string][];
}

export interface SnapshotBody {
  vireo: string;
  createdAt: string;
  config: SnapshotConfig;
  memory: {
    size: number;
    regions: MemoryFileRegion[];
    /** The memory image this snapshot's state goes with (its memory file's tag, or a merge's result). */
    id: string;
    /**
     * Full, or Diff: the memory file holds only the pages changed since image `parent` (a Diff with no
     * parent was taken against boot: its file is a full image).
     */
    type: 'Full' | 'Diff';
    parent?: string | undefined;
  };
  vcpus: VcpuState[];
  vm: { irqchip: string[]; pit2: string; clock: string } | undefined;
  devices: {
    serial: string;
    postCode: string;
    /** The i8042's registers and output buffer (absent in snapshots made before it was shared). */
    i8042?: string;
    cmos: string;
    virtio: { name: string; mmio: string; side: DeviceSideState }[];
    balloon: string | undefined;
  };
}

/** Reads every piece of a (paused) vCPU's state. */
export function captureVcpu(kvm: Kvm, vcpu: Vcpu, cpuid: CpuidEntry[], irqchip: boolean): VcpuState {
  const msrs: [number, string][] = [];
  for (const index of kvm.msrIndexList()) {
    try {
      const got = vcpu.getMsrs([index]);
      if (got.length === 1) msrs.push([index, (got[0] as { data: bigint }).data.toString()]);
    } catch {
      // An MSR this vCPU cannot read (not exposed by its CPUID): nothing to restore.
    }
  }
  return {
    cpuid,
    regs: b64(vcpu.getRaw('regs')),
    sregs: b64(vcpu.getRaw('sregs')),
    xsave: b64(vcpu.getRaw('xsave')),
    xcrs: b64(vcpu.getRaw('xcrs')),
    lapic: irqchip ? b64(vcpu.getRaw('lapic')) : '',
    vcpu_events: b64(vcpu.getRaw('vcpu_events')),
    mp_state: b64(vcpu.getRaw('mp_state')),
    msrs,
  };
}

/** Puts a vCPU back as it was, in the order KVM needs (Firecracker's order). */
export function applyVcpu(vcpu: Vcpu, s: VcpuState): void {
  vcpu.setCpuid(s.cpuid);
  vcpu.setRaw('mp_state', unb64(s.mp_state));
  vcpu.setRaw('regs', unb64(s.regs));
  vcpu.setRaw('sregs', unb64(s.sregs));
  vcpu.setRaw('xsave', unb64(s.xsave));
  vcpu.setRaw('xcrs', unb64(s.xcrs));
  if (s.lapic) vcpu.setRaw('lapic', unb64(s.lapic));
  if (s.msrs.length > 0) vcpu.setMsrs(s.msrs.map(([index, v]) => ({ index, data: BigInt(v) })));
  vcpu.setRaw('vcpu_events', unb64(s.vcpu_events));
}

export function captureVm(vm: KvmVm): SnapshotBody['vm'] {
  const clock = vm.getRaw('clock');
  return {
    irqchip: [vm.getIrqchip(0), vm.getIrqchip(1), vm.getIrqchip(2)].map(b64),
    pit2: b64(vm.getRaw('pit2')),
    clock: b64(clock),
  };
}

export function applyVm(vm: KvmVm, s: NonNullable<SnapshotBody['vm']>): void {
  for (const chip of s.irqchip) vm.setIrqchip(unb64(chip));
  vm.setRaw('pit2', unb64(s.pit2));
  const clock = unb64(s.clock);
  // The guest's clock goes on from where it stopped; the flags (which clock fields are valid) are
  // not for KVM_SET_CLOCK to judge on another host.
  clock.writeUInt32LE(0, 8);
  vm.setRaw('clock', clock);
}

/** Checks the whole body (body-schema.ts): a clear error naming the bad field rather than a crash. */
export function checkBody(x: unknown, path: string): SnapshotBody {
  validateBody(x, path);
  return x as SnapshotBody;
}
