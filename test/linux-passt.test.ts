/**
 * `--net user` under a real Linux guest (Debian's cloud kernel and the kit's busybox), booted once by
 * vireo in the nested lane, vireo running as a non-root user (nobody) so passt runs unprivileged too.
 * Inside the lane this file runs again as the lane's command (VIREO_PASST_LANE=lane): it gives the lane a
 * default route (a veth at 10.0.2.15/24, gateway 10.0.2.2) for passt to copy, points the lane's resolver at
 * a DNS server on 127.0.0.1 and starts the host-side servers (VIREO_PASST_LANE=servers) on 127.0.0.1.
 * The guest then, through passt's gateway mapping (the gateway address is the host's loopback):
 * - gets its address, router and MTU by DHCP (busybox udhcpc),
 * - resolves host.vireo.test through passt's DNS (the lane's server answers 10.0.2.2),
 * - fetches a page over HTTP from the host (busybox wget),
 * - cannot reach a name (deny=blocked.vireo.test) or an address (deny=192.0.2.78/32) the egress policy
 *   denies, while an address beside them answers (host=allow: this test's servers are the host's),
 * - serves a host port forward (hostfwd=tcp:127.0.0.1:8080-:80) that a host server connects to: the
 *   guest's server speaks first, which needs vireo to complete the handshake Debian 12's passt leaves
 *   half done (src/backends/passt-handshake.ts),
 * - asks a host server to kill passt: vireo says so in one line, the guest's carrier goes down, vireo
 *   starts passt again, the carrier comes back and a second fetch works; the VM never stops.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession, laneTripleFault } from './support/lane.js';

const GW = '10.0.2.2';
const LANE_IP = '10.0.2.15';
const HTTP_PORT = 5003;
const KILL_PORT = 5004;
const FWD_CHECK_PORT = 5005;
const FWD_HOST_PORT = 8080;
/** Addresses on the lane's loopback: one denied by name, one by CIDR, one open (the control). */
const BLOCKED_IP = '192.0.2.77';
const DENIED_IP = '192.0.2.78';
const OPEN_IP = '192.0.2.79';
const NOBODY = 65534;
const self = fileURLToPath(import.meta.url);

interface ServerEvent {
  ready?: boolean;
  dns?: string;
  http?: string;
  killed?: { pid: number; uid: number }[];
  fwd?: string;
  passts?: { running: { pid: number; uid: number }[]; socks: string[] };
  error?: string;
}

interface LaneReport {
  session?: GuestSession;
  events: ServerEvent[];
  error?: string;
}

/** udhcpc's script: configure eth0 from the lease and print it. */
const DHCP_SCRIPT = [
  '#!/bin/sh',
  '[ "$1" = bound ] || exit 0',
  'ifconfig $interface $ip netmask $subnet up',
  'route add default gw $router',
  '[ -n "$mtu" ] && ip link set $interface mtu $mtu',
  'echo $router >/tmp/gw',
  'for d in $dns; do echo nameserver $d; done >/etc/resolv.conf',
  'echo "@@""lease ip=$ip router=$router mtu=$mtu dns=$dns"',
].join('\\n');

