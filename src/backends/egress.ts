/**
 * The egress policy of a user-mode network, applied on the frame path in the I/O thread: every frame
 * the guest sends towards passt is looked at before passt sees it, and every frame passt sends the
 * guest is read for what the policy needs to know (the names DNS answers give addresses, and the
 * flows host port forwards open). The guest is the attacker: a frame this code cannot read whole is
 * dropped, never passed.
 *
 * A frame from the guest goes on, in this order, when
 *   1. it is ARP, DHCP (UDP to port 67), DHCPv6 (UDP to port 547) or IPv6 neighbour discovery
 *      (ICMPv6 types 133-137): what the link needs to come up;
 *   2. it answers a flow a host port forward opened into the guest (TCP or UDP back to the address
 *      and port the connection came from, from the guest port it reached);
 *   3. its destination matches no `deny` entry (a CIDR, or a host name DNS gave that address for);
 *   4. the destination is one of the host's own addresses (its interfaces, loopback, link-local,
 *      and the gateway passt maps to the host's loopback): only with `allowHost`, or to port 53
 *      (the DNS resolver passt gives the guest);
 *   5. other destinations: anywhere when `allow` is empty, else only those an `allow` entry matches.
 * Anything else (other EtherTypes, IPv4 fragments after the first to an address only a port makes
 * allowed, malformed headers) is dropped and counted.
 *
 * Names: `example.com` matches that name only, `*.example.com` every name below it (not itself).
 * They are matched against what DNS answers over UDP told the guest (the question and each CNAME
 * on the way, for each A/AAAA record), so an address the guest learned another way (DNS over TCP,
 * DoH, a literal) is not known by name: `deny` by name is best effort, `allow` by name fails closed.
 */
import { addrKey, type Cidr, matches, parseCidr, parseNamePattern } from './egress-address.js';

/** The policy as the VMM hands it to the I/O thread (plain data, already checked). */
export interface EgressRules {
  /** CIDRs (`10.0.0.0/8`, `2001:db8::/32`, a bare address) and host names (`example.com`, `*.example.com`). */
  allow: string[];
  deny: string[];
  /** The host's own addresses may be reached (every port). */
  allowHost: boolean;
  /** The host's own addresses as CIDRs (hostAddresses() on the VMM's side). */
  hostNets: string[];
}

interface CompiledList {
  nets: Cidr[];
  names: string[];
}

function compile(list: readonly string[]): CompiledList {
  const out: CompiledList = { nets: [], names: [] };
  for (const e of list) {
    const c = parseCidr(e);
    if (c) out.nets.push(c);
    else {
      const n = parseNamePattern(e);
      if (n !== undefined) out.names.push(n);
      // The VMM checked the lists; an entry that is neither is ignored rather than trusted.
    }
  }
  return out;
}

const nameMatches = (pattern: string, name: string): boolean =>
  pattern.startsWith('*.') ? name.endsWith(pattern.slice(1)) : name === pattern;

/** Bounds on what the guest's traffic can make the filter remember. */
export const EGRESS_MAX_NAMED_ADDRESSES = 8192;
export const EGRESS_MAX_FLOWS = 4096;
/** At most this many names are kept for one address. */
const MAX_NAMES_PER_ADDRESS = 16;

const ETH_IPV4 = 0x0800;
const ETH_IPV6 = 0x86dd;
const ETH_ARP = 0x0806;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_ICMPV6 = 58;

/** What a frame's IP header says, as far as the policy needs. */
interface Packet {
  src: Uint8Array;
  dst: Uint8Array;
  proto: number;
  /** The transport header's offset in the frame; -1 when this is a fragment after the first. */
  l4: number;
}

/** The IP layer of an Ethernet frame; undefined when it is not IPv4/IPv6 or cannot be read whole. */
function parseIp(f: Uint8Array): Packet | 'arp' | undefined {
  if (f.length < 14) return undefined;
  const type = ((f[12] as number) << 8) | (f[13] as number);
  if (type === ETH_ARP) return 'arp';
  if (type === ETH_IPV4) {
    if (f.length < 14 + 20 || (f[14] as number) >> 4 !== 4) return undefined;
    const ihl = ((f[14] as number) & 0x0f) * 4;
    if (ihl < 20 || f.length < 14 + ihl) return undefined;
    const fragOffset = (((f[20] as number) & 0x1f) << 8) | (f[21] as number);
    return {
      src: f.subarray(26, 30),
      dst: f.subarray(30, 34),
      proto: f[23] as number,
      l4: fragOffset !== 0 ? -1 : 14 + ihl,
    };
  }
  if (type === ETH_IPV6) {
    if (f.length < 14 + 40 || (f[14] as number) >> 4 !== 6) return undefined;
    let next = f[20] as number;
    let at = 54;
    // Extension headers (hop-by-hop, routing, destination options, fragment), a bounded walk.
    for (let i = 0; i < 8; i++) {
      if (next === 0 || next === 43 || next === 60) {
        if (f.length < at + 8) return undefined;
        next = f[at] as number;
        at += ((f[at + 1] as number) + 1) * 8;
      } else if (next === 44) {
        if (f.length < at + 8) return undefined;
        const offset = (((f[at + 2] as number) << 8) | (f[at + 3] as number)) >> 3;
        next = f[at] as number;
        at += 8;
        if (offset !== 0) return { src: f.subarray(22, 38), dst: f.subarray(38, 54), proto: next, l4: -1 };
      } else break;
    }
    if (next === 0 || next === 43 || next === 60 || next === 44) return undefined;
    return { src: f.subarray(22, 38), dst: f.subarray(38, 54), proto: next, l4: at };
  }
  return undefined;
}

