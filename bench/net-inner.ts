/**
 * The virtio-net benchmark (bench/run.ts, suite `net`). Runs inside the nested lane (run.ts starts it
 * there on PVM hosts; on a VT-x/AMD-V host it runs directly): a TAP in a network namespace with an
 * iperf3 server behind it, and the guest kit's stock kernel booted by vireo (`--net tap=…`) and by QEMU
 * -M microvm (`-netdev tap,…,vhost=off -device virtio-net-device`: QEMU's userspace virtio-net), the
 * same kernel, initramfs, command line, memory, vCPU and TAP. In each guest iperf3 measures TCP
 * guest → host (the guest sends) and host → guest (`-R`, the lane's server sends) for
 * VIREO_BENCH_NET_SECS each. Prints one "@bench {json}" line with every run's "@netbench" result.
 *
 * How iperf3 gets into the guest: as blk-inner does with blkbench, a second cpio archive is appended
 * to the kit's initramfs, with Debian's iperf3 and the libraries it loads (taken from this host's
 * Debian packages through ldd; scripts/setup.sh installs iperf3) under /iperf3/, a script /netbench and
 * /netbench-init (the kit's /init with /netbench run after the banner). The kit boots in seconds where
 * the Debian image (`vireo rootfs`, which has iperf3 too) goes through systemd first, which in the lane
 * costs a minute or more per boot.
 *
 * Environment: VIREO_BENCH_NET_RUNS (default 3), VIREO_BENCH_NET_SECS (each direction, default 5),
 * VIREO_BENCH_NET_INITRD (an initramfs prepared by prepareNetGuest outside the lane; else built here),
 * VIREO_BENCH_NET_PROFILE=1 (profile vireo's virtio I/O thread), VIREO_BENCH_NET_KVMSTAT=1 (what the
 * iperf3 phases cost KVM for each VMM: exits by kind, injections, halts).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InitramfsBuilder, readCpio } from '../src/kit/initramfs.js';
import {
  atomicWrite,
  ensureDebugfs,
  type GuestMarks,
  type GuestRun,
  interleaved,
  ioThreadProfiler,
  kitInitWith,
  type Peer,
  type ProfileSummary,
  qemuMicrovmArgs,
  runGuest,
  vireoKitArgs,
  writeVireoLauncher,
} from './blk-inner.js';
import { benchBuildDir } from './build.js';

const NET_MARKS: GuestMarks = { name: 'netbench', start: '@netbench-start', result: '@netbench ' };
const NS = 'vireo-netb';
const TAP = 'vnb0';
const HOST_IP = '10.0.2.1';
const GUEST_IP = '10.0.2.2';
const GUEST_MAC = '52:54:00:12:34:56';
const MEM = 512;

export interface NetParams {
  runs: number;
  secs: number;
}

export function netParams(env: NodeJS.ProcessEnv = process.env): NetParams {
  const num = (k: string, d: number): number => {
    const v = env[k];
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${k}=${v}: give a positive whole number`);
    return n;
  };
  return { runs: num('VIREO_BENCH_NET_RUNS', 3), secs: num('VIREO_BENCH_NET_SECS', 5) };
}

/**
 * The guest's /netbench (busybox sh): eth0 up, the host reachable, then iperf3 each way; one line
 * `@netbench {"upMbits":…,"downMbits":…}` (receiver-side Mbit/s), or `{"error":…}`.
 */
export const NETBENCH_SCRIPT = `#!/bin/sh
# Written by bench/net-inner.ts: iperf3 against the host's server, both directions.
secs=5
for a in $(cat /proc/cmdline); do
  case "$a" in netbench.secs=*) secs=\${a#netbench.secs=} ;; esac
done
fail() { echo "${NET_MARKS.result}{\\"error\\":\\"$(echo "$*" | tr -d '"\\\\' | tr '\\n' ' ')\\"}"; exit 0; }
ip addr add ${GUEST_IP}/24 dev eth0 && ip link set eth0 up || fail "cannot configure eth0"
i=0
until ping -c 1 -W 1 ${HOST_IP} >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -ge 30 ] && fail "${HOST_IP} does not answer ping"
done
iperf() { /iperf3/lib/ld.so --library-path /iperf3/lib /iperf3/iperf3 -c ${HOST_IP} -t "$secs" -O 1 -i 0 -f m "$@" >/tmp/iperf.log 2>&1; }
rate() { sed -n 's/.* \\([0-9.]*\\) Mbits\\/sec.*receiver *$/\\1/p' /tmp/iperf.log | tail -n 1; }
echo ${NET_MARKS.start}
sleep 1
iperf || fail "iperf3 guest to host: $(tail -n 2 /tmp/iperf.log)"
up=$(rate)
iperf -R || fail "iperf3 host to guest: $(tail -n 2 /tmp/iperf.log)"
down=$(rate)
[ -n "$up" ] && [ -n "$down" ] || fail "no receiver line: $(tail -n 3 /tmp/iperf.log)"
echo "${NET_MARKS.result}{\\"upMbits\\":$up,\\"downMbits\\":$down}"
`;

