/**
 * virtio-rng's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same;
 * its own record is named and versioned, and a bad one is refused with the field's path.
 */
import { VirtioRng } from '../src/devices/virtio/rng.js';
import { restoreRngState } from '../src/devices/virtio/rng-state.js';
import { emptyRecordTests } from './support/state-twin.js';

const make = () => new VirtioRng((b) => b.fill(1));

emptyRecordTests('virtio-rng', make, restoreRngState);
