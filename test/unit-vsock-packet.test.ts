/**
 * The vsock packet codec alone (src/devices/virtio/vsock/packet.ts): the 44-byte header layout of
 * virtio 1.2 §5.10.6 field by field, and the check of every field of a header from the guest.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  checkAddress,
  checkGuestHeader,
  decodeHeader,
  encodeHeader,
  hostHeader,
  VSOCK_HDR_SIZE,
  VSOCK_HOST_CID,
  VSOCK_MAX_PKT,
  VSOCK_OP,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_TYPE_STREAM,
  type VsockHeader,
} from '../src/devices/virtio/vsock/index.js';

const GUEST = 7;
const hdr = (o: Partial<VsockHeader> = {}): VsockHeader => ({
  srcCid: BigInt(GUEST),
  dstCid: BigInt(VSOCK_HOST_CID),
  srcPort: 1000,
  dstPort: 52,
  len: 0,
  type: VSOCK_TYPE_STREAM,
  op: VSOCK_OP.REQUEST,
  flags: 0,
  bufAlloc: 4096,
  fwdCnt: 0,
  ...o,
});

describe('header layout', () => {
  test('every field at its offset, little-endian', () => {
    const h: VsockHeader = {
      srcCid: 0x0102030405060708n,
      dstCid: 0x1112131415161718n,
      srcPort: 0x21222324,
      dstPort: 0x31323334,
      len: 0x41424344,
      type: 0x5152,
      op: 0x6162,
      flags: 0x71727374,
      bufAlloc: 0x81828384,
      fwdCnt: 0x91929394,
    };
    const b = encodeHeader(h);
    assert.equal(b.length, VSOCK_HDR_SIZE);
    const v = new DataView(b.buffer);
    assert.equal(v.getBigUint64(0, true), h.srcCid);
    assert.equal(v.getBigUint64(8, true), h.dstCid);
    assert.equal(v.getUint32(16, true), h.srcPort);
    assert.equal(v.getUint32(20, true), h.dstPort);
    assert.equal(v.getUint32(24, true), h.len);
    assert.equal(v.getUint16(28, true), h.type);
    assert.equal(v.getUint16(30, true), h.op);
    assert.equal(v.getUint32(32, true), h.flags);
    assert.equal(v.getUint32(36, true), h.bufAlloc);
    assert.equal(v.getUint32(40, true), h.fwdCnt);
    assert.deepEqual(decodeHeader(b), h);
  });

  test('decode reads at the view offset; a short buffer throws; 32-bit fields wrap on encode', () => {
    const big = new Uint8Array(100);
    encodeHeader(hdr({ srcPort: 9 }), big.subarray(10, 10 + VSOCK_HDR_SIZE));
    assert.equal(decodeHeader(big.subarray(10)).srcPort, 9);
    assert.throws(() => decodeHeader(new Uint8Array(VSOCK_HDR_SIZE - 1)), RangeError);
    const w = decodeHeader(encodeHeader(hdr({ fwdCnt: 2 ** 32 + 5, len: -1 })));
    assert.equal(w.fwdCnt, 5);
    assert.equal(w.len, 0xffffffff);
  });

  test('hostHeader: from the host CID to the guest, stream type', () => {
    const h = decodeHeader(hostHeader(GUEST, 52, 1000, { op: VSOCK_OP.RW, len: 3, flags: 0, bufAlloc: 9, fwdCnt: 4 }));
    assert.deepEqual(h, {
      srcCid: 2n,
      dstCid: BigInt(GUEST),
      srcPort: 52,
      dstPort: 1000,
      len: 3,
      type: VSOCK_TYPE_STREAM,
      op: VSOCK_OP.RW,
      flags: 0,
      bufAlloc: 9,
      fwdCnt: 4,
    });
  });
});

describe('guest header checks', () => {
  test('well-formed headers of every op pass', () => {
    for (const op of Object.values(VSOCK_OP)) {
      if (op === VSOCK_OP.INVALID) continue;
      assert.equal(checkGuestHeader(hdr({ op }), GUEST, 0), undefined, `op ${op}`);
    }
    assert.equal(
      checkGuestHeader(hdr({ op: VSOCK_OP.RW, len: 100 }), GUEST, 100),
      undefined,
      'payload filling the chain',
    );
    assert.equal(checkGuestHeader(hdr({ op: VSOCK_OP.SHUTDOWN, flags: VSOCK_SHUTDOWN_BOTH }), GUEST, 0), undefined);
  });

  test('each bad field is named', () => {
    const cases: [Partial<VsockHeader>, number, string][] = [
      [{ srcCid: BigInt(GUEST + 1) }, 0, 'VSOCK_BAD_SRC_CID'],
      [{ srcCid: 2n }, 0, 'VSOCK_BAD_SRC_CID'],
      [{ dstCid: BigInt(GUEST) }, 0, 'VSOCK_BAD_DST_CID'],
      [{ type: 2 }, 0, 'VSOCK_BAD_TYPE'],
      [{ op: VSOCK_OP.INVALID }, 0, 'VSOCK_BAD_OP'],
      [{ op: VSOCK_OP.CREDIT_REQUEST + 1 }, 0, 'VSOCK_BAD_OP'],
      [{ op: VSOCK_OP.RW, len: VSOCK_MAX_PKT + 1 }, VSOCK_MAX_PKT + 8, 'VSOCK_LEN_OVER_MAX'],
      [{ op: VSOCK_OP.RW, len: 101 }, 100, 'VSOCK_LEN_OVER_CHAIN'],
      [{ op: VSOCK_OP.CREDIT_UPDATE, len: 1 }, 10, 'VSOCK_PAYLOAD_ON_CONTROL'],
      [{ op: VSOCK_OP.SHUTDOWN, flags: 4 }, 0, 'VSOCK_BAD_SHUTDOWN_FLAGS'],
    ];
    for (const [o, room, fault] of cases)
      assert.equal(
        checkGuestHeader(hdr(o), GUEST, room),
        fault,
        JSON.stringify(o, (_, v) => (typeof v === 'bigint' ? `${v}` : v)),
      );
  });

  test('an RST is checked for its addresses only', () => {
    assert.equal(checkAddress(hdr({ op: VSOCK_OP.RST, type: 9, len: 5 }), GUEST), undefined);
    assert.equal(checkAddress(hdr({ op: VSOCK_OP.RST, srcCid: 3n }), GUEST), 'VSOCK_BAD_SRC_CID');
    assert.equal(checkAddress(hdr({ op: VSOCK_OP.RST, dstCid: 1n }), GUEST), 'VSOCK_BAD_DST_CID');
  });
});
