/**
 * vireo's benchmark suite (`npm run bench`). Three measurements, each against a peer:
 *
 * 1. PIO exit round trip: a guest does N `out`s to an unclaimed port; vireo against a minimal C
 *    VMM (bench/pio-loop.c) running the same guest in the same entry state. Per-exit time is the
 *    slope between two guest sizes, so start-up and tear-down cancel out.
 * 2. Process start to the guest's first instruction: a Multiboot guest whose first instruction
 *    writes to isa-debug-exit; wall time from spawn to exit of vireo (bench/first-insn-vm.ts) and of
 *    QEMU booting the same image with -kernel.
 * 3. VMM resident memory beyond guest RAM: a 1-vCPU 128 MiB guest that prints "ready" and halts;
 *    the VMM process's VmRSS minus the guest RAM pages resident in it (from /proc/<pid>/pagemap).
 * 4. Linux boot time (suite `linux`), 5. virtio-blk throughput (suite `blk`) and 8. virtio-net TCP
 *    throughput (suite `net`): Debian's stock kernel, vireo against QEMU -M microvm, in the nested lane
 *    on PVM hosts (bench/linux-boot-inner.ts, bench/blk-inner.ts, bench/net-inner.ts run there).
 * 6. Snapshot create and restore (suite `snapshot`, bench/snapshot-inner.ts), against Firecracker's
 *    quoted figures. 7. The API (suite `api`, bench/api-inner.ts): socket ready after process start
 *    and request latency, vireo-firecracker against QEMU's QMP.
 * 10. TCP throughput on a user-mode network (suite `usernet`, bench/usernet-inner.ts, in the lane):
 *    vireo --net user against QEMU -M microvm with the same passt and with slirp. 11. File systems
 *    (suite `fs`, bench/fs-inner.ts, in the lane): a virtio-fs share against ext4 on virtio-blk in the
 *    same vireo guest.
 *
 * Prints a markdown table and writes bench/results/latest.json (VIREO_BENCH_RESULTS_DIR: elsewhere).
 * A run of some suites (VIREO_BENCH_ONLY) replaces their rows in latest.json and keeps the others'.
 * The `linux`, `blk`, `net`, `usernet` and `fs` suites also write their own file there (linux-boot.json,
 * blk.json, net.json, usernet.json, fs.json). A
 * benchmark or peer that cannot run gives a row that says why; the suite itself does not fail for that.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { buildGuest, buildPioLoop, repoRoot } from './build.js';
import {
  anonMappings,
  benchEvents,
  type LiveChild,
  median,
  procStatusKb,
  residentBytes,
  runTimed,
  startLive,
  summarize,
  tail,
} from './util.js';

const here = dirname(fileURLToPath(import.meta.url));

/**
 * The checkout this script was built from: the nearest directory above it with package.json and
 * bench/run.ts. (build.ts's repoRoot assumes dist/bench/; this also holds for a private --outDir.)
 */
function checkoutRoot(): string {
  for (let d = here; dirname(d) !== d; d = dirname(d))
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'bench', 'run.ts'))) return d;
  return repoRoot;
}
const NODE = process.execPath;
const VM_RUNNER = join(here, 'vm-runner.js');
const FIRST_INSN_VM = join(here, 'first-insn-vm.js');
const MEM_MIB = 128;

/**
 * Guest sizes for the PIO slope (multiples of 64) and repetitions. Runs are short and interleaved
 * (vireo N1, C N1, vireo N2, C N2, repeated) so that load from other processes on the host hits
 * both sides alike; each side's figure is the median of its per-repetition slopes.
 */
const PIO_N1 = 6_400;
const PIO_N2 = 64_000;
const PIO_REPS = 9;
/** Start-up runs (after warm-up runs that are not counted). */
const START_RUNS = 20;
const START_WARMUP = 2;
/** QEMU -M pc goes through SeaBIOS, emulated on PVM hosts (seconds a run): fewer runs. */
const START_RUNS_PC = 3;

interface Row {
  id: string;
  benchmark: string;
  unit: string;
  vireo: number | null;
  vireoNote?: string;
  peer: number | null;
  peerName: string;
  peerNote?: string;
  /** vireo / peer */
  ratio: number | null;
  goal: string;
  goalMet?: boolean;
  details: Record<string, unknown>;
}

function errText(e: unknown): string {
  return e instanceof Error ? (e.message.split('\n')[0] ?? e.message) : String(e);
}

function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

function findQemu(): { path: string; version: string } | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = join(dir || '.', 'qemu-system-x86_64');
    if (!existsSync(p)) continue;
    try {
      const v = execFileSync(p, ['--version'], { encoding: 'utf8', timeout: 10_000 }).split('\n')[0] ?? '';
      return { path: p, version: v.trim() };
    } catch {
      // not runnable: keep looking
    }
  }
  return undefined;
}

const QEMU_MACHINES = {
  microvm: { label: 'QEMU -M microvm', machine: 'microvm' },
  pc: { label: 'QEMU -M pc (SeaBIOS)', machine: 'pc' },
} as const;
type QemuMachine = keyof typeof QEMU_MACHINES;

function qemuArgs(machine: QemuMachine, kernel: string, serial: boolean): string[] {
  return [
    '-accel',
    'kvm',
    '-M',
    QEMU_MACHINES[machine].machine,
    '-m',
    String(MEM_MIB),
    '-smp',
    '1',
    '-kernel',
    kernel,
    '-display',
    'none',
    '-no-user-config',
    '-nodefaults',
    ...(serial ? ['-serial', 'stdio'] : []),
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=4',
  ];
}

// ---------------------------------------------------------------------------------------------
// 1. PIO exit round trip

function vireoPioRun(guest: string, n: number): number {
  const r = runTimed(NODE, [VM_RUNNER, guest, '--mem', String(MEM_MIB), '--serial', 'none'], { timeoutMs: 120_000 });
  const ev = benchEvents(r.stderr).find((e) => e.event === 'exited');
  if (!ev) throw new Error(`vireo run failed (status ${r.status}, signal ${r.signal}): ${tail(r.stderr)}`);
  if (ev.status !== 1) throw new Error(`vireo: guest ended with ${String(ev.message)}`);
  const exits = (ev.stats as Record<string, number>).exitsIo;
  if (exits !== n + 1) throw new Error(`vireo counted ${exits} port exits, expected ${n + 1}`);
  return ev.startToExitNs as number;
}

function cPioRun(exe: string, guest: string, n: number): number {
  const r = runTimed(exe, [guest, String(MEM_MIB)], { timeoutMs: 120_000 });
  if (r.status !== 0) throw new Error(`pio-loop failed (status ${r.status}, signal ${r.signal}): ${tail(r.stderr)}`);
  const j = JSON.parse(r.stdout.trim()) as { exits: number; ns: number; status: number };
  if (j.exits !== n + 1 || j.status !== 1)
    throw new Error(`pio-loop: ${j.exits} exits, status ${j.status}; expected ${n + 1}, 1`);
  return j.ns;
}

