/**
 * The user-mode network's pieces that need no passt: the framing codec (frames cut at every byte
 * boundary, many per receive, hostile lengths refused without allocating), the pending tail of a
 * partial write, `--net user` parsing, passt's forward arguments, the device's link status (status
 * field and configuration interrupt as the backend's link goes and comes) and PasstNet against a
 * stand-in for passt on a real Unix socket (both directions, a partial frame, a bad length or the end
 * of the stream dropping the connection and reporting why).
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { hostAddresses } from '../src/backends/egress-address.js';
import { newEgressChannel } from '../src/backends/egress-channel.js';
import { PASST_LOST, PASST_STATE, PASST_STATE_SLOTS, PasstNet, passtSocketPath } from '../src/backends/passt.js';
import {
  ETH_HEADER_LEN,
  FrameReader,
  OutBuffer,
  PASST_MAX_FRAME,
  PASST_RX_BUFFER,
  PASST_SEND_BATCH,
  putLength,
} from '../src/backends/passt-frames.js';
import { ForwardHandshake, HANDSHAKE_MAX_PENDING } from '../src/backends/passt-handshake.js';
import { forwardArg } from '../src/backends/passt-process.js';
import { PasstError } from '../src/common/errors.js';
import { parseHostForward, parseNet, validateNets } from '../src/config/net.js';
import { bit } from '../src/devices/virtio/device.js';
import { VIRTIO_NET_F, VIRTIO_NET_HDR_LEN, VirtioNet } from '../src/devices/virtio/net.js';
import * as sys from '../src/os/sys.js';
import { FakePoller, FakeTap } from './support/fake-net.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const framed = (frames: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(frames.reduce((n, f) => n + 4 + f.length, 0));
  let o = 0;
  for (const f of frames) {
    putLength(out, o, f.length);
    out.set(f, o + 4);
    o += 4 + f.length;
  }
  return out;
};

/** A frame of `len` bytes of a pattern, its EtherType ARP's (the egress policy passes ARP unread). */
const ethFrame = (len: number, seed: number): Uint8Array => {
  const f = Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);
  if (len >= 14) f.set([0x08, 0x06], 12);
  return f;
};

/** Feeds `stream` to a reader in the given chunk sizes; returns every frame it cut. */
function cut(reader: FrameReader, stream: Uint8Array, chunks: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let o = 0;
  let k = 0;
  while (o < stream.length) {
    for (let f = reader.next(); f !== undefined; f = reader.next()) out.push(Uint8Array.from(f));
    const space = reader.space();
    assert.ok(space.length > 0, 'the buffer always has room while no whole frame waits');
    const n = Math.min(space.length, stream.length - o, Math.max(1, chunks[k++ % chunks.length] ?? 1));
    space.set(stream.subarray(o, o + n));
    reader.commit(n);
    o += n;
  }
  for (let f = reader.next(); f !== undefined; f = reader.next()) out.push(Uint8Array.from(f));
  return out;
}

test('framing: frames cut intact however the stream is split, many per receive', () => {
  const frames = [ethFrame(14, 1), ethFrame(60, 2), ethFrame(1514, 3), ethFrame(PASST_MAX_FRAME, 4), ethFrame(100, 5)];
  const stream = framed(frames);
  for (const chunks of [[1], [3], [4], [5, 7, 11], [PASST_RX_BUFFER], [65536, 1]]) {
    const got = cut(new FrameReader(), stream, chunks);
    assert.equal(got.length, frames.length, `chunks ${chunks}`);
    assert.deepEqual(got, frames);
  }
  // One receive with several whole frames: all of them come out before the next receive.
  const r = new FrameReader();
  const small = framed([ethFrame(60, 1), ethFrame(60, 2), ethFrame(60, 3)]);
  r.space().set(small);
  r.commit(small.length);
  assert.ok(r.hasFrame());
  assert.equal(r.next()?.length, 60);
  assert.equal(r.next()?.length, 60);
  assert.equal(r.next()?.length, 60);
  assert.equal(r.next(), undefined);
  assert.equal(r.hasFrame(), false);
});

test('framing: property: any frames, any split, come out as they went in', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: ETH_HEADER_LEN, max: 4000 }), { minLength: 1, maxLength: 40 }),
      fc.array(fc.integer({ min: 1, max: 9000 }), { minLength: 1, maxLength: 20 }),
      (lens, chunks) => {
        const frames = lens.map((l, i) => ethFrame(l, i));
        const got = cut(new FrameReader(PASST_MAX_FRAME), framed(frames), chunks);
        assert.deepEqual(got, frames);
      },
    ),
    { numRuns: 150 },
  );
});

