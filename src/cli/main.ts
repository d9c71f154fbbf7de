/** The `vireo` command line. */
import { Command, InvalidArgumentError, Option } from 'commander';
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
import { isLinuxKernel } from '../vmm/boot.js';
import { attachConsole } from '../vmm/console.js';
import { threadsLoaded } from '../vmm/vcpu-threads.js';
import { Vm } from '../vmm/vm.js';
import { hostReport, printHostReport } from './host.js';
import { prewarmForArgs } from './prewarm.js';

const VERSION = '0.1.0';

/** The KVM device: /dev/kvm unless VIREO_KVM_DEVICE names another. */
const kvmDevice = (): string => process.env.VIREO_KVM_DEVICE ?? '/dev/kvm';

function positiveInt(what: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1 || n > max)
      throw new InvalidArgumentError(`${what} must be an integer from 1 to ${max}`);
    return n;
  };
}

/** A config/ parser as a commander argParser: its ConfigError becomes commander's usage error. */
function cliParser<T>(parse: (v: string) => T): (v: string) => T {
  return (v) => {
    try {
      return parse(v);
    } catch (e) {
      if (e instanceof ConfigError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  };
}

/** `K=V` into a record (repeatable options). */
function keyValuesSync(v: string, prev: Record<string, string> = {}): Record<string, string> {
  const eq = v.indexOf('=');
  if (eq < 1) throw new InvalidArgumentError(`${JSON.stringify(v)}: give KEY=VALUE`);
  return { ...prev, [v.slice(0, eq)]: v.slice(eq + 1) };
}

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
        'a virtio-net interface: on a host TAP, tap=NAME[,mac=MAC][,id=ID]; or on a user-mode network through passt (no root needed: DHCP, DNS, outbound TCP/UDP; the host is the gateway address), user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=MAC][,id=ID]; repeat for more',
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

  program
    .command('image')
    .description('make disk images: vireo image create [--backing BASE] [--size SIZE] OUT.qcow2')
    .command('create')
    .description(
      'write a qcow2 (v3) image: an overlay over BASE (raw or qcow2; its writes stay in OUT, the rest reads from BASE), or an empty one of --size',
    )
    .argument('<out>', 'the image to write (must not exist)')
    .option('--backing <base>', 'the backing image (stored as an absolute path)')
    .option('--size <size>', "virtual size: bytes or with K, M, G, T (default: the backing image's)")
    .action(async (out: string, opts: { backing?: string; size?: string }) => {
      const { imageCreateCommand } = await import('./image.js');
      status = imageCreateCommand(out, opts);
    });

  program
    .command('serve')
    .description(
      "a local sandbox service for E2B's SDK on 127.0.0.1: set E2B_API_URL and E2B_SANDBOX_URL to its URL and E2B_API_KEY to its key (it prints the three)",
    )
    .addOption(
      new Option('--port <n>', 'TCP port on 127.0.0.1 (0: any free one)').default(49982).argParser((v: string) => {
        const n = Number(v);
        if (!/^\d+$/.test(v) || n > 65535) throw new InvalidArgumentError('--port must be 0 to 65535');
        return n;
      }),
    )
    .option(
      '--api-key <key>',
      'the key every control-plane request must carry (default: VIREO_API_KEY, else generated)',
    )
    .option(
      '--template <spec>',
      'NAME=KERNEL,INITRD[,ROOTFS]: what Sandbox.create(NAME) boots, or NAME=DIR: clones of a vireo template build; repeat for more (default base: the guest kit)',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .addOption(new Option('--cpus <n>', 'vCPUs per sandbox').default(1).argParser(positiveInt('--cpus', MAX_VCPUS)))
    .addOption(
      new Option('--mem <MiB>', 'memory per sandbox in MiB').default(256).argParser(positiveInt('--mem', MAX_MEM_MIB)),
    )
    .addOption(
      new Option('--max-sandboxes <n>', 'sandboxes at once')
        .default(16)
        .argParser(positiveInt('--max-sandboxes', 1024)),
    )
    .addOption(
      new Option('--boot-timeout <s>', "seconds a sandbox's agent may take to answer after boot")
        .default(120)
        .argParser(positiveInt('--boot-timeout', 3600)),
    )
    .action(async (opts: import('./serve.js').ServeCliOptions) => {
      const { serveCommand } = await import('./serve.js');
      status = await serveCommand(opts);
    });

  program
    .command('template')
    .description('templates for sandbox clones: vireo template build --dir DIR [--kernel K --initrd I] [--rootfs R]')
    .command('build')
    .description(
      'boot once, wait for the guest agent, and snapshot it into DIR (with a manifest): Sandbox.create({ template: DIR }) restores clones of it (default: the guest kit)',
    )
    .requiredOption('--dir <dir>', 'where the template goes (made if missing; must not hold one)')
    .option('--kernel <path>', 'kernel to boot (default: the guest kit)')
    .option('--initrd <path>', 'its initramfs, which must start the agent')
    .option(
      '--rootfs <path>',
      'a root disk image: copied into DIR; each clone writes a qcow2 overlay of its own over it',
    )
    .addOption(new Option('--cpus <n>', 'vCPUs').default(1).argParser(positiveInt('--cpus', MAX_VCPUS)))
    .addOption(new Option('--mem <MiB>', 'memory in MiB').default(256).argParser(positiveInt('--mem', MAX_MEM_MIB)))
    .addOption(
      new Option('--boot-timeout <s>', 'seconds the agent may take to answer after boot')
        .default(120)
        .argParser(positiveInt('--boot-timeout', 3600)),
    )
    .action(async (opts: import('./template.js').TemplateBuildCliOptions) => {
      const { templateBuildCommand } = await import('./template.js');
      status = await templateBuildCommand(opts);
    });

  const sandbox = program
    .command('sandbox')
    .description(
      'use a running vireo serve: create, exec, cp, ls, kill (--url, --api-key or VIREO_SERVE_URL, VIREO_API_KEY)',
    )
    .option('--url <url>', 'the service (default VIREO_SERVE_URL, E2B_API_URL or http://127.0.0.1:49982)')
    .option('--api-key <key>', 'its API key (default VIREO_API_KEY or E2B_API_KEY)');
  const client = async () => (await import('./serve.js')).serveClient(sandbox.opts());
  const kv = (v: string, prev?: Record<string, string>) => {
    try {
      return keyValuesSync(v, prev);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
  sandbox
    .command('create')
    .description('create a sandbox and print its id')
    .option('--template <name>', 'template name', 'base')
    .addOption(new Option('--timeout <s>', 'seconds until it is killed').argParser(positiveInt('--timeout', 86_400)))
    .option('--env <K=V>', 'an environment variable for its commands (repeatable)', kv)
    .option('--metadata <K=V>', 'metadata kept with it (repeatable)', kv)
    .action(
      async (o: {
        template: string;
        timeout?: number;
        env?: Record<string, string>;
        metadata?: Record<string, string>;
      }) => {
        status = await (await import('./serve.js')).sandboxCreate(await client(), o);
      },
    );
  sandbox
    .command('exec')
    .description("run a command in a sandbox: vireo sandbox exec ID -- CMD [ARGS...]; the exit status is the command's")
    .argument('<id>')
    .argument('<command...>')
    .option('--cwd <dir>')
    .option('--user <name>')
    .option('-i, --stdin', "give it this command's stdin (read to its end first)")
    .option('--env <K=V>', 'an environment variable (repeatable)', kv)
    .addOption(
      new Option('--timeout <s>', 'kill it after this many seconds').argParser(positiveInt('--timeout', 86_400)),
    )
    .action(
      async (
        id: string,
        command: string[],
        o: { cwd?: string; user?: string; env?: Record<string, string>; timeout?: number },
      ) => {
        status = await (await import('./serve.js')).sandboxExec(await client(), id, command, o);
      },
    );
  sandbox
    .command('cp')
    .description('copy a file: cp LOCAL ID:/PATH uploads, cp ID:/PATH LOCAL downloads (- is stdin/stdout)')
    .argument('<src>')
    .argument('<dst>')
    .action(async (src: string, dst: string) => {
      status = await (await import('./serve.js')).sandboxCp(await client(), src, dst);
    });
  sandbox
    .command('ls')
    .description("list the service's sandboxes")
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean }) => {
      status = await (await import('./serve.js')).sandboxLs(await client(), o.json ?? false);
    });
  sandbox
    .command('kill')
    .description('kill sandboxes (their VMs stop, their files go)')
    .argument('<id...>')
    .action(async (ids: string[]) => {
      status = await (await import('./serve.js')).sandboxKill(await client(), ids);
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
