/**
 * virtio-net interfaces: on a host TAP (Firecracker's iface_id, host_dev_name, guest_mac), or on a
 * user-mode network that passt gives the guest without root (`--net user[,hostfwd=…]`).
 */
import { parseCidr, parseNamePattern } from '../backends/egress-address.js';
import { ConfigError } from '../common/errors.js';
import type { RateLimiterConfig } from '../devices/virtio/rate-limiter.js';
import { validateRateLimiter } from './drive.js';
import { validateId, validateUniqueIds } from './id.js';
import { optionString, parseOptions } from './options.js';

interface NetCommon {
  id: string;
  /** 6 bytes; default 52:54:00:12:34:56, the last byte counting up per interface. */
  mac?: number[] | undefined;
  /** Firecracker's rate limiters (bandwidth and ops token buckets) for frames to and from the guest. */
  rxRateLimiter?: RateLimiterConfig | undefined;
  txRateLimiter?: RateLimiterConfig | undefined;
}

/** An interface on a host TAP. */
export interface TapNetConfig extends NetCommon {
  kind?: 'tap' | undefined;
  /** The host TAP's name (backends/tap.ts checks it against the kernel's interface-name rules). */
  tap: string;
  /** Offered to the guest with VIRTIO_NET_F_MTU (68-65535); absent: not offered, the guest's default. */
  mtu?: number | undefined;
}

/** A host port forwarded to the guest (QEMU's hostfwd): connections to hostAddr:hostPort reach guestPort. */
export interface PortForward {
  proto: 'tcp' | 'udp';
  /** An IPv4 or IPv6 address on the host to bind; undefined: every address (QEMU's default). */
  hostAddr?: string | undefined;
  hostPort: number;
  guestPort: number;
}

/**
 * Where a guest on a user-mode network may send (backends/egress.ts has the order the rules apply in).
 * Entries are CIDRs (`10.0.0.0/8`, `2001:db8::/32`, a bare address) or host names (`example.com`,
 * `*.example.com`), matched against the DNS answers the guest got.
 */
export interface EgressPolicy {
  /** When not empty, only these destinations (and the host, with allowHost) are reachable. */
  allow?: string[] | undefined;
  /** Never reachable, whatever `allow` says. */
  deny?: string[] | undefined;
  /** The host's own addresses (loopback through passt's gateway, its interfaces) are reachable; default false. */
  allowHost?: boolean | undefined;
}

/** At most this many entries in each of allow and deny. */
export const EGRESS_MAX_ENTRIES = 1024;

/** An interface on a user-mode network served by passt (started by vireo, unprivileged). */
export interface UserNetConfig extends NetCommon {
  kind: 'user';
  /** Host ports forwarded to the guest. */
  hostfwd?: PortForward[] | undefined;
  /** The egress policy; default: every destination but the host's own addresses. */
  egress?: EgressPolicy | undefined;
}

/** Checks a policy from the TS API, the CLI or a snapshot. */
export function validateEgress(id: string, p: EgressPolicy): void {
  if (typeof p !== 'object' || p === null || Array.isArray(p))
    throw new ConfigError(`network interface ${id}: egress must be an object { allow, deny, allowHost }`);
  for (const key of Object.keys(p))
    if (key !== 'allow' && key !== 'deny' && key !== 'allowHost')
      throw new ConfigError(`network interface ${id}: egress has no setting "${key}" (allow, deny, allowHost)`);
  if (p.allowHost !== undefined && typeof p.allowHost !== 'boolean')
    throw new ConfigError(`network interface ${id}: egress.allowHost must be true or false`);
  for (const which of ['allow', 'deny'] as const) {
    const list = p[which];
    if (list === undefined) continue;
    if (!Array.isArray(list) || list.length > EGRESS_MAX_ENTRIES)
      throw new ConfigError(
        `network interface ${id}: egress.${which} must be a list of at most ${EGRESS_MAX_ENTRIES} entries`,
      );
    for (const e of list)
      if (typeof e !== 'string' || (parseCidr(e) === undefined && parseNamePattern(e) === undefined))
        throw new ConfigError(
          `network interface ${id}: egress.${which} entry "${String(e)}" is neither a CIDR (10.0.0.0/8, 2001:db8::/32) nor a host name (example.com, *.example.com)`,
        );
  }
}

export type NetConfig = TapNetConfig | UserNetConfig;

/** "aa:bb:cc:dd:ee:ff" → 6 bytes; undefined when it is not a unicast MAC address. */
export function parseMac(s: string): Uint8Array | undefined {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(s)) return undefined;
  const mac = Uint8Array.from(s.split(':').map((h) => Number.parseInt(h, 16)));
  return (mac[0] as number) & 1 ? undefined : mac;
}

