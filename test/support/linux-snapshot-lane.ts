/**
 * Runs inside the nested lane: boots the kit's Linux under vireo (dirty page tracking on) with a
 * virtio disk, talks to its shell, pauses and takes a Full snapshot; lets the guest write a file in
 * its RAM-backed /tmp, pauses again and takes a Diff snapshot (KVM's dirty log on a real kvm-amd),
 * stops it and merges the diff onto the full memory file; then a second process restores the diff's
 * state with the merged memory (see restore-child.ts, mode "linux") and the guest goes on: same
 * shell, the file written between the snapshots, same disk, same uptime clock.
 * Prints "@@linux-snapshot {json}".
 * usage: node linux-snapshot-lane.js KERNEL INITRD
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { mergeMemoryFiles } from '../../src/snapshot/merge.js';
import { Vm } from '../../src/vmm/vm.js';

const [kernel = '', initrd = ''] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'vireo-linux-snap-'));
const disk = join(dir, 'disk.img');
const b = Buffer.alloc(16 << 20);
b.write('SNAPSHOT-DISK-MARKER', 4096);
writeFileSync(disk, b);
const serialA = join(dir, 'serial-a.log');
const report: Record<string, unknown> = {};

async function waitFor(file: string, text: string, ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    try {
      if (readFileSync(file, 'latin1').includes(text)) return true;
    } catch {}
    await sleep(100);
  }
  return false;
}

try {
  const vm = await Vm.create({
    kernel,
    initrd,
    cmdline: 'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.dumbkbd',
    memMiB: 256,
    serial: { kind: 'file', path: serialA },
    drives: [{ id: 'snapdisk', path: disk }],
    trackDirtyPages: true,
  });
  vm.start();
  report.booted = await waitFor(serialA, 'vireo guest ready', 300_000);
  await waitFor(serialA, '# ', 60_000);
  vm.sendSerialInput(Buffer.from('echo "before=$((3*3)) up=$(cut -d. -f1 /proc/uptime)"\n'));
  report.before = await waitFor(serialA, 'before=9', 60_000);
  const upBefore = Number(/before=9 up=(\d+)/.exec(readFileSync(serialA, 'latin1'))?.[1]);
  await vm.pause();
  const t0 = performance.now();
  const snap = await vm.snapshot({ statePath: join(dir, 'linux.state'), memPath: join(dir, 'linux.mem') });
  report.snapshotMs = performance.now() - t0;
  report.memoryWritten = snap.memoryWritten;
  // Between the snapshots, the guest writes a file into its RAM (the kit's /tmp is in memory).
  await vm.resume();
  vm.sendSerialInput(Buffer.from('echo "DIFF-MARK-$((40+3))" > /tmp/diffmark; echo "written=$((7*7))"\n'));
  report.written = await waitFor(serialA, 'written=49', 60_000);
  await vm.pause();
  const t1 = performance.now();
  const diff = await vm.snapshot({
    statePath: join(dir, 'linux-diff.state'),
    memPath: join(dir, 'linux-diff.mem'),
    type: 'Diff',
  });
  report.diffMs = performance.now() - t1;
  report.diffWritten = diff.memoryWritten;
  await vm.stop();
  report.merge = mergeMemoryFiles(join(dir, 'linux.mem'), join(dir, 'linux-diff.mem'));
  const child = join(dirname(fileURLToPath(import.meta.url)), 'restore-child.js');
  const r = spawnSync(
    process.execPath,
    [child, join(dir, 'linux-diff.state'), join(dir, 'linux.mem'), 'linux', join(dir, 'serial-b.log')],
    {
      encoding: 'utf8',
      timeout: 10 * 60_000,
    },
  );
  report.child = r.stdout.trim().split('\n').pop();
  report.childStderr = r.stderr.slice(-2000);
  report.upBefore = upBefore;
} catch (e) {
  report.error = e instanceof Error ? e.stack : String(e);
}
process.stdout.write(`@@linux-snapshot ${JSON.stringify(report)}\n`);
