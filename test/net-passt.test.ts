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
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { type AddressInfo, connect, createServer } from 'node:net';
import { test } from 'node:test';
import { PasstNet } from '../src/backends/passt.js';
import { PasstSupervisor } from '../src/backends/passt-process.js';
import { closeTap, openTap, Tap } from '../src/backends/tap.js';
import { VIRTIO_NET_HDR_LEN } from '../src/devices/virtio/net.js';
import {
  arpRequest,
  dhcpDiscover,
  parseArpReply,
  parseDhcp,
  parseTcp,
  parseTcpFull,
  tcpPacket,
  tcpSegment,
} from './support/frames.js';

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

test('passt: a host port forward reaches a stand-in guest server, both ways, through PasstNet and the egress policy', {
  timeout: 60_000,
}, async () => {
  assert.ok(passtThere, 'passt is not installed: run scripts/setup.sh (apt-get install passt)');
  const port = await freePort();
  let net: PasstNet | undefined;
  const lines: string[] = [];
  const sup = new PasstSupervisor({
    id: 'u3',
    forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: port, guestPort: 80 }],
    wake: () => net?.refresh(),
    log: (l) => lines.push(l),
  });
  net = new PasstNet(sup.spec);
  let client: ReturnType<typeof connect> | undefined;
  try {
    await until('passt to serve', 15_000, () => net.linkUp());
    const offer = await dhcp(net, 0x7777);
    const guest = (offer?.yiaddr ?? '').split('.').map(Number);
    const router = (offer?.router ?? '').split('.').map(Number);
    send(net, arpRequest(MAC, guest, router));
    const gwMac = (await answer(net, 5000, (f) => parseArpReply(f))).mac;
    // The host connects to the forward: passt opens the connection into the guest with a SYN.
    client = connect(port, '127.0.0.1');
    let got = '';
    client.on('data', (b: Buffer) => {
      got += b.toString('latin1');
    });
    client.on('error', () => {});
    client.write('host-says-hi\n');
    const syn = await answer(net, 10_000, (f) => {
      const t = parseTcpFull(f);
      return t && t.dport === 80 && (t.flags & 0x12) === 0x02 ? t : undefined;
    });
    const peer = syn.src.split('.').map(Number);
    const seg = (flags: number, seq: number, ack: number, payload?: Uint8Array) =>
      tcpPacket({
        mac: MAC,
        dstMac: gwMac,
        src: guest,
        dst: peer,
        sport: 80,
        dport: syn.sport,
        seq,
        ack,
        flags,
        payload,
      });
    const iss = 0x2000_0000;
    send(net, seg(0x12, iss, syn.seq + 1)); // SYN+ACK
    // passt completes the handshake and brings the host's bytes.
    const data = await answer(net, 10_000, (f) => {
      const t = parseTcpFull(f);
      return t && t.dport === 80 && t.payload.length > 0 ? t : undefined;
    });
    assert.equal(Buffer.from(data.payload).toString('latin1'), 'host-says-hi\n', "the host's bytes reached the guest");
    // The guest answers on the same connection: the bytes reach the host's client.
    const reply = new TextEncoder().encode('guest-says-hi\n');
    send(net, seg(0x18, iss + 1, data.seq + data.payload.length, reply)); // PSH+ACK
    await until("the guest's bytes at the host", 10_000, () => got.includes('\n'));
    assert.equal(got, 'guest-says-hi\n');
    assert.deepEqual(
      sup.egressDrops(),
      { malformed: 0, denied: 0, host: 0, 'not-allowed': 0 },
      'the replies of a forwarded flow pass the default policy',
    );
    assert.deepEqual(lines, []);
  } finally {
    client?.destroy();
    net.close();
    sup.dispose();
  }
});

/** A server in the namespace `ns` on port 80: it greets first, then prints what the client sent. */
const GREETER = `
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 80)); s.listen(4); print('listening', flush=True)
for i in range(2):
    c, a = s.accept()
    if i == 0: c.sendall(b'greeting-from-the-guest\\n')
    got = c.recv(100)
    if i == 1: c.sendall(b'reply:' + got)
    print('served', i, got, flush=True)
    c.close()
`;

