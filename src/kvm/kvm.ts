/**
 * Kvm → Vm → Vcpu: typed handles over /dev/kvm. The only module that issues KVM ioctls (through src/os/).
 * Each handle owns its fd (and the vCPU its kvm_run mapping) and releases them in close().
 */
import { existsSync, readFileSync } from 'node:fs';
import { KvmUnavailableError, SyscallError, VireoError } from '../common/errors.js';
import * as sys from '../os/sys.js';
import {
  CAP,
  type CapName,
  IOCTL,
  KVM_API_VERSION,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQFD_FLAG_DEASSIGN,
  KVM_PIT_SPEAKER_DUMMY,
  OFFSET,
  SIZE,
} from './abi.js';
import { KvmRun, type VcpuExit } from './exit.js';
import {
  type CpuidEntry,
  decodeCpuid,
  decodeFpu,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeFpu,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  type Fpu,
  type MsrEntry,
  type Regs,
  type Sregs,
} from './structs.js';

export type KvmFlavour = 'vmx' | 'svm' | 'pvm' | 'unknown';

/** The capabilities vireo relies on, reported by `vireo host`. */
export const USED_CAPS: readonly CapName[] = [
  'KVM_CAP_IRQCHIP',
  'KVM_CAP_USER_MEMORY',
  'KVM_CAP_SET_TSS_ADDR',
  'KVM_CAP_EXT_CPUID',
  'KVM_CAP_PIT2',
  'KVM_CAP_IRQFD',
  'KVM_CAP_IOEVENTFD',
  'KVM_CAP_IMMEDIATE_EXIT',
  'KVM_CAP_MP_STATE',
  'KVM_CAP_VCPU_EVENTS',
  'KVM_CAP_XSAVE',
  'KVM_CAP_XCRS',
  'KVM_CAP_ADJUST_CLOCK',
  'KVM_CAP_SET_IDENTITY_MAP_ADDR',
  'KVM_CAP_DIRTY_LOG_RING',
];

/** Capabilities without which vireo cannot run a VM at all. */
export const REQUIRED_CAPS: readonly CapName[] = [
  'KVM_CAP_USER_MEMORY',
  'KVM_CAP_IRQCHIP',
  'KVM_CAP_PIT2',
  'KVM_CAP_IMMEDIATE_EXIT',
  'KVM_CAP_EXT_CPUID',
];

export function detectFlavour(): KvmFlavour {
  if (existsSync('/sys/module/kvm_pvm')) return 'pvm';
  try {
    const flags = readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '';
    if (/\bvmx\b/.test(flags)) return 'vmx';
    if (/\bsvm\b/.test(flags)) return 'svm';
  } catch {
    // no /proc: unknown
  }
  if (existsSync('/sys/module/kvm_intel')) return 'vmx';
  if (existsSync('/sys/module/kvm_amd')) return 'svm';
  return 'unknown';
}

export class Kvm {
  private constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  /** Open the KVM device, with one clear line for each way that can fail. */
  static open(path = '/dev/kvm'): Kvm {
    let fd: number;
    try {
      fd = sys.open(path, sys.O_RDWR);
    } catch (e) {
      const errno = e instanceof SyscallError ? e.errno : 0;
      if (errno === 2 || errno === 19 || errno === 6)
        throw new KvmUnavailableError(
          'VIREO_ERR_NO_KVM',
          `${path} does not exist: this host has no KVM; enable virtualization (VT-x/AMD-V) and load kvm_intel or kvm_amd, or use a VM with nested virtualization`,
        );
      if (errno === 13 || errno === 1)
        throw new KvmUnavailableError(
          'VIREO_ERR_KVM_PERMISSION',
          `no permission to open ${path}: add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run as root`,
        );
      throw e;
    }
    const kvm = new Kvm(fd, path);
    let version: number;
    try {
      version = sys.ioctlInt(fd, IOCTL.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
    } catch (e) {
      kvm.close();
      throw new KvmUnavailableError(
        'VIREO_ERR_NO_KVM',
        `${path} is not a KVM device (KVM_GET_API_VERSION: ${e instanceof Error ? e.message : e}); point vireo at /dev/kvm`,
      );
    }
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new KvmUnavailableError(
        'VIREO_ERR_KVM_API_VERSION',
        `${path} speaks KVM API version ${version}, vireo needs ${KVM_API_VERSION}: use a Linux kernel ≥ 2.6.22 with the standard KVM module`,
      );
    }
    return kvm;
  }

