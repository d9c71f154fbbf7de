/**
 * What a snapshot holds, and the capture/apply of KVM state. vCPU and VM state are kept as KVM's own
 * struct bytes (exact, and what KVM itself versions); device state is each device's named, versioned
 * record (its *-state.ts beside it), never a buffer layout. Memory lives in a separate file. The
 * body's whole shape, devices included, is vmm/snapshot-body.ts's (the VMM knows the device kinds).
 */
import { SnapshotError } from '../common/errors.js';
import { SchemaError } from '../common/schema.js';
import type { Kvm, Vm as KvmVm, Vcpu } from '../kvm/kvm.js';
import type { CpuidEntry } from '../kvm/structs.js';
import { b64, decodeStateFile, unb64 } from './format.js';
import type { MemoryFileRegion } from './memory-file.js';
import { upgradeV2Body } from './v2.js';

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

/** The memory file a snapshot's state goes with. */
export interface MemoryRecord {
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
}

/** The VM-wide KVM state: the irqchip's three chips, the PIT and the clock, as KVM's struct bytes. */
export interface VmStateRecord {
  irqchip: string[];
  pit2: string;
  clock: string;
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

export function captureVm(vm: KvmVm): VmStateRecord {
  const clock = vm.getRaw('clock');
  return {
    irqchip: [vm.getIrqchip(0), vm.getIrqchip(1), vm.getIrqchip(2)].map(b64),
    pit2: b64(vm.getRaw('pit2')),
    clock: b64(clock),
  };
}

/** kvm_clock_data.flags: its `realtime` field is valid (KVM_GET_CLOCK) / to be used (KVM_SET_CLOCK). */
export const KVM_CLOCK_REALTIME = 1 << 2;

/**
 * Puts the VM-wide state back. The guest's clock goes on from where it stopped; with `realtime`
 * (Firecracker's clock_realtime) it is advanced by the wall-clock time since the snapshot, which
 * KVM does from the record's `realtime` field when KVM_CLOCK_REALTIME is passed; that needs a record
 * whose host gave one (a host on the TSC clocksource), else a one-line error.
 */
export function applyVm(vm: KvmVm, s: VmStateRecord, realtime = false): void {
  for (const chip of s.irqchip) vm.setIrqchip(unb64(chip));
  vm.setRaw('pit2', unb64(s.pit2));
  const clock = unb64(s.clock);
  const had = clock.readUInt32LE(8);
  if (realtime && !(had & KVM_CLOCK_REALTIME))
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      "clock_realtime: the snapshot's clock has no wall-clock time (its host's KVM gave none: it needs the TSC clocksource); restore without clock_realtime",
    );
  // The other flags (which fields KVM_GET_CLOCK filled) are not for KVM_SET_CLOCK to judge on another host.
  clock.writeUInt32LE(realtime ? KVM_CLOCK_REALTIME : 0, 8);
  vm.setRaw('clock', clock);
}

/**
 * Reads a state file of any version this vireo reads, as a body of the current format: a format-2
 * body's raw device layouts become format 3's records (v2.ts). The caller checks the whole body
 * before it reads any of it (vmm/snapshot-body.ts knows the devices it may hold).
 */
export function readStateFileBody(path: string): unknown {
  const { version, body } = decodeStateFile(path);
  if (version === 2)
    try {
      upgradeV2Body(body);
    } catch (e) {
      if (!(e instanceof SchemaError)) throw e;
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT_CORRUPT',
        `snapshot ${path} (format 2) has a bad body at ${e.at}: ${e.why}; it was damaged or not written by vireo`,
      );
    }
  return body;
}
