/**
 * The user network's egress policy (backends/egress.ts) on frames as a guest and passt send them:
 * the host's own addresses refused by default (but DNS on port 53 and replies on a forwarded flow),
 * deny before allow, names learned from DNS answers (CNAME chains, compression), the link's own
 * traffic (ARP, DHCP, NDP) always through; the CLI's and TS API's policy checked; and hostile frames
 * (random bytes, truncations, DNS pointer loops) never throw and never pass what they should not.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { EgressFilter, type EgressRules } from '../src/backends/egress.js';
import { hostAddresses, parseCidr, parseNamePattern } from '../src/backends/egress-address.js';
import {
  EgressChannelFilter,
  egressDrops,
  newEgressChannel,
  writeEgressRules,
} from '../src/backends/egress-channel.js';
import { ConfigError } from '../src/common/errors.js';
import { parseNet, validateEgress } from '../src/config/net.js';
import { arpRequest, dhcpDiscover } from './support/frames.js';

const GUEST = [10, 0, 2, 15];
const GATEWAY = [10, 0, 2, 2];
const HOST_NETS = ['127.0.0.0/8', '10.0.2.2/32', '::1/128', 'fe80::/10'];
const MAC = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);

const rules = (r: Partial<EgressRules> = {}): EgressRules => ({
  allow: [],
  deny: [],
  allowHost: false,
  hostNets: HOST_NETS,
  ...r,
});

function eth(type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set([2, 0, 0, 0, 0, 1], 0);
  f.set(MAC, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  f.set(payload, 14);
  return f;
}

/** An IPv4 packet (no checksums: the policy does not read them) with a transport header. */
function ipv4(src: number[], dst: number[], proto: number, l4: Uint8Array, fragOffset = 0): Uint8Array {
  const ip = new Uint8Array(20 + l4.length);
  ip[0] = 0x45;
  const len = ip.length;
  ip[2] = len >> 8;
  ip[3] = len & 0xff;
  ip[6] = (fragOffset >> 8) & 0x1f;
  ip[7] = fragOffset & 0xff;
  ip[8] = 64;
  ip[9] = proto;
  ip.set(src, 12);
  ip.set(dst, 16);
  ip.set(l4, 20);
  return eth(0x0800, ip);
}

function ipv6(src: Uint8Array, dst: Uint8Array, next: number, l4: Uint8Array): Uint8Array {
  const ip = new Uint8Array(40 + l4.length);
  ip[0] = 0x60;
  ip[4] = l4.length >> 8;
  ip[5] = l4.length & 0xff;
  ip[6] = next;
  ip[7] = 64;
  ip.set(src, 8);
  ip.set(dst, 24);
  ip.set(l4, 40);
  return eth(0x86dd, ip);
}

const v6 = (s: string): Uint8Array => {
  const c = parseCidr(s);
  assert.ok(c, s);
  return c.bytes;
};

function tcp(sport: number, dport: number, flags: number): Uint8Array {
  const t = new Uint8Array(20);
  t.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff], 0);
  t[12] = 0x50;
  t[13] = flags;
  return t;
}
const SYN = 0x02;
const SYN_ACK = 0x12;
const ACK = 0x10;

function udp(sport: number, dport: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const u = new Uint8Array(8 + body.length);
  u.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, (u.length >> 8) & 0xff, u.length & 0xff], 0);
  u.set(body, 8);
  return u;
}

const qname = (name: string): number[] => [
  ...name.split('.').flatMap((l) => [l.length, ...Buffer.from(l, 'latin1')]),
  0,
];

/** A DNS response for `name`: a CNAME chain then A/AAAA records, names after the question compressed. */
function dnsAnswer(
  name: string,
  answers: ({ cname: string } | { a: number[] } | { aaaa: Uint8Array })[],
  opts: { rcode?: number } = {},
): Uint8Array {
  const out: number[] = [0x12, 0x34, 0x81, 0x80 | (opts.rcode ?? 0), 0, 1, 0, answers.length, 0, 0, 0, 0];
  out.push(...qname(name), 0, 1, 0, 1);
  let owner = 12; // the question's name
  for (const a of answers) {
    out.push(0xc0 | (owner >> 8), owner & 0xff);
    if ('cname' in a) {
      const target = qname(a.cname);
      out.push(0, 5, 0, 1, 0, 0, 0, 60, target.length >> 8, target.length & 0xff, ...target);
      owner = out.length - target.length;
    } else if ('a' in a) out.push(0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...a.a);
    else out.push(0, 28, 0, 1, 0, 0, 0, 60, 0, 16, ...a.aaaa);
  }
  return Uint8Array.from(out);
}