function benchPio(): Row {
  const row: Row = {
    id: 'pio-exit',
    benchmark: 'PIO exit round trip, µs/exit — vs C ioctl loop (bench/pio-loop.c)',
    unit: 'us',
    vireo: null,
    peer: null,
    peerName: 'C ioctl loop',
    ratio: null,
    goal: 'ratio ≤ 1.05',
    details: {},
  };
  const g1 = buildGuest({ name: 'pio64', n: PIO_N1 });
  const g2 = buildGuest({ name: 'pio64', n: PIO_N2 });
  let exe: string | undefined;
  try {
    exe = buildPioLoop();
  } catch (e) {
    row.peerNote = `cannot build pio-loop.c: ${errText(e)}`;
  }
  const v: Record<number, number[]> = { [PIO_N1]: [], [PIO_N2]: [] };
  const c: Record<number, number[]> = { [PIO_N1]: [], [PIO_N2]: [] };
  let vErr: string | undefined;
  let cErr: string | undefined = row.peerNote;
  // Interleaved, so drift in host load hits both sides alike.
  for (let rep = 0; rep < PIO_REPS; rep++) {
    for (const [n, g] of [
      [PIO_N1, g1],
      [PIO_N2, g2],
    ] as const) {
      if (vErr === undefined) {
        try {
          (v[n] as number[]).push(vireoPioRun(g, n));
        } catch (e) {
          vErr = errText(e);
        }
      }
      if (cErr === undefined && exe !== undefined) {
        try {
          (c[n] as number[]).push(cPioRun(exe, g, n));
        } catch (e) {
          cErr = errText(e);
        }
      }
    }
  }
  const slopes = (t: Record<number, number[]>) =>
    (t[PIO_N2] as number[]).map((t2, i) => (t2 - ((t[PIO_N1] as number[])[i] as number)) / (PIO_N2 - PIO_N1) / 1000);
  const whole = (t: Record<number, number[]>) => median(t[PIO_N2] as number[]) / (PIO_N2 + 1) / 1000;
  if (vErr === undefined) {
    const sv = slopes(v);
    row.vireo = median(sv);
    row.details.vireo = { usPerExitByRep: sv, wholeRunUsPerExit: whole(v), startToExitNs: v };
  } else row.vireoNote = vErr;
  if (cErr === undefined) {
    const sc = slopes(c);
    row.peer = median(sc);
    row.details.peer = { usPerExitByRep: sc, wholeRunUsPerExit: whole(c), firstRunToExitNs: c };
  } else row.peerNote = cErr;
  if (vErr === undefined && cErr === undefined) {
    const sv = slopes(v);
    const sc = slopes(c);
    row.details.ratioByRep = sv.map((x, i) => x / (sc[i] as number));
  }
  row.details.method = `median over ${PIO_REPS} interleaved repetitions of the slope between runs of N=${PIO_N1} and N=${PIO_N2} exits; guest at 64-bit CPL 0, loop unrolled 64x, port 0x510`;
  if (row.vireo !== null && row.peer !== null) {
    row.ratio = row.vireo / row.peer;
    row.goalMet = row.ratio <= 1.05;
  }
  return row;
}

// ---------------------------------------------------------------------------------------------
// 2. Process start to the guest's first instruction

