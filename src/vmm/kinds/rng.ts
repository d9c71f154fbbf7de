/** virtio-rng: the host's CSPRNG; nothing to open, nothing to configure. */
import { randomFillSync } from 'node:crypto';
import { bool } from '../../common/schema.js';
import { VirtioRng } from '../../devices/virtio/rng.js';
import { checkRngState } from '../../devices/virtio/rng-state.js';
import type { DeviceKind } from '../device-kind.js';

export const rngKind: DeviceKind<true, null> = {
  name: 'virtio-rng',
  configKey: 'rng',
  config: (c) => (c.rng ? true : undefined),
  snapshot: {
    save: (c) => c === true,
    check: bool,
    restore: (saved) => (saved === true ? true : undefined),
  },
  open: () => ({ devices: [{ name: 'virtio-rng', spec: null }] }),
  build: () => new VirtioRng((b) => randomFillSync(b)),
  recordCheck: checkRngState,
};