const fromDns = (body: Uint8Array): Uint8Array => ipv4(GATEWAY, GUEST, 17, udp(53, 40000, body));
const tcpOut = (dst: number[], dport: number, flags = SYN, sport = 40000): Uint8Array =>
  ipv4(GUEST, dst, 6, tcp(sport, dport, flags));

test('egress: the host is refused by default, DNS to it and the link traffic are not; the rest goes', () => {
  const f = new EgressFilter(rules());
  assert.equal(f.allowOut(tcpOut(GATEWAY, 8080)), false, "the gateway is the host's loopback");
  assert.equal(f.allowOut(tcpOut([127, 0, 0, 1], 22)), false);
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 17, udp(40000, 53))), true, 'DNS through passt');
  assert.equal(f.allowOut(tcpOut(GATEWAY, 53)), true, 'DNS over TCP too');
  assert.equal(f.allowOut(arpRequest(MAC, GUEST, GATEWAY)), true);
  assert.equal(f.allowOut(dhcpDiscover(MAC, 7)), true);
  assert.equal(f.allowOut(tcpOut([93, 184, 216, 34], 443)), true, 'the outside is open without an allow list');
  const ns = new Uint8Array(24);
  ns[0] = 135;
  assert.equal(f.allowOut(ipv6(v6('fe80::5054:ff:fe12:3456'), v6('fe80::1'), 58, ns)), true, 'NDP');
  assert.equal(
    f.allowOut(ipv6(v6('fe80::5054:ff:fe12:3456'), v6('fe80::1'), 6, tcp(40000, 22, SYN))),
    false,
    "passt's link-local address is the host",
  );
  assert.equal(f.allowOut(ipv6(v6('2001:db8::5'), v6('::1'), 17, udp(1, 9))), false);
  assert.equal(f.allowOut(eth(0x8100, new Uint8Array(60))), false, 'VLAN tags and other EtherTypes are dropped');
  assert.deepEqual(f.dropped, { malformed: 1, denied: 0, host: 4, 'not-allowed': 0 });
  const open = new EgressFilter(rules({ allowHost: true }));
  assert.equal(open.allowOut(tcpOut(GATEWAY, 8080)), true, 'allowHost opens it');
});

test('egress: replies on a flow a host port forward opened pass, and only those', () => {
  const f = new EgressFilter(rules());
  // passt opens a forwarded connection: from the gateway (the host's loopback), port 51000, to guest port 80.
  f.observeIn(ipv4(GATEWAY, GUEST, 6, tcp(51000, 80, SYN)));
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 6, tcp(80, 51000, SYN_ACK))), true);
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 6, tcp(80, 51000, ACK))), true);
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 6, tcp(80, 51001, SYN))), false, 'another host port');
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 6, tcp(81, 51000, SYN))), false, 'from another guest port');
  // A SYN+ACK from passt is an answer to the guest, not a forward: it opens nothing.
  f.observeIn(ipv4(GATEWAY, GUEST, 6, tcp(22, 40001, SYN_ACK)));
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 6, tcp(40001, 22, ACK))), false);
  // UDP through a forward, from the host's address.
  f.observeIn(ipv4(GATEWAY, GUEST, 17, udp(52000, 5353)));
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 17, udp(5353, 52000))), true);
  // UDP from elsewhere is a reply and opens nothing towards the host.
  f.observeIn(ipv4([1, 1, 1, 1], GUEST, 17, udp(52001, 5354)));
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 17, udp(5354, 52001))), false);
});

