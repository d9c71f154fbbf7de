/**
 * The RTC/CMOS's persisted state: the selected index (NMI mask bit included), the guest clock's
 * offset from the host clock in milliseconds (the clock itself is the host's: after a restore it
 * goes on from the restoring host's time plus that offset, as QEMU's RTC does by default), and the
 * 128 bytes of CMOS RAM.
 */
import { fromHex, toHex } from '../../common/hex.js';
import { type Check, checkRecord, int, object, SchemaError, u8, version } from '../../common/schema.js';
import type { SharedState } from '../../common/shared-state.js';
import { type CmosField, RAM_OFFSET } from './cmos.js';

export const CMOS_STATE_VERSION = 1;
const RAM_SIZE = 128;
/**
 * Any safe integer: the guest's clock writes keep the year within 0–16599 (BCD digits up to 0xf),
 * an offset far below this, and the two int32 slots hold any safe integer.
 */
const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

export interface CmosState {
  version: 1;
  index: number;
  /** Guest clock minus host clock, in ms. */
  clockOffsetMs: number;
  /** All 128 bytes of CMOS RAM (clock registers included, as last written), hex. */
  ram: string;
}

const ram: Check = (v, at) => {
  if (typeof v !== 'string' || v.length !== RAM_SIZE * 2 || !/^[0-9a-f]*$/.test(v))
    throw new SchemaError(at, `expected ${RAM_SIZE} bytes as lowercase hex`);
};

export const checkCmosState: Check = object({
  version: version(CMOS_STATE_VERSION),
  index: u8,
  clockOffsetMs: int(-MAX_OFFSET, MAX_OFFSET),
  ram,
});

export function saveCmosState(s: SharedState<CmosField>): CmosState {
  return {
    version: 1,
    index: s.get('index') & 0xff,
    clockOffsetMs: (s.get('offsetLo') >>> 0) + s.get('offsetHi') * 0x1_0000_0000,
    ram: toHex(s.u8.subarray(RAM_OFFSET, RAM_OFFSET + RAM_SIZE)),
  };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path) and puts it in place. */
export function restoreCmosState(s: SharedState<CmosField>, state: unknown): void {
  checkRecord<CmosState>(checkCmosState, state, 'cmos');
  s.set('index', state.index);
  // The same split as Cmos.setOffset: a signed high word and an unsigned low word.
  const hi = Math.floor(state.clockOffsetMs / 0x1_0000_0000);
  s.set('offsetLo', (state.clockOffsetMs - hi * 0x1_0000_0000) | 0);
  s.set('offsetHi', hi);
  s.u8.set(fromHex(state.ram), RAM_OFFSET);
}
