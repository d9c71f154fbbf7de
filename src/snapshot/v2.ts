/**
 * Reads the device state of a format-2 snapshot: there each device's state was the raw bytes of its
 * SharedArrayBuffer (base64). Those layouts are known exactly — they are frozen here, as vireo 2's
 * code laid them out (a lock slot, then one int32 slot per field in order, then the extra bytes at
 * the next 64-byte boundary) — so a v2 body's devices convert to the named records of format 3, and
 * the converted body is then checked like any other. This file must never follow a device's live
 * layout: it describes what v2 files hold.
 */
import { SchemaError as Bad, type Check, isObject, object, opt, str } from '../common/schema.js';
import { createAcpiPmState } from '../devices/legacy/acpi-pm.js';
import { saveAcpiPmState } from '../devices/legacy/acpi-pm-state.js';
import { createI8042State } from '../devices/legacy/i8042.js';
import { saveI8042State } from '../devices/legacy/i8042-state.js';
import { BALLOON_STAT_TAGS } from '../devices/virtio/balloon.js';

/** The v2 layout of one device's buffer. */
interface Layout {
  fields: readonly string[];
  extra: number;
}
const bytesOffset = (nFields: number): number => Math.ceil(((nFields + 1) * 4) / 64) * 64;
const size = (l: Layout): number => bytesOffset(l.fields.length) + l.extra;

const SERIAL: Layout = {
  fields: [
    'ier',
    'lcr',
    'mcr',
    'scr',
    'dll',
    'dlm',
    'fcr',
    'lsrErrors',
    'msr',
    'threPending',
    'rxHead',
    'rxCount',
    'hostHead',
    'hostCount',
    'irqLevel',
    'rxDropped',
    'txBytes',
    'rxBytes',
  ],
  extra: 64 + 4096,
};
const POST_CODE: Layout = { fields: ['count', 'last'], extra: 64 };
const I8042: Layout = {
  fields: ['status', 'ctr', 'outputPort', 'pendingWrite', 'head', 'count', 'irqs', 'dropped'],
  extra: 16,
};
const CMOS: Layout = { fields: ['index', 'offsetLo', 'offsetHi'], extra: 128 };
const MMIO: Layout = {
  fields: [
    'status',
    'deviceFeaturesSel',
    'driverFeaturesSel',
    'driverFeaturesLo',
    'driverFeaturesHi',
    'queueSel',
    'interruptStatus',
    'configGeneration',
    'activeGen',
    'resetGen',
    'resetAck',
    'configWrites',
    'configWriteOffset',
    'configWriteLength',
    'protocolErrors',
  ],
  extra: 8 * 8 * 4 + 256, // 8 queues of 8 int32 registers, then the 256-byte configuration space
};
const BALLOON: Layout = {
  fields: ['targetPages', 'actualPages', 'statsRequests', 'statsUpdates', 'inflated', 'deflated'],
  extra: 10 * 8 + 10 * 4, // a float64 and a present flag (int32) per statistics tag
};

