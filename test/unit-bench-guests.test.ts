/**
 * The `usernet` and `fs` benchmark suites without the nested lane: the VMMs' arguments (QEMU's stream
 * netdev on passt's socket, slirp, vireo's --net user as vireo's own parser reads it), the archives
 * appended to the kit's initramfs (iperf3 and the scripts; the tarball and the script; each run from
 * the kit's /init before vireo.exit=), the guest scripts' syntax, and the parsing of what the guests
 * print into results: iperf3's JSON, the lease, the timing lines, with malformed lines giving errors
 * that name them.
 *
 * The fixtures are real output of the guest scripts' measuring loops run on a development host:
 * usernet-guest-output.txt is iperf3 3.12 over loopback (-t 1) printed by USERNETBENCH_SCRIPT's loop
 * behind a lease line; fs-guest-output.txt is FSBENCH_SCRIPT's loop (2 rounds, 128 MiB) under busybox
 * with two host directories in place of the mounts (and `sync` for drop_caches).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  FSBENCH_SCRIPT,
  type FsSample,
  fsGuestArchive,
  kernel9p,
  parseFsOutput,
  summarizeFs,
  treeTarball,
} from '../bench/fs-inner.js';
import {
  parseIperfJson,
  parseNetdevHelp,
  parseUsernetOutput,
  passtArgs,
  qemuPasstNetArgs,
  qemuSlirpNetArgs,
  summarizeUsernet,
  USERNET_DHCP_SCRIPT,
  USERNETBENCH_SCRIPT,
  type UsernetRun,
  usernetGuestArchive,
  vireoUsernetDevices,
} from '../bench/usernet-inner.js';
import { parseNet } from '../src/config/net.js';
import { readCpio } from '../src/kit/initramfs.js';
import { kitInitScript } from '../src/kit/kit.js';
import { repoRoot } from './support/cc.js';

const fixture = (name: string): string => readFileSync(join(repoRoot, 'test', 'fixtures', name), 'utf8');
const KIT_INIT = kitInitScript('6.1.0-test', []);

function shSyntax(script: string): void {
  const r = spawnSync('sh', ['-n'], { input: script, encoding: 'utf8' });
  assert.equal(r.status, 0, `sh -n: ${r.stderr}`);
}

function archive(files: ReturnType<typeof readCpio>): Map<string, string> {
  return new Map(files.flatMap((e) => (e.type === 'file' ? [[e.path, Buffer.from(e.data).toString('latin1')]] : [])));
}

/** The kit's /init with the added line: before the vireo.exit= case, after the banner. */
function assertRunsBeforeExit(init: string | undefined, line: string): void {
  assert.ok(init, 'an init script');
  const lines = init.split('\n');
  const at = lines.indexOf(line);
  assert.ok(at > 0, `${line} in the init`);
  assert.equal(lines[at + 1], 'case "$how" in', 'just before vireo.exit= is honoured');
  assert.ok(
    lines.slice(0, at).some((l) => l.includes('vireo guest ready')),
    'after the banner',
  );
}

// --- usernet -----------------------------------------------------------------------------------------

test('usernet: QEMU connects its stream netdev to the passt socket the bench started', () => {
  const sock = '/tmp/vireo-usernet-bench-x/passt/qemu-3.sock';
  const q = qemuPasstNetArgs(sock);
  const nd = q[q.indexOf('-netdev') + 1];
  assert.equal(nd, `stream,id=n0,server=off,addr.type=unix,addr.path=${sock}`);
  const dev = q[q.indexOf('-device') + 1] ?? '';
  assert.match(dev, /^virtio-net-device,netdev=n0,/, 'the MMIO virtio-net device on that netdev');
  const p = passtArgs(sock, { uid: 65534, gid: 65534 });
  assert.equal(p[p.indexOf('--socket') + 1], sock, 'passt listens where QEMU connects');
  assert.ok(
    p.includes('--one-off') && p.includes('--foreground'),
    'one connection, in the foreground, as vireo runs it',
  );
  assert.equal(p[p.indexOf('--runas') + 1], '65534:65534');
  assert.ok(!passtArgs(sock, undefined).includes('--runas'), 'no --runas when not root');
  const s = qemuSlirpNetArgs();
  assert.equal(s[s.indexOf('-netdev') + 1], 'user,id=n0');
  assert.match(s[s.indexOf('-device') + 1] ?? '', /^virtio-net-device,netdev=n0,mac=/);
});

