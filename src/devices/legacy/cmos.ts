/**
 * The MC146818 real-time clock and CMOS RAM at ports 0x70 (index, bit 7 masks NMI) and 0x71 (data).
 * The clock follows the host's (or a given) clock plus an offset that the guest's writes set, in BCD
 * or binary and 12- or 24-hour form as register B asks; register A's update-in-progress bit and
 * register D's valid-RAM bit behave as a guest expects. The rest of the 128 bytes is plain CMOS RAM,
 * where vireo writes the memory sizes that firmware-style code reads.
 */
import type { BusDevice } from '../../bus/bus.js';
import { SharedState } from '../../common/shared-state.js';

export const CMOS_BASE = 0x70;
export const CMOS_LENGTH = 2;

const SECONDS = 0x00;
const MINUTES = 0x02;
const HOURS = 0x04;
const DAY_OF_WEEK = 0x06;
const DAY = 0x07;
const MONTH = 0x08;
const YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
const CENTURY = 0x32;

const REG_B_24H = 0x02;
const REG_B_BINARY = 0x04;
const REG_D_VRT = 0x80;

const FIELDS = ['index', 'offsetLo', 'offsetHi'] as const;
export type CmosField = (typeof FIELDS)[number];
export const RAM_OFFSET = SharedState.bytesOffset(FIELDS.length);

