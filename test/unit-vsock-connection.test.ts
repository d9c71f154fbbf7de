/**
 * One vsock connection alone (src/devices/virtio/vsock/connection.ts), with a fake Unix socket and a
 * fake owner: credit both ways (§5.10.6.3), the order of the packets it owes the guest, shutdown in
 * each direction, and the RST that ends it.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { POLL_IN, POLL_OUT } from '../src/devices/virtio/device.js';
import {
  type ConnectionOwner,
  type ConnState,
  createVsockCounters,
  type HostPacket,
  VSOCK_BUF_ALLOC,
  VSOCK_MAX_PKT,
  VSOCK_OP,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_SHUTDOWN_RCV,
  VSOCK_SHUTDOWN_SEND,
  VSOCK_TYPE_STREAM,
  VsockConnection,
  type VsockHeader,
} from '../src/devices/virtio/vsock/index.js';
import { FakeStream } from './support/fake-vsock-host.js';

/** The connection, its Unix socket, and what it told its owner. */
interface Rig {
  c: VsockConnection;
  s: FakeStream;
  o: { counters: ReturnType<typeof createVsockCounters>; unwatched: number; endings: boolean[] };
}
function rig(state: ConnState = 'established', hostInitiated = false, peerBufAlloc = 1 << 20): Rig {
  const s = new FakeStream();
  const o = { counters: createVsockCounters(), unwatched: 0, endings: [] as boolean[] };
  const own: ConnectionOwner = {
    counters: o.counters,
    unwatch: (c) => {
      o.unwatched++;
      c.events = -1;
    },
    ended: (_c, rst) => o.endings.push(rst),
  };
  const c = new VsockConnection(52, 1000, hostInitiated, state, s, own);
  c.peerBufAlloc = peerBufAlloc;
  c.events = 0;
  return { c, s, o };
}

const gh = (op: number, o: Partial<VsockHeader> = {}): VsockHeader => ({
  srcCid: 3n,
  dstCid: 2n,
  srcPort: 1000,
  dstPort: 52,
  len: 0,
  type: VSOCK_TYPE_STREAM,
  op,
  flags: 0,
  bufAlloc: 1 << 20,
  fwdCnt: 0,
  ...o,
});
const buf = new Uint8Array(VSOCK_MAX_PKT);
/** Every packet the connection owes now, as (op, len, flags) with the payloads. */
function drain(c: VsockConnection, room = VSOCK_MAX_PKT): { p: HostPacket; data: string }[] {
  const out: { p: HostPacket; data: string }[] = [];
  for (let i = 0; i < 100; i++) {
    const p = c.nextPacket(room, buf);
    if (p === undefined) return out;
    out.push({ p, data: p.op === VSOCK_OP.RW ? Buffer.from(buf.subarray(0, p.len)).toString() : '' });
    if (p.op === VSOCK_OP.RST) return out;
  }
  throw new Error('the connection never ran dry');
}
const ops = (ps: { p: HostPacket }[]): number[] => ps.map((x) => x.p.op);

