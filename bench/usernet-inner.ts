/**
 * The user-mode network benchmark (bench/run.ts, suite `usernet`). Runs inside the nested lane (run.ts
 * starts it there on PVM hosts; on a VT-x/AMD-V host it runs directly). Three VMMs boot the guest kit's
 * stock kernel with the same initramfs, command line, memory and vCPU on a user-mode network, and in
 * each guest iperf3 measures TCP guest → host (the guest sends) and host → guest (`-R`) for
 * VIREO_BENCH_USERNET_SECS each against an `iperf3 -s` on the lane's 127.0.0.1, reached from the guest
 * at the gateway address (passt and slirp both map it to the host's loopback):
 * - vireo `--net user,host=allow` (vireo starts passt itself; host=allow lets the guest reach the
 *   host's own addresses, which vireo's egress policy refuses by default),
 * - QEMU -M microvm with the same passt binary, started here (`passt --socket PATH`, as vireo starts it)
 *   and `-netdev stream,server=off,addr.type=unix,addr.path=PATH` (QEMU 7.2's stream netdev speaks
 *   passt's length-prefixed frames),
 * - QEMU -M microvm with `-netdev user` (libslirp), when this QEMU has it.
 * The guest gets its address, gateway and MTU by DHCP from each (udhcpc), as a user would.
 *
 * In the lane: passt sandboxes itself in a user namespace, which Linux refuses to a chrooted process,
 * and the lane runs its command chrooted; so this script re-runs itself (role `run`) where the lane's
 * root is the root of its own mount namespace (as test/linux-passt.test.ts does), after giving the
 * lane a default route for passt to copy (a veth at 10.0.2.15/24, gateway 10.0.2.2).
 *
 * Prints one "@bench {json}" line with every run's parsed result. Environment:
 * VIREO_BENCH_USERNET_RUNS (default 3), VIREO_BENCH_USERNET_SECS (each direction, default 5),
 * VIREO_BENCH_USERNET_INITRD (an initramfs prepared by prepareUsernetGuest outside the lane),
 * VIREO_BENCH_USERNET_SIDES (a comma list of the sides to run; default all three).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InitramfsBuilder, readCpio } from '../src/kit/initramfs.js';
import {
  atomicWrite,
  type GuestMarks,
  type GuestRun,
  interleaved,
  kitInitWith,
  type Peer,
  qemuMicrovmArgs,
  runGuest,
  vireoKitArgs,
  writeVireoLauncher,
} from './blk-inner.js';
import { benchBuildDir } from './build.js';
import { iperf3Files } from './net-inner.js';
import { median } from './util.js';

export const USERNET_MARKS: GuestMarks = {
  name: 'usernetbench',
  start: '@usernetbench-start',
  result: '@usernetbench ',
};
/** The guest's lease line and its two iperf3 lines (see USERNETBENCH_SCRIPT). */
const LEASE_MARK = '@usernet-lease ';
const IPERF_MARK = '@usernet-iperf ';
/** iperf3's stderr, when it wrote any (the JSON is on stdout). */
const IPERF_ERR_MARK = '@usernet-iperf-err ';
export const IPERF_PORT = 5201;
const GUEST_MAC = '52:54:00:12:34:56';
const MEM = 512;
/** The lane's address and gateway for passt to copy (linux-passt.test.ts uses the same). */
const LANE_IP = '10.0.2.15';
const LANE_GW = '10.0.2.2';
/** passt drops to this user when started as root (vireo does the same: src/backends/passt-process.ts). */
const NOBODY = 65534;

/** The three sides, in the order they run in each round. */
export const USERNET_SIDES = ['vireo', 'qemu-passt', 'qemu-slirp'] as const;
export type UsernetSide = (typeof USERNET_SIDES)[number];

export interface UsernetParams {
  runs: number;
  secs: number;
}

