/**
 * virtio-rng's own persisted state: nothing (each request is served at once from the host's
 * CSPRNG), with a version so that a later field is a new version, not a broken snapshot.
 */
import { type Check, checkRecord, object, version } from '../../common/schema.js';
import type { DeviceStateRecord } from './device.js';

export const RNG_STATE_VERSION = 1;

export type RngState = { version: 1 };

export const checkRngState: Check = object({ version: version(RNG_STATE_VERSION) });

export function saveRngState(): RngState & DeviceStateRecord {
  return { version: 1 };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path); there is nothing to take. */
export function restoreRngState(state: unknown): void {
  checkRecord<RngState>(checkRngState, state, 'virtio-rng');
}
