/**
 * virtio-vsock (hybrid, Firecracker's form) against a mock guest driver over real guest memory and REAL
 * Unix sockets: the device's host side runs through a real epoll set (the poller the I/O thread would
 * give it), pumped from this test between turns of Node's event loop, where `net` clients and servers
 * play the host processes. The test plays the guest's vsock transport: it posts RX buffers, reads the
 * packets the device writes, and sends packets through TX chains laid out as Linux lays them out
 * (header and payload in separate descriptors).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { closeVsock, openVsock, UnixVsockHost, type VsockSpec } from '../src/backends/unix-socket.js';
import { MiB } from '../src/common/address.js';
import { parseVsock as parseVsockOption } from '../src/config/index.js';
import { POLL_IN, type Poller, type VirtioContext } from '../src/devices/virtio/device.js';
import { Queue, type QueueLayout } from '../src/devices/virtio/queue.js';
import {
  decodeHeader,
  encodeHeader,
  VirtioVsock,
  VSOCK_BUF_ALLOC,
  VSOCK_HDR_SIZE,
  VSOCK_MAX_PKT,
  VSOCK_OP,
  VSOCK_SHUTDOWN_RCV,
  VSOCK_SHUTDOWN_SEND,
  type VsockHeader,
  type VsockHost,
  type VsockStream,
} from '../src/devices/virtio/vsock/index.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import * as sys from '../src/os/sys.js';
import { createVsockDevice } from '../src/vmm/kinds/vsock.js';
import { MockSplitQueue } from './support/mock-virtq.js';

const GUEST_CID = 3;
const QSIZE = 128;
const BLOCK = 80 * 1024; // one buffer slot: a header and the largest payload fit
const DATA_BASE = 1 * MiB;
const MEM_SIZE = 32 * MiB;

/** The I/O thread's poller, over a real epoll set; records each fd's interest so tests can check it. */
class TestPoller implements Poller {
  readonly ep = new sys.Epoll();
  readonly handlers = new Map<number, (events: number) => void>();
  readonly interest = new Map<number, number>();
  calls = 0;
  add(fd: number, events: number, handler: (events: number) => void): void {
    this.ep.add(fd, events, fd);
    this.handlers.set(fd, handler);
    this.interest.set(fd, events);
  }
  modify(fd: number, events: number): void {
    this.ep.modify(fd, events, fd);
    this.interest.set(fd, events);
  }
  remove(fd: number): void {
    if (!this.handlers.delete(fd)) return;
    this.interest.delete(fd);
    this.ep.remove(fd);
  }
  /** One non-blocking epoll_wait, dispatching as the I/O thread does; returns the events handled. */
  pump(): number {
    return this.ep.wait(0, (fd, ev) => {
      this.calls++;
      this.handlers.get(fd)?.(ev);
    });
  }
  close(): void {
    this.ep.close();
  }
}

interface Packet {
  hdr: VsockHeader;
  data: Buffer;
  usedLen: number;
}

/** A fixed-size block allocator over guest memory for the driver's buffers. */
class Blocks {
  private free: number[] = [];
  constructor(base: number, count: number) {
    for (let i = count - 1; i >= 0; i--) this.free.push(base + i * BLOCK);
  }
  alloc(): number {
    const a = this.free.pop();
    if (a === undefined) throw new Error('test driver out of buffers');
    return a;
  }
  release(a: number): void {
    this.free.push(a);
  }
}

/** The guest's side of the three queues (what Linux's virtio_transport does), built on MockSplitQueue. */
class MockVsockDriver {
  readonly rx: MockSplitQueue;
  readonly tx: MockSplitQueue;
  readonly ev: MockSplitQueue;
  readonly layouts: QueueLayout[];
  private readonly blocks: Blocks;
  private readonly rxBufs = new Map<number, number>();
  private readonly txBufs = new Map<number, number[]>();
  private readonly evBufs = new Map<number, number>();
  /** Packets the device delivered, in order, not yet taken by a test. */
  inbox: Packet[] = [];
  events: number[] = [];
  /** Post a new RX buffer for each one consumed. */
  refill = true;
  rxBufLen = 4096 + VSOCK_HDR_SIZE;

  constructor(
    readonly mem: GuestMemory,
    readonly device: VirtioVsock,
  ) {
    this.layouts = [0, 1, 2].map((i) => MockSplitQueue.packed(QSIZE, 0x1000 + i * 0x4000));
    [this.rx, this.tx, this.ev] = this.layouts.map((l) => new MockSplitQueue(mem, l)) as [
      MockSplitQueue,
      MockSplitQueue,
      MockSplitQueue,
    ];
    this.blocks = new Blocks(DATA_BASE, Math.floor((MEM_SIZE - DATA_BASE) / BLOCK));
  }