test('framing: a hostile or broken length drops the connection, never an allocation', () => {
  for (const len of [0, 1, ETH_HEADER_LEN - 1, PASST_MAX_FRAME + 1, 0x7fffffff, 0xffffffff]) {
    const r = new FrameReader();
    const s = r.space();
    const cap = s.length;
    putLength(s, 0, len);
    r.commit(4);
    assert.throws(
      () => r.next(),
      (e: unknown) =>
        e instanceof PasstError && e.code === 'VIREO_ERR_PASST_FRAME' && /dropping the connection/.test(e.message),
      `length ${len}`,
    );
    assert.throws(() => r.hasFrame(), PasstError);
    r.reset();
    assert.equal(r.space().length, cap, 'the buffer is the same fixed size');
  }
  // Property: any bytes at all either come out as frames of legal lengths or are refused; the
  // reader's buffer never changes size.
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 20000 }),
      fc.integer({ min: 1, max: 5000 }),
      (bytes, chunk) => {
        const r = new FrameReader();
        try {
          for (const f of cut(r, bytes, [chunk])) assert.ok(f.length >= ETH_HEADER_LEN && f.length <= PASST_MAX_FRAME);
        } catch (e) {
          assert.ok(e instanceof PasstError, String(e));
        }
        r.reset();
        assert.equal(r.space().length, PASST_RX_BUFFER);
      },
    ),
    { numRuns: 500 },
  );
  assert.throws(() => new FrameReader(PASST_MAX_FRAME, 1000), RangeError);
});

test('framing: frames gathered for one send; what a full socket leaves is sent first, in order', () => {
  const out = new OutBuffer();
  assert.ok(out.empty);
  const a = ethFrame(100, 1);
  const b = ethFrame(60, 2);
  out.append([a.subarray(0, 10), a.subarray(10)], 100);
  out.append([b], 60);
  assert.throws(() => out.append([b], 61), RangeError, 'parts that do not add up');
  assert.equal(out.pending, 4 + 100 + 4 + 60);
  const sent: number[] = [];
  // A socket that takes 7 bytes, then is full.
  let room = 7;
  const full = (x: Uint8Array): number => {
    if (room === 0) return -1;
    const n = Math.min(room, x.length);
    room -= n;
    sent.push(...x.subarray(0, n));
    return n;
  };
  assert.equal(out.flush(full), false);
  assert.equal(out.pending, 168 - 7);
  assert.ok(
    out.flush((x) => {
      sent.push(...x);
      return x.length;
    }),
  );
  assert.ok(out.empty);
  assert.deepEqual(Uint8Array.from(sent), framed([a, b]));
  // Room for the largest frame, then not for another: the caller drops it.
  const big = new OutBuffer(4 + PASST_MAX_FRAME);
  assert.ok(big.fits(PASST_MAX_FRAME));
  big.append([new Uint8Array(PASST_MAX_FRAME)], PASST_MAX_FRAME);
  assert.equal(big.fits(ETH_HEADER_LEN), false);
  assert.throws(() => big.append([new Uint8Array(14)], 14), RangeError);
  assert.throws(() => new OutBuffer(100), RangeError);
});

/**
 * What OutBuffer hands to `send`, checked against the frames' places in the stream: each send starts
 * at a frame's start and holds one frame or small whole frames (PASST_SEND_BATCH in all), or it is the
 * rest of the frame the socket cut, alone. passt 2023.03 loses frames and the stream's framing when a
 * length prefix is cut or a cut frame's rest comes in two pieces (see OutBuffer); QEMU writes this way.
 */
