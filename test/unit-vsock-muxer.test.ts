/**
 * The vsock host muxer alone (src/devices/virtio/vsock/muxer.ts), over a fake VsockHost and a fake
 * poller, with no queues and no guest memory: this test hands it guest headers and takes the packets
 * it has for the guest. Both directions of connection set-up, the RST answers, the host's CONNECT line,
 * socket interest while the driver has no RX buffers, limits and the request timeout.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { POLL_HUP, POLL_IN, POLL_OUT } from '../src/devices/virtio/device.js';
import {
  createVsockCounters,
  decodeHeader,
  VSOCK_MAX_CONNECTIONS,
  VSOCK_OP,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_TYPE_STREAM,
  type VsockCounters,
  type VsockHeader,
  VsockMuxer,
} from '../src/devices/virtio/vsock/index.js';
import { FakeHost, FakePoller, FakeStream } from './support/fake-vsock-host.js';

const CID = 3;
const UDS = '/tmp/vireo-test.vsock';
let host: FakeHost;
let poller: FakePoller;
let counters: VsockCounters;
let mux: VsockMuxer;
let rxReady: number;
let driver: boolean;

beforeEach(() => {
  host = new FakeHost();
  poller = new FakePoller();
  counters = createVsockCounters();
  rxReady = 0;
  driver = true;
  mux = new VsockMuxer(host, { udsPath: UDS, connectLineTimeoutMs: 10_000, requestTimeoutMs: 5_000 }, counters, {
    guard: (fn) => fn(),
    rxReady: () => rxReady++,
    driverReady: () => driver,
  });
  mux.attach(poller);
});

const gh = (op: number, o: Partial<VsockHeader> = {}): VsockHeader => ({
  srcCid: BigInt(CID),
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
/** Hands the muxer a guest packet with `data` as its payload. */
const send = (h: VsockHeader, data = Buffer.alloc(0)): void =>
  mux.guestPacket(h, CID, data.length, (len) => data.subarray(0, len));
/** Every packet the muxer has for the guest now: decoded headers and payloads. */
function take(room = 4096): { h: VsockHeader; data: string }[] {
  const out: { h: VsockHeader; data: string }[] = [];
  for (let p = mux.nextPacket(CID, room); p !== undefined; p = mux.nextPacket(CID, room))
    out.push({ h: decodeHeader(p.header), data: Buffer.from(p.payload).toString() });
  return out;
}
const opsOf = (ps: { h: VsockHeader }[]): number[] => ps.map((p) => p.h.op);

describe('guest-initiated connections', () => {
  test('a request to port P connects to udsPath_P and is answered from the host CID', () => {
    send(gh(VSOCK_OP.REQUEST));
    assert.deepEqual(host.connects, [`${UDS}_52`]);
    const [r] = take();
    assert.equal(r?.h.op, VSOCK_OP.RESPONSE);
    assert.deepEqual([r?.h.srcCid, r?.h.dstCid, r?.h.srcPort, r?.h.dstPort], [2n, BigInt(CID), 52, 1000]);
    assert.equal(mux.size, 1);
    assert.equal(counters.guestConnections, 1);
  });

  test('nobody listening: RST, refused, nothing kept', () => {
    host.next = Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
    send(gh(VSOCK_OP.REQUEST));
    assert.deepEqual(opsOf(take()), [VSOCK_OP.RST]);
    assert.equal(counters.refused, 1);
    assert.equal(mux.size, 0);
  });

  test('a connect in progress: watched for writability, answered when it completes or reset when it fails', () => {
    const ok = new FakeStream();
    host.next = { stream: ok, inProgress: true };
    send(gh(VSOCK_OP.REQUEST, { srcPort: 1 }));
    assert.equal(poller.interest.get(ok.fd), POLL_OUT);
    assert.deepEqual(take(), []);
    poller.fire(ok.fd, POLL_OUT);
    assert.deepEqual(opsOf(take()), [VSOCK_OP.RESPONSE]);
    assert.equal(poller.interest.get(ok.fd), POLL_IN, 'now read the peer');
    const bad = new FakeStream();
    bad.connectErr = 111;
    host.next = { stream: bad, inProgress: true };
    send(gh(VSOCK_OP.REQUEST, { srcPort: 2 }));
    poller.fire(bad.fd, POLL_OUT);
    assert.deepEqual(opsOf(take()), [VSOCK_OP.RST]);
    assert.equal(bad.closed, true);
    assert.equal(poller.handlers.has(bad.fd), false);
    assert.equal(mux.size, 1);
  });

  test('data both ways; the host peer readable only while the guest has credit and RX buffers', () => {
    send(gh(VSOCK_OP.REQUEST));
    take();
    const s = [...poller.handlers.keys()]
      .map((fd) => fd)
      .find((fd) => fd !== host.listener.fd && fd !== host.timers[0]?.fd);
    assert.ok(s !== undefined);
    send(gh(VSOCK_OP.RW, { len: 5 }), Buffer.from('hello'));
    assert.equal(counters.txBytes, 5);
    mux.stallRx();
    assert.equal(poller.interest.get(s), 0, 'no RX buffers: not read');
    assert.equal(counters.rxStalls, 1);
    mux.unstallRx();
    assert.equal(poller.interest.get(s), POLL_IN);
  });

  test('a guest RST ends the connection without an answer', () => {
    send(gh(VSOCK_OP.REQUEST));
    take();
    send(gh(VSOCK_OP.RST));
    assert.equal(mux.size, 0);
    assert.deepEqual(take(), []);
  });
});

