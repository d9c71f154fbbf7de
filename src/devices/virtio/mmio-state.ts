/**
 * The virtio-mmio transport's persisted state: every register the driver wrote or the transport
 * keeps, by its name in the spec (§4.2.2), each queue's registers, and the configuration space —
 * the bytes the device defines, trailing zeros dropped (the window is 256 bytes; no device here
 * uses that much). The shared buffer's layout is the transport's business; this is the record.
 */
import { fromHex, toHex } from '../../common/hex.js';
import {
  array,
  bool,
  type Check,
  checkRecord,
  hexBytes,
  int,
  object,
  SchemaError,
  u8,
  u32,
  version,
} from '../../common/schema.js';
import {
  FIELDS,
  MMIO_CONFIG_SIZE,
  MMIO_MAX_QUEUES,
  type MmioField,
  Q,
  type VirtioMmioSpec,
  VirtioMmioState,
} from './mmio.js';

export const MMIO_TRANSPORT_STATE_VERSION = 1;

/** One queue's registers (QueueNum, QueueReady, QueueDesc/Driver/Device Low and High). */
export interface MmioQueueState {
  size: number;
  ready: boolean;
  descLow: number;
  descHigh: number;
  driverLow: number;
  driverHigh: number;
  deviceLow: number;
  deviceHigh: number;
}

export interface MmioTransportState {
  version: 1;
  /** Device status (§2.1), DEVICE_NEEDS_RESET included. */
  status: number;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  driverFeaturesLow: number;
  driverFeaturesHigh: number;
  queueSel: number;
  /** Used-buffer (bit 0) and configuration-change (bit 1) interrupts not yet acknowledged. */
  interruptStatus: number;
  configGeneration: number;
  /** Activations, resets (and the I/O thread's acknowledgement) and configuration writes seen. */
  activeGen: number;
  resetGen: number;
  resetAck: number;
  configWrites: number;
  configWriteOffset: number;
  configWriteLength: number;
  protocolErrors: number;
  /** One per queue the device has. */
  queues: MmioQueueState[];
  /** The configuration space, trailing zero bytes dropped, hex. */
  config: string;
}

const queue = object({
  size: u32,
  ready: bool,
  descLow: u32,
  descHigh: u32,
  driverLow: u32,
  driverHigh: u32,
  deviceLow: u32,
  deviceHigh: u32,
});

export const checkMmioTransportState: Check = object({
  version: version(MMIO_TRANSPORT_STATE_VERSION),
  status: u8,
  deviceFeaturesSel: u32,
  driverFeaturesSel: u32,
  driverFeaturesLow: u32,
  driverFeaturesHigh: u32,
  queueSel: u32,
  interruptStatus: int(0, 3),
  configGeneration: u32,
  activeGen: u32,
  resetGen: u32,
  resetAck: u32,
  configWrites: u32,
  configWriteOffset: int(0, MMIO_CONFIG_SIZE - 1),
  configWriteLength: int(0, MMIO_CONFIG_SIZE),
  protocolErrors: u32,
  queues: array(queue, 0, MMIO_MAX_QUEUES),
  config: hexBytes(MMIO_CONFIG_SIZE),
});

/** Record names of the register slots (the rest of the record is the queues and the config). */
const REGISTERS: Record<MmioField, Exclude<keyof MmioTransportState, 'version' | 'queues' | 'config'>> = {
  status: 'status',
  deviceFeaturesSel: 'deviceFeaturesSel',
  driverFeaturesSel: 'driverFeaturesSel',
  driverFeaturesLo: 'driverFeaturesLow',
  driverFeaturesHi: 'driverFeaturesHigh',
  queueSel: 'queueSel',
  interruptStatus: 'interruptStatus',
  configGeneration: 'configGeneration',
  activeGen: 'activeGen',
  resetGen: 'resetGen',
  resetAck: 'resetAck',
  configWrites: 'configWrites',
  configWriteOffset: 'configWriteOffset',
  configWriteLength: 'configWriteLength',
  protocolErrors: 'protocolErrors',
};
const QUEUE_REGS = [
  ['size', Q.num],
  ['descLow', Q.descLo],
  ['descHigh', Q.descHi],
  ['driverLow', Q.availLo],
  ['driverHigh', Q.availHi],
  ['deviceLow', Q.usedLo],
  ['deviceHigh', Q.usedHi],
] as const;

/** The transport's state as a record (the VM paused: no vCPU changes the registers meanwhile). */
export function saveMmioTransportState(spec: VirtioMmioSpec): MmioTransportState {
  const st = new VirtioMmioState(spec.state);
  let end = st.config.length;
  while (end > 0 && st.config[end - 1] === 0) end--;
  const out = { version: 1, queues: [], config: toHex(st.config.subarray(0, end)) } as unknown as MmioTransportState;
  for (const f of FIELDS) out[REGISTERS[f]] = st.s.u32(f);
  out.queues = spec.queueMaxSizes.map((_, i) => {
    const q = { ready: st.q(i, Q.ready) === 1 } as MmioQueueState;
    for (const [name, slot] of QUEUE_REGS) q[name] = st.q(i, slot);
    return q;
  });
  return out;
}

/**
 * Puts a record into the transport's shared registers, before any thread serves them. `state` is
 * checked first, and against this device (its number of queues): a bad field throws SnapshotError
 * VIREO_ERR_SNAPSHOT_CORRUPT with its path (`what` names the device).
 */
export function restoreMmioTransportState(spec: VirtioMmioSpec, state: unknown, what = 'virtio-mmio'): void {
  checkRecord<MmioTransportState>(checkMmioTransportState, state, what);
  const n = spec.queueMaxSizes.length;
  checkRecord<MmioTransportState>(
    (v, at) => {
      if ((v as MmioTransportState).queues.length !== n)
        throw new SchemaError(`${at}.queues`, `expected a list of ${n} (the device's queues)`);
    },
    state,
    what,
  );
  const st = new VirtioMmioState(spec.state);
  for (const f of FIELDS) st.s.set(f, state[REGISTERS[f]] | 0);
  st.queues.fill(0);
  state.queues.forEach((q, i) => {
    st.setQ(i, Q.ready, q.ready ? 1 : 0);
    for (const [name, slot] of QUEUE_REGS) st.setQ(i, slot, q[name] | 0);
  });
  st.config.fill(0);
  st.config.set(fromHex(state.config));
}
