/**
 * Where a snapshot writes, and what a failed one leaves. A target that exists and is not a regular
 * file (a FIFO, a device node, a directory, a symbolic link to a device) is refused, not replaced —
 * the API runs as root, and a rename over a host's character device destroyed it; the state and the
 * memory path must be two files. A snapshot that runs out of space (a real ENOSPC, on a small tmpfs
 * mounted here) after its memory file is written leaves the previous pair at those paths whole:
 * restored in another process, it is the VM as it was at that earlier snapshot. (The old memory file
 * is held open meanwhile, as a VM restored from it holds it: replacing it then frees no room.)
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  closeSync,
  fstatSync,
  ftruncateSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { repoRoot } from './support/cc.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const COUNTER = 0x1ff000;
const dir = mkdtempSync(join(tmpdir(), 'vireo-snap-pair-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const child = join(repoRoot, 'dist', 'test', 'support', 'restore-child.js');

function restoreInChild(state: string, mem: string): { atRestore: string } {
  const r = spawnSync(process.execPath, [child, state, mem, 'counter'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `restore child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as { atRestore: string };
}

/** Leftovers of a snapshot: its temporary files and the old memory file's backup link. */
const leftovers = (d: string): string[] => readdirSync(d).filter((f) => /\.(tmp|old)-\d+-/.test(f));

async function pausedCounterVm(): Promise<Vm> {
  const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
  vm.start();
  const mem = vm.memory;
  assert.ok(mem);
  while (mem.read64(COUNTER) < 10_000n) await sleep(2);
  await vm.pause();
  return vm;
}

test('a snapshot refuses to replace a FIFO, a device node, a directory or a symlink, and one file for both', {
  skip,
}, async () => {
  const d = join(dir, 'targets');
  mkdirSync(d);
  const fifo = join(d, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const dev = join(d, 'null-device'); // our own node for /dev/null: what an old rename would destroy
  execFileSync('mknod', [dev, 'c', '1', '3']);
  const link = join(d, 'link-to-device');
  symlinkSync(dev, link);
  const sub = join(d, 'sub');
  mkdirSync(sub);
  const vm = await pausedCounterVm();
  try {
    const cases: [string, string, RegExp][] = [
      [fifo, join(d, 'm1'), /snapshot_path \S+fifo is a FIFO; a snapshot replaces the file at its path/],
      [join(d, 's2'), fifo, /mem_file_path \S+fifo is a FIFO/],
      [dev, join(d, 'm3'), /snapshot_path \S+null-device is a character device/],
      [join(d, 's4'), dev, /mem_file_path \S+null-device is a character device/],
      [join(d, 's5'), link, /mem_file_path \S+link-to-device is a symbolic link/],
      [link, join(d, 'm6'), /snapshot_path \S+link-to-device is a symbolic link/],
      [sub, join(d, 'm7'), /snapshot_path \S+sub is a directory/],
      [join(d, 'same'), join(d, 'same'), /are both \S+same: give two different files/],
      [join(d, 'same'), join(d, '.', 'same'), /are both/],
    ];
    for (const [statePath, memPath, re] of cases)
      await assert.rejects(vm.snapshot({ statePath, memPath }), { code: 'VIREO_ERR_SNAPSHOT', message: re });
    assert.ok(lstatSync(fifo).isFIFO(), 'the FIFO is still a FIFO');
    assert.ok(lstatSync(dev).isCharacterDevice(), 'the device node is still a device node');
    assert.ok(lstatSync(link).isSymbolicLink(), 'the link is still a link');
    assert.ok(lstatSync(sub).isDirectory());
    assert.deepEqual(leftovers(d), [], 'no temporary file is left');
    assert.deepEqual(
      readdirSync(d).sort(),
      ['fifo', 'link-to-device', 'null-device', 'sub'],
      'nothing was written beside them',
    );
    // Regular files at both paths are what a snapshot replaces: still allowed.
    await vm.snapshot({ statePath: join(d, 'ok.state'), memPath: join(d, 'ok.mem') });
    await vm.snapshot({ statePath: join(d, 'ok.state'), memPath: join(d, 'ok.mem') });
    assert.deepEqual(leftovers(d), []);
  } finally {
    await vm.stop();
  }
});

test('ENOSPC while writing the state file leaves the previous pair restorable', { skip }, async () => {
  const fs = join(dir, 'small-fs');
  mkdirSync(fs);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', fs]);
  let vm: Vm | undefined;
  let inUse = -1;
  try {
    const state = join(fs, 'vm.state');
    const memFile = join(fs, 'vm.mem');
    vm = await pausedCounterVm();
    const mem = vm.memory;
    assert.ok(mem);
    const first = mem.read64(COUNTER);
    await vm.snapshot({ statePath: state, memPath: memFile });
    const oldState = readFileSync(state);
    // The VM goes on; its next snapshot has other contents at the same paths.
    await vm.resume();
    while (mem.read64(COUNTER) < first + 100_000n) await sleep(2);
    await vm.pause();
    // The old memory file in use, as by a VM restored from it (whose mapping is not used here: on
    // tmpfs, reading a hole through a mapping allocates the page): a rename over it frees no room.
    inUse = openSync(memFile, 'r');
    // Fill the file system, then free room for the new memory file (the same pages as the old one's,
    // and a page to spare) but not for the state file after it.
    const memBytes = statSync(memFile).blocks * 512;
    assert.ok(oldState.length > 3 * 4096, `the state file (${oldState.length} bytes) is larger than the spare room`);
    const filler = openSync(join(fs, 'filler'), 'w');
    const chunk = Buffer.alloc(1 << 20, 1);
    try {
      for (;;) writeSync(filler, chunk);
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
    }
    try {
      for (;;) writeSync(filler, chunk, 0, 4096);
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
    }
    ftruncateSync(filler, fstatSync(filler).size - memBytes - 4096);
    closeSync(filler);
    await assert.rejects(vm.snapshot({ statePath: state, memPath: memFile }), {
      code: 'VIREO_ERR_SNAPSHOT',
      message: /cannot write snapshot file \S+vm\.state: ENOSPC/,
    });
    assert.deepEqual(leftovers(fs), [], 'the temporary files are removed');
    assert.deepEqual(readFileSync(state), oldState, 'the old state file is as it was');
    closeSync(inUse);
    inUse = -1;
    const later = mem.read64(COUNTER);
    await vm.stop();
    vm = undefined;
    const r = restoreInChild(state, memFile);
    assert.equal(BigInt(r.atRestore), first, 'the old pair restores the VM as it was at the first snapshot');
    assert.ok(later > first + 100_000n, 'and not as the restored VM was at the failed one');
  } finally {
    if (inUse >= 0) closeSync(inUse);
    await vm?.stop();
    execFileSync('umount', [fs]);
  }
});
