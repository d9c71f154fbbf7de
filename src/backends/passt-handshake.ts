/**
 * Completing the handshake of a connection a host port forward opens into the guest, which Debian 12's
 * passt (2023.03) leaves half done: it sends the guest a SYN, takes the guest's SYN+ACK and then sends
 * nothing until the host's client has sent data, its ACK riding on that data. A guest server that
 * speaks first (SMTP, FTP, MySQL, VNC, a greeting) waits in SYN_RECV for an ACK that never comes, so
 * its accept() never returns and the host's client never hears from it (issue 11; the lane test and
 * net-passt's namespace test show it with a real Linux stack).
 *
 * The fix on vireo's frame path: a SYN from passt to the guest is remembered (its addresses, ports,
 * sequence number and window scale); when the guest answers it with a SYN+ACK that acknowledges it,
 * vireo gives the guest the ACK passt would have sent (sequence passt's ISN + 1, acknowledging the
 * guest's ISN + 1, passt's window). passt's own segments later carry the same numbers, so a passt
 * that does send the ACK only makes the guest see one duplicate, which TCP ignores. Each SYN gets at
 * most one ACK; the table is bounded; a frame this code cannot read whole is left alone.
 */

const ETH_IPV4 = 0x0800;
const ETH_IPV6 = 0x86dd;
const PROTO_TCP = 6;
const TCP_SYN = 0x02;
const TCP_ACK = 0x10;
/** Connections being opened at once that are remembered (the oldest is forgotten beyond it). */
export const HANDSHAKE_MAX_PENDING = 256;

interface Segment {
  v6: boolean;
  /** Offsets in the frame. */
  ip: number;
  tcp: number;
  src: Uint8Array;
  dst: Uint8Array;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** The window scale option's shift, -1 when absent. */
  wscale: number;
}

const u16 = (f: Uint8Array, o: number): number => ((f[o] as number) << 8) | (f[o + 1] as number);
const u32 = (f: Uint8Array, o: number): number => ((u16(f, o) << 16) | u16(f, o + 2)) >>> 0;