const NET_OPTIONS = {
  what: 'net',
  keys: ['tap', 'mac', 'id', 'mtu'],
  usage: 'tap=NAME, mac=MAC, id=ID, mtu=N',
} as const;
const USER_OPTIONS = {
  what: 'net',
  keys: ['user', 'mac', 'id', 'host'],
  usage:
    'user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,allow=CIDR|NAME]...[,deny=CIDR|NAME]...[,host=allow|deny][,mac=MAC][,id=ID]',
} as const;
const REPEATED = ['hostfwd=', 'allow=', 'deny='];
const HOSTFWD_USAGE = 'hostfwd=tcp:127.0.0.1:8080-:80 (or udp:, and an empty host address for every address)';

const port = (s: string, what: string, text: string): number => {
  const n = /^[0-9]{1,5}$/.test(s) ? Number(s) : Number.NaN;
  if (!(n >= 1 && n <= 65535))
    throw new ConfigError(`hostfwd "${text}": ${what} must be 1-65535; use ${HOSTFWD_USAGE}`);
  return n;
};

/** An IPv4 dotted quad or an IPv6 address (the characters and shape; the kernel has the last word). */
function isIpAddress(s: string): boolean {
  if (/^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/.test(s))
    return true;
  return /^[0-9a-fA-F:.]{2,45}$/.test(s) && s.includes(':') && (s.match(/::/g)?.length ?? 0) <= 1;
}

/**
 * QEMU's `hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` (an IPv6 host address in
 * brackets). passt forwards to the guest's one address, so GUESTADDR must be empty.
 */
export function parseHostForward(text: string): PortForward {
  const m = text.match(/^(tcp|udp)?:(\[[^\]]*\]|[^:[\]-]*):([0-9]+)-([^:]*):([0-9]+)$/);
  if (!m) throw new ConfigError(`hostfwd "${text}" is not of the form ${HOSTFWD_USAGE}`);
  const [, proto = 'tcp', rawAddr = '', hostPort = '', guestAddr = '', guestPort = ''] = m;
  if (guestAddr !== '')
    throw new ConfigError(
      `hostfwd "${text}": passt forwards to the guest's own address: leave the guest address empty (…-:${guestPort})`,
    );
  const hostAddr = rawAddr.startsWith('[') ? rawAddr.slice(1, -1) : rawAddr;
  const f: PortForward = {
    proto: proto as 'tcp' | 'udp',
    hostPort: port(hostPort, 'the host port', text),
    guestPort: port(guestPort, 'the guest port', text),
  };
  if (hostAddr !== '') f.hostAddr = hostAddr;
  validatePortForward(f);
  return f;
}

/** A forward from the TS API or the CLI: protocol, ports and host address checked. */
export function validatePortForward(f: PortForward): void {
  if (typeof f !== 'object' || f === null) throw new ConfigError('a port forward must be an object');
  if (f.proto !== 'tcp' && f.proto !== 'udp')
    throw new ConfigError(`port forward protocol "${String(f.proto)}" is not tcp or udp`);
  for (const [what, p] of [
    ['host', f.hostPort],
    ['guest', f.guestPort],
  ] as const)
    if (!Number.isInteger(p) || p < 1 || p > 65535)
      throw new ConfigError(`port forward ${what} port ${String(p)} is not 1-65535`);
  if (f.hostAddr !== undefined && (typeof f.hostAddr !== 'string' || !isIpAddress(f.hostAddr)))
    throw new ConfigError(`port forward host address "${String(f.hostAddr)}" is not an IPv4 or IPv6 address`);
}

/**
 * The CLI's `--net` value: `tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,id=ID]`, or
 * `user[,hostfwd=…]…[,mac=…][,id=ID]` (hostfwd repeatable); `index` numbers the default id.
 */
export function parseNet(text: string, index: number): NetConfig {
  const parts = text.split(',');
  if (parts[0] === 'user' || parts[0]?.startsWith('user=')) return parseUserNet(parts, index);
  const o = parseOptions(text, NET_OPTIONS);
  const tap = o.get('tap');
  if (tap === undefined) throw new ConfigError('a network interface needs tap=NAME or user');
  const n: TapNetConfig = { id: netId(o, index), tap: optionString('net', 'tap', tap) };
  setMac(n, o.get('mac'));
  const mtu = o.get('mtu');
  if (mtu !== undefined) {
    if (!/^\d{1,5}$/.test(mtu)) throw new ConfigError(`net option mtu is a number of bytes (68-65535), not "${mtu}"`);
    n.mtu = Number(mtu);
  }
  validateNet(n);
  return n;
}

