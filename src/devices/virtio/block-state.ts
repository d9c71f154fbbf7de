/**
 * virtio-blk's own persisted state: nothing yet, and the record says so with a version. What a
 * restored disk needs is elsewhere: its image path and id in the snapshot's configuration, its
 * configuration space (capacity, limits) in the transport record, its queue positions in the side
 * record; a snapshot is refused while any request is in flight (transport/runner.ts save), so none is lost. A
 * later field (a write-cache mode the guest can toggle, say) becomes version 2 here.
 */
import { type EmptyDeviceState, emptyDeviceState } from './empty-state.js';

export const BLOCK_STATE_VERSION = 1;

export type BlockState = EmptyDeviceState;

const codec = emptyDeviceState('virtio-blk');
export const checkBlockState = codec.check;
export const saveBlockState = codec.save;
export const restoreBlockState = codec.restore;
