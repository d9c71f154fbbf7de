/**
 * A restored VM's memory file is live (MAP_PRIVATE: the pages not yet copied are the file's). Truncated
 * under a running VM, the guest's next touch of a lost page (KVM_RUN's EFAULT, or a fault the guest
 * cannot take) and the VMM's own (SIGBUS, which ended the process) both stop that VM with one clear
 * line; the process lives on. While the VM runs it holds a shared lock on the file: other restores
 * share it, a writer (vireo snapshot merge) sees it in use.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, mkdtempSync, openSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import * as sys from '../src/os/sys.js';
import { mergeMemoryFiles } from '../src/snapshot/merge.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { repoRoot } from './support/cc.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const dir = mkdtempSync(join(tmpdir(), 'vireo-memloss-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const COUNTER = 0x1ff000;

/** A snapshot of the counting guest; returns a fresh copy of its pair under `name`. */
let pristine: { state: string; mem: string } | undefined;
async function snapshotPair(name: string): Promise<{ state: string; mem: string }> {
  if (!pristine) {
    const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
    vm.start();
    const t0 = Date.now();
    while ((vm.memory?.read64(COUNTER) ?? 0n) < 1000n && Date.now() - t0 < 10_000) await sleep(5);
    await vm.pause();
    pristine = { state: join(dir, 'p.state'), mem: join(dir, 'p.mem') };
    await vm.snapshot({ statePath: pristine.state, memPath: pristine.mem });
    await vm.stop();
  }
  const pair = { state: join(dir, `${name}.state`), mem: join(dir, `${name}.mem`) };
  copyFileSync(pristine.state, pair.state);
  copyFileSync(pristine.mem, pair.mem);
  return pair;
}

const lostLine = (mem: string) =>
  new RegExp(
    `^guest memory file ${mem.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} was truncated or removed while the VM ran; [^\\n]+$`,
  );

test('the guest touches a page of a truncated memory file: the VM stops with one clear line', { skip }, async () => {
  const { state, mem } = await snapshotPair('guest');
  const vm = await Vm.restore({ statePath: state, memPath: mem, resume: false, serial: { kind: 'none' } });
  // Nothing of the guest has been touched since the restore: its code and counter pages are the file's.
  truncateSync(mem, 0);
  await vm.resume();
  const exit = await vm.waitForExit();
  assert.equal(exit.reason.kind, 'memory-file-lost');
  assert.equal(exit.status, 1);
  assert.match(exit.message, lostLine(mem));
});

test('the VMM reads guest RAM of a truncated memory file: no SIGBUS, the VM stops with the line', {
  skip,
}, async () => {
  const { state, mem } = await snapshotPair('vmm');
  // In a child process: without the guard, SIGBUS ends the whole process.
  const child = join(repoRoot, 'dist', 'test', 'support', 'memory-loss-child.js');
  const r = spawnSync(process.execPath, [child, state, mem], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.signal, null, `the VMM process was killed by ${r.signal}`);
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
  assert.equal(out.read, '0', 'the lost page reads as zeros');
  assert.equal(out.kind, 'memory-file-lost');
  assert.equal(out.status, 1);
  assert.match(out.message as string, lostLine(mem));
});

test('a running restored VM holds a shared lock on its memory file: restores share it, writers see it', {
  skip,
}, async () => {
  const { state, mem } = await snapshotPair('lock');
  const probe = (): sys.LockHolder | undefined => {
    const fd = openSync(mem, 'r+');
    try {
      return sys.lockFile(fd, 'exclusive');
    } finally {
      closeSync(fd);
    }
  };
  assert.equal(probe(), undefined, 'nobody holds the file before the restore');
  const a = await Vm.restore({ statePath: state, memPath: mem, resume: true, serial: { kind: 'none' } });
  const b = await Vm.restore({ statePath: state, memPath: mem, resume: true, serial: { kind: 'none' } });
  assert.equal(probe(), 'shared', 'a writer sees the file in use');
  await a.stop();
  assert.equal(probe(), 'shared', 'the second VM still maps it');
  await b.stop();
  assert.equal(probe(), undefined, 'stopping the VMs drops the lock');
});

test('vireo snapshot merge refuses a base that a running VM was restored from', { skip }, async () => {
  const vm = await Vm.create({
    kernel: guestPath('modes64'),
    cmdline: 'c',
    memMiB: 16,
    serial: { kind: 'none' },
    trackDirtyPages: true,
  });
  vm.start();
  await sleep(20);
  await vm.pause();
  const base = { state: join(dir, 'base.state'), mem: join(dir, 'base.mem') };
  await vm.snapshot({ statePath: base.state, memPath: base.mem });
  await vm.resume();
  await sleep(20);
  await vm.pause();
  const diff = join(dir, 'diff.mem');
  await vm.snapshot({ statePath: join(dir, 'diff.state'), memPath: diff, type: 'Diff' });
  await vm.stop();
  const restored = await Vm.restore({
    statePath: base.state,
    memPath: base.mem,
    resume: true,
    serial: { kind: 'none' },
  });
  assert.throws(
    () => mergeMemoryFiles(base.mem, diff),
    (e: Error & { code?: string }) =>
      e.code === 'VIREO_ERR_SNAPSHOT' &&
      /is in use by a running VM restored from it: stop that VM first/.test(e.message),
  );
  await restored.stop();
  assert.equal(mergeMemoryFiles(base.mem, diff).alreadyMerged, false, 'with the VM gone the merge goes ahead');
});
