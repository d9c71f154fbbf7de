/**
 * virtio-vsock's own persisted state: nothing, with a version. Host connections are Unix sockets
 * that do not survive the process, so a restored device resets the guest's transport
 * (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, as Firecracker does) and starts with none; the guest CID is in
 * the configuration space (the transport record) and the snapshot's configuration.
 */
import { type Check, checkRecord, object, version } from '../../../common/schema.js';
import type { DeviceStateRecord } from '../device.js';

export const VSOCK_STATE_VERSION = 1;

export type VsockState = { version: 1 };

export const checkVsockState: Check = object({ version: version(VSOCK_STATE_VERSION) });

export function saveVsockState(): VsockState & DeviceStateRecord {
  return { version: 1 };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path); there is nothing to take. */
export function restoreVsockState(state: unknown): void {
  checkRecord<VsockState>(checkVsockState, state, 'virtio-vsock');
}