function checkSends(lens: number[], takes: number[]): void {
  const out = new OutBuffer();
  const starts: number[] = [];
  let at = 0;
  for (const [i, len] of lens.entries()) {
    starts.push(at);
    at += 4 + len;
    assert.ok(out.fits(len));
    out.append([ethFrame(len, i)], len);
  }
  const ends = new Set([...starts.slice(1), at]);
  const startSet = new Set(starts);
  const sent: Uint8Array[] = [];
  let pos = 0;
  let k = 0;
  const send = (b: Uint8Array): number => {
    const end = pos + b.length;
    if (startSet.has(pos)) {
      assert.ok(ends.has(end), `a send from a frame's start (${pos}) ends at a frame's end, not ${end}`);
      const frames = starts.filter((x) => x >= pos && x < end).length;
      assert.ok(frames === 1 || b.length <= PASST_SEND_BATCH, `${frames} frames in ${b.length} bytes`);
    } else {
      const frameEnd = Math.min(...[...ends].filter((e) => e > pos));
      assert.equal(end, frameEnd, `the rest of a cut frame (from ${pos}) goes alone`);
    }
    const take = takes[k++ % takes.length] as number;
    if (take < 0) return -1;
    const n = Math.min(take, b.length);
    if (n === 0) return -1;
    sent.push(Uint8Array.from(b.subarray(0, n)));
    pos += n;
    return n;
  };
  for (let round = 0; !out.flush(send); round++) assert.ok(round < 1_000_000, 'flush makes progress');
  assert.ok(out.empty);
  assert.ok(
    Buffer.concat(sent).equals(framed(lens.map((len, i) => ethFrame(len, i)))),
    'the stream, whole and in order',
  );
}

test('framing: every send is frame-aligned, as passt 2023.03 needs; the stream is whole and in order', () => {
  // The lane's case: 64 KiB frames to a socket that takes one ~36 KiB skb at a time.
  checkSends([65534, 65534, 66, 66, 65534], [36544, -1]);
  // ACKs: many small frames go in one send, up to PASST_SEND_BATCH.
  checkSends(
    Array.from({ length: 600 }, () => 66),
    [100_000],
  );
  // A socket that takes a few bytes (a cut inside a length prefix) and then is full.
  checkSends([100, 60, 14, 3000], [1, -1, 2, -1, 7, 5000]);
  fc.assert(
    fc.property(
      fc.array(fc.oneof(fc.integer({ min: 14, max: 200 }), fc.integer({ min: 14, max: PASST_MAX_FRAME })), {
        minLength: 1,
        maxLength: 12,
      }),
      fc.array(fc.oneof(fc.constant(-1), fc.integer({ min: 1, max: 80_000 })), { minLength: 1, maxLength: 8 }),
      (lens, takes) => {
        if (lens.reduce((n, l) => n + 4 + l, 0) > 256 * 1024) return;
        checkSends(lens, takes.some((t) => t > 0) ? takes : [...takes, 4096]);
      },
    ),
    { numRuns: 150 },
  );
});

test('config: --net user with hostfwd, mac and id; bad forwards refused with one line', () => {
  assert.deepEqual(parseNet('user', 1), { id: 'net1', kind: 'user' });
  assert.deepEqual(
    parseNet('user,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp::5353-:53,mac=52:54:00:00:00:09,id=u', 0),
    {
      id: 'u',
      kind: 'user',
      mac: [0x52, 0x54, 0, 0, 0, 9],
      hostfwd: [
        { proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 8080, guestPort: 80 },
        { proto: 'udp', hostPort: 5353, guestPort: 53 },
      ],
    },
  );
  assert.deepEqual(parseHostForward('::2222-:22'), { proto: 'tcp', hostPort: 2222, guestPort: 22 });
  assert.deepEqual(parseHostForward('tcp:[::1]:8080-:80'), {
    proto: 'tcp',
    hostAddr: '::1',
    hostPort: 8080,
    guestPort: 80,
  });
  const refused = (text: string, re: RegExp): void => {
    assert.throws(
      () => parseNet(text, 0),
      (e: unknown) => e instanceof Error && re.test(e.message) && !e.message.includes('\n'),
      text,
    );
  };
  refused('user,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80', /leave the guest address empty/);
  refused('user,hostfwd=tcp:127.0.0.1:0-:80', /host port must be 1-65535/);
  refused('user,hostfwd=tcp:127.0.0.1:80-:70000', /guest port must be 1-65535/);
  refused('user,hostfwd=sctp:127.0.0.1:80-:80', /is not of the form/);
  refused('user,hostfwd=tcp:999.0.0.1:80-:80', /not an IPv4 or IPv6 address/);
  refused('user,hostfwd=tcp::80-:80,hostfwd=tcp::80-:81', /forwarded twice/);
  refused('user=1', /takes no value/);
  refused('user,tap=t', /unknown net option "tap=t"/);
  refused('mac=52:54:00:12:34:56', /needs tap=NAME or user/);
  // Two user networks and a TAP together; a TAP name is not asked of a user network.
  validateNets([parseNet('user', 0), parseNet('user', 1), parseNet('tap=t0', 2)]);
  assert.deepEqual(forwardArg({ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 8080, guestPort: 80 }), [
    '-t',
    '127.0.0.1/8080:80',
  ]);
  assert.deepEqual(forwardArg({ proto: 'udp', hostPort: 53, guestPort: 5353 }), ['-u', '53:5353']);
});