test('egress: deny before allow, CIDRs of both families, and an allow list closes the rest', () => {
  const f = new EgressFilter(rules({ allow: ['93.184.216.0/24', '2001:db8::/32'], deny: ['93.184.216.34'] }));
  assert.equal(f.allowOut(tcpOut([93, 184, 216, 35], 80)), true);
  assert.equal(f.allowOut(tcpOut([93, 184, 216, 34], 80)), false, 'deny wins');
  assert.equal(f.allowOut(tcpOut([8, 8, 8, 8], 53)), false, 'not on the allow list, even DNS');
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 17, udp(40000, 53))), true, "the host's DNS still answers");
  assert.equal(f.allowOut(ipv6(v6('2001:db8::5'), v6('2001:db8:1::9'), 6, tcp(1, 80, SYN))), true);
  assert.equal(f.allowOut(ipv6(v6('2001:db8::5'), v6('2001:db9::9'), 6, tcp(1, 80, SYN))), false);
  assert.equal(f.dropped.denied, 1);
  assert.equal(f.dropped['not-allowed'], 2);
  // A fragment after the first: judged by its address alone.
  assert.equal(f.allowOut(ipv4(GUEST, [93, 184, 216, 35], 6, new Uint8Array(8), 100)), true);
  assert.equal(f.allowOut(ipv4(GUEST, GATEWAY, 17, new Uint8Array(8), 100)), false, 'no port makes it DNS');
  const deny10 = new EgressFilter(rules({ deny: ['10.0.0.0/8'], allowHost: true }));
  assert.equal(deny10.allowOut(tcpOut(GATEWAY, 80)), false, 'deny covers the host too');
});

test('egress: host names from DNS answers (CNAME chains, AAAA), exact names and *. patterns', () => {
  const f = new EgressFilter(rules({ allow: ['*.example.com'], deny: ['bad.example.com'] }));
  const cdn = [203, 0, 113, 10];
  assert.equal(f.allowOut(tcpOut(cdn, 443)), false, 'not known by name yet');
  f.observeIn(fromDns(dnsAnswer('www.example.com', [{ cname: 'edge.cdn.test' }, { a: cdn }])));
  assert.deepEqual([...f.namesOf('203.0.113.10')].sort(), ['edge.cdn.test', 'www.example.com']);
  assert.equal(f.allowOut(tcpOut(cdn, 443)), true, 'learned from the answer, through its CNAME');
  f.observeIn(fromDns(dnsAnswer('bad.example.com', [{ a: [198, 51, 100, 7] }])));
  assert.equal(f.allowOut(tcpOut([198, 51, 100, 7], 443)), false, 'deny by name');
  f.observeIn(fromDns(dnsAnswer('example.com', [{ a: [198, 51, 100, 8] }])));
  assert.equal(f.allowOut(tcpOut([198, 51, 100, 8], 443)), false, '*.example.com is not example.com itself');
  f.observeIn(fromDns(dnsAnswer('v6.example.com', [{ aaaa: v6('2001:db8::77') }])));
  assert.equal(f.allowOut(ipv6(v6('2001:db8::5'), v6('2001:db8::77'), 6, tcp(1, 443, SYN))), true);
  // An error answer, or one from a port other than 53, teaches nothing.
  f.observeIn(fromDns(dnsAnswer('x.example.com', [{ a: [192, 0, 2, 99] }], { rcode: 3 })));
  f.observeIn(ipv4(GATEWAY, GUEST, 17, udp(5353, 40000, dnsAnswer('y.example.com', [{ a: [192, 0, 2, 98] }]))));
  assert.equal(f.allowOut(tcpOut([192, 0, 2, 99], 443)), false);
  assert.equal(f.allowOut(tcpOut([192, 0, 2, 98], 443)), false);
});

test('egress: a compression loop, a pointer forwards and truncated answers are read as nothing', () => {
  const f = new EgressFilter(rules({ allow: ['loop.test'] }));
  const body = dnsAnswer('loop.test', [{ a: [192, 0, 2, 1] }]);
  const loop = body.slice();
  // The answer's owner name points at itself.
  const ans = 12 + qname('loop.test').length + 4;
  loop[ans] = 0xc0 | (ans >> 8);
  loop[ans + 1] = ans & 0xff;
  f.observeIn(fromDns(loop));
  for (let cut = 0; cut < body.length; cut++) f.observeIn(fromDns(body.subarray(0, cut)));
  assert.equal(f.allowOut(tcpOut([192, 0, 2, 1], 80)), false);
  f.observeIn(fromDns(body));
  assert.equal(f.allowOut(tcpOut([192, 0, 2, 1], 80)), true, 'the whole answer does teach it');
});