/** A v2 buffer: its int32 slots by name (signed, as stored) and its extra bytes. */
interface Raw {
  slot: Record<string, number>;
  u32: (f: string) => number;
  extra: Buffer;
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
function raw(v: unknown, at: string, l: Layout): Raw {
  const bytes = size(l);
  if (typeof v !== 'string' || v.length % 4 !== 0 || !B64.test(v) || Buffer.byteLength(v, 'base64') !== bytes)
    throw new Bad(at, `expected base64 of ${bytes} bytes (format 2's layout)`);
  const b = Buffer.from(v, 'base64');
  const slot: Record<string, number> = {};
  l.fields.forEach((f, i) => {
    slot[f] = b.readInt32LE(4 * (i + 1));
  });
  return { slot, u32: (f) => (slot[f] as number) >>> 0, extra: b.subarray(bytesOffset(l.fields.length)) };
}

/** `count` bytes of a ring of `ringSize` at `offset`, from `head`; a count past the ring is refused. */
function ring(r: Raw, at: string, offset: number, ringSize: number, head: number, count: number): string {
  if (count < 0 || count > ringSize) throw new Bad(at, `expected at most ${ringSize} bytes queued (format 2)`);
  const out = Buffer.alloc(count);
  for (let i = 0; i < count; i++) out[i] = r.extra[offset + ((head + i) % ringSize)] as number;
  return out.toString('hex');
}

function serial(v: unknown, at: string): unknown {
  const r = raw(v, at, SERIAL);
  const s = r.slot;
  return {
    version: 1,
    ier: s.ier,
    lcr: s.lcr,
    mcr: s.mcr,
    scr: s.scr,
    dll: s.dll,
    dlm: s.dlm,
    fcr: s.fcr,
    lsrErrors: s.lsrErrors,
    msr: s.msr,
    threPending: s.threPending !== 0,
    irqRaised: s.irqLevel !== 0,
    rxFifo: ring(r, at, 0, 16, r.u32('rxHead') % 16, s.rxCount as number),
    hostInput: ring(r, at, 64, 4096, r.u32('hostHead') % 4096, s.hostCount as number),
    rxDropped: r.u32('rxDropped'),
    txBytes: r.u32('txBytes'),
    rxBytes: r.u32('rxBytes'),
  };
}

function postCode(v: unknown, at: string): unknown {
  const r = raw(v, at, POST_CODE);
  const n = r.u32('count');
  const codes: number[] = [];
  for (let i = Math.max(0, n - 64); i < n; i++) codes.push(r.extra[i % 64] as number);
  return { version: 1, count: n, last: r.slot.last, history: Buffer.from(codes).toString('hex') };
}

function i8042(v: unknown, at: string): unknown {
  // Absent in snapshots made before the i8042 was shared: it was then as at power-on.
  if (v === undefined) return saveI8042State(createI8042State());
  const r = raw(v, at, I8042);
  const s = r.slot;
  const p = s.pendingWrite;
  return {
    version: 1,
    status: (s.status as number) & 0xff,
    commandByte: (s.ctr as number) & 0xff,
    outputPort: (s.outputPort as number) & 0xff,
    pendingWrite: p === 0x60 ? 'commandByte' : p === 0xd1 ? 'outputPort' : 'none',
    output: ring(r, at, 0, 16, r.u32('head') % 16, s.count as number),
    irqs: r.u32('irqs'),
    dropped: r.u32('dropped'),
  };
}

function cmos(v: unknown, at: string): unknown {
  const r = raw(v, at, CMOS);
  return {
    version: 1,
    index: (r.slot.index as number) & 0xff,
    clockOffsetMs: r.u32('offsetLo') + (r.slot.offsetHi as number) * 0x1_0000_0000,
    ram: r.extra.subarray(0, 128).toString('hex'),
  };
}

const REGISTER_NAMES: Record<string, string> = {
  driverFeaturesLo: 'driverFeaturesLow',
  driverFeaturesHi: 'driverFeaturesHigh',
};
const QUEUE_NAMES = ['size', 'ready', 'descLow', 'descHigh', 'driverLow', 'driverHigh', 'deviceLow', 'deviceHigh'];

function mmio(v: unknown, at: string, queues: number): unknown {
  const r = raw(v, at, MMIO);
  const out: Record<string, unknown> = { version: 1 };
  for (const f of MMIO.fields) out[REGISTER_NAMES[f] ?? f] = r.u32(f);
  out.queues = Array.from({ length: queues }, (_, q) => {
    const rec: Record<string, unknown> = {};
    QUEUE_NAMES.forEach((name, slot) => {
      const x = r.extra.readUInt32LE((q * 8 + slot) * 4);
      rec[name] = name === 'ready' ? x === 1 : x;
    });
    return rec;
  });
  const config = r.extra.subarray(8 * 8 * 4);
  let end = config.length;
  while (end > 0 && config[end - 1] === 0) end--;
  out.config = config.subarray(0, end).toString('hex');
  return out;
}

function balloon(v: unknown, at: string): unknown {
  if (v === undefined) return undefined;
  const r = raw(v, at, BALLOON);
  const stats: Record<string, number> = {};
  BALLOON_STAT_TAGS.forEach((name, i) => {
    if (r.extra.readInt32LE(80 + 4 * i) !== 0) stats[name] = r.extra.readDoubleLE(8 * i);
  });
  const out: Record<string, unknown> = { version: 1, stats };
  for (const f of BALLOON.fields) out[f] = r.u32(f);
  return out;
}

/**
 * Per device kind, its queues (v2 kept all eight queues' registers; a record has the device's own)
 * and its own record as a v2 device started it (v2 kept no device record: a console's undelivered
 * input was lost, a balloon re-announced its target — which is what these defaults do again).
 */
function virtioKind(
  name: string,
  statsQueue: boolean,
): { queues: number; device: Record<string, unknown> } | undefined {
  switch (name.split(':')[0]) {
    case 'virtio-blk':
    case 'virtio-rng':
      return { queues: 1, device: { version: 1 } };
    case 'virtio-net':
      return { queues: 2, device: { version: 1 } };
    case 'virtio-vsock':
      return { queues: 3, device: { version: 1 } };
    case 'virtio-console':
      return { queues: 2, device: { version: 1, pendingInput: '' } };
    case 'virtio-balloon':
      return {
        queues: statsQueue ? 3 : 2,
        device: { version: 1, announcedTargetPages: null, statsRequestsSeen: null },
      };
    default:
      return undefined;
  }
}

/** Each part is checked where it is converted; here only that they are the parts of v2. */
const converted: Check = () => {};
const devicesShape: Check = object({
  serial: converted,
  postCode: converted,
  i8042: opt(converted),
  cmos: converted,
  virtio: (v, at) => {
    if (!Array.isArray(v) || v.length > 64) throw new Bad(at, 'expected a list of 0 to 64');
  },
  balloon: opt(converted),
});

/**
 * Converts a format-2 body's `devices` to format 3's records in place (the rest of the body is the
 * same in both). Throws SchemaError at the v2 field that cannot be converted; the caller names the file.
 */
export function upgradeV2Body(body: unknown): void {
  if (!isObject(body)) throw new Bad('$', 'expected an object');
  const d = body.devices;
  devicesShape(d, '$.devices');
  const devices = d as Record<string, unknown>;
  const config = isObject(body.config) ? body.config : {};
  const statsQueue = isObject(config.balloon) && Number(config.balloon.statsPollingIntervalS) > 0;
  const virtio = (devices.virtio as unknown[]).map((slot, i) => {
    const at = `$.devices.virtio[${i}]`;
    if (!isObject(slot)) throw new Bad(at, 'expected an object');
    str(256)(slot.name, `${at}.name`);
    const kind = virtioKind(slot.name as string, statsQueue);
    if (kind === undefined) throw new Bad(`${at}.name`, 'expected a virtio device name');
    const side = isObject(slot.side) ? { version: 1, ...slot.side, device: kind.device } : slot.side;
    return { name: slot.name, mmio: mmio(slot.mmio, `${at}.mmio`, kind.queues), side };
  });
  body.devices = {
    serial: serial(devices.serial, '$.devices.serial'),
    postCode: postCode(devices.postCode, '$.devices.postCode'),
    i8042: i8042(devices.i8042, '$.devices.i8042'),
    cmos: cmos(devices.cmos, '$.devices.cmos'),
    // Format 2 did not keep the ACPI PM registers (each vCPU thread had its own): as at power-on.
    acpiPm: saveAcpiPmState(createAcpiPmState()),
    virtio,
    balloon: balloon(devices.balloon, '$.devices.balloon'),
  };
}