  postRx(n: number, len = this.rxBufLen): void {
    for (let i = 0; i < n; i++) {
      const addr = this.blocks.alloc();
      const head = this.rx.addChain([{ addr, len, write: true }]);
      assert.ok(head !== undefined, 'RX ring full');
      this.rxBufs.set(head, addr);
    }
  }

  postEvent(): void {
    const addr = this.blocks.alloc();
    const head = this.ev.addChain([{ addr, len: 8, write: true }]);
    assert.ok(head !== undefined);
    this.evBufs.set(head, addr);
  }

  /** The interrupt handler: takes used RX, TX and event buffers. */
  collect(): void {
    let taken = 0;
    for (const u of this.rx.takeUsed()) {
      const addr = this.rxBufs.get(u.id);
      assert.ok(addr !== undefined, `device used RX head ${u.id} it was not given`);
      this.rxBufs.delete(u.id);
      this.rx.recycle(u.id);
      if (u.len >= VSOCK_HDR_SIZE) {
        const hdr = decodeHeader(this.mem.read(addr, VSOCK_HDR_SIZE));
        assert.equal(u.len, VSOCK_HDR_SIZE + hdr.len, 'used length is the header plus its payload');
        this.inbox.push({ hdr, data: Buffer.from(this.mem.read(addr + VSOCK_HDR_SIZE, hdr.len)), usedLen: u.len });
      }
      this.blocks.release(addr);
      taken++;
    }
    for (const u of this.tx.takeUsed()) {
      for (const a of this.txBufs.get(u.id) ?? []) this.blocks.release(a);
      this.txBufs.delete(u.id);
      this.tx.recycle(u.id);
    }
    for (const u of this.ev.takeUsed()) {
      const addr = this.evBufs.get(u.id) as number;
      this.evBufs.delete(u.id);
      this.ev.recycle(u.id);
      if (u.len >= 4) this.events.push(this.mem.read32(addr));
      this.blocks.release(addr);
    }
    if (this.refill && taken > 0) {
      this.postRx(taken);
      this.device.process(0);
    }
  }

  /**
   * Sends one packet: header and payload in separate readable descriptors (as Linux does), or in one
   * (`oneBuffer`), or a chain shorter than a header (`truncate`).
   */
  send(
    h: Partial<VsockHeader>,
    payload: Uint8Array = new Uint8Array(0),
    o: { oneBuffer?: boolean; truncate?: number } = {},
  ): void {
    const hdr: VsockHeader = {
      srcCid: BigInt(GUEST_CID),
      dstCid: 2n,
      srcPort: 0,
      dstPort: 0,
      len: payload.length,
      type: 1,
      op: VSOCK_OP.RW,
      flags: 0,
      bufAlloc: 256 * 1024,
      fwdCnt: 0,
      ...h,
    };
    const bytes = encodeHeader(hdr);
    const addrs: number[] = [];
    const bufs: { addr: number; len: number; write: boolean }[] = [];
    const a = this.blocks.alloc();
    addrs.push(a);
    if (o.truncate !== undefined) {
      this.mem.write(a, bytes.subarray(0, o.truncate));
      bufs.push({ addr: a, len: o.truncate, write: false });
    } else if (o.oneBuffer || payload.length === 0) {
      this.mem.write(a, bytes);
      this.mem.write(a + VSOCK_HDR_SIZE, payload);
      bufs.push({ addr: a, len: VSOCK_HDR_SIZE + payload.length, write: false });
    } else {
      this.mem.write(a, bytes);
      bufs.push({ addr: a, len: VSOCK_HDR_SIZE, write: false });
      const b = this.blocks.alloc();
      addrs.push(b);
      this.mem.write(b, payload);
      bufs.push({ addr: b, len: payload.length, write: false });
    }
    const head = this.tx.addChain(bufs);
    assert.ok(head !== undefined, 'TX ring full');
    this.txBufs.set(head, addrs);
    this.device.process(1);
  }

  /** Takes the first inbox packet matching `pred`. */
  take(pred: (p: Packet) => boolean): Packet | undefined {
    const i = this.inbox.findIndex(pred);
    if (i < 0) return undefined;
    return this.inbox.splice(i, 1)[0];
  }
}

