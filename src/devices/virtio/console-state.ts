/**
 * virtio-console's own persisted state: host input the device has read from its input fd but not
 * yet delivered (the guest had no rx buffer for it) — bytes that would otherwise be lost at a
 * snapshot, since the fd they came from has already given them up.
 */
import { type Check, checkRecord, hexBytes, object, version } from '../../common/schema.js';

export const CONSOLE_STATE_VERSION = 1;
/** The device reads its input in chunks of this size; what is pending is at most one chunk. */
export const CONSOLE_INPUT_CHUNK = 4096;

export type ConsoleState = {
  version: 1;
  /** Input waiting for the guest, oldest first (hex). */
  pendingInput: string;
};

export const checkConsoleState: Check = object({
  version: version(CONSOLE_STATE_VERSION),
  pendingInput: hexBytes(CONSOLE_INPUT_CHUNK),
});

/** Checks `state`: a bad field is a SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with its path. */
export function checkConsoleRecord(state: unknown): asserts state is ConsoleState {
  checkRecord<ConsoleState>(checkConsoleState, state, 'virtio-console');
}
