/**
 * A real distribution under vireo: the Debian bookworm root file system built by `vireo rootfs`
 * (systemd, ext4) boots from virtio-blk (`root=/dev/vda`) in the nested lane, reaches systemd's
 * multi-user target and an autologin shell on the serial console, and from there uses the network
 * (virtio-net on a TAP in a namespace made here: ping and a TCP upload checked by SHA-256), vsock
 * (Firecracker's hybrid form: the host connects through the Unix socket with `CONNECT <port>`, the
 * guest's socat answers) and entropy (virtio-rng as the kernel's hwrng); then powers off cleanly.
 *
 * This file also runs inside the lane (VIREO_ROOTFS_LANE=lane) and in the namespace
 * (VIREO_ROOTFS_LANE=servers).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runNested } from '../src/kit/nested.js';
import { prepareRootfs, ROOTFS_MARKER } from '../src/kit/rootfs.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession, laneTripleFault } from './support/lane.js';

const NS = 'vireo-rootfs';
const TAP = 'vtap0';
const HOST_IP = '10.0.2.1';
const UP_PORT = 5001;
const VSOCK_PORT = 5200;
const BYTES = 1 << 20;
const self = fileURLToPath(import.meta.url);
const guestSession = GUEST_SESSION;

interface LaneReport {
  session?: GuestSession;
  upload?: { bytes: number; sha: string };
  vsock?: string;
  copyMs?: number;
  error?: string;
}

/** Markers are split in the typed command ("@@""x") so the terminal's echo of it never matches. */
const STEPS = [
  { expect: ROOTFS_MARKER, timeoutMs: 600_000 },
  { expect: '# ', timeoutMs: 120_000 },
  {
    send: 'echo "@@""state $(systemctl is-system-running --wait) root=$(findmnt -no SOURCE,FSTYPE /) rng=$(cat /sys/class/misc/hw_random/rng_current) hwrng=$(head -c 4096 /dev/hwrng | wc -c) failed=$(systemctl --failed --no-legend | wc -l)"\n',
  },
  { expect: '@@state', timeoutMs: 300_000 },
  {
    send: `i=$(ls /sys/class/net | grep -v lo | head -1); ip link set $i up && ip addr add 10.0.2.2/24 dev $i && ping -c 3 -W 10 ${HOST_IP}; echo "@@""ping rc=$?"\n`,
  },
  { expect: '@@ping rc=', timeoutMs: 120_000 },
  {
    send: `head -c ${BYTES} /dev/urandom >/tmp/up; echo "@@""up-sha $(sha256sum </tmp/up)"; nc -N ${HOST_IP} ${UP_PORT} </tmp/up; echo "@@""up rc=$?"\n`,
  },
  { expect: '@@up rc=', timeoutMs: 300_000 },
  // vsock: the guest listens; the host side (the servers) connects through the hybrid Unix socket.
  // Each line is answered upper-cased, and copied to the console so this session sees it arrive.
  {
    send: `socat VSOCK-LISTEN:${VSOCK_PORT} SYSTEM:'while read l; do echo "$l" | tr a-z A-Z | tee /dev/ttyS0; done' & sleep 1; echo "@@""vsock listening"\n`,
  },
  // The host keeps trying to connect, so its line can come back before "@@vsock listening" is
  // printed (seen once in CI): wait for the answer alone.
  { expect: 'HELLO VSOCK', timeoutMs: 300_000 },
  { send: 'systemctl poweroff\n' },
];

// --- role: servers, inside the namespace ----------------------------------------------------------

async function servers(): Promise<void> {
  const out = (o: object): void => {
    process.stdout.write(`@@servers ${JSON.stringify(o)}\n`);
  };
  const up = createServer((s) => {
    const h = createHash('sha256');
    let bytes = 0;
    s.on('data', (b: Buffer) => {
      h.update(b);
      bytes += b.length;
    });
    s.on('end', () => out({ upload: { bytes, sha: h.digest('hex') } }));
    s.on('error', (e) => out({ error: `upload: ${e.message}` }));
  });
  await new Promise<void>((r) => up.listen(UP_PORT, HOST_IP, r));
  out({ ready: true });
}