function startRows(qemu: { path: string; version: string } | undefined): Row[] {
  const guest = buildGuest({ name: 'first-insn' });
  const vireoWall: number[] = [];
  const inProc: { moduleStartMs: number[]; createdMs: number[]; exitedMs: number[] } = {
    moduleStartMs: [],
    createdMs: [],
    exitedMs: [],
  };
  let vErr: string | undefined;
  // NODE_EXTRA_CA_CERTS (set on some machines for npm) makes every Node process start ~40 ms
  // slower while it parses the certificates; vireo never uses TLS, so measure without it.
  const env: NodeJS.ProcessEnv = { ...process.env, VIREO_BENCH_TIMINGS: '1' };
  delete env.NODE_EXTRA_CA_CERTS;
  const firstInsn: number[] = [];
  for (let i = 0; i < START_WARMUP + START_RUNS && vErr === undefined; i++) {
    const spawnEpochMs = performance.timeOrigin + performance.now();
    const r = runTimed(NODE, [FIRST_INSN_VM, guest], { timeoutMs: 30_000, env });
    if (r.status !== 5) {
      vErr = `vireo exited with status ${r.status} (signal ${r.signal}), expected 5: ${tail(r.stderr)}`;
      break;
    }
    if (i < START_WARMUP) continue;
    vireoWall.push(r.wallNs / 1e6);
    const ev = benchEvents(r.stderr)[0];
    if (ev) {
      inProc.moduleStartMs.push(ev.moduleStartMs as number);
      inProc.createdMs.push(ev.createdMs as number);
      inProc.exitedMs.push(ev.exitedMs as number);
      if (typeof ev.firstExitEpochMs === 'number') firstInsn.push(ev.firstExitEpochMs - spawnEpochMs);
    }
  }
  // Context: what a Node process that does nothing costs here (start-up and exit).
  const nodeBaseline: number[] = [];
  for (let i = 0; i < 10 && vErr === undefined; i++) {
    const r = runTimed(NODE, ['-e', '0'], { timeoutMs: 30_000, env });
    if (r.status === 0 && i >= START_WARMUP) nodeBaseline.push(r.wallNs / 1e6);
  }
  const vireo = vErr === undefined ? median(vireoWall) : null;
  const vireoDetails =
    vErr === undefined
      ? {
          wallMs: summarize(vireoWall),
          emptyNodeProcessMedianMs: median(nodeBaseline),
          inProcessMedianMs: {
            nodeStartAndModuleLoad: median(inProc.moduleStartMs),
            vmCreateDone: median(inProc.createdMs),
            guestExitedAndVmReleased: median(inProc.exitedMs),
          },
        }
      : {};

  const rows: Row[] = [];
  const first = firstInsn.length > 0 ? median(firstInsn) : null;
  rows.push({
    id: 'start-first-insn',
    benchmark:
      "Process spawn → guest's first instruction (timestamped at its exit), median ms — vs an empty Node process",
    unit: 'ms',
    vireo: first,
    peer: median(nodeBaseline),
    peerName: 'node -e 0 (spawn to exit)',
    ratio: first !== null ? first / median(nodeBaseline) : null,
    goal: 'vireo ≤ 50 ms',
    goalMet: first !== null ? first <= 50 : false,
    details: { firstInsnMs: summarize(firstInsn) },
  });
  for (const machine of ['microvm', 'pc'] as const) {
    const label = QEMU_MACHINES[machine].label;
    const row: Row = {
      id: `start-${machine}`,
      benchmark: `Process start → guest's first instruction → exit, median ms — vs ${label}`,
      unit: 'ms',
      vireo,
      peer: null,
      peerName: label,
      ratio: null,
      goal: 'ratio < 1',
      details: { vireo: machine === 'microvm' ? vireoDetails : 'as in start-microvm' },
    };
    if (vErr !== undefined) row.vireoNote = vErr;
    if (!qemu) row.peerNote = 'qemu-system-x86_64 not found (apt-get install qemu-system-x86)';
    else {
      const runs = machine === 'pc' ? START_RUNS_PC : START_RUNS;
      const warm = machine === 'pc' ? 0 : START_WARMUP;
      const args = qemuArgs(machine, guest, false);
      const wall: number[] = [];
      for (let i = 0; i < warm + runs; i++) {
        const r = runTimed(qemu.path, args, { timeoutMs: machine === 'pc' ? 60_000 : 30_000 });
        if (r.status !== 5) {
          row.peerNote =
            r.signal === 'SIGKILL'
              ? `${label} did not reach the guest within the time limit`
              : `${label} exited with status ${r.status} (signal ${r.signal}), expected 5: ${tail(r.stderr)}`;
          break;
        }
        if (i >= warm) wall.push(r.wallNs / 1e6);
      }
      if (row.peerNote === undefined) {
        row.peer = median(wall);
        row.details.peer = { wallMs: summarize(wall), warmup: warm, command: `qemu-system-x86_64 ${args.join(' ')}` };
      }
    }
    if (row.vireo !== null && row.peer !== null) {
      row.ratio = row.vireo / row.peer;
      row.goalMet = row.ratio < 1;
    }
    rows.push(row);
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// 3. VMM resident memory beyond guest RAM

interface RssSample {
  vmRss: number;
  rssAnon: number;
  rssFile: number;
  guestResident: number;
  beyondGuest: number;
}

/** Wait for "ready" from the guest, let the VMM settle, then sample its memory a few times. */
async function sampleRss(
  child: LiveChild,
  guestRam: () => { start: number; size: number }[],
  what: string,
): Promise<RssSample> {
  try {
    if (!(await child.waitFor('ready', 60_000))) {
      const st = await Promise.race([child.exited, sleep(10).then(() => undefined)]);
      throw new Error(
        st
          ? `${what} exited (status ${st.status}, signal ${st.signal}) before the guest was ready: ${tail(child.stderr())}`
          : `${what}: the guest did not print "ready" within 60 s`,
      );
    }
    await sleep(500);
    const samples: RssSample[] = [];
    for (let i = 0; i < 3; i++) {
      const s = procStatusKb(child.pid, ['VmRSS', 'RssAnon', 'RssFile']);
      let guestResident = 0;
      for (const r of guestRam()) guestResident += residentBytes(child.pid, r.start, r.size);
      const vmRss = s.VmRSS ?? 0;
      samples.push({
        vmRss,
        rssAnon: s.RssAnon ?? 0,
        rssFile: s.RssFile ?? 0,
        guestResident,
        beyondGuest: vmRss - guestResident,
      });
      await sleep(200);
    }
    const mid = median(samples.map((s) => s.beyondGuest));
    return samples.find((s) => s.beyondGuest === mid) ?? (samples[samples.length - 1] as RssSample);
  } finally {
    await child.kill();
  }
}

const MiB_ = 1024 * 1024;
const mib = (b: number) => Math.round((b / MiB_) * 100) / 100;
const sampleMiB = (s: RssSample) => ({
  vmRssMiB: mib(s.vmRss),
  rssAnonMiB: mib(s.rssAnon),
  rssFileMiB: mib(s.rssFile),
  guestResidentMiB: mib(s.guestResident),
});

async function rssRows(qemu: { path: string; version: string } | undefined): Promise<Row[]> {
  const guest = buildGuest({ name: 'idle' });
  let vireo: RssSample | undefined;
  let vErr: string | undefined;
  try {
    const child = startLive(NODE, [VM_RUNNER, guest, '--mem', String(MEM_MIB), '--serial', 'stdio']);
    vireo = await sampleRss(
      child,
      () => {
        const ev = benchEvents(child.stderr()).find((e) => e.event === 'created');
        const ram = (ev?.guestRam ?? []) as { hostAddr: number; size: number }[];
        if (ram.length === 0) throw new Error('vm-runner did not report where guest RAM is mapped');
        return ram.map((r) => ({ start: r.hostAddr, size: r.size }));
      },
      'vireo',
    );
  } catch (e) {
    vErr = errText(e);
  }

  const rows: Row[] = [];
  for (const machine of ['microvm', 'pc'] as const) {
    const label = QEMU_MACHINES[machine].label;
    const row: Row = {
      id: `rss-${machine}`,
      benchmark: `VMM RSS beyond guest RAM, MiB (1 vCPU, ${MEM_MIB} MiB guest) — vs ${label}`,
      unit: 'MiB',
      vireo: vireo ? mib(vireo.beyondGuest) : null,
      peer: null,
      peerName: label,
      ratio: null,
      goal: '—',
      details: { vireo: vireo ? sampleMiB(vireo) : undefined },
    };
    if (vErr !== undefined) row.vireoNote = vErr;
    if (!qemu) row.peerNote = 'qemu-system-x86_64 not found (apt-get install qemu-system-x86)';
    else {
      const args = qemuArgs(machine, guest, true);
      try {
        const child = startLive(qemu.path, args);
        const s = await sampleRss(
          child,
          () => {
            // QEMU maps guest RAM as one anonymous mapping of exactly the RAM size.
            const maps = anonMappings(child.pid);
            const exact = maps.find((m) => m.size === MEM_MIB * MiB_);
            const ram = exact ?? maps.filter((m) => m.size >= MEM_MIB * MiB_).sort((a, b) => a.size - b.size)[0];
            if (!ram) throw new Error(`no ${MEM_MIB} MiB guest RAM mapping found in QEMU`);
            return [ram];
          },
          label,
        );
        row.peer = mib(s.beyondGuest);
        row.details.peer = { ...sampleMiB(s), command: `qemu-system-x86_64 ${args.join(' ')}` };
      } catch (e) {
        row.peerNote = errText(e);
      }
    }
    if (row.vireo !== null && row.peer !== null) row.ratio = row.vireo / row.peer;
    rows.push(row);
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------

function fmt(x: number | null, unit: string, note: string | undefined): string {
  if (x === null) return `n/a${note ? `: ${note.replace(/\|/g, '/')}` : ''}`;
  const digits = unit === 'us' ? 2 : 1;
  return x.toFixed(digits);
}

function table(rows: Row[]): string {
  const lines = ['| benchmark | vireo | peer | ratio | goal |', '| --- | ---: | --- | ---: | --- |'];
  for (const r of rows) {
    const peer = fmt(r.peer, r.unit, r.peerNote);
    const ratio = r.ratio !== null ? r.ratio.toFixed(2) : '—';
    const goal = r.goalMet === undefined ? r.goal : `${r.goal} ${r.goalMet ? '✓' : '✗'}`;
    lines.push(`| ${r.benchmark} | ${fmt(r.vireo, r.unit, r.vireoNote)} | ${peer} | ${ratio} | ${goal} |`);
  }
  return lines.join('\n');
}

/** JSON replacer: 4 significant decimals are plenty for timings. */
function roundNumbers(_key: string, value: unknown): unknown {
  return typeof value === 'number' && !Number.isInteger(value) ? Number(value.toFixed(4)) : value;
}

function failedRow(id: string, benchmark: string, e: unknown): Row {
  const note = errText(e);
  return {
    id,
    benchmark,
    unit: '',
    vireo: null,
    vireoNote: note,
    peer: null,
    peerName: 'peer',
    peerNote: note,
    ratio: null,
    goal: '—',
    details: {},
  };
}

// ---------------------------------------------------------------------------------------------
// 4. Linux boot time, in the nested lane (the only place a stock kernel boots on PVM hosts)

async function linuxBootRows(): Promise<Row[]> {
  // On a hardware-virtualization host the same measurement runs directly; on PVM it needs the lane.
  const { detectFlavour } = await import('../src/kvm/kvm.js');
  if (detectFlavour() === 'vmx' || detectFlavour() === 'svm') {
    const direct = runTimed(NODE, [join(here, 'linux-boot-inner.js')], { timeoutMs: 30 * 60_000 });
    return linuxRows(direct.stdout, 'direct on this host', 0);
  }
  const { runNested } = await import('../src/kit/nested.js');
  const r = await runNested({
    command: [NODE, join(here, 'linux-boot-inner.js')],
    cwd: repoRoot,
    timeoutMs: 30 * 60_000,
    cpus: 1,
  });
  return linuxRows(r.output, 'nested lane', r.timings.bootMs);
}

function linuxRows(output: string, where: string, nestedBootMs: number): Row[] {
  const ev = benchEvents(output)[0] as
    | { results: Record<string, { bannerMs: number | null; exitMs: number; status: number | null }[]> }
    | undefined;
  if (!ev) throw new Error(`the Linux boot run (${where}) printed no result: ${tail(output)}`);
  const med = (name: string, k: 'bannerMs' | 'exitMs'): number | null => {
    const v = (ev.results[name] ?? []).map((t) => t[k]).filter((x): x is number => x !== null);
    return v.length > 0 ? median(v) : null;
  };
  const rows: Row[] = [];
  for (const [peer, label] of [
    ['qemu-microvm', 'QEMU -M microvm'],
    ['qemu-pc', 'QEMU -M pc'],
  ] as const) {
    for (const k of ['bannerMs', 'exitMs'] as const) {
      const vireo = med('vireo', k);
      const other = med(peer, k);
      const row: Row = {
        id: `linux-${k === 'bannerMs' ? 'init' : 'poweroff'}-${peer}`,
        benchmark: `Linux (Debian cloud kernel, 1 vCPU) spawn → ${k === 'bannerMs' ? "init's banner" : 'power-off and exit'}, ${where}, median ms — vs ${label}`,
        unit: 'ms',
        vireo,
        peer: other,
        peerName: label,
        ratio: vireo !== null && other !== null ? vireo / other : null,
        goal: k === 'bannerMs' && peer === 'qemu-microvm' ? 'ratio < 1' : '—',
        details: { runs: ev.results, where, nestedBootMs },
      };
      if (row.goal === 'ratio < 1' && row.ratio !== null) row.goalMet = row.ratio < 1;
      rows.push(row);
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// 6. Snapshots (bench/snapshot-inner.ts): create throughput and restore latency in one process.
//    Firecracker quotes 4–10 ms for a restore; there is no peer in this run (QEMU's savevm/loadvm
//    path is not comparable), so the rows carry the goal, not a ratio.

function snapshotRows(): Row[] {
  const r = runTimed(NODE, [join(here, 'snapshot-inner.js')], { timeoutMs: 20 * 60_000 });
  const ev = benchEvents(r.stdout).find((e) => e.suite === 'snapshot') as
    | {
        results: {
          mib: number;
          createGiBs: number;
          restoreMs: number;
          restores: number[];
          apiLoadMs: number | null;
          apiLoads: number[];
          restoreDevicesMs?: number;
          fullCreateMs: number;
          diffCreateMs: number;
        }[];
      }
    | undefined;
  if (!ev) throw new Error(`snapshot-inner.js printed no result (status ${r.status}): ${tail(r.stderr)}`);
  const rows: Row[] = [];
  for (const x of ev.results) {
    rows.push({
      id: `snapshot-create-${x.mib}`,
      benchmark: `snapshot create, ${x.mib} MiB guest with its RAM filled (sparse memory file, O_DIRECT), GiB/s`,
      unit: 'GiB/s',
      vireo: x.createGiBs,
      peer: null,
      peerName: '—',
      ratio: null,
      goal: '—',
      details: x,
    });
    const row: Row = {
      id: `snapshot-restore-${x.mib}`,
      benchmark: `snapshot restore of a ${x.mib} MiB guest, call → guest runs again (median ms)`,
      unit: 'ms',
      vireo: x.restoreMs,
      peer: null,
      peerName: 'Firecracker (quoted): 4–10',
      ratio: null,
      goal: '≤ 10 ms, flat in size',
      details: x,
    };
    row.goalMet = x.restoreMs <= 10;
    rows.push(row);
    if (typeof x.restoreDevicesMs === 'number')
      rows.push({
        id: `snapshot-restore-devices-${x.mib}`,
        benchmark: `the same guest with virtio-rng and virtio-balloon (the I/O thread prewarmed, as vireo-firecracker does), call → guest runs again (median ms)`,
        unit: 'ms',
        vireo: x.restoreDevicesMs,
        peer: null,
        peerName: 'Firecracker (quoted): 4–10',
        ratio: null,
        goal: '≤ 10 ms',
        goalMet: x.restoreDevicesMs <= 10,
        details: x,
      });
    if (typeof x.apiLoadMs === 'number')
      rows.push({
        id: `snapshot-apiload-${x.mib}`,
        benchmark: `the same through the Firecracker API: PUT /snapshot/load (resume_vm) → 204, fresh vireo-firecracker process (median ms)`,
        unit: 'ms',
        vireo: x.apiLoadMs,
        peer: null,
        peerName: 'Firecracker (quoted): 4–10',
        ratio: null,
        goal: '≤ 10 ms',
        goalMet: x.apiLoadMs <= 10,
        details: { apiLoads: x.apiLoads },
      });
    rows.push({
      id: `snapshot-diff-create-${x.mib}`,
      benchmark: `Diff snapshot create, ${x.mib} MiB guest (RAM filled) with 1% of its pages rewritten, ms (peer: a Full snapshot of the same guest)`,
      unit: 'ms',
      vireo: x.diffCreateMs,
      peer: x.fullCreateMs,
      peerName: 'vireo Full snapshot',
      ratio: x.diffCreateMs / x.fullCreateMs,
      goal: 'ratio < 1',
      goalMet: x.diffCreateMs < x.fullCreateMs,
      details: x,
    });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// 7. The API (bench/api-inner.ts): process start → control socket answers, and one request's latency
//    on a kept-alive connection; vireo-firecracker's HTTP API against QEMU's QMP.

function apiRows(qemu: { path: string } | undefined): Row[] {
  const r = runTimed(NODE, [join(here, 'api-inner.js'), ...(qemu ? [qemu.path] : [])], { timeoutMs: 10 * 60_000 });
  type Side = {
    name: string;
    readyMs: number | null;
    requestMedianUs: number | null;
    requestP99Us: number | null;
    error?: string;
  };
  const ev = benchEvents(r.stdout).find((e) => e.suite === 'api') as { results: Side[] } | undefined;
  if (!ev) throw new Error(`api-inner.js printed no result (status ${r.status}): ${tail(r.stderr)}`);
  const v = ev.results.find((x) => x.name === 'vireo-firecracker');
  const q = ev.results.find((x) => x.name === 'QEMU QMP');
  const row = (id: string, benchmark: string, unit: string, pick: (s: Side) => number | null): Row => {
    const vireo = v ? pick(v) : null;
    const peer = q ? pick(q) : null;
    const out: Row = {
      id,
      benchmark,
      unit,
      vireo,
      peer,
      peerName: 'QEMU QMP (-S, unix socket)',
      ratio: vireo !== null && peer !== null ? vireo / peer : null,
      goal: '—',
      details: { vireo: v, qemu: q },
    };
    if (vireo === null) out.vireoNote = v?.error ?? 'no result';
    if (peer === null) out.peerNote = q?.error ?? (qemu ? 'no result' : 'qemu-system-x86_64 not found');
    return out;
  };
  return [
    row(
      'api-ready',
      'process start → API socket answers (GET / ; QMP greeting + qmp_capabilities), median ms',
      'ms',
      (s) => s.readyMs,
    ),
    row(
      'api-request',
      'one API request on a kept-alive connection (GET /machine-config ; QMP query-status), median µs',
      'us',
      (s) => s.requestMedianUs,
    ),
    row('api-request-p99', 'the same requests, p99 µs', 'us', (s) => s.requestP99Us),
  ];
}

// ---------------------------------------------------------------------------------------------
// 5. virtio-blk throughput, in the nested lane: blkbench (bench/guests/blkbench.c) in the same guest
//    on the same image file under vireo and QEMU -M microvm

/** Lane vCPUs for the blk suite: the guest's vCPU and the VMM's I/O thread(s) can then run at once. */
const BLK_LANE_CPUS = Number(process.env.VIREO_BENCH_BLK_LANE_CPUS ?? 2);

async function blkBenchRows(): Promise<Row[]> {
  const { blkParams, prepareBlkGuest } = await import('./blk-inner.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const params = blkParams();
  // Built here (gcc is slow in the lane); the lane sees this host's files, /tmp included.
  const guest = prepareBlkGuest(await prepareKit());
  const env: Record<string, string> = { VIREO_BENCH_BLK_INITRD: guest.initrd };
  for (const [k, v] of Object.entries(process.env))
    if (k.startsWith('VIREO_BENCH_BLK_') && k !== 'VIREO_BENCH_BLK_LANE_CPUS' && v !== undefined) env[k] = v;
  if (process.env.VIREO_DISK_THREADS !== undefined) env.VIREO_DISK_THREADS = process.env.VIREO_DISK_THREADS;
  const inner = join(here, 'blk-inner.js');
  const { detectFlavour } = await import('../src/kvm/kvm.js');
  if (detectFlavour() === 'vmx' || detectFlavour() === 'svm') {
    const direct = runTimed(NODE, [inner], { timeoutMs: 60 * 60_000, env: { ...process.env, ...env } });
    return blkRows(direct.stdout, 'direct on this host', 0, params);
  }
  const { runNested } = await import('../src/kit/nested.js');
  log(
    `blk: ${params.runs} runs per VMM in the nested lane (${BLK_LANE_CPUS} vCPUs), ${params.mib} MiB sequential, ${params.secs} s per random phase`,
  );
  const r = await runNested({
    command: [NODE, inner],
    cwd: checkoutRoot(),
    timeoutMs: 60 * 60_000,
    cpus: BLK_LANE_CPUS,
    memMiB: 3072,
    env,
  });
  if (r.status !== 0) throw new Error(`blk-inner.js failed in the nested lane (status ${r.status}): ${tail(r.output)}`);
  return blkRows(r.output, `nested lane, ${BLK_LANE_CPUS} vCPUs`, r.timings.bootMs, params);
}

type BlkRun = { blkbench: Record<string, unknown> | null; error?: string };
/** vireo/QEMU for each run i that both completed (run i of each peer ran back to back). */
function pairedRatios(a: BlkRun[], b: BlkRun[], key: string): (number | null)[] {
  return a.map((r, i) => {
    const x = r.blkbench?.[key];
    const y = b[i]?.blkbench?.[key];
    return typeof x === 'number' && typeof y === 'number' && y > 0 ? x / y : null;
  });
}

/** Indexes of the runs whose guest logged "APIC timer disabled due to verification failure". */
function apicTimerFailures(runs: BlkRun[]): number[] {
  return runs.flatMap((r, i) => (String(r.blkbench?.clockLog ?? '').includes('APIC timer disabled') ? [i] : []));
}

/** What the last blk run reported in full (every @blkbench line, wall times, vireo's device counters), for blk.json. */
let blkRaw: unknown;

function blkRows(
  output: string,
  where: string,
  nestedBootMs: number,
  params: { mib: number; secs: number; qd: number },
): Row[] {
  const ev = benchEvents(output)[0] as
    | { results: Record<string, BlkRun[]>; qemu?: string; cmdline?: string }
    | undefined;
  if (!ev) throw new Error(`the virtio-blk run (${where}) printed no result: ${tail(output)}`);
  blkRaw = ev;
  const values = (peer: string, key: string): number[] =>
    (ev.results[peer] ?? [])
      .map((r) => r.blkbench?.[key])
      .filter((x): x is number => typeof x === 'number' && Number.isFinite(x) && x > 0);
  const firstError = (peer: string): string | undefined => (ev.results[peer] ?? []).find((r) => r.error)?.error;
  const metrics = [
    {
      id: 'blk-seq-read',
      key: 'seqReadMiBs',
      unit: 'MiB/s',
      what: `sequential read, ${params.mib} MiB in 1 MiB requests, QD1`,
    },
    {
      id: 'blk-seq-write',
      key: 'seqWriteMiBs',
      unit: 'MiB/s',
      what: `sequential write, ${params.mib} MiB in 1 MiB requests + fsync, QD1`,
    },
    { id: 'blk-rand-read', key: 'randReadIops', unit: 'IOPS', what: `4 KiB random read, QD1, ${params.secs} s` },
    ...(params.qd > 1
      ? [
          {
            id: `blk-rand-read-qd${params.qd}`,
            key: 'randReadQdIops',
            unit: 'IOPS',
            what: `4 KiB random read, QD${params.qd} (${params.qd} threads), ${params.secs} s`,
          },
        ]
      : []),
  ];
  return metrics.map((m) => {
    const v = values('vireo', m.key);
    const q = values('qemu-microvm', m.key);
    const vireo = v.length > 0 ? median(v) : null;
    const peer = q.length > 0 ? median(q) : null;
    const row: Row = {
      id: m.id,
      benchmark: `virtio-blk (Debian cloud kernel, O_DIRECT on /dev/vda) ${m.what}, ${where}, median ${m.unit}, higher is better — vs QEMU -M microvm`,
      unit: m.unit,
      vireo,
      peer,
      peerName: 'QEMU -M microvm (virtio-blk-device, cache=writeback, aio=threads)',
      ratio: vireo !== null && peer !== null ? vireo / peer : null,
      goal: '—',
      details: {
        vireo: v,
        peer: q,
        // Runs are interleaved pairs; the lane's speed drifts with host load, so the pairs' ratios say more than one median.
        ratioByRun: pairedRatios(ev.results.vireo ?? [], ev.results['qemu-microvm'] ?? [], m.key),
        // Boots whose guest found its LAPIC timer unusable (it then programs the PIT, two port exits per timer event).
        apicTimerDisabledRuns: {
          vireo: apicTimerFailures(ev.results.vireo ?? []),
          qemu: apicTimerFailures(ev.results['qemu-microvm'] ?? []),
        },
        where,
        nestedBootMs,
        qemu: ev.qemu,
        cmdline: ev.cmdline,
      },
    };
    if (vireo === null) row.vireoNote = firstError('vireo') ?? 'no result';
    if (peer === null) row.peerNote = firstError('qemu-microvm') ?? 'no result';
    return row;
  });
}

// ---------------------------------------------------------------------------------------------
// 7. virtio-net TCP throughput, in the nested lane: iperf3 in the same guest against a server behind
//    the same TAP, vireo against QEMU -M microvm's userspace virtio-net (vhost=off)

/** Lane vCPUs for the net suite: the guest's vCPU, the VMM's I/O thread and iperf3's server. */
const NET_LANE_CPUS = Number(process.env.VIREO_BENCH_NET_LANE_CPUS ?? 2);

/** What the last net run reported in full (every @netbench line, wall times, device counters), for net.json. */
let netRaw: unknown;

async function netBenchRows(): Promise<Row[]> {
  const { netParams, prepareNetGuest } = await import('./net-inner.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const params = netParams();
  // Built here: iperf3 and its libraries come from this host (the lane sees the same files).
  const guest = prepareNetGuest(await prepareKit());
  const env: Record<string, string> = { VIREO_BENCH_NET_INITRD: guest.initrd };
  for (const [k, v] of Object.entries(process.env))
    if (k.startsWith('VIREO_BENCH_NET_') && k !== 'VIREO_BENCH_NET_LANE_CPUS' && v !== undefined) env[k] = v;
  const inner = join(here, 'net-inner.js');
  const { detectFlavour } = await import('../src/kvm/kvm.js');
  if (detectFlavour() === 'vmx' || detectFlavour() === 'svm') {
    const direct = runTimed(NODE, [inner], { timeoutMs: 60 * 60_000, env: { ...process.env, ...env } });
    return netRows(direct.stdout, 'direct on this host', 0, params.secs);
  }
  const { runNested } = await import('../src/kit/nested.js');
  log(`net: ${params.runs} runs per VMM in the nested lane (${NET_LANE_CPUS} vCPUs), ${params.secs} s each way`);
  const r = await runNested({
    command: [NODE, inner],
    cwd: checkoutRoot(),
    timeoutMs: 60 * 60_000,
    cpus: NET_LANE_CPUS,
    memMiB: 3072,
    env,
  });
  if (r.status !== 0) throw new Error(`net-inner.js failed in the nested lane (status ${r.status}): ${tail(r.output)}`);
  return netRows(r.output, `nested lane, ${NET_LANE_CPUS} vCPUs`, r.timings.bootMs, params.secs);
}

function netRows(output: string, where: string, nestedBootMs: number, secs: number): Row[] {
  type NetRun = { netbench: Record<string, unknown> | null; error?: string };
  const ev = benchEvents(output)[0] as { results: Record<string, NetRun[]>; qemu?: string } | undefined;
  if (!ev) throw new Error(`the virtio-net run (${where}) printed no result: ${tail(output)}`);
  netRaw = ev;
  const runs = (peer: string): NetRun[] => ev.results[peer] ?? [];
  const value = (r: NetRun | undefined, key: string): number | null => {
    const x = r?.netbench?.[key];
    return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : null;
  };
  const firstError = (peer: string): string | undefined => runs(peer).find((r) => r.error)?.error;
  return [
    { id: 'net-tcp-up', key: 'upMbits', what: 'guest → host' },
    { id: 'net-tcp-down', key: 'downMbits', what: 'host → guest (iperf3 -R)' },
  ].map((m) => {
    const v = runs('vireo')
      .map((r) => value(r, m.key))
      .filter((x): x is number => x !== null);
    const q = runs('qemu-microvm')
      .map((r) => value(r, m.key))
      .filter((x): x is number => x !== null);
    const vireo = v.length > 0 ? median(v) : null;
    const peer = q.length > 0 ? median(q) : null;
    const row: Row = {
      id: m.id,
      benchmark: `virtio-net TCP ${m.what} (Debian cloud kernel, iperf3 -t ${secs} over a TAP), ${where}, median Mbit/s, higher is better — vs QEMU -M microvm`,
      unit: 'Mbit/s',
      vireo,
      peer,
      peerName: 'QEMU -M microvm (virtio-net-device, tap, vhost=off)',
      ratio: vireo !== null && peer !== null ? vireo / peer : null,
      goal: 'ratio ≥ 1',
      details: {
        vireo: v,
        peer: q,
        // Runs are interleaved pairs; the pairs' ratios say more than one median when the lane drifts.
        ratioByRun: runs('vireo').map((r, i) => {
          const a = value(r, m.key);
          const b = value(runs('qemu-microvm')[i], m.key);
          return a !== null && b !== null ? a / b : null;
        }),
        where,
        nestedBootMs,
        qemu: ev.qemu,
      },
    };
    if (row.ratio !== null) row.goalMet = row.ratio >= 1;
    if (vireo === null) row.vireoNote = firstError('vireo') ?? 'no result';
    if (peer === null) row.peerNote = firstError('qemu-microvm') ?? 'no result';
    return row;
  });
}

/**
 * runNested for a suite; when the lane itself fails (a hang, a timeout), what the command had written
 * and the outer console go to a log file (not kept in the repository), named in the error.
 */
async function laneOrLog(
  suite: string,
  opts: import('../src/kit/nested.js').NestedOptions,
): Promise<import('../src/kit/nested.js').NestedResult> {
  const { runNested } = await import('../src/kit/nested.js');
  const { NestedError } = await import('../src/kit/util.js');
  try {
    return await runNested(opts);
  } catch (e) {
    if (!(e instanceof NestedError)) throw e;
    const file = join(tmpdir(), `vireo-bench-${suite}-lane-${Date.now()}.log`);
    writeFileSync(file, `${e.message}\n--- output ---\n${e.output}\n--- console ---\n${e.console}\n`);
    throw new Error(`${e.message.split('\n')[0]} (output and console: ${file})`);
  }
}

// ---------------------------------------------------------------------------------------------
// 10. TCP throughput on a user-mode network, in the nested lane (bench/usernet-inner.ts): iperf3 in
//     the same guest through vireo's --net user (passt), QEMU -M microvm with the same passt (stream
//     netdev) and QEMU's own -netdev user (slirp), against a server on the lane's loopback

const USERNET_LANE_CPUS = Number(process.env.VIREO_BENCH_USERNET_LANE_CPUS ?? 2);

/** What the last usernet run reported in full, for usernet.json. */
let usernetRaw: unknown;

async function usernetBenchRows(): Promise<Row[]> {
  const { usernetParams, prepareUsernetGuest } = await import('./usernet-inner.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const params = usernetParams();
  const guest = prepareUsernetGuest(await prepareKit());
  const env: Record<string, string> = { VIREO_BENCH_USERNET_INITRD: guest.initrd };
  for (const [k, v] of Object.entries(process.env))
    if (k.startsWith('VIREO_BENCH_USERNET_') && k !== 'VIREO_BENCH_USERNET_LANE_CPUS' && v !== undefined) env[k] = v;
  if (process.env.VIREO_PASST !== undefined) env.VIREO_PASST = process.env.VIREO_PASST;
  const inner = join(here, 'usernet-inner.js');
  const { detectFlavour } = await import('../src/kvm/kvm.js');
  if (detectFlavour() === 'vmx' || detectFlavour() === 'svm') {
    const direct = runTimed(NODE, [inner], { timeoutMs: 60 * 60_000, env: { ...process.env, ...env } });
    return usernetRows(direct.stdout, 'direct on this host', 0, params.secs);
  }
  log(
    `usernet: ${params.runs} runs per side in the nested lane (${USERNET_LANE_CPUS} vCPUs), ${params.secs} s each way`,
  );
  const r = await laneOrLog('usernet', {
    command: [NODE, inner],
    cwd: checkoutRoot(),
    timeoutMs: 25 * 60_000,
    cpus: USERNET_LANE_CPUS,
    memMiB: 3072,
    env,
  });
  if (r.status !== 0)
    throw new Error(`usernet-inner.js failed in the nested lane (status ${r.status}): ${tail(r.output)}`);
  return usernetRows(r.output, `nested lane, ${USERNET_LANE_CPUS} vCPUs`, r.timings.bootMs, params.secs);
}

function usernetRows(output: string, where: string, nestedBootMs: number, secs: number): Row[] {
  type Summary = import('./usernet-inner.js').UsernetSummary;
  const ev = benchEvents(output)[0] as { summary: Summary; passt?: string; commands?: unknown } | undefined;
  if (!ev?.summary) throw new Error(`the user-mode network run (${where}) printed no result: ${tail(output)}`);
  usernetRaw = ev;
  const s = ev.summary.sides;
  const rows: Row[] = [];
  for (const dir of ['up', 'down'] as const) {
    for (const peer of ['qemu-passt', 'qemu-slirp'] as const) {
      const key = dir === 'up' ? 'upMbits' : 'downMbits';
      const vireo = s.vireo[key];
      const other = s[peer][key];
      const ratio = ev.summary.ratios[`${dir}${peer === 'qemu-passt' ? 'Passt' : 'Slirp'}`];
      const peerName =
        peer === 'qemu-passt'
          ? `QEMU -M microvm + passt ${ev.passt ?? ''} (-netdev stream, unix socket)`.replace('  ', ' ')
          : 'QEMU -M microvm -netdev user (slirp)';
      const row: Row = {
        id: `usernet-tcp-${dir}-${peer === 'qemu-passt' ? 'passt' : 'slirp'}`,
        benchmark: `user-mode network TCP ${dir === 'up' ? 'guest → host' : 'host → guest (iperf3 -R)'} (Debian cloud kernel, iperf3 -t ${secs} to a server on the host's loopback through the gateway), ${where}, median Mbit/s, higher is better — vireo --net user (passt) vs ${peerName}`,
        unit: 'Mbit/s',
        vireo,
        peer: other,
        peerName,
        ratio,
        goal: peer === 'qemu-passt' ? 'ratio ≥ 1' : '—',
        details: {
          vireo: s.vireo[dir],
          peer: s[peer][dir],
          where,
          nestedBootMs,
          commands: ev.commands,
        },
      };
      if (peer === 'qemu-passt' && ratio !== null) row.goalMet = ratio >= 1;
      if (vireo === null) row.vireoNote = s.vireo.error ?? 'no result';
      if (other === null) row.peerNote = s[peer].error ?? 'no result';
      rows.push(row);
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// 11. File systems, in the nested lane (bench/fs-inner.ts): the same untar, find+stat and sequential
//     write/read in one vireo guest on a virtio-fs share and on ext4 on a virtio-blk disk (the peer is
//     vireo's own block device: the ratio says what the share costs); QEMU's 9p where the kit has 9p

const FS_LANE_CPUS = Number(process.env.VIREO_BENCH_FS_LANE_CPUS ?? 2);

/** What the last fs run reported in full, for fs.json. */
let fsRaw: unknown;

async function fsBenchRows(): Promise<Row[]> {
  const { fsParams, prepareFsGuest } = await import('./fs-inner.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const params = fsParams();
  const guest = prepareFsGuest(await prepareKit(), params.tree);
  const env: Record<string, string> = {
    VIREO_BENCH_FS_INITRD: guest.initrd,
    VIREO_BENCH_FS_ENTRIES: String(guest.tree.entries),
    VIREO_BENCH_FS_TREE_BYTES: String(guest.tree.bytes),
  };
  for (const [k, v] of Object.entries(process.env))
    if (k.startsWith('VIREO_BENCH_FS_') && k !== 'VIREO_BENCH_FS_LANE_CPUS' && v !== undefined) env[k] ??= v;
  const inner = join(here, 'fs-inner.js');
  const { detectFlavour } = await import('../src/kvm/kvm.js');
  if (detectFlavour() === 'vmx' || detectFlavour() === 'svm') {
    const direct = runTimed(NODE, [inner], { timeoutMs: 60 * 60_000, env: { ...process.env, ...env } });
    return fsRows(direct.stdout, 'direct on this host', 0);
  }
  log(
    `fs: ${params.runs} rounds in the nested lane (${FS_LANE_CPUS} vCPUs), ${params.mib} MiB sequential, tree ${params.tree}`,
  );
  const r = await laneOrLog('fs', {
    command: [NODE, inner],
    cwd: checkoutRoot(),
    timeoutMs: 20 * 60_000,
    cpus: FS_LANE_CPUS,
    memMiB: 3072,
    env,
  });
  if (r.status !== 0) throw new Error(`fs-inner.js failed in the nested lane (status ${r.status}): ${tail(r.output)}`);
  return fsRows(r.output, `nested lane, ${FS_LANE_CPUS} vCPUs`, r.timings.bootMs);
}

function fsRows(output: string, where: string, nestedBootMs: number): Row[] {
  type Summary = Record<'untar' | 'findstat' | 'write' | 'read', import('./fs-inner.js').FsOpSummary>;
  const ev = benchEvents(output)[0] as
    | {
        summary?: Summary;
        error?: string;
        mib: number;
        runs: number;
        tree: { dir: string; entries: number; bytes: number };
        ninep: { ok: boolean; why: string };
        vireo: string;
      }
    | undefined;
  if (!ev) throw new Error(`the file-system run (${where}) printed no result: ${tail(output)}`);
  fsRaw = ev;
  const treeWhat = `${ev.tree.dir} (${ev.tree.entries} entries, ${(ev.tree.bytes / 1048576).toFixed(1)} MiB tar)`;
  const what = {
    untar: `untar of ${treeWhat} + sync, median ms, lower is better`,
    findstat: `find + stat of every entry of that tree after drop_caches, median ms, lower is better`,
    write: `sequential write of ${ev.mib} MiB (dd bs=1M conv=fsync), median MiB/s, higher is better`,
    read: `sequential read of that file after drop_caches (dd bs=1M), median MiB/s, higher is better`,
  } as const;
  const rows: Row[] = (['untar', 'findstat', 'write', 'read'] as const).map((op) => {
    const m = ev.summary?.[op];
    const row: Row = {
      id: `fs-${op === 'findstat' ? 'find-stat' : op === 'untar' ? 'untar' : `seq-${op}`}`,
      benchmark: `virtio-fs share vs ext4 on virtio-blk in the same vireo guest (Debian cloud kernel, ${ev.runs} rounds), ${what[op]}, ${where}`,
      unit: m?.unit ?? (op === 'write' || op === 'read' ? 'MiB/s' : 'ms'),
      vireo: m?.virtiofs ?? null,
      peer: m?.ext4 ?? null,
      peerName: 'ext4 on virtio-blk (vireo, same guest)',
      ratio: m?.ratio ?? null,
      goal: '—',
      details: { byRound: m?.byRound, where, nestedBootMs, vireo: ev.vireo },
    };
    if (row.vireo === null) row.vireoNote = ev.error ?? 'no result';
    if (row.peer === null) row.peerNote = ev.error ?? 'no result';
    return row;
  });
  rows.push({
    id: 'fs-9p',
    benchmark: `QEMU 9p (-virtfs, virtio-9p) in the same operations, ${where}`,
    unit: '',
    vireo: null,
    vireoNote: 'virtio-fs: the rows above',
    peer: null,
    peerName: 'QEMU -M microvm -virtfs',
    peerNote: ev.ninep.why,
    ratio: null,
    goal: '—',
    details: { ninep: ev.ninep },
  });
  return rows;
}

// ---------------------------------------------------------------------------------------------
// 9. Sandboxes (bench/sandbox-inner.ts, in the nested lane on PVM hosts): create → first output of a
//    clone restored from a template against a cold boot of the same kit (the peer is vireo's own
//    cold boot: the ratio is the point), with clones alive, memory per clone, agent round trips.

async function sandboxRows(): Promise<Row[]> {
  const inner = join(here, 'sandbox-inner.js');
  const { detectFlavour } = await import('../src/kvm/kvm.js');
  let output: string;
  let where: string;
  if (detectFlavour() === 'vmx' || detectFlavour() === 'svm') {
    output = runTimed(NODE, [inner], { timeoutMs: 60 * 60_000 }).stdout;
    where = 'direct on this host';
  } else {
    const { runNested } = await import('../src/kit/nested.js');
    log('sandbox: template, cold boots and clones in the nested lane (1 vCPU)');
    const r = await runNested({
      command: [NODE, inner],
      cwd: checkoutRoot(),
      timeoutMs: 60 * 60_000,
      cpus: 1,
      memMiB: 6144,
    });
    output = r.output;
    where = 'nested lane';
  }
  const ev = benchEvents(output)[0] as
    | {
        error?: string;
        coldFirstOutputMs?: number[];
        cloneFirstOutputMs?: number[];
        cloneFirstOutputWithAliveMs?: number[];
        perCloneRssKiB?: number;
        perClonePrivateDirtyKiB?: number;
        runTrueMs?: { median: number; p99: number };
        fileWriteMiBs?: number;
        fileReadMiBs?: number;
        alive?: number;
        memMiB?: number;
      }
    | undefined;
  if (!ev) throw new Error(`sandbox-inner.js printed no result (${where}): ${tail(output)}`);
  if (ev.error) throw new Error(`sandbox-inner.js (${where}): ${ev.error.split('\n')[0]}`);
  const cold = median(ev.coldFirstOutputMs ?? []);
  const clone = median(ev.cloneFirstOutputMs ?? []);
  const busy = median(ev.cloneFirstOutputWithAliveMs ?? []);
  const row = (id: string, benchmark: string, vireo: number, peer: number | null, goal: string, ok?: boolean): Row => ({
    id,
    benchmark: `${benchmark}, ${where}`,
    unit: 'ms',
    vireo,
    peer,
    peerName: peer === null ? '—' : 'cold Sandbox.create of the same kit',
    ratio: peer !== null ? vireo / peer : null,
    goal,
    ...(ok !== undefined ? { goalMet: ok } : {}),
    details: ev,
  });
  return [
    row(
      'sandbox-clone-first-output',
      'sandbox create → first output of echo hi: clone of a template, median ms',
      clone,
      cold,
      'ratio ≤ 0.1',
      clone / cold <= 0.1,
    ),
    row(
      'sandbox-clone-first-output-busy',
      `the same with ${ev.alive} clones alive, median ms`,
      busy,
      cold,
      'ratio ≤ 0.1',
      busy / cold <= 0.1,
    ),
    {
      ...row(
        'sandbox-clone-private-mib',
        `guest memory written per extra clone (Private_Dirty), MiB of ${ev.memMiB} MiB`,
        (ev.perClonePrivateDirtyKiB ?? Number.NaN) / 1024,
        null,
        'most pages shared',
      ),
      unit: 'MiB',
    },
    row(
      'sandbox-run-true',
      "commands.run('true') round trip, median ms (p99 in details)",
      ev.runTrueMs?.median ?? Number.NaN,
      null,
      '—',
    ),
    {
      ...row('sandbox-file-write', 'file write through the agent, MiB/s', ev.fileWriteMiBs ?? Number.NaN, null, '—'),
      unit: 'MiB/s',
    },
    {
      ...row('sandbox-file-read', 'file read through the agent, MiB/s', ev.fileReadMiBs ?? Number.NaN, null, '—'),
      unit: 'MiB/s',
    },
  ];
}

async function main(): Promise<void> {
  const t0 = Date.now();
  const qemu = findQemu();
  const rows: Row[] = [];
  // VIREO_BENCH_ONLY=pio,start,rss runs a subset (its rows replace theirs in results/latest.json).
  const only = process.env.VIREO_BENCH_ONLY?.split(',').map((x) => x.trim());
  const want = (id: string) => only === undefined || only.includes(id);

  const suites: { id: string; title: string; name: string; file?: string; run: () => Row[] | Promise<Row[]> }[] = [
    {
      id: 'pio',
      title: 'PIO exit round trip (vireo vs C ioctl loop)',
      name: 'PIO exit round trip (µs/exit)',
      run: () => [benchPio()],
    },
    {
      id: 'start',
      title: 'process start to first guest instruction (vireo vs QEMU)',
      name: "Process start → guest's first instruction → exit (ms)",
      run: () => startRows(qemu),
    },
    {
      id: 'linux',
      title: 'Linux boot to init, nested lane (vireo vs QEMU microvm and pc)',
      name: 'Linux boot to init (ms)',
      file: 'linux-boot.json',
      run: () => linuxBootRows(),
    },
    {
      id: 'rss',
      title: 'VMM resident memory beyond guest RAM (vireo vs QEMU)',
      name: 'VMM RSS beyond guest RAM (MiB)',
      run: () => rssRows(qemu),
    },
    {
      id: 'blk',
      title: 'virtio-blk throughput, nested lane (vireo vs QEMU microvm)',
      name: 'virtio-blk throughput',
      file: 'blk.json',
      run: () => blkBenchRows(),
    },
    {
      id: 'net',
      title: 'virtio-net TCP throughput, nested lane (vireo vs QEMU microvm)',
      name: 'virtio-net throughput',
      file: 'net.json',
      run: () => netBenchRows(),
    },
  ];
  suites.push({
    id: 'snapshot',
    title: 'snapshot create throughput and restore latency (128 MiB and 2 GiB guests)',
    name: 'snapshots',
    run: () => snapshotRows(),
  });
  suites.push({
    id: 'api',
    title: 'API socket ready after process start, and request latency (vireo-firecracker vs QEMU QMP)',
    name: 'API',
    run: () => apiRows(qemu),
  });
  suites.push({
    id: 'usernet',
    title: 'TCP throughput on a user-mode network, nested lane (vireo --net user vs QEMU microvm + passt, and slirp)',
    name: 'user-mode network throughput',
    file: 'usernet.json',
    run: () => usernetBenchRows(),
  });
  suites.push({
    id: 'fs',
    title: 'file systems: virtio-fs share vs ext4 on virtio-blk in one guest, nested lane',
    name: 'file systems',
    file: 'fs.json',
    run: () => fsBenchRows(),
  });
  suites.push({
    id: 'sandbox',
    title: 'sandboxes: clone create vs cold boot, memory per clone, agent round trips (nested lane)',
    name: 'sandboxes',
    file: 'sandbox.json',
    run: () => sandboxRows(),
  });
  const ran: { id: string; file?: string; rows: Row[] }[] = [];
  for (const [i, suite] of suites.entries()) {
    if (!want(suite.id)) continue;
    log(`${i + 1}/${suites.length} ${suite.title}`);
    let got: Row[];
    try {
      got = await suite.run();
    } catch (e) {
      got = [failedRow(suite.id, suite.name, e)];
    }
    rows.push(...got);
    ran.push({ id: suite.id, ...(suite.file ? { file: suite.file } : {}), rows: got });
  }

  const host = {
    kernel: release(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    kvmFlavour: existsSync('/sys/module/kvm_pvm') ? 'pvm' : 'hardware',
    node: process.version,
    qemu: qemu?.version ?? null,
  };
  const text = table(rows);
  process.stdout.write(`\n${text}\n\n`);
  const start = rows.find((r) => r.id === 'start-microvm')?.details.vireo as
    | { inProcessMedianMs?: Record<string, number>; emptyNodeProcessMedianMs?: number }
    | undefined;
  if (start?.inProcessMedianMs) {
    const m = start.inProcessMedianMs;
    process.stdout.write(
      `vireo start-up inside the process (median ms since process start): bench script starts at ${m.nodeStartAndModuleLoad?.toFixed(1)}, ` +
        `Vm.create done at ${m.vmCreateDone?.toFixed(1)}, VM ended and released at ${m.guestExitedAndVmReleased?.toFixed(1)}; ` +
        `an empty \`node -e 0\` takes ${start.emptyNodeProcessMedianMs?.toFixed(1)} ms from spawn to exit here\n`,
    );
  }
  process.stdout.write(
    `host: ${host.kernel}, ${host.cpus} CPUs, KVM ${host.kvmFlavour}, Node ${host.node}, ${host.qemu ?? 'no QEMU'}; suite took ${((Date.now() - t0) / 1000).toFixed(0)} s\n`,
  );

  const resultsDir = process.env.VIREO_BENCH_RESULTS_DIR ?? join(checkoutRoot(), 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const date = new Date().toISOString();
  const out = join(resultsDir, 'latest.json');
  writeFileSync(out, `${JSON.stringify(mergeLatest(out, ran, date, host, only === undefined), roundNumbers, 2)}\n`);
  process.stdout.write(`results: ${out}\n`);
  for (const r of ran) {
    if (!r.file) continue;
    const raws: Record<string, unknown> = { blk: blkRaw, net: netRaw, usernet: usernetRaw, fs: fsRaw };
    const raw = raws[r.id];
    const extra = raw !== undefined ? { runs: raw } : {};
    const f = join(resultsDir, r.file);
    writeFileSync(f, `${JSON.stringify({ date, host, rows: r.rows, ...extra }, roundNumbers, 2)}\n`);
    process.stdout.write(`results: ${f}\n`);
  }
}

/** The suite a row belongs to: its id up to the first '-' (pio-exit → pio, blk-seq-read → blk). */
const suiteOf = (rowId: string): string => rowId.split('-')[0] ?? rowId;

/**
 * latest.json after this run: a full run replaces it; a subset run replaces the rows of the suites
 * that ran and keeps the others (with the date each suite last ran, in suiteDates).
 */
function mergeLatest(
  path: string,
  ran: { id: string; rows: Row[] }[],
  date: string,
  host: Record<string, unknown>,
  full: boolean,
): Record<string, unknown> {
  const thisRun = ran.flatMap((r) => r.rows);
  const dates: Record<string, string> = {};
  for (const r of ran) dates[r.id] = date;
  if (full) return { date, host, suiteDates: dates, rows: thisRun };
  let old: { date?: string; suiteDates?: Record<string, string>; rows?: Row[] } = {};
  try {
    old = JSON.parse(readFileSync(path, 'utf8')) as typeof old;
  } catch {
    // none yet, or unreadable: start afresh
  }
  const replaced = new Set(ran.map((r) => r.id));
  const kept = (old.rows ?? []).filter((r) => !replaced.has(suiteOf(r.id)));
  const keptDates: Record<string, string> = {};
  for (const r of kept) {
    const s = suiteOf(r.id);
    keptDates[s] = old.suiteDates?.[s] ?? old.date ?? 'unknown';
  }
  // Rows in the suites' order of the previous file, then the new suites.
  return { date, host, suiteDates: { ...keptDates, ...dates }, rows: [...kept, ...thisRun] };
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