/** A guest-side stream: the transport's per-socket counters, for honest credit in its headers. */
class GuestConn {
  rxBytes = 0; // payload received from the host (our fwd_cnt)
  txBytes = 0; // payload sent to the host
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  constructor(
    readonly t: Harness,
    readonly port: number,
    public hostPort: number,
    readonly bufAlloc = 256 * 1024,
  ) {}
  hdr(op: number, extra: Partial<VsockHeader> = {}): Partial<VsockHeader> {
    return { srcPort: this.port, dstPort: this.hostPort, op, bufAlloc: this.bufAlloc, fwdCnt: this.rxBytes, ...extra };
  }
  send(op: number, payload?: Uint8Array, extra: Partial<VsockHeader> = {}): void {
    if (payload) this.txBytes += payload.length;
    this.t.drv.send(this.hdr(op, extra), payload);
  }
  credit(): number {
    return this.peerBufAlloc - (this.txBytes - this.peerFwdCnt);
  }
  /** Notes a packet from the host on this connection. */
  saw(p: Packet): void {
    this.peerBufAlloc = p.hdr.bufAlloc;
    this.peerFwdCnt = p.hdr.fwdCnt;
    if (p.hdr.op === VSOCK_OP.RW) this.rxBytes += p.hdr.len;
  }
  mine(p: Packet): boolean {
    return p.hdr.dstPort === this.port && p.hdr.srcPort === this.hostPort;
  }
  /** Waits for the next packet of this connection with op `op` (noting every packet of it on the way). */
  async expect(op: number, what = `op ${op}`): Promise<Packet> {
    let got: Packet | undefined;
    await this.t.until(() => {
      for (let p = this.t.drv.take((q) => this.mine(q)); p !== undefined; p = this.t.drv.take((q) => this.mine(q))) {
        this.saw(p);
        if (p.hdr.op === op) {
          got = p;
          return true;
        }
        if (p.hdr.op !== VSOCK_OP.CREDIT_UPDATE)
          assert.fail(`expected ${what}, got op ${p.hdr.op} (len ${p.hdr.len}, flags ${p.hdr.flags})`);
      }
      return false;
    }, what);
    return got as Packet;
  }
  /** Collects RW payload of this connection until `n` bytes arrived (noting credit updates). */
  async read(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let have = 0;
    await this.t.until(() => {
      for (let p = this.t.drv.take((q) => this.mine(q)); p !== undefined; p = this.t.drv.take((q) => this.mine(q))) {
        this.saw(p);
        if (p.hdr.op === VSOCK_OP.RW) {
          parts.push(p.data);
          have += p.data.length;
        } else if (p.hdr.op !== VSOCK_OP.CREDIT_UPDATE) assert.fail(`unexpected op ${p.hdr.op} while reading`);
      }
      return have >= n;
    }, `${n} bytes from the host`);
    return Buffer.concat(parts);
  }
}

/** One device with its driver, poller, memory and a temp directory for the sockets. */
class Harness {
  readonly mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: MEM_SIZE }]);
  readonly mem = new GuestMemory(this.mapping.descriptors);
  readonly dir = mkdtempSync(join(tmpdir(), 'vireo-vsock-'));
  readonly uds = join(this.dir, 'v.sock');
  readonly spec: VsockSpec;
  readonly device: VirtioVsock;
  readonly poller = new TestPoller();
  readonly drv: MockVsockDriver;
  readonly config = new DataView(new ArrayBuffer(8));
  readonly signals = [0, 0, 0];
  /** The listener's and the timer's fds (watched from attach on). */
  baseFds = new Set<number>();
  private readonly sockets: Socket[] = [];
  private readonly servers: Server[] = [];

  constructor(
    opts: { requestTimeoutMs?: number; connectLineTimeoutMs?: number } = {},
    wrapHost?: (host: VsockHost) => VsockHost,
  ) {
    this.spec = openVsock({ cid: GUEST_CID, udsPath: this.uds, ...opts });
    // As the I/O thread builds it (createVsockDevice), or over a host a test wraps.
    this.device = wrapHost
      ? new VirtioVsock(wrapHost(new UnixVsockHost(this.spec)), this.spec)
      : createVsockDevice(this.spec);
    this.drv = new MockVsockDriver(this.mem, this.device);
    new Uint8Array(this.config.buffer).set(this.device.configSpace);
  }

  start(rxBuffers = 32): void {
    this.device.attach(this.poller);
    this.baseFds = new Set(this.poller.handlers.keys());
    this.drv.postRx(rxBuffers);
    const queues = this.drv.layouts.map((l) => new Queue(l, { eventIdx: true, indirect: false }));
    const ctx: VirtioContext = {
      mem: this.mem,
      queues,
      features: this.device.features,
      config: this.config,
      signalUsed: (q) => {
        this.signals[q] = (this.signals[q] ?? 0) + 1;
      },
      signalConfig: () => {},
    };
    this.device.activate(ctx);
  }

  /** The poll interest of every connection's socket. */
  connInterest(): number[] {
    return [...this.poller.interest].filter(([fd]) => !this.baseFds.has(fd)).map(([, ev]) => ev);
  }

  /** Runs the device's I/O side and Node's event loop until cond() holds. */
  async until(cond: () => boolean, what: string | (() => string), timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poller.pump();
      this.drv.collect();
      if (cond()) return;
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Lets everything settle for a while (for checking that nothing happens). */
  async idle(ms: number): Promise<void> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      this.poller.pump();
      this.drv.collect();
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  client(path = this.uds): HostClient {
    const s = createConnection(path);
    this.sockets.push(s);
    return new HostClient(s);
  }

  async server(port: number, onConn: (s: Socket) => void): Promise<Server> {
    const srv = createServer({ allowHalfOpen: true }, (s) => {
      this.sockets.push(s);
      onConn(s);
    });
    this.servers.push(srv);
    await new Promise<void>((res) => srv.listen(`${this.uds}_${port}`, res));
    return srv;
  }

  /** A guest-initiated connection to host port `port`, through REQUEST/RESPONSE. */
  async guestConnect(port: number, guestPort: number, bufAlloc?: number): Promise<GuestConn> {
    const c = new GuestConn(this, guestPort, port, bufAlloc);
    c.send(VSOCK_OP.REQUEST);
    await c.expect(VSOCK_OP.RESPONSE, 'RESPONSE to the guest');
    return c;
  }

  /** A host-initiated connection to guest port `port`: CONNECT, REQUEST, RESPONSE, OK. */
  async hostConnect(port: number, bufAlloc?: number): Promise<{ host: HostClient; guest: GuestConn }> {
    const host = this.client();
    host.write(`CONNECT ${port}\n`);
    let req: Packet | undefined;
    await this.until(() => {
      req = this.drv.take((p) => p.hdr.op === VSOCK_OP.REQUEST && p.hdr.dstPort === port);
      return req !== undefined;
    }, 'REQUEST to the guest');
    const r = req as Packet;
    const guest = new GuestConn(this, port, r.hdr.srcPort, bufAlloc);
    guest.saw(r);
    guest.send(VSOCK_OP.RESPONSE);
    await this.until(() => host.text().includes('\n'), 'OK line');
    assert.equal(host.text(), `OK ${r.hdr.srcPort}\n`);
    host.consume(host.text().length);
    return { host, guest };
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    for (const s of this.servers) s.close();
    this.device.close();
    closeVsock(this.spec);
    this.poller.close();
    this.mapping.release();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A host process on the Unix socket, through Node's net. */
class HostClient {
  private buf = Buffer.alloc(0);
  ended = false;
  closed = false;
  constructor(readonly s: Socket) {
    s.on('data', (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b]);
    });
    s.on('end', () => {
      this.ended = true;
    });
    s.on('close', () => {
      this.closed = true;
    });
    s.on('error', () => {});
  }
  write(d: string | Uint8Array): void {
    this.s.write(d);
  }
  text(): string {
    return this.buf.toString('latin1');
  }
  get bytes(): Buffer {
    return this.buf;
  }
  consume(n: number): void {
    this.buf = this.buf.subarray(n);
  }
}

