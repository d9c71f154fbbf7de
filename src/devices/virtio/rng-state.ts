/**
 * virtio-rng's own persisted state: nothing (each request is served at once from the host's
 * CSPRNG), with a version so that a later field is a new version, not a broken snapshot.
 */
import { type EmptyDeviceState, emptyDeviceState } from './empty-state.js';

export const RNG_STATE_VERSION = 1;

export type RngState = EmptyDeviceState;

const codec = emptyDeviceState('virtio-rng');
export const checkRngState = codec.check;
export const saveRngState = codec.save;
export const restoreRngState = codec.restore;
