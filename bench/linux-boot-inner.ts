/**
 * Runs inside the nested lane (bench/run.ts starts it there): boots the guest kit's stock kernel with
 * vireo, QEMU -M microvm and QEMU -M pc, the same kernel, initramfs and command line, and times each
 * from process spawn to the kit's init banner ("vireo guest ready", printed by /init as its first
 * userland act after loading modules) and to process exit (the init powers off). Prints one
 * "@bench {json}" line.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { DEFAULT_LINUX_CMDLINE } from '../src/cli/main.js';
import { prepareKit } from '../src/kit/kit.js';
import { repoRoot } from './build.js';

const RUNS = Number(process.env.VIREO_BENCH_LINUX_RUNS ?? 3);
const MEM = 256;
const BANNER = 'vireo guest ready';

interface Timing {
  bannerMs: number | null;
  exitMs: number;
  status: number | null;
}

function timeBoot(cmd: string, args: string[]): Promise<Timing> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let out = '';
    let bannerMs: number | null = null;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
      if (bannerMs === null && out.includes(BANNER)) bannerMs = performance.now() - t0;
    });
    child.stderr.on('data', () => {});
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ bannerMs, exitMs: performance.now() - t0, status });
    });
  });
}

// Inside the lane the kit prepared outside is used as it is; elsewhere it is fetched if missing.
const kit = await prepareKit({ offline: process.env.VIREO_NESTED === '1' });
const append = `${DEFAULT_LINUX_CMDLINE} quiet vireo.exit=poweroff`;
const qemu = (machine: 'microvm' | 'pc'): string[] => [
  '-M',
  machine,
  '-enable-kvm',
  '-cpu',
  'host',
  '-m',
  String(MEM),
  '-smp',
  '1',
  '-nodefaults',
  '-no-user-config',
  '-display',
  'none',
  '-serial',
  'stdio',
  '-no-reboot',
  '-kernel',
  kit.kernel,
  '-initrd',
  kit.initrd,
  '-append',
  append,
];
const peers: Record<string, [string, string[]]> = {
  vireo: [
    process.execPath,
    [
      join(repoRoot, 'bin', 'vireo.js'),
      'run',
      '--native',
      '--kernel',
      kit.kernel,
      '--initrd',
      kit.initrd,
      '--mem',
      String(MEM),
      '--cmdline',
      append,
    ],
  ],
  'qemu-microvm': ['qemu-system-x86_64', qemu('microvm')],
  'qemu-pc': ['qemu-system-x86_64', qemu('pc')],
};
const results: Record<string, Timing[]> = {};
for (let i = 0; i < RUNS; i++) {
  // Interleaved, so drift in the emulated machine hits every peer alike.
  for (const [name, [cmd, args]] of Object.entries(peers)) {
    const t = await timeBoot(cmd, args);
    const list = results[name] ?? [];
    list.push(t);
    results[name] = list;
  }
}
process.stdout.write(`@bench ${JSON.stringify({ runs: RUNS, memMiB: MEM, cmdline: append, results })}\n`);