/** The source and destination ports at `l4` (TCP and UDP); undefined when the header is not there. */
function ports(f: Uint8Array, l4: number): { sport: number; dport: number } | undefined {
  if (l4 < 0 || f.length < l4 + 4) return undefined;
  return {
    sport: ((f[l4] as number) << 8) | (f[l4 + 1] as number),
    dport: ((f[l4 + 2] as number) << 8) | (f[l4 + 3] as number),
  };
}

const flowKey = (proto: number, remote: Uint8Array, rport: number, gport: number): string =>
  `${proto}|${addrKey(remote)}|${rport}|${gport}`;

/** Why a frame was dropped (counted per reason). */
export type EgressDrop = 'malformed' | 'denied' | 'host' | 'not-allowed';

export class EgressFilter {
  private allow: CompiledList = { nets: [], names: [] };
  private deny: CompiledList = { nets: [], names: [] };
  private host: Cidr[] = [];
  private allowHost = false;
  /** Address → the names DNS answers gave it (most recent last; oldest addresses evicted first). */
  private readonly names = new Map<string, string[]>();
  /** Flows host port forwards opened (replies go back along them). */
  private readonly flows = new Set<string>();
  /** Frames dropped, by reason. */
  readonly dropped: Record<EgressDrop, number> = { malformed: 0, denied: 0, host: 0, 'not-allowed': 0 };

  constructor(rules: EgressRules) {
    this.setRules(rules);
  }

  setRules(rules: EgressRules): void {
    this.allow = compile(rules.allow);
    this.deny = compile(rules.deny);
    this.host = compile(rules.hostNets).nets;
    this.allowHost = rules.allowHost;
  }

  /** Whether the guest's frame `f` (Ethernet, no virtio header) may go on to passt. */
  allowOut(f: Uint8Array): boolean {
    const why = this.verdict(f);
    if (why === undefined) return true;
    this.dropped[why]++;
    return false;
  }

  private verdict(f: Uint8Array): EgressDrop | undefined {
    const p = parseIp(f);
    if (p === 'arp') return undefined;
    if (p === undefined) return 'malformed';
    const pp = p.proto === PROTO_TCP || p.proto === PROTO_UDP ? ports(f, p.l4) : undefined;
    if (p.l4 >= 0 && (p.proto === PROTO_TCP || p.proto === PROTO_UDP) && pp === undefined) return 'malformed';
    // 1. What the link needs.
    if (pp && p.proto === PROTO_UDP && (pp.dport === 67 || pp.dport === 547)) return undefined;
    if (p.proto === PROTO_ICMPV6 && p.l4 >= 0) {
      if (f.length < p.l4 + 1) return 'malformed';
      const t = f[p.l4] as number;
      if (t >= 133 && t <= 137) return undefined;
    }
    // 2. Replies on flows a forward opened.
    if (pp && this.flows.has(flowKey(p.proto, p.dst, pp.dport, pp.sport))) return undefined;
    // 3. Denied destinations.
    // The address's names only matter to a rule that names hosts (the key costs an allocation a frame).
    const byName = this.deny.names.length > 0 || this.allow.names.length > 0;
    const named = byName ? this.names.get(addrKey(p.dst)) : undefined;
    if (this.deny.nets.some((c) => matches(c, p.dst))) return 'denied';
    if (named && this.deny.names.some((pat) => named.some((n) => nameMatches(pat, n)))) return 'denied';
    // 4. The host's own addresses.
    if (this.host.some((c) => matches(c, p.dst))) {
      if (this.allowHost) return undefined;
      if (pp && pp.dport === 53) return undefined;
      return 'host';
    }
    // 5. Everything else.
    if (this.allow.nets.length === 0 && this.allow.names.length === 0) return undefined;
    if (this.allow.nets.some((c) => matches(c, p.dst))) return undefined;
    if (named && this.allow.names.some((pat) => named.some((n) => nameMatches(pat, n)))) return undefined;
    return 'not-allowed';
  }

