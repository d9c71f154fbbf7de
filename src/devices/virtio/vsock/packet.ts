/**
 * virtio-vsock packets (virtio 1.2 §5.10.6): the 44-byte little-endian header, its constants, and the
 * checks every header from the guest passes before anything acts on it. The guest is the attacker: a
 * header is only numbers here; checkGuestHeader() says which field is wrong, and the muxer answers RST.
 */

export const VSOCK_HOST_CID = 2;
/** CIDs a guest may not have: 0 (hypervisor), 1 (local), 2 (host), and VMADDR_CID_ANY. */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xfffffffe;
export const VSOCK_HDR_SIZE = 44;
export const VSOCK_TYPE_STREAM = 1;
export const VSOCK_OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;
export const VSOCK_SHUTDOWN_RCV = 1;
export const VSOCK_SHUTDOWN_SEND = 2;
export const VSOCK_SHUTDOWN_BOTH = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
/** The event id on the event queue after a snapshot restore or migration (§5.10.6.6). */
export const VSOCK_EVENT_TRANSPORT_RESET = 0;
/** The largest payload one packet may carry either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const VSOCK_MAX_PKT = 64 * 1024;

export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/** Reads a header from the first VSOCK_HDR_SIZE bytes of `b` (RangeError when `b` is shorter). */
export function decodeHeader(b: Uint8Array): VsockHeader {
  const v = new DataView(b.buffer, b.byteOffset, VSOCK_HDR_SIZE);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

/** Writes a header into `out` (a fresh buffer by default); 32-bit fields are taken modulo 2^32. */
export function encodeHeader(h: VsockHeader, out = new Uint8Array(VSOCK_HDR_SIZE)): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset, VSOCK_HDR_SIZE);
  v.setBigUint64(0, h.srcCid, true);
  v.setBigUint64(8, h.dstCid, true);
  v.setUint32(16, h.srcPort >>> 0, true);
  v.setUint32(20, h.dstPort >>> 0, true);
  v.setUint32(24, h.len >>> 0, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags >>> 0, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
  return out;
}

/** The fields of a packet from the host that vary; the rest (CIDs, type) are fixed for a device. */
export interface HostPacket {
  op: number;
  len: number;
  flags: number;
  /** The credit fields: 0 on a packet for no live connection (an RST). */
  bufAlloc: number;
  fwdCnt: number;
}

/** The header of a packet from the host (CID 2, port `localPort`) to the guest's `peerPort`. */
export function hostHeader(
  guestCid: number,
  localPort: number,
  peerPort: number,
  p: HostPacket,
  out?: Uint8Array<ArrayBuffer>,
): Uint8Array {
  return encodeHeader(
    {
      srcCid: BigInt(VSOCK_HOST_CID),
      dstCid: BigInt(guestCid),
      srcPort: localPort,
      dstPort: peerPort,
      len: p.len,
      type: VSOCK_TYPE_STREAM,
      op: p.op,
      flags: p.flags,
      bufAlloc: p.bufAlloc,
      fwdCnt: p.fwdCnt,
    },
    out,
  );
}

/** Why a header from the guest is refused. */
export type VsockHeaderFault =
  | 'VSOCK_BAD_SRC_CID'
  | 'VSOCK_BAD_DST_CID'
  | 'VSOCK_BAD_TYPE'
  | 'VSOCK_BAD_OP'
  | 'VSOCK_LEN_OVER_MAX'
  | 'VSOCK_LEN_OVER_CHAIN'
  | 'VSOCK_PAYLOAD_ON_CONTROL'
  | 'VSOCK_BAD_SHUTDOWN_FLAGS';

/** Whether the header is from the guest's own CID to the host: all an RST is checked for (it is never answered). */
export function checkAddress(h: VsockHeader, guestCid: number): VsockHeaderFault | undefined {
  if (h.srcCid !== BigInt(guestCid)) return 'VSOCK_BAD_SRC_CID';
  if (h.dstCid !== BigInt(VSOCK_HOST_CID)) return 'VSOCK_BAD_DST_CID';
  return undefined;
}

/**
 * Checks every field of a header from the guest that the device acts on; `payloadRoom` is what the
 * chain holds after the header. buf_alloc and fwd_cnt are not checked here: any value only shrinks
 * the guest's own credit (see VsockConnection.credit). Flags matter only on SHUTDOWN.
 */
export function checkGuestHeader(h: VsockHeader, guestCid: number, payloadRoom: number): VsockHeaderFault | undefined {
  const a = checkAddress(h, guestCid);
  if (a !== undefined) return a;
  if (h.type !== VSOCK_TYPE_STREAM) return 'VSOCK_BAD_TYPE';
  if (h.op === VSOCK_OP.INVALID || h.op > VSOCK_OP.CREDIT_REQUEST) return 'VSOCK_BAD_OP';
  if (h.len > VSOCK_MAX_PKT) return 'VSOCK_LEN_OVER_MAX';
  if (h.len > payloadRoom) return 'VSOCK_LEN_OVER_CHAIN';
  if (h.op !== VSOCK_OP.RW && h.len !== 0) return 'VSOCK_PAYLOAD_ON_CONTROL';
  if (h.op === VSOCK_OP.SHUTDOWN && (h.flags & ~VSOCK_SHUTDOWN_BOTH) !== 0) return 'VSOCK_BAD_SHUTDOWN_FLAGS';
  return undefined;
}
