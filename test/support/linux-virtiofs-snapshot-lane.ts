/**
 * Runs inside the nested lane: boots the kit's Linux under vireo with a virtio-fs share, mounts it,
 * holds a file open (fd 3 of the shell) and sits in a directory of the share; pauses and snapshots;
 * stops. A restore with the share's directory gone must be refused with one clear line; with it back
 * (and a file the host wrote meanwhile), the restored guest goes on: the open file reads through the
 * handle it had, its working directory is the same directory, the host's new file is there, and a
 * file it writes reaches the host. Prints "@@linux-virtiofs-snapshot {json}".
 * usage: node linux-virtiofs-snapshot-lane.js KERNEL INITRD
 */
import { mkdirSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Vm } from '../../src/vmm/vm.js';

const [kernel = '', initrd = ''] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'vireo-fs-snap-'));
const share = join(dir, 'share');
mkdirSync(join(share, 'sub'), { recursive: true });
writeFileSync(join(share, 'held.txt'), 'HELD-FILE-CONTENT\n');
writeFileSync(join(share, 'sub', 'here.txt'), 'in sub\n');
const report: Record<string, unknown> = {};

const read = (f: string): string => {
  try {
    return readFileSync(f, 'latin1');
  } catch {
    return '';
  }
};
async function waitFor(file: string, text: string, ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (read(file).includes(text)) return true;
    await sleep(100);
  }
  return false;
}

try {
  const serialA = join(dir, 'serial-a.log');
  const vm = await Vm.create({
    kernel,
    initrd,
    cmdline: 'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.dumbkbd',
    memMiB: 256,
    serial: { kind: 'file', path: serialA },
    shares: [{ path: share, tag: 'snapshare' }],
  });
  vm.start();
  report.booted = await waitFor(serialA, 'vireo guest ready', 300_000);
  await waitFor(serialA, '# ', 60_000);
  vm.sendSerialInput(
    Buffer.from(
      'mkdir -p /mnt/s && mount -t virtiofs snapshare /mnt/s && exec 3< /mnt/s/held.txt && cd /mnt/s/sub && echo "ready=$((3*3))"\n',
    ),
  );
  report.ready = await waitFor(serialA, 'ready=9', 60_000);
  await vm.pause();
  const t0 = performance.now();
  await vm.snapshot({ statePath: join(dir, 'fs.state'), memPath: join(dir, 'fs.mem') });
  report.snapshotMs = performance.now() - t0;
  await vm.stop();

  // The share's directory gone: the restore is refused with one line.
  renameSync(share, `${share}.away`);
  try {
    const bad = await Vm.restore({ statePath: join(dir, 'fs.state'), memPath: join(dir, 'fs.mem'), resume: false });
    report.goneRestored = true;
    await bad.stop();
  } catch (e) {
    report.goneError = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  }
  renameSync(`${share}.away`, share);
  writeFileSync(join(share, 'sub', 'host-after.txt'), 'HOST-WROTE-AFTER\n');

  const serialB = join(dir, 'serial-b.log');
  const t1 = performance.now();
  const vm2 = await Vm.restore({
    statePath: join(dir, 'fs.state'),
    memPath: join(dir, 'fs.mem'),
    resume: false,
    serial: { kind: 'file', path: serialB },
  });
  report.restoreMs = performance.now() - t1;
  await vm2.resume();
  vm2.sendSerialInput(
    Buffer.from(
      'echo "held=$(cat <&3) cwd=$(pwd) ls=$(ls | tr "\\n" ,) host=$(cat host-after.txt) end=$((5+5))"; echo from-restored > written-after.txt; sync; echo "wrote=$((4*4))"\n',
    ),
  );
  report.after = await waitFor(serialB, 'wrote=16', 120_000);
  vm2.sendSerialInput(Buffer.from('poweroff -f\n'));
  const exit = await Promise.race([vm2.waitForExit(), sleep(120_000).then(() => undefined)]);
  if (!exit) await vm2.stop();
  report.status = exit?.status ?? null;
  report.serialB = read(serialB).slice(-3000);
  report.hostWritten = read(join(share, 'sub', 'written-after.txt'));
} catch (e) {
  report.error = e instanceof Error ? e.stack : String(e);
}
process.stdout.write(`@@linux-virtiofs-snapshot ${JSON.stringify(report)}\n`);
