/**
 * virtio-fs: one device per shared host directory, served by vireo's own FUSE server on a worker
 * thread of its own (backends/fs/worker.ts). A snapshot keeps each share by path and tag (and read-only); a restore opens the directory
 * again (a directory gone since is one clear ConfigError line) and the device's record puts the
 * guest's node ids and handles back (devices/virtio/fs/state.ts).
 */
import { closeShare, openShare } from '../../backends/fs/open.js';
import { PassthroughFs, type ShareSpec } from '../../backends/fs/server.js';
import { FsWorker } from '../../backends/fs/worker.js';
import { toDisposable } from '../../common/lifecycle.js';
import { array, bool, object, opt, str } from '../../common/schema.js';
import type { ShareConfig } from '../../config/index.js';
import { VirtioFs } from '../../devices/virtio/fs/device.js';
import { checkFsState } from '../../devices/virtio/fs/state.js';
import type { DeviceKind } from '../device-kind.js';
import { MAX_DEVICES, PATH } from './limits.js';

/**
 * Whether each share's server runs on a worker thread of its own (the default) or inline on the I/O
 * thread (VIREO_FS_THREAD=0): the worker keeps a slow host file system from holding up the other
 * devices, at the price of a thread crossing per request, which costs most on many small requests.
 */
const FS_THREAD = process.env.VIREO_FS_THREAD !== '0';

export const fsKind: DeviceKind<ShareConfig[], { tag: string; share: ShareSpec }> = {
  name: 'virtio-fs',
  configKey: 'shares',
  config: (c) => (c.shares && c.shares.length > 0 ? c.shares : undefined),
  snapshot: {
    save: (c) => (c ?? []).map((s) => ({ path: s.path, tag: s.tag, readOnly: s.readOnly ?? false })),
    check: {
      check: array(object({ path: str(PATH), tag: str(36), readOnly: opt(bool) }), 0, MAX_DEVICES),
      optional: true,
    },
    restore: (saved) => {
      const shares = (saved ?? []) as ShareConfig[];
      return shares.length > 0 ? shares : undefined;
    },
  },
  open(shares, ctx) {
    return {
      devices: shares.map((s) => {
        const share = openShare(s);
        ctx.store.add(toDisposable(() => closeShare(share)));
        return { name: `virtio-fs:${s.tag}`, spec: { tag: s.tag, share } };
      }),
    };
  },
  // On the I/O thread (which has the guest's memory) the share gets a worker of its own; the main
  // thread builds the model only for its features, inline.
  build: (spec, memory) =>
    new VirtioFs(memory.length > 0 && FS_THREAD ? new FsWorker(spec.share, memory) : new PassthroughFs(spec.share), {
      tag: spec.tag,
    }),
  recordCheck: checkFsState,
  startsThreads: FS_THREAD,
};
