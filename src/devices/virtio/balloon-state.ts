/**
 * virtio-balloon's own (I/O-thread) persisted state: what the driver has been told — the target it
 * was last given, and the statistics request last answered — so a restored balloon neither
 * re-announces a target the guest already has nor forgets a statistics request still waiting for
 * the guest's buffer. (null: nothing yet, and the device starts afresh at activation, as at boot.)
 * The stats buffer the device keeps is given back to the ring at a snapshot (heldChains); the host's
 * side (target, what the guest gave back, statistics) is balloon-control-state.ts.
 */
import { type Check, checkRecord, nullable, object, u32, version } from '../../common/schema.js';

export const BALLOON_STATE_VERSION = 1;

export type BalloonState = {
  version: 1;
  /** The target (pages) last written to the configuration space and signalled. */
  announcedTargetPages: number | null;
  /** The host's statistics request count the device last acted on. */
  statsRequestsSeen: number | null;
};

export const checkBalloonState: Check = object({
  version: version(BALLOON_STATE_VERSION),
  announcedTargetPages: nullable(u32),
  statsRequestsSeen: nullable(u32),
});

/** Checks `state`: a bad field is a SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with its path. */
export function checkBalloonRecord(state: unknown): asserts state is BalloonState {
  checkRecord<BalloonState>(checkBalloonState, state, 'virtio-balloon');
}