// --- role: lane, the nested machine's command ----------------------------------------------------

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.error?.message ?? r.stderr.trim()}`);
}

/** The host end of vsock: CONNECT through the hybrid socket, send a line, read it back upper-cased. */
function vsockExchange(uds: string): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const s = connect(uds, () => s.write(`CONNECT ${VSOCK_PORT}\n`));
    const timer = setTimeout(() => {
      s.destroy();
      resolve(`timeout: ${JSON.stringify(got)}`);
    }, 60_000);
    s.on('data', (b: Buffer) => {
      got += b.toString('utf8');
      if (/^OK \d+\n/.test(got) && !got.includes('hello')) s.write('hello vsock\n');
      if (got.includes('HELLO VSOCK')) {
        clearTimeout(timer);
        s.end();
        resolve(got);
      }
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      resolve(`error: ${e.message}`);
    });
    // Refused (no listener in the guest yet): the device closes the socket.
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
  });
}

async function lane(): Promise<void> {
  const report: LaneReport = {};
  const work = mkdtempSync(join(tmpdir(), 'vireo-rootfs-'));
  let srv: ReturnType<typeof spawn> | undefined;
  let srvOut = '';
  try {
    const img = join(work, 'root.img');
    const t0 = performance.now();
    const cp = spawnSync('cp', ['--sparse=always', process.env.VIREO_ROOTFS_IMAGE as string, img]);
    if (cp.status !== 0) throw new Error(`cp: ${cp.stderr}`);
    report.copyMs = Math.round(performance.now() - t0);
    ip('netns', 'add', NS);
    ip('-n', NS, 'link', 'set', 'lo', 'up');
    ip('-n', NS, 'tuntap', 'add', TAP, 'mode', 'tap');
    ip('-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
    ip('-n', NS, 'link', 'set', TAP, 'up');
    const s = spawn('ip', ['netns', 'exec', NS, process.execPath, self], {
      env: { ...process.env, VIREO_ROOTFS_LANE: 'servers' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    srv = s;
    await new Promise<void>((resolve, reject) => {
      s.stdout?.on('data', (b: Buffer) => {
        srvOut += b.toString('utf8');
        if (srvOut.includes('"ready":true')) resolve();
      });
      s.once('exit', (code) => reject(new Error(`the servers exited (${code}):\n${srvOut}`)));
    });
    const uds = join(work, 'vsock.sock');
    const session = spawn(
      'ip',
      [
        'netns',
        'exec',
        NS,
        process.execPath,
        guestSession,
        JSON.stringify(STEPS),
        '--',
        '--native',
        '--kernel',
        process.env.VIREO_ROOTFS_KERNEL as string,
        '--initrd',
        process.env.VIREO_ROOTFS_INITRD as string,
        '--append',
        'root=/dev/vda rw',
        '--mem',
        '512',
        '--drive',
        `path=${img},id=root`,
        '--net',
        `tap=${TAP}`,
        '--vsock',
        `cid=3,uds=${uds}`,
        '--rng',
      ],
      { env: { ...process.env, VIREO_VERBOSE: '1' }, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    session.stdout.on('data', (b: Buffer) => {
      out += b.toString('utf8');
    });
    const closed = new Promise<void>((r) => session.once('close', () => r()));
    // The guest announces its vsock listener on the console, which only the session sees: poll for
    // the socket and try the exchange until it answers (or the session ends).
    const deadline = Date.now() + 20 * 60_000;
    let vsock = '';
    let ended = false;
    void closed.then(() => {
      ended = true;
    });
    while (!ended && Date.now() < deadline && !vsock.includes('HELLO VSOCK')) {
      await new Promise((r) => setTimeout(r, 3000));
      if (existsSync(uds)) vsock = await vsockExchange(uds);
    }
    report.vsock = vsock;
    await closed;
    const line = out.split('\n').find((l) => l.startsWith('@@guest-session '));
    if (!line) throw new Error(`no guest session report:\n${out.slice(-3000)}`);
    report.session = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  } catch (e) {
    report.error = e instanceof Error ? e.message : String(e);
  } finally {
    await new Promise((res) => setTimeout(res, 200));
    srv?.kill('SIGTERM');
    spawnSync('ip', ['netns', 'del', NS]);
    rmSync(work, { recursive: true, force: true });
  }
  for (const l of srvOut.split('\n')) {
    if (!l.startsWith('@@servers ')) continue;
    const o = JSON.parse(l.slice('@@servers '.length)) as { upload?: LaneReport['upload']; error?: string };
    if (o.upload) report.upload = o.upload;
    if (o.error) report.error = `${report.error ?? ''} servers: ${o.error}`.trim();
  }
  process.stdout.write(`@@rootfs-lane ${JSON.stringify(report)}\n`);
}

// --- the test, on the host ------------------------------------------------------------------------

async function runLane(): Promise<LaneReport> {
  const rootfs = await prepareRootfs();
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await runNested({
        command: [process.execPath, self],
        cwd: repoRoot,
        env: {
          VIREO_ROOTFS_LANE: 'lane',
          VIREO_ROOTFS_KERNEL: rootfs.kernel,
          VIREO_ROOTFS_INITRD: rootfs.initrd,
          VIREO_ROOTFS_IMAGE: rootfs.image,
        },
        timeoutMs: 28 * 60_000,
        cpus: 2,
        memMiB: 3072,
      });
      const line = r.output.split('\n').find((l) => l.startsWith('@@rootfs-lane '));
      // Once in CI the lane ended with status 0 but without the report (its output stopped mid-boot):
      // the bench, not vireo — try again like a hung lane.
      if (!line)
        throw new NestedError(
          `no report from the lane (status ${r.status}):\n${r.output.slice(-3000)}\n${r.console.slice(-2000)}`,
        );
      process.stderr.write(`linux-rootfs: nested boot ${r.timings.bootMs} ms, command ${r.timings.commandMs} ms\n`);
      const report = JSON.parse(line.slice('@@rootfs-lane '.length)) as LaneReport;
      const fault = laneTripleFault(report.session, ROOTFS_MARKER);
      if (fault && attempt < 3) {
        process.stderr.write(`linux-rootfs: ${fault}; attempt ${attempt + 1} of 3\n`);
        continue;
      }
      return report;
    } catch (e) {
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
    }
  }
}

const role = process.env.VIREO_ROOTFS_LANE;
if (role === 'servers') await servers();
else if (role === 'lane') await lane();
else
  test('Debian (systemd, ext4 on virtio-blk) boots under vireo: multi-user, network, vsock, entropy', {
    timeout: 30 * 60_000,
  }, async () => {
    const r = await runLane();
    const s = r.session;
    assert.ok(s, `the lane did not run the guest: ${r.error}`);
    const tail = `\n--- vireo stderr ---\n${s.stderr.slice(-3000)}\n--- guest output ---\n${s.output.slice(-6000)}`;
    assert.equal(s.failed, undefined, `${s.failed}${tail}`);
    const state = s.output.match(/@@state (\S+) root=(\S+)\s+(\S+) rng=(\S+) hwrng=(\d+) failed=(\d+)/);
    assert.ok(state, `systemd state line${tail}`);
    assert.match(state[1] as string, /^(running|degraded)$/, `systemd reached its target${tail}`);
    assert.equal(state[2], '/dev/vda', 'the root file system is the virtio disk');
    assert.equal(state[3], 'ext4');
    assert.match(state[4] as string, /^virtio_rng\.\d+$/, 'the kernel hwrng is virtio-rng');
    assert.equal(state[5], '4096', 'and gives bytes');
    assert.match(s.output, /3 packets transmitted, 3 received/, `ping${tail}`);
    const upSha = s.output.match(/@@up-sha ([0-9a-f]{64})/)?.[1];
    assert.deepEqual(r.upload, { bytes: BYTES, sha: upSha }, `TCP upload of 1 MiB intact${tail}`);
    assert.match(r.vsock ?? '', /^OK \d+\n[\s\S]*HELLO VSOCK/, `vsock host → guest: ${JSON.stringify(r.vsock)}${tail}`);
    assert.equal(s.status, 0, `systemctl poweroff ends vireo with 0${tail}`);
    process.stderr.write(`linux-rootfs: image copy ${r.copyMs} ms, session marks ${JSON.stringify(s.marks)}\n`);
  });
