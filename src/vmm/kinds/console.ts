/**
 * virtio-console (the guest's hvc0): output to the configured place, input through a pipe whose write
 * end is the host handle (Vm.sendConsoleInput writes there).
 */
import { closeSync } from 'node:fs';
import { type ConsoleIoSpec, FdConsole } from '../../backends/console-io.js';
import { toDisposable } from '../../common/lifecycle.js';
import { bool } from '../../common/schema.js';
import type { SerialConfig } from '../../config/index.js';
import { VirtioConsole } from '../../devices/virtio/console.js';
import { checkConsoleState } from '../../devices/virtio/console-state.js';
import * as sys from '../../os/sys.js';
import { type DeviceKind, openOutput } from '../device-kind.js';

/** The host side: where typed input goes. */
export interface ConsoleHost {
  inputFd: number;
}

export const consoleKind: DeviceKind<{ output: SerialConfig }, { io: ConsoleIoSpec }, ConsoleHost> = {
  name: 'virtio-console',
  configKey: 'virtioConsole',
  config: (c) => c.virtioConsole,
  snapshot: {
    // Where the output went is the restoring process's business: the restore's serial says.
    save: (c) => c !== undefined,
    check: bool,
    restore: (saved, ctx) => (saved === true ? { output: ctx.serial ?? { kind: 'stdio' } } : undefined),
  },
  open(c, ctx) {
    const [r, w] = sys.pipe();
    ctx.store.add(toDisposable(() => closeSync(r)));
    ctx.store.add(toDisposable(() => closeSync(w)));
    const outFd = openOutput(c.output, 'virtio-console', ctx.store);
    return { devices: [{ name: 'virtio-console', spec: { io: { outFd, inFd: r } } }], host: { inputFd: w } };
  },
  build: (spec) => new VirtioConsole(new FdConsole(spec.io)),
  recordCheck: checkConsoleState,
};
