/**
 * virtio-net's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same;
 * its own record is named and versioned, and a bad one is refused with the field's path.
 */
import type { NetBackend } from '../src/devices/virtio/net.js';
import { VirtioNet } from '../src/devices/virtio/net.js';

const tap: NetBackend = { fd: 1000, offloads: 0, read: () => undefined, write: () => 0, setOffloads: () => {} };

import { restoreNetState } from '../src/devices/virtio/net-state.js';
import { emptyRecordTests } from './support/state-twin.js';

const make = () => new VirtioNet(tap, { mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56) });

emptyRecordTests('virtio-net', make, restoreNetState);