/** Typed into the guest's shell. Markers are split in the command ("@@""x") so its echo never matches. */
const STEPS = [
  { expect: 'vireo guest ready', timeoutMs: 240_000 },
  { expect: '# ', timeoutMs: 60_000 },
  {
    send: `printf '${DHCP_SCRIPT}\\n' >/tmp/s; chmod +x /tmp/s; ip link set eth0 up; udhcpc -i eth0 -n -q -t 20 -T 3 -s /tmp/s; echo "@@""dhcp rc=$? mtu=$(cat /sys/class/net/eth0/mtu) carrier=$(cat /sys/class/net/eth0/carrier)"\n`,
  },
  { expect: '@@dhcp rc=', timeoutMs: 240_000 },
  { send: 'nslookup host.vireo.test; echo "@@""dns rc=$?"\n' },
  { expect: '@@dns rc=', timeoutMs: 120_000 },
  { send: `wget -q -O - http://host.vireo.test:${HTTP_PORT}/hello; echo "@@""http rc=$?"\n` },
  { expect: '@@http rc=', timeoutMs: 120_000 },
  // The egress policy (deny=blocked.vireo.test, deny=DENIED_IP/32): both unreachable, the control is not.
  // (busybox's own wget -T segfaults in this busybox: timeout(1) bounds the dropped connections instead.)
  {
    send: `nslookup blocked.vireo.test >/dev/null; timeout 8 wget -q -O - http://blocked.vireo.test:${HTTP_PORT}/blocked; echo "@@""blocked rc=$?"; timeout 8 wget -q -O - http://${DENIED_IP}:${HTTP_PORT}/denied; echo "@@""denied rc=$?"; timeout 30 wget -q -O - http://${OPEN_IP}:${HTTP_PORT}/open; echo "@@""open rc=$?"\n`,
  },
  { expect: '@@open rc=', timeoutMs: 180_000 },
  {
    send: `(echo guest-says-hi | nc -l -p 80 >/dev/null) & sleep 2; sleep 20 | nc $(cat /tmp/gw) ${FWD_CHECK_PORT}; echo "@@""fwd rc=$?"; echo "@@""fwd-tcp"; cat /proc/net/tcp; grep Tcp: /proc/net/snmp; echo "@@""fwd-diag-end"\n`,
  },
  { expect: '@@fwd-diag-end', timeoutMs: 120_000 },
  {
    send: `echo "@@""changes-0 $(cat /sys/class/net/eth0/carrier_changes)"; (echo kill | nc $(cat /tmp/gw) ${KILL_PORT} >/dev/null 2>&1 &); i=0; while [ $i -lt 600 ]; do read c </sys/class/net/eth0/carrier; [ "$c" = 0 ] && break; i=$((i+1)); usleep 100000; done; echo "@@""carrier-a $(cat /sys/class/net/eth0/carrier) changes $(cat /sys/class/net/eth0/carrier_changes) i=$i"; i=0; while [ $i -lt 1200 ]; do read c </sys/class/net/eth0/carrier; [ "$c" = 1 ] && break; i=$((i+1)); usleep 100000; done; echo "@@""carrier-b $(cat /sys/class/net/eth0/carrier)"; sleep 1; wget -q -O - http://$(cat /tmp/gw):${HTTP_PORT}/again; echo "@@""again rc=$?"; ip -s link show eth0; echo "@@""passt ""done"\n`,
  },
  { expect: '@@passt done', timeoutMs: 400_000 },
  { send: 'poweroff -f\n' },
];

// --- role: servers, in the lane ------------------------------------------------------------------

/** The passts vireo started (their socket is in vireo's private directory), with their uid. */
function vireoPassts(): { pid: number; uid: number }[] {
  const out: { pid: number; uid: number }[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'latin1');
      if (!cmd.includes('vireo-passt-') || !cmd.split('\0')[0]?.includes('passt')) continue;
      const uid = Number(readFileSync(`/proc/${e}/status`, 'latin1').match(/^Uid:\s+(\d+)/m)?.[1]);
      out.push({ pid: Number(e), uid });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** A DNS answer: every A question gets GW (the name the guest asks is reported). */
function dnsAnswer(q: Buffer): { reply: Buffer; name: string } | undefined {
  if (q.length < 17) return undefined;
  const labels: string[] = [];
  let o = 12;
  while (o < q.length && q[o] !== 0) {
    const n = q[o] as number;
    labels.push(q.toString('latin1', o + 1, o + 1 + n));
    o += 1 + n;
  }
  const qEnd = o + 5;
  if (qEnd > q.length) return undefined;
  const type = q.readUInt16BE(o + 1);
  const head = Buffer.from(q.subarray(0, qEnd));
  head.writeUInt16BE(0x8180, 2); // response, recursion available
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(type === 1 ? 1 : 0, 6);
  head.writeUInt32BE(0, 8);
  const name = labels.join('.');
  const to = name === 'blocked.vireo.test' ? BLOCKED_IP : GW;
  const answer = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...to.split('.').map(Number)]);
  return { reply: type === 1 ? Buffer.concat([head, answer]) : head, name };
}

