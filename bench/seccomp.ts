/**
 * The cost of the seccomp filters on an exit-heavy guest: the PIO loop of the suite (bench/run.ts, 1.),
 * run by vireo with its filters (the default) and without (VIREO_SECCOMP=off), interleaved. Per-exit time
 * is the slope between N1 and N2 exits, so start-up cancels out. Every exit is one KVM_RUN ioctl through
 * the vCPU filter. `node dist/bench/seccomp.js [reps]` (under the lane lock).
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildGuest } from './build.js';
import { benchEvents, median, runTimed } from './util.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const N1 = 6_400;
const N2 = 64_000;
const reps = Number(process.argv[2] ?? 9);

function run(guest: string, n: number, seccomp: 'on' | 'off'): number {
  const r = runTimed(process.execPath, [join(here, 'vm-runner.js'), guest, '--mem', '128', '--serial', 'none'], {
    timeoutMs: 120_000,
    env: { ...process.env, VIREO_SECCOMP: seccomp },
  });
  const ev = benchEvents(r.stderr).find((e) => e.event === 'exited');
  if (!ev) throw new Error(`vireo failed (status ${r.status}): ${r.stderr.slice(-400)}`);
  const exits = (ev.stats as Record<string, number>).exitsIo;
  if (exits !== n + 1) throw new Error(`${exits} port exits, expected ${n + 1}`);
  return ev.startToExitNs as number;
}

const g1 = buildGuest({ name: 'pio64', n: N1 });
const g2 = buildGuest({ name: 'pio64', n: N2 });
const slopes: Record<'on' | 'off', number[]> = { on: [], off: [] };
for (let i = 0; i < reps; i++)
  for (const mode of ['off', 'on'] as const) {
    const t1 = run(g1, N1, mode);
    const t2 = run(g2, N2, mode);
    slopes[mode].push((t2 - t1) / (N2 - N1) / 1000);
  }
const on = median(slopes.on);
const off = median(slopes.off);
console.log(
  JSON.stringify({
    usPerExitOn: on,
    usPerExitOff: off,
    ratio: on / off,
    reps,
    byRep: slopes,
  }),
);