describe('credit', () => {
  test('the guest credit is buf_alloc minus what is in flight; a fwd_cnt ahead of tx_cnt reads as none', () => {
    const { c } = rig('established', false, 1000);
    assert.equal(c.credit(), 1000);
    c.txCnt = 600;
    c.peerFwdCnt = 100;
    assert.equal(c.credit(), 500);
    c.peerFwdCnt = 601; // the guest claims more forwarded than was sent
    assert.equal(c.credit(), 0);
    c.txCnt = 2 ** 32 + 10; // tx_cnt wraps in 32 bits
    c.peerFwdCnt = 5;
    assert.equal(c.credit(), 995);
  });

  test('data to the guest never exceeds its credit, the room, or one packet', () => {
    const { c, s, o } = rig('established', false, 10);
    s.incoming = Buffer.from('abcdefghijklmnop');
    c.readable = true;
    const [first] = drain(c, 100);
    assert.equal(first?.p.len, 10);
    assert.equal(first?.data, 'abcdefghij');
    assert.equal(c.credit(), 0);
    assert.equal(c.wantsRx(), false, 'no credit: nothing owed');
    assert.equal(c.interest(false) & POLL_IN, 0, 'and readability not watched');
    c.peerFwdCnt = 10; // the guest read it all
    assert.deepEqual(
      drain(c, 4).map((x) => x.data),
      ['klmn', 'op'],
    );
    assert.equal(c.readable, false, 'the socket ran dry: watch it again');
    assert.equal(o.counters.rxBytes, 16);
    assert.equal(c.txCnt, 16);
  });

  test('guest data beyond the advertised buffer is refused; the rest is credited back once written', () => {
    const { c, s } = rig();
    s.room = 0; // the Unix peer reads nothing yet
    const data = new Uint8Array(VSOCK_MAX_PKT);
    for (let sent = 0; sent < VSOCK_BUF_ALLOC; sent += VSOCK_MAX_PKT)
      assert.equal(
        c.guestPacket(gh(VSOCK_OP.RW, { len: VSOCK_MAX_PKT }), () => data),
        'ok',
      );
    assert.equal(c.outBytes, VSOCK_BUF_ALLOC);
    assert.equal(c.interest(false) & POLL_OUT, POLL_OUT, 'waiting for the peer to take it');
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.RW, { len: 1 }), () => data.subarray(0, 1)),
      'refuse',
    );
    s.room = VSOCK_BUF_ALLOC;
    c.flushOut();
    assert.equal(c.fwdCnt, VSOCK_BUF_ALLOC);
    assert.equal(c.sendCredit, true, 'a quarter of the buffer freed: tell the guest');
    const [p] = drain(c);
    assert.equal(p?.p.op, VSOCK_OP.CREDIT_UPDATE);
    assert.equal(p?.p.fwdCnt, VSOCK_BUF_ALLOC);
    assert.equal(p?.p.bufAlloc, VSOCK_BUF_ALLOC);
  });

  test('a credit request is answered; data going out carries the credit instead', () => {
    const { c, s } = rig();
    c.guestPacket(gh(VSOCK_OP.CREDIT_REQUEST), () => assert.fail('no payload'));
    s.incoming = Buffer.from('x');
    c.readable = true;
    assert.deepEqual(ops(drain(c)), [VSOCK_OP.RW]);
    assert.equal(c.sendCredit, false);
  });
});

describe('packet order and the end of a connection', () => {
  test('request, then response, data, credit, shutdown, RST', () => {
    const { c, s } = rig('established', true);
    c.sendRequest = true;
    c.sendResponse = true;
    c.sendCredit = true;
    c.sendShutdown = VSOCK_SHUTDOWN_SEND;
    c.sendRst = true;
    s.incoming = Buffer.from('hi');
    c.readable = true;
    const got = drain(c);
    assert.deepEqual(ops(got), [VSOCK_OP.REQUEST, VSOCK_OP.RESPONSE, VSOCK_OP.RW, VSOCK_OP.SHUTDOWN, VSOCK_OP.RST]);
    assert.equal(c.requested, true);
    assert.equal(got[3]?.p.flags, VSOCK_SHUTDOWN_SEND);
    assert.deepEqual([got[4]?.p.bufAlloc, got[4]?.p.fwdCnt], [0, 0], 'an RST carries no credit');
  });

  test('host end of stream: SHUTDOWN(SEND) to the guest; once the guest is done too, RST', () => {
    const { c, s, o } = rig();
    s.eof = true;
    c.readable = true;
    const [p] = drain(c);
    assert.equal(p?.p.op, VSOCK_OP.SHUTDOWN);
    assert.equal(p?.p.flags, VSOCK_SHUTDOWN_SEND);
    assert.equal(c.hostEof, true);
    c.advance();
    assert.equal(c.sendRst, false, 'the guest may still send');
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.SHUTDOWN, { flags: VSOCK_SHUTDOWN_SEND }), () => new Uint8Array(0)),
      'ok',
    );
    c.advance();
    assert.equal(s.writeShut, true, 'the peer reads end of stream');
    assert.equal(c.sendRst, true);
    assert.equal(s.closed, true);
    assert.equal(o.unwatched, 1);
    assert.deepEqual(o.endings, [true]);
    assert.deepEqual(ops(drain(c)), [VSOCK_OP.RST]);
  });

  test('guest SHUTDOWN both: pending data is written first, then the socket closes and RST is owed', () => {
    const { c, s, o } = rig();
    s.room = 2;
    c.guestPacket(gh(VSOCK_OP.RW, { len: 4 }), () => Buffer.from('data'));
    c.guestPacket(gh(VSOCK_OP.SHUTDOWN, { flags: VSOCK_SHUTDOWN_BOTH }), () => new Uint8Array(0));
    c.advance();
    assert.equal(c.sendRst, false, 'two bytes still unsent');
    assert.equal(c.canReadHost(), false, 'the guest takes no more');
    s.room = 10;
    c.flushOut();
    c.advance();
    assert.equal(s.sent.toString(), 'data');
    assert.deepEqual(o.endings, [true]);
    assert.equal(c.guestShut & VSOCK_SHUTDOWN_RCV, VSOCK_SHUTDOWN_RCV);
  });

  test('the peer gone (HUP) after its last bytes: SHUTDOWN both, closing, then RST on the guest shutdown', () => {
    const { c, s, o } = rig();
    s.incoming = Buffer.from('bye');
    s.eof = true;
    c.hostGone = true;
    c.readable = true;
    const got = drain(c);
    assert.deepEqual(ops(got), [VSOCK_OP.RW, VSOCK_OP.SHUTDOWN]);
    assert.equal(got[1]?.p.flags, VSOCK_SHUTDOWN_BOTH);
    c.advance();
    assert.equal(c.state, 'closing');
    assert.equal(s.closed, true);
    // Entering 'closing' owes SHUTDOWN both once more (as vsock.ts always did; the guest takes repeats).
    assert.deepEqual(ops(drain(c)), [VSOCK_OP.SHUTDOWN]);
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.RW, { len: 3 }), () => Buffer.from('abc')),
      'ok',
    );
    assert.equal(c.fwdCnt, 3, 'data for a gone peer is dropped and credited');
    c.guestPacket(gh(VSOCK_OP.SHUTDOWN, { flags: VSOCK_SHUTDOWN_BOTH }), () => new Uint8Array(0));
    c.advance();
    assert.deepEqual(o.endings, [true]);
  });

  test('a broken pipe resets the connection; a host-initiated one the guest never heard of just ends', () => {
    const a = rig();
    a.s.fail = Object.assign(new Error('EPIPE'), { code: 'EPIPE' });
    a.c.guestPacket(gh(VSOCK_OP.RW, { len: 1 }), () => Buffer.from('x'));
    assert.equal(a.o.counters.hostErrors, 1);
    assert.deepEqual(a.o.endings, [true]);
    assert.equal(a.c.sendRst, true);
    const b = rig('requesting', true);
    b.c.sendRequest = true;
    b.c.finish();
    assert.deepEqual(b.o.endings, [false], 'no RST for a request never sent');
    assert.equal(b.c.wantsRx(), false);
  });
});