/** This host's iperf3 and every library it loads (ldd), the loader as ld.so. */
export function iperf3Files(): { name: string; path: string }[] {
  const bin = ['/usr/bin/iperf3', '/bin/iperf3'].find((p) => existsSync(p));
  if (bin === undefined) throw new Error('iperf3 is not installed: apt-get install iperf3 (or bash scripts/setup.sh)');
  const out = execFileSync('ldd', [bin], { encoding: 'utf8' });
  const files = [{ name: 'iperf3', path: bin }];
  for (const line of out.split('\n')) {
    const lib = /=>\s+(\/\S+)/.exec(line)?.[1];
    const loader = /^\s*(\/\S*ld-linux\S*)\s/.exec(line)?.[1];
    if (lib !== undefined) files.push({ name: `lib/${basename(lib)}`, path: lib });
    else if (loader !== undefined) files.push({ name: 'lib/ld.so', path: loader });
  }
  if (!files.some((f) => f.name === 'lib/ld.so'))
    throw new Error(`cannot find iperf3's loader in ldd's answer: ${out}`);
  return files;
}

/** Builds (cached by content) the kit's initramfs plus a cpio with iperf3, /netbench and /netbench-init. */
export function prepareNetGuest(kit: { initrd: string }): { initrd: string } {
  const base = readFileSync(kit.initrd);
  const init = readCpio(base).find((e) => e.path === 'init');
  if (init?.type !== 'file') throw new Error(`${kit.initrd} has no /init`);
  const img = new InitramfsBuilder();
  for (const f of iperf3Files()) img.file(`iperf3/${f.name}`, readFileSync(f.path), 0o755);
  img.file('netbench', NETBENCH_SCRIPT, 0o755);
  const added = [
    '# Added by bench/net-inner.ts: the network benchmark, before vireo.exit= ends the guest.',
    '/netbench',
  ];
  img.file('netbench-init', kitInitWith(Buffer.from(init.data).toString('utf8'), added, 'netbench'), 0o755);
  const extra = img.build();
  const h = createHash('sha256').update(base).update(extra).digest('hex').slice(0, 16);
  const out = join(benchBuildDir, `net-initrd-${h}.cpio`);
  if (!existsSync(out)) {
    mkdirSync(benchBuildDir, { recursive: true });
    atomicWrite(out, Buffer.concat([base, extra]));
  }
  return { initrd: out };
}

// ---------------------------------------------------------------------------------------------

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error || r.status !== 0)
    throw new Error(`ip ${args.join(' ')}: ${r.error?.message ?? r.stderr.trim()} (iproute2 installed, tun loaded?)`);
}

/** The namespace with the TAP at HOST_IP and an iperf3 server on it; returns the server. */
async function startHostSide(): Promise<ReturnType<typeof spawn>> {
  spawnSync('ip', ['netns', 'del', NS]); // a leftover of an interrupted run
  ip('netns', 'add', NS);
  ip('-n', NS, 'link', 'set', 'lo', 'up');
  ip('-n', NS, 'tuntap', 'add', TAP, 'mode', 'tap');
  ip('-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
  ip('-n', NS, 'link', 'set', TAP, 'up');
  const srv = spawn('ip', ['netns', 'exec', NS, 'iperf3', '-s', '-B', HOST_IP, '--forceflush'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let said = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`iperf3 -s did not start listening: ${said}`)), 30_000);
    const hear = (b: Buffer): void => {
      said += b.toString('utf8');
      if (said.includes('listening')) {
        clearTimeout(timer);
        resolve();
      }
    };
    srv.stdout?.on('data', hear);
    srv.stderr?.on('data', hear);
    srv.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`iperf3 -s exited (${code}): ${said}`));
    });
  });
  srv.stdout?.removeAllListeners('data').resume();
  srv.stderr?.removeAllListeners('data').resume();
  return srv;
}

