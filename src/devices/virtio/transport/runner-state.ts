/**
 * The runner's record (runner.ts, the I/O-thread side of a virtio device) in a snapshot, for every
 * transport: what the shared transport registers (common-state.ts) do not
 * hold — which generations of activation, reset and configuration writes it has seen, whether it
 * was active (and failed), where each queue stood — and the device's own record (`device`).
 */
import { array, bool, type Check, i32, int, nullable, object, u16, version } from '../../../common/schema.js';
import type { DeviceStateRecord } from '../device.js';
import type { QueuePosition } from '../queue.js';
import { TRANSPORT_MAX_QUEUES } from './common.js';

export const RUNNER_STATE_VERSION = 1;

export interface RunnerState {
  version: 1;
  activeGen: number;
  resetGen: number;
  configWrites: number;
  active: boolean;
  broken: boolean;
  /** Per queue, where the device stood; null where the queue is not in use. */
  positions: (QueuePosition | null)[];
  /** The device model's own record (its *-state.ts). */
  device: DeviceStateRecord;
}

const position = object({
  nextAvail: u16,
  nextUsed: u16,
  signalledUsed: u16,
  // A queue has at most 32768 entries: more in flight than that was not written by a device.
  inFlight: int(0, 0x8000),
});

/** The side state's check, with `device` the check of the device kind's own record. */
export const runnerStateCheck = (device: Check): Check =>
  object({
    version: version(RUNNER_STATE_VERSION),
    // The I/O thread copies these from the transport's int32 slots (SharedState.get) and saves them as
    // read: a guest that wrote its config space 2^31 times has a negative configWrites.
    activeGen: i32,
    resetGen: i32,
    configWrites: i32,
    active: bool,
    broken: bool,
    positions: array(nullable(position), 0, TRANSPORT_MAX_QUEUES),
    device,
  });