test('egress: random and mutated frames never throw, and never reach the host (fast-check)', () => {
  const base = [
    tcpOut(GATEWAY, 22),
    ipv4(GUEST, [127, 0, 0, 1], 17, udp(1, 9)),
    ipv6(v6('2001:db8::5'), v6('::1'), 6, tcp(1, 22, SYN)),
    fromDns(dnsAnswer('a.test', [{ cname: 'b.test' }, { a: [10, 0, 2, 2] }])),
  ];
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        fc
          .tuple(
            fc.constantFrom(...base),
            fc.array(fc.tuple(fc.nat(199), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
          )
          .map(([b, muts]) => {
            const m = b.slice();
            for (const [i, v] of muts) if (i < m.length) m[i] = v;
            return m;
          }),
      ),
      (frame) => {
        const f = new EgressFilter(rules());
        f.observeIn(frame);
        const out = f.allowOut(frame);
        // Whatever passed must be to a non-host address, or DNS/DHCP/NDP/ARP as the rules say.
        if (out && frame.length >= 34 && frame[12] === 0x08 && frame[13] === 0x00 && frame[14]! >> 4 === 4) {
          const dst = Array.from(frame.subarray(30, 34));
          const toHost = dst[0] === 127 || dst.join('.') === GATEWAY.join('.');
          const ihl = (frame[14]! & 15) * 4;
          const frag = ((frame[20]! & 0x1f) << 8) | frame[21]!;
          const dport = frame.length >= 14 + ihl + 4 ? (frame[14 + ihl + 2]! << 8) | frame[14 + ihl + 3]! : -1;
          const proto = frame[23];
          const portOk =
            frag === 0 && (proto === 6 || proto === 17) && (dport === 53 || (proto === 17 && dport === 67));
          assert.ok(!toHost || portOk, `a frame to the host passed: ${Buffer.from(frame).toString('hex')}`);
        }
      },
    ),
    { numRuns: 20_000 },
  );
});

test('egress: the rules cross to the I/O thread through the channel, the drops come back', () => {
  const sab = newEgressChannel(rules());
  const io = new EgressChannelFilter(sab);
  assert.equal(io.allowOut(tcpOut(GATEWAY, 80)), false);
  writeEgressRules(sab, rules({ allowHost: true }));
  assert.equal(io.allowOut(tcpOut(GATEWAY, 80)), true, 'the new rules hold from the next frame');
  writeEgressRules(sab, rules({ deny: ['192.0.2.0/24'] }));
  assert.equal(io.allowOut(tcpOut([192, 0, 2, 1], 80)), false);
  assert.deepEqual(egressDrops(sab), { malformed: 0, denied: 1, host: 1, 'not-allowed': 0 });
  assert.throws(() => writeEgressRules(sab, rules({ deny: new Array(20000).fill('2001:db8::/32') })), /at most/);
});

test("egress: the policy's entries are checked (CLI and TS API), and the host's addresses are found", () => {
  assert.ok(parseCidr('10.0.0.0/8'));
  assert.ok(parseCidr('2001:db8::/32'));
  assert.ok(parseCidr('::ffff:192.0.2.1'));
  assert.deepEqual(parseCidr('::ffff:192.0.2.1')?.bytes.subarray(10), Uint8Array.of(255, 255, 192, 0, 2, 1));
  for (const bad of ['10.0.0.0/33', '300.1.1.1', '1.2.3.4/x', '::1/129', ''])
    assert.equal(parseCidr(bad), undefined, bad);
  assert.equal(parseNamePattern('*.Example.COM.'), '*.example.com');
  for (const bad of ['', '*.', 'a..b', 'x/y', '1.2.3.4', '-a.com', 'a b'])
    assert.equal(parseNamePattern(bad), undefined, bad);
  const n = parseNet('user,allow=10.0.0.0/8,allow=*.example.com,deny=10.1.0.0/16,host=allow,id=u0', 0);
  assert.deepEqual(n.kind === 'user' ? n.egress : undefined, {
    allow: ['10.0.0.0/8', '*.example.com'],
    deny: ['10.1.0.0/16'],
    allowHost: true,
  });
  assert.throws(() => parseNet('user,deny=10.0.0.0/40', 0), ConfigError);
  assert.throws(() => parseNet('user,host=maybe', 0), /host is allow or deny/);
  assert.throws(() => validateEgress('u0', { allow: ['ok.test', 'not a name'] }), /neither a CIDR/);
  assert.throws(() => validateEgress('u0', { allowHost: 1 as unknown as boolean }), /true or false/);
  assert.throws(() => validateEgress('u0', { nope: [] } as never), /no setting "nope"/);
  const host = hostAddresses();
  assert.ok(host.includes('127.0.0.0/8') && host.includes('::1/128'));
  for (const c of host) assert.ok(parseCidr(c), `hostAddresses gave ${c}`);
});
