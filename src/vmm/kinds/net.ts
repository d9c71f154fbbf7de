/** virtio-net: one device per interface, each over a TAP device. */
import { closeTap, openTap, Tap, type TapSpec } from '../../backends/tap.js';
import { toDisposable } from '../../common/lifecycle.js';
import { array, int, object, opt, str } from '../../common/schema.js';
import type { NetConfig } from '../../config/index.js';
import { VirtioNet } from '../../devices/virtio/net.js';
import { checkNetState } from '../../devices/virtio/net-state.js';
import type { DeviceKind } from '../device-kind.js';
import { MAX_DEVICES, NAME } from './limits.js';

export const netKind: DeviceKind<NetConfig[], { id: string; tap: TapSpec; mac: number[] }> = {
  name: 'virtio-net',
  configKey: 'nets',
  config: (c) => (c.nets && c.nets.length > 0 ? c.nets : undefined),
  snapshot: {
    save: (c) => c ?? [],
    check: array(object({ id: str(NAME), tap: str(NAME), mac: opt(array(int(0, 255), 6, 6)) }), 0, MAX_DEVICES),
    restore: (saved) => saved as NetConfig[],
  },
  open(nets, ctx) {
    return {
      devices: nets.map((n, i) => {
        const mac = n.mac ?? [0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + i];
        const tap = openTap(n.tap);
        ctx.store.add(toDisposable(() => closeTap(tap)));
        return { name: `virtio-net:${n.id}`, spec: { id: n.id, tap, mac } };
      }),
    };
  },
  build: (spec) => new VirtioNet(new Tap(spec.tap), { mac: Uint8Array.from(spec.mac) }),
  recordCheck: checkNetState,
};
