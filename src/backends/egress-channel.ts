/** The egress rules' way from the VMM to the I/O thread, and the drop counters' way back. */
import { type EgressDrop, EgressFilter, type EgressRules } from './egress.js';

/**
 * The rules cross from the VMM to the I/O thread in shared memory: slot 0 a sequence number (odd
 * while the VMM writes), slot 1 the JSON's length, slots 2-5 the drop counters the I/O thread keeps
 * (EGRESS_DROPS order), then the JSON. One writer (the VMM), one reader (the I/O thread).
 */
export const EGRESS_CHANNEL_BYTES = 64 * 1024;
const CH_SEQ = 0;
const CH_LEN = 1;
const CH_DROPS = 2;
const CH_DATA = 24;
export const EGRESS_DROPS: readonly EgressDrop[] = ['malformed', 'denied', 'host', 'not-allowed'];

export function newEgressChannel(rules: EgressRules): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(EGRESS_CHANNEL_BYTES);
  writeEgressRules(sab, rules);
  return sab;
}

/** Publishes `rules` (the I/O thread takes them before the next frame it filters). */
export function writeEgressRules(sab: SharedArrayBuffer, rules: EgressRules): void {
  const bytes = new TextEncoder().encode(JSON.stringify(rules));
  if (bytes.length > sab.byteLength - CH_DATA)
    throw new RangeError(`the egress rules take ${bytes.length} bytes; at most ${sab.byteLength - CH_DATA} fit`);
  const i32 = new Int32Array(sab, 0, CH_DATA / 4);
  Atomics.add(i32, CH_SEQ, 1);
  new Uint8Array(sab, CH_DATA, bytes.length).set(bytes);
  Atomics.store(i32, CH_LEN, bytes.length);
  Atomics.add(i32, CH_SEQ, 1);
}

/** The frames dropped so far, by reason. */
export function egressDrops(sab: SharedArrayBuffer): Record<EgressDrop, number> {
  const i32 = new Int32Array(sab, 0, CH_DATA / 4);
  const out = { malformed: 0, denied: 0, host: 0, 'not-allowed': 0 } as Record<EgressDrop, number>;
  EGRESS_DROPS.forEach((k, i) => {
    out[k] = Atomics.load(i32, CH_DROPS + i);
  });
  return out;
}

/** The I/O thread's end: a filter that follows the channel's rules and counts into it. */
export class EgressChannelFilter {
  private readonly i32: Int32Array;
  private seq = -1;
  readonly filter: EgressFilter;

  constructor(private readonly sab: SharedArrayBuffer) {
    this.i32 = new Int32Array(sab, 0, CH_DATA / 4);
    this.filter = new EgressFilter({ allow: [], deny: [], allowHost: false, hostNets: [] });
    this.poll();
  }

  /** Takes new rules if the VMM published some (a cheap load when it did not). */
  poll(): void {
    const seq = Atomics.load(this.i32, CH_SEQ);
    if (seq === this.seq || (seq & 1) !== 0) return;
    const len = Atomics.load(this.i32, CH_LEN);
    if (len < 0 || len > this.sab.byteLength - CH_DATA) return;
    const text = new TextDecoder().decode(new Uint8Array(this.sab, CH_DATA, len).slice());
    if (Atomics.load(this.i32, CH_SEQ) !== seq) return;
    this.seq = seq;
    try {
      this.filter.setRules(JSON.parse(text) as EgressRules);
    } catch {
      // The VMM wrote it; a torn or foreign body leaves the rules as they were.
    }
  }

  allowOut(f: Uint8Array): boolean {
    this.poll();
    if (this.filter.allowOut(f)) return true;
    EGRESS_DROPS.forEach((k, i) => {
      Atomics.store(this.i32, CH_DROPS + i, this.filter.dropped[k]);
    });
    return false;
  }

  observeIn(f: Uint8Array): void {
    this.filter.observeIn(f);
  }
}