async function servers(): Promise<void> {
  const out = (o: ServerEvent): void => {
    process.stdout.write(`@@servers ${JSON.stringify(o)}\n`);
  };
  const http = createHttpServer((req, res) => {
    out({ http: req.url ?? '' });
    res.end(`hello from the host side of passt ${req.url}\n`);
  });
  const killer = createServer((s) => {
    const passts = vireoPassts();
    for (const p of passts) process.kill(p.pid, 'SIGKILL');
    out({ killed: passts });
    s.on('error', () => {});
    s.destroy();
  });
  const fwdCheck = createServer((s) => {
    s.on('error', () => {});
    out({ fwd: 'asked' });
    const c = connect(FWD_HOST_PORT, '127.0.0.1');
    let got = '';
    const t = setTimeout(() => c.destroy(new Error('no greeting from the guest in 10 s')), 10_000);
    c.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      if (got.includes('\n')) {
        clearTimeout(t);
        out({ fwd: got.trim() });
        s.end(`fwd-got ${got.trim()}\n`);
        c.destroy();
      }
    });
    c.on('error', (e) => {
      clearTimeout(t);
      out({ error: `hostfwd: ${e.message}` });
      s.end(`fwd-failed ${e.message}\n`);
    });
  });
  const dns = createSocket('udp4');
  dns.on('message', (m, from) => {
    const a = dnsAnswer(m);
    if (!a) return;
    out({ dns: a.name });
    dns.send(a.reply, from.port, from.address);
  });
  await Promise.all([
    new Promise<void>((r) => http.listen(HTTP_PORT, '0.0.0.0', r)),
    new Promise<void>((r) => killer.listen(KILL_PORT, '127.0.0.1', r)),
    new Promise<void>((r) => fwdCheck.listen(FWD_CHECK_PORT, '127.0.0.1', r)),
    new Promise<void>((r) => dns.bind(53, '127.0.0.1', r)),
  ]);
  out({ ready: true });
  // What passt is doing, for a failure's report: the passts running, the sockets in vireo's directories.
  const watch = setInterval(() => {
    const dirs = readdirSync('/tmp').filter((d) => d.startsWith('vireo-passt-') && !d.startsWith('vireo-passt-lane-'));
    const socks = dirs.flatMap((d) => {
      try {
        return readdirSync(join('/tmp', d)).map((f) => `${d}/${f}`);
      } catch (e) {
        return [`${d}: ${(e as Error).message}`];
      }
    });
    out({ passts: { running: vireoPassts(), socks } });
  }, 15_000);
  watch.unref();
}

// --- role: lane, the nested machine's command ----------------------------------------------------

function sh(cmd: string): void {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`${cmd}: ${r.error?.message ?? r.stderr.trim()}`);
}

