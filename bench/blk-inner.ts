/**
 * The virtio-blk benchmark (bench/run.ts, suite `blk`). Runs inside the nested lane (run.ts starts it
 * there on PVM hosts; on a VT-x/AMD-V host it runs directly): boots the guest kit's stock kernel with
 * vireo and with QEMU -M microvm, the same kernel, initramfs, command line, memory and image file, and
 * in each guest runs bench/guests/blkbench.c on /dev/vda (sequential 1 MiB read and write with
 * O_DIRECT, 4 KiB random reads at queue depth 1 and QD). Prints one "@bench {json}" line with every
 * run's "@blkbench" result.
 *
 * How blkbench gets into the guest without changing the kit: a second cpio archive (blkbench and
 * /blkbench-init) is appended to the kit's initramfs (Linux unpacks concatenated archives), and the
 * kernel runs /blkbench-init (rdinit=). That is the kit's own /init, taken from the kit's initramfs,
 * with one line added before it honours vireo.exit=: so the guest is set up exactly as in every other
 * kit boot (mounts, all modules, banner), then blkbench runs, then vireo.exit=poweroff powers it off.
 *
 * The image: a 1 GiB raw file on the lane's /tmp (a tmpfs under the lane's overlay), created afresh
 * before every boot with its first MIB MiB filled, so that reads read data rather than holes. Both
 * peers serve it through the host page cache: vireo's file backend does buffered preadv/pwritev and
 * fdatasync on FLUSH; QEMU gets cache=writeback (its default: page cache, fdatasync on FLUSH) with
 * aio=threads. cache=none (O_DIRECT on the host) is not possible on tmpfs, and would not be the same
 * I/O path as vireo's.
 *
 * Environment: VIREO_BENCH_BLK_RUNS (default 2), VIREO_BENCH_BLK_MIB (sequential size and random
 * range, default 256), VIREO_BENCH_BLK_SECS (each random-read phase, default 5), VIREO_BENCH_BLK_QD
 * (threads for the second random-read phase, default 4; 1 skips it), VIREO_BENCH_BLK_INITRD (an
 * initramfs prepared by prepareBlkGuest outside the lane; else it is built here),
 * VIREO_BENCH_BLK_PROFILE=1 (profile vireo's virtio I/O thread with V8's profiler and report where it
 * spent its time), VIREO_BENCH_BLK_KVMSTAT=1 (report what the benchmark cost KVM for each VMM: exits
 * by kind, interrupt injections, halts, from debugfs; mounts it when needed).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { InitramfsBuilder, readCpio } from '../src/kit/initramfs.js';
import { benchBuildDir } from './build.js';

const here = dirname(fileURLToPath(import.meta.url));

/** Written by blkbench: `@blkbench {json}`. */
export const BLKBENCH_MARK = '@blkbench ';
/** Written by blkbench when its console output has drained and the measurements are about to start. */
const BLKBENCH_START = '@blkbench-start';
/** The line added to the kit's /init, before this one. */
const INIT_ANCHOR = 'case "$how" in';
const TAG_MAGIC = 0x68636e65626b6c62n;

/** The checkout's root: the nearest directory above this file holding bench/guests/blkbench.c (works from any outDir). */
export function sourceRoot(): string {
  for (let d = here; ; d = dirname(d)) {
    if (existsSync(join(d, 'bench', 'guests', 'blkbench.c')) && existsSync(join(d, 'package.json'))) return d;
    if (dirname(d) === d) throw new Error(`cannot find bench/guests/blkbench.c above ${here}`);
  }
}

export function atomicWrite(path: string, data: Uint8Array | string, mode = 0o644): void {
  const tmp = `${path}.tmp${process.pid}`;
  writeFileSync(tmp, data, { mode });
  renameSync(tmp, path);
}

