/**
 * Restores a snapshot in a fresh process (as a second vireo would) and reports what the guest does:
 * usage: node restore-child.js STATE MEM MODE [SERIAL_FILE]
 * MODE counter: reads the counter word right after restore (paused), resumes, waits for it to move.
 * MODE echo: resumes, types "xyz" and then "q" into the serial port; the guest's exit status tells.
 * MODE linux: resumes a Linux guest at its shell, runs a command that reads the virtio disk, the
 * uptime clock and /tmp/diffmark (written between a Full and a Diff snapshot), then powers it off;
 * reports the serial output and the exit status.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Vm } from '../../src/vmm/vm.js';

const [statePath = '', memPath = '', mode = 'counter', serialFile = ''] = process.argv.slice(2);
const COUNTER = 0x1ff000;
const PROBE = 0x300000;
const t0 = performance.now();
const vm = await Vm.restore({
  statePath,
  memPath,
  resume: false,
  serial: serialFile ? { kind: 'file', path: serialFile } : { kind: 'none' },
});
const restoreMs = performance.now() - t0;
if (mode === 'counter') {
  const mem = vm.memory;
  if (!mem) throw new Error('no memory');
  const atRestore = mem.read64(COUNTER);
  const t1 = performance.now();
  await vm.resume();
  const resumeMs = performance.now() - t1;
  const deadline = Date.now() + 10_000;
  while (mem.read64(COUNTER) <= atRestore + 1000n && Date.now() < deadline) await sleep(5);
  const later = mem.read64(COUNTER);
  // What a test may have written at PROBE before the snapshot (diff snapshots).
  const probe = mem.read(PROBE, 16).toString('hex');
  await vm.stop();
  process.stdout.write(
    `${JSON.stringify({ atRestore: atRestore.toString(), later: later.toString(), probe, restoreMs, resumeMs })}\n`,
  );
} else if (mode === 'linux') {
  const t1 = performance.now();
  await vm.resume();
  const resumeMs = performance.now() - t1;
  const out = (): string => (serialFile ? readFileSync(serialFile, 'latin1') : '');
  const until = async (text: string, ms: number): Promise<boolean> => {
    const t = Date.now();
    while (!out().includes(text) && Date.now() - t < ms) await sleep(100);
    return out().includes(text);
  };
  vm.sendSerialInput(
    Buffer.from(
      'echo "after=$((6*7)) up=$(cut -d. -f1 /proc/uptime) disk=$(dd if=/dev/vda bs=4096 skip=1 count=1 2>/dev/null | head -c 20) mark=$(cat /tmp/diffmark 2>/dev/null) end=$((5+5))"\n',
    ),
  );
  // The whole line, not just its start: typing on while the guest still prints would interleave.
  const after = await until('end=10', 120_000);
  vm.sendSerialInput(Buffer.from('poweroff -f\n'));
  const exit = await Promise.race([vm.waitForExit(), sleep(120_000).then(() => undefined)]);
  if (!exit) await vm.stop();
  process.stdout.write(
    `${JSON.stringify({ after, status: exit?.status ?? null, serial: out().slice(-3000), restoreMs, resumeMs })}\n`,
  );
} else {
  await vm.resume();
  vm.sendSerialInput(Buffer.from('xyz'));
  await sleep(300);
  vm.sendSerialInput(Buffer.from('q'));
  const exit = await Promise.race([vm.waitForExit(), sleep(10_000).then(() => undefined)]);
  if (!exit) await vm.stop();
  const serial = serialFile ? readFileSync(serialFile, 'latin1') : '';
  process.stdout.write(`${JSON.stringify({ status: exit?.status ?? null, serial, restoreMs })}\n`);
}