const pattern = (n: number, seed = 7): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed + (i >> 8)) & 0xff;
  return b;
};

let h: Harness;
let stats: string[] = [];

const openFds = (): number => readdirSync('/proc/self/fd').length;
let fdsAtStart = 0;

describe('virtio-vsock (hybrid) over real Unix sockets', () => {
  before(() => {
    stats = [];
    fdsAtStart = openFds();
  });
  beforeEach(() => {
    h = new Harness({ requestTimeoutMs: 300, connectLineTimeoutMs: 300 });
    h.start();
  });
  afterEach(() => {
    stats.push(JSON.stringify(h.device.counters));
    h.close();
  });
  after(async () => {
    process.stderr.write(`vsock counters per test:\n${stats.join('\n')}\n`);
    await new Promise((r) => setTimeout(r, 50)); // Node closes destroyed sockets on its next turn
    assert.equal(openFds(), fdsAtStart, 'every socket, timer and epoll fd was closed');
  });

  test('configuration space, features, queues; CLI option parsing', () => {
    assert.equal(h.device.deviceType, 19);
    assert.deepEqual(h.device.queueMaxSizes.length, 3);
    assert.equal(h.config.getBigUint64(0, true), BigInt(GUEST_CID));
    assert.deepEqual(parseVsockOption(`cid=3,uds=/tmp/x.sock`), { cid: 3, udsPath: '/tmp/x.sock' });
    assert.throws(() => parseVsockOption('cid=2,uds=/tmp/x'), /out of range/);
    assert.throws(() => parseVsockOption('cid=3'), /needs cid=N,uds=PATH/);
    assert.throws(() => parseVsockOption(`cid=3,uds=/${'x'.repeat(100)}`), /at most 96/);
    // The path is taken while the device lives; a stale socket (nobody listening) is replaced.
    assert.throws(() => openVsock({ cid: 4, udsPath: h.uds }), /in use/);
    assert.throws(() => openVsock({ cid: 4, udsPath: join(h.dir, 'no', 'such') }), /directory does not exist/);
    writeFileSync(join(h.dir, 'file'), '');
    assert.throws(() => openVsock({ cid: 4, udsPath: join(h.dir, 'file') }), /not a socket/);
    const stale = join(h.dir, 'stale.sock');
    const fd = sys.unixSocket();
    sys.bindListen(fd, stale);
    sys.close(fd); // the socket file stays behind, with nobody listening
    const spec = openVsock({ cid: 4, udsPath: stale });
    assert.ok(spec.listenFd >= 0, 'a stale socket is replaced');
    closeVsock(spec);
    assert.ok(!existsSync(stale), 'closeVsock removes the path');
  });

  test('host → guest: CONNECT/OK handshake, data both ways, shutdown and RST', async () => {
    const { host, guest } = await h.hostConnect(1234);
    assert.ok(guest.hostPort >= 2 ** 30 && guest.hostPort < 2 ** 31, 'ephemeral local port');
    assert.equal(guest.peerBufAlloc, VSOCK_BUF_ALLOC, 'the device advertises its buffer');
    host.write('hello from the host');
    const got = await guest.read(19);
    assert.equal(got.toString(), 'hello from the host');
    guest.send(VSOCK_OP.RW, Buffer.from('HELLO FROM THE GUEST'));
    await h.until(() => host.text() === 'HELLO FROM THE GUEST', 'guest data at the host');
    // The guest closes: SHUTDOWN(both) → the device closes the Unix socket and answers RST.
    guest.send(VSOCK_OP.SHUTDOWN, undefined, { flags: VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND });
    await guest.expect(VSOCK_OP.RST, 'RST after the guest shut down');
    await h.until(() => host.ended, 'the host sees end of stream');
    assert.equal(h.device.openConnections, 0);
    assert.equal(h.device.counters.hostConnections, 1);
  });

  test('host → guest: data sent right after the CONNECT line is not lost; the host half-closes', async () => {
    const host = h.client();
    host.write('connect 77\nearly bytes');
    let req: Packet | undefined;
    await h.until(() => {
      req = h.drv.take((p) => p.hdr.op === VSOCK_OP.REQUEST);
      return req !== undefined;
    }, 'REQUEST');
    const g = new GuestConn(h, 77, (req as Packet).hdr.srcPort);
    g.saw(req as Packet);
    g.send(VSOCK_OP.RESPONSE);
    assert.equal((await g.read(11)).toString(), 'early bytes');
    await h.until(() => /^OK \d+\n$/.test(host.text()), 'the OK line');
    host.s.end(); // shutdown(SHUT_WR): the host sends no more but still reads
    const sd = await g.expect(VSOCK_OP.SHUTDOWN, 'SHUTDOWN(SEND) for the host EOF');
    assert.equal(sd.hdr.flags, VSOCK_SHUTDOWN_SEND);
    host.consume(host.bytes.length);
    g.send(VSOCK_OP.RW, Buffer.from('reply after half-close'));
    await h.until(() => host.text() === 'reply after half-close', 'reply at the half-closed host');
    g.send(VSOCK_OP.SHUTDOWN, undefined, { flags: VSOCK_SHUTDOWN_SEND });
    await g.expect(VSOCK_OP.RST, 'RST once both sides finished');
    await h.until(() => host.ended && h.device.openConnections === 0, 'closed');
  });

  test('host → guest: the guest refuses (RST) or never answers: the Unix socket is closed', async () => {
    const refused = h.client();
    refused.write('CONNECT 9\n');
    let req: Packet | undefined;
    await h.until(() => {
      req = h.drv.take((p) => p.hdr.op === VSOCK_OP.REQUEST && p.hdr.dstPort === 9);
      return req !== undefined;
    }, 'REQUEST');
    h.drv.send({ op: VSOCK_OP.RST, srcPort: 9, dstPort: (req as Packet).hdr.srcPort });
    await h.until(() => refused.closed, 'refused host socket closed');
    assert.equal(refused.text(), '', 'no OK line');
    // No answer at all: after requestTimeoutMs the host socket is closed and the guest gets an RST.
    const ignored = h.client();
    ignored.write('CONNECT 10\n');
    await h.until(() => ignored.closed, 'timed-out host socket closed', 3000);
    await h.until(() => h.drv.inbox.some((p) => p.hdr.op === VSOCK_OP.RST && p.hdr.dstPort === 10), 'RST for it');
    // Bad CONNECT lines, and silence, are refused.
    const bad = h.client();
    bad.write('HELLO 5\n');
    const long = h.client();
    long.write('CONNECT 1'.padEnd(40, '1'));
    const silent = h.client();
    await h.until(() => bad.closed && long.closed && silent.closed, 'bad host sockets closed', 3000);
    assert.equal(h.device.openConnections, 0);
    assert.ok(h.device.counters.refused >= 5);
  });

  test('guest → host: connect to <uds>_<port>, data both ways, host close → SHUTDOWN, guest RST', async () => {
    let server: Socket | undefined;
    let received = '';
    await h.server(5000, (s) => {
      server = s;
      s.on('data', (b: Buffer) => {
        received += b.toString();
      });
    });
    const g = await h.guestConnect(5000, 40001);
    await h.until(() => server !== undefined, 'server accepted');
    g.send(VSOCK_OP.RW, Buffer.from('ping'));
    await h.until(() => received === 'ping', 'ping at the server');
    server?.write('pong');
    assert.equal((await g.read(4)).toString(), 'pong');
    server?.end();
    const sd = await g.expect(VSOCK_OP.SHUTDOWN, 'SHUTDOWN after the server ended');
    assert.ok(sd.hdr.flags & VSOCK_SHUTDOWN_SEND);
    // The server destroys its socket: once the guest closes too, it all goes away.
    server?.destroy();
    g.send(VSOCK_OP.SHUTDOWN, undefined, { flags: VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND });
    await h.until(() => h.device.openConnections === 0, 'connection gone');
    assert.equal(h.device.counters.guestConnections, 1);
  });

  test('guest → host: nobody listening at <uds>_<port> → RST', async () => {
    h.drv.send({ op: VSOCK_OP.REQUEST, srcPort: 40002, dstPort: 5001 });
    await h.until(() => h.drv.inbox.length > 0, 'an answer');
    const p = h.drv.inbox.shift() as Packet;
    assert.equal(p.hdr.op, VSOCK_OP.RST);
    assert.equal(p.hdr.srcCid, 2n);
    assert.equal(p.hdr.dstCid, BigInt(GUEST_CID));
    assert.equal(p.hdr.srcPort, 5001);
    assert.equal(p.hdr.dstPort, 40002);
    assert.equal(h.device.counters.refused, 1);
    assert.equal(h.device.openConnections, 0);
  });

  test('malformed packets get RST (and end the connection they name); the device goes on', async () => {
    const cases: [string, Partial<VsockHeader>, Uint8Array | undefined, { oneBuffer?: boolean }?][] = [
      ['wrong src_cid', { srcCid: 9n, op: VSOCK_OP.REQUEST }, undefined],
      ['dst_cid not the host', { dstCid: 7n, op: VSOCK_OP.REQUEST }, undefined],
      ['type SEQPACKET', { type: 2, op: VSOCK_OP.REQUEST }, undefined],
      ['unknown op', { op: 9 }, undefined],
      ['op INVALID', { op: 0 }, undefined],
      ['len above the chain', { op: VSOCK_OP.RW, len: 100 }, Buffer.alloc(10)],
      ['len above 64 KiB', { op: VSOCK_OP.RW, len: VSOCK_MAX_PKT + 1 }, Buffer.alloc(VSOCK_MAX_PKT + 1)],
      ['payload on a control op', { op: VSOCK_OP.REQUEST, len: 4 }, Buffer.alloc(4)],
      ['unknown shutdown flags', { op: VSOCK_OP.SHUTDOWN, flags: 4 }, undefined],
      ['RW for no connection', { op: VSOCK_OP.RW }, Buffer.from('x')],
      ['RESPONSE for no connection', { op: VSOCK_OP.RESPONSE }, undefined],
    ];
    let port = 50000;
    for (const [what, hdr, payload, o] of cases) {
      const p = port++;
      h.drv.send({ srcPort: p, dstPort: 6000, ...hdr }, payload, o);
      await h.until(() => h.drv.inbox.length > 0, `an answer to ${what}`);
      const a = h.drv.inbox.shift() as Packet;
      assert.equal(a.hdr.op, VSOCK_OP.RST, what);
      assert.equal(a.hdr.dstPort, p, what);
      assert.equal(a.hdr.srcPort, 6000, what);
    }
    // A chain shorter than a header cannot be answered: it is returned and counted.
    const before = h.device.counters.errors;
    h.drv.send({ srcPort: 1, dstPort: 2 }, undefined, { truncate: 20 });
    await h.idle(20);
    assert.equal(h.drv.inbox.length, 0);
    assert.equal(h.device.counters.errors, before + 1);
    // An RST is never answered.
    h.drv.send({ op: VSOCK_OP.RST, srcPort: 3, dstPort: 4 });
    await h.idle(20);
    assert.equal(h.drv.inbox.length, 0);
    // A protocol violation on a live connection ends it: the host side is closed too.
    let server: Socket | undefined;
    let closed = false;
    await h.server(6001, (s) => {
      server = s;
      s.on('end', () => {
        closed = true;
      });
      s.resume();
    });
    const g = await h.guestConnect(6001, 51000);
    await h.until(() => server !== undefined, 'accepted');
    g.send(VSOCK_OP.RW, Buffer.alloc(8), { len: 9 }); // len above the chain
    await g.expect(VSOCK_OP.RST, 'RST for the bad packet');
    await h.until(() => closed, 'host socket closed');
    // A second REQUEST on a live connection is a violation too.
    const g2 = await h.guestConnect(6001, 51001);
    g2.send(VSOCK_OP.REQUEST);
    await g2.expect(VSOCK_OP.RST, 'RST for a duplicate REQUEST');
    // ...and the device still serves.
    const { host, guest } = await h.hostConnect(4321);
    guest.send(VSOCK_OP.RW, Buffer.from('still alive'));
    await h.until(() => host.text() === 'still alive', 'data after the malformed packets');
    // Two of the cases are well-formed packets for no connection: counted apart from the errors.
    assert.equal(h.device.counters.unknownConnection, 2);
    assert.equal(h.device.counters.errors, cases.length - 2 + 3);
    assert.equal(h.device.openConnections, 1);
  });

  test('host → guest credit: never more than buf_alloc − (tx_cnt − fwd_cnt); CREDIT_UPDATE resumes', async () => {
    // A buffer that is no multiple of the RX buffers' 4 KiB: the last packet must be cut to the credit.
    const BUF = 6000;
    const { host, guest } = await h.hostConnect(2000, BUF);
    const data = pattern(50_000);
    host.write(data);
    const first = await guest.read(BUF);
    assert.equal(first.length, BUF, 'exactly the advertised buffer');
    await h.idle(50);
    assert.equal(h.drv.inbox.filter((p) => p.hdr.op === VSOCK_OP.RW).length, 0, 'nothing beyond the credit');
    // With no credit the device does not watch the socket's readability (no busy loop).
    assert.deepEqual(h.connInterest(), [0]);
    const calls = h.poller.calls;
    await h.idle(50);
    assert.ok(h.poller.calls - calls <= 1, `the poller stays quiet without credit (${h.poller.calls - calls} calls)`);
    // The guest's reader consumes and tells the device (fwd_cnt in a CREDIT_UPDATE).
    const parts = [first];
    let have = first.length;
    while (have < data.length) {
      guest.send(VSOCK_OP.CREDIT_UPDATE);
      const got = await guest.read(Math.min(BUF, data.length - have));
      assert.ok(got.length <= BUF, `at most the credit (${got.length})`);
      parts.push(got);
      have += got.length;
    }
    assert.ok(Buffer.concat(parts).equals(data), 'the bytes arrive in order, complete');
    // CREDIT_REQUEST is answered with CREDIT_UPDATE carrying the device's buffer and fwd_cnt.
    guest.send(VSOCK_OP.RW, Buffer.from('abc'));
    await h.until(() => host.text() === 'abc', 'abc');
    guest.send(VSOCK_OP.CREDIT_REQUEST);
    const cu = await guest.expect(VSOCK_OP.CREDIT_UPDATE, 'CREDIT_UPDATE');
    assert.equal(cu.hdr.bufAlloc, VSOCK_BUF_ALLOC);
    assert.equal(cu.hdr.fwdCnt, 3);
  });

  test('guest → host credit: a slow host peer stops the guest by credit; overrunning it is RST', async () => {
    let server: Socket | undefined;
    let received = 0;
    await h.server(7000, (s) => {
      server = s;
      s.pause();
      s.on('data', (b: Buffer) => {
        received += b.length;
      });
    });
    const g = await h.guestConnect(7000, 41000);
    await h.until(() => server !== undefined, 'accepted');
    assert.equal(g.credit(), VSOCK_BUF_ALLOC);
    // The guest sends as long as it has credit; the server does not read.
    let sent = 0;
    const chunk = pattern(VSOCK_MAX_PKT);
    for (let i = 0; i < 64 && g.credit() > 0; i++) {
      const n = Math.min(chunk.length, g.credit());
      g.send(VSOCK_OP.RW, chunk.subarray(0, n));
      sent += n;
      await h.idle(2);
      for (let p = h.drv.take((q) => g.mine(q)); p; p = h.drv.take((q) => g.mine(q))) g.saw(p);
    }
    // The Unix socket's buffer took some, the device holds at most its buf_alloc: the guest ran dry.
    assert.equal(g.credit(), 0, `the guest is out of credit after ${sent} bytes`);
    assert.ok(sent >= VSOCK_BUF_ALLOC, 'what the socket took was credited back');
    // The host reads: the device forwards its buffer and credits the guest.
    server?.resume();
    await h.until(
      () => {
        for (let p = h.drv.take((q) => g.mine(q)); p; p = h.drv.take((q) => g.mine(q))) g.saw(p);
        return received === sent && g.credit() > VSOCK_BUF_ALLOC - VSOCK_MAX_PKT;
      },
      () => `all bytes at the host and credit back (${received}/${sent}, credit ${g.credit()})`,
    );
    assert.ok(h.device.counters.creditUpdates > 0);
    // A guest that ignores credit is reset.
    server?.pause();
    for (let i = 0; i < 16; i++) g.send(VSOCK_OP.RW, chunk);
    await g.expect(VSOCK_OP.RST, 'RST for overrunning the credit');
    assert.equal(h.device.openConnections, 0);
  });

  test('no RX buffers: sockets are not watched for reading until the driver adds some', async () => {
    const { host, guest } = await h.hostConnect(3000);
    const other = await h.hostConnect(3001); // idle until the stall
    h.drv.refill = false;
    // Use up every posted RX buffer with host data.
    const all = pattern(40 * 4096);
    host.write(all);
    await h.until(() => h.device.counters.rxStalls > 0, 'the device runs out of RX buffers');
    await h.idle(30);
    // No socket is watched for reading now, also the idle one: its data waits in the host's socket.
    for (const ev of h.connInterest()) assert.equal(ev & POLL_IN, 0, 'no POLL_IN interest while stalled');
    const calls = h.poller.calls;
    other.host.write('data for the idle connection');
    await h.idle(50);
    assert.equal(h.poller.calls - calls, 0, 'no wake-ups without RX buffers');
    // Buffers arrive: the rest flows, on both connections.
    h.drv.refill = true;
    h.drv.postRx(32);
    h.device.process(0);
    const got: Buffer[] = [];
    await h.until(() => {
      for (let p = h.drv.take((q) => guest.mine(q)); p; p = h.drv.take((q) => guest.mine(q))) {
        guest.saw(p);
        if (p.hdr.op === VSOCK_OP.RW) got.push(p.data);
      }
      return guest.rxBytes === all.length;
    }, 'all host bytes delivered');
    assert.ok(Buffer.concat(got).equals(all), 'complete and in order across the stall');
    assert.equal((await other.guest.read(28)).toString(), 'data for the idle connection');
  });

  test('transport reset: the event goes to the driver, connections are dropped', async () => {
    const { host } = await h.hostConnect(8000);
    h.drv.postEvent();
    h.device.process(2);
    h.device.transportReset();
    await h.until(() => h.drv.events.length === 1 && host.closed, 'event and host socket closed');
    assert.equal(h.drv.events[0], 0, 'VIRTIO_VSOCK_EVENT_TRANSPORT_RESET');
    assert.equal(h.device.openConnections, 0);
    // Pending until the driver gives an event buffer.
    h.device.transportReset(5);
    await h.idle(10);
    assert.equal(h.drv.events.length, 1);
    assert.equal(h.config.getBigUint64(0, true), 5n, 'the new CID is in the configuration space');
    h.drv.postEvent();
    h.device.process(2);
    await h.until(() => h.drv.events.length === 2, 'second event');
  });

  test('driver reset drops every connection and keeps listening', async () => {
    const { host } = await h.hostConnect(8100);
    h.device.reset();
    await h.until(() => host.closed, 'host socket closed by the reset');
    assert.equal(h.device.openConnections, 0);
    // A CONNECT with no driver is refused; the listener still accepts.
    const early = h.client();
    early.write('CONNECT 1\n');
    await h.until(() => early.closed, 'refused without a driver');
  });
});