test("usernet: vireo's --net option is user-mode with the host allowed, as vireo's parser reads it", () => {
  const d = vireoUsernetDevices();
  assert.equal(d[0], '--net');
  const cfg = parseNet(d[1] as string, 0);
  assert.equal(cfg.kind, 'user');
  assert.equal(
    cfg.kind === 'user' ? cfg.egress?.allowHost : undefined,
    true,
    'the server on the host loopback is reachable',
  );
  assert.equal(Buffer.from(cfg.mac ?? []).toString('hex'), '525400123456', 'the MAC QEMU gets too');
});

test("usernet: -netdev help's answer gives the backend names", () => {
  const help =
    'Available netdev backend types:\nsocket\nstream\ndgram\nhubport\ntap\nuser\nl2tpv3\nvde\nbridge\nvhost-user\nvhost-vdpa\n';
  const have = parseNetdevHelp(help);
  assert.deepEqual(have, [
    'socket',
    'stream',
    'dgram',
    'hubport',
    'tap',
    'user',
    'l2tpv3',
    'vde',
    'bridge',
    'vhost-user',
    'vhost-vdpa',
  ]);
  assert.ok(
    !parseNetdevHelp('Available netdev backend types:\ntap\nsocket\n').includes('user'),
    'a QEMU without slirp',
  );
  assert.throws(() => parseNetdevHelp('qemu: unknown option'), /unexpected -netdev help output/);
});

