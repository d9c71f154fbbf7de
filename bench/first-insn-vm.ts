/**
 * The vireo side of the start-up benchmark: build a VM for the given kernel, start it, wait for
 * it to end and exit with its status, doing nothing else. With VIREO_BENCH_TIMINGS=1 it also
 * writes one "@bench {json}" line to stderr with milliseconds since the process started
 * (performance.timeOrigin): when this module began to run (Node start-up and module loading
 * before that), when Vm.create resolved, and when the VM had ended.
 *
 * Usage: node dist/bench/first-insn-vm.js <kernel>
 */
import { Vm } from '../src/vmm/vm.js';

const tModule = performance.now();
const kernel = process.argv[2];
if (kernel === undefined) {
  process.stderr.write('usage: first-insn-vm <kernel>\n');
  process.exit(120);
}
try {
  const vm = await Vm.create({ kernel, memMiB: 128, cpus: 1, serial: { kind: 'none' } });
  const tCreated = performance.now();
  vm.start();
  const exit = await vm.waitForExit();
  const tExited = performance.now();
  if (process.env.VIREO_BENCH_TIMINGS === '1') {
    const t = { moduleStartMs: tModule, createdMs: tCreated, exitedMs: tExited, status: exit.status, reason: exit.reason.kind };
    process.stderr.write(`@bench ${JSON.stringify(t)}\n`);
  }
  process.exit(exit.status);
} catch (e) {
  process.stderr.write(`first-insn-vm: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(120);
}
