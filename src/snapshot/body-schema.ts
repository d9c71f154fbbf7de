/**
 * The schema of a state file's body, checked whole before a restore reads any of it. The file's
 * SHA-256 is a checksum, not a signature: anyone who can write the file can re-compute it, so every
 * field the restore path reads is checked for its type, range and size here, and a bad one is a
 * SnapshotError naming its JSON path ($.vcpus[0].msrs[3][1]) instead of a TypeError deep in the
 * restore. Unknown keys are refused too: a body this vireo did not write is not guessed at. The
 * combinators are common/schema.ts's, shared with each device's own state record check. This file
 * checks the machine's part (vCPUs, VM state, memory layout); the devices' part is the VMM's
 * (vmm/snapshot-body.ts), which passes its checks in.
 */
import { ramRanges } from '../arch/x86_64/layout.js';
import { SnapshotError } from '../common/errors.js';
import {
  array,
  SchemaError as Bad,
  bool,
  type Check,
  type Field,
  int,
  isObject,
  object,
  oneOf,
  opt,
  str,
  tuple,
  u32,
} from '../common/schema.js';
import { SIZE } from '../kvm/abi.js';

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** Base64 of exactly `bytes` bytes (a KVM struct); `allowEmpty` for state a VM without irqchip has none of. */
const b64 =
  (bytes: number | undefined, allowEmpty = false): Check =>
  (v, at) => {
    if (typeof v !== 'string' || v.length % 4 !== 0 || !B64.test(v)) throw new Bad(at, 'expected base64');
    if (allowEmpty && v === '') return;
    if (bytes === undefined) {
      if (v.length > 1 << 20) throw new Bad(at, 'expected base64 of at most 768 KiB');
      return;
    }
    const pad = v.endsWith('==') ? 2 : v.endsWith('=') ? 1 : 0;
    if ((v.length / 4) * 3 - pad !== bytes) throw new Bad(at, `expected base64 of ${bytes} bytes`);
  };
const decimalU64: Check = (v, at) => {
  if (typeof v !== 'string' || !/^\d{1,20}$/.test(v) || BigInt(v) > 0xffffffffffffffffn)
    throw new Bad(at, 'expected a 64-bit unsigned integer as a decimal string');
};

const NAME = 256;
const MAX_CPUID = 256;
const MAX_MSRS = 4096;

/** The machine's own configuration keys; the devices' keys are the caller's (BodyParts.config). */
const machineConfig = {
  memMiB: int(2, 1024 * 1024),
  cpus: int(1, 254),
  irqchip: bool,
};

const memory = object({
  size: int(0, Number.MAX_SAFE_INTEGER),
  regions: array(
    object({ gpa: int(0, Number.MAX_SAFE_INTEGER), size: int(0, Number.MAX_SAFE_INTEGER), offset: int(0, 2 ** 52) }),
    1,
    8,
  ),
  id: str(NAME),
  type: oneOf('Full', 'Diff'),
  parent: opt(str(NAME)),
});

const cpuidEntry = object({ function: u32, index: u32, flags: u32, eax: u32, ebx: u32, ecx: u32, edx: u32 });
const vcpu = (irqchip: boolean): Check =>
  object({
    cpuid: array(cpuidEntry, 0, MAX_CPUID),
    regs: b64(SIZE.kvm_regs),
    sregs: b64(SIZE.kvm_sregs),
    xsave: b64(SIZE.kvm_xsave),
    xcrs: b64(SIZE.kvm_xcrs),
    // Without the in-kernel irqchip there is no LAPIC to save: the field is empty.
    lapic: irqchip ? b64(SIZE.kvm_lapic_state) : b64(0, true),
    vcpu_events: b64(SIZE.kvm_vcpu_events),
    mp_state: b64(SIZE.kvm_mp_state),
    msrs: array(tuple(u32, decimalU64), 0, MAX_MSRS),
  });

const vmState = object({
  irqchip: array(b64(SIZE.kvm_irqchip), 3, 3),
  pit2: b64(SIZE.kvm_pit_state2),
  clock: b64(SIZE.kvm_clock_data),
});

/** The layout a restore maps: the regions of a VM of memMiB, laid out one after another in the file. */
function checkLayout(m: { size: number; regions: { gpa: number; size: number; offset: number }[] }, memMiB: number) {
  const want = ramRanges(memMiB * 1024 * 1024);
  if (m.regions.length !== want.length)
    throw new Bad('$.memory.regions', `expected ${want.length} region(s) for ${memMiB} MiB`);
  let offset = 0;
  m.regions.forEach((r, i) => {
    const w = want[i] as { gpa: number; size: number };
    if (r.gpa !== w.gpa || r.size !== w.size || r.offset !== offset)
      throw new Bad(
        `$.memory.regions[${i}]`,
        `expected gpa ${w.gpa}, size ${w.size}, offset ${offset} (the layout of ${memMiB} MiB)`,
      );
    offset += r.size;
  });
  if (m.size !== offset) throw new Bad('$.memory.size', `expected ${offset}, the sum of the regions`);
}

/** What a body holds besides the machine's own state: the VMM's part, which knows the devices. */
export interface BodyParts {
  /** The devices' configuration keys, beside memMiB, cpus and irqchip. */
  config: Record<string, Check | Field>;
  /** The devices' records. */
  devices: Check;
  /** Further top-level records (the resource allocator's). */
  records: Record<string, Check | Field>;
}

/**
 * Checks a decoded body against the schema and the cross-field rules (one vCPU state per vCPU, VM
 * state present exactly with the irqchip, the memory layout of the configured size); throws
 * SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the path of the first bad field.
 */
export function validateBodyWith(x: unknown, path: string, parts: BodyParts): void {
  try {
    if (!isObject(x)) throw new Bad('$', 'expected an object');
    object({
      vireo: str(NAME),
      createdAt: str(NAME),
      config: object({ ...machineConfig, ...parts.config }),
      memory,
      vcpus: (v, at) => {
        if (!Array.isArray(v)) throw new Bad(at, 'expected a list');
      },
      vm: opt(vmState),
      devices: parts.devices,
      ...parts.records,
    })(x, '$');
    const c = x.config as { cpus: number; irqchip: boolean; memMiB: number };
    array(vcpu(c.irqchip), c.cpus, c.cpus)(x.vcpus, '$.vcpus');
    if (c.irqchip && x.vm === undefined) throw new Bad('$.vm', 'missing (the configuration has the irqchip)');
    if (!c.irqchip && x.vm !== undefined) throw new Bad('$.vm', 'unexpected (the configuration has no irqchip)');
    checkLayout(x.memory as Parameters<typeof checkLayout>[0], c.memMiB);
  } catch (e) {
    if (!(e instanceof Bad)) throw e;
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `snapshot ${path} has a bad body at ${e.at}: ${e.why}; it was damaged or not written by this vireo`,
    );
  }
}