test('passt: a host port forward into a real Linux TCP stack (a network namespace behind a TAP): a server that speaks first is heard, and one that answers', {
  timeout: 60_000,
}, async () => {
  assert.ok(passtThere, 'passt is not installed: run scripts/setup.sh (apt-get install passt)');
  assert.ok(existsSync('/dev/net/tun'), 'no /dev/net/tun: load the tun module (modprobe tun)');
  const ns = `vireo-fwd${process.pid}`;
  const ip = (...args: string[]): void => {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    assert.equal(r.status, 0, `ip ${args.join(' ')}: ${r.stderr?.trim()} (network namespaces need root)`);
  };
  const port = await freePort();
  let net: PasstNet | undefined;
  const lines: string[] = [];
  const sup = new PasstSupervisor({
    id: 'u4',
    forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: port, guestPort: 80 }],
    wake: () => net?.refresh(),
    log: (l) => lines.push(l),
  });
  net = new PasstNet(sup.spec);
  const tapName = `vfwd${process.pid % 10000}`;
  const spec = openTap(tapName);
  const tap = new Tap(spec);
  let server: ChildProcess | undefined;
  let shuttling = true;
  try {
    tap.setOffloads(0); // whole, checksummed frames from the kernel, as passt takes them
    ip('netns', 'add', ns);
    ip('link', 'set', tapName, 'netns', ns);
    await until('passt to serve', 15_000, () => net.linkUp());
    // The namespace is the guest: the address and gateway passt's DHCP would give (its offer).
    const offer = await dhcp(net, 0x9999);
    assert.ok(offer?.yiaddr && offer.router, 'an offer');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'link', 'set', tapName, 'address', '52:54:00:12:34:56', 'mtu', String(offer.mtu ?? 1500), 'up');
    ip('-n', ns, 'addr', 'add', `${offer.yiaddr}/24`, 'dev', tapName);
    ip('-n', ns, 'route', 'add', 'default', 'via', offer.router);
    // Frames both ways between the namespace's TAP and PasstNet, as the device would move them.
    const buf = [new Uint8Array(VIRTIO_NET_HDR_LEN + 65550)];
    let refused = 0;
    const shuttle = (async () => {
      while (shuttling) {
        let moved = 0;
        for (let n = tap.read(buf, 1); n !== undefined; n = tap.read(buf, 1), moved++)
          if (net.write([(buf[0] as Uint8Array).subarray(0, n)], 1) === 0) refused++;
        net.flush();
        net.service();
        for (let n = net.read(buf, 1); n !== undefined; n = net.read(buf, 1), moved++)
          tap.write([(buf[0] as Uint8Array).subarray(0, n)], 1);
        if (moved === 0) await sleep(2);
      }
    })();
    server = spawn('ip', ['netns', 'exec', ns, 'python3', '-c', GREETER, offer.yiaddr], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    server.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    server.stderr?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    await until('the guest server to listen', 10_000, () => out.includes('listening'));
    const talk = (first?: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const c = connect(port, '127.0.0.1');
        let got = '';
        const t = setTimeout(() => {
          c.destroy();
          reject(new Error(`nothing from the guest in 10 s (got ${JSON.stringify(got)}; guest: ${out})`));
        }, 10_000);
        c.on('connect', () => {
          if (first !== undefined) c.write(first);
        });
        c.on('data', (b: Buffer) => {
          got += b.toString();
          if (got.includes('\n')) {
            clearTimeout(t);
            c.end('bye\n');
            resolve(got);
          }
        });
        c.on('error', reject);
      });
    // Server first (SMTP's way): Debian 12's passt alone never completes this handshake.
    assert.equal(await talk(), 'greeting-from-the-guest\n', 'the greeting came through the forward');
    // Client first (HTTP's way).
    assert.equal(await talk('question\n'), 'reply:question\n');
    assert.equal(refused, 0);
    assert.deepEqual(
      sup.egressDrops(),
      { malformed: 0, denied: 0, host: 0, 'not-allowed': 0 },
      'replies of forwarded flows pass',
    );
    assert.deepEqual(lines, []);
    shuttling = false;
    await shuttle;
  } finally {
    shuttling = false;
    server?.kill();
    net.close();
    sup.dispose();
    closeTap(spec);
    spawnSync('ip', ['netns', 'del', ns]);
  }
});