/** A backend whose link the test turns off and on (as PasstNet's does when passt goes and comes). */
class LinkTap extends FakeTap {
  up = false;
  refreshes = 0;
  readonly hostOffloads = 0;
  constructor() {
    super(0);
  }
  linkUp(): boolean {
    return this.up;
  }
  refresh(): void {
    this.refreshes++;
  }
}

test('virtio-net: the link status follows the backend, with a configuration interrupt each time', () => {
  const tap = new LinkTap();
  const dev = new VirtioNet(tap, { mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56), mtu: 65520 });
  dev.attach(new FakePoller());
  const drv = new MockMmioDriver(dev, 16 << 20, false);
  try {
    const offered = drv.deviceFeatures();
    // passt takes plain frames: no partial checksums or TSO from the guest, none towards it.
    for (const b of [VIRTIO_NET_F.CSUM, VIRTIO_NET_F.HOST_TSO4, VIRTIO_NET_F.HOST_TSO6, VIRTIO_NET_F.GUEST_CSUM])
      assert.equal(offered & bit(b), 0n, `feature ${b} not offered`);
    assert.notEqual(offered & bit(VIRTIO_NET_F.STATUS), 0n);
    assert.notEqual(offered & bit(VIRTIO_NET_F.MTU), 0n);
    drv.probe(256, offered);
    const status = (): number => new DataView(drv.readConfig(6, 2).buffer).getUint16(0, true);
    const mtu = new DataView(drv.readConfig(10, 2).buffer).getUint16(0, true);
    assert.equal(mtu, 65520);
    assert.equal(status(), 0, 'no passt yet: link down');
    const gen = drv.read(R.CONFIG_GENERATION);
    const irqs = drv.interrupts;
    tap.up = true;
    drv.side.hostWake();
    assert.equal(status(), 1, 'link up');
    assert.ok(drv.read(R.CONFIG_GENERATION) !== gen, 'configuration generation bumped');
    assert.equal(drv.interrupts, irqs + 1, 'one configuration interrupt');
    assert.equal(drv.read(R.INTERRUPT_STATUS) & 2, 2, 'INTERRUPT_CONFIG_CHANGE');
    drv.write(R.INTERRUPT_ACK, 2);
    drv.side.hostWake();
    assert.equal(drv.interrupts, irqs + 1, 'no change, no interrupt');
    tap.up = false;
    drv.side.hostWake();
    assert.equal(status(), 0, 'link down again');
    assert.equal(drv.interrupts, irqs + 2);
    assert.ok(tap.refreshes >= 3, 'each wake asks the backend to look again');
  } finally {
    drv.release();
  }
});

test('virtio-net: a link that came up before DRIVER_OK reached the device gets a configuration interrupt', () => {
  // Linux reads the status right after it writes DRIVER_OK, racing the I/O thread's activation: it may
  // have read "down" (the status the device was built with); only an interrupt makes it read again.
  const tap = new LinkTap();
  const dev = new VirtioNet(tap, { mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56), mtu: 65520 });
  dev.attach(new FakePoller());
  const drv = new MockMmioDriver(dev, 16 << 20, false);
  try {
    const status = (): number => new DataView(drv.readConfig(6, 2).buffer).getUint16(0, true);
    assert.equal(status(), 0, 'built with the link down');
    const gen = drv.read(R.CONFIG_GENERATION);
    tap.up = true; // passt came up while the driver was probing
    drv.probe(256, drv.deviceFeatures());
    assert.equal(status(), 1, 'link up at activation');
    assert.notEqual(drv.read(R.CONFIG_GENERATION), gen, 'configuration generation bumped');
    assert.equal(drv.read(R.INTERRUPT_STATUS) & 2, 2, 'INTERRUPT_CONFIG_CHANGE: the driver reads the status again');
    drv.write(R.INTERRUPT_ACK, 2);
    // Activated again with the link as the driver last saw it: no interrupt.
    drv.write(R.STATUS, 0);
    drv.probe(256, drv.deviceFeatures());
    assert.equal(status(), 1);
    assert.equal(drv.read(R.INTERRUPT_STATUS) & 2, 0, 'no change, no interrupt');
  } finally {
    drv.release();
  }
});