/**
 * Unix sockets connect at once, so the asynchronous path (EINPROGRESS, then writability and SO_ERROR)
 * is driven here by a host that reports every connect as still in progress, over the real sockets.
 */
describe('virtio-vsock: a guest connect that completes in the background', () => {
  let refuse = false;
  const wrap = (host: VsockHost): VsockHost => ({
    listener: host.listener,
    createTimer: () => host.createTimer(),
    connect(path: string) {
      const { stream } = host.connect(path);
      const s: VsockStream = {
        fd: stream.fd,
        recv: (b, peek) => stream.recv(b, peek),
        send: (b) => stream.send(b),
        shutdownWrite: () => stream.shutdownWrite(),
        connectResult: () => (refuse ? 111 : stream.connectResult()),
        close: () => stream.close(),
      };
      return { stream: s, inProgress: true };
    },
  });
  beforeEach(() => {
    refuse = false;
    h = new Harness({}, wrap);
    h.start();
  });
  afterEach(() => h.close());

  test('RESPONSE once the socket is writable and SO_ERROR is 0; RST when SO_ERROR says refused', async () => {
    let received = '';
    await h.server(5100, (s) => {
      s.on('data', (b: Buffer) => {
        received += b.toString();
      });
    });
    const g = await h.guestConnect(5100, 42000);
    assert.equal(h.device.counters.guestConnections, 1);
    g.send(VSOCK_OP.RW, Buffer.from('after an async connect'));
    await h.until(() => received === 'after an async connect', 'data at the server');
    refuse = true;
    const r = new GuestConn(h, 42001, 5100);
    r.send(VSOCK_OP.REQUEST);
    await r.expect(VSOCK_OP.RST, 'RST for the failed connect');
    assert.equal(h.device.counters.refused, 1);
    assert.equal(h.device.openConnections, 1);
  });
});
