/**
 * virtio-net: one device per interface, each over a host TAP or over a user-mode network that passt
 * serves (`--net user`, started unprivileged and supervised by vireo; the link is down until it serves).
 * The host handle is each user-mode interface's passt supervisor, by interface id (run-time forwards).
 */
import { PasstNet, type PasstSpec } from '../../backends/passt.js';
import { PasstSupervisor } from '../../backends/passt-process.js';
import { closeTap, openTap, Tap, type TapSpec } from '../../backends/tap.js';
import { toDisposable } from '../../common/lifecycle.js';
import { array, bool, type Check, int, isObject, object, oneOf, opt, SchemaError, str } from '../../common/schema.js';
import { EGRESS_MAX_ENTRIES, type NetConfig, validateNets } from '../../config/index.js';
import { VirtioNet } from '../../devices/virtio/net.js';
import { checkNetState } from '../../devices/virtio/net-state.js';
import type { RateLimiterConfig } from '../../devices/virtio/rate-limiter.js';
import type { DeviceKind } from '../device-kind.js';
import { MAX_DEVICES, NAME, RATE_LIMITER } from './limits.js';

/** The MTU passt gives its guests (65520: the largest 802.3 frame less its header, in IPv4 words). */
const PASST_MTU = 65520;

interface Limits {
  rxRateLimiter?: RateLimiterConfig | undefined;
  txRateLimiter?: RateLimiterConfig | undefined;
}

type NetSpec =
  | ({ id: string; mac: number[]; backend: 'tap'; tap: TapSpec; mtu?: number | undefined } & Limits)
  | ({ id: string; mac: number[]; backend: 'user'; passt: PasstSpec } & Limits);

/** What the VMM posts to give a running interface other rate limiters (null: none). */
export interface LimitNet {
  limits: { rx: RateLimiterConfig | null; tx: RateLimiterConfig | null };
}

const mac = opt(array(int(0, 255), 6, 6));
const tapNet = object({
  id: str(NAME),
  kind: opt(oneOf('tap')),
  tap: str(NAME),
  mac,
  mtu: opt(int(68, 65535)),
  rxRateLimiter: RATE_LIMITER,
  txRateLimiter: RATE_LIMITER,
});
const forward = object({
  proto: oneOf('tcp', 'udp'),
  hostAddr: opt(str(64)),
  hostPort: int(1, 65535),
  guestPort: int(1, 65535),
});
const names = opt(array(str(256), 0, EGRESS_MAX_ENTRIES));
const egress = object({ allow: names, deny: names, allowHost: opt(bool) });
const userNet = object({
  id: str(NAME),
  kind: oneOf('user'),
  hostfwd: opt(array(forward, 0, 256)),
  egress: opt(egress),
  mac,
  rxRateLimiter: RATE_LIMITER,
  txRateLimiter: RATE_LIMITER,
});
const anyNet: Check = (v, at) => {
  if (!isObject(v)) throw new SchemaError(at, 'expected an object');
  (v.kind === 'user' ? userNet : tapNet)(v, at);
};

const limitsOf = (n: Limits): Limits => ({ rxRateLimiter: n.rxRateLimiter, txRateLimiter: n.txRateLimiter });

export const netKind: DeviceKind<NetConfig[], NetSpec, Map<string, PasstSupervisor>> = {
  name: 'virtio-net',
  configKey: 'nets',
  config: (c) => (c.nets && c.nets.length > 0 ? c.nets : undefined),
  snapshot: {
    save: (c) => c ?? [],
    check: array(anyNet, 0, MAX_DEVICES),
    restore: (saved) => {
      // The schema checked the shape; the policy's entries and the rest are checked as the CLI's are.
      validateNets(saved as NetConfig[]);
      return saved as NetConfig[];
    },
  },
  open(nets, ctx) {
    const passts = new Map<string, PasstSupervisor>();
    const devices = nets.map((n, i) => {
      const m = n.mac ?? [0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + i];
      const name = `virtio-net:${n.id}`;
      if (n.kind === 'user') {
        const passt = ctx.store.add(
          new PasstSupervisor({
            id: n.id,
            forwards: n.hostfwd,
            egress: {
              allow: n.egress?.allow ?? [],
              deny: n.egress?.deny ?? [],
              allowHost: n.egress?.allowHost ?? false,
            },
            wake: () => ctx.wake(),
          }),
        );
        passts.set(n.id, passt);
        return {
          name,
          spec: { id: n.id, mac: m, backend: 'user' as const, passt: passt.spec, ...limitsOf(n) },
        };
      }
      const tap = openTap(n.tap);
      ctx.store.add(toDisposable(() => closeTap(tap)));
      return { name, spec: { id: n.id, mac: m, backend: 'tap' as const, tap, mtu: n.mtu, ...limitsOf(n) } };
    });
    return { devices, host: passts };
  },
  build: (spec) =>
    spec.backend === 'user'
      ? // passt's MTU (what its DHCP announces), offered to the guest as virtio-net's own.
        new VirtioNet(new PasstNet(spec.passt), { mac: Uint8Array.from(spec.mac), mtu: PASST_MTU, ...limitsOf(spec) })
      : new VirtioNet(new Tap(spec.tap), { mac: Uint8Array.from(spec.mac), mtu: spec.mtu, ...limitsOf(spec) }),
  command(device, command) {
    const limits = (command as Partial<LimitNet>)?.limits;
    if (!(device instanceof VirtioNet) || limits === undefined) throw new Error('not a network interface change');
    device.setRateLimiters(limits.rx ?? undefined, limits.tx ?? undefined);
  },
  recordCheck: checkNetState,
};