export function usernetParams(env: NodeJS.ProcessEnv = process.env): UsernetParams {
  const num = (k: string, d: number): number => {
    const v = env[k];
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${k}=${v}: give a positive whole number`);
    return n;
  };
  return { runs: num('VIREO_BENCH_USERNET_RUNS', 3), secs: num('VIREO_BENCH_USERNET_SECS', 5) };
}

/** udhcpc's script: configure eth0 from the lease (the MTU too, when the server gives one) and note it. */
export const USERNET_DHCP_SCRIPT = `#!/bin/sh
# Written by bench/usernet-inner.ts: udhcpc's script.
[ "$1" = bound ] || exit 0
ifconfig "$interface" "$ip" netmask "$subnet" up
route add default gw "$router"
[ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
echo "$router" >/tmp/gw
echo "ip=$ip router=$router dhcpmtu=\${mtu:-none}" >/tmp/lease
`;

/**
 * The guest's /usernetbench (busybox sh): DHCP on eth0, then iperf3 each way against the gateway.
 * Prints `@usernet-lease ip=… router=… dhcpmtu=… mtu=…`, `@usernetbench-start`, one line
 * `@usernet-iperf up|down rc=N {iperf3 -J's JSON on one line}` per direction (and
 * `@usernet-iperf-err up|down …` with iperf3's stderr, when it wrote any), and last
 * `@usernetbench {"done":true}` (or `{"error":…}` when it could not get that far).
 */
export const USERNETBENCH_SCRIPT = `#!/bin/sh
# Written by bench/usernet-inner.ts: iperf3 through a user-mode network's gateway, both directions.
secs=5 port=${IPERF_PORT}
for a in $(cat /proc/cmdline); do
  case "$a" in
    usernetbench.secs=*) secs=\${a#usernetbench.secs=} ;;
    usernetbench.port=*) port=\${a#usernetbench.port=} ;;
  esac
done
fail() { echo "${USERNET_MARKS.result}{\\"error\\":\\"$(echo "$*" | tr -d '"\\\\' | tr '\\n' ' ')\\"}"; exit 0; }
ip link set eth0 up || fail "cannot bring eth0 up"
udhcpc -i eth0 -n -q -t 20 -T 3 -s /usernet-dhcp >/tmp/dhcp.log 2>&1 || fail "no DHCP lease: $(tail -n 2 /tmp/dhcp.log)"
[ -s /tmp/gw ] || fail "udhcpc gave no router"
gw=$(cat /tmp/gw)
echo "${LEASE_MARK}$(cat /tmp/lease) mtu=$(cat /sys/class/net/eth0/mtu)"
# A stalled transfer (it happens with passt 2023.03, under QEMU too) ends after a minute more, not never.
iperf() { timeout $((secs + 60)) /iperf3/lib/ld.so --library-path /iperf3/lib /iperf3/iperf3 -c "$gw" -p "$port" -t "$secs" -O 1 -J "$@"; }
echo ${USERNET_MARKS.start}
sleep 1
for dir in up down; do
  if [ $dir = up ]; then iperf >/tmp/$dir.json 2>/tmp/$dir.err; else iperf -R >/tmp/$dir.json 2>/tmp/$dir.err; fi
  rc=$?
  echo "${IPERF_MARK}$dir rc=$rc $(tr -d '\\r\\n' </tmp/$dir.json)"
  [ -s /tmp/$dir.err ] && echo "${IPERF_ERR_MARK}$dir $(tr '\\r\\n' '  ' </tmp/$dir.err)"
done
echo '${USERNET_MARKS.result}{"done":true}'
`;

/** The archive appended to the kit's initramfs: iperf3 and its libraries, the two scripts, /usernetbench-init. */
export function usernetGuestArchive(kitInit: string): InitramfsBuilder {
  const img = new InitramfsBuilder();
  for (const f of iperf3Files()) img.file(`iperf3/${f.name}`, readFileSync(f.path), 0o755);
  img.file('usernet-dhcp', USERNET_DHCP_SCRIPT, 0o755);
  img.file('usernetbench', USERNETBENCH_SCRIPT, 0o755);
  const added = [
    '# Added by bench/usernet-inner.ts: the user-mode network benchmark, before vireo.exit= ends the guest.',
    '/usernetbench',
  ];
  img.file('usernetbench-init', kitInitWith(kitInit, added, 'usernetbench'), 0o755);
  return img;
}

/** Builds (cached by content) the kit's initramfs with usernetGuestArchive appended. */
export function prepareUsernetGuest(kit: { initrd: string }): { initrd: string } {
  const base = readFileSync(kit.initrd);
  const init = readCpio(base).find((e) => e.path === 'init');
  if (init?.type !== 'file') throw new Error(`${kit.initrd} has no /init`);
  const extra = usernetGuestArchive(Buffer.from(init.data).toString('utf8')).build();
  const h = createHash('sha256').update(base).update(extra).digest('hex').slice(0, 16);
  const out = join(benchBuildDir, `usernet-initrd-${h}.cpio`);
  if (!existsSync(out)) {
    mkdirSync(benchBuildDir, { recursive: true });
    atomicWrite(out, Buffer.concat([base, extra]));
  }
  return { initrd: out };
}

// --- the VMMs' arguments ---------------------------------------------------------------------------

/** vireo's network option: user-mode through passt, the host's own addresses allowed (the server is on its loopback). */
export function vireoUsernetDevices(mac = GUEST_MAC): string[] {
  return ['--net', `user,host=allow,mac=${mac}`];
}

/** passt for QEMU, as vireo starts it (src/backends/passt-process.ts): foreground, one connection, this socket. */
export function passtArgs(socket: string, runAs: { uid: number; gid: number } | undefined): string[] {
  return [
    '--foreground',
    '--stderr',
    '--quiet',
    '--one-off',
    '--socket',
    socket,
    ...(runAs ? ['--runas', `${runAs.uid}:${runAs.gid}`] : []),
  ];
}

/** QEMU's netdev and device for passt: the stream netdev connecting to passt's Unix socket. */
export function qemuPasstNetArgs(socket: string, mac = GUEST_MAC): string[] {
  return [
    '-netdev',
    `stream,id=n0,server=off,addr.type=unix,addr.path=${socket}`,
    '-device',
    `virtio-net-device,netdev=n0,mac=${mac}`,
  ];
}

/** QEMU's own user-mode network (libslirp): 10.0.2.2 is the host's loopback. */
export function qemuSlirpNetArgs(mac = GUEST_MAC): string[] {
  return ['-netdev', 'user,id=n0', '-device', `virtio-net-device,netdev=n0,mac=${mac}`];
}

/** The netdev backends this QEMU has (`-netdev help`), or why they cannot be known. */
export function qemuNetdevs(qemu = 'qemu-system-x86_64'): { have: string[] } | { error: string } {
  try {
    const out = execFileSync(qemu, ['-netdev', 'help'], { encoding: 'utf8', timeout: 30_000 });
    return { have: parseNetdevHelp(out) };
  } catch (e) {
    return { error: `${qemu} -netdev help: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}` };
  }
}

/** The backend names in `-netdev help`'s answer ("Available netdev backend types:" then one a line). */
export function parseNetdevHelp(out: string): string[] {
  const lines = out.split('\n').map((l) => l.trim());
  const at = lines.findIndex((l) => /^Available netdev backend types:?$/i.test(l));
  if (at < 0) throw new Error(`unexpected -netdev help output: ${out.slice(0, 200)}`);
  return lines.slice(at + 1).filter((l) => /^[a-z0-9-]+$/.test(l));
}

// --- what the guest printed ------------------------------------------------------------------------

/** One iperf3 run, from the client's JSON (-J). Mbit/s are the receiver's (as iperf3's "receiver" line). */
export interface IperfSummary {
  mbits: number;
  senderMbits: number;
  bytes: number;
  seconds: number;
  /** TCP retransmissions counted by the sender (the guest for up, the server for -R). */
  retransmits: number | null;
  /** CPU use as iperf3 reports it: the guest's (host_total) and the server's (remote_total), %. */
  cpuGuest: number | null;
  cpuServer: number | null;
}

const num = (o: unknown, k: string): number | undefined => {
  const v = (o as Record<string, unknown> | undefined)?.[k];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
};

/** iperf3 -J's output → the receiver's rate and the rest; throws with iperf3's own error when it has one. */
export function parseIperfJson(text: string, what: string): IperfSummary {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    const shown = text.length > 400 ? `${text.slice(0, 150)} … ${text.slice(-250)} (${text.length} chars)` : text;
    throw new Error(`${what}: iperf3 printed no JSON: ${shown}`);
  }
  if (typeof j !== 'object' || j === null) throw new Error(`${what}: iperf3's JSON is not an object`);
  const o = j as Record<string, unknown>;
  if (typeof o.error === 'string') throw new Error(`${what}: iperf3: ${o.error}`);
  const end = o.end as Record<string, unknown> | undefined;
  const rx = end?.sum_received;
  const tx = end?.sum_sent;
  const bps = num(rx, 'bits_per_second');
  if (bps === undefined) throw new Error(`${what}: iperf3's JSON has no end.sum_received.bits_per_second`);
  const cpu = end?.cpu_utilization_percent;
  return {
    mbits: bps / 1e6,
    senderMbits: (num(tx, 'bits_per_second') ?? Number.NaN) / 1e6,
    bytes: num(rx, 'bytes') ?? 0,
    seconds: num(rx, 'seconds') ?? 0,
    retransmits: num(tx, 'retransmits') ?? null,
    cpuGuest: num(cpu, 'host_total') ?? null,
    cpuServer: num(cpu, 'remote_total') ?? null,
  };
}

export interface UsernetGuestResult {
  lease: { ip: string; router: string; dhcpMtu: string; mtu: number };
  up: IperfSummary;
  down: IperfSummary;
}

/** The guest's console → its lease and both directions; throws saying which line is missing or wrong. */
export function parseUsernetOutput(output: string): UsernetGuestResult {
  const lines = output.split('\n').map((l) => l.replace(/\r$/, ''));
  const leaseLine = lines.find((l) => l.startsWith(LEASE_MARK));
  if (leaseLine === undefined) throw new Error('no @usernet-lease line: the guest got no address');
  const lm = /^ip=(\S+) router=(\S+) dhcpmtu=(\S+) mtu=(\d+)$/.exec(leaseLine.slice(LEASE_MARK.length).trim());
  if (!lm) throw new Error(`malformed @usernet-lease line: ${leaseLine}`);
  const iperf = (dir: 'up' | 'down'): IperfSummary => {
    const line = lines.find((l) => l.startsWith(`${IPERF_MARK}${dir} `));
    if (line === undefined) throw new Error(`no @usernet-iperf ${dir} line`);
    const m = /^rc=(\d+) ?(.*)$/.exec(line.slice(IPERF_MARK.length + dir.length + 1));
    if (!m) throw new Error(`malformed @usernet-iperf ${dir} line: ${line.slice(0, 200)}`);
    const what = dir === 'up' ? 'guest → host' : 'host → guest (-R)';
    const err = lines
      .find((l) => l.startsWith(`${IPERF_ERR_MARK}${dir} `))
      ?.slice(IPERF_ERR_MARK.length + dir.length + 1);
    // busybox timeout ends a stalled iperf3 with SIGTERM (143), before it printed any JSON.
    if (m[1] === '143' && (m[2] as string).trim() === '')
      throw new Error(`${what}: iperf3 stalled: no result a minute after its end (timeout stopped it)`);
    let s: IperfSummary;
    try {
      s = parseIperfJson(m[2] as string, what);
    } catch (e) {
      throw err ? new Error(`${(e as Error).message} (stderr: ${err.trim()})`) : e;
    }
    if (m[1] !== '0') throw new Error(`${what}: iperf3 exited with ${m[1]}`);
    return s;
  };
  return {
    lease: { ip: lm[1] as string, router: lm[2] as string, dhcpMtu: lm[3] as string, mtu: Number(lm[4]) },
    up: iperf('up'),
    down: iperf('down'),
  };
}

// --- the summary run.ts makes rows of ---------------------------------------------------------------

/** One boot of one side: what the guest measured, or why not; vireo's device counters where printed. */
export interface UsernetRun {
  status: number | null;
  signal: string | null;
  wallMs: number;
  bannerMs: number | null;
  result: UsernetGuestResult | null;
  error?: string;
  counters?: unknown;
  /** passt's own lines (QEMU with passt), or the VMM's last stderr lines on failure. */
  log?: string;
}

export interface UsernetSideSummary {
  upMbits: number | null;
  downMbits: number | null;
  up: number[];
  down: number[];
  /** Why a side has no figure (its first run's error, or why it could not run). */
  error?: string;
}

export interface UsernetSummary {
  sides: Record<UsernetSide, UsernetSideSummary>;
  /** vireo / QEMU+passt and vireo / slirp, per direction (null where either is missing). */
  ratios: { upPasst: number | null; downPasst: number | null; upSlirp: number | null; downSlirp: number | null };
}

/** Medians per side and direction, and vireo's ratios to the other two. */
export function summarizeUsernet(
  results: Partial<Record<UsernetSide, UsernetRun[]>>,
  notRun: Partial<Record<UsernetSide, string>> = {},
): UsernetSummary {
  const side = (s: UsernetSide): UsernetSideSummary => {
    const runs = results[s] ?? [];
    const up = runs.flatMap((r) => (r.result ? [r.result.up.mbits] : []));
    const down = runs.flatMap((r) => (r.result ? [r.result.down.mbits] : []));
    const error = notRun[s] ?? runs.find((r) => r.error !== undefined)?.error ?? (runs.length ? undefined : 'no runs');
    return {
      upMbits: up.length ? median(up) : null,
      downMbits: down.length ? median(down) : null,
      up,
      down,
      ...(error !== undefined ? { error } : {}),
    };
  };
  const sides = { vireo: side('vireo'), 'qemu-passt': side('qemu-passt'), 'qemu-slirp': side('qemu-slirp') };
  const ratio = (a: number | null, b: number | null): number | null =>
    a !== null && b !== null && b > 0 ? a / b : null;
  return {
    sides,
    ratios: {
      upPasst: ratio(sides.vireo.upMbits, sides['qemu-passt'].upMbits),
      downPasst: ratio(sides.vireo.downMbits, sides['qemu-passt'].downMbits),
      upSlirp: ratio(sides.vireo.upMbits, sides['qemu-slirp'].upMbits),
      downSlirp: ratio(sides.vireo.downMbits, sides['qemu-slirp'].downMbits),
    },
  };
}

// --- the host side (in the lane) ----------------------------------------------------------------------

/** An `iperf3 -s` on 127.0.0.1, listening. */
async function startIperfServer(): Promise<ReturnType<typeof spawn>> {
  const srv = spawn('iperf3', ['-s', '-B', '127.0.0.1', '-p', String(IPERF_PORT), '--forceflush'], {
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

/** passt for one QEMU boot: listening on `socket` when this resolves; its stderr is collected. */
async function startPasst(
  socket: string,
): Promise<{ child: ReturnType<typeof spawn>; log: () => string; stop: () => Promise<void> }> {
  const { listensAt } = await import('../src/backends/passt-process.js');
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  const child = spawn(
    process.env.VIREO_PASST || 'passt',
    passtArgs(socket, root ? { uid: NOBODY, gid: NOBODY } : undefined),
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let log = '';
  child.stderr?.on('data', (b: Buffer) => {
    for (const l of b.toString('utf8').split('\n'))
      if (l.trim() !== '' && !/^Failed to send \d+ bytes to syslog/.test(l.trim())) log += `${l.trim()}\n`;
  });
  let exited = false;
  const gone = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      r();
    }),
  );
  const t0 = Date.now();
  while (!listensAt(socket)) {
    if (exited) throw new Error(`passt exited before it listened: ${log.trim()}`);
    if (Date.now() - t0 > 30_000) {
      child.kill('SIGKILL');
      throw new Error(`passt did not listen on ${socket} within 30 s: ${log.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    log: () => log,
    stop: async () => {
      // --one-off: passt ends with QEMU's connection; a passt still there after 3 s is stopped.
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(t);
    },
  };
}

function sh(cmd: string): void {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`${cmd}: ${r.error?.message ?? r.stderr.trim()}`);
}

/** Role `run`: every side, interleaved; prints the @bench line. */
async function run(): Promise<void> {
  const { DEFAULT_LINUX_CMDLINE } = await import('../src/cli/main.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const p = usernetParams();
  const kit = await prepareKit({ offline: process.env.VIREO_NESTED === '1' });
  const given = process.env.VIREO_BENCH_USERNET_INITRD;
  const initrd = given && existsSync(given) ? given : prepareUsernetGuest(kit).initrd;
  const work = mkdtempSync(join(tmpdir(), 'vireo-usernet-bench-'));
  chmodSync(work, 0o755);
  // passt binds its socket after dropping to nobody: the directory is nobody's.
  const passtDir = join(work, 'passt');
  mkdirSync(passtDir, { mode: 0o700 });
  if (typeof process.getuid === 'function' && process.getuid() === 0) chownSync(passtDir, NOBODY, NOBODY);
  const cmdline = [
    DEFAULT_LINUX_CMDLINE,
    'quiet vireo.exit=poweroff rdinit=/usernetbench-init',
    `usernetbench.secs=${p.secs} usernetbench.port=${IPERF_PORT}`,
  ].join(' ');
  const vireoArgs = vireoKitArgs({
    launcher: writeVireoLauncher(work),
    preload: undefined,
    kernel: kit.kernel,
    initrd,
    memMiB: MEM,
    devices: vireoUsernetDevices(),
    cmdline,
  });
  const guestArgs = ['-kernel', kit.kernel, '-initrd', initrd, '-append', cmdline];
  const socketOf = (i: number): string => join(passtDir, `qemu-${i}.sock`);
  const netdevs = qemuNetdevs();
  const notRun: Partial<Record<UsernetSide, string>> = {};
  const peers: Record<string, Peer> = {
    vireo: [process.execPath, vireoArgs, { ...process.env, VIREO_VERBOSE: '1' }],
  };
  if ('error' in netdevs) {
    notRun['qemu-passt'] = netdevs.error;
    notRun['qemu-slirp'] = netdevs.error;
  } else {
    if (netdevs.have.includes('stream'))
      peers['qemu-passt'] = [
        'qemu-system-x86_64',
        [...qemuMicrovmArgs(MEM), ...qemuPasstNetArgs('SOCKET'), ...guestArgs],
        process.env,
      ];
    else notRun['qemu-passt'] = `this QEMU has no stream netdev (it has: ${netdevs.have.join(', ')})`;
    if (netdevs.have.includes('user'))
      peers['qemu-slirp'] = [
        'qemu-system-x86_64',
        [...qemuMicrovmArgs(MEM), ...qemuSlirpNetArgs(), ...guestArgs],
        process.env,
      ];
    else
      notRun['qemu-slirp'] =
        `this QEMU has no user netdev (built without libslirp; it has: ${netdevs.have.join(', ')})`;
  }
  // VIREO_BENCH_USERNET_SIDES=vireo,qemu-passt: only those (a shorter lane run); the others say why.
  const only = process.env.VIREO_BENCH_USERNET_SIDES?.split(',').map((x) => x.trim());
  if (only !== undefined)
    for (const side of USERNET_SIDES)
      if (!only.includes(side) && peers[side] !== undefined) {
        delete peers[side];
        notRun[side] = `not run (VIREO_BENCH_USERNET_SIDES=${only.join(',')})`;
      }
  let boot = 0;
  let results: Record<string, UsernetRun[]>;
  try {
    results = await interleaved('usernet', peers, p.runs, async (name, [cmd, args, env]) => {
      const server = await startIperfServer();
      let passt: Awaited<ReturnType<typeof startPasst>> | undefined;
      try {
        let argv = args;
        if (name === 'qemu-passt') {
          const sock = socketOf(boot++);
          passt = await startPasst(sock);
          argv = args.map((a) => a.replace('addr.path=SOCKET', `addr.path=${sock}`));
        }
        const g: GuestRun = await runGuest(cmd, argv, env, false, USERNET_MARKS, true);
        await passt?.stop();
        const out: UsernetRun = {
          status: g.status,
          signal: g.signal,
          wallMs: g.wallMs,
          bannerMs: g.bannerMs,
          result: null,
        };
        if (g.counters !== undefined) out.counters = g.counters;
        try {
          if (g.error !== undefined) throw new Error(g.error);
          out.result = parseUsernetOutput(g.output ?? '');
        } catch (e) {
          out.error = e instanceof Error ? e.message : String(e);
          out.log = g.stderrTail?.split('\n').slice(-8).join('\n');
        }
        if (passt) out.log = `${passt.log()}${out.log ?? ''}`;
        // Each run as it ends, for a lane that hangs before the @bench line.
        process.stdout.write(`@usernet-run ${name} ${JSON.stringify(out)}\n`);
        return out;
      } catch (e) {
        await passt?.stop();
        return {
          status: null,
          signal: null,
          wallMs: 0,
          bannerMs: null,
          result: null,
          error: e instanceof Error ? e.message : String(e),
        };
      } finally {
        server.kill('SIGTERM');
      }
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const passtVersion = (() => {
    try {
      // "passt\t<version>"
      return execFileSync('dpkg-query', ['-W', 'passt'], { encoding: 'utf8' }).trim().split('\t')[1] ?? 'unknown';
    } catch {
      return 'unknown';
    }
  })();
  const k = (a: string): string => (a === kit.kernel ? 'K' : a === initrd ? 'I' : a === cmdline ? '…' : a);
  const bench = {
    ...p,
    memMiB: MEM,
    cmdline,
    passt: passtVersion,
    netdevs: 'have' in netdevs ? netdevs.have : netdevs.error,
    iperf3: `iperf3 -c GATEWAY -p ${IPERF_PORT} -t ${p.secs} -O 1 -J [-R] in the guest; iperf3 -s -B 127.0.0.1 on the host side`,
    commands: {
      vireo: `vireo run --native --kernel K --initrd I --mem ${MEM} --cpus 1 ${vireoUsernetDevices().join(' ')} --cmdline …`,
      'qemu-passt': `passt ${passtArgs('SOCKET', { uid: NOBODY, gid: NOBODY }).join(' ')}; qemu-system-x86_64 ${[...qemuMicrovmArgs(MEM), ...qemuPasstNetArgs('SOCKET'), ...guestArgs].map(k).join(' ')}`,
      'qemu-slirp': `qemu-system-x86_64 ${[...qemuMicrovmArgs(MEM), ...qemuSlirpNetArgs(), ...guestArgs].map(k).join(' ')}`,
    },
    notRun,
    results,
    summary: summarizeUsernet(results, notRun),
  };
  process.stdout.write(`@bench ${JSON.stringify(bench)}\n`);
}

/** The lane's command: a default route for passt, then role `run` outside the lane's chroot. */
function lane(): void {
  sh(
    `ip link add vu0 type veth peer name vu1 && ip addr add ${LANE_IP}/24 dev vu0 && ip link set vu0 up && ip link set vu1 up && ip route add default via ${LANE_GW} dev vu0 && ip link set lo up`,
  );
  // As linux-passt.test.ts: the lane's root made the root of a private mount namespace (moved onto /,
  // as switch_root does), seen from the lane's first process, so that passt may make its user namespace.
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
      process.execPath,
      fileURLToPath(import.meta.url),
    ],
    { stdio: 'inherit', env: { ...process.env, VIREO_BENCH_USERNET_ROLE: 'run' } },
  );
  if (r.error) throw r.error;
  process.exitCode = r.status ?? 1;
}

const invoked = process.argv[1];
if (invoked !== undefined && realpathSync(invoked) === fileURLToPath(import.meta.url)) {
  const role = process.env.VIREO_BENCH_USERNET_ROLE;
  const go = role === 'run' || process.env.VIREO_NESTED !== '1' ? run() : Promise.resolve(lane());
  go.catch((e: unknown) => {
    process.stderr.write(`usernet-inner: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
