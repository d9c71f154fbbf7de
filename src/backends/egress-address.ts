/**
 * Addresses as the user network's egress policy reads them: CIDRs of both families, host-name patterns,
 * prefix matching, and the host's own addresses a guest on passt can reach.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';

/** An address family's bytes (4 or 16) and a prefix length. */
export interface Cidr {
  bytes: Uint8Array;
  bits: number;
}

const NAME_LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** `10.0.0.0/8`, `::1`, `fe80::/10` → bytes and bits; undefined when it is not one. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const fam = isIP(addr);
  if (fam === 0) return undefined;
  const bytes = fam === 4 ? ipv4Bytes(addr) : ipv6Bytes(addr);
  if (!bytes) return undefined;
  const max = bytes.length * 8;
  let bits = max;
  if (slash >= 0) {
    const b = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(b)) return undefined;
    bits = Number(b);
    if (bits > max) return undefined;
  }
  return { bytes, bits };
}

/** A host-name pattern (`example.com`, `*.example.com`), lower-cased; undefined when it is not one. */
export function parseNamePattern(text: string): string | undefined {
  const t = text.toLowerCase().replace(/\.$/, '');
  const body = t.startsWith('*.') ? t.slice(2) : t;
  if (body.length === 0 || body.length > 253) return undefined;
  const labels = body.split('.');
  if (labels.length < 1 || !labels.every((l) => NAME_LABEL.test(l))) return undefined;
  if (isIP(body) !== 0 || /^[0-9.]+$/.test(body)) return undefined;
  return t;
}

function ipv4Bytes(s: string): Uint8Array | undefined {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || !p.every((n) => Number.isInteger(n) && n >= 0 && n <= 255)) return undefined;
  return Uint8Array.from(p);
}

function ipv6Bytes(s: string): Uint8Array | undefined {
  let text = s;
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    // An embedded IPv4 address (::ffff:192.0.2.1) is the last two groups.
    const v4 = ipv4Bytes(text.slice(lastColon + 1));
    if (!v4) return undefined;
    const hex = (i: number): string => (((v4[i] as number) << 8) | (v4[i + 1] as number)).toString(16);
    text = `${text.slice(0, lastColon + 1)}${hex(0)}:${hex(2)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (h: string | undefined): number[] | undefined => {
    if (h === undefined || h === '') return [];
    const out: number[] = [];
    for (const g of h.split(':')) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      out.push(Number.parseInt(g, 16));
    }
    return out;
  };
  const head = parse(halves[0]);
  const rest = halves.length === 2 ? parse(halves[1]) : [];
  if (!head || !rest) return undefined;
  const groups = halves.length === 2 ? 8 - head.length - rest.length : 0;
  if (groups < (halves.length === 2 ? 1 : 0)) return undefined;
  const all = [...head, ...new Array<number>(groups).fill(0), ...rest];
  if (all.length !== 8) return undefined;
  const b = new Uint8Array(16);
  all.forEach((g, i) => {
    b[2 * i] = g >> 8;
    b[2 * i + 1] = g & 0xff;
  });
  return b;
}

export function matches(c: Cidr, a: Uint8Array): boolean {
  if (c.bytes.length !== a.length) return false;
  let bits = c.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if (((c.bytes[i] as number) & mask) !== ((a[i] as number) & mask)) return false;
  }
  return true;
}

/** The key an address has in the name and flow tables. */
export const addrKey = (a: Uint8Array): string => Buffer.from(a).toString('hex');

/**
 * The host's own addresses as a guest on passt can reach them: every interface address, loopback,
 * the unspecified address, IPv6 link-local (passt's and the host's), and the default gateways (passt
 * maps the gateway address to the host's loopback).
 */
export function hostAddresses(): string[] {
  const out = new Set<string>(['127.0.0.0/8', '0.0.0.0/32', '::1/128', '::/128', 'fe80::/10', '::ffff:127.0.0.0/104']);
  for (const list of Object.values(networkInterfaces()))
    for (const a of list ?? []) out.add(a.family === 'IPv4' ? `${a.address}/32` : `${a.address.split('%')[0]}/128`);
  try {
    // /proc/net/route: Iface Destination Gateway … in little-endian hex.
    for (const line of readFileSync('/proc/net/route', 'utf8').split('\n').slice(1)) {
      const [, dest, gw] = line.trim().split(/\s+/);
      if (dest !== '00000000' || gw === undefined || !/^[0-9A-Fa-f]{8}$/.test(gw)) continue;
      const n = Number.parseInt(gw, 16);
      out.add(`${n & 0xff}.${(n >>> 8) & 0xff}.${(n >>> 16) & 0xff}.${n >>> 24}/32`);
    }
  } catch {
    // no IPv4 routes to read
  }
  try {
    // /proc/net/ipv6_route: dest plen src plen nexthop …, 32 hex digits each.
    for (const line of readFileSync('/proc/net/ipv6_route', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      const [dest, plen, , , hop] = f;
      if (dest !== '0'.repeat(32) || plen !== '00' || hop === undefined || hop === '0'.repeat(32)) continue;
      if (!/^[0-9a-f]{32}$/.test(hop)) continue;
      out.add(`${hop.match(/.{4}/g)?.join(':')}/128`);
    }
  } catch {
    // no IPv6 routes to read
  }
  return [...out];
}
