/** The `vireo` command line. */
import { Command, Option } from 'commander';
import { ConfigError, VireoError } from '../common/errors.js';
import { guardStderr } from '../common/stdio.js';
import {
  type BalloonConfig,
  type DriveConfig,
  MAX_MEM_MIB,
  MAX_VCPUS,
  type NetConfig,
  parseBalloon as parseBalloonConfig,
  parseDrive as parseDriveConfig,
  parseNet as parseNetConfig,
  parseSerial as parseSerialConfig,
  parseShare as parseShareConfig,
  parseVsock as parseVsockConfig,
  type SerialConfig,
  type ShareConfig,
  type VsockConfig,
} from '../config/index.js';
import { prepareKit } from '../kit/kit.js';
import { progressPrinter } from '../kit/util.js';
import { detectFlavour } from '../kvm/kvm.js';
import { confineVmmProcess } from '../kvm/seccomp-policy.js';
import { isLinuxKernel } from '../vmm/boot.js';
import { attachConsole } from '../vmm/console.js';
import { threadsLoaded } from '../vmm/vcpu-threads.js';
import { Vm } from '../vmm/vm.js';
import { cliParser, positiveInt } from './args.js';
import { hostReport, printHostReport } from './host.js';
import { prewarmForArgs } from './prewarm.js';
import { registerSandboxCommands } from './sandbox-commands.js';

const VERSION = '0.1.0';

/** The KVM device: /dev/kvm unless VIREO_KVM_DEVICE names another. */
const kvmDevice = (): string => process.env.VIREO_KVM_DEVICE ?? '/dev/kvm';

/** `--serial stdio|none|file:PATH` (config/serial.ts). */
export const parseSerial = cliParser(parseSerialConfig);

/** `--drive PATH` or `--drive path=PATH[,id=ID][,ro]`, repeatable (config/drive.ts). */
export function parseDrive(v: string, previous: DriveConfig[]): DriveConfig[] {
  return [...previous, cliParser((t) => parseDriveConfig(t, previous.length))(v)];
}

/** `--share PATH,tag=NAME[,ro]`, repeatable (config/share.ts). */
export function parseShare(v: string, previous: ShareConfig[]): ShareConfig[] {
  return [...previous, cliParser(parseShareConfig)(v)];
}

/** `--balloon MIB` or `--balloon amount=MIB[,deflate_on_oom][,stats=SECONDS]` (config/balloon.ts). */
export const parseBalloon = cliParser(parseBalloonConfig);

/** `--net tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,id=ID]` or `--net user[,hostfwd=…]…`, repeatable (config/net.ts). */
export function parseNet(v: string, previous: NetConfig[]): NetConfig[] {
  return [...previous, cliParser((t) => parseNetConfig(t, previous.length))(v)];
}

/** `--vsock cid=N,uds=PATH` (config/vsock.ts). */
export const parseVsock = cliParser(parseVsockConfig);

interface RunOptions {
  drive: DriveConfig[];
  net: NetConfig[];
  share: ShareConfig[];
  rng?: boolean;
  virtioConsole?: boolean;
  balloon?: BalloonConfig;
  vsock?: VsockConfig;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  append?: string;
  nested?: boolean;
  native?: boolean;
  mem: number;
  cpus: number;
  serial: SerialConfig;
  irqchip: boolean;
  bootTimer?: boolean;
  seccomp: boolean;
}

/** The command line vireo gives Linux kernels when none is given (as Firecracker's default). */
export const DEFAULT_LINUX_CMDLINE =
  'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.dumbkbd';

