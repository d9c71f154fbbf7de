/**
 * Restores a snapshot paused, truncates its memory file, then reads guest RAM from the main thread
 * (the VMM's own access to a page that is gone: SIGBUS, which ended the process before the guard);
 * reports what it read and how the VM ended.
 * usage: node memory-loss-child.js STATE MEM
 */
import { truncateSync } from 'node:fs';
import { Vm } from '../../src/vmm/vm.js';

const [statePath = '', memPath = ''] = process.argv.slice(2);
const vm = await Vm.restore({ statePath, memPath, resume: false, serial: { kind: 'none' } });
truncateSync(memPath, 0);
const read = vm.memory?.read64(0x1ff000).toString();
const exit = await vm.waitForExit();
process.stdout.write(
  `${JSON.stringify({ read, kind: exit.reason.kind, status: exit.status, message: exit.message })}\n`,
);
