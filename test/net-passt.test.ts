/**
 * The user-mode network against the real passt (Debian's, installed by scripts/setup.sh), with no
 * guest: the supervisor starts passt, PasstNet connects to it, and frames a guest would send are
 * written to it: a DHCP DISCOVER gets an OFFER of an address with passt's MTU, an ARP request for the
 * gateway gets a reply. Then passt is killed: one line says so, the link is down, vireo starts passt
 * again by itself and the link and DHCP come back; a missing passt gives one line and a link that stays
 * down, nothing thrown; port forwards given at start, and replaced at run time by a new passt. Real
 * passt, no stand-ins.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { type AddressInfo, connect, createServer } from 'node:net';
import { test } from 'node:test';
import { PasstNet } from '../src/backends/passt.js';
import { PasstSupervisor } from '../src/backends/passt-process.js';
import { VIRTIO_NET_HDR_LEN } from '../src/devices/virtio/net.js';
import { arpRequest, dhcpDiscover, parseArpReply, parseDhcp, parseTcp, tcpSegment } from './support/frames.js';

const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const passtThere = spawnSync('sh', ['-c', `command -v "${process.env.VIREO_PASST || 'passt'}"`]).status === 0;

interface Rig {
  sup: PasstSupervisor;
  net: PasstNet;
  lines: string[];
}

function rig(binary?: string): Rig {
  const lines: string[] = [];
  let net: PasstNet | undefined;
  const sup = new PasstSupervisor({ id: 'u0', binary, wake: () => net?.refresh(), log: (l) => lines.push(l) });
  net = new PasstNet(sup.spec);
  return { sup, net, lines };
}

async function until(what: string, ms: number, ok: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

function send(net: PasstNet, frame: Uint8Array): void {
  const n = net.write([new Uint8Array(VIRTIO_NET_HDR_LEN), frame], 2);
  assert.equal(n, VIRTIO_NET_HDR_LEN + frame.length);
  net.flush();
}

/** Frames from passt until `pick` likes one (each with its virtio header checked and taken off). */
async function answer<T>(net: PasstNet, ms: number, pick: (f: Uint8Array) => T | undefined): Promise<T> {
  const buf = new Uint8Array(VIRTIO_NET_HDR_LEN + 65550);
  const end = Date.now() + ms;
  for (;;) {
    const n = net.read([buf], 1);
    if (n !== undefined) {
      assert.deepEqual(buf.subarray(0, VIRTIO_NET_HDR_LEN), new Uint8Array(VIRTIO_NET_HDR_LEN), 'a plain header');
      const got = pick(buf.slice(VIRTIO_NET_HDR_LEN, n));
      if (got !== undefined) return got;
      continue;
    }
    if (Date.now() > end) throw new Error(`no answer from passt in ${ms} ms`);
    await sleep(10);
  }
}

async function dhcp(net: PasstNet, xid: number): Promise<ReturnType<typeof parseDhcp>> {
  send(net, dhcpDiscover(MAC, xid));
  return answer(net, 5000, (f) => {
    const d = parseDhcp(f);
    return d && d.xid === xid ? d : undefined;
  });
}

