/**
 * The TAP backend against the real kernel. First its ABI: ioctl numbers, flags and struct ifreq from
 * <linux/if_tun.h> and <net/if.h>, and virtio-net's feature bits and header from <linux/virtio_net.h>,
 * through a C probe. Then, in a network namespace of its own (created and always deleted here), a TAP
 * with 10.0.2.1/24 driven by VirtioNet over real guest memory with a mock guest driver and a real epoll:
 * the kernel answers an ARP request and an ICMP echo; UDP towards the guest arrives checksum-offloaded
 * and a TCP stream as TSO frames spread over several receive buffers (num_buffers > 1), which proves the
 * negotiated offloads reached the TAP; a frame the TAP refuses is dropped and counted; a frame larger
 * than the guest's buffers is dropped (a spare byte tells it from one that fits). The namespace part runs in
 * a child process started with `ip netns exec` (this same file, with VIREO_NET_TAP_CHILD set).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  closeTap,
  IFF,
  IFNAMSIZ,
  IFREQ_FLAGS_OFFSET,
  IFREQ_SIZE,
  openTap,
  Tap,
  TUN_F,
  TUN_IOCTL,
} from '../src/backends/tap.js';
import { VireoError } from '../src/common/errors.js';
import { bit, type Poller, VIRTIO_ID } from '../src/devices/virtio/device.js';
import {
  NET_OFFLOAD,
  VIRTIO_NET_F,
  VIRTIO_NET_HDR_LEN,
  VIRTIO_NET_S_LINK_UP,
  VirtioNet,
} from '../src/devices/virtio/net.js';
import * as sys from '../src/os/sys.js';
import { compileAndRunC } from './support/cc.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const TAP_NAME = 'vtap0';
const HOST_IP = [10, 0, 2, 1];
const GUEST_IP = [10, 0, 2, 2];
const GUEST_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const HDR = VIRTIO_NET_HDR_LEN;

// --- the ABI, proven against the kernel headers -------------------------------------------------

function abiProbe(): string {
  const lines: string[] = [];
  const emit = (key: string, expr: string) => lines.push(`  printf("%s=%lu\\n", "${key}", (unsigned long)(${expr}));`);
  for (const k of Object.keys(TUN_IOCTL)) emit(`ioctl.${k}`, k);
  for (const k of Object.keys(IFF)) emit(`iff.${k}`, `IFF_${k}`);
  for (const k of Object.keys(TUN_F)) emit(`tunf.${k}`, `TUN_F_${k}`);
  for (const k of Object.keys(VIRTIO_NET_F)) emit(`netf.${k}`, `VIRTIO_NET_F_${k}`);
  emit('IFNAMSIZ', 'IFNAMSIZ');
  emit('sizeof.ifreq', 'sizeof(struct ifreq)');
  emit('offsetof.ifr_flags', 'offsetof(struct ifreq, ifr_flags)');
  emit('sizeof.virtio_net_hdr_v1', 'sizeof(struct virtio_net_hdr_v1)');
  emit('sizeof.virtio_net_hdr_mrg_rxbuf', 'sizeof(struct virtio_net_hdr_mrg_rxbuf)');
  emit('offsetof.num_buffers', 'offsetof(struct virtio_net_hdr_v1, num_buffers)');
  emit('VIRTIO_NET_S_LINK_UP', 'VIRTIO_NET_S_LINK_UP');
  emit('VIRTIO_ID_NET', 'VIRTIO_ID_NET');
  return [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <sys/ioctl.h>',
    '#include <net/if.h>',
    '#include <linux/if_tun.h>',
    '#include <linux/virtio_ids.h>',
    '#include <linux/virtio_net.h>',
    `int main(void) {\n${lines.join('\n')}\n  return 0;\n}`,
    '',
  ].join('\n');
}

// --- frames ---------------------------------------------------------------------------------------

function checksum(b: Uint8Array, init = 0): number {
  let s = init;
  for (let i = 0; i + 1 < b.length; i += 2) s += ((b[i] as number) << 8) | (b[i + 1] as number);
  if (b.length & 1) s += (b[b.length - 1] as number) << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

const pseudoSum = (src: number[], dst: number[], proto: number, len: number): number =>
  ((src[0] as number) << 8) +
  (src[1] as number) +
  ((src[2] as number) << 8) +
  (src[3] as number) +
  ((dst[0] as number) << 8) +
  (dst[1] as number) +
  ((dst[2] as number) << 8) +
  (dst[3] as number) +
  proto +
  len;

function ether(dst: Uint8Array, type: number, payload: Uint8Array, vnet = Buffer.alloc(HDR)): Buffer {
  const h = Buffer.alloc(14);
  h.set(dst, 0);
  h.set(GUEST_MAC, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([vnet, h, payload]);
}

function ipv4(proto: number, payload: Uint8Array): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(0x4000, 6); // DF
  h[8] = 64;
  h[9] = proto;
  h.set(GUEST_IP, 12);
  h.set(HOST_IP, 16);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, payload]);
}

function arpRequest(): Buffer {
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0); // Ethernet
  a.writeUInt16BE(0x0800, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(1, 6); // request
  a.set(GUEST_MAC, 8);
  a.set(GUEST_IP, 14);
  a.set(HOST_IP, 24);
  return ether(Uint8Array.of(255, 255, 255, 255, 255, 255), 0x0806, a);
}

function icmpEcho(dst: Uint8Array, id: number, seq: number, data: Uint8Array): Buffer {
  const m = Buffer.alloc(8 + data.length);
  m[0] = 8;
  m.writeUInt16BE(id, 4);
  m.writeUInt16BE(seq, 6);
  m.set(data, 8);
  m.writeUInt16BE(checksum(m), 2);
  return ether(dst, 0x0800, ipv4(1, m));
}

function tcpSegment(dst: Uint8Array, sport: number, dport: number, seq: number, ack: number, flags: number): Buffer {
  const syn = flags & 0x02;
  const t = Buffer.alloc(syn ? 24 : 20);
  t.writeUInt16BE(sport, 0);
  t.writeUInt16BE(dport, 2);
  t.writeUInt32BE(seq >>> 0, 4);
  t.writeUInt32BE(ack >>> 0, 8);
  t[12] = (t.length / 4) << 4;
  t[13] = flags;
  t.writeUInt16BE(65535, 14); // window
  if (syn) t.set([2, 4, 0x05, 0xb4], 20); // MSS 1460
  t.writeUInt16BE(checksum(t, pseudoSum(GUEST_IP, HOST_IP, 6, t.length)), 16);
  return ether(dst, 0x0800, ipv4(6, t));
}

/** A received frame: its virtio-net header, the Ethernet frame, and how many chains it took. */
interface Rx {
  hdr: Buffer;
  eth: Buffer;
  chains: number;
}
const ethType = (f: Rx): number => f.eth.readUInt16BE(12);
const ipProto = (f: Rx): number => (ethType(f) === 0x0800 ? (f.eth[23] as number) : -1);

