/**
 * Snapshot create and restore, measured in one process (as a VMM serving a load request would be):
 * for each guest size, a counter guest runs, is paused with its RAM filled (so the memory file holds
 * real data), and is snapshotted; then it is restored RUNS times and timed from the call to the
 * moment the guest's counter moves again ("load → guest runs again"). vCPU threads are prewarmed,
 * as in a VMM process waiting for the request. Then the same snapshot is loaded through the
 * Firecracker API (`PUT /snapshot/load`, resume_vm) in fresh vireo-firecracker processes. Then, in
 * a VM with dirty page tracking, a Full snapshot of the same filled RAM and a Diff after 1% of the
 * pages were rewritten (every 100th page, plus what the guest wrote): the time to create each. For
 * the first size, restores of the same guest with virtio devices. Prints one "@bench {json}" line.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { prewarmIoThread, prewarmVcpuThreads, Vm } from '../src/vmm/vm.js';
import { guestPath } from '../test/guests/build.js';

const RUNS = Number(process.env.VIREO_BENCH_SNAPSHOT_RUNS ?? 5);
const SIZES = (process.env.VIREO_BENCH_SNAPSHOT_SIZES ?? '128,2048').split(',').map(Number);
const COUNTER = 0x1ff000;
const nap = new Int32Array(new SharedArrayBuffer(4));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

const API_RUNS = Number(process.env.VIREO_BENCH_SNAPSHOT_API_RUNS ?? 3);
const FIRECRACKER = fileURLToPath(new URL('../../bin/firecracker.js', import.meta.url));

/** One request on the API socket; resolves with the status code. */
function call(sock: string, method: string, path: string, body?: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath: sock,
        method,
        path,
        headers: data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {},
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/**
 * The Firecracker-API path: a fresh `vireo-firecracker --api-sock` process, left to settle (its
 * vCPU thread is prewarmed, as a launcher's process would be by the time it sends the load), then
 * `PUT /snapshot/load` with resume_vm timed until its 204 (the guest has been told to run).
 */
async function apiLoad(state: string, mem: string): Promise<number> {
  const sock = join(dir, 'api.sock');
  rmSync(sock, { force: true });
  const child = spawn(process.execPath, [FIRECRACKER, '--api-sock', sock], { stdio: 'ignore' });
  try {
    for (let i = 0; !existsSync(sock); i++) {
      if (i > 3000 || child.exitCode !== null) throw new Error('vireo-firecracker did not open its API socket');
      await sleep(5);
    }
    if ((await call(sock, 'GET', '/')) !== 200) throw new Error('GET / failed');
    await sleep(500);
    const t0 = performance.now();
    const status = await call(sock, 'PUT', '/snapshot/load', {
      snapshot_path: state,
      mem_backend: { backend_type: 'File', backend_path: mem },
      resume_vm: true,
    });
    const ms = performance.now() - t0;
    if (status !== 204) throw new Error(`PUT /snapshot/load answered ${status}`);
    return ms;
  } finally {
    const done = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await done;
  }
}

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

/** RUNS restores of one snapshot, each timed from the call until the guest's counter moves. */
async function timeRestores(state: string, memFile: string, io = false): Promise<number[]> {
  const restores: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    prewarmVcpuThreads(1);
    if (io) prewarmIoThread();
    await new Promise((r) => setTimeout(r, io ? 600 : 300)); // the parked threads have loaded their modules
    const t0 = performance.now();
    const r = await Vm.restore({ statePath: state, memPath: memFile, resume: true, serial: { kind: 'none' } });
    const m = r.memory;
    if (!m) throw new Error('no memory after restore');
    const at = m.read64(COUNTER);
    // Poll every ~50 µs without the event loop (no timers; a spin would take a core from the
    // vCPU thread on a small host): the first moment the restored vCPU has run guest code.
    while (m.read64(COUNTER) === at) {
      Atomics.wait(nap, 0, 0, 0.05);
      if (performance.now() - t0 > 10_000) throw new Error('the restored guest did not run');
    }
    restores.push(performance.now() - t0);
    await r.stop();
  }
  return restores;
}

/**
 * The same guest with virtio devices (entropy and a balloon), so restoring also starts the I/O
 * thread and brings back its devices' state; that thread is prewarmed as vireo-firecracker does.
 */
async function withDevices(mib: number): Promise<{ restoreDevicesMs: number; restoresDevices: number[] }> {
  const vm = await Vm.create({
    kernel: guest,
    cmdline: 'c',
    memMiB: mib,
    serial: { kind: 'none' },
    rng: true,
    balloon: { amountMiB: 0, deflateOnOom: false, statsPollingIntervalS: 0 },
  });
  const mem = vm.memory;
  if (!mem) throw new Error('no memory');
  vm.start();
  while (mem.read64(COUNTER) < 1000n) await new Promise((r) => setImmediate(r));
  await vm.pause();
  const state = join(dir, 'dev.state');
  const memFile = join(dir, 'dev.mem');
  await vm.snapshot({ statePath: state, memPath: memFile });
  await vm.stop();
  const restoresDevices = await timeRestores(state, memFile, true);
  rmSync(memFile, { force: true });
  return { restoreDevicesMs: median(restoresDevices), restoresDevices };
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
    const restores = await timeRestores(state, memFile);
    const diff = await diffCreate(mib, dir);
    const apiLoads: number[] = [];
    for (let i = 0; i < API_RUNS; i++) apiLoads.push(await apiLoad(state, memFile));
    results.push({
      ...diff,
      apiLoadMs: API_RUNS > 0 ? median(apiLoads) : null,
      apiLoads,
      mib,
      createStateMs: snap.stateMs,
      createMemoryMs: snap.memoryMs,
      createGiBs: snap.memoryWritten / 2 ** 30 / (snap.memoryMs / 1000),
      memoryWritten: snap.memoryWritten,
      restoreMs: median(restores),
      restores,
      ...(mib === SIZES[0] ? await withDevices(mib) : {}),
    });
    rmSync(memFile, { force: true });
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(`@bench ${JSON.stringify({ suite: 'snapshot', results })}\n`);