describe('answers to bad or stray packets', () => {
  test('a packet for no connection is answered with RST (unknownConnection)', () => {
    send(gh(VSOCK_OP.RW, { len: 1 }), Buffer.from('x'));
    const [r] = take();
    assert.equal(r?.h.op, VSOCK_OP.RST);
    assert.deepEqual([r?.h.srcPort, r?.h.dstPort, r?.h.bufAlloc], [52, 1000, 0]);
    assert.equal(counters.unknownConnection, 1);
  });

  test('a malformed header ends its connection with RST; an RST with bad addresses is only counted', () => {
    send(gh(VSOCK_OP.REQUEST));
    take();
    send(gh(VSOCK_OP.SHUTDOWN, { flags: VSOCK_SHUTDOWN_BOTH | 4 }));
    assert.deepEqual(opsOf(take()), [VSOCK_OP.RST]);
    assert.equal(counters.errors, 1);
    assert.equal(mux.size, 0);
    send(gh(VSOCK_OP.RST, { srcCid: 9n }));
    assert.equal(counters.errors, 2);
    assert.deepEqual(take(), [], 'an RST is never answered');
  });

  test('RSTs queued while the driver has no buffers are bounded', () => {
    for (let i = 0; i < 1100; i++) send(gh(VSOCK_OP.RW, { srcPort: i, len: 0 }));
    assert.equal(counters.rstDropped, 1100 - 1024);
    assert.equal(take().length, 1024);
  });

  test('connections are limited: one past the limit is refused with RST', () => {
    for (let i = 0; i < VSOCK_MAX_CONNECTIONS; i++) send(gh(VSOCK_OP.REQUEST, { srcPort: i }));
    assert.equal(mux.size, VSOCK_MAX_CONNECTIONS);
    take(); // the responses
    send(gh(VSOCK_OP.REQUEST, { srcPort: 99999 }));
    assert.deepEqual(opsOf(take()), [VSOCK_OP.RST]);
    assert.equal(host.connects.length, VSOCK_MAX_CONNECTIONS);
    mux.dropAll();
    assert.equal(mux.size, 0);
  });
});

describe('host-initiated connections', () => {
  /** A host process connects to udsPath and writes `line`. */
  const hostConnects = (line: string): FakeStream => {
    const s = new FakeStream();
    s.incoming = Buffer.from(line);
    host.waiting.push(s);
    poller.fire(host.listener.fd, POLL_IN);
    assert.equal(poller.handlers.has(s.fd), true, 'watched for its CONNECT line');
    poller.fire(s.fd, POLL_IN);
    return s;
  };

  test('CONNECT <port>: a request to the guest; its response writes OK <local port>; bytes after the line stay data', () => {
    const s = hostConnects('connect 52\nearly');
    assert.equal(s.incoming.toString(), 'early', 'nothing past the newline consumed');
    const [req] = take();
    assert.equal(req?.h.op, VSOCK_OP.REQUEST);
    assert.equal(req?.h.dstPort, 52);
    const local = req?.h.srcPort ?? 0;
    assert.equal(local, 0x40000000, 'ephemeral ports from 2^30');
    assert.ok(rxReady > 0);
    send(gh(VSOCK_OP.RESPONSE, { srcPort: 52, dstPort: local }));
    assert.equal(s.sent.toString(), `OK ${local}\n`);
    assert.equal(counters.hostConnections, 1);
    poller.fire(s.fd, POLL_IN);
    const [d] = take();
    assert.deepEqual([d?.h.op, d?.data], [VSOCK_OP.RW, 'early']);
  });

  test('a malformed line, a line with no driver, or a hang-up before the line: the socket is closed', () => {
    const bad = hostConnects('hello there\n');
    assert.equal(bad.closed, true);
    driver = false;
    const early = hostConnects('CONNECT 1\n');
    assert.equal(early.closed, true);
    driver = true;
    const gone = new FakeStream();
    gone.eof = true;
    host.waiting.push(gone);
    poller.fire(host.listener.fd, POLL_IN);
    poller.fire(gone.fd, POLL_IN | POLL_HUP);
    assert.equal(gone.closed, true);
    assert.equal(counters.refused, 3);
    assert.equal(mux.size, 0);
  });

  test('a guest that does not answer in time: the host socket is closed and the guest gets RST', () => {
    mux = new VsockMuxer(host, { udsPath: UDS, connectLineTimeoutMs: 10_000, requestTimeoutMs: 0 }, counters, {
      guard: (fn) => fn(),
      rxReady: () => rxReady++,
      driverReady: () => true,
    });
    poller = new FakePoller();
    mux.attach(poller);
    const timer = host.timers.at(-1);
    assert.ok(timer !== undefined);
    const s = hostConnects('CONNECT 7\n');
    assert.ok(timer.ms > 0, 'armed for the request deadline');
    assert.deepEqual(opsOf(take()), [VSOCK_OP.REQUEST]);
    poller.fire(timer.fd, POLL_IN);
    assert.equal(s.closed, true);
    assert.equal(counters.refused, 1);
    assert.deepEqual(opsOf(take()), [VSOCK_OP.RST], 'the guest saw the request, so it is told');
    assert.equal(mux.size, 0);
  });

  test('detach stops watching the listener and closes the timer', () => {
    mux.dropAll();
    mux.detach();
    assert.equal(poller.handlers.size, 0);
    assert.equal(host.timers[0]?.closed, true);
  });
});