// --- the namespace part ---------------------------------------------------------------------------

/** Poller over a real epoll, driven by the child's wait loop. */
class EpollPoller implements Poller {
  readonly ep = new sys.Epoll();
  private readonly handlers = new Map<number, (events: number) => void>();
  add(fd: number, events: number, handler: (events: number) => void): void {
    this.ep.add(fd, events, fd);
    this.handlers.set(fd, handler);
  }
  modify(fd: number, events: number): void {
    this.ep.modify(fd, events, fd);
  }
  remove(fd: number): void {
    this.ep.remove(fd);
    this.handlers.delete(fd);
  }
  poll(): void {
    this.ep.wait(0, (token, events) => this.handlers.get(token)?.(events));
  }
}

async function tapChild(name: string): Promise<void> {
  const say = (s: string): void => {
    process.stdout.write(`${s}\n`);
  };
  const tapMac = Buffer.from(
    readFileSync(`/sys/class/net/${name}/address`, 'utf8')
      .trim()
      .split(':')
      .map((h) => Number.parseInt(h, 16)),
  );
  const spec = openTap(name);
  assert.equal(spec.name, name);
  assert.equal(spec.offloads & NET_OFFLOAD.CSUM, NET_OFFLOAD.CSUM, 'the TAP takes checksum offload');
  say(`opened ${name}: fd ${spec.fd}, offloads 0x${spec.offloads.toString(16)}, TAP MAC ${tapMac.toString('hex')}`);
  // Errors a user meets, each one line that says what to do.
  assert.throws(() => openTap(name), /cannot attach to TAP vtap0: EBUSY; another process is attached/);
  assert.throws(() => openTap('lo'), /cannot attach to TAP lo: EINVAL; an interface of that name exists but is not/);
  // What the kernel says it set up: the flags, and the 12-byte header (virtio_net_hdr_v1).
  const word = Buffer.alloc(4);
  sys.ioctl(spec.fd, TUN_IOCTL.TUNGETVNETHDRSZ, word, 'TUNGETVNETHDRSZ');
  assert.equal(word.readInt32LE(0), HDR, 'TUNGETVNETHDRSZ');
  const ifr = Buffer.alloc(IFREQ_SIZE);
  sys.ioctl(spec.fd, TUN_IOCTL.TUNGETIFF, ifr, 'TUNGETIFF');
  assert.equal(ifr.toString('latin1', 0, name.length), name);
  const want = IFF.TAP | IFF.NO_PI | IFF.VNET_HDR;
  assert.equal(ifr.readUInt16LE(IFREQ_FLAGS_OFFSET) & want, want, 'TUNGETIFF: TAP, NO_PI, VNET_HDR');
  // A TAP that does not exist yet is created (we have CAP_NET_ADMIN here), and goes away when closed.
  const fresh = openTap('vtap9');
  assert.ok(existsSync('/sys/class/net/vtap9'), 'created');
  closeTap(fresh);
  assert.ok(!existsSync('/sys/class/net/vtap9'), 'gone once closed');

  const poller = new EpollPoller();
  const dev = new VirtioNet(new Tap(spec), { mac: GUEST_MAC });
  dev.attach(poller);
  const drv = new MockMmioDriver(dev, 32 << 20);
  let rx: MockSplitQueue;
  let tx: MockSplitQueue;
  const bufs = new Map<number, { addr: number; len: number }>();
  const post = (count: number, len: number): void => {
    for (let i = 0; i < count; i++) {
      const addr = drv.alloc(len);
      const head = rx.addChain([{ addr, len, write: true }]);
      assert.notEqual(head, undefined);
      bufs.set(head as number, { addr, len });
    }
    drv.notify(0);
  };
  const start = (features: bigint, count: number, len: number): void => {
    drv.write(R.STATUS, 0);
    bufs.clear();
    [rx, tx] = drv.probe(256, features) as [MockSplitQueue, MockSplitQueue];
    post(count, len);
  };
  const send = (f: Buffer): void => {
    const a = drv.alloc(f.length);
    drv.mem.write(a, f);
    // Header and frame in separate buffers, as Linux sends them.
    const head = tx.addChain([
      { addr: a, len: HDR, write: false },
      { addr: a + HDR, len: f.length - HDR, write: false },
    ]);
    assert.notEqual(head, undefined);
    drv.notify(1);
    for (const u of tx.takeUsed()) tx.recycle(u.id);
  };
  /** Frames received so far; each chain is given back to the guest's ring as the driver would. */
  const pending: { id: number; len: number }[] = [];
  const take = (): Rx[] => {
    pending.push(...rx.takeUsed());
    const out: Rx[] = [];
    while (pending.length > 0) {
      const first = pending[0] as { id: number; len: number };
      const b = bufs.get(first.id) as { addr: number; len: number };
      const n = drv.mem.read(b.addr + 10, 2).readUInt16LE(0);
      assert.ok(n >= 1 && n <= 64, `num_buffers ${n}`);
      if (pending.length < n) break;
      const parts = pending.splice(0, n).map((u) => {
        const c = bufs.get(u.id) as { addr: number; len: number };
        assert.ok(u.len <= c.len, 'used length within the buffer');
        const data = drv.mem.read(c.addr, u.len);
        rx.recycle(u.id);
        bufs.delete(u.id);
        const head = rx.addChain([{ addr: c.addr, len: c.len, write: true }]) as number;
        bufs.set(head, c);
        return data;
      });
      const all = Buffer.concat(parts);
      out.push({ hdr: all.subarray(0, HDR), eth: all.subarray(HDR), chains: n });
    }
    if (out.length > 0) drv.notify(0);
    return out;
  };
  /** Frames seen and not matched, for the failure message. */
  const seen: string[] = [];
  /** Polls until a frame matches; `again` is re-sent every half second (the TAP's link comes up asynchronously). */
  const waitFor = async (what: string, pred: (f: Rx) => boolean, again?: () => void, ms = 5000): Promise<Rx> => {
    const deadline = Date.now() + ms;
    let resend = Date.now() + 500;
    while (Date.now() < deadline) {
      poller.poll();
      const got = take();
      const hit = got.find(pred);
      if (hit) return hit;
      for (const f of got)
        seen.push(`${f.eth.length}B ${f.hdr.toString('hex')} ${f.eth.subarray(12, 48).toString('hex')}`);
      if (again && Date.now() > resend) {
        again();
        resend = Date.now() + 500;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error(
      `no ${what} from the kernel within ${ms} ms; counters ${JSON.stringify(dev.counters)}; frames seen:\n${seen.slice(-20).join('\n')}`,
    );
  };

  try {
    // Every feature: MRG_RXBUF and all the offloads, 1536-byte receive buffers (as Linux posts them).
    start(drv.deviceFeatures(), 128, 1536);
    for (const b of [VIRTIO_NET_F.GUEST_CSUM, VIRTIO_NET_F.GUEST_TSO4, VIRTIO_NET_F.MRG_RXBUF])
      assert.ok(dev.features & bit(b), `feature ${b} offered over a real TAP`);

    send(arpRequest());
    const arp = await waitFor(
      'ARP reply',
      (f) =>
        ethType(f) === 0x0806 && f.eth.readUInt16BE(20) === 2 && f.eth.subarray(28, 32).equals(Buffer.from(HOST_IP)),
      () => send(arpRequest()),
    );
    assert.ok(arp.eth.subarray(22, 28).equals(tapMac), 'the reply gives the TAP MAC');
    assert.ok(arp.eth.subarray(0, 6).equals(GUEST_MAC), 'sent to the guest');
    say('ARP: the kernel answered who-has 10.0.2.1');

    const data = Buffer.from('vireo virtio-net over a real TAP, ICMP echo payload 0123456789');
    send(icmpEcho(tapMac, 0x1234, 1, data));
    const echo = await waitFor('ICMP echo reply', (f) => ipProto(f) === 1 && f.eth[34] === 0);
    assert.equal(echo.eth.readUInt16BE(38), 0x1234, 'echo id');
    assert.equal(echo.eth.readUInt16BE(40), 1, 'echo seq');
    assert.ok(echo.eth.subarray(42).equals(data), 'echo payload');
    assert.equal(checksum(echo.eth.subarray(34)), 0, 'the reply ICMP checksum is complete');
    say('ICMP: echo reply with the payload');

    // UDP from the host's stack: with GUEST_CSUM negotiated the TAP hands it over unchecksummed.
    const udp = createSocket('udp4');
    await new Promise<void>((r) => udp.bind(0, HOST_IP.join('.'), r));
    udp.send('offload me', 7777, GUEST_IP.join('.'));
    const u = await waitFor('UDP datagram', (f) => ipProto(f) === 17 && f.eth.readUInt16BE(36) === 7777);
    udp.close();
    assert.equal(
      u.hdr[0],
      1,
      `VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum offload reached the TAP (${u.hdr.toString('hex')})`,
    );
    assert.equal(u.hdr.readUInt16LE(6), 34, 'csum_start: the UDP header');
    assert.equal(u.hdr.readUInt16LE(8), 6, 'csum_offset: the UDP checksum');
    say('UDP: NEEDS_CSUM with csum_start 34, csum_offset 6');

    // TCP: a handshake by hand, then the host's stack sends 256 KiB: TSO frames larger than one buffer.
    const server = createServer((s) => {
      s.on('error', () => {}); // the RST below
      s.end(Buffer.alloc(256 * 1024, 0x5a));
    });
    await new Promise<void>((r) => server.listen(5555, HOST_IP.join('.'), r));
    const iss = 1_000_000;
    send(tcpSegment(tapMac, 40000, 5555, iss, 0, 0x02));
    const synAck = await waitFor('TCP SYN-ACK', (f) => ipProto(f) === 6 && ((f.eth[47] as number) & 0x12) === 0x12);
    const peerSeq = synAck.eth.readUInt32BE(38);
    send(tcpSegment(tapMac, 40000, 5555, iss + 1, peerSeq + 1, 0x10));
    const big = await waitFor(
      'TSO frame',
      (f) => ipProto(f) === 6 && f.hdr[1] === 1 && f.eth.length > 1514,
      undefined,
      10_000,
    );
    const tcpOff = 34 + (((big.eth[46] as number) >> 4) << 2);
    assert.ok(big.chains > 1, `a ${big.eth.length}-byte frame over ${big.chains} buffers (num_buffers)`);
    assert.ok(
      big.eth.subarray(tcpOff).every((b) => b === 0x5a),
      'the stream bytes, unchanged',
    );
    assert.ok(big.hdr.readUInt16LE(4) > 0, 'gso_size set');
    send(tcpSegment(tapMac, 40000, 5555, iss + 1, peerSeq + 1, 0x04)); // RST: done
    server.close();
    say(`TCP: a TSO frame of ${big.eth.length} bytes, gso_size ${big.hdr.readUInt16LE(4)}, over ${big.chains} buffers`);

    // A header the TAP refuses (unknown gso_type): that frame is dropped and counted, the next one works.
    const bad = Buffer.alloc(HDR);
    bad[1] = 0x42;
    const dropsBefore = dev.counters.txDropped;
    const refused = icmpEcho(tapMac, 0x1234, 2, data);
    bad.copy(refused, 0);
    send(refused);
    assert.equal(dev.counters.txDropped, dropsBefore + 1, 'the refused frame is dropped');
    assert.ok(dev.counters.tapErrors >= 1);
    send(icmpEcho(tapMac, 0x1234, 3, data));
    await waitFor('ICMP echo reply after the refused frame', (f) => ipProto(f) === 1 && f.eth.readUInt16BE(40) === 3);
    say(`TX error: refused frame dropped (txDropped ${dev.counters.txDropped}, tapErrors ${dev.counters.tapErrors})`);

    // Without MRG_RXBUF and with 200-byte buffers: a 1 KiB echo reply cannot fit and is dropped (the
    // TAP's spare byte gives it away); a small one right after fills the same buffer.
    const f0 = drv.deviceFeatures() & ~bit(VIRTIO_NET_F.MRG_RXBUF);
    start(f0, 8, 200);
    const rxDropped = dev.counters.rxDropped;
    send(icmpEcho(tapMac, 0x4321, 1, Buffer.alloc(1000, 7)));
    const deadline = Date.now() + 5000;
    while (dev.counters.rxDropped === rxDropped && Date.now() < deadline) {
      poller.poll();
      take();
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(dev.counters.rxDropped, rxDropped + 1, `the 1 KiB reply is dropped: ${JSON.stringify(dev.counters)}`);
    send(icmpEcho(tapMac, 0x4321, 2, Buffer.alloc(20, 8)));
    const small = await waitFor('a small echo reply', (f) => ipProto(f) === 1 && f.eth.readUInt16BE(40) === 2);
    assert.equal(small.chains, 1);
    say(`RX: oversized frame dropped (rxDropped ${dev.counters.rxDropped}), the next one delivered`);
    say(`counters ${JSON.stringify(dev.counters)}`);
    say('all checks passed');
  } finally {
    dev.close();
    poller.ep.close();
    drv.release();
    closeTap(spec);
  }
}

// --- the tests (or, in the namespace, the child) ---------------------------------------------------

if (process.env.VIREO_NET_TAP_CHILD === undefined) {
  test('TUN ioctl numbers, flags, struct ifreq and virtio-net constants match the kernel headers', () => {
    const real = new Map(
      compileAndRunC('net-abi-probe', abiProbe())
        .trim()
        .split('\n')
        .map((l) => {
          const [k, v] = l.split('=');
          return [k as string, Number(v)] as const;
        }),
    );
    const ours = new Map<string, number>();
    for (const [k, v] of Object.entries(TUN_IOCTL)) ours.set(`ioctl.${k}`, v);
    for (const [k, v] of Object.entries(IFF)) ours.set(`iff.${k}`, v);
    for (const [k, v] of Object.entries(TUN_F)) ours.set(`tunf.${k}`, v);
    for (const [k, v] of Object.entries(VIRTIO_NET_F)) ours.set(`netf.${k}`, Number(v));
    ours.set('IFNAMSIZ', IFNAMSIZ);
    ours.set('sizeof.ifreq', IFREQ_SIZE);
    ours.set('offsetof.ifr_flags', IFREQ_FLAGS_OFFSET);
    ours.set('sizeof.virtio_net_hdr_v1', HDR);
    ours.set('sizeof.virtio_net_hdr_mrg_rxbuf', HDR);
    ours.set('offsetof.num_buffers', 10);
    ours.set('VIRTIO_NET_S_LINK_UP', VIRTIO_NET_S_LINK_UP);
    ours.set('VIRTIO_ID_NET', VIRTIO_ID.net);
    const wrong = [...ours]
      .filter(([k, v]) => real.get(k) !== v)
      .map(([k, v]) => `${k}: vireo ${v}, header ${real.get(k)}`);
    assert.deepEqual(wrong, [], `differs from the kernel headers:\n${wrong.join('\n')}`);
    // The device's offload bits are the TAP's own values.
    assert.deepEqual(
      [NET_OFFLOAD.CSUM, NET_OFFLOAD.TSO4, NET_OFFLOAD.TSO6, NET_OFFLOAD.ECN, NET_OFFLOAD.UFO],
      [TUN_F.CSUM, TUN_F.TSO4, TUN_F.TSO6, TUN_F.TSO_ECN, TUN_F.UFO],
    );
    process.stderr.write(
      `TUNSETIFF=0x${TUN_IOCTL.TUNSETIFF.toString(16)} TUNSETOFFLOAD=0x${TUN_IOCTL.TUNSETOFFLOAD.toString(16)} ` +
        `TUNSETVNETHDRSZ=0x${TUN_IOCTL.TUNSETVNETHDRSZ.toString(16)}: ${ours.size} values checked\n`,
    );
  });

  test('openTap refuses a bad interface name with a one-line ConfigError', () => {
    for (const bad of ['', 'a-name-far-too-long', 'tap/0', 'tap 0', '..'])
      assert.throws(
        () => openTap(bad),
        (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_CONFIG' && !e.message.includes('\n'),
        bad,
      );
  });

  test('a real TAP in a network namespace: ARP, ICMP, checksum offload, TSO over MRG_RXBUF, errors', {
    timeout: 120_000,
  }, () => {
    const ip = spawnSync('ip', ['-V'], { encoding: 'utf8' });
    assert.ok(!ip.error, "the 'ip' command (iproute2) is missing: install it with 'apt-get install iproute2'");
    assert.ok(existsSync('/dev/net/tun'), 'no /dev/net/tun: load the tun module (modprobe tun)');
    const ns = `vireo-t${process.pid}`;
    const run = (...args: string[]): void => {
      const r = spawnSync('ip', args, { encoding: 'utf8' });
      assert.equal(r.status, 0, `ip ${args.join(' ')}: ${r.stderr.trim()} (network namespaces need root)`);
    };
    try {
      run('netns', 'add', ns);
      run('-n', ns, 'link', 'set', 'lo', 'up');
      run('-n', ns, 'tuntap', 'add', TAP_NAME, 'mode', 'tap');
      run('-n', ns, 'addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', TAP_NAME);
      run('-n', ns, 'link', 'set', TAP_NAME, 'up');
      const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, fileURLToPath(import.meta.url)], {
        encoding: 'utf8',
        env: { ...process.env, VIREO_NET_TAP_CHILD: TAP_NAME },
        timeout: 100_000,
      });
      process.stderr.write(r.stdout);
      assert.equal(
        r.status,
        0,
        `the namespace part failed (status ${r.status} ${r.signal ?? ''}):\n${r.stdout}\n${r.stderr}`,
      );
      assert.match(r.stdout, /all checks passed/);
    } finally {
      spawnSync('ip', ['netns', 'del', ns]);
    }
  });
} else {
  await tapChild(process.env.VIREO_NET_TAP_CHILD);
}
