/**
 * Diff snapshots: with dirty page tracking, a Diff snapshot writes only the pages written since the
 * previous snapshot (by the guest, logged by KVM, and by vireo itself); `vireo snapshot merge` copies
 * it onto the base, and the merged base restored in ANOTHER process continues exactly where the diff
 * was taken, while the base alone still shows the older state. A bare diff, a diff on the wrong base,
 * diffs out of order, a merge cut short, a Diff without tracking or without a previous snapshot: each
 * gets one clear error.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, fstatSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeTag, readTag, TAG_SIZE } from '../src/snapshot/memory-tag.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { repoRoot } from './support/cc.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const COUNTER = 0x1ff000;
const PROBE = 0x300000;
const dir = mkdtempSync(join(tmpdir(), 'vireo-diff-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const child = join(repoRoot, 'dist', 'test', 'support', 'restore-child.js');
const bin = join(repoRoot, 'bin', 'vireo.js');
const f = (name: string): string => join(dir, name);

function restoreInChild(state: string, mem: string): Record<string, string> {
  const r = spawnSync(process.execPath, [child, state, mem, 'counter'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `restore child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as Record<string, string>;
}

function merge(base: string, ...diffs: string[]): { status: number | null; out: string } {
  const args = [bin, 'snapshot', 'merge', '--base', base, ...diffs.flatMap((d) => ['--diff', d])];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: r.stdout + r.stderr };
}

async function runFor(vm: Vm, atLeast: bigint): Promise<bigint> {
  const mem = vm.memory;
  assert.ok(mem);
  await vm.resume();
  const t0 = Date.now();
  while (mem.read64(COUNTER) < atLeast && Date.now() - t0 < 10_000) await sleep(5);
  await vm.pause();
  return mem.read64(COUNTER);
}

test('full, then diffs of a counter guest: merged onto the base they restore exactly', { skip }, async () => {
  const vm = await Vm.create({
    kernel: guestPath('modes64'),
    cmdline: 'c',
    memMiB: 64,
    serial: { kind: 'none' },
    trackDirtyPages: true,
  });
  const mem = vm.memory;
  assert.ok(mem);
  vm.start();
  await vm.pause();
  // A Diff with no snapshot before it is a diff against boot, as in Firecracker: memory nobody wrote is
  // zero, so it is a full image with holes, restorable on its own (merging it as a diff is refused).
  const a0 = await runFor(vm, 10_000n);
  const d0 = await vm.snapshot({ statePath: f('d0.state'), memPath: f('d0.mem'), type: 'Diff' });
  assert.equal(d0.type, 'Diff');
  assert.ok(d0.memoryWritten > 0 && d0.memoryWritten < 64 << 20, `the written pages only (${d0.memoryWritten} bytes)`);
  const r00 = restoreInChild(f('d0.state'), f('d0.mem'));
  assert.equal(BigInt(r00.atRestore as string), a0, 'the first diff restores alone, to its moment');
  assert.ok(BigInt(r00.later as string) > a0, 'and the guest runs on');
  const a = await runFor(vm, a0 + 50_000n);
  mem.fill(16 << 20, 1 << 20, 0xa5); // a guest with some memory in use: 1 MiB in the full snapshot
  const full = await vm.snapshot({ statePath: f('base.state'), memPath: f('base.mem') });
  // The guest counts on (its writes are logged by KVM); vireo writes known bytes (as a device would).
  const b = await runFor(vm, a + 100_000n);
  const probe = Buffer.from('diff snapshot!!!', 'latin1');
  mem.write(PROBE, probe);
  const d1 = await vm.snapshot({ statePath: f('d1.state'), memPath: f('d1.mem'), type: 'Diff' });
  assert.equal(d1.type, 'Diff');
  assert.equal(d1.memoryBytes, 64 << 20);
  assert.ok(d1.memoryWritten >= 2 * 4096, 'the counter page and the probe page are in the diff');
  assert.ok(d1.memoryWritten <= 8 * 4096, `only the pages written since the full snapshot (${d1.memoryWritten} bytes)`);
  const blocks = (p: string): number => statSync(p).blocks * 512;
  assert.ok(
    blocks(f('d1.mem')) * 16 < blocks(f('base.mem')),
    `the diff holds far fewer blocks (${blocks(f('d1.mem'))}) than the full file (${blocks(f('base.mem'))})`,
  );
  assert.equal(statSync(f('d1.mem')).size, statSync(f('base.mem')).size, 'the same layout');
  const c = await runFor(vm, b + 100_000n);
  const d2 = await vm.snapshot({ statePath: f('d2.state'), memPath: f('d2.mem'), type: 'Diff' });
  assert.ok(d2.memoryWritten < d1.memoryWritten, 'the second diff holds only what changed since the first');
  await vm.stop();
  assert.ok(full.memoryWritten > d1.memoryWritten);

  // A bare diff, or the base alone with a diff's state, is refused with what to do.
  const restore = (statePath: string, memPath: string) => Vm.restore({ statePath, memPath, serial: { kind: 'none' } });
  await assert.rejects(restore(f('d1.state'), f('d1.mem')), /is a diff .*vireo snapshot merge --base/);
  await assert.rejects(restore(f('d1.state'), f('base.mem')), /holds memory image .* goes with image/);
  // Diffs in the wrong order, or a full file as a diff, are not merged.
  copyFileSync(f('base.mem'), f('merged.mem'));
  const wrong = merge(f('merged.mem'), f('d2.mem'));
  assert.notEqual(wrong.status, 0);
  assert.match(wrong.out, /merge the diffs in the order they were taken/);
  assert.match(merge(f('merged.mem'), f('base.mem')).out, /holds a full memory image, not a diff/);
  assert.match(merge(f('merged.mem'), f('d0.mem')).out, /holds a full memory image, not a diff/);

  // Merge the first diff: the result restores to the moment of the first diff.
  const m1 = merge(f('merged.mem'), f('d1.mem'));
  assert.equal(m1.status, 0, m1.out);
  assert.match(m1.out, /merged .* bytes in \d+ extents/);
  const r1 = restoreInChild(f('d1.state'), f('merged.mem'));
  assert.equal(BigInt(r1.atRestore as string), b, 'the counter as it was at the diff');
  assert.ok(BigInt(r1.later as string) > b + 1000n, 'and the guest runs on');
  assert.equal(r1.probe, probe.toString('hex'), "vireo's own write is in the diff");
  const r0 = restoreInChild(f('base.state'), f('base.mem'));
  assert.equal(BigInt(r0.atRestore as string), a, 'the base alone is the older state');
  assert.notEqual(r0.probe, probe.toString('hex'), 'without the written data');

  // A merge cut short (its mark set, part copied) is refused, and completed by running it again.
  const fd = openSync(f('merged.mem'), 'r+');
  const tag = readTag(fd, f('merged.mem'));
  const page = Buffer.alloc(TAG_SIZE);
  encodeTag({ ...tag, merging: d2.image }, page);
  writeSync(fd, page, 0, TAG_SIZE, fstatSync(fd).size - TAG_SIZE);
  closeSync(fd);
  await assert.rejects(restore(f('d2.state'), f('merged.mem')), /half-way through a merge/);
  const m2 = merge(f('merged.mem'), f('d2.mem'));
  assert.equal(m2.status, 0, m2.out);
  assert.match(merge(f('merged.mem'), f('d2.mem')).out, /already holds/);
  const r2 = restoreInChild(f('d2.state'), f('merged.mem'));
  assert.equal(BigInt(r2.atRestore as string), c, 'two diffs merged in order: the counter at the second');
  assert.equal(r2.probe, probe.toString('hex'));
  process.stderr.write(
    `diff snapshot: full ${full.memoryWritten} B in ${full.memoryMs.toFixed(1)} ms; diff ${d1.memoryWritten} B in ${d1.memoryMs.toFixed(1)} ms\n`,
  );
});

test('a restored VM with tracking takes diffs of the snapshot it came from', { skip }, async () => {
  const vm = await Vm.restore({
    statePath: f('base.state'),
    memPath: f('base.mem'),
    serial: { kind: 'none' },
    trackDirtyPages: true,
  });
  const a = vm.memory?.read64(COUNTER) ?? 0n;
  const b = await runFor(vm, a + 50_000n);
  await vm.snapshot({ statePath: f('rd.state'), memPath: f('rd.mem'), type: 'Diff' });
  await vm.stop();
  copyFileSync(f('base.mem'), f('rmerged.mem'));
  assert.equal(merge(f('rmerged.mem'), f('rd.mem')).status, 0);
  const r = restoreInChild(f('rd.state'), f('rmerged.mem'));
  assert.equal(BigInt(r.atRestore as string), b);
});

test('Diff without dirty page tracking is refused', { skip }, async () => {
  const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
  vm.start();
  await vm.pause();
  await vm.snapshot({ statePath: f('n.state'), memPath: f('n.mem') });
  await assert.rejects(vm.snapshot({ statePath: f('n2.state'), memPath: f('n2.mem'), type: 'Diff' }), {
    code: 'VIREO_ERR_SNAPSHOT',
    message: /need dirty page tracking/,
  });
  await vm.stop();
});
