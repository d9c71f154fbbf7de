/**
 * The schema of a state file's body, checked whole before a restore reads any of it. The file's
 * SHA-256 is a checksum, not a signature: anyone who can write the file can re-compute it, so every
 * field the restore path reads is checked for its type, range and size here, and a bad one is a
 * SnapshotError naming its JSON path ($.vcpus[0].msrs[3][1]) instead of a TypeError deep in the
 * restore. Unknown keys are refused too: a body this vireo did not write is not guessed at. The
 * combinators are common/schema.ts's, shared with each device's own state record check.
 */
import { ramRanges } from '../arch/x86_64/layout.js';
import { SnapshotError } from '../common/errors.js';
import {
  array,
  SchemaError as Bad,
  bool,
  type Check,
  int,
  isObject,
  object,
  oneOf,
  opt,
  str,
  tuple,
  u32,
} from '../common/schema.js';
import { checkAcpiPmState } from '../devices/legacy/acpi-pm-state.js';
import { checkCmosState } from '../devices/legacy/cmos-state.js';
import { checkI8042State } from '../devices/legacy/i8042-state.js';
import { checkPostCodeState } from '../devices/legacy/post-code-state.js';
import { checkSerialState } from '../devices/legacy/serial-state.js';
import { checkBalloonControlState } from '../devices/virtio/balloon-control-state.js';
import { checkBalloonState } from '../devices/virtio/balloon-state.js';
import { checkBlockState } from '../devices/virtio/block-state.js';
import { checkConsoleState } from '../devices/virtio/console-state.js';
import { checkMmioTransportState } from '../devices/virtio/mmio-state.js';
import { checkNetState } from '../devices/virtio/net-state.js';
import { checkRngState } from '../devices/virtio/rng-state.js';
import { deviceSideStateCheck } from '../devices/virtio/side-state.js';
import { checkVsockState } from '../devices/virtio/vsock/state.js';
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

const PATH = 4096;
const NAME = 256;
/** More than any vireo VM has (virtio-mmio slots, KVM's 256 CPUID entries, KVM's MSR list). */
const MAX_DEVICES = 64;
const MAX_CPUID = 256;
const MAX_MSRS = 4096;

const config = object({
  memMiB: int(2, 1024 * 1024),
  cpus: int(1, 254),
  irqchip: bool,
  drives: array(
    object({ id: str(NAME), path: str(PATH), readOnly: opt(bool), format: opt(oneOf('raw', 'qcow2')) }),
    0,
    MAX_DEVICES,
  ),
  nets: array(object({ id: str(NAME), tap: str(NAME), mac: opt(array(int(0, 255), 6, 6)) }), 0, MAX_DEVICES),
  vsock: opt(object({ cid: u32, udsPath: str(PATH) })),
  rng: bool,
  balloon: opt(object({ amountMiB: int(0, 1024 * 1024), deflateOnOom: bool, statsPollingIntervalS: u32 })),
  virtioConsole: bool,
});

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

/** Each virtio device kind's own record check, by the slot name's kind (virtio-blk:ID → virtio-blk). */
const DEVICE_RECORDS: Record<string, Check> = {
  'virtio-blk': checkBlockState,
  'virtio-net': checkNetState,
  'virtio-rng': checkRngState,
  'virtio-console': checkConsoleState,
  'virtio-vsock': checkVsockState,
  'virtio-balloon': checkBalloonState,
};
/** A virtio slot: its side record's device part is checked by the kind its name says. */
const virtioSlot =
  (mmio: Check): Check =>
  (v, at) => {
    const kind = isObject(v) && typeof v.name === 'string' ? v.name.split(':')[0] : undefined;
    const device = kind === undefined ? undefined : DEVICE_RECORDS[kind];
    if (device === undefined) {
      str(NAME)(isObject(v) ? v.name : undefined, `${at}.name`);
      throw new Bad(`${at}.name`, `expected a virtio device name (${Object.keys(DEVICE_RECORDS).join(', ')})`);
    }
    object({ name: str(NAME), mmio, side: deviceSideStateCheck(device) })(v, at);
  };
const devices = object({
  serial: checkSerialState,
  postCode: checkPostCodeState,
  i8042: checkI8042State,
  cmos: checkCmosState,
  acpiPm: checkAcpiPmState,
  virtio: array(virtioSlot(checkMmioTransportState), 0, MAX_DEVICES),
  balloon: opt(checkBalloonControlState),
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

/**
 * Checks a decoded body against the schema and the cross-field rules (one vCPU state per vCPU, VM
 * state present exactly with the irqchip, the memory layout of the configured size); throws
 * SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the path of the first bad field.
 */
export function validateBody(x: unknown, path: string): void {
  try {
    if (!isObject(x)) throw new Bad('$', 'expected an object');
    object({
      vireo: str(NAME),
      createdAt: str(NAME),
      config,
      memory,
      vcpus: (v, at) => {
        if (!Array.isArray(v)) throw new Bad(at, 'expected a list');
      },
      vm: opt(vmState),
      devices,
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