test('usernet: the guest scripts are valid sh, and the archive carries iperf3, the scripts and the init', (t) => {
  shSyntax(USERNETBENCH_SCRIPT);
  shSyntax(USERNET_DHCP_SCRIPT);
  assert.match(USERNETBENCH_SCRIPT, /udhcpc -i eth0 .* -s \/usernet-dhcp/, 'DHCP through the bundled script');
  assert.match(USERNETBENCH_SCRIPT, /-c "\$gw" -p "\$port" .* -J/, 'iperf3 to the gateway, JSON out');
  assert.match(USERNETBENCH_SCRIPT, /iperf\(\) \{ timeout \$\(\(secs \+ 60\)\) /, 'a stalled iperf3 is stopped');
  assert.match(USERNETBENCH_SCRIPT, /iperf -R /, 'and the reverse direction');
  if (!existsSync('/usr/bin/iperf3') && !existsSync('/bin/iperf3')) {
    t.skip('iperf3 is not installed here (bash scripts/setup.sh installs it)');
    return;
  }
  const files = archive(readCpio(usernetGuestArchive(KIT_INIT).build()));
  assert.ok((files.get('iperf3/iperf3')?.length ?? 0) > 10_000, 'the iperf3 binary');
  assert.ok(files.get('iperf3/iperf3')?.startsWith('\x7fELF'));
  assert.ok(files.get('iperf3/lib/ld.so')?.startsWith('\x7fELF'), 'its loader');
  assert.ok(
    [...files.keys()].some((k) => /^iperf3\/lib\/libiperf\.so/.test(k)),
    'libiperf',
  );
  assert.equal(files.get('usernetbench'), USERNETBENCH_SCRIPT);
  assert.equal(files.get('usernet-dhcp'), USERNET_DHCP_SCRIPT);
  assertRunsBeforeExit(files.get('usernetbench-init'), '/usernetbench');
});

test("usernet: the guest's lines parse into the lease and both directions", () => {
  const r = parseUsernetOutput(fixture('usernet-guest-output.txt'));
  assert.deepEqual(r.lease, { ip: '10.0.2.15', router: '10.0.2.2', dhcpMtu: '65520', mtu: 65520 });
  // end.sum_received.bits_per_second of each JSON, in Mbit/s; retransmits are the sender's.
  assert.equal(Math.round(r.up.mbits * 1000), 13214034);
  assert.equal(Math.round(r.down.mbits * 1000), 15340340);
  assert.equal(r.up.bytes, 1652817920);
  assert.equal(r.up.retransmits, 4);
  assert.ok(r.down.cpuGuest !== null && r.down.cpuGuest > 0);
  // \r from a serial console is harmless.
  const crlf = fixture('usernet-guest-output.txt').replace(/\n/g, '\r\n');
  assert.equal(parseUsernetOutput(crlf).up.mbits, r.up.mbits);
});

test('usernet: malformed or failed guest lines give errors that say what went wrong', () => {
  const good = fixture('usernet-guest-output.txt');
  const lease = good.split('\n')[0] as string;
  const up = good.split('\n').find((l) => l.startsWith('@usernet-iperf up')) as string;
  assert.throws(() => parseUsernetOutput(good.replace(lease, '')), /no @usernet-lease line/);
  assert.throws(
    () => parseUsernetOutput(good.replace(lease, '@usernet-lease ip=10.0.2.15 mtu=x')),
    /malformed @usernet-lease line: @usernet-lease ip=10\.0\.2\.15 mtu=x/,
  );
  assert.throws(() => parseUsernetOutput(good.replace(up, '')), /no @usernet-iperf up line/);
  assert.throws(() => parseUsernetOutput(good.replace(up, '@usernet-iperf up {}')), /malformed @usernet-iperf up line/);
  // A line cut short (the console lost its end): not JSON.
  assert.throws(() => parseUsernetOutput(good.replace(up, up.slice(0, 400))), /guest → host: iperf3 printed no JSON/);
  // iperf3's own error, with what it wrote on stderr.
  const failed =
    '@usernet-iperf up rc=1 {"start":{"connected":[]},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}\n@usernet-iperf-err up iperf3: warning';
  assert.throws(
    () => parseUsernetOutput(good.replace(up, failed)),
    /guest → host: iperf3: unable to connect to server: Connection refused \(stderr: iperf3: warning\)/,
  );
  // A stalled transfer that busybox timeout stopped.
  assert.throws(
    () => parseUsernetOutput(good.replace(up, '@usernet-iperf up rc=143 ')),
    /guest → host: iperf3 stalled/,
  );
  // Valid JSON but an exit status: still refused.
  assert.throws(() => parseUsernetOutput(good.replace(up, up.replace('rc=0', 'rc=2'))), /iperf3 exited with 2/);
  assert.throws(() => parseIperfJson('{"end":{"sum_sent":{}}}', 'x'), /no end\.sum_received\.bits_per_second/);
});

test('usernet: medians per side and direction, vireo over QEMU+passt and over slirp', () => {
  const run = (up: number, down: number): UsernetRun => {
    const s = (mbits: number) => ({
      mbits,
      senderMbits: mbits,
      bytes: 1,
      seconds: 5,
      retransmits: 0,
      cpuGuest: null,
      cpuServer: null,
    });
    return {
      status: 0,
      signal: null,
      wallMs: 1,
      bannerMs: 1,
      result: { lease: { ip: 'a', router: 'b', dhcpMtu: 'none', mtu: 1500 }, up: s(up), down: s(down) },
    };
  };
  const failed: UsernetRun = { status: 1, signal: null, wallMs: 1, bannerMs: null, result: null, error: 'boom' };
  const s = summarizeUsernet({
    vireo: [run(100, 40), run(300, 60), failed],
    'qemu-passt': [run(200, 80), run(200, 40), run(400, 120)],
  });
  assert.equal(s.sides.vireo.upMbits, 200);
  assert.equal(s.sides.vireo.downMbits, 50);
  assert.equal(s.sides.vireo.error, 'boom', 'the first failure is kept');
  assert.equal(s.sides['qemu-passt'].upMbits, 200);
  assert.equal(s.sides['qemu-passt'].downMbits, 80);
  assert.equal(s.ratios.upPasst, 1);
  assert.equal(s.ratios.downPasst, 50 / 80);
  assert.equal(s.sides['qemu-slirp'].upMbits, null);
  assert.equal(s.sides['qemu-slirp'].error, 'no runs');
  assert.equal(s.ratios.upSlirp, null);
  const n = summarizeUsernet({ vireo: [run(1, 1)] }, { 'qemu-slirp': 'this QEMU has no user netdev' });
  assert.equal(n.sides['qemu-slirp'].error, 'this QEMU has no user netdev', 'why a side did not run');
});

// --- fs ----------------------------------------------------------------------------------------------

test('fs: the guest script is valid sh; the archive carries the tarball, the script and the init', () => {
  shSyntax(FSBENCH_SCRIPT);
  assert.match(FSBENCH_SCRIPT, /mount -t virtiofs benchfs \/mnt\/virtiofs/);
  assert.match(FSBENCH_SCRIPT, /mount -t ext4 \/dev\/vda \/mnt\/ext4/);
  assert.match(FSBENCH_SCRIPT, /echo 3 >\/proc\/sys\/vm\/drop_caches/, 'caches dropped between write and read');
  const dir = mkdtempSync(join(tmpdir(), 'vireo-fs-unit-'));
  try {
    mkdirSync(join(dir, 'tree', 'a', 'b'), { recursive: true });
    for (const f of ['x.h', 'a/y.h', 'a/b/z.h']) writeFileSync(join(dir, 'tree', f), `${f}\n`);
    const t = treeTarball(join(dir, 'tree'));
    assert.equal(t.entries, 6, 'tree/, a/, a/b/ and three files');
    assert.equal(t.bytes, t.tar.length);
    const files = archive(readCpio(fsGuestArchive(KIT_INIT, t.tar).build()));
    assert.equal(files.get('fsbench/tree.tar'), t.tar.toString('latin1'));
    assert.equal(files.get('fsbench/run'), FSBENCH_SCRIPT);
    assertRunsBeforeExit(files.get('fsbench-init'), '/fsbench/run');
    // The tarball unpacks to the tree (the guest's busybox tar reads the same format).
    const out = join(dir, 'out');
    mkdirSync(out);
    const r = spawnSync('tar', ['-C', out, '-xf', '-'], { input: t.tar });
    assert.equal(r.status, 0);
    assert.equal(readFileSync(join(out, 'tree', 'a', 'b', 'z.h'), 'utf8'), 'a/b/z.h\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("fs: the guest's timing lines parse into samples and medians per file system", () => {
  const samples = parseFsOutput(fixture('fs-guest-output.txt'));
  assert.equal(samples.length, 16, '2 rounds × 2 file systems × 4 operations');
  const first = samples[0] as FsSample;
  assert.equal(first.target, 'virtiofs');
  assert.equal(first.op, 'untar');
  assert.equal(first.round, 1);
  assert.equal(first.n, 793);
  const line = fixture('fs-guest-output.txt')
    .split('\n')
    .find((l) => l.startsWith('@fstime virtiofs untar 1 ')) as string;
  const [, , , , t0, t1] = line.split(' ');
  assert.equal(first.ms, Math.round((Number(t1) - Number(t0)) * 1000));
  // The fixture's tree (/usr/include/linux there) had 792 entries; its file 128 MiB.
  const s = summarizeFs(samples, { entries: 792, mib: 128 });
  for (const op of ['untar', 'findstat', 'write', 'read'] as const) {
    assert.equal(s[op].byRound.virtiofs.length, 2);
    assert.equal(s[op].byRound.ext4.length, 2);
    assert.ok(s[op].virtiofs !== null && s[op].ext4 !== null);
    assert.equal(s[op].ratio, (s[op].virtiofs as number) / (s[op].ext4 as number));
  }
  assert.equal(s.write.unit, 'MiB/s');
  assert.equal(s.untar.unit, 'ms');
  const w = samples.filter((x) => x.op === 'write' && x.target === 'ext4').map((x) => 128 / (x.ms / 1000));
  assert.equal(s.write.ext4, (w[0] as number) / 2 + (w[1] as number) / 2, 'the median of two rounds');
});

test('fs: a malformed line, a wrong count or a time under the clock resolution is an error naming it', () => {
  assert.throws(
    () => parseFsOutput('@fstime virtiofs untar 1 10.00\n'),
    /malformed @fstime line: @fstime virtiofs untar 1 10\.00/,
  );
  assert.throws(() => parseFsOutput('@fstime nfs untar 1 1.00 2.00 5\n'), /malformed @fstime line: @fstime nfs/);
  assert.throws(() => parseFsOutput('@fstime ext4 copy 1 1.00 2.00 5\n'), /malformed @fstime line/);
  assert.throws(() => parseFsOutput('@fstime ext4 read 1 3.00 2.00 5\n'), /going back in time/);
  assert.deepEqual(parseFsOutput('console noise\n@fsbench-start\n'), []);
  const one = (op: FsSample['op'], ms: number, n: number): FsSample[] => [{ target: 'ext4', op, round: 1, ms, n }];
  assert.throws(
    () => summarizeFs(one('untar', 100, 700), { entries: 792, mib: 8 }),
    /ext4 untar round 1: 700 entries, expected 793/,
  );
  assert.throws(() => summarizeFs(one('write', 100, 1), { entries: 1, mib: 8 }), /a 1-byte file, expected 8 MiB/);
  assert.throws(
    () => summarizeFs(one('read', 0, 8 << 20), { entries: 1, mib: 8 }),
    /under \/proc\/uptime's 10 ms resolution/,
  );
  const missing = summarizeFs(one('read', 500, 8 << 20), { entries: 1, mib: 8 });
  assert.equal(missing.read.ext4, 16);
  assert.equal(missing.read.virtiofs, null, 'no virtio-fs round: no figure');
  assert.equal(missing.read.ratio, null);
});

test("fs: 9p is a peer only when the kit kernel's config has it", () => {
  const no = kernel9p('CONFIG_EXT4_FS=y\n# CONFIG_NET_9P is not set\nCONFIG_FUSE_FS=m\n');
  assert.equal(no.ok, false);
  assert.match(no.ok ? '' : no.why, /not set in its config: CONFIG_NET_9P, CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS/);
  assert.deepEqual(kernel9p('CONFIG_NET_9P=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_9P_FS=y\n'), { ok: true });
  const partial = kernel9p('CONFIG_NET_9P=m\nCONFIG_9P_FS=m\n');
  assert.match(partial.ok ? '' : partial.why, /: CONFIG_NET_9P_VIRTIO$/);
});
