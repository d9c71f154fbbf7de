/**
 * virtio-vsock's own persisted state: nothing, with a version. Host connections are Unix sockets
 * that do not survive the process, so a restored device resets the guest's transport
 * (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, as Firecracker does) and starts with none; the guest CID is in
 * the configuration space (the transport record) and the snapshot's configuration.
 */
import { type EmptyDeviceState, emptyDeviceState } from '../empty-state.js';

export const VSOCK_STATE_VERSION = 1;

export type VsockState = EmptyDeviceState;

const codec = emptyDeviceState('virtio-vsock');
export const checkVsockState = codec.check;
export const saveVsockState = codec.save;
export const restoreVsockState = codec.restore;
