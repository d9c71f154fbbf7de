/**
 * The common transport state's persisted record (common.ts; the same for every transport): every
 * register the driver wrote or the transport keeps, by its name in the spec (§2.1, §2.2, §4.2.2,
 * §4.1.4.3 name the same fields), each queue's registers, and the configuration space — the bytes
 * the device defines, trailing zeros dropped (the live copy is 256 bytes; no device here uses that
 * much). The shared buffer's layout is the transport's business; this is the record. A snapshot
 * stores it as a virtio slot's `mmio` record (the name it had when MMIO was the only transport).
 */
import { fromHex, toHex } from '../../../common/hex.js';
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
} from '../../../common/schema.js';
import {
  FIELDS,
  Q,
  TRANSPORT_CONFIG_SIZE,
  TRANSPORT_MAX_QUEUES,
  type TransportField,
  TransportRegisters,
  type TransportSpec,
} from './common.js';

export const TRANSPORT_STATE_VERSION = 1;

/** One queue's registers (QueueNum, QueueReady, QueueDesc/Driver/Device Low and High). */
export interface TransportQueueState {
  size: number;
  ready: boolean;
  descLow: number;
  descHigh: number;
  driverLow: number;
  driverHigh: number;
  deviceLow: number;
  deviceHigh: number;
}

export interface TransportState {
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
  queues: TransportQueueState[];
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

export const checkTransportState: Check = object({
  version: version(TRANSPORT_STATE_VERSION),
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
  configWriteOffset: int(0, TRANSPORT_CONFIG_SIZE - 1),
  configWriteLength: int(0, TRANSPORT_CONFIG_SIZE),
  protocolErrors: u32,
  queues: array(queue, 0, TRANSPORT_MAX_QUEUES),
  config: hexBytes(TRANSPORT_CONFIG_SIZE),
});

/** Record names of the register slots (the rest of the record is the queues and the config). */
const REGISTERS: Record<TransportField, Exclude<keyof TransportState, 'version' | 'queues' | 'config'>> = {
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
export function saveTransportState(spec: TransportSpec): TransportState {
  const st = new TransportRegisters(spec.state);
  let end = st.config.length;
  while (end > 0 && st.config[end - 1] === 0) end--;
  const out = { version: 1, queues: [], config: toHex(st.config.subarray(0, end)) } as unknown as TransportState;
  for (const f of FIELDS) out[REGISTERS[f]] = st.s.u32(f);
  out.queues = spec.queueMaxSizes.map((_, i) => {
    const q = { ready: st.q(i, Q.ready) === 1 } as TransportQueueState;
    for (const [name, slot] of QUEUE_REGS) q[name] = st.q(i, slot);
    return q;
  });
  return out;
}

/**
 * Puts a record into the transport's shared registers, before any thread serves them. `state` is
 * checked first, and against this device (its number of queues): a bad field throws SnapshotError
 * VIREO_ERR_SNAPSHOT_CORRUPT with its path (`what` names the device in the message).
 */
export function restoreTransportState(spec: TransportSpec, state: unknown, what: string): void {
  checkRecord<TransportState>(checkTransportState, state, what);
  const n = spec.queueMaxSizes.length;
  checkRecord<TransportState>(
    (v, at) => {
      if ((v as TransportState).queues.length !== n)
        throw new SchemaError(`${at}.queues`, `expected a list of ${n} (the device's queues)`);
    },
    state,
    what,
  );
  const st = new TransportRegisters(spec.state);
  for (const f of FIELDS) st.s.set(f, state[REGISTERS[f]] | 0);
  st.queues.fill(0);
  state.queues.forEach((q, i) => {
    st.setQ(i, Q.ready, q.ready ? 1 : 0);
    for (const [name, slot] of QUEUE_REGS) st.setQ(i, slot, q[name] | 0);
  });
  st.config.fill(0);
  st.config.set(fromHex(state.config));
}
