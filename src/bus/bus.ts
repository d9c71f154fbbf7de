/**
 * PIO and MMIO buses: devices registered on address ranges, accesses dispatched by address.
 * An access that no device claims is harmless: reads return all ones, writes are dropped,
 * and both are counted. A device only ever sees bytes inside its own range: an access that runs
 * past the end of a range is split there, and the bytes beyond go to whatever lies next (another
 * device, or nothing), as separate byte lanes on a real bus would. An access that starts where no
 * device is stays unclaimed as a whole.
 */

import { hex } from '../common/address.js';
import { VireoError } from '../common/errors.js';

/**
 * What a device on a bus implements: accesses relative to its base, data in little-endian bytes.
 * The bus guarantees 0 <= offset and offset + data.length <= the range's length, with 1 to 8 bytes.
 */
export interface BusDevice {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

/** An interrupt line as a device sees it. */
export interface IrqLine {
  set(level: boolean): void;
}

interface Range {
  base: number;
  end: number;
  name: string;
  device: BusDevice;
}

export interface BusCounters {
  unclaimedReads: number;
  unclaimedWrites: number;
}

export class Bus {
  private ranges: Range[] = [];
  readonly counters: BusCounters = { unclaimedReads: 0, unclaimedWrites: 0 };
  /** Called for every unclaimed access (for metrics shared across threads). */
  onUnclaimed: ((addr: number, isWrite: boolean) => void) | undefined;

  constructor(readonly kind: 'pio' | 'mmio') {}

  insert(base: number, length: number, name: string, device: BusDevice): void {
    if (length <= 0) throw new VireoError('VIREO_ERR_BUS_CONFLICT', `${name}: empty ${this.kind} range`);
    const end = base + length;
    const clash = this.ranges.find((r) => base < r.end && r.base < end);
    if (clash)
      throw new VireoError(
        'VIREO_ERR_BUS_CONFLICT',
        `${name} at ${hex(base)}+${length} overlaps ${clash.name} on the ${this.kind} bus`,
      );
    this.ranges.push({ base, end, name, device });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  /** The device covering addr, or undefined. */
  find(addr: number): { device: BusDevice; base: number; end: number; name: string } | undefined {
    const rs = this.ranges;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = rs[mid] as Range;
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  read(addr: number, data: Uint8Array): void {
    if (data.length === 0) return;
    const r = this.find(addr);
    if (r === undefined) {
      data.fill(0xff);
      this.counters.unclaimedReads++;
      this.onUnclaimed?.(addr, false);
      return;
    }
    const inside = r.end - addr;
    if (data.length <= inside) {
      r.device.read(addr - r.base, data);
      return;
    }
    // Straddles the end of the range: each side answers for its own bytes (rare, so the views are fine).
    r.device.read(addr - r.base, data.subarray(0, inside));
    this.read(r.end, data.subarray(inside));
  }

  write(addr: number, data: Uint8Array): void {
    if (data.length === 0) return;
    const r = this.find(addr);
    if (r === undefined) {
      this.counters.unclaimedWrites++;
      this.onUnclaimed?.(addr, true);
      return;
    }
    const inside = r.end - addr;
    if (data.length <= inside) {
      r.device.write(addr - r.base, data);
      return;
    }
    r.device.write(addr - r.base, data.subarray(0, inside));
    this.write(r.end, data.subarray(inside));
  }

  get names(): string[] {
    return this.ranges.map((r) => `${r.name}@${hex(r.base)}`);
  }
}
