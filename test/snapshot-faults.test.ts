/**
 * Snapshots onto a file system that fills up (issue 12 item 6), through vireo-firecracker's API socket
 * (a real process, a native guest): PUT /snapshot/create, Full and Diff, to a tiny tmpfs that runs out
 * of space while the memory file is written, or after it while the state file is. Each is answered
 * 400 with one fault_message line, as Firecracker answers a failed snapshot; nothing is left under
 * the requested names or beside them; the previous snapshot at the same paths is the same bytes and
 * still restores; the API answers afterwards (GET /, resume, the guest echoes, a snapshot elsewhere
 * succeeds), and a Diff taken after the failures still holds every page changed since the last
 * snapshot that succeeded.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { mergeMemoryFiles } from '../src/snapshot/merge.js';
import { guestPath } from './guests/build.js';
import { type FcResponse, type FirecrackerProcess, fcRequest, startFirecracker } from './support/fc-client.js';
import { kvmSkipReason } from './support/vireo.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-snapfaults-'));
const mounts: string[] = [];
const processes: FirecrackerProcess[] = [];
after(() => {
  for (const p of processes) p.kill();
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  rmSync(tmp, { recursive: true, force: true });
});

/** Why the test cannot run here, if it cannot: no KVM, or no tmpfs to mount (not root). */
function skipReason(): string | undefined {
  const kvm = kvmSkipReason();
  if (kvm) return kvm;
  const probe = join(tmp, 'probe');
  mkdirSync(probe);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot mount a tmpfs (needs root): ${(r.stderr || '').trim()}`;
  spawnSync('umount', [probe]);
  return undefined;
}
const skip = skipReason();
if (skip) process.stdout.write(`# skipped: ${skip}\n`);

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const req = (fc: FirecrackerProcess, method: string, path: string, body?: unknown): Promise<FcResponse> =>
  fcRequest(fc.socket, method, path, body);

async function ok(fc: FirecrackerProcess, method: string, path: string, body?: unknown): Promise<void> {
  const r = await req(fc, method, path, body);
  assert.equal(r.status, 204, `${method} ${path}: ${r.text}\n${fc.stderr().slice(-2000)}`);
}

async function until(cond: () => boolean, what: string, fc: FirecrackerProcess): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > 15_000) assert.fail(`timed out waiting for ${what}; stderr: ${fc.stderr().slice(-2000)}`);
    await sleep(10);
  }
}

async function api(name: string): Promise<FirecrackerProcess> {
  const socket = join(tmp, `${name}.sock`);
  const fc = await startFirecracker(['--api-sock', socket], { socket });
  processes.push(fc);
  return fc;
}

/** Sends `text` to the echo guest and waits for it to come back upper-cased. */
async function echo(fc: FirecrackerProcess, text: string): Promise<void> {
  fc.type(text);
  await until(() => fc.stdout().includes(text.toUpperCase()), `the echo of ${text}`, fc);
}