async function lane(): Promise<void> {
  const report: LaneReport = { events: [] };
  let srv: ReturnType<typeof spawn> | undefined;
  let srvOut = '';
  try {
    // A default route for passt to take its addresses from (the lane has only lo).
    sh(
      `ip link add vp0 type veth peer name vp1 && ip addr add ${LANE_IP}/24 dev vp0 && ip link set vp0 up && ip link set vp1 up && ip route add default via ${GW} dev vp0 && ip link set lo up && for a in ${BLOCKED_IP} ${DENIED_IP} ${OPEN_IP}; do ip addr add $a/32 dev lo; done`,
    );
    writeFileSync('/etc/resolv.conf', 'nameserver 127.0.0.1\n');
    // vireo runs as nobody: the kit where nobody can read it, /dev/kvm open to it (the lane's own).
    const dir = mkdtempSync('/tmp/vireo-passt-lane-');
    chmodSync(dir, 0o755);
    const kernel = join(dir, 'vmlinuz');
    const initrd = join(dir, 'initrd');
    copyFileSync(process.env.VIREO_PASST_KERNEL as string, kernel);
    copyFileSync(process.env.VIREO_PASST_INITRD as string, initrd);
    chmodSync(kernel, 0o644);
    chmodSync(initrd, 0o644);
    chmodSync('/dev/kvm', 0o666);
    const s = spawn(process.execPath, [self], {
      env: { ...process.env, VIREO_PASST_LANE: 'servers' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    srv = s;
    await new Promise<void>((resolve, reject) => {
      s.stdout?.on('data', (b: Buffer) => {
        srvOut += b.toString('utf8');
        if (srvOut.includes('"ready":true')) resolve();
      });
      s.once('exit', (code) => reject(new Error(`the servers exited (${code}) before they were ready:\n${srvOut}`)));
    });
    // passt sandboxes itself in a user namespace, which Linux refuses to a chrooted process, and the
    // lane runs its command chrooted: vireo runs where the lane's root is the root of its own mount
    // namespace (moved onto /, as switch_root does), seen from the lane's first process.
    const r = spawnSync(
      'nsenter',
      [
        '-t',
        '1',
        '-r',
        '-w',
        '--',
        '/bin/busybox',
        'unshare',
        '-m',
        '--propagation',
        'private',
        '/bin/busybox',
        'sh',
        '-c',
        'cd /mnt && /bin/busybox mount --move . / && exec /bin/busybox chroot . "$@"',
        'sh',
        '/usr/bin/setpriv', // busybox's chroot would run its own setpriv applet for a bare name
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        '--clear-groups',
        process.execPath,
        GUEST_SESSION,
        JSON.stringify(STEPS),
        '--',
        '--native',
        '--kernel',
        kernel,
        '--initrd',
        initrd,
        '--cpus',
        '1',
        '--mem',
        '256',
        '--net',
        // The host is allowed (its loopback serves this test); two destinations are denied.
        `user,hostfwd=tcp:127.0.0.1:${FWD_HOST_PORT}-:80,host=allow,deny=blocked.vireo.test,deny=${DENIED_IP}/32`,
      ],
      {
        encoding: 'utf8',
        env: { ...process.env, VIREO_VERBOSE: '1', HOME: dir, TMPDIR: '/tmp' },
        timeout: 25 * 60_000,
        maxBuffer: 64 << 20,
      },
    );
    const line = r.stdout.split('\n').find((l) => l.startsWith('@@guest-session '));
    if (!line) throw new Error(`no guest session report (status ${r.status}):\n${r.stdout.slice(-3000)}\n${r.stderr}`);
    report.session = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  } catch (e) {
    report.error = e instanceof Error ? e.message : String(e);
  } finally {
    await new Promise((res) => setTimeout(res, 200));
    srv?.kill('SIGTERM');
  }
  for (const l of srvOut.split('\n'))
    if (l.startsWith('@@servers ')) report.events.push(JSON.parse(l.slice('@@servers '.length)) as ServerEvent);
  process.stdout.write(`@@passt-lane ${JSON.stringify(report)}\n`);
}

// --- the test, on the host ------------------------------------------------------------------------

async function runLane(): Promise<LaneReport> {
  const kit = await prepareKit();
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await runNested({
        command: [process.execPath, self],
        cwd: repoRoot,
        env: { VIREO_PASST_LANE: 'lane', VIREO_PASST_KERNEL: kit.kernel, VIREO_PASST_INITRD: kit.initrd },
        timeoutMs: 28 * 60_000,
        cpus: 2,
      });
      const line = r.output.split('\n').find((l) => l.startsWith('@@passt-lane '));
      assert.ok(
        line,
        `no report from the lane (status ${r.status}):\n${r.output.slice(-3000)}\n${r.console.slice(-2000)}`,
      );
      process.stderr.write(`linux-passt: nested boot ${r.timings.bootMs} ms, command ${r.timings.commandMs} ms\n`);
      const report = JSON.parse(line.slice('@@passt-lane '.length)) as LaneReport;
      const fault = laneTripleFault(report.session, 'vireo guest ready');
      if (fault && attempt < 3) {
        process.stderr.write(`linux-passt: ${fault}; attempt ${attempt + 1} of 3\n`);
        continue;
      }
      return report;
    } catch (e) {
      // The lane itself (QEMU's emulated SVM) occasionally hangs: that is the bench, not vireo.
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
    }
  }
}

function checkLane(r: LaneReport): void {
  const s = r.session;
  assert.ok(s, `the lane did not run the guest: ${r.error}`);
  const tail = `\n--- vireo stderr ---\n${s.stderr.slice(-3000)}\n--- guest output ---\n${s.output.slice(-6000)}\n--- servers ---\n${JSON.stringify(r.events)}`;
  assert.equal(s.failed, undefined, `${s.failed}${tail}`);
  // DHCP: passt's lease (the lane's address, its gateway, passt's MTU) configured eth0.
  const lease = s.output.match(/@@lease ip=(\S+) router=(\S+) mtu=(\S*) dns=(.*)/);
  assert.ok(lease, `udhcpc got a lease${tail}`);
  assert.equal(lease[1], LANE_IP, 'passt gives the guest the address of the interface it copies');
  assert.equal(lease[2], GW);
  assert.equal(lease[3], '65520');
  assert.match(s.output, /@@dhcp rc=0 mtu=65520 carrier=1/, `eth0 up with passt's MTU${tail}`);
  // DNS through passt (the lane's resolver is on loopback: passt gives the gateway and maps it).
  assert.ok(
    r.events.some((e) => e.dns === 'host.vireo.test'),
    `the lane's DNS server got the query${tail}`,
  );
  assert.match(s.output, /@@dns rc=0/, `nslookup answered${tail}`);
  // HTTP from the host side, through the gateway mapping.
  assert.match(s.output, /hello from the host side of passt \/hello/, `the fetch${tail}`);
  assert.match(s.output, /@@http rc=0/);
  // The egress policy: a name and a CIDR denied are unreachable (the servers saw nothing), the control is not.
  assert.match(s.output, /@@blocked rc=[1-9]/, `blocked.vireo.test unreachable${tail}`);
  assert.match(s.output, /@@denied rc=[1-9]/, `${DENIED_IP} unreachable${tail}`);
  assert.match(s.output, /hello from the host side of passt \/open/, `the open address answers${tail}`);
  assert.match(s.output, /@@open rc=0/);
  assert.ok(
    r.events.some((e) => e.dns === 'blocked.vireo.test'),
    `the guest did resolve the blocked name${tail}`,
  );
  for (const path of ['/blocked', '/denied'])
    assert.ok(!r.events.some((e) => e.http === path), `nothing reached the server for ${path}${tail}`);
  // A host port forward into the guest, whose server speaks first: its greeting reached the host.
  const fwdOut = s.output.slice(s.output.indexOf('guest-says-hi'), s.output.indexOf('@@fwd-diag-end'));
  assert.ok(
    r.events.some((e) => e.fwd === 'guest-says-hi'),
    `the host port forward reached the guest's server: events ${JSON.stringify(r.events.filter((e) => e.fwd !== undefined || e.error !== undefined))}; guest ${JSON.stringify(fwdOut)}${tail}`,
  );
  assert.match(s.output, /fwd-got guest-says-hi/, `the guest heard back from the host${tail}`);
  // passt killed: one line, the carrier down and up again, traffic again, the VM running throughout.
  const killed = r.events.find((e) => e.killed)?.killed;
  assert.ok(killed && killed.length === 1, `one passt was running and killed: ${JSON.stringify(killed)}${tail}`);
  assert.equal(killed[0]?.uid, NOBODY, 'passt ran as the non-root user vireo ran as');
  assert.match(s.output, /@@carrier-a 0/, `the guest saw its carrier go${tail}`);
  assert.match(s.output, /@@carrier-b 1/, `and come back${tail}`);
  assert.match(s.output, /hello from the host side of passt \/again/, `a fetch after the restart${tail}`);
  const down = s.stderr.split('\n').filter((l) => /^vireo: net net0: passt /.test(l));
  assert.equal(down.length, 2, `one line for the outage, one for its end:\n${down.join('\n')}${tail}`);
  assert.match(
    down[0] as string,
    /passt (exited \(killed by SIGKILL\)|stopped serving \(it closed the connection\)); the guest's link is down/,
  );
  assert.match(down[1] as string, /passt serves again; the guest's link is up/);
  assert.equal(s.status, 0, `clean power-off${tail}`);
  const counters = s.stderr.match(/vireo: device counters (\{.*\})/)?.[1];
  assert.ok(counters, `vireo reported its device counters (VIREO_VERBOSE=1)${tail}`);
  const net = (JSON.parse(counters) as Record<string, Record<string, number>>)['virtio-net:net0'];
  assert.ok(net, 'a virtio-net device');
  process.stderr.write(`linux-passt: virtio-net counters ${JSON.stringify(net)}; marks ${JSON.stringify(s.marks)}\n`);
  assert.ok((net.rxPackets ?? 0) > 0 && (net.txPackets ?? 0) > 0);
  assert.equal(net.malformed, 0, 'no malformed chains from Linux');
  assert.equal(net.protocolErrors ?? 0, 0, 'no ring errors');
}

const role = process.env.VIREO_PASST_LANE;
if (role === 'servers') await servers();
else if (role === 'lane') await lane();
else
  test('Linux guest on --net user (passt, non-root): DHCP, DNS, HTTP, egress policy, passt killed and back', {
    timeout: 90 * 60_000,
  }, async () => {
    checkLane(await runLane());
  });
