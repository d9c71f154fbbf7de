/** virtio-net interfaces on host TAPs (Firecracker's iface_id, host_dev_name, guest_mac). */
import { ConfigError } from '../common/errors.js';
import { validateId, validateUniqueIds } from './id.js';
import { optionString, parseOptions } from './options.js';

export interface NetConfig {
  id: string;
  /** The host TAP's name (backends/tap.ts checks it against the kernel's interface-name rules). */
  tap: string;
  /** 6 bytes; default 52:54:00:12:34:56, the last byte counting up per interface. */
  mac?: number[] | undefined;
}

/** "aa:bb:cc:dd:ee:ff" → 6 bytes; undefined when it is not a unicast MAC address. */
export function parseMac(s: string): Uint8Array | undefined {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(s)) return undefined;
  const mac = Uint8Array.from(s.split(':').map((h) => Number.parseInt(h, 16)));
  return (mac[0] as number) & 1 ? undefined : mac;
}

const NET_OPTIONS = { what: 'net', keys: ['tap', 'mac', 'id'], usage: 'tap=NAME, mac=MAC, id=ID' } as const;

/** The CLI's `--net` value: `tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,id=ID]`; `index` numbers the default id. */
export function parseNet(text: string, index: number): NetConfig {
  const o = parseOptions(text, NET_OPTIONS);
  const tap = o.get('tap');
  if (tap === undefined) throw new ConfigError('a network interface needs tap=NAME');
  const n: NetConfig = {
    id: o.has('id') ? optionString('net', 'id', o.get('id') ?? '') : `net${index}`,
    tap: optionString('net', 'tap', tap),
  };
  const macText = o.get('mac');
  if (macText !== undefined) {
    const mac = parseMac(macText);
    if (!mac) throw new ConfigError(`mac "${macText}" is not a unicast MAC address like 52:54:00:12:34:56`);
    n.mac = [...mac];
  }
  validateNet(n);
  return n;
}

export function validateNet(n: NetConfig): void {
  validateId('network interface', n.id);
  if (typeof n.tap !== 'string' || n.tap === '') throw new ConfigError(`network interface ${n.id} needs a TAP name`);
  const m = n.mac;
  if (
    m !== undefined &&
    (!Array.isArray(m) || m.length !== 6 || !m.every((b) => Number.isInteger(b) && b >= 0 && b <= 255) || m[0]! & 1)
  )
    throw new ConfigError(`network interface ${n.id}: its MAC address is not a unicast address of 6 bytes`);
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
    if (taps.has(n.tap)) throw new ConfigError(`TAP ${n.tap} is given to two network interfaces: give each its own`);
    taps.add(n.tap);
    if (!n.mac) continue;
    const mac = n.mac.map((b) => b.toString(16).padStart(2, '0')).join(':');
    if (macs.has(mac))
      throw new ConfigError(`MAC address ${mac} is given to two network interfaces: give each its own`);
    macs.add(mac);
  }
}