test('passt: DHCP and ARP over the socket; killed, it is reported in one line and comes back', {
  timeout: 60_000,
}, async () => {
  assert.ok(passtThere, 'passt is not installed: run scripts/setup.sh (apt-get install passt)');
  const r = rig();
  try {
    await until('passt to serve', 15_000, () => r.net.linkUp());
    assert.equal(await r.sup.whenUp(5000), true);
    const offer = await dhcp(r.net, 0x1234);
    assert.equal(offer?.type, 2, 'DHCPOFFER');
    assert.match(offer?.yiaddr ?? '', /^\d+\.\d+\.\d+\.\d+$/);
    assert.notEqual(offer?.yiaddr, '0.0.0.0');
    assert.equal(offer?.mtu, 65520, "passt's MTU, as vireo offers it to the guest");
    const router = (offer?.router ?? '').split('.').map(Number);
    assert.equal(router.length, 4, 'a router is announced');
    const guest = (offer?.yiaddr ?? '').split('.').map(Number);
    send(r.net, arpRequest(MAC, guest, router));
    const arp = await answer(r.net, 5000, (f) => parseArpReply(f));
    assert.equal(arp.ip, offer?.router, 'the gateway answers ARP');
    assert.deepEqual(r.lines, [], 'nothing to report while passt serves');

    // passt dies: one line, the link goes down, vireo starts it again.
    const pid = r.sup.status().pid;
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    await until('the link to go down', 5000, () => {
      r.net.read([new Uint8Array(2048)], 1);
      return !r.net.linkUp();
    });
    await until('the report', 5000, () => r.lines.length > 0);
    assert.equal(r.lines.length, 1, r.lines.join('\n'));
    assert.match(
      r.lines[0] as string,
      /^vireo: net u0: passt (exited \(killed by SIGKILL\)|stopped serving \(it closed the connection\)); the guest's link is down, vireo restarts passt/,
    );
    assert.throws(() => send(r.net, dhcpDiscover(MAC, 1)), /ENOTCONN/, 'frames meanwhile are dropped');
    await until('passt to serve again', 15_000, () => r.net.linkUp());
    assert.notEqual(r.sup.status().pid, pid);
    assert.equal((await dhcp(r.net, 0x5678))?.type, 2, 'DHCP again from the new passt');
    await until('the line that says so', 2000, () => r.lines.length === 2);
    assert.match(r.lines[1] as string, /^vireo: net u0: passt serves again; the guest's link is up$/);
    assert.ok(r.sup.status().starts >= 2);
  } finally {
    r.net.close();
    r.sup.dispose();
  }
});

test('passt missing: one line, the link stays down, nothing thrown', { timeout: 20_000 }, async () => {
  const r = rig('/nonexistent/passt');
  try {
    await until('the report', 5000, () => r.lines.length > 0);
    await sleep(1200); // a retry or two: no second line
    assert.equal(r.lines.length, 1, r.lines.join('\n'));
    assert.match(
      r.lines[0] as string,
      /^vireo: net u0: \/nonexistent\/passt is not installed \(apt-get install passt, or set VIREO_PASST to its path\); the guest's link is down/,
    );
    assert.equal(r.net.linkUp(), false);
    assert.equal(r.sup.status().state, 'down');
    assert.ok(r.sup.status().starts >= 2, 'retried');
  } finally {
    r.net.close();
    r.sup.dispose();
  }
});

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A TCP port nobody listens on now. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

test('passt: port forwards at start and replaced at run time (a new passt, no outage reported)', {
  timeout: 60_000,
}, async () => {
  assert.ok(passtThere, 'passt is not installed: run scripts/setup.sh (apt-get install passt)');
  const [p1, p2] = [await freePort(), await freePort()];
  const lines: string[] = [];
  let net: PasstNet | undefined;
  const sup = new PasstSupervisor({
    id: 'u1',
    forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: p1, guestPort: 80 }],
    wake: () => net?.refresh(),
    log: (l) => lines.push(l),
  });
  net = new PasstNet(sup.spec);
  try {
    assert.equal(await sup.whenUp(15_000), true);
    assert.equal(await accepts(p1), true, `passt listens on ${p1}`);
    assert.equal(await accepts(p2), false);
    const pid = sup.status().pid;
    assert.equal(await sup.setForwards([{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: p2, guestPort: 80 }]), true);
    assert.ok(net.linkUp());
    assert.notEqual(sup.status().pid, pid, 'a new passt');
    assert.equal(await accepts(p2), true, `the new forward ${p2}`);
    assert.equal(await accepts(p1), false, 'the old one is gone');
    assert.deepEqual(lines, [], 'a restart vireo asked for is not an outage');
  } finally {
    net.close();
    sup.dispose();
  }
});

test("passt: the egress policy keeps the guest off the host's loopback until allowHost, then a SYN gets through", {
  timeout: 60_000,
}, async () => {
  assert.ok(passtThere, 'passt is not installed: run scripts/setup.sh (apt-get install passt)');
  // A host service on loopback: through passt it is the gateway address's port (passt's gateway mapping).
  let accepted = 0;
  const srv = createServer((s) => {
    accepted++;
    s.destroy();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  const r = rig();
  try {
    await until('passt to serve', 15_000, () => r.net.linkUp());
    const offer = await dhcp(r.net, 0x4321);
    const router = (offer?.router ?? '').split('.').map(Number);
    const guest = (offer?.yiaddr ?? '').split('.').map(Number);
    assert.equal(router.length, 4, 'a router is announced');
    send(r.net, arpRequest(MAC, guest, router));
    const gwMac = (await answer(r.net, 5000, (f) => parseArpReply(f))).mac;
    const syn = (sport: number) => tcpSegment(MAC, gwMac, guest, router, sport, port, 0x02);
    // Default policy: the SYN never reaches passt.
    send(r.net, syn(40001));
    await sleep(1500);
    assert.equal(accepted, 0, 'the host service saw no connection');
    assert.equal(r.sup.egressDrops().host, 1, 'one frame dropped as bound for the host');
    // allowHost at run time: the next SYN reaches the service and passt answers with a SYN+ACK.
    r.sup.setEgress({ allow: [], deny: [], allowHost: true });
    send(r.net, syn(40002));
    const synAck = await answer(r.net, 5000, (f) => {
      const t = parseTcp(f);
      return t && t.dport === 40002 ? t : undefined;
    });
    assert.equal(synAck.flags & 0x12, 0x12, 'SYN+ACK');
    assert.equal(synAck.sport, port);
    await until('the host service to accept', 5000, () => accepted === 1);
    // Denied by CIDR, even with the host open: nothing more reaches it.
    r.sup.setEgress({ allow: [], deny: [`${router.join('.')}/32`], allowHost: true });
    send(r.net, syn(40003));
    await sleep(1500);
    assert.equal(accepted, 1);
    assert.equal(r.sup.egressDrops().denied, 1);
    assert.deepEqual(r.lines, [], 'nothing to report: the policy changes without a restart');
    assert.equal(r.sup.status().starts, 1, 'the same passt throughout');
  } finally {
    r.net.close();
    r.sup.dispose();
    srv.close();
  }
});
