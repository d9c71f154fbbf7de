/**
 * The balloon's host-side persisted state (BalloonControl, shared between the VMM and the I/O
 * thread): the target, what the guest says it gave back, the statistics requests and answers, and
 * the latest statistics by their Firecracker names — not the shared buffer's slots.
 */
import { type Check, checkRecord, object, opt, SchemaError, u32, version } from '../../common/schema.js';
import { BALLOON_STAT_TAGS, type BalloonControl, type BalloonStatName } from './balloon.js';

export const BALLOON_CONTROL_STATE_VERSION = 1;

export interface BalloonControlState {
  version: 1;
  /** Pages (4 KiB) the guest should give back. */
  targetPages: number;
  /** Pages the guest says it has given back (its write of `actual`). */
  actualPages: number;
  statsRequests: number;
  statsUpdates: number;
  inflated: number;
  deflated: number;
  /** The latest statistic of each tag the guest reported (absent: never reported). */
  stats: Partial<Record<BalloonStatName, number>>;
}

/** A statistic is a u64 from the guest, kept as a double: any finite number of 0 or more. */
const stat: Check = (v, at) => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new SchemaError(at, 'expected a number, 0 or more');
};

export const checkBalloonControlState: Check = object({
  version: version(BALLOON_CONTROL_STATE_VERSION),
  targetPages: u32,
  actualPages: u32,
  statsRequests: u32,
  statsUpdates: u32,
  inflated: u32,
  deflated: u32,
  stats: object(Object.fromEntries(BALLOON_STAT_TAGS.map((t) => [t, opt(stat)]))),
});

const COUNTS = ['targetPages', 'actualPages', 'statsRequests', 'statsUpdates', 'inflated', 'deflated'] as const;

export function saveBalloonControlState(c: BalloonControl): BalloonControlState {
  const out = { version: 1, stats: c.latestStats() } as BalloonControlState;
  for (const f of COUNTS) out[f] = c.s.u32(f);
  return out;
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path) and puts it in place. */
export function restoreBalloonControlState(c: BalloonControl, state: unknown): void {
  checkRecord<BalloonControlState>(checkBalloonControlState, state, 'balloon');
  for (const f of COUNTS) c.s.set(f, state[f] | 0);
  c.clearStats();
  BALLOON_STAT_TAGS.forEach((name, tag) => {
    const v = state.stats[name];
    if (v !== undefined) c.recordStat(tag, v);
  });
}