/** blkbench, static, cached by its source and recipe under the bench build directory. */
export function buildBlkbench(): string {
  const src = join(sourceRoot(), 'bench', 'guests', 'blkbench.c');
  const args = ['-static', '-O2', '-pthread', '-Wall'];
  const h = createHash('sha256').update(readFileSync(src)).update(JSON.stringify(args)).digest('hex').slice(0, 16);
  const out = join(benchBuildDir, `blkbench-${h}`);
  if (existsSync(out)) return out;
  mkdirSync(benchBuildDir, { recursive: true });
  const tmp = `${out}.tmp${process.pid}`;
  try {
    execFileSync('gcc', [...args, '-o', tmp, src], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = (e as { stderr?: Buffer }).stderr?.toString() ?? String(e);
    throw new Error(
      `cannot build blkbench.c (gcc -static needs libc6-dev): ${err.split('\n').slice(0, 3).join(' | ')}`,
    );
  }
  renameSync(tmp, out);
  return out;
}

/** The kit's /init with `added` lines run after the banner, before vireo.exit= is honoured. */
export function kitInitWith(kitInit: string, added: readonly string[], what: string): string {
  const lines = kitInit.split('\n');
  const at = lines.indexOf(INIT_ANCHOR);
  if (at < 0 || lines.indexOf(INIT_ANCHOR, at + 1) >= 0)
    throw new Error(`the kit's /init has changed: expected one line '${INIT_ANCHOR}' to add ${what} before`);
  return [...lines.slice(0, at), ...added, ...lines.slice(at)].join('\n');
}

/** The kit's /init with blkbench run after the banner, before vireo.exit= is honoured. */
export function blkbenchInit(kitInit: string): string {
  return kitInitWith(
    kitInit,
    ['# Added by bench/blk-inner.ts: the block benchmark, before vireo.exit= ends the guest.', '/blkbench'],
    'blkbench',
  );
}

export interface BlkGuest {
  /** The kit's initramfs with blkbench and /blkbench-init appended. */
  initrd: string;
  blkbench: string;
}

/** Builds (cached by content) the kit's initramfs plus a cpio with blkbench and /blkbench-init. */
export function prepareBlkGuest(kit: { initrd: string }): BlkGuest {
  const blkbench = buildBlkbench();
  const base = readFileSync(kit.initrd);
  const init = readCpio(base).find((e) => e.path === 'init');
  if (init?.type !== 'file') throw new Error(`${kit.initrd} has no /init`);
  const extra = new InitramfsBuilder()
    .file('blkbench', readFileSync(blkbench), 0o755)
    .file('blkbench-init', blkbenchInit(Buffer.from(init.data).toString('utf8')), 0o755)
    .build();
  const h = createHash('sha256').update(base).update(extra).digest('hex').slice(0, 16);
  const out = join(benchBuildDir, `blk-initrd-${h}.cpio`);
  if (!existsSync(out)) {
    mkdirSync(benchBuildDir, { recursive: true });
    atomicWrite(out, Buffer.concat([base, extra]));
  }
  return { initrd: out, blkbench };
}

// ---------------------------------------------------------------------------------------------

export interface BlkParams {
  runs: number;
  mib: number;
  secs: number;
  qd: number;
}

export function blkParams(env: NodeJS.ProcessEnv = process.env): BlkParams {
  const num = (k: string, d: number): number => {
    const v = env[k];
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${k}=${v}: give a positive number`);
    return n;
  };
  return {
    runs: Math.round(num('VIREO_BENCH_BLK_RUNS', 2)),
    mib: Math.round(num('VIREO_BENCH_BLK_MIB', 256)),
    secs: num('VIREO_BENCH_BLK_SECS', 5),
    qd: Math.round(num('VIREO_BENCH_BLK_QD', 4)),
  };
}

const MEM = 512;
const IMAGE_MIB = 1024;
const MiB = 1024 * 1024;

/** A fresh image: IMAGE_MIB sparse, its first `mib` MiB filled with data (random, each MiB stamped). */
function resetImage(path: string, mib: number): void {
  rmSync(path, { force: true });
  const fd = openSync(path, 'w', 0o644);
  try {
    ftruncateSync(fd, IMAGE_MIB * MiB);
    const buf = randomBytes(MiB);
    for (let i = 0; i < mib; i++) {
      buf.writeUInt32LE(i, 0);
      writeSync(fd, buf, 0, MiB, i * MiB);
    }
  } finally {
    closeSync(fd);
  }
}

/** Whether the guest's writes reached the image: blkbench tags every 4 KiB block with its offset. */
function imageTagged(path: string, mib: number): boolean {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(16);
    for (const off of [0, 4096, (mib - 1) * MiB + 4096 * 17]) {
      if (readSync(fd, b, 0, 16, off) !== 16) return false;
      if (b.readBigUInt64LE(0) !== BigInt(off) || b.readBigUInt64LE(8) !== TAG_MAGIC) return false;
    }
    return true;
  } finally {
    closeSync(fd);
  }
}

interface RunResult {
  status: number | null;
  signal: string | null;
  wallMs: number;
  /** Spawn to the kit's banner. */
  bannerMs: number | null;
  blkbench: Record<string, unknown> | null;
  /** The image carries blkbench's tags after the run. */
  imageWritten: boolean;
  /** vireo's device counters (VIREO_VERBOSE), where printed. */
  counters?: unknown;
  /** What changed in KVM's statistics of the VM from the banner to blkbench's line (VIREO_BENCH_BLK_KVMSTAT=1). */
  kvm?: Record<string, number>;
  /** Port I/O exits in that window by direction and port (the kvm_pio tracepoint). */
  pio?: Record<string, number>;
  error?: string;
  profile?: ProfileSummary[];
}

export const KVM_DEBUGFS = '/sys/kernel/debug/kvm';

/** Mounts debugfs when KVM's statistics are not there yet; says so on stderr when it cannot. */
export function ensureDebugfs(suite: string): void {
  if (existsSync(KVM_DEBUGFS)) return;
  try {
    execFileSync('mount', ['-t', 'debugfs', 'debugfs', '/sys/kernel/debug'], { stdio: 'ignore' });
  } catch {
    process.stderr.write(`[${suite}] cannot mount debugfs: no KVM statistics\n`);
  }
}

/** KVM's own statistics of the VM a process runs (debugfs <pid>-<fd>/: exits by kind, injections, halts). */
export function kvmStats(pid: number | undefined): Record<string, number> | undefined {
  if (pid === undefined) return undefined;
  try {
    const dir = readdirSync(KVM_DEBUGFS).find((d) => d.startsWith(`${pid}-`));
    if (dir === undefined) return undefined;
    const out: Record<string, number> = {};
    for (const f of readdirSync(join(KVM_DEBUGFS, dir))) {
      try {
        const v = Number(readFileSync(join(KVM_DEBUGFS, dir, f), 'utf8').trim());
        if (Number.isFinite(v)) out[f] = v;
      } catch {
        // not a readable counter (a directory, a histogram)
      }
    }
    return out;
  } catch {
    return undefined;
  }
}

const TRACING = '/sys/kernel/debug/tracing';

/** Starts recording KVM's port I/O exits (the kvm_pio tracepoint), from an empty buffer. */
function pioTraceStart(): void {
  try {
    writeFileSync(join(TRACING, 'trace'), '');
    writeFileSync(join(TRACING, 'events', 'kvm', 'kvm_pio', 'enable'), '1');
  } catch {
    // no tracing: no port breakdown
  }
}

/** Stops it; port I/O exits by direction and port ("read 0x3fd": n). */
function pioTraceStop(): Record<string, number> | undefined {
  try {
    writeFileSync(join(TRACING, 'events', 'kvm', 'kvm_pio', 'enable'), '0');
    const out: Record<string, number> = {};
    for (const m of readFileSync(join(TRACING, 'trace'), 'utf8').matchAll(
      /kvm_pio: pio_(read|write) at (0x[0-9a-f]+)/g,
    )) {
      const k = `${m[1]} ${m[2]}`;
      out[k] = (out[k] ?? 0) + 1;
    }
    return out;
  } catch {
    return undefined;
  }
}

export function statsDelta(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of Object.entries(b)) if (v !== (a[k] ?? 0)) d[k] = v - (a[k] ?? 0);
  return d;
}

/** The lines a benchmark program in the guest prints: `start` before its measurements, `result {json}` after. */
export interface GuestMarks {
  name: string;
  start: string;
  result: string;
}
const BLK_MARKS: GuestMarks = { name: 'blkbench', start: BLKBENCH_START, result: BLKBENCH_MARK };

/** QEMU -M microvm with KVM, one vCPU, a serial console on stdio and virtio 1.x over MMIO, as vireo's guests get. */
export function qemuMicrovmArgs(memMiB: number): string[] {
  return [
    '-M',
    'microvm',
    '-enable-kvm',
    '-cpu',
    'host',
    '-m',
    String(memMiB),
    '-smp',
    '1',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    // virtio 1.x over MMIO (version 2), as vireo; QEMU's default for virtio-mmio is the legacy interface.
    '-global',
    'virtio-mmio.force-legacy=false',
  ];
}

/**
 * One boot of a guest benchmark: RunResult with the guest's result line as `result`, and with
 * keepOutput the guest's whole console output (for suites that print more than one line).
 */
export type GuestRun = Omit<RunResult, 'imageWritten' | 'blkbench'> & {
  result: Record<string, unknown> | null;
  output?: string;
  /** With keepOutput: the VMM's last 4 KiB of stderr. */
  stderrTail?: string;
};

export function runGuest(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  withKvmStats: boolean,
  marks: GuestMarks = BLK_MARKS,
  keepOutput = false,
): Promise<GuestRun> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let out = '';
    let err = '';
    let bannerMs: number | null = null;
    let statsAtStart: Record<string, number> | undefined;
    let kvm: Record<string, number> | undefined;
    let pio: Record<string, number> | undefined;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
      if (bannerMs === null && out.includes('vireo guest ready')) bannerMs = performance.now() - t0;
      // The start line comes a second before the measurements, the result line just after them:
      // the difference is what the benchmark cost KVM.
      if (withKvmStats && statsAtStart === undefined && out.includes(marks.start)) {
        statsAtStart = kvmStats(child.pid) ?? {};
        pioTraceStart();
      }
      if (withKvmStats && statsAtStart && kvm === undefined && out.includes(marks.result)) {
        const end = kvmStats(child.pid);
        pio = pioTraceStop();
        if (end) kvm = statsDelta(statsAtStart, end);
      }
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString('latin1');
    });
    child.on('error', (e) => {
      err += `\n${e.message}`;
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      if (withKvmStats && statsAtStart && kvm === undefined) pioTraceStop();
      const wallMs = performance.now() - t0;
      const line = out
        .split('\n')
        .map((l) => l.replace(/\r$/, ''))
        .find((l) => l.startsWith(marks.result));
      let result: Record<string, unknown> | null = null;
      let error: string | undefined;
      if (line !== undefined) {
        try {
          result = JSON.parse(line.slice(marks.result.length)) as Record<string, unknown>;
          if (typeof result.error === 'string') error = `${marks.name}: ${result.error}`;
        } catch {
          error = `unreadable ${marks.name} line: ${line}`;
        }
      } else {
        const lastLines = `${out}\n${err}`
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l !== '')
          .slice(-4)
          .join(' | ');
        error = `no ${marks.result.trim()} line (status ${status}, signal ${signal}): ${lastLines}`;
      }
      const m = /vireo: device counters (\{.*\})/.exec(err);
      let counters: unknown;
      if (m?.[1]) {
        try {
          counters = JSON.parse(m[1]);
        } catch {
          // left out
        }
      }
      resolve({
        status,
        signal,
        wallMs,
        bannerMs,
        result,
        ...(kvm !== undefined ? { kvm } : {}),
        ...(pio !== undefined ? { pio } : {}),
        ...(counters !== undefined ? { counters } : {}),
        ...(error !== undefined ? { error } : {}),
        ...(keepOutput ? { output: out.replace(/\r/g, ''), stderrTail: err.slice(-4096) } : {}),
      });
    });
  });
}

// --- V8 profiles (VIREO_BENCH_BLK_PROFILE=1) -------------------------------------------------------

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}
export interface ProfileSummary {
  thread: string;
  totalMs: number;
  /** Self time by function, biggest first (time blocked in a native call counts to its JS caller). */
  self: { fn: string; ms: number; pct: number }[];
  /** Time by function with what it calls, biggest first. */
  inclusive: { fn: string; ms: number; pct: number }[];
}

export function summarizeProfile(thread: string, path: string, topN = 30): ProfileSummary {
  const p = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (n: ProfileNode): string => {
    const f = n.callFrame;
    const url = f.url.replace(/^.*\/(src|bench|node_modules)\//, '$1/');
    return `${f.functionName || '(anonymous)'}${url ? ` ${url}:${f.lineNumber + 1}` : ''}`;
  };
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    total += dt;
    const n = byId.get(id);
    if (!n) return;
    self.set(key(n), (self.get(key(n)) ?? 0) + dt);
    const seen = new Set<string>();
    for (let m: ProfileNode | undefined = n; m; m = byId.get(parent.get(m.id) ?? -1)) {
      const k = key(m);
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + dt);
    }
  });
  const top = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, topN)
      .map(([fn, ms]) => ({ fn, ms: Math.round(ms), pct: Math.round((ms / total) * 1000) / 10 }));
  return { thread, totalMs: Math.round(total), self: top(self), inclusive: top(incl) };
}

/**
 * A --require preload for vireo that runs the V8 profiler in the virtio I/O thread only (the worker
 * whose first message carries the device slots) and writes its profile when the thread stops. Only
 * that thread: the profiler's SIGPROF would interrupt the main thread's KVM ioctls (KVM_CREATE_VM
 * fails with EINTR under node --cpu-prof) and add exits to the vCPU threads.
 */
export function profilerPreload(out: string): string {
  return `'use strict';
const { isMainThread, parentPort } = require('node:worker_threads');
if (!isMainThread && parentPort) {
  const once = parentPort.once;
  parentPort.once = function (ev, fn) {
    if (ev !== 'message') return once.call(this, ev, fn);
    return once.call(this, ev, (m) => {
      if (m && typeof m === 'object' && 'slots' in m && 'controlFd' in m) {
        const s = new (require('node:inspector').Session)();
        s.connect();
        s.post('Profiler.enable');
        s.post('Profiler.start');
        const post = parentPort.postMessage.bind(parentPort);
        parentPort.postMessage = (msg, ...rest) => {
          if (msg && msg.type === 'stopped')
            s.post('Profiler.stop', (err, r) => {
              if (!err) require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(r.profile));
            });
          return post(msg, ...rest);
        };
      }
      fn(m);
    });
  };
}
`;
}

// ---------------------------------------------------------------------------------------------

/**
 * The I/O thread's CPU profiler for a suite's vireo runs (`on`: VIREO_BENCH_*_PROFILE=1): the preload
 * file for `node --require`, cleared before each run and summarised after it.
 */
export function ioThreadProfiler(
  work: string,
  on: boolean,
): {
  preload: string | undefined;
  reset(): void;
  take(): ProfileSummary[] | undefined;
} {
  const out = join(work, 'io-thread.cpuprofile');
  const preload = join(work, 'profile-io-thread.cjs');
  if (on) writeFileSync(preload, profilerPreload(out));
  return {
    preload: on ? preload : undefined,
    reset: () => rmSync(out, { force: true }),
    take: () => (on && existsSync(out) ? [summarizeProfile('io-thread', out)] : undefined),
  };
}

/** `vireo run` of the kit's kernel with one vCPU and the given device options, through the launcher. */
export function vireoKitArgs(o: {
  launcher: string;
  preload: string | undefined;
  kernel: string;
  initrd: string;
  memMiB: number;
  devices: string[];
  cmdline: string;
}): string[] {
  return [
    ...(o.preload ? ['--require', o.preload] : []),
    o.launcher,
    'run',
    '--native',
    '--kernel',
    o.kernel,
    '--initrd',
    o.initrd,
    '--mem',
    String(o.memMiB),
    '--cpus',
    '1',
    ...o.devices,
    '--cmdline',
    o.cmdline,
  ];
}

/** A peer VMM: its command, arguments and environment. */
export type Peer = [string, string[], NodeJS.ProcessEnv];

/**
 * `runs` rounds of `once` over every peer, interleaved and in alternating order, so drift in the
 * emulated machine hits all alike; results by peer name.
 */
export async function interleaved<R>(
  suite: string,
  peers: Record<string, Peer>,
  runs: number,
  once: (name: string, peer: Peer) => Promise<R>,
): Promise<Record<string, R[]>> {
  const results: Record<string, R[]> = {};
  for (let i = 0; i < runs; i++) {
    const names = Object.keys(peers);
    if (i % 2 === 1) names.reverse();
    for (const name of names) {
      process.stderr.write(`[${suite}] run ${i + 1}/${runs}: ${name}\n`);
      const list = results[name] ?? [];
      list.push(await once(name, peers[name] as Peer));
      results[name] = list;
    }
  }
  return results;
}

/**
 * Writes `dir`/vireo.mjs, which runs `vireo` (its argv) from the same compiled tree as this script
 * (bin/vireo.js always loads dist/), and returns its path.
 */
export function writeVireoLauncher(dir: string): string {
  const cli = (f: string): string => pathToFileURL(join(here, '..', 'src', 'cli', f)).href;
  const launcher = [
    `import { prewarmForArgs } from '${cli('prewarm.js')}';`,
    'const argv = process.argv.slice(2);',
    'prewarmForArgs(argv);',
    `const { main } = await import('${cli('main.js')}');`,
    'process.exitCode = await main(argv);',
  ].join(' ');
  // A file, not `node -e`: worker threads inherit the process's exec arguments (--input-type too).
  const file = join(dir, 'vireo.mjs');
  writeFileSync(file, `${launcher}\n`);
  return file;
}

async function main(): Promise<void> {
  const { DEFAULT_LINUX_CMDLINE } = await import('../src/cli/main.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const p = blkParams();
  const profile = process.env.VIREO_BENCH_BLK_PROFILE === '1';
  const withKvmStats = process.env.VIREO_BENCH_BLK_KVMSTAT === '1';
  if (withKvmStats) ensureDebugfs('blk');
  // Inside the lane the kit prepared outside is used as it is; elsewhere it is fetched if missing.
  const kit = await prepareKit({ offline: process.env.VIREO_NESTED === '1' });
  const given = process.env.VIREO_BENCH_BLK_INITRD;
  const initrd = given && existsSync(given) ? given : prepareBlkGuest(kit).initrd;
  const work = mkdtempSync(join(tmpdir(), 'vireo-blk-bench-'));
  const img = join(work, 'disk.img');
  const cmdline = [
    DEFAULT_LINUX_CMDLINE,
    'quiet vireo.exit=poweroff rdinit=/blkbench-init',
    `blkbench.mib=${p.mib} blkbench.secs=${p.secs} blkbench.qd=${p.qd}`,
  ].join(' ');
  const prof = ioThreadProfiler(work, profile);
  const vireoArgs = vireoKitArgs({
    launcher: writeVireoLauncher(work),
    preload: prof.preload,
    kernel: kit.kernel,
    initrd,
    memMiB: MEM,
    devices: ['--drive', `path=${img},id=d0`],
    cmdline,
  });
  const qemuDrive = `if=none,id=d0,file=${img},format=raw,cache=writeback,aio=threads`;
  const qemuArgs = [
    ...qemuMicrovmArgs(MEM),
    '-drive',
    qemuDrive,
    '-device',
    'virtio-blk-device,drive=d0',
    '-kernel',
    kit.kernel,
    '-initrd',
    initrd,
    '-append',
    cmdline,
  ];
  const peers: Record<string, Peer> = {
    vireo: [process.execPath, vireoArgs, { ...process.env, VIREO_VERBOSE: '1' }],
    'qemu-microvm': ['qemu-system-x86_64', qemuArgs, process.env],
  };
  let results: Record<string, RunResult[]>;
  try {
    results = await interleaved('blk', peers, p.runs, async (name, [cmd, args, env]) => {
      resetImage(img, p.mib);
      prof.reset();
      const { result, ...r } = await runGuest(cmd, args, env, withKvmStats);
      const res: RunResult = { ...r, blkbench: result, imageWritten: imageTagged(img, p.mib) };
      if (name === 'vireo') res.profile = prof.take();
      return res;
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const bench = {
    ...p,
    memMiB: MEM,
    imageMiB: IMAGE_MIB,
    imageOn: process.env.VIREO_NESTED === '1' ? "tmpfs (the lane's overlay /tmp)" : tmpdir(),
    cmdline,
    vireo: `vireo run --native --kernel K --initrd I --mem ${MEM} --cpus 1 --drive path=IMG,id=d0 --cmdline …`,
    qemu: `qemu-system-x86_64 ${qemuArgs.map((a) => (a === kit.kernel ? 'K' : a === initrd ? 'I' : a === cmdline ? '…' : a.replace(img, 'IMG'))).join(' ')}`,
    results,
  };
  process.stdout.write(`@bench ${JSON.stringify(bench)}\n`);
}

const invoked = process.argv[1];
if (invoked !== undefined && realpathSync(invoked) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`blk-inner: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
