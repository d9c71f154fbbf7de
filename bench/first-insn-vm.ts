/**
 * The vireo side of the start-up benchmark: build a VM for the given kernel, start it, wait for
 * it to end and exit with its status, doing nothing else. Like the CLI, it starts the vCPU thread
 * before loading the rest of vireo. With VIREO_BENCH_TIMINGS=1 it also writes one "@bench {json}"
 * line to stderr: milliseconds since the process started (performance.timeOrigin) when this module
 * began to run, when Vm.create resolved, and when the VM had ended; and the wall-clock time (epoch
 * ms) of the guest's first exit, which for this guest is its first instruction.
 *
 * Usage: node dist/bench/first-insn-vm.js <kernel>
 */
import { prewarmVcpuThreads } from '../src/vmm/vcpu-threads.js';

prewarmVcpuThreads(1);
const tModule = performance.now();
const { Vm } = await import('../src/vmm/vm.js');
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
    const t = {
      moduleStartMs: tModule,
      createdMs: tCreated,
      exitedMs: tExited,
      firstExitEpochMs: vm.firstExitAt,
      status: exit.status,
      reason: exit.reason.kind,
    };
    process.stderr.write(`@bench ${JSON.stringify(t)}\n`);
  }
  process.exit(exit.status);
} catch (e) {
  process.stderr.write(`first-insn-vm: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(120);
}
