/** virtio-vsock in Firecracker's hybrid form: guest connections over host Unix sockets. */
import { closeVsock, openVsock, UnixVsockHost, type VsockSpec } from '../../backends/unix-socket.js';
import { toDisposable } from '../../common/lifecycle.js';
import { object, str, u32 } from '../../common/schema.js';
import type { VsockConfig } from '../../config/index.js';
import { VirtioVsock } from '../../devices/virtio/vsock/index.js';
import { checkVsockState } from '../../devices/virtio/vsock/state.js';
import type { DeviceKind } from '../device-kind.js';
import { PATH } from './limits.js';

/** The virtio-vsock device over Unix sockets, for a spec from openVsock() (on the I/O thread, or for its features). */
export function createVsockDevice(spec: VsockSpec): VirtioVsock {
  return new VirtioVsock(new UnixVsockHost(spec), spec);
}

export const vsockKind: DeviceKind<VsockConfig, { vsock: VsockSpec }> = {
  name: 'virtio-vsock',
  configKey: 'vsock',
  config: (c) => c.vsock,
  snapshot: {
    save: (c) => (c ? { cid: c.cid, udsPath: c.udsPath } : undefined),
    check: { check: object({ cid: u32, udsPath: str(PATH) }), optional: true },
    restore: (saved) => saved as VsockConfig | undefined,
  },
  open(c, ctx) {
    const vsock = openVsock(c);
    ctx.store.add(toDisposable(() => closeVsock(vsock))); // released even when the slot cannot be added
    return { devices: [{ name: 'virtio-vsock', spec: { vsock } }] };
  },
  build: (spec) => createVsockDevice(spec.vsock),
  recordCheck: checkVsockState,
};