/** Run the same `vireo run` inside the nested lane (a software-emulated machine with AMD SVM). */
async function runNestedCommand(argv: readonly string[]): Promise<number> {
  const { runNested } = await import('../kit/nested.js');
  const { progressPrinter } = await import('../kit/util.js');
  const inner = argv.filter((a) => a !== '--nested' && a !== '--native');
  const bin = new URL('../../../bin/vireo.js', import.meta.url).pathname;
  const progress = progressPrinter(process.stderr);
  const r = await runNested({
    command: [process.execPath, bin, ...inner, '--native'],
    timeoutMs: Number(process.env.VIREO_NESTED_TIMEOUT_MS ?? 20 * 60_000),
    kit: { onProgress: progress },
  }).finally(() => progress.end());
  process.stdout.write(r.output);
  if (process.env.VIREO_VERBOSE)
    process.stderr.write(`vireo: nested lane: boot ${r.timings.bootMs} ms, command ${r.timings.commandMs} ms\n`);
  return r.status;
}

async function runCommand(opts: RunOptions, argv: readonly string[]): Promise<number> {
  // Before the kit is fetched or a lane started: the two ask for opposite things.
  if (opts.nested && opts.native)
    throw new ConfigError(
      '--nested and --native contradict each other: give one (--nested runs in the lane, --native never does)',
    );
  let kernel = opts.kernel;
  let initrd = opts.initrd;
  let cmdline = opts.cmdline;
  if (kernel === undefined) {
    // No --kernel: boot the default guest kit (Debian's stock kernel and a busybox initramfs).
    const { prepareKit } = await import('../kit/kit.js');
    const { progressPrinter } = await import('../kit/util.js');
    const progress = progressPrinter(process.stderr);
    const kit = await prepareKit({ onProgress: progress }).finally(() => progress.end());
    kernel = kit.kernel;
    initrd ??= kit.initrd;
  }
  const linux = isLinuxKernel(kernel);
  cmdline ??= linux ? DEFAULT_LINUX_CMDLINE : '';
  if (opts.append) cmdline = cmdline ? `${cmdline} ${opts.append}` : opts.append;
  if (opts.nested) return runNestedCommand(argv);
  if (linux && !opts.native && detectFlavour() === 'pvm') {
    process.stderr.write(
      "vireo: this host's KVM is PVM, which cannot run a stock Linux kernel natively; booting it in the nested lane (an emulated machine with AMD-V), which is slow (use --native to try anyway)\n",
    );
    return runNestedCommand(argv);
  }
  // vireo's own process: every thread under the process-wide deny-list before the VM exists.
  confineVmmProcess(opts.seccomp);
  const vm = await Vm.create({
    kernel,
    initrd,
    cmdline,
    memMiB: opts.mem,
    cpus: opts.cpus,
    serial: opts.serial,
    irqchip: opts.irqchip,
    kvmPath: kvmDevice(),
    drives: opts.drive,
    nets: opts.net,
    shares: opts.share,
    rng: opts.rng ?? false,
    virtioConsole: opts.virtioConsole
      ? { output: opts.serial.kind === 'none' ? { kind: 'stdio' } : opts.serial }
      : undefined,
    balloon: opts.balloon,
    vsock: opts.vsock,
    seccomp: opts.seccomp,
  });
  let quit = false;
  const console =
    opts.serial.kind === 'stdio'
      ? attachConsole(vm, process.stdin, () => {
          quit = true;
          void vm.stop();
        })
      : undefined;
  const onSignal = (): void => {
    quit = true;
    void vm.stop();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  vm.start();
  const exit = await vm.waitForExit();
  console?.detach();
  if (opts.bootTimer && vm.firstExitAt !== undefined)
    process.stderr.write(
      `vireo: boot timer: first guest exit ${(vm.firstExitAt - performance.timeOrigin).toFixed(1)} ms after process start\n`,
    );
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (process.env.VIREO_VERBOSE) {
    const counters = vm.deviceCounters();
    if (Object.keys(counters).length > 0) process.stderr.write(`vireo: device counters ${JSON.stringify(counters)}\n`);
  }
  if (quit) return 0;
  // A debug-exit status and a clean power-off speak for themselves; everything else is reported.
  const quiet = exit.reason.kind === 'debug-exit' || exit.reason.kind === 'shutdown' || exit.reason.kind === 'stopped';
  if (!quiet || process.env.VIREO_VERBOSE) process.stderr.write(`vireo: ${exit.message}\n`);
  return exit.status;
}

export async function main(argv: string[]): Promise<number> {
  guardStderr();
  if (argv[0] === 'api') return (await import('./firecracker.js')).firecrackerMain(argv.slice(1));
  if (argv[0] === 'run') prewarmForArgs(argv);
  try {
    return await mainCommand(argv);
  } finally {
    // bin/vireo.js starts the threads before the command line is parsed (they load while vireo does):
    // a usage error must not end the process while one is inside koffi's initialisation (SIGABRT).
    await threadsLoaded();
  }
}

async function mainCommand(argv: string[]): Promise<number> {
  const program = new Command();
  let status = 0;
  program
    .name('vireo')
    .description('A KVM hypervisor written in TypeScript')
    .version(VERSION)
    .showHelpAfterError('(run vireo help for usage)')
    .exitOverride();

  program
    .command('run')
    .description(
      "boot a kernel in a new VM; the exit status is the guest's debug-exit status, 0 after a clean shutdown",
    )
    .option(
      '--kernel <file>',
      'kernel: Linux bzImage or vmlinux (ELF64, PVH), Multiboot, or 64-bit ELF; default: the guest kit',
    )
    .option('--initrd <file>', 'initial ramdisk (Linux initrd, Multiboot module 0)')
    .option('--cmdline <string>', `kernel command line (Linux default: "${'console=ttyS0 reboot=k panic=1 ...'}")`)
    .option('--append <string>', 'add to the kernel command line (default or --cmdline)')
    .option('--nested', 'run inside the nested lane (an emulated machine with AMD-V and a standard /dev/kvm)')
    .option('--native', 'never switch to the nested lane, even on a PVM host')
    .addOption(
      new Option('--mem <MiB>', 'guest memory in MiB').default(128).argParser(positiveInt('--mem', MAX_MEM_MIB)),
    )
    .addOption(new Option('--cpus <n>', 'number of vCPUs').default(1).argParser(positiveInt('--cpus', MAX_VCPUS)))
    .addOption(
      new Option('--serial <where>', 'COM1: stdio, none or file:PATH')
        .default({ kind: 'stdio' }, 'stdio')
        .argParser(parseSerial),
    )
    .addOption(
      new Option(
        '--drive <spec>',
        'a virtio-blk disk: FILE or path=FILE[,id=NAME][,ro][,format=raw|qcow2] (default: qcow2 by its magic, else raw); repeat for more (the first is /dev/vda)',
      )
        .default([], 'none')
        .argParser(parseDrive),
    )
    .addOption(
      new Option(
        '--net <spec>',
        'a virtio-net interface: on a host TAP, tap=NAME[,mac=MAC][,id=ID]; or on a user-mode network through passt (no root needed: DHCP, DNS, outbound TCP/UDP; the own addresses of the host, its loopback through the gateway address, are refused unless host=allow), user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,allow=CIDR|NAME]...[,deny=CIDR|NAME]...[,host=allow][,mac=MAC][,id=ID]; repeat for more',
      )
        .default([], 'none')
        .argParser(parseNet),
    )
    .addOption(
      new Option(
        '--share <spec>',
        'a host directory shared through virtio-fs: PATH,tag=NAME[,ro] (the guest mounts it with mount -t virtiofs NAME DIR; ro refuses every write); repeat for more',
      )
        .default([], 'none')
        .argParser(parseShare),
    )
    .option('--rng', 'a virtio-rng device fed from the host CSPRNG')
    .option(
      '--virtio-console',
      'a virtio-console (hvc0; add console=hvc0 to the command line): the terminal types into it, output goes where --serial says (stdio if none)',
    )
    .addOption(
      new Option('--balloon <spec>', 'a virtio-balloon: MIB or amount=MIB[,deflate_on_oom][,stats=SECONDS]').argParser(
        parseBalloon,
      ),
    )
    .addOption(
      new Option(
        '--vsock <spec>',
        'a virtio-vsock device: cid=N,uds=PATH (host: connect to PATH, send "CONNECT <port>\\n"; guest connections to CID 2 port P go to PATH_P)',
      ).argParser(parseVsock),
    )
    .option('--boot-timer', "print the time from process start to the guest's first exit")
    .option('--no-irqchip', 'no in-kernel interrupt controller and PIT (HLT then exits to vireo)')
    .option(
      '--no-seccomp',
      "don't confine the VM's threads with seccomp filters (prints a warning; never for an untrusted guest)",
    )
    .action(async (opts: RunOptions) => {
      status = await runCommand(opts, argv);
    });

  program
    .command('host')
    .description("report this host's KVM: flavour (VT-x, AMD-V or PVM), API version, capabilities")
    .option('--json', 'machine-readable output')
    .action((opts: { json?: boolean }) => {
      const report = hostReport(kvmDevice());
      if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      else printHostReport(report);
      status = report.usable ? 0 : 1;
    });

  program
    .command('kit')
    .description("build (or find cached) vireo's default Linux guest from Debian's packages and print its paths")
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const progress = progressPrinter(process.stderr);
      const kit = await prepareKit({ onProgress: progress }).finally(() => progress.end());
      if (opts.json) process.stdout.write(`${JSON.stringify(kit, null, 2)}\n`);
      else
        process.stdout.write(
          `kernel   ${kit.kernel}\ninitrd   ${kit.initrd}\nversion  ${kit.kernelVersion}\nmodules  ${kit.modulesDir}\n`,
        );
    });

  program
    .command('api')
    .description(
      "serve Firecracker's API on a Unix socket: vireo api --api-sock PATH [--config-file FILE] (vireo api --help)",
    );

  program
    .command('rootfs')
    .description('build (or find cached) a Debian root file system image (ext4) for the guest kit and print its path')
    .option('--force', 'rebuild even when a cached image exists')
    .option('--size <MiB>', 'file system size in MiB (default 1024)')
    .option('--json', 'machine-readable output')
    .action(async (opts: { force?: boolean; size?: string; json?: boolean }) => {
      const { rootfsCommand } = await import('./rootfs.js');
      status = await rootfsCommand(opts);
    });

  registerSandboxCommands(program, (s) => {
    status = s;
  });

  program
    .command('snapshot')
    .description('work with snapshot files: vireo snapshot merge --base MEM --diff MEM [--diff MEM]...')
    .command('merge')
    .description(
      "copy a diff snapshot's memory file (only its data extents) into the base memory file, in place; repeat --diff to apply several in the order taken; a merge cut short is completed by running it again",
    )
    .requiredOption('--base <mem>', 'the memory file of the snapshot the (first) diff was taken after; it is updated')
    .requiredOption('--diff <mem>', "a diff snapshot's memory file", (v: string, prev: string[] = []) => [...prev, v])
    .action(async (opts: { base: string; diff: string[] }) => {
      const { mergeMemoryFiles } = await import('../snapshot/merge.js');
      for (const d of opts.diff) {
        const r = mergeMemoryFiles(opts.base, d);
        process.stdout.write(
          r.alreadyMerged
            ? `${opts.base} already holds ${d} (image ${r.image})\n`
            : `merged ${d} into ${opts.base}: ${r.copied} bytes in ${r.extents} extents; it now holds image ${r.image}\n`,
        );
      }
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    const err = e as { code?: string; exitCode?: number; message?: string };
    if (typeof err.code === 'string' && err.code.startsWith('commander.')) {
      // Help and version exit 0; usage errors were printed by commander.
      return err.exitCode ?? 2;
    }
    if (e instanceof VireoError) {
      process.stderr.write(`vireo: ${e.message}\n`);
      return e instanceof ConfigError ? 2 : 1;
    }
    process.stderr.write(`vireo: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 70;
  }
  return status;
}
