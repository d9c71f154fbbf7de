/**
 * Snapshot create and restore, measured in one process (as a VMM serving a load request would be):
 * for each guest size, a counter guest runs, is paused with its RAM filled (so the memory file holds
 * real data), and is snapshotted; then it is restored RUNS times and timed from the call to the
 * moment the guest's counter moves again ("load → guest runs again"). vCPU threads are prewarmed,
 * as in a VMM process waiting for the request. Then, in a VM with dirty page tracking, a Full
 * snapshot of the same filled RAM and a Diff after 1% of the pages were rewritten (every 100th page,
 * plus what the guest wrote): the time to create each. Prints one "@bench {json}" line.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prewarmVcpuThreads, Vm } from '../src/vmm/vm.js';
import { guestPath } from '../test/guests/build.js';

const RUNS = Number(process.env.VIREO_BENCH_SNAPSHOT_RUNS ?? 5);
const SIZES = (process.env.VIREO_BENCH_SNAPSHOT_SIZES ?? '128,2048').split(',').map(Number);
const COUNTER = 0x1ff000;
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

const guest = guestPath('modes64');

/** Full then Diff snapshot create times in a tracking VM of `mib` MiB with its RAM filled. */
async function diffCreate(mib: number, dir: string): Promise<Record<string, number>> {
  const vm = await Vm.create({
    kernel: guest,
    cmdline: 'c',
    memMiB: mib,
    serial: { kind: 'none' },
    trackDirtyPages: true,
  });
  try {
    const mem = vm.memory;
    if (!mem) throw new Error('no memory');
    vm.start();
    while (mem.read64(COUNTER) < 1000n) await new Promise((r) => setImmediate(r));
    await vm.pause();
    for (const d of mem.descriptors) {
      const from = Math.max(d.gpa, 4 << 20);
      if (from < d.gpa + d.size) mem.slice(from, d.gpa + d.size - from).fill(0xa5);
    }
    const full = await vm.snapshot({ statePath: join(dir, `f${mib}.state`), memPath: join(dir, `f${mib}.mem`) });
    rmSync(join(dir, `f${mib}.mem`), { force: true });
    await vm.resume();
    await new Promise((r) => setTimeout(r, 50));
    await vm.pause();
    let pages = 0;
    for (const d of mem.descriptors)
      for (let o = Math.max(d.gpa, 4 << 20); o < d.gpa + d.size; o += 100 * 4096, pages++) mem.write32(o, pages);
    const diff = await vm.snapshot({
      statePath: join(dir, `d${mib}.state`),
      memPath: join(dir, `d${mib}.mem`),
      type: 'Diff',
    });
    rmSync(join(dir, `d${mib}.mem`), { force: true });
    return {
      fullCreateMs: full.stateMs + full.memoryMs,
      diffCreateMs: diff.stateMs + diff.memoryMs,
      diffWritten: diff.memoryWritten,
      diffPagesDirtied: pages,
    };
  } finally {
    await vm.stop();
  }
}
const dir = mkdtempSync(join(process.env.VIREO_BENCH_SNAPSHOT_DIR ?? tmpdir(), 'vireo-snapbench-'));
const results: Record<string, unknown>[] = [];
try {
  for (const mib of SIZES) {
    const vm = await Vm.create({ kernel: guest, cmdline: 'c', memMiB: mib, serial: { kind: 'none' } });
    const mem = vm.memory;
    if (!mem) throw new Error('no memory');
    vm.start();
    while (mem.read64(COUNTER) < 1000n) await new Promise((r) => setImmediate(r));
    await vm.pause();
    // Fill RAM above the guest's first 4 MiB with data, so the memory file is not all holes.
    for (const d of mem.descriptors) {
      const from = Math.max(d.gpa, 4 << 20);
      if (from < d.gpa + d.size) mem.slice(from, d.gpa + d.size - from).fill(0xa5);
    }
    const state = join(dir, `s${mib}.state`);
    const memFile = join(dir, `s${mib}.mem`);
    const snap = await vm.snapshot({ statePath: state, memPath: memFile });
    await vm.stop();
    const restores: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      prewarmVcpuThreads(1);
      await new Promise((r) => setTimeout(r, 300)); // the parked thread has loaded its modules
      const t0 = performance.now();
      const r = await Vm.restore({ statePath: state, memPath: memFile, resume: true, serial: { kind: 'none' } });
      const m = r.memory;
      if (!m) throw new Error('no memory after restore');
      const at = m.read64(COUNTER);
      // Spin (no timers): the first moment the restored vCPU has run guest code.
      while (m.read64(COUNTER) === at) {
        if (performance.now() - t0 > 10_000) throw new Error('the restored guest did not run');
      }
      restores.push(performance.now() - t0);
      await r.stop();
    }
    const diff = await diffCreate(mib, dir);
    results.push({
      mib,
      ...diff,
      createStateMs: snap.stateMs,
      createMemoryMs: snap.memoryMs,
      createGiBs: snap.memoryWritten / 2 ** 30 / (snap.memoryMs / 1000),
      memoryWritten: snap.memoryWritten,
      restoreMs: median(restores),
      restores,
    });
    rmSync(memFile, { force: true });
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(`@bench ${JSON.stringify({ suite: 'snapshot', results })}\n`);
