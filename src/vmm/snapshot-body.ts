/**
 * What a snapshot's state file holds, whole: the machine's part (snapshot/state.ts, checked by
 * snapshot/body-schema.ts) and the devices' part, which only the VMM knows — the legacy platform's
 * records, each virtio slot's records checked by the kind its name says, each kind's configuration
 * and host record, and the resource allocator's state. Every device piece comes from the registry
 * (device-registry.ts): a new kind adds nothing here.
 */
import { SnapshotError } from '../common/errors.js';
import { type Check, int, isObject, object, oneOf, opt, SchemaError, str } from '../common/schema.js';
import { checkAcpiPmState } from '../devices/legacy/acpi-pm-state.js';
import { checkCmosState } from '../devices/legacy/cmos-state.js';
import { checkI8042State } from '../devices/legacy/i8042-state.js';
import { checkPostCodeState } from '../devices/legacy/post-code-state.js';
import { checkSerialState } from '../devices/legacy/serial-state.js';
import type { BalloonControlState } from '../devices/virtio/balloon-control-state.js';
import { checkTransportState } from '../devices/virtio/transport/common-state.js';
import { runnerStateCheck } from '../devices/virtio/transport/runner-state.js';
import { validateBodyWith } from '../snapshot/body-schema.js';
import { type MemoryRecord, readStateFileBody, type VcpuState, type VmStateRecord } from '../snapshot/state.js';
import { DEVICE_KINDS, kindOfSlot } from './device-registry.js';
import type { PlatformState } from './platform.js';
import { checkResourcesState, DEVICE_GSIS, type ResourcesState } from './resources.js';
import type { VirtioDevicesState } from './virtio-devices.js';

/** The configuration a restore rebuilds the VM from: the machine's, and each device kind's under its key. */
export type SnapshotConfig = { memMiB: number; cpus: number; irqchip: boolean } & Record<string, unknown>;

/**
 * Every device's record (format 3): the legacy platform's, the virtio slots', each kind's host record
 * under its key (the balloon's typed here for readers; a kind's record needs no line here).
 */
export type SnapshotDevices = PlatformState & VirtioDevicesState & { balloon?: BalloonControlState | undefined };

export interface SnapshotBody {
  vireo: string;
  createdAt: string;
  config: SnapshotConfig;
  memory: MemoryRecord;
  vcpus: VcpuState[];
  vm: VmStateRecord | undefined;
  devices: SnapshotDevices;
  /** The resource allocator's state (absent in snapshots written before it: derived on restore). */
  resources?: ResourcesState | undefined;
}

const NAME = 256;
/** More than any vireo VM has (virtio-mmio slots). */
const MAX_DEVICES = 64;

const transport = object({ kind: oneOf('mmio'), base: int(0, 2 ** 52), gsi: int(0, 255) });

/** A virtio slot: its side record's device part is checked by the kind its name says. */
const virtioSlot: Check = (v, at) => {
  const kind = isObject(v) && typeof v.name === 'string' ? kindOfSlot(v.name) : undefined;
  if (kind === undefined) {
    str(NAME)(isObject(v) ? v.name : undefined, `${at}.name`);
    throw new SchemaError(
      `${at}.name`,
      `expected a virtio device name (${DEVICE_KINDS.map((k) => k.name).join(', ')})`,
    );
  }
  object({
    name: str(NAME),
    transport: opt(transport),
    mmio: checkTransportState,
    side: runnerStateCheck(kind.recordCheck),
  })(v, at);
};

const virtioSlots: Check = (v, at) => {
  if (!Array.isArray(v) || v.length > MAX_DEVICES) throw new SchemaError(at, `expected a list of 0 to ${MAX_DEVICES}`);
  v.forEach((x, i) => {
    virtioSlot(x, `${at}[${i}]`);
  });
};

const devices = object({
  serial: checkSerialState,
  postCode: checkPostCodeState,
  i8042: checkI8042State,
  cmos: checkCmosState,
  acpiPm: checkAcpiPmState,
  virtio: virtioSlots,
  ...Object.fromEntries(
    DEVICE_KINDS.flatMap((k) => (k.hostRecord ? [[k.hostRecord.key, opt(k.hostRecord.check)]] : [])),
  ),
});

/**
 * The slots' transports against the allocator's record: both or neither (a snapshot from before the
 * allocator has neither), and each transport one the record handed out (ResourceAllocator.claim
 * checks that again as it takes them).
 */
function checkTransports(x: Record<string, unknown>): void {
  const slots = (x.devices as { virtio: { transport?: unknown }[] }).virtio;
  const has = x.resources !== undefined;
  slots.forEach((s, i) => {
    if (has && s.transport === undefined)
      throw new SchemaError(`$.devices.virtio[${i}].transport`, 'missing (the snapshot has a resources record)');
    if (!has && s.transport !== undefined)
      throw new SchemaError(`$.devices.virtio[${i}].transport`, 'unexpected (the snapshot has no resources record)');
    const t = s.transport as { gsi: number } | undefined;
    if (t && !(DEVICE_GSIS as readonly number[]).includes(t.gsi))
      throw new SchemaError(`$.devices.virtio[${i}].transport.gsi`, `expected one of ${DEVICE_GSIS.join(', ')}`);
  });
}

/**
 * Checks a decoded body against the schema and the cross-field rules; throws SnapshotError
 * VIREO_ERR_SNAPSHOT_CORRUPT with the path of the first bad field.
 */
export function validateBody(x: unknown, path: string): void {
  validateBodyWith(x, path, {
    config: Object.fromEntries(DEVICE_KINDS.map((k) => [k.configKey, k.snapshot.check])),
    devices,
    records: { resources: opt(checkResourcesState) },
  });
  try {
    checkTransports(x as Record<string, unknown>);
  } catch (e) {
    if (!(e instanceof SchemaError)) throw e;
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `snapshot ${path} has a bad body at ${e.at}: ${e.why}; it was damaged or not written by this vireo`,
    );
  }
}

/** Checks the whole body: a clear error naming the bad field rather than a crash. */
export function checkBody(x: unknown, path: string): SnapshotBody {
  validateBody(x, path);
  return x as SnapshotBody;
}

/** Reads a state file of any version this vireo reads (format 2 is upgraded) and checks the whole body. */
export function readSnapshotBody(path: string): SnapshotBody {
  return checkBody(readStateFileBody(path), path);
}