  /** Reads a frame passt sends the guest: DNS answers (names of addresses) and flows forwards open. */
  observeIn(f: Uint8Array): void {
    const p = parseIp(f);
    if (p === undefined || p === 'arp' || p.l4 < 0) return;
    if (p.proto !== PROTO_TCP && p.proto !== PROTO_UDP) return;
    const pp = ports(f, p.l4);
    if (!pp) return;
    if (p.proto === PROTO_UDP && pp.sport === 53) {
      this.readDns(f, p.l4 + 8);
      return;
    }
    if (p.proto === PROTO_TCP) {
      // A SYN without ACK from passt's side: a connection a host port forward opens into the guest.
      if (f.length < p.l4 + 14) return;
      const flags = f[p.l4 + 13] as number;
      if ((flags & 0x12) !== 0x02) return;
    } else if (!this.host.some((c) => matches(c, p.src))) {
      // UDP from the host's addresses that is not DNS comes through a forward; other UDP is a reply.
      return;
    }
    const key = flowKey(p.proto, p.src, pp.sport, pp.dport);
    if (this.flows.has(key)) return;
    if (this.flows.size >= EGRESS_MAX_FLOWS) {
      const oldest = this.flows.values().next().value;
      if (oldest !== undefined) this.flows.delete(oldest);
    }
    this.flows.add(key);
  }

  /** The A and AAAA records of a DNS response at `at` in `f`, remembered under the names asked. */
  private readDns(f: Uint8Array, at: number): void {
    const end = f.length;
    if (end < at + 12) return;
    const u16 = (o: number): number => ((f[o] as number) << 8) | (f[o + 1] as number);
    const flags = u16(at + 2);
    if ((flags & 0x8000) === 0 || (flags & 0x000f) !== 0) return; // not a response, or an error
    const qd = u16(at + 4);
    const an = u16(at + 6);
    if (qd !== 1 || an === 0) return;
    let off = at + 12;
    const q = readName(f, at, off);
    if (!q) return;
    off = q.next + 4;
    const chain = new Set<string>([q.name]);
    for (let i = 0; i < an && i < 64; i++) {
      const n = readName(f, at, off);
      if (!n || end < n.next + 10) return;
      const type = u16(n.next);
      const rdlen = u16(n.next + 8);
      const rdata = n.next + 10;
      if (end < rdata + rdlen) return;
      if (type === 5) {
        const target = readName(f, at, rdata);
        if (target && chain.size < MAX_NAMES_PER_ADDRESS) chain.add(target.name);
      } else if ((type === 1 && rdlen === 4) || (type === 28 && rdlen === 16)) {
        this.remember(f.subarray(rdata, rdata + rdlen), chain);
      }
      off = rdata + rdlen;
    }
  }

  private remember(addr: Uint8Array, names: Set<string>): void {
    const key = addrKey(addr);
    const had = this.names.get(key) ?? [];
    this.names.delete(key);
    const merged = [...had.filter((n) => !names.has(n)), ...names].slice(-MAX_NAMES_PER_ADDRESS);
    if (this.names.size >= EGRESS_MAX_NAMED_ADDRESSES) {
      const oldest = this.names.keys().next().value;
      if (oldest !== undefined) this.names.delete(oldest);
    }
    this.names.set(key, merged);
  }

  /** The names DNS gave `address` (for tests and diagnostics). */
  namesOf(address: string): readonly string[] {
    const c = parseCidr(address);
    return c ? (this.names.get(addrKey(c.bytes)) ?? []) : [];
  }
}

/**
 * A DNS name at `off` in the message starting at `msg` (compression pointers followed, at most 16,
 * each pointing backwards), lower-cased; `next` is where the name ends in place.
 */
function readName(f: Uint8Array, msg: number, off: number): { name: string; next: number } | undefined {
  const labels: string[] = [];
  let at = off;
  let next = -1;
  let jumps = 0;
  let length = 0;
  for (;;) {
    if (at >= f.length) return undefined;
    const len = f[at] as number;
    if (len === 0) {
      if (next < 0) next = at + 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      if (at + 1 >= f.length || ++jumps > 16) return undefined;
      const ptr = msg + (((len & 0x3f) << 8) | (f[at + 1] as number));
      if (next < 0) next = at + 2;
      if (ptr >= at) return undefined;
      at = ptr;
      continue;
    }
    if ((len & 0xc0) !== 0 || at + 1 + len > f.length) return undefined;
    length += len + 1;
    if (length > 255) return undefined;
    labels.push(
      Buffer.from(f.subarray(at + 1, at + 1 + len))
        .toString('latin1')
        .toLowerCase(),
    );
    at += 1 + len;
  }
  return { name: labels.join('.'), next };
}
