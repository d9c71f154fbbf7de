/**
 * virtio-net's own persisted state: nothing yet, with a version. The MAC and link status are in the
 * configuration space (the transport record); rx buffers the device held waiting for frames are
 * given back to the ring at a snapshot (heldChains) and popped again after the restore; frames on
 * the TAP meanwhile are the network's to lose, as on real hardware.
 */
import { type EmptyDeviceState, emptyDeviceState } from './empty-state.js';

export const NET_STATE_VERSION = 1;

export type NetState = EmptyDeviceState;

const codec = emptyDeviceState('virtio-net');
export const checkNetState = codec.check;
export const saveNetState = codec.save;
export const restoreNetState = codec.restore;
