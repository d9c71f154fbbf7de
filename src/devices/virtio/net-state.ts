/**
 * virtio-net's own persisted state: nothing yet, with a version. The MAC and link status are in the
 * configuration space (the transport record); rx buffers the device held waiting for frames are
 * given back to the ring at a snapshot (heldChains) and popped again after the restore; frames on
 * the TAP meanwhile are the network's to lose, as on real hardware.
 */
import { type Check, checkRecord, object, version } from '../../common/schema.js';
import type { DeviceStateRecord } from './device.js';

export const NET_STATE_VERSION = 1;

export type NetState = { version: 1 };

export const checkNetState: Check = object({ version: version(NET_STATE_VERSION) });

export function saveNetState(): NetState & DeviceStateRecord {
  return { version: 1 };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path); there is nothing to take. */
export function restoreNetState(state: unknown): void {
  checkRecord<NetState>(checkNetState, state, 'virtio-net');
}
