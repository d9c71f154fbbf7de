/**
 * Runs one guest in vireo and reports on stderr, as lines starting with "@bench " followed by
 * JSON: "created" (build time, where guest RAM is mapped in this process) and "exited" (status,
 * time from start() until the VM had ended, exit counters). Exits with the VM's status.
 *
 * Usage: node dist/bench/vm-runner.js <kernel> [--mem MiB] [--serial none|stdio]
 */
import { Vm } from '../src/vmm/vm.js';

function report(event: string, data: Record<string, unknown>): void {
  process.stderr.write(`@bench ${JSON.stringify({ event, ...data })}\n`);
}

function parseArgs(argv: string[]): { kernel: string; memMiB: number; serial: 'none' | 'stdio' } {
  let kernel: string | undefined;
  let memMiB = 128;
  let serial: 'none' | 'stdio' = 'none';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--mem') memMiB = Number(argv[++i]);
    else if (a === '--serial') {
      const s = argv[++i];
      if (s !== 'none' && s !== 'stdio') throw new Error(`--serial takes none or stdio, not ${s}`);
      serial = s;
    } else if (kernel === undefined) kernel = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (kernel === undefined) throw new Error('usage: vm-runner <kernel> [--mem MiB] [--serial none|stdio]');
  return { kernel, memMiB, serial };
}

async function main(): Promise<number> {
  const { kernel, memMiB, serial } = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  const vm = await Vm.create({ kernel, memMiB, cpus: 1, serial: { kind: serial } });
  const t1 = performance.now();
  report('created', { pid: process.pid, createMs: t1 - t0, guestRam: vm.memory?.descriptors ?? [] });
  const s0 = process.hrtime.bigint();
  vm.start();
  const exit = await vm.waitForExit();
  const s1 = process.hrtime.bigint();
  report('exited', {
    status: exit.status,
    reason: exit.reason.kind,
    message: exit.message,
    startToExitNs: Number(s1 - s0),
    stats: vm.stats(),
  });
  return exit.status;
}

main().then(
  (status) => process.exit(status),
  (e: unknown) => {
    process.stderr.write(`vm-runner: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(120);
  },
);
