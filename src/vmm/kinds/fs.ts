/**
 * virtio-fs: one device per shared host directory, served by vireo's own FUSE server on a worker
 * thread of its own (backends/fs/worker.ts), confined with the fs seccomp filter. A snapshot keeps
 * each share by path and tag (and read-only); a restore opens the directory again (a directory gone since is one clear ConfigError line) and the device's record puts the
 * guest's node ids and handles back (devices/virtio/fs/state.ts).
 */
import { closeShare, openShare } from '../../backends/fs/open.js';
import { PassthroughFs, type ShareSpec } from '../../backends/fs/server.js';
import { FsWorker } from '../../backends/fs/worker.js';
import { ConfigError } from '../../common/errors.js';
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

/**
 * Inline serving needs the VM's seccomp off. The fs calls (openat, unlinkat, renameat2, xattrs...)
 * are on the fs thread's list only, not on the I/O thread's: that thread also holds every socket,
 * TAP and disk, and giving it the file-system calls for a comparison mode would widen it for every VM.
 * So an inline share under seccomp is refused at open, before any thread could die on its first LOOKUP.
 */
export const INLINE_NEEDS_NO_SECCOMP =
  'VIREO_FS_THREAD=0 serves shares inline on the I/O thread, whose seccomp filter allows no file-system calls; ' +
  'run with --no-seccomp (seccomp: false) to serve inline, or without VIREO_FS_THREAD=0 (a server thread per share, confined with its own filter)';

export const fsKind: DeviceKind<ShareConfig[], { tag: string; share: ShareSpec; seccomp: boolean }> = {
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
    if (!FS_THREAD && ctx.seccomp) throw new ConfigError(`share ${shares[0]?.tag}: ${INLINE_NEEDS_NO_SECCOMP}`);
    return {
      devices: shares.map((s) => {
        const share = openShare(s);
        ctx.store.add(toDisposable(() => closeShare(share)));
        return { name: `virtio-fs:${s.tag}`, spec: { tag: s.tag, share, seccomp: ctx.seccomp } };
      }),
    };
  },
  // On the I/O thread (which has the guest's memory) the share gets a worker of its own, confined with
  // the fs filter when the VM's seccomp is on; the main thread builds the model only for its features,
  // inline.
  build: (spec, memory) =>
    new VirtioFs(
      memory.length > 0 && FS_THREAD ? new FsWorker(spec.share, memory, spec.seccomp) : new PassthroughFs(spec.share),
      { tag: spec.tag },
    ),
  recordCheck: checkFsState,
  startsThreads: FS_THREAD,
};
