/**
 * The 16550A's persisted state: every register by name, the bytes waiting in the receive FIFO and
 * in the host ring (oldest first), and the counters. The shared buffer's layout (slot numbers, ring
 * heads) is the device's business and may change; this record is what a snapshot keeps, and a new
 * field means a new version here, not a broken snapshot.
 */
import { fromHex, toHex } from '../../common/hex.js';
import { bool, type Check, checkRecord, hexBytes, object, SchemaError, u8, u32, version } from '../../common/schema.js';
import type { SharedState } from '../../common/shared-state.js';
import { FIFO_SIZE, HOST_OFFSET, HOST_RING_SIZE, RX_OFFSET, type SerialField } from './serial.js';

export const SERIAL_STATE_VERSION = 1;

export interface SerialState {
  version: 1;
  ier: number;
  lcr: number;
  mcr: number;
  scr: number;
  dll: number;
  dlm: number;
  fcr: number;
  /** Line status error bits (overrun) not yet read from LSR. */
  lsrErrors: number;
  /** Modem status, delta bits included. */
  msr: number;
  /** The THRE interrupt is pending (the holding register emptied and IIR has not been read since). */
  threPending: boolean;
  /** The level the UART last drove on its interrupt line. */
  irqRaised: boolean;
  /** Bytes in the receive FIFO, oldest first (hex). */
  rxFifo: string;
  /** Host input not yet moved into the FIFO, oldest first (hex). */
  hostInput: string;
  rxDropped: number;
  txBytes: number;
  rxBytes: number;
}

// The device keeps IER to its four bits and MCR to five; a record outside them was not written by it.
const bits =
  (mask: number): Check =>
  (v, at) => {
    u8(v, at);
    if (((v as number) & ~mask) !== 0)
      throw new SchemaError(at, `expected a byte with no bits outside 0x${mask.toString(16)}`);
  };

export const checkSerialState: Check = object({
  version: version(SERIAL_STATE_VERSION),
  ier: bits(0x0f),
  lcr: u8,
  mcr: bits(0x1f),
  scr: u8,
  dll: u8,
  dlm: u8,
  fcr: bits(0xc1),
  lsrErrors: u8,
  msr: u8,
  threPending: bool,
  irqRaised: bool,
  rxFifo: hexBytes(FIFO_SIZE),
  hostInput: hexBytes(HOST_RING_SIZE),
  rxDropped: u32,
  txBytes: u32,
  rxBytes: u32,
});

const ring = (s: SharedState<SerialField>, offset: number, size: number, head: number, count: number): Uint8Array => {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = s.u8[offset + ((head + i) % size)] as number;
  return out;
};

/** The UART's state as a record (call with the vCPUs paused: nothing changes it meanwhile). */
export function saveSerialState(s: SharedState<SerialField>): SerialState {
  return {
    version: 1,
    ier: s.get('ier'),
    lcr: s.get('lcr'),
    mcr: s.get('mcr'),
    scr: s.get('scr'),
    dll: s.get('dll'),
    dlm: s.get('dlm'),
    fcr: s.get('fcr'),
    lsrErrors: s.get('lsrErrors'),
    msr: s.get('msr'),
    threPending: s.get('threPending') !== 0,
    irqRaised: s.get('irqLevel') !== 0,
    rxFifo: toHex(ring(s, RX_OFFSET, FIFO_SIZE, s.u32('rxHead') % FIFO_SIZE, s.get('rxCount'))),
    hostInput: toHex(ring(s, HOST_OFFSET, HOST_RING_SIZE, s.u32('hostHead') % HOST_RING_SIZE, s.get('hostCount'))),
    rxDropped: s.u32('rxDropped'),
    txBytes: s.u32('txBytes'),
    rxBytes: s.u32('rxBytes'),
  };
}

/**
 * Puts a saved record into a UART's shared state (before any thread drives it); `state` is checked
 * first: a bad field throws SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with its path.
 */
export function restoreSerialState(s: SharedState<SerialField>, state: unknown): void {
  checkRecord<SerialState>(checkSerialState, state, 'serial');
  for (const f of ['ier', 'lcr', 'mcr', 'scr', 'dll', 'dlm', 'fcr', 'lsrErrors', 'msr'] as const) s.set(f, state[f]);
  s.set('threPending', state.threPending ? 1 : 0);
  s.set('irqLevel', state.irqRaised ? 1 : 0);
  // Both rings start at their beginning again: the record keeps only their contents, in order.
  const rx = fromHex(state.rxFifo);
  s.u8.fill(0, RX_OFFSET, RX_OFFSET + 64);
  s.u8.set(rx, RX_OFFSET);
  s.set('rxHead', 0);
  s.set('rxCount', rx.length);
  const host = fromHex(state.hostInput);
  s.u8.fill(0, HOST_OFFSET, HOST_OFFSET + HOST_RING_SIZE);
  s.u8.set(host, HOST_OFFSET);
  s.set('hostHead', 0);
  s.set('hostCount', host.length);
  for (const f of ['rxDropped', 'txBytes', 'rxBytes'] as const) s.set(f, state[f] | 0);
}