describe('the handshake', () => {
  test('host-initiated: the response is accepted only after our request; OK <port> goes to the peer first', () => {
    const { c, s, o } = rig('requesting', true);
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.RESPONSE), () => new Uint8Array(0)),
      'refuse',
      'before the request',
    );
    c.sendRequest = true;
    c.deadline = 123;
    drain(c);
    c.guestPacket(gh(VSOCK_OP.RW, { len: 0 }), () => new Uint8Array(0));
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.RESPONSE), () => new Uint8Array(0)),
      'answered',
    );
    assert.equal(c.state, 'established');
    assert.equal(c.deadline, 0);
    assert.equal(s.sent.toString(), 'OK 52\n');
    assert.equal(o.counters.hostConnections, 1);
    c.guestPacket(gh(VSOCK_OP.RW, { len: 2 }), () => Buffer.from('yo'));
    assert.equal(s.sent.toString(), 'OK 52\nyo');
    assert.equal(c.fwdCnt, 2, 'the OK line is not credit');
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.REQUEST), () => new Uint8Array(0)),
      'refuse',
      'a second request',
    );
  });

  test('guest-initiated: connected() answers with RESPONSE; data before it is refused', () => {
    const { c, o } = rig('connecting');
    assert.equal(c.interest(false), POLL_OUT, 'waiting for the connect');
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.RW, { len: 1 }), () => Buffer.from('x')),
      'refuse',
    );
    assert.equal(
      c.guestPacket(gh(VSOCK_OP.SHUTDOWN, { flags: 1 }), () => new Uint8Array(0)),
      'refuse',
    );
    c.connected();
    assert.deepEqual(ops(drain(c)), [VSOCK_OP.RESPONSE]);
    assert.equal(o.counters.guestConnections, 1);
    assert.equal(c.interest(false), POLL_IN, 'established: read the peer while the guest has credit');
    assert.equal(c.interest(true), 0, 'not while the driver has no RX buffers');
  });

  test('the guest credit fields are taken from every packet', () => {
    const { c } = rig();
    c.guestPacket(gh(VSOCK_OP.CREDIT_UPDATE, { bufAlloc: 77, fwdCnt: 5 }), () => new Uint8Array(0));
    assert.deepEqual([c.peerBufAlloc, c.peerFwdCnt], [77, 5]);
  });
});
