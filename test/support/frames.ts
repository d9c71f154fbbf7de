/**
 * Ethernet frames a guest would send, built byte by byte for tests that talk to a real passt: a DHCP
 * DISCOVER and an ARP request, and parsers for the answers (a DHCP message's type and offered address,
 * an ARP reply's sender).
 */

const ipChecksum = (b: Uint8Array, o: number, len: number): number => {
  let sum = 0;
  for (let i = 0; i < len; i += 2) sum += ((b[o + i] as number) << 8) | (b[o + i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
};

export const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

/** A DHCP DISCOVER from `mac` (broadcast, asking for subnet mask, router, DNS, MTU). */
export function dhcpDiscover(mac: Uint8Array, xid: number): Uint8Array {
  const bootp = new Uint8Array(300);
  const d = new DataView(bootp.buffer);
  bootp[0] = 1; // BOOTREQUEST
  bootp[1] = 1; // Ethernet
  bootp[2] = 6;
  d.setUint32(4, xid);
  d.setUint16(10, 0x8000); // broadcast reply
  bootp.set(mac, 28);
  d.setUint32(236, 0x63825363);
  bootp.set([53, 1, 1, 55, 4, 1, 3, 6, 26, 255], 240);
  const udpLen = 8 + bootp.length;
  const ipLen = 20 + udpLen;
  const f = new Uint8Array(14 + ipLen);
  const v = new DataView(f.buffer);
  f.set(BROADCAST, 0);
  f.set(mac, 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, ipLen);
  f[22] = 64; // ttl
  f[23] = 17; // UDP
  v.setUint32(30, 0xffffffff); // 0.0.0.0 → 255.255.255.255
  v.setUint16(24, ipChecksum(f, 14, 20));
  v.setUint16(34, 68);
  v.setUint16(36, 67);
  v.setUint16(38, udpLen);
  f.set(bootp, 42);
  return f;
}

/** An ARP request from mac/ip for `target`. */
export function arpRequest(mac: Uint8Array, ip: number[], target: number[]): Uint8Array {
  const f = new Uint8Array(42);
  const v = new DataView(f.buffer);
  f.set(BROADCAST, 0);
  f.set(mac, 6);
  v.setUint16(12, 0x0806);
  v.setUint16(14, 1);
  v.setUint16(16, 0x0800);
  f[18] = 6;
  f[19] = 4;
  v.setUint16(20, 1); // request
  f.set(mac, 22);
  f.set(ip, 28);
  f.set(target, 38);
  return f;
}

export interface DhcpAnswer {
  type: number;
  xid: number;
  yiaddr: string;
  router?: string;
  mtu?: number;
}

const dotted = (b: Uint8Array, o: number): string => Array.from(b.subarray(o, o + 4)).join('.');

/** The DHCP message in an Ethernet frame (IPv4, UDP to port 68), or undefined. */
export function parseDhcp(f: Uint8Array): DhcpAnswer | undefined {
  if (f.length < 14 + 20 + 8 + 240) return undefined;
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  if (v.getUint16(12) !== 0x0800 || f[23] !== 17) return undefined;
  const ihl = ((f[14] as number) & 0xf) * 4;
  const udp = 14 + ihl;
  if (v.getUint16(udp + 2) !== 68) return undefined;
  const b = udp + 8;
  if (v.getUint32(b + 236) !== 0x63825363) return undefined;
  const out: DhcpAnswer = { type: 0, xid: v.getUint32(b + 4), yiaddr: dotted(f, b + 16) };
  for (let o = b + 240; o + 1 < f.length; ) {
    const code = f[o] as number;
    if (code === 255) break;
    if (code === 0) {
      o++;
      continue;
    }
    const len = f[o + 1] as number;
    if (code === 53) out.type = f[o + 2] as number;
    if (code === 3 && len >= 4) out.router = dotted(f, o + 2);
    if (code === 26 && len === 2) out.mtu = v.getUint16(o + 2);
    o += 2 + len;
  }
  return out;
}

/** An ARP reply's sender IPv4 address and MAC, or undefined. */
export function parseArpReply(f: Uint8Array): { ip: string; mac: Uint8Array } | undefined {
  if (f.length < 42) return undefined;
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  if (v.getUint16(12) !== 0x0806 || v.getUint16(20) !== 2) return undefined;
  return { ip: dotted(f, 28), mac: f.slice(22, 28) };
}

/** A TCP segment from mac/src:sport to dstMac/dst:dport with `flags` (0x02 SYN), checksums right. */
export function tcpSegment(
  mac: Uint8Array,
  dstMac: Uint8Array,
  src: number[],
  dst: number[],
  sport: number,
  dport: number,
  flags: number,
): Uint8Array {
  const f = new Uint8Array(14 + 20 + 20);
  const v = new DataView(f.buffer);
  f.set(dstMac, 0);
  f.set(mac, 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, 40);
  v.setUint16(18, sport); // an id
  f[22] = 64;
  f[23] = 6;
  f.set(src, 26);
  f.set(dst, 30);
  v.setUint16(24, ipChecksum(f, 14, 20));
  v.setUint16(34, sport);
  v.setUint16(36, dport);
  v.setUint32(38, 0x1000_0000 + sport); // sequence number
  f[46] = 0x50;
  f[47] = flags;
  v.setUint16(48, 64240);
  // The checksum over the pseudo header (addresses, protocol, length) and the segment.
  const pseudo = new Uint8Array(12 + 20);
  pseudo.set(src, 0);
  pseudo.set(dst, 4);
  pseudo[9] = 6;
  pseudo[11] = 20;
  pseudo.set(f.subarray(34, 54), 12);
  v.setUint16(50, ipChecksum(pseudo, 0, pseudo.length));
  return f;
}

/** A TCP segment's addresses, ports and flags; undefined for anything else. */
export function parseTcp(f: Uint8Array): { src: string; sport: number; dport: number; flags: number } | undefined {
  if (f.length < 54 || f[12] !== 0x08 || f[13] !== 0x00 || f[23] !== 6) return undefined;
  const ihl = ((f[14] as number) & 15) * 4;
  const t = 14 + ihl;
  if (f.length < t + 14) return undefined;
  const v = new DataView(f.buffer, f.byteOffset);
  return { src: dotted(f, 26), sport: v.getUint16(t), dport: v.getUint16(t + 2), flags: f[t + 13] as number };
}

/** A TCP segment with its own sequence and acknowledgment numbers and a payload, checksums right. */
export function tcpPacket(p: {
  mac: Uint8Array;
  dstMac: Uint8Array;
  src: number[];
  dst: number[];
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  payload?: Uint8Array;
}): Uint8Array {
  const data = p.payload ?? new Uint8Array(0);
  const tcpLen = 20 + data.length;
  const f = new Uint8Array(14 + 20 + tcpLen);
  const v = new DataView(f.buffer);
  f.set(p.dstMac, 0);
  f.set(p.mac, 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, 20 + tcpLen);
  v.setUint16(18, p.sport);
  f[22] = 64;
  f[23] = 6;
  f.set(p.src, 26);
  f.set(p.dst, 30);
  v.setUint16(24, ipChecksum(f, 14, 20));
  v.setUint16(34, p.sport);
  v.setUint16(36, p.dport);
  v.setUint32(38, p.seq >>> 0);
  v.setUint32(42, p.ack >>> 0);
  f[46] = 0x50;
  f[47] = p.flags;
  v.setUint16(48, 64240);
  f.set(data, 54);
  // The checksum over the pseudo header and the segment, padded to an even length with a zero.
  const pseudo = new Uint8Array(12 + tcpLen + (tcpLen & 1));
  pseudo.set(p.src, 0);
  pseudo.set(p.dst, 4);
  pseudo[9] = 6;
  pseudo[10] = tcpLen >> 8;
  pseudo[11] = tcpLen & 0xff;
  pseudo.set(f.subarray(34, 34 + tcpLen), 12);
  v.setUint16(50, ipChecksum(pseudo, 0, pseudo.length));
  return f;
}

/** A TCP segment's fields, payload included; undefined for anything else. */
export function parseTcpFull(f: Uint8Array):
  | {
      src: string;
      dst: string;
      sport: number;
      dport: number;
      seq: number;
      ack: number;
      flags: number;
      payload: Uint8Array;
    }
  | undefined {
  if (f.length < 54 || f[12] !== 0x08 || f[13] !== 0x00 || f[23] !== 6) return undefined;
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  const ihl = ((f[14] as number) & 15) * 4;
  const t = 14 + ihl;
  const total = v.getUint16(16);
  if (f.length < t + 20 || total < ihl + 20 || 14 + total > f.length) return undefined;
  const doff = ((f[t + 12] as number) >> 4) * 4;
  return {
    src: dotted(f, 26),
    dst: dotted(f, 30),
    sport: v.getUint16(t),
    dport: v.getUint16(t + 2),
    seq: v.getUint32(t + 4),
    ack: v.getUint32(t + 8),
    flags: f[t + 13] as number,
    payload: f.slice(t + doff, 14 + total),
  };
}