// --- PasstNet against a stand-in for passt on a real Unix socket --------------------------------

interface Rig {
  net: PasstNet;
  st: Int32Array;
  peer: number;
  listen: number;
  close(): void;
}

function rig(): Rig {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-passt-unit-'));
  const ep = new sys.Epoll(1);
  const pendingFd = sys.eventfd(0, sys.EFD_NONBLOCK);
  ep.add(pendingFd, sys.EPOLLIN, 0);
  const state = new SharedArrayBuffer(PASST_STATE_SLOTS * 4);
  const st = new Int32Array(state);
  st[PASST_STATE.FD] = -1;
  const listen = sys.unixSocket();
  sys.bindListen(listen, passtSocketPath(dir, 1));
  const egress = newEgressChannel({ allow: [], deny: [], allowHost: false, hostNets: hostAddresses() });
  const net = new PasstNet({ id: 'u', dir, epollFd: ep.fd, pendingFd, state, egress });
  assert.equal(net.linkUp(), false);
  Atomics.store(st, PASST_STATE.READY, 1);
  net.refresh();
  assert.ok(net.linkUp(), 'connected to generation 1');
  assert.equal(st[PASST_STATE.CONNECTED], 1);
  const peer = sys.accept(listen);
  assert.ok(peer >= 0);
  return {
    net,
    st,
    peer,
    listen,
    close() {
      net.close();
      sys.close(peer);
      sys.close(listen);
      sys.close(pendingFd);
      ep.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const readable = (fd: number): boolean => sys.readable(fd);

function sendAll(fd: number, b: Uint8Array): void {
  for (let o = 0; o < b.length; ) {
    const n = sys.send(fd, b.subarray(o));
    assert.ok(n > 0, 'the test socket takes the bytes');
    o += n;
  }
}

test('PasstNet: frames both ways with the virtio header taken off and put on; pending frames keep the fd readable', () => {
  const r = rig();
  try {
    // Guest → passt: the header split over buffers goes away, the length prefix comes first.
    const f = ethFrame(1500, 7);
    const hdr = new Uint8Array(VIRTIO_NET_HDR_LEN);
    const n = r.net.write([hdr.subarray(0, 5), hdr.subarray(5), f.subarray(0, 100), f.subarray(100)], 4);
    assert.equal(n, VIRTIO_NET_HDR_LEN + 1500);
    assert.equal(sys.recv(r.peer, new Uint8Array(10)), -1, 'gathered until the flush');
    r.net.flush();
    const got = new Uint8Array(4 + 1500);
    let o = 0;
    while (o < got.length) {
      const k = sys.recv(r.peer, got.subarray(o));
      assert.ok(k > 0);
      o += k;
    }
    assert.deepEqual(got.subarray(0, 4), Uint8Array.of(0, 0, 0x05, 0xdc));
    assert.deepEqual(got.subarray(4), f);
    assert.throws(() => r.net.write([hdr, ethFrame(10, 1)], 2), RangeError, 'a runt is refused');
    // passt → guest: three frames in one send, the third split; each read gives one with a zero header.
    const frames = [ethFrame(60, 1), ethFrame(9000, 2), ethFrame(1514, 3)];
    const s = framed(frames);
    sendAll(r.peer, s.subarray(0, s.length - 10));
    const bufs = [new Uint8Array(7), new Uint8Array(70000)];
    const take = (): Uint8Array | undefined => {
      const len = r.net.read(bufs, 2);
      if (len === undefined) return undefined;
      const all = new Uint8Array(len);
      all.set(bufs[0] as Uint8Array);
      all.set((bufs[1] as Uint8Array).subarray(0, len - 7), 7);
      return all;
    };
    const a = take();
    assert.deepEqual(a?.subarray(0, VIRTIO_NET_HDR_LEN), new Uint8Array(VIRTIO_NET_HDR_LEN));
    assert.deepEqual(a?.subarray(VIRTIO_NET_HDR_LEN), frames[0]);
    assert.ok(readable(r.net.fd), 'a whole frame waits in the buffer: the device fd stays readable');
    assert.deepEqual(take()?.subarray(VIRTIO_NET_HDR_LEN), frames[1]);
    assert.equal(take(), undefined, 'the third has not all arrived');
    assert.equal(readable(r.net.fd), false, 'nothing whole waits, nothing on the socket');
    sendAll(r.peer, s.subarray(s.length - 10));
    assert.ok(readable(r.net.fd), 'the socket wakes the device');
    assert.deepEqual(take()?.subarray(VIRTIO_NET_HDR_LEN), frames[2]);
    assert.equal(take(), undefined);
    assert.ok(r.net.linkUp());
  } finally {
    r.close();
  }
});

test('PasstNet: a bad length, or the end of the stream, drops the connection and says why', () => {
  for (const [bytes, reason] of [
    [Uint8Array.of(0xff, 0xff, 0xff, 0xff), PASST_LOST.BAD_FRAME],
    [Uint8Array.of(0, 0, 0, 3, 1, 2, 3), PASST_LOST.BAD_FRAME],
    [undefined, PASST_LOST.CLOSED],
  ] as const) {
    const r = rig();
    try {
      if (bytes) sendAll(r.peer, bytes);
      else sys.shutdown(r.peer, sys.SHUT_WR);
      assert.equal(r.net.read([new Uint8Array(2000)], 1), undefined);
      assert.equal(r.net.linkUp(), false, 'link down');
      assert.equal(r.st[PASST_STATE.LOST], 1, 'generation 1 lost');
      assert.equal(r.st[PASST_STATE.LOST_REASON], reason);
      assert.equal(r.st[PASST_STATE.FD], -1);
      assert.equal(r.st[PASST_STATE.CONNECTED], 0);
      assert.equal(readable(r.net.fd), false, 'nothing left for the device to spin on');
      assert.throws(() => r.net.write([new Uint8Array(12), ethFrame(60, 1)], 2), /ENOTCONN/);
      r.net.refresh();
      assert.equal(r.net.linkUp(), false, 'no reconnect to the same generation');
    } finally {
      r.close();
    }
  }
});

test('PasstNet: a full socket holds the guest back (no frame lost), keeps the order and wakes the device when it has room', () => {
  const r = rig();
  try {
    const hdr = new Uint8Array(VIRTIO_NET_HDR_LEN);
    const sent: Uint8Array[] = [];
    let refused = 0;
    // The peer reads nothing: the socket fills, then the send buffer; then a frame is not taken (0).
    for (let i = 0; i < 4000 && refused === 0; i++) {
      const f = ethFrame(1500, i);
      const n = r.net.write([hdr, f], 2);
      if (n === 0) refused++;
      else {
        assert.equal(n, VIRTIO_NET_HDR_LEN + f.length);
        sent.push(f);
      }
      if (i % 16 === 15) r.net.flush();
    }
    assert.equal(refused, 1, 'not taken once both buffers were full (the device keeps it)');
    assert.ok(r.net.sending(), 'frames wait for room');
    assert.equal(readable(r.net.fd), false, 'full, nothing to read: the device is not woken (no busy loop)');
    // The peer drains: the device's fd says so (room); service() sends what waited, and the frame that
    // was refused is taken now. Nothing needs a read (the guest may have no rx buffers).
    const refusedFrame = ethFrame(1500, 9999);
    let retaken = false;
    const got: number[] = [];
    const buf = new Uint8Array(1 << 16);
    for (let idle = 0; idle < 50; ) {
      const k = sys.recv(r.peer, buf);
      if (k > 0) {
        for (let i = 0; i < k; i++) got.push(buf[i] as number);
        idle = 0;
        continue;
      }
      idle++;
      if (readable(r.net.fd)) {
        r.net.service();
        if (!retaken && r.net.write([hdr, refusedFrame], 2) > 0) {
          retaken = true;
          sent.push(refusedFrame);
          r.net.flush();
        }
      }
    }
    assert.ok(retaken, 'the refused frame was taken once there was room');
    assert.deepEqual(Uint8Array.from(got), framed(sent), 'every frame arrived, whole and in order');
    assert.equal(r.net.sending(), false);
    assert.equal(readable(r.net.fd), false, 'nothing left to send: the fd is quiet');
    assert.ok(r.net.linkUp());
  } finally {
    r.close();
  }
});

test('PasstNet: while the device wants no frames, input does not wake it; room and the end of the stream still do', () => {
  const r = rig();
  try {
    r.net.wantFrames(false);
    sendAll(r.peer, framed([ethFrame(100, 1), ethFrame(100, 2)]));
    assert.equal(readable(r.net.fd), false, 'frames waiting do not wake a device with no guest buffers');
    r.net.wantFrames(true);
    assert.equal(readable(r.net.fd), true, 'they do once it wants them');
    const b = new Uint8Array(2000);
    assert.equal(r.net.read([b], 1), VIRTIO_NET_HDR_LEN + 100);
    assert.equal(readable(r.net.fd), true, 'the second frame, in the buffer, keeps it readable (pendingFd)');
    r.net.wantFrames(false);
    assert.equal(readable(r.net.fd), false, 'pendingFd is not watched either');
    // passt goes away while nobody reads: the fd wakes the device, service() notices the end.
    sys.close(r.peer);
    r.peer = sys.unixSocket();
    assert.equal(readable(r.net.fd), true, 'the hang-up wakes the device');
    r.net.service();
    assert.equal(r.net.linkUp(), false, 'the connection dropped');
    assert.equal(r.st[PASST_STATE.LOST_REASON], PASST_LOST.CLOSED);
    assert.equal(readable(r.net.fd), false, 'nothing to spin on');
  } finally {
    r.close();
  }
});

// --- the handshake of forwarded connections (passt-handshake.ts) ---------------------------------

/** The ones' complement checksum check: summing a header with its checksum in gives 0xffff. */
function sumsToFfff(...parts: Uint8Array[]): boolean {
  let s = 0;
  for (const b of parts) for (let i = 0; i < b.length; i += 2) s += ((b[i] as number) << 8) | (b[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s === 0xffff;
}

/** A TCP SYN or SYN+ACK with a window scale option, IPv4 or IPv6. */
function synFrame(o: {
  v6: boolean;
  srcMac: number;
  dstMac?: number;
  src: Uint8Array;
  dst: Uint8Array;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  wscale?: number;
}): Uint8Array {
  const ipLen = o.v6 ? 40 : 20;
  const tcpLen = o.wscale === undefined ? 20 : 24;
  const f = new Uint8Array(14 + ipLen + tcpLen);
  const v = new DataView(f.buffer);
  f.fill(o.srcMac, 6, 12);
  f.fill(o.dstMac ?? 0xee, 0, 6);
  v.setUint16(12, o.v6 ? 0x86dd : 0x0800);
  if (o.v6) {
    f[14] = 0x60;
    v.setUint16(18, tcpLen);
    f[20] = 6;
    f[21] = 64;
    f.set(o.src, 22);
    f.set(o.dst, 38);
  } else {
    f[14] = 0x45;
    v.setUint16(16, 20 + tcpLen);
    f[23] = 6;
    f.set(o.src, 26);
    f.set(o.dst, 30);
  }
  const t = 14 + ipLen;
  v.setUint16(t, o.sport);
  v.setUint16(t + 2, o.dport);
  v.setUint32(t + 4, o.seq);
  v.setUint32(t + 8, o.ack);
  f[t + 12] = (tcpLen / 4) << 4;
  f[t + 13] = o.flags;
  v.setUint16(t + 14, o.window);
  if (o.wscale !== undefined) f.set([1, 3, 3, o.wscale], t + 20);
  return f;
}

test('forwarded handshakes: the SYN+ACK answering passt’s SYN gets the ACK passt would send, once, IPv4 and IPv6', () => {
  for (const v6 of [false, true]) {
    const passtAddr = v6
      ? Uint8Array.from({ length: 16 }, (_, i) => (i === 15 ? 1 : i === 0 ? 0xfe : 0))
      : Uint8Array.of(10, 0, 2, 2);
    const guestAddr = v6
      ? Uint8Array.from({ length: 16 }, (_, i) => (i === 15 ? 0x15 : i === 0 ? 0xfe : 0))
      : Uint8Array.of(10, 0, 2, 15);
    const hs = new ForwardHandshake();
    const syn = synFrame({
      v6,
      srcMac: 0xaa,
      src: passtAddr,
      dst: guestAddr,
      sport: 40000,
      dport: 80,
      seq: 0xfffffff0,
      ack: 0,
      flags: 0x02,
      window: 65535,
      wscale: 8,
    });
    const synAck = (ack: number, sport = 80) =>
      synFrame({
        v6,
        srcMac: 0xbb,
        dstMac: 0xaa,
        src: guestAddr,
        dst: passtAddr,
        sport,
        dport: 40000,
        seq: 0x1000,
        ack,
        flags: 0x12,
        window: 65480,
        wscale: 10,
      });
    assert.equal(hs.fromGuest(synAck(0xfffffff1)), undefined, 'no SYN seen: nothing');
    hs.fromPasst(syn);
    assert.equal(hs.fromGuest(synAck(0x1234)), undefined, 'a SYN+ACK that does not acknowledge the SYN');
    assert.equal(hs.fromGuest(synAck(0xfffffff1, 81)), undefined, 'another connection');
    const ack = hs.fromGuest(synAck(0xfffffff1));
    assert.ok(ack, 'the ACK');
    const v = new DataView(ack.buffer);
    const t = v6 ? 54 : 34;
    assert.equal(ack.length, t + 20);
    assert.deepEqual([...ack.subarray(0, 6)], Array(6).fill(0xbb), "to the guest's MAC");
    assert.deepEqual([...ack.subarray(6, 12)], Array(6).fill(0xaa), "from passt's");
    assert.deepEqual([v.getUint16(t), v.getUint16(t + 2)], [40000, 80]);
    assert.equal(v.getUint32(t + 4), 0xfffffff1, "passt's ISN + 1 (wrapping)");
    assert.equal(v.getUint32(t + 8), 0x1001, "acknowledging the guest's ISN + 1");
    assert.equal(ack[t + 13], 0x10, 'ACK alone');
    assert.equal(v.getUint16(t + 14), 255, "passt's window in its scale (65535 >> 8)");
    const src = ack.subarray(v6 ? 22 : 26, v6 ? 38 : 30);
    const dst = ack.subarray(v6 ? 38 : 30, v6 ? 54 : 34);
    assert.deepEqual([...src], [...passtAddr]);
    assert.deepEqual([...dst], [...guestAddr]);
    if (!v6) assert.ok(sumsToFfff(ack.subarray(14, 34)), 'the IPv4 header checksum');
    assert.ok(sumsToFfff(src, dst, Uint8Array.of(0, 6, 0, 20), ack.subarray(t)), 'the TCP checksum');
    assert.equal(hs.fromGuest(synAck(0xfffffff1)), undefined, 'a retransmitted SYN+ACK gets no second one');
    assert.equal(hs.acks, 1);
  }
});

test('forwarded handshakes: garbage and truncated frames are left alone; the table of SYNs is bounded', () => {
  const hs = new ForwardHandshake();
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 120 }), (f) => {
      hs.fromPasst(f);
      hs.fromGuest(f);
    }),
    { numRuns: 2000 },
  );
  const a = Uint8Array.of(10, 0, 2, 2);
  const g = Uint8Array.of(10, 0, 2, 15);
  for (let i = 0; i < HANDSHAKE_MAX_PENDING + 10; i++)
    hs.fromPasst(
      synFrame({
        v6: false,
        srcMac: 1,
        src: a,
        dst: g,
        sport: 1000 + i,
        dport: 80,
        seq: i,
        ack: 0,
        flags: 0x02,
        window: 100,
      }),
    );
  const answer = (sport: number, seq: number) =>
    hs.fromGuest(
      synFrame({
        v6: false,
        srcMac: 2,
        src: g,
        dst: a,
        sport: 80,
        dport: sport,
        seq: 5,
        ack: seq + 1,
        flags: 0x12,
        window: 100,
      }),
    );
  assert.equal(answer(1000, 0), undefined, 'the oldest was forgotten');
  const last = answer(1000 + HANDSHAKE_MAX_PENDING + 9, HANDSHAKE_MAX_PENDING + 9);
  assert.ok(last, 'the newest is there');
  assert.equal(new DataView(last.buffer).getUint16(34 + 14), 100, 'no scaling unless both offered it');
  // A truncated SYN+ACK (its options cut) is not answered.
  hs.fromPasst(
    synFrame({ v6: false, srcMac: 1, src: a, dst: g, sport: 7, dport: 80, seq: 9, ack: 0, flags: 0x02, window: 100 }),
  );
  const cut = synFrame({
    v6: false,
    srcMac: 2,
    src: g,
    dst: a,
    sport: 80,
    dport: 7,
    seq: 5,
    ack: 10,
    flags: 0x12,
    window: 100,
    wscale: 7,
  });
  assert.equal(hs.fromGuest(cut.subarray(0, cut.length - 2)), undefined);
  assert.ok(hs.fromGuest(cut));
});
