/**
 * virtio-blk's own persisted state: nothing yet, and the record says so with a version. What a
 * restored disk needs is elsewhere: its image path and id in the snapshot's configuration, its
 * configuration space (capacity, limits) in the transport record, its queue positions in the side
 * record; a snapshot is refused while any request is in flight (mmio.ts save), so none is lost. A
 * later field (a write-cache mode the guest can toggle, say) becomes version 2 here.
 */
import { type Check, checkRecord, object, version } from '../../common/schema.js';
import type { DeviceStateRecord } from './device.js';

export const BLOCK_STATE_VERSION = 1;

export type BlockState = { version: 1 };

export const checkBlockState: Check = object({ version: version(BLOCK_STATE_VERSION) });

export function saveBlockState(): BlockState & DeviceStateRecord {
  return { version: 1 };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path); there is nothing to take. */
export function restoreBlockState(state: unknown): void {
  checkRecord<BlockState>(checkBlockState, state, 'virtio-blk');
}
