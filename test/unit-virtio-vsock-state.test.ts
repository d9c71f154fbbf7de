/**
 * virtio-vsock's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same;
 * its own record is named and versioned, and a bad one is refused with the field's path.
 */
import { VirtioVsock } from '../src/devices/virtio/vsock/device.js';
import { restoreVsockState } from '../src/devices/virtio/vsock/state.js';
import { FakeHost } from './support/fake-vsock-host.js';
import { emptyRecordTests } from './support/state-twin.js';

const make = () => new VirtioVsock(new FakeHost(), { cid: 3, udsPath: '/tmp/vireo-test-vsock.sock' });

emptyRecordTests('virtio-vsock', make, restoreVsockState);