/** Fills the file system at `dir`, then frees `spare` bytes (and keeps the filler open: none of it may go). */
function fillLeaving(dir: string, spare: number): void {
  const path = join(dir, 'filler');
  const fd = openSync(path, 'a');
  const chunk = Buffer.alloc(1 << 16, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (e) {
    assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
  }
  try {
    for (;;) writeSync(fd, chunk, 0, 4096);
  } catch (e) {
    assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
  }
  ftruncateSync(fd, Math.max(0, fstatSync(fd).size - spare));
  closeSync(fd);
}

/** Names in `dir` other than the ones expected: temporaries a failed snapshot left. */
const leftovers = (dir: string, expected: string[]): string[] =>
  readdirSync(dir).filter((n) => !expected.includes(n) && n !== 'filler');

/** Bytes a file takes on its file system. */
const used = (path: string): number => statSync(path).blocks * 512;

/** Loads a pair in a fresh vireo-firecracker and checks the guest answers; returns its echo output. */
async function restores(name: string, state: string, mem: string, probe: string): Promise<void> {
  const fc = await api(name);
  await ok(fc, 'PUT', '/snapshot/load', {
    snapshot_path: state,
    mem_backend: { backend_type: 'File', backend_path: mem },
    resume_vm: true,
  });
  await echo(fc, probe);
  fc.kill();
  await fc.exited;
}

describe('PUT /snapshot/create onto a file system that fills up', { skip }, () => {
  test('Full and Diff: 400 with one line, nothing half-written, the previous pair intact and restorable, the API goes on', async () => {
    const small = join(tmp, 'small');
    mkdirSync(small);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', small], { encoding: 'utf8' });
    assert.equal(m.status, 0, m.stderr);
    mounts.push(small);
    const big = join(tmp, 'big');
    mkdirSync(big);
    const s = (n: string): string => join(small, n);
    const b = (n: string): string => join(big, n);

    const fc = await api('a');
    await ok(fc, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 32, track_dirty_pages: true });
    await ok(fc, 'PUT', '/boot-source', { kernel_image_path: guestPath('modes64'), boot_args: 'e' });
    await ok(fc, 'PUT', '/actions', { action_type: 'InstanceStart' });
    await until(() => fc.stdout().includes('echo ready'), 'the echo guest', fc);

    // The previous snapshots at the paths the failing ones will use: a Full one, then a Diff of it.
    await ok(fc, 'PATCH', '/vm', { state: 'Paused' });
    await ok(fc, 'PUT', '/snapshot/create', { snapshot_path: s('full.state'), mem_file_path: s('full.mem') });
    await ok(fc, 'PATCH', '/vm', { state: 'Resumed' });
    await echo(fc, 'one');
    await ok(fc, 'PATCH', '/vm', { state: 'Paused' });
    await ok(fc, 'PUT', '/snapshot/create', {
      snapshot_path: s('diff.state'),
      mem_file_path: s('diff.mem'),
      snapshot_type: 'Diff',
    });
    const names = ['full.state', 'full.mem', 'diff.state', 'diff.mem'];
    const before = Object.fromEntries(names.map((n) => [n, sha(s(n))]));
    await ok(fc, 'PATCH', '/vm', { state: 'Resumed' });
    await echo(fc, 'two');
    await ok(fc, 'PATCH', '/vm', { state: 'Paused' });

    // Room for part of the memory file (it fails mid-write), then, page by page more, until there is
    // room for the memory file but not for the state file after it.
    const stateBytes = statSync(s('full.state')).size;
    assert.ok(
      used(s('full.mem')) > 8 * 4096 && stateBytes > 3 * 4096,
      `${used(s('full.mem'))} bytes of memory, ${stateBytes} of state`,
    );
    const attempt = async (type: 'Full' | 'Diff', spare: number): Promise<string> => {
      rmSync(s('filler'), { force: true });
      fillLeaving(small, spare);
      const t = type === 'Full' ? 'full' : 'diff';
      const r = await req(fc, 'PUT', '/snapshot/create', {
        snapshot_path: s(`${t}.state`),
        mem_file_path: s(`${t}.mem`),
        snapshot_type: type,
      });
      const what = `${type} with ${spare} bytes free`;
      assert.equal(r.status, 400, `${what}: ${r.text}`);
      assert.deepEqual(Object.keys(r.json as object), ['fault_message'], r.text);
      const msg = (r.json as { fault_message: string }).fault_message;
      assert.equal(msg.split('\n').length, 1, msg);
      const m = msg.match(/^Create snapshot error: cannot write (?:memory|snapshot) file (\S+): ENOSPC; /);
      assert.ok(m, `${what}: ${msg}`);
      assert.deepEqual(leftovers(small, names), [], `${what}: no temporary file left`);
      for (const n of names) assert.equal(sha(s(n)), before[n], `${what}: ${n} is the same bytes`);
      assert.equal((await req(fc, 'GET', '/')).status, 200, 'the API answers');
      return m[1] as string;
    };
    for (const type of ['Full', 'Diff'] as const) {
      const t = type === 'Full' ? 'full' : 'diff';
      const est = used(s(`${t}.mem`));
      assert.equal(await attempt(type, type === 'Full' ? Math.floor(est / 2) : 4096), s(`${t}.mem`), 'mid-write');
      let failedOn = '';
      for (let spare = Math.max(4096, est - 16 * 4096); failedOn !== s(`${t}.state`); spare += 4096) {
        assert.ok(spare < est + 64 * 4096, `${type}: never failed on the state file`);
        failedOn = await attempt(type, spare);
      }
    }
    rmSync(s('filler'));

    // The VM goes on, and a snapshot elsewhere works: a Diff against the last one that succeeded
    // (the failed ones took the dirty log and must have given it back).
    await ok(fc, 'PATCH', '/vm', { state: 'Resumed' });
    await echo(fc, 'three');
    await ok(fc, 'PATCH', '/vm', { state: 'Paused' });
    await ok(fc, 'PUT', '/snapshot/create', {
      snapshot_path: b('d2.state'),
      mem_file_path: b('d2.mem'),
      snapshot_type: 'Diff',
    });
    await ok(fc, 'PUT', '/snapshot/create', { snapshot_path: b('f2.state'), mem_file_path: b('f2.mem') });
    await ok(fc, 'PATCH', '/vm', { state: 'Resumed' });
    await echo(fc, 'four');
    fc.kill();
    await fc.exited;

    // The previous pairs restore: the full one as it was, the diff merged onto it; the diff taken
    // after the failures merged onto both; the full one taken after them.
    await restores('r1', s('full.state'), s('full.mem'), 'five');
    copyFileSync(s('full.mem'), b('m1.mem'));
    mergeMemoryFiles(b('m1.mem'), s('diff.mem'));
    await restores('r2', s('diff.state'), b('m1.mem'), 'six');
    mergeMemoryFiles(b('m1.mem'), b('d2.mem'));
    // The tag page at the end names each image; the pages before it are the memory.
    const pages = (p: string): Buffer => readFileSync(p).subarray(0, statSync(p).size - 4096);
    assert.ok(pages(b('m1.mem')).equals(pages(b('f2.mem'))), 'full + diff + diff = the full one taken then');
    await restores('r3', b('d2.state'), b('m1.mem'), 'seven');
    await restores('r4', b('f2.state'), b('f2.mem'), 'eight');
  });
});