/** A TCP segment without IPv4 options or fragments, or IPv6 extension headers; else undefined. */
function parseSegment(f: Uint8Array): Segment | undefined {
  if (f.length < 14) return undefined;
  const type = u16(f, 12);
  let tcp: number;
  let v6: boolean;
  if (type === ETH_IPV4) {
    if (f.length < 34 || f[14] !== 0x45 || f[23] !== PROTO_TCP) return undefined;
    if ((u16(f, 20) & 0x3fff) !== 0) return undefined; // a fragment (MF or an offset)
    tcp = 34;
    v6 = false;
  } else if (type === ETH_IPV6) {
    if (f.length < 54 || (f[14] as number) >> 4 !== 6 || f[20] !== PROTO_TCP) return undefined;
    tcp = 54;
    v6 = true;
  } else return undefined;
  if (f.length < tcp + 20) return undefined;
  const doff = ((f[tcp + 12] as number) >> 4) * 4;
  if (doff < 20 || f.length < tcp + doff) return undefined;
  let wscale = -1;
  for (let o = tcp + 20; o < tcp + doff; ) {
    const kind = f[o] as number;
    if (kind === 0) break;
    if (kind === 1) {
      o++;
      continue;
    }
    if (o + 1 >= tcp + doff) break;
    const len = f[o + 1] as number;
    if (len < 2 || o + len > tcp + doff) break;
    if (kind === 3 && len === 3) wscale = Math.min(f[o + 2] as number, 14);
    o += len;
  }
  return {
    v6,
    ip: 14,
    tcp,
    src: v6 ? f.subarray(22, 38) : f.subarray(26, 30),
    dst: v6 ? f.subarray(38, 54) : f.subarray(30, 34),
    sport: u16(f, tcp),
    dport: u16(f, tcp + 2),
    seq: u32(f, tcp + 4),
    ack: u32(f, tcp + 8),
    flags: f[tcp + 13] as number,
    window: u16(f, tcp + 14),
    wscale,
  };
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
/** One connection: the peer (passt's side) and the guest's end. */
const connKey = (peer: Uint8Array, peerPort: number, guest: Uint8Array, guestPort: number): string =>
  `${hex(peer)}:${peerPort}>${hex(guest)}:${guestPort}`;

/** The ones' complement sum of `b` (an odd length padded with a zero), folded to 16 bits. */
function sum16(b: Uint8Array, start = 0): number {
  let s = start;
  for (let i = 0; i + 1 < b.length; i += 2) s += ((b[i] as number) << 8) | (b[i + 1] as number);
  if (b.length & 1) s += (b[b.length - 1] as number) << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

interface PendingSyn {
  seq: number;
  window: number;
  wscale: number;
}

export class ForwardHandshake {
  private readonly pending = new Map<string, PendingSyn>();
  /** ACKs given (for counters and tests). */
  acks = 0;

  /** A frame from passt to the guest: a SYN (no ACK) is a connection a forward opens. */
  fromPasst(f: Uint8Array): void {
    if (f.length < 14 || (u16(f, 12) !== ETH_IPV4 && u16(f, 12) !== ETH_IPV6)) return;
    const s = parseSegment(f);
    if (s === undefined || (s.flags & (TCP_SYN | TCP_ACK)) !== TCP_SYN) return;
    const key = connKey(s.src, s.sport, s.dst, s.dport);
    this.pending.delete(key);
    if (this.pending.size >= HANDSHAKE_MAX_PENDING) {
      const oldest = this.pending.keys().next().value;
      if (oldest !== undefined) this.pending.delete(oldest);
    }
    this.pending.set(key, { seq: s.seq, window: s.window, wscale: s.wscale });
  }

  /**
   * A frame from the guest to passt: when it is the SYN+ACK answering a remembered SYN, the ACK to
   * give the guest (a new frame); else undefined.
   */
  fromGuest(f: Uint8Array): Uint8Array | undefined {
    if (this.pending.size === 0) return undefined;
    const s = parseSegment(f);
    if (s === undefined || (s.flags & (TCP_SYN | TCP_ACK)) !== (TCP_SYN | TCP_ACK)) return undefined;
    const key = connKey(s.dst, s.dport, s.src, s.sport);
    const syn = this.pending.get(key);
    if (syn === undefined || s.ack !== (syn.seq + 1) >>> 0) return undefined;
    this.pending.delete(key);
    this.acks++;
    // Scaling holds only when both ends offered it; passt's SYN window is then shifted by its scale.
    const window = s.wscale >= 0 && syn.wscale >= 0 ? syn.window >>> syn.wscale : syn.window;
    return buildAck(f, s, (syn.seq + 1) >>> 0, (s.seq + 1) >>> 0, Math.max(1, window));
  }
}

/** The ACK from the SYN+ACK's destination back to its source (MACs, addresses and ports swapped). */
function buildAck(f: Uint8Array, s: Segment, seq: number, ack: number, window: number): Uint8Array {
  const ipLen = s.v6 ? 40 : 20;
  const out = new Uint8Array(14 + ipLen + 20);
  out.set(f.subarray(6, 12), 0); // to the guest's MAC
  out.set(f.subarray(0, 6), 6); // from passt's
  out.set(f.subarray(12, 14), 12);
  const tcp = 14 + ipLen;
  if (s.v6) {
    out[14] = 0x60;
    out[18] = 0;
    out[19] = 20; // payload length
    out[20] = PROTO_TCP;
    out[21] = 64;
    out.set(s.dst, 22);
    out.set(s.src, 38);
  } else {
    out[14] = 0x45;
    out[16] = 0;
    out[17] = 40; // total length
    out[20] = 0x40; // don't fragment
    out[22] = 64;
    out[23] = PROTO_TCP;
    out.set(s.dst, 26);
    out.set(s.src, 30);
    const c = ~sum16(out.subarray(14, 34)) & 0xffff;
    out[24] = c >> 8;
    out[25] = c & 0xff;
  }
  const put16 = (o: number, v: number): void => {
    out[o] = (v >> 8) & 0xff;
    out[o + 1] = v & 0xff;
  };
  put16(tcp, s.dport);
  put16(tcp + 2, s.sport);
  put16(tcp + 4, seq >>> 16);
  put16(tcp + 6, seq & 0xffff);
  put16(tcp + 8, ack >>> 16);
  put16(tcp + 10, ack & 0xffff);
  out[tcp + 12] = 0x50;
  out[tcp + 13] = TCP_ACK;
  put16(tcp + 14, Math.min(window, 0xffff));
  // The checksum over the pseudo header (addresses, protocol, TCP length) and the header.
  let pseudo = sum16(s.dst) + sum16(s.src) + PROTO_TCP + 20;
  pseudo = sum16(out.subarray(tcp, tcp + 20), pseudo);
  put16(tcp + 16, ~pseudo & 0xffff);
  return out;
}