export function createCmosState(buffer?: SharedArrayBuffer): SharedState<CmosField> {
  const s = new SharedState(FIELDS, 128, buffer);
  if (buffer === undefined) {
    s.u8[RAM_OFFSET + REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
    s.u8[RAM_OFFSET + REG_B] = REG_B_24H; // BCD, 24-hour
    s.u8[RAM_OFFSET + REG_D] = REG_D_VRT;
  }
  return s;
}

/** Memory sizes in the standard CMOS locations (as QEMU and firmware lay them out). */
export function setCmosMemorySizes(state: SharedState<CmosField>, lowBytes: number, highBytes: number): void {
  const ram = state.u8.subarray(RAM_OFFSET, RAM_OFFSET + 128);
  const put16 = (at: number, v: number) => {
    ram[at] = v & 0xff;
    ram[at + 1] = (v >> 8) & 0xff;
  };
  put16(0x15, 640); // base memory, KiB
  const extKiB = Math.min(Math.max(0, lowBytes - 1024 * 1024) / 1024, 0xffff);
  put16(0x17, extKiB);
  put16(0x30, extKiB);
  const above16M = Math.min(Math.max(0, lowBytes - 16 * 1024 * 1024) / 65536, 0xffff);
  put16(0x34, above16M);
  const above4G = Math.floor(highBytes / 65536);
  ram[0x5b] = above4G & 0xff;
  ram[0x5c] = (above4G >> 8) & 0xff;
  ram[0x5d] = (above4G >> 16) & 0xff;
}

const toBcd = (v: number) => ((Math.floor(v / 10) << 4) | (v % 10)) & 0xff;
const fromBcd = (v: number) => (v >> 4) * 10 + (v & 0x0f);

export class Cmos implements BusDevice {
  /** `now` gives the host time in ms (injectable for tests). */
  constructor(
    readonly state: SharedState<CmosField>,
    private readonly now: () => number = Date.now,
  ) {}

  /** The guest clock's offset from the host's, in ms, kept as two int32 slots (low word unsigned). */
  private setOffset(ms: number): void {
    const t = Math.trunc(ms);
    const hi = Math.floor(t / 0x1_0000_0000);
    this.state.set('offsetLo', (t - hi * 0x1_0000_0000) | 0);
    this.state.set('offsetHi', hi);
  }

  private ram(i: number): number {
    return this.state.u8[RAM_OFFSET + i] as number;
  }

  private guestDate(): Date {
    // The low word is stored as int32; read it back unsigned.
    const lo = this.state.get('offsetLo') >>> 0;
    return new Date(this.now() + lo + this.state.get('offsetHi') * 0x1_0000_0000);
  }

  private encode(v: number): number {
    return this.ram(REG_B) & REG_B_BINARY ? v : toBcd(v);
  }

  private decode(v: number): number {
    return this.ram(REG_B) & REG_B_BINARY ? v : fromBcd(v);
  }

  private readClock(index: number): number {
    const d = this.guestDate();
    switch (index) {
      case SECONDS:
        return this.encode(d.getUTCSeconds());
      case MINUTES:
        return this.encode(d.getUTCMinutes());
      case HOURS: {
        const h = d.getUTCHours();
        if (this.ram(REG_B) & REG_B_24H) return this.encode(h);
        const h12 = h % 12 === 0 ? 12 : h % 12;
        return this.encode(h12) | (h >= 12 ? 0x80 : 0);
      }
      case DAY_OF_WEEK:
        return this.encode(d.getUTCDay() + 1);
      case DAY:
        return this.encode(d.getUTCDate());
      case MONTH:
        return this.encode(d.getUTCMonth() + 1);
      case YEAR:
        return this.encode(d.getUTCFullYear() % 100);
      case CENTURY:
        return this.encode(Math.floor(d.getUTCFullYear() / 100));
      default:
        return this.ram(index);
    }
  }

  /** The guest sets the clock: keep the difference from the host clock as an offset. */
  private writeClock(index: number, value: number): void {
    const d = this.guestDate();
    const v = this.decode(value & (index === HOURS ? 0x7f : 0xff));
    let hours = v;
    if (index === HOURS && !(this.ram(REG_B) & REG_B_24H)) hours = (v % 12) + (value & 0x80 ? 12 : 0);
    switch (index) {
      case SECONDS:
        d.setUTCSeconds(v);
        break;
      case MINUTES:
        d.setUTCMinutes(v);
        break;
      case HOURS:
        d.setUTCHours(hours);
        break;
      case DAY:
        d.setUTCDate(v);
        break;
      case MONTH:
        d.setUTCMonth(v - 1);
        break;
      case YEAR:
        d.setUTCFullYear(Math.floor(d.getUTCFullYear() / 100) * 100 + v);
        break;
      case CENTURY:
        d.setUTCFullYear(v * 100 + (d.getUTCFullYear() % 100));
        break;
      default:
        return; // day of week is derived; alarms are not modelled
    }
    // Out-of-range BCD digits roll fields over; repeated year writes can run past what a Date holds
    // (NaN): keep the clock as it was rather than store a NaN offset.
    if (!Number.isFinite(d.getTime())) return;
    this.setOffset(d.getTime() - this.now());
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === 0) {
      data[0] = 0xff; // the index port is write-only
      return;
    }
    data[0] = this.state.locked(() => {
      const index = this.state.get('index') & 0x7f;
      if (index === REG_A) {
        // Update-in-progress for the last ~244 µs of each second, as the chip does.
        const ms = this.guestDate().getUTCMilliseconds();
        return (this.ram(REG_A) & 0x7f) | (ms >= 999 ? 0x80 : 0);
      }
      if (index === REG_C) {
        const v = this.ram(REG_C);
        this.state.u8[RAM_OFFSET + REG_C] = 0; // reading C acknowledges its flags
        return v;
      }
      if (index === REG_D) return REG_D_VRT;
      if (index <= YEAR || index === CENTURY) return this.readClock(index);
      return this.ram(index);
    });
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0] as number;
    this.state.locked(() => {
      if (offset === 0) {
        this.state.set('index', v); // bit 7 is the NMI mask: recorded, nothing to mask here
        return;
      }
      const index = this.state.get('index') & 0x7f;
      if (index <= YEAR || index === CENTURY) {
        // Alarm registers (1, 3, 5) are not modelled: alarms never fire.
        this.writeClock(index, v);
        return;
      }
      if (index === REG_C || index === REG_D) return; // read-only
      // Register B's SET bit would freeze updates; the time is computed on each read, so it needs no action.
      this.state.u8[RAM_OFFSET + index] = v;
    });
  }

  /** The clock as the guest sees it (for tests and snapshots). */
  guestTime(): Date {
    return this.guestDate();
  }
}
