/**
 * The record of a device that keeps nothing of its own past what the transport and side records hold:
 * only a version, so that a later field is a new version, not a broken snapshot. One definition for
 * every such device (blk, net, rng, vsock); each device's *-state.ts says why it has nothing to keep.
 */
import { type Check, checkRecord, object, version } from '../../common/schema.js';
import type { DeviceStateRecord } from './device.js';

export type EmptyDeviceState = { version: 1 };

export interface EmptyDeviceStateCodec {
  readonly check: Check;
  save(): EmptyDeviceState & DeviceStateRecord;
  /** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path); there is nothing to take. */
  restore(state: unknown): void;
}

/** `kind` names the device in a refusal ("virtio-rng state is bad at $.version: …"). */
export function emptyDeviceState(kind: string): EmptyDeviceStateCodec {
  const check = object({ version: version(1) });
  return {
    check,
    save: () => ({ version: 1 }),
    restore: (state) => checkRecord<EmptyDeviceState>(check, state, kind),
  };
}