function parseUserNet(parts: string[], index: number): UserNetConfig {
  const fwd = parts.filter((p) => p.startsWith('hostfwd='));
  const o = parseOptions(parts.filter((p) => !REPEATED.some((r) => p.startsWith(r))).join(','), USER_OPTIONS);
  if (o.get('user') !== '') throw new ConfigError(`net option user takes no value: use ${USER_OPTIONS.usage}`);
  const n: UserNetConfig = { id: netId(o, index), kind: 'user' };
  if (fwd.length > 0) n.hostfwd = fwd.map((p) => parseHostForward(p.slice('hostfwd='.length)));
  const allow = parts.filter((p) => p.startsWith('allow=')).map((p) => p.slice('allow='.length));
  const deny = parts.filter((p) => p.startsWith('deny=')).map((p) => p.slice('deny='.length));
  const host = o.get('host');
  if (host !== undefined && host !== 'allow' && host !== 'deny')
    throw new ConfigError(`net option host is allow or deny (the host's own addresses), not "${host}"`);
  if (allow.length > 0 || deny.length > 0 || host !== undefined) {
    n.egress = {};
    if (allow.length > 0) n.egress.allow = allow;
    if (deny.length > 0) n.egress.deny = deny;
    if (host !== undefined) n.egress.allowHost = host === 'allow';
  }
  setMac(n, o.get('mac'));
  validateNet(n);
  return n;
}

const netId = (o: Map<string, string>, index: number): string =>
  o.has('id') ? optionString('net', 'id', o.get('id') ?? '') : `net${index}`;

function setMac(n: NetCommon, macText: string | undefined): void {
  if (macText === undefined) return;
  const mac = parseMac(macText);
  if (!mac) throw new ConfigError(`mac "${macText}" is not a unicast MAC address like 52:54:00:12:34:56`);
  n.mac = [...mac];
}

export function validateNet(n: NetConfig): void {
  validateId('network interface', n.id);
  if (n.kind === 'user') {
    const f = n.hostfwd;
    if (f !== undefined && !Array.isArray(f))
      throw new ConfigError(`network interface ${n.id}: hostfwd must be a list of port forwards`);
    for (const x of f ?? []) validatePortForward(x);
    validateForwards(n.id, f ?? []);
    if (n.egress !== undefined) validateEgress(n.id, n.egress);
  } else if (n.kind !== undefined && n.kind !== 'tap')
    throw new ConfigError(`network interface ${n.id}: kind "${String(n.kind)}" is not tap or user`);
  else if (typeof n.tap !== 'string' || n.tap === '')
    throw new ConfigError(`network interface ${n.id} needs a TAP name`);
  else if (n.mtu !== undefined && (!Number.isInteger(n.mtu) || n.mtu < 68 || n.mtu > 65535))
    throw new ConfigError(`network interface ${n.id}: MTU ${String(n.mtu)} is out of range: give 68 to 65535`);
  const m = n.mac;
  if (
    m !== undefined &&
    (!Array.isArray(m) || m.length !== 6 || !m.every((b) => Number.isInteger(b) && b >= 0 && b <= 255) || m[0]! & 1)
  )
    throw new ConfigError(`network interface ${n.id}: its MAC address is not a unicast address of 6 bytes`);
  if (n.rxRateLimiter !== undefined) validateRateLimiter(`network interface ${n.id}: rx_rate_limiter`, n.rxRateLimiter);
  if (n.txRateLimiter !== undefined) validateRateLimiter(`network interface ${n.id}: tx_rate_limiter`, n.txRateLimiter);
}

/** No host port (per protocol and address) forwarded twice. */
export function validateForwards(id: string, forwards: readonly PortForward[]): void {
  const seen = new Set<string>();
  for (const f of forwards) {
    const key = `${f.proto}:${f.hostAddr ?? '*'}:${f.hostPort}`;
    if (seen.has(key))
      throw new ConfigError(`network interface ${id}: host port ${f.proto} ${f.hostPort} is forwarded twice`);
    seen.add(key);
  }
}

/** Each interface; no id, TAP or MAC address twice (Firecracker refuses the last two as well). */
export function validateNets(nets: readonly NetConfig[]): void {
  for (const n of nets) validateNet(n);
  validateUniqueIds(
    'network interface',
    nets.map((n) => n.id),
  );
  const taps = new Set<string>();
  const macs = new Set<string>();
  for (const n of nets) {
    if (n.kind !== 'user') {
      if (taps.has(n.tap)) throw new ConfigError(`TAP ${n.tap} is given to two network interfaces: give each its own`);
      taps.add(n.tap);
    }
    if (!n.mac) continue;
    const mac = n.mac.map((b) => b.toString(16).padStart(2, '0')).join(':');
    if (macs.has(mac))
      throw new ConfigError(`MAC address ${mac} is given to two network interfaces: give each its own`);
    macs.add(mac);
  }
}