  get apiVersion(): number {
    return sys.ioctlInt(this.fd, IOCTL.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
  }

  checkExtension(cap: CapName): number {
    return sys.ioctlInt(this.fd, IOCTL.KVM_CHECK_EXTENSION, CAP[cap], 'KVM_CHECK_EXTENSION');
  }

  /** Throw one clear error naming the first capability this host lacks. */
  requireCapabilities(caps: readonly CapName[] = REQUIRED_CAPS): void {
    for (const cap of caps) {
      if (this.checkExtension(cap) <= 0)
        throw new KvmUnavailableError(
          'VIREO_ERR_KVM_CAPABILITY',
          `this host's KVM lacks ${cap}, which vireo needs: use a newer host kernel`,
        );
    }
  }

  get vcpuMmapSize(): number {
    return sys.ioctlInt(this.fd, IOCTL.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  /** Every MSR this KVM can save and restore (KVM_GET_MSR_INDEX_LIST). */
  msrIndexList(): number[] {
    const head = Buffer.alloc(4);
    // The first call fails with E2BIG and tells how many there are.
    try {
      sys.ioctl(this.fd, IOCTL.KVM_GET_MSR_INDEX_LIST, head, 'KVM_GET_MSR_INDEX_LIST');
    } catch {
      // expected: E2BIG
    }
    const n = head.readUInt32LE(0);
    const b = Buffer.alloc(4 + 4 * n);
    b.writeUInt32LE(n, 0);
    sys.ioctl(this.fd, IOCTL.KVM_GET_MSR_INDEX_LIST, b, 'KVM_GET_MSR_INDEX_LIST');
    const out: number[] = [];
    for (let i = 0; i < b.readUInt32LE(0); i++) out.push(b.readUInt32LE(4 + 4 * i));
    return out;
  }

  supportedCpuid(): CpuidEntry[] {
    const max = 256;
    const b = Buffer.alloc(SIZE.kvm_cpuid2 + max * SIZE.kvm_cpuid_entry2);
    b.writeUInt32LE(max, 0);
    sys.ioctl(this.fd, IOCTL.KVM_GET_SUPPORTED_CPUID, b, 'KVM_GET_SUPPORTED_CPUID');
    return decodeCpuid(b);
  }

  createVm(): Vm {
    const fd = sys.ioctlInt(this.fd, IOCTL.KVM_CREATE_VM, 0, 'KVM_CREATE_VM');
    return new Vm(fd, this.vcpuMmapSize);
  }

  close(): void {
    sys.close(this.fd);
  }
}

export interface IoEventFdSpec {
  fd: number;
  addr: number;
  len: 0 | 1 | 2 | 4 | 8;
  pio: boolean;
  datamatch?: bigint;
}

/** vCPU state KVM hands out as one struct each. */
const VCPU_STATE = {
  regs: { get: IOCTL.KVM_GET_REGS, set: IOCTL.KVM_SET_REGS, size: SIZE.kvm_regs },
  sregs: { get: IOCTL.KVM_GET_SREGS, set: IOCTL.KVM_SET_SREGS, size: SIZE.kvm_sregs },
  fpu: { get: IOCTL.KVM_GET_FPU, set: IOCTL.KVM_SET_FPU, size: SIZE.kvm_fpu },
  xsave: { get: IOCTL.KVM_GET_XSAVE, set: IOCTL.KVM_SET_XSAVE, size: SIZE.kvm_xsave },
  xcrs: { get: IOCTL.KVM_GET_XCRS, set: IOCTL.KVM_SET_XCRS, size: SIZE.kvm_xcrs },
  lapic: { get: IOCTL.KVM_GET_LAPIC, set: IOCTL.KVM_SET_LAPIC, size: SIZE.kvm_lapic_state },
  vcpu_events: { get: IOCTL.KVM_GET_VCPU_EVENTS, set: IOCTL.KVM_SET_VCPU_EVENTS, size: SIZE.kvm_vcpu_events },
  mp_state: { get: IOCTL.KVM_GET_MP_STATE, set: IOCTL.KVM_SET_MP_STATE, size: SIZE.kvm_mp_state },
} as const;
export type VcpuStateKind = keyof typeof VCPU_STATE;

/** VM-wide state KVM hands out as one struct each (the irqchip has three: PIC master, slave, IOAPIC). */
const VM_STATE = {
  pit2: { get: IOCTL.KVM_GET_PIT2, set: IOCTL.KVM_SET_PIT2, size: SIZE.kvm_pit_state2 },
  clock: { get: IOCTL.KVM_GET_CLOCK, set: IOCTL.KVM_SET_CLOCK, size: SIZE.kvm_clock_data },
} as const;
export type VmStateKind = keyof typeof VM_STATE;

export class Vm {
  private readonly vcpus: Vcpu[] = [];
  private closed = false;
  constructor(
    readonly fd: number,
    readonly vcpuMmapSize: number,
  ) {}

  setUserMemoryRegion(slot: number, guestPhysAddr: number, size: number, hostAddr: number, flags = 0): void {
    const b = Buffer.alloc(SIZE.kvm_userspace_memory_region);
    const o = OFFSET.kvm_userspace_memory_region;
    b.writeUInt32LE(slot, o.slot);
    b.writeUInt32LE(flags, o.flags);
    b.writeBigUInt64LE(BigInt(guestPhysAddr), o.guest_phys_addr);
    b.writeBigUInt64LE(BigInt(size), o.memory_size);
    b.writeBigUInt64LE(BigInt(hostAddr), o.userspace_addr);
    sys.ioctl(this.fd, IOCTL.KVM_SET_USER_MEMORY_REGION, b, 'KVM_SET_USER_MEMORY_REGION');
  }

  /**
   * KVM_GET_DIRTY_LOG: the pages of memory slot `slot` (`pages` long, registered with
   * KVM_MEM_LOG_DIRTY_PAGES) the guest wrote since the last call, one bit per page, LSB first; KVM
   * clears its log as it answers.
   */
  getDirtyLog(slot: number, pages: number): Uint8Array {
    // KVM writes the bitmap through a user pointer: a mapping gives it an address koffi can pass.
    const bytes = Math.ceil(pages / 64) * 8;
    const len = Math.ceil(bytes / 4096) * 4096;
    const addr = sys.mmap(0, len, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    try {
      const b = Buffer.alloc(SIZE.kvm_dirty_log);
      b.writeUInt32LE(slot, OFFSET.kvm_dirty_log.slot);
      b.writeBigUInt64LE(BigInt(addr), OFFSET.kvm_dirty_log.dirty_bitmap);
      sys.ioctl(this.fd, IOCTL.KVM_GET_DIRTY_LOG, b, 'KVM_GET_DIRTY_LOG');
      return new Uint8Array(sys.view(addr, bytes)).slice();
    } finally {
      sys.munmap(addr, len);
    }
  }

  setTssAddr(addr: number): void {
    sys.ioctlInt(this.fd, IOCTL.KVM_SET_TSS_ADDR, addr, 'KVM_SET_TSS_ADDR');
  }

  setIdentityMapAddr(addr: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(addr));
    sys.ioctl(this.fd, IOCTL.KVM_SET_IDENTITY_MAP_ADDR, b, 'KVM_SET_IDENTITY_MAP_ADDR');
  }

  createIrqchip(): void {
    sys.ioctlInt(this.fd, IOCTL.KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  }

  createPit2(): void {
    const b = Buffer.alloc(SIZE.kvm_pit_config);
    b.writeUInt32LE(KVM_PIT_SPEAKER_DUMMY, 0);
    sys.ioctl(this.fd, IOCTL.KVM_CREATE_PIT2, b, 'KVM_CREATE_PIT2');
  }

  /** Drive an interrupt line of the in-kernel irqchip. */
  getRaw(kind: VmStateKind): Buffer {
    const k = VM_STATE[kind];
    const b = Buffer.alloc(k.size);
    sys.ioctl(this.fd, k.get, b, `KVM_GET_${kind.toUpperCase()}`);
    return b;
  }

  setRaw(kind: VmStateKind, state: Buffer): void {
    const k = VM_STATE[kind];
    if (state.length !== k.size)
      throw new VireoError('VIREO_ERR_VM', `VM ${kind} state is ${state.length} bytes; KVM expects ${k.size}`);
    sys.ioctl(this.fd, k.set, state, `KVM_SET_${kind.toUpperCase()}`);
  }

  /** One interrupt controller's state: 0 PIC master, 1 PIC slave, 2 IOAPIC (struct kvm_irqchip). */
  getIrqchip(chip: 0 | 1 | 2): Buffer {
    const b = Buffer.alloc(SIZE.kvm_irqchip);
    b.writeUInt32LE(chip, 0);
    sys.ioctl(this.fd, IOCTL.KVM_GET_IRQCHIP, b, 'KVM_GET_IRQCHIP');
    return b;
  }

  setIrqchip(state: Buffer): void {
    if (state.length !== SIZE.kvm_irqchip) throw new VireoError('VIREO_ERR_VM', 'bad irqchip state size');
    sys.ioctl(this.fd, IOCTL.KVM_SET_IRQCHIP, state, 'KVM_SET_IRQCHIP');
  }

  irqLine(irq: number, level: boolean): void {
    irqLineRaw(this.fd, irq, level);
  }

  irqfd(fd: number, gsi: number, deassign = false): void {
    const b = Buffer.alloc(SIZE.kvm_irqfd);
    b.writeUInt32LE(fd, OFFSET.kvm_irqfd.fd);
    b.writeUInt32LE(gsi, OFFSET.kvm_irqfd.gsi);
    b.writeUInt32LE(deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0, OFFSET.kvm_irqfd.flags);
    sys.ioctl(this.fd, IOCTL.KVM_IRQFD, b, 'KVM_IRQFD');
  }

  ioeventfd(spec: IoEventFdSpec, deassign = false): void {
    const b = Buffer.alloc(SIZE.kvm_ioeventfd);
    const o = OFFSET.kvm_ioeventfd;
    let flags = 0;
    if (spec.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (spec.datamatch !== undefined) {
      flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
      b.writeBigUInt64LE(spec.datamatch, o.datamatch);
    }
    if (deassign) flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
    b.writeBigUInt64LE(BigInt(spec.addr), o.addr);
    b.writeUInt32LE(spec.len, o.len);
    b.writeInt32LE(spec.fd, o.fd);
    b.writeUInt32LE(flags, o.flags);
    sys.ioctl(this.fd, IOCTL.KVM_IOEVENTFD, b, 'KVM_IOEVENTFD');
  }

  createVcpu(id: number): Vcpu {
    const fd = sys.ioctlInt(this.fd, IOCTL.KVM_CREATE_VCPU, id, 'KVM_CREATE_VCPU');
    let runAddr: number;
    try {
      runAddr = sys.mmap(0, this.vcpuMmapSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_SHARED, fd, 0);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
    const vcpu = new Vcpu({ fd, id, runAddr, runSize: this.vcpuMmapSize }, true);
    this.vcpus.push(vcpu);
    return vcpu;
  }

  /** Close every vCPU this VM created, then the VM fd. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const v of this.vcpus) v.close();
    sys.close(this.fd);
  }
}

const irqLevelBuf = Buffer.alloc(SIZE.kvm_irq_level);
/** KVM_IRQ_LINE on a VM fd; usable from any thread that knows the fd. */
export function irqLineRaw(vmFd: number, irq: number, level: boolean): void {
  irqLevelBuf.writeUInt32LE(irq, OFFSET.kvm_irq_level.irq);
  irqLevelBuf.writeUInt32LE(level ? 1 : 0, OFFSET.kvm_irq_level.level);
  sys.ioctl(vmFd, IOCTL.KVM_IRQ_LINE, irqLevelBuf, 'KVM_IRQ_LINE');
}

/** What another thread needs to drive the same vCPU: plain numbers, postable to a worker. */
export interface VcpuDescriptor {
  fd: number;
  id: number;
  runAddr: number;
  runSize: number;
}

export class Vcpu {
  readonly fd: number;
  readonly id: number;
  readonly run: KvmRun;
  private closed = false;

  /** `owned`: this handle created the fd and mapping and will release them. */
  constructor(
    readonly descriptor: VcpuDescriptor,
    private readonly owned: boolean,
  ) {
    this.fd = descriptor.fd;
    this.id = descriptor.id;
    this.run = new KvmRun(sys.view(descriptor.runAddr, descriptor.runSize));
  }

  /** A non-owning handle onto a vCPU created elsewhere (in a worker thread). */
  static attach(d: VcpuDescriptor): Vcpu {
    return new Vcpu(d, false);
  }

  /** Enter the guest until the next exit. EINTR (a kick) is reported as `interrupted`. */
  runOnce(): VcpuExit {
    const r = sys.ioctlRaw(this.fd, IOCTL.KVM_RUN, 0);
    if (r < 0) {
      if (r === -sys.EINTR || r === -sys.EAGAIN) return { kind: 'interrupted' };
      throw new SyscallError('ioctl(KVM_RUN)', -r);
    }
    return this.run.decode();
  }

  getRegs(): Regs {
    const b = Buffer.alloc(SIZE.kvm_regs);
    sys.ioctl(this.fd, IOCTL.KVM_GET_REGS, b, 'KVM_GET_REGS');
    return decodeRegs(b);
  }

  setRegs(r: Regs): void {
    sys.ioctl(this.fd, IOCTL.KVM_SET_REGS, encodeRegs(r), 'KVM_SET_REGS');
  }

  getSregs(): Sregs {
    const b = Buffer.alloc(SIZE.kvm_sregs);
    sys.ioctl(this.fd, IOCTL.KVM_GET_SREGS, b, 'KVM_GET_SREGS');
    return decodeSregs(b);
  }

  setSregs(s: Sregs): void {
    sys.ioctl(this.fd, IOCTL.KVM_SET_SREGS, encodeSregs(s), 'KVM_SET_SREGS');
  }

  getFpu(): Fpu {
    const b = Buffer.alloc(SIZE.kvm_fpu);
    sys.ioctl(this.fd, IOCTL.KVM_GET_FPU, b, 'KVM_GET_FPU');
    return decodeFpu(b);
  }

  setFpu(f: Fpu): void {
    sys.ioctl(this.fd, IOCTL.KVM_SET_FPU, encodeFpu(f), 'KVM_SET_FPU');
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    sys.ioctl(this.fd, IOCTL.KVM_SET_CPUID2, encodeCpuid(entries), 'KVM_SET_CPUID2');
  }

  setMsrs(entries: readonly MsrEntry[]): void {
    const n = sys.ioctl(this.fd, IOCTL.KVM_SET_MSRS, encodeMsrs(entries), 'KVM_SET_MSRS');
    if (n !== entries.length) {
      const bad = entries[n];
      throw new VireoError(
        'VIREO_ERR_VCPU',
        `KVM_SET_MSRS accepted ${n} of ${entries.length} MSRs; MSR 0x${bad?.index.toString(16)} was refused`,
      );
    }
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    const b = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = sys.ioctl(this.fd, IOCTL.KVM_GET_MSRS, b, 'KVM_GET_MSRS');
    return decodeMsrs(b, n);
  }

  getLapic(): Buffer {
    const b = Buffer.alloc(SIZE.kvm_lapic_state);
    sys.ioctl(this.fd, IOCTL.KVM_GET_LAPIC, b, 'KVM_GET_LAPIC');
    return b;
  }

  setLapic(state: Buffer): void {
    sys.ioctl(this.fd, IOCTL.KVM_SET_LAPIC, state, 'KVM_SET_LAPIC');
  }

  getMpState(): number {
    const b = Buffer.alloc(SIZE.kvm_mp_state);
    sys.ioctl(this.fd, IOCTL.KVM_GET_MP_STATE, b, 'KVM_GET_MP_STATE');
    return b.readUInt32LE(0);
  }

  setMpState(state: number): void {
    const b = Buffer.alloc(SIZE.kvm_mp_state);
    b.writeUInt32LE(state, 0);
    sys.ioctl(this.fd, IOCTL.KVM_SET_MP_STATE, b, 'KVM_SET_MP_STATE');
  }

  /** A piece of vCPU state as KVM's own struct bytes (for snapshots: exact, and versioned by KVM). */
  getRaw(kind: VcpuStateKind): Buffer {
    const k = VCPU_STATE[kind];
    const b = Buffer.alloc(k.size);
    sys.ioctl(this.fd, k.get, b, `KVM_GET_${kind.toUpperCase()}`);
    return b;
  }

  setRaw(kind: VcpuStateKind, state: Buffer): void {
    const k = VCPU_STATE[kind];
    if (state.length !== k.size)
      throw new VireoError('VIREO_ERR_VCPU', `vCPU ${kind} state is ${state.length} bytes; KVM expects ${k.size}`);
    sys.ioctl(this.fd, k.set, state, `KVM_SET_${kind.toUpperCase()}`);
  }

  /** Release the fd and kvm_run mapping (owning handle only). Idempotent. */
  close(): void {
    if (this.closed || !this.owned) return;
    this.closed = true;
    sys.munmap(this.descriptor.runAddr, this.descriptor.runSize);
    sys.close(this.fd);
  }
}
