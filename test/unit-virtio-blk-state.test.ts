/**
 * virtio-blk's state record: a live device (probed, queues ready) saved and restored into a fresh one gives
 * the same transport, side and device records again and reads its configuration space the same;
 * its own record is named and versioned, and a bad one is refused with the field's path.
 */
import { type BlockBackend, VirtioBlock } from '../src/devices/virtio/block.js';

const disk: BlockBackend = {
  size: 1 << 20,
  readOnly: true,
  canDiscard: false,
  readv: () => 0,
  writev: () => 0,
  flush: () => {},
  discard: () => {},
  writeZeroes: () => {},
};

import { restoreBlockState } from '../src/devices/virtio/block-state.js';
import { emptyRecordTests } from './support/state-twin.js';

const make = () => new VirtioBlock(disk, { id: 'd0' });

emptyRecordTests('virtio-blk', make, restoreBlockState);