type NetRun = Omit<GuestRun, 'result'> & { netbench: Record<string, unknown> | null; profile?: ProfileSummary[] };

async function main(): Promise<void> {
  const { DEFAULT_LINUX_CMDLINE } = await import('../src/cli/main.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const p = netParams();
  const profile = process.env.VIREO_BENCH_NET_PROFILE === '1';
  const withKvmStats = process.env.VIREO_BENCH_NET_KVMSTAT === '1';
  if (withKvmStats) ensureDebugfs('net');
  // Inside the lane the kit prepared outside is used as it is; elsewhere it is fetched if missing.
  const kit = await prepareKit({ offline: process.env.VIREO_NESTED === '1' });
  const given = process.env.VIREO_BENCH_NET_INITRD;
  const initrd = given && existsSync(given) ? given : prepareNetGuest(kit).initrd;
  const work = mkdtempSync(join(tmpdir(), 'vireo-net-bench-'));
  const cmdline = [
    DEFAULT_LINUX_CMDLINE,
    'quiet vireo.exit=poweroff rdinit=/netbench-init',
    `netbench.secs=${p.secs}`,
  ].join(' ');
  const prof = ioThreadProfiler(work, profile);
  const vireoArgs = vireoKitArgs({
    launcher: writeVireoLauncher(work),
    preload: prof.preload,
    kernel: kit.kernel,
    initrd,
    memMiB: MEM,
    devices: ['--net', `tap=${TAP},mac=${GUEST_MAC}`],
    cmdline,
  });
  const qemuArgs = [
    ...qemuMicrovmArgs(MEM),
    '-netdev',
    `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`,
    '-device',
    `virtio-net-device,netdev=n0,mac=${GUEST_MAC}`,
    '-kernel',
    kit.kernel,
    '-initrd',
    initrd,
    '-append',
    cmdline,
  ];
  // Both run in the namespace (`ip netns exec` execs the VMM: the pid stays the VMM's, for KVM's statistics).
  const inNs = (cmd: string, args: string[]): [string, string[]] => ['ip', ['netns', 'exec', NS, cmd, ...args]];
  const peers: Record<string, Peer> = {
    vireo: [...inNs(process.execPath, vireoArgs), { ...process.env, VIREO_VERBOSE: '1' }],
    'qemu-microvm': [...inNs('qemu-system-x86_64', qemuArgs), process.env],
  };
  let server: ReturnType<typeof spawn> | undefined;
  let results: Record<string, NetRun[]>;
  try {
    server = await startHostSide();
    results = await interleaved('net', peers, p.runs, async (name, [cmd, args, env]) => {
      prof.reset();
      const { result, ...r } = await runGuest(cmd, args, env, withKvmStats, NET_MARKS);
      const res: NetRun = { ...r, netbench: result };
      if (name === 'vireo') res.profile = prof.take();
      return res;
    });
  } finally {
    server?.kill('SIGTERM');
    spawnSync('ip', ['netns', 'del', NS]);
    rmSync(work, { recursive: true, force: true });
  }
  const bench = {
    ...p,
    memMiB: MEM,
    cmdline,
    iperf3: `iperf3 -c ${HOST_IP} -t ${p.secs} -O 1 -i 0 -f m [-R] in the guest; iperf3 -s on the TAP's side`,
    vireo: `vireo run --native --kernel K --initrd I --mem ${MEM} --cpus 1 --net tap=${TAP},mac=${GUEST_MAC} --cmdline …`,
    qemu: `qemu-system-x86_64 ${qemuArgs.map((a) => (a === kit.kernel ? 'K' : a === initrd ? 'I' : a === cmdline ? '…' : a)).join(' ')}`,
    results,
  };
  process.stdout.write(`@bench ${JSON.stringify(bench)}\n`);
}

const invoked = process.argv[1];
if (invoked !== undefined && realpathSync(invoked) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`net-inner: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
