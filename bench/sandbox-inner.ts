/**
 * Sandboxes, measured where Linux boots (the nested lane on PVM hosts, directly on a VT-x/AMD-V host):
 * one process, the guest kit (Debian's kernel, the initramfs whose /init starts vireo's agent).
 *
 * - create → first output of `echo hi`: a cold Sandbox.create (boot) against a clone restored from a
 *   template of the same kit (Template.build once), interleaved, RUNS of each; then the same for a
 *   clone while CLONES_ALIVE other clones are alive;
 * - the process's RSS per extra clone (smaps_rollup: Rss and Private_Dirty deltas, against the
 *   guest's memory size: most pages must be shared with the template's memory file);
 * - `commands.run('true')` round trip (median, p99) and file write/read through the agent (MiB/s).
 *
 * Prints one "@bench {json}" line (bench/run.ts's `sandbox` suite reads it).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareKit } from '../src/kit/kit.js';
import { Sandbox } from '../src/sandbox/sandbox.js';
import { Template } from '../src/sandbox/template.js';

const RUNS = Number(process.env.VIREO_BENCH_SANDBOX_RUNS ?? 3);
const CLONES_ALIVE = Number(process.env.VIREO_BENCH_SANDBOX_ALIVE ?? 10);
const RT_RUNS = Number(process.env.VIREO_BENCH_SANDBOX_RT ?? 50);
const FILE_MIB = Number(process.env.VIREO_BENCH_SANDBOX_FILE_MIB ?? 8);
const MEM_MIB = 256;
const TIMEOUTS = {
  connectTimeoutMs: 30_000,
  requestTimeoutMs: 120_000,
  keepaliveIntervalS: 5,
  keepaliveGraceMs: 60_000,
};

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};

/** Rss and Private_Dirty of this process, in KiB. */
function memKiB(): { rss: number; privateDirty: number } {
  const t = readFileSync('/proc/self/smaps_rollup', 'utf8');
  const f = (k: string) => Number(t.match(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm'))?.[1] ?? Number.NaN);
  return { rss: f('Rss'), privateDirty: f('Private_Dirty') };
}

async function firstOutput(
  create: () => Promise<Sandbox>,
): Promise<{ sb: Sandbox; createMs: number; firstMs: number }> {
  const t0 = performance.now();
  const sb = await create();
  const createMs = performance.now() - t0;
  let first = 0;
  await sb.commands.run('echo hi', {
    onStdout: () => {
      first ||= performance.now() - t0;
    },
  });
  return { sb, createMs, firstMs: first };
}

async function main(): Promise<void> {
  const kit = await prepareKit();
  const base = mkdtempSync(join(tmpdir(), 'vireo-bench-sandbox-'));
  const dir = join(base, 'template');
  const out: Record<string, unknown> = { runs: RUNS, alive: CLONES_ALIVE, memMiB: MEM_MIB };
  const alive: Sandbox[] = [];
  try {
    const cold = () =>
      Sandbox.create({
        kernel: kit.kernel,
        initrd: kit.initrd,
        memMiB: MEM_MIB,
        cpus: 1,
        bootTimeoutMs: 600_000,
        timeoutMs: 0,
        agentTimeouts: TIMEOUTS,
      });
    const t = await Template.build({
      kernel: kit.kernel,
      initrd: kit.initrd,
      memMiB: MEM_MIB,
      cpus: 1,
      dir,
      bootTimeoutMs: 600_000,
      agentTimeouts: TIMEOUTS,
    });
    out.template = { bootMs: Math.round(t.bootMs), snapshotMs: Math.round(t.snapshotMs) };
    const clone = () =>
      Sandbox.create({ template: dir, bootTimeoutMs: 120_000, timeoutMs: 0, agentTimeouts: TIMEOUTS });
    const coldMs: number[] = [];
    const cloneMs: number[] = [];
    const cloneCreateMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const c = await firstOutput(cold);
      coldMs.push(c.firstMs);
      await c.sb.kill();
      const k = await firstOutput(clone);
      cloneMs.push(k.firstMs);
      cloneCreateMs.push(k.createMs);
      await k.sb.kill();
    }
    out.coldFirstOutputMs = coldMs;
    out.cloneFirstOutputMs = cloneMs;
    out.cloneCreateMs = cloneCreateMs;
    // Clones kept alive: the memory each adds, then create → first output with them all running.
    const before = memKiB();
    const steps: { rss: number; privateDirty: number }[] = [];
    for (let i = 0; i < CLONES_ALIVE; i++) {
      const k = await firstOutput(clone);
      alive.push(k.sb);
      steps.push(memKiB());
    }
    const last = steps.at(-1) ?? before;
    out.perCloneRssKiB = (last.rss - before.rss) / CLONES_ALIVE;
    out.perClonePrivateDirtyKiB = (last.privateDirty - before.privateDirty) / CLONES_ALIVE;
    const busy: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const k = await firstOutput(clone);
      busy.push(k.firstMs);
      await k.sb.kill();
    }
    out.cloneFirstOutputWithAliveMs = busy;
    // Round trips and file throughput on one clone.
    const sb = alive[0] as Sandbox;
    const rt: number[] = [];
    for (let i = 0; i < RT_RUNS; i++) {
      const t0 = performance.now();
      await sb.commands.run('true');
      rt.push(performance.now() - t0);
    }
    out.runTrueMs = { median: median(rt), p99: pct(rt, 99), runs: rt.length };
    const data = new Uint8Array(FILE_MIB << 20).map((_, i) => (i * 131) & 0xff);
    const w0 = performance.now();
    await sb.files.write('/tmp/bench.bin', data);
    const wS = (performance.now() - w0) / 1000;
    const r0 = performance.now();
    const back = await sb.files.read('/tmp/bench.bin', { format: 'bytes' });
    const rS = (performance.now() - r0) / 1000;
    if (back.length !== data.length) throw new Error(`read ${back.length} bytes back of ${data.length}`);
    out.fileWriteMiBs = FILE_MIB / wS;
    out.fileReadMiBs = FILE_MIB / rS;
  } catch (e) {
    out.error = e instanceof Error ? (e.stack ?? e.message) : String(e);
  } finally {
    for (const s of alive) await s.kill().catch(() => undefined);
    rmSync(base, { recursive: true, force: true });
  }
  process.stdout.write(`@bench ${JSON.stringify(out)}\n`);
}

await main();
